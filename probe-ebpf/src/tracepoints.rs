//! Tracepoint programs. Every field offset comes from a `TpLayout` global filled from the
//! kernel's tracefs `format` file at load time.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated as gen,
    },
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext as _,
};
use probe_common::{addr_style, flags, misc, EventKind, FlowEvent, TpLayout, ABSENT, RECORD_BUF};

use crate::{
    emit::{
        count_event, count_misc, count_no_cookie, count_rst_reason, emit, scratch, TCP_CLOSE,
        TCP_SYN_SENT,
    },
    maps::{Owner, SK_OWNER, TP_RECORD},
    repeat,
    sock::{self, Scope},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
/// Slot of `RST_REASON_COUNTS` for "this kernel does not report a reason".
const REASON_UNKNOWN: u32 = u32::MAX;

/// The record being handled: copied once into a per-CPU buffer when its length is known,
/// else read field by field from the tracepoint context.
struct Record<'a> {
    ctx: &'a TracePointContext,
    copy: Option<&'a [u8; RECORD_BUF]>,
}

impl<'a> Record<'a> {
    #[inline(always)]
    fn new(ctx: &'a TracePointContext, layout: &TpLayout) -> Record<'a> {
        let len = usize::from(layout.record_len);
        let copy = match TP_RECORD.get_ptr_mut(0) {
            Some(buf) if len > 0 && len <= RECORD_BUF => {
                // SAFETY: per-CPU buffer of RECORD_BUF bytes; `len` is bounded above.
                let rc = unsafe {
                    gen::bpf_probe_read_kernel(buf.cast(), len as u32, ctx.as_ptr().cast_const())
                };
                // SAFETY: the buffer lives in the map for the program's whole run.
                (rc == 0).then(|| unsafe { &*buf })
            }
            _ => None,
        };
        Record { ctx, copy }
    }
}

#[inline(always)]
fn field<T>(rec: &Record<'_>, offset: u16) -> Option<T> {
    if offset == ABSENT {
        return None;
    }
    let off = usize::from(offset);
    match rec.copy {
        Some(buf) => {
            if off + core::mem::size_of::<T>() > RECORD_BUF {
                return None;
            }
            // SAFETY: bounds checked above; the read is unaligned-safe.
            Some(unsafe { core::ptr::read_unaligned(buf.as_ptr().add(off).cast::<T>()) })
        }
        None => unsafe { rec.ctx.read_at::<T>(off) }.ok(),
    }
}

#[inline(always)]
fn field_u64(rec: &Record<'_>, offset: u16) -> u64 {
    field::<u64>(rec, offset).unwrap_or(0)
}

/// Fills family, ports and addresses from the record.
#[inline(always)]
fn fill_addrs(ctx: &Record<'_>, layout: &TpLayout, ev: &mut FlowEvent) {
    if layout.addr_style == addr_style::SOCKADDR {
        // struct sockaddr_in / sockaddr_in6: family, be16 port, then v4 address at 4 or
        // v6 address at 8 (after flowinfo).
        let Some(local) = field::<[u8; 28]>(ctx, layout.saddr) else {
            return;
        };
        let Some(remote) = field::<[u8; 28]>(ctx, layout.daddr) else {
            return;
        };
        ev.family = u16::from_ne_bytes([local[0], local[1]]);
        ev.sport = u16::from_be_bytes([local[2], local[3]]);
        ev.dport = u16::from_be_bytes([remote[2], remote[3]]);
        if ev.family == AF_INET6 {
            ev.flags |= flags::IPV6;
            ev.saddr.copy_from_slice(&local[8..24]);
            ev.daddr.copy_from_slice(&remote[8..24]);
        } else {
            ev.saddr[..4].copy_from_slice(&local[4..8]);
            ev.daddr[..4].copy_from_slice(&remote[4..8]);
        }
        return;
    }
    ev.sport = field::<u16>(ctx, layout.sport).unwrap_or(0);
    ev.dport = field::<u16>(ctx, layout.dport).unwrap_or(0);
    // Kernels without `family` store IPv4 sockets as v4-mapped IPv6 addresses; report IPv6 and
    // let the decoder unmap them.
    ev.family = field::<u16>(ctx, layout.family).unwrap_or(AF_INET6);
    if ev.family == AF_INET && layout.saddr != ABSENT {
        ev.saddr[..4].copy_from_slice(&field::<[u8; 4]>(ctx, layout.saddr).unwrap_or([0; 4]));
        ev.daddr[..4].copy_from_slice(&field::<[u8; 4]>(ctx, layout.daddr).unwrap_or([0; 4]));
    } else {
        ev.family = AF_INET6;
        ev.flags |= flags::IPV6;
        ev.saddr = field::<[u8; 16]>(ctx, layout.saddr_v6).unwrap_or([0; 16]);
        ev.daddr = field::<[u8; 16]>(ctx, layout.daddr_v6).unwrap_or([0; 16]);
    }
}

/// Shared body of every tracepoint program.
#[inline(always)]
pub fn handle(tp: &TracePointContext, layout: &TpLayout, kind: EventKind) -> Result<u32, i64> {
    if layout.valid == 0 {
        return Ok(0);
    }
    let rec = Record::new(tp, layout);
    let ctx = &rec;
    if kind == EventKind::StateChange && field::<u16>(ctx, layout.protocol) != Some(IPPROTO_TCP) {
        return Ok(0);
    }
    let sk = field_u64(ctx, layout.skaddr);
    let skb = field_u64(ctx, layout.skbaddr);
    let Scope::In(netns) = sock::check(sk, skb) else {
        return Ok(0);
    };

    let Some(mut slot) = scratch() else {
        return Ok(0);
    };
    let ev = slot.ev();
    let (old_state, new_state) = if kind == EventKind::StateChange {
        (
            field::<i32>(ctx, layout.oldstate).unwrap_or(0) as u8,
            field::<i32>(ctx, layout.newstate).unwrap_or(0) as u8,
        )
    } else {
        let state = match field::<i32>(ctx, layout.state) {
            Some(s) => s as u8,
            None => sock::sk_state(sk).unwrap_or(0),
        };
        (state, state)
    };
    begin(ev, kind, netns, old_state, new_state);
    if kind == EventKind::RstSent {
        match field::<u32>(ctx, layout.reason) {
            Some(reason) => {
                ev.reason = reason;
                ev.flags |= flags::REASON;
                count_rst_reason(reason);
            }
            None => count_rst_reason(REASON_UNKNOWN),
        }
    }

    // Cookie: the record's own field where the kernel has one, else read from the socket
    // (for SYN-ACK retransmits, from the request socket).
    let cookie_sk = if kind == EventKind::RetransmitSynack {
        field_u64(ctx, layout.req)
    } else {
        sk
    };
    let cookie = match field::<u64>(ctx, layout.sock_cookie) {
        Some(c) if c != 0 => c,
        _ => sock::sk_cookie(cookie_sk),
    };
    if cookie != 0 {
        ev.cookie = cookie;
        ev.flags |= flags::COOKIE;
    } else {
        count_no_cookie(kind);
    }
    if sk == 0 {
        ev.flags |= flags::NO_SOCKET;
    }
    if let Some(err) = field::<i32>(ctx, layout.err) {
        ev.args[0] = err as u32;
    }

    attach_owner(kind, sk, ev);
    socket_state_extras(kind, sk, ev);
    fill_addrs(ctx, layout, ev);
    emit(kind, ev);
    if kind == EventKind::RstSent || kind == EventKind::RstReceived {
        repeat::check(ev);
    }
    Ok(0)
}

/// Body of the raw tracepoint programs: `tcp:tcp_retransmit_skb` (`TP_PROTO(sk, skb, err)`,
/// `err` since the record has that field), `tcp:tcp_retransmit_synack` (`sk, req`) and
/// `sock:inet_sock_set_state` (`sk, oldstate, newstate`). Everything else is read from the
/// socket (for SYN-ACKs, the request socket), so the event is the one the regular tracepoint
/// would give, except that its cookie is never generated here (none of these records has one).
///
/// Why raw: the kernel runs a regular tracepoint's program through `trace_call_bpf`, which
/// skips it (only bumping the program's `recursion_misses`) while any other tracing program
/// runs on the same CPU. These three fire in softirq (retransmit timer, handshake, timeouts,
/// resets), which often interrupts a program in process context: our own `lp_set_state` or
/// `lp_destroy_sock` for any socket of the host, or another tool's kprobe. The retransmit was
/// sent and counted in `TcpRetransSegs`, the socket timed out, but neither was reported.
/// Raw tracepoints only guard against the same program recursing on the CPU: an event is
/// still skipped when softirq interrupts this very program in process context (which runs for
/// every socket of the host before the scope check), so heavy connection churn anywhere on
/// the host can still cost one; `bpftool prog show` counts those as `recursion_misses`.
#[inline(always)]
pub fn handle_raw(
    tp: &RawTracePointContext,
    layout: &TpLayout,
    kind: EventKind,
) -> Result<u32, i64> {
    if layout.valid == 0 {
        return Ok(0);
    }
    let sk: u64 = tp.arg(0);
    if kind == EventKind::StateChange && sock::sk_protocol(sk) != Some(IPPROTO_TCP) {
        return Ok(0);
    }
    let skb: u64 = if kind == EventKind::RetransmitSkb {
        tp.arg(1)
    } else {
        0
    };
    let Scope::In(netns) = sock::check(sk, skb) else {
        return Ok(0);
    };

    let Some(mut slot) = scratch() else {
        return Ok(0);
    };
    let ev = slot.ev();
    let (old_state, new_state) = if kind == EventKind::StateChange {
        (tp.arg::<u64>(1) as u8, tp.arg::<u64>(2) as u8)
    } else {
        let state = sock::sk_state(sk).unwrap_or(0);
        (state, state)
    };
    begin(ev, kind, netns, old_state, new_state);

    // For SYN-ACK retransmits the flow is the request socket's.
    let flow_sk: u64 = if kind == EventKind::RetransmitSynack {
        tp.arg(1)
    } else {
        sk
    };
    let cookie = sock::sk_cookie(flow_sk);
    if cookie != 0 {
        ev.cookie = cookie;
        ev.flags |= flags::COOKIE;
    } else {
        count_no_cookie(kind);
    }
    if sk == 0 {
        ev.flags |= flags::NO_SOCKET;
    }
    if kind == EventKind::RetransmitSkb && layout.err != ABSENT {
        // Read through a helper rather than a direct context load, so the program still
        // attaches where the tracepoint has only two arguments (the verifier would reject a
        // load past them).
        // SAFETY: the kernel's argument array, which has a third slot when the record has `err`.
        let arg = unsafe { bpf_probe_read_kernel(tp.as_ptr().cast::<u64>().cast_const().add(2)) };
        if let Ok(err) = arg {
            ev.args[0] = err as u32;
        }
    }

    attach_owner(kind, sk, ev);
    socket_state_extras(kind, sk, ev);
    sock::fill_addrs(flow_sk, ev);
    emit(kind, ev);
    Ok(0)
}

/// The header every record shares; counts the event (always before the ring reserve, so totals
/// stay exact) and a failed connect (SYN_SENT → CLOSE).
#[inline(always)]
fn begin(ev: &mut FlowEvent, kind: EventKind, netns: Option<u64>, old_state: u8, new_state: u8) {
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.kind = kind as u32;
    if let Some(n) = netns {
        ev.netns_cookie = n;
        ev.flags |= flags::NETNS;
    }
    ev.old_state = old_state;
    ev.new_state = new_state;
    count_event(kind);
    if kind == EventKind::StateChange && old_state == TCP_SYN_SENT && new_state == TCP_CLOSE {
        count_misc(misc::CONNECT_FAILED);
    }
}

/// On state changes: the socket's cgroup id, and its error when it closes (which types a
/// failed connect: refused, timed out, unreachable).
#[inline(always)]
fn socket_state_extras(kind: EventKind, sk: u64, ev: &mut FlowEvent) {
    if kind != EventKind::StateChange {
        return;
    }
    if let Some(id) = sock::sk_cgroup_id(sk) {
        ev.args[2] = id as u32;
        ev.args[3] = (id >> 32) as u32;
        ev.flags |= flags::CGROUP;
    }
    if ev.new_state == TCP_CLOSE {
        if let Some(err) = sock::sk_err(sk) {
            ev.args[1] = err as u32;
            ev.flags |= flags::SK_ERR;
        }
    }
}

/// connect() moves the socket to SYN_SENT in the caller's context: the one moment a tracepoint
/// knows which process owns the socket. Remember it for the socket's later events.
#[inline(always)]
fn attach_owner(kind: EventKind, sk: u64, ev: &mut FlowEvent) {
    if sk == 0 {
        return;
    }
    if kind == EventKind::StateChange && ev.new_state == TCP_SYN_SENT {
        let owner = Owner {
            pid: (bpf_get_current_pid_tgid() >> 32) as u32,
            _pad: 0,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        };
        // A full map evicts the oldest entry (LRU); a failed insert only loses the owner.
        let _ = SK_OWNER.insert(sk, owner, 0);
        ev.pid = owner.pid;
        ev.comm = owner.comm;
        ev.flags |= flags::PID;
        return;
    }
    if let Some(owner) = unsafe { SK_OWNER.get(sk) } {
        ev.pid = owner.pid;
        ev.comm = owner.comm;
        ev.flags |= flags::PID;
    }
    if kind == EventKind::DestroySock {
        let _ = SK_OWNER.remove(sk);
    }
}
