//! The cgroup `sock_ops` program: connect, handshake completion, and (through
//! `bpf_sock_ops_cb_flags_set`) state, retransmit, RTO and RTT callbacks of every TCP socket.
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RETRANS_CB, BPF_SOCK_OPS_RETRANS_CB_FLAG, BPF_SOCK_OPS_RTO_CB,
        BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    programs::SockOpsContext,
    EbpfContext as _,
};
use aya_log_ebpf::warn;
use probe_common::{flags, misc, EventKind};

use crate::{
    emit::{count_event, count_misc, count_no_cookie, emit, scratch},
    maps::{RTT_LAST, SCOPE, TUNING},
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// sock_ops returns 1 for "continue"; anything else would fail socket operations.
const SOCK_OPS_OK: u32 = 1;

const CALLBACKS: u32 = BPF_SOCK_OPS_STATE_CB_FLAG
    | BPF_SOCK_OPS_RETRANS_CB_FLAG
    | BPF_SOCK_OPS_RTO_CB_FLAG
    | BPF_SOCK_OPS_RTT_CB_FLAG;

fn kind_of(op: u32) -> Option<EventKind> {
    Some(match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB => EventKind::Connect,
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => EventKind::ActiveEstablished,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => EventKind::PassiveEstablished,
        BPF_SOCK_OPS_STATE_CB => EventKind::SockOpsState,
        BPF_SOCK_OPS_RETRANS_CB => EventKind::SockOpsRetrans,
        BPF_SOCK_OPS_RTO_CB => EventKind::Rto,
        BPF_SOCK_OPS_RTT_CB => EventKind::Rtt,
        _ => return None,
    })
}

pub fn handle(ctx: &SockOpsContext) -> Result<u32, i64> {
    let Some(kind) = kind_of(ctx.op()) else {
        return Ok(SOCK_OPS_OK);
    };
    let family = ctx.family();
    if family != AF_INET && family != AF_INET6 {
        return Ok(SOCK_OPS_OK);
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let filter = SCOPE.load();
    if filter.netns_cookie != 0 && netns != filter.netns_cookie {
        return Ok(SOCK_OPS_OK);
    }
    if matches!(
        kind,
        EventKind::Connect | EventKind::ActiveEstablished | EventKind::PassiveEstablished
    ) {
        let wanted = ctx.cb_flags() | CALLBACKS;
        if let Err(err) = ctx.set_cb_flags(wanted as i32) {
            count_misc(misc::CB_FLAGS_FAILED);
            warn!(
                ctx,
                "bpf_sock_ops_cb_flags_set failed ({}): socket misses callbacks", err
            );
        }
    }
    count_event(kind);

    let now = unsafe { bpf_ktime_get_ns() };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if cookie == 0 {
        count_no_cookie(kind);
    }
    if kind == EventKind::Rtt {
        // RTT callbacks come with every ACK: count them all, send one record per flow per
        // sample interval.
        if let Some(last) = unsafe { RTT_LAST.get(cookie) } {
            if now.saturating_sub(*last) < TUNING.load().rtt_sample_ns {
                count_misc(misc::RTT_NOT_SAMPLED);
                return Ok(SOCK_OPS_OK);
            }
        }
        // A failed insert only means the next sample is sent too.
        let _ = RTT_LAST.insert(cookie, now, 0);
    }

    let ops = unsafe { &*ctx.ops };
    let Some(mut slot) = scratch() else {
        return Ok(SOCK_OPS_OK);
    };
    let ev = slot.ev();
    ev.ts_ns = now;
    ev.cookie = cookie;
    ev.netns_cookie = netns;
    ev.kind = kind as u32;
    ev.flags = flags::NETNS | flags::STATS;
    ev.family = family as u16;
    ev.sport = ctx.local_port() as u16;
    ev.dport = u32::from_be(ctx.remote_port()) as u16;
    ev.srtt_us = ops.srtt_us >> 3;
    ev.total_retrans = ops.total_retrans;
    ev.segs_in = ops.segs_in;
    ev.segs_out = ops.segs_out;
    ev.data_segs_in = ops.data_segs_in;
    ev.data_segs_out = ops.data_segs_out;
    ev.bytes_received = ops.bytes_received;
    ev.bytes_acked = ops.bytes_acked;
    if cookie != 0 {
        ev.flags |= flags::COOKIE;
    }
    ev.args = args(ctx);
    if kind == EventKind::SockOpsState {
        ev.old_state = ev.args[0] as u8;
        ev.new_state = ev.args[1] as u8;
    } else {
        ev.old_state = ops.state as u8;
        ev.new_state = ev.old_state;
    }
    if family == AF_INET6 {
        ev.flags |= flags::IPV6;
        // SAFETY: `ops` is the context pointer; fields are read in place.
        let (local, remote) = unsafe {
            (
                ip6_words(&(*ctx.ops).local_ip6),
                ip6_words(&(*ctx.ops).remote_ip6),
            )
        };
        ev.saddr = words_to_bytes(local);
        ev.daddr = words_to_bytes(remote);
    } else {
        ev.saddr[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
        ev.daddr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
    }
    emit(kind, ev);
    Ok(SOCK_OPS_OK)
}

/// The callback arguments. Each is a separate volatile load at a constant context offset:
/// the verifier rejects loads through a modified context pointer, which a loop would produce.
#[inline(always)]
fn args(ctx: &SockOpsContext) -> [u32; 4] {
    // SAFETY: `ops` is the context pointer; each field is read in place.
    unsafe {
        let a = &(*ctx.ops).__bindgen_anon_1.args;
        [
            core::ptr::read_volatile(&a[0]),
            core::ptr::read_volatile(&a[1]),
            core::ptr::read_volatile(&a[2]),
            core::ptr::read_volatile(&a[3]),
        ]
    }
}

/// Word-by-word volatile loads so each stays a constant-offset context access.
#[inline(always)]
fn ip6_words(words: &[u32; 4]) -> [u32; 4] {
    // SAFETY: `words` points into the context; each element is read in place.
    unsafe {
        [
            core::ptr::read_volatile(&words[0]),
            core::ptr::read_volatile(&words[1]),
            core::ptr::read_volatile(&words[2]),
            core::ptr::read_volatile(&words[3]),
        ]
    }
}

/// sock_ops IPv6 addresses are four network-order words; keep their bytes in memory order.
#[inline(always)]
fn words_to_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    out
}
