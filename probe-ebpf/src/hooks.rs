//! The bodies of the tracepoint hooks, one per fact, generic over where flow state lives.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use probe_common::{
    flags,
    kernel::{net, tcp_state},
    misc, role, state_flags, EventKind, FlowRecord, FlowState, SockStats,
};

use crate::{
    counters::{count_event, count_misc, count_no_cookie, count_rst_reason},
    emit::{send, Header},
    flow::{self, Sk, Store},
    maps::TUNING,
    repeat,
    sock::{self, Addrs, Scope},
};

/// "This kernel does not report a reason" (a tracepoint argument it does not pass); counted in
/// the last slot of `RST_REASON_COUNTS`.
pub const REASON_UNKNOWN: u32 = u32::MAX;

/// The time of this hit (`bpf_ktime_get_ns`).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Sends a `kind` record of a socket (or of a packet): its header, its addresses, then what
/// `extra` adds. Every send of the hooks goes through here.
#[inline(always)]
fn send_hit(
    kind: EventKind,
    flow: Option<&mut FlowState>,
    sk_err: i32,
    header: Header,
    addrs: &Addrs,
    extra: impl FnOnce(&mut FlowRecord),
) {
    send(kind, flow, sk_err, |rec| {
        header.write(rec);
        addrs.write(rec);
        extra(rec);
    });
}

/// Where a hook finds the flow of a socket it met mid-life (in scope).
enum Found {
    Flow(&'static mut FlowState),
    /// No state (out of memory, or a closed socket of the fallback store); the netns cookie
    /// (0: unknown).
    NoState(u64),
}

/// The flow of `sk`, created (LATE) where it has none and `create`; `None` out of scope.
#[inline(always)]
fn find<S: Store>(sk: Sk, now: u64, create: bool) -> Option<Found> {
    if let Some(st) = S::get(sk) {
        return Some(Found::Flow(st));
    }
    let Scope::In(netns) = sock::check(sk.addr, 0) else {
        return None;
    };
    if !create {
        return Some(Found::NoState(netns));
    }
    Some(match flow::of_socket::<S>(sk, now) {
        Some(st) => Found::Flow(st),
        None => Found::NoState(netns),
    })
}

/// A `kind` hit on a full socket met mid-life: its time and flow, counted once in scope;
/// `None` out of scope.
#[inline(always)]
fn hit<S: Store>(sk: Sk, kind: EventKind) -> Option<(u64, Found)> {
    let now = now();
    let found = find::<S>(sk, now, true)?;
    count_event(kind);
    Some((now, found))
}

/// The fallback store reads the cookie as stored; sock_ops generates it after connect()
/// started, so look again until it is there.
#[inline(always)]
fn refresh_cookie<S: Store>(st: &mut FlowState, sk: Sk) {
    if st.cookie == 0 {
        st.cookie = S::cookie(sk);
    }
}

/// A flow about to be sent, with the cookie and netns cookie its record names.
#[inline(always)]
fn named<S: Store>(st: &mut FlowState, sk: Sk) -> (Option<&mut FlowState>, u64, u64) {
    refresh_cookie::<S>(st, sk);
    let (cookie, netns) = (st.cookie, st.netns_cookie);
    (Some(st), cookie, netns)
}

/// The kernel's own RTO count (6.7+), where it keeps one: the flow's RTOs without sock_ops.
#[inline(always)]
pub fn note_rtos(st: &mut FlowState, total_rto: u32) {
    if total_rto != sock::NO_RTO_COUNT {
        st.counts.rtos = st.counts.rtos.max(total_rto);
    }
}

/// connect() binds the local port after its state change: note it from the next hit, since
/// the kernel releases it again before the CLOSE hook.
#[inline(always)]
fn note_port(st: &mut FlowState, sk: Sk) {
    if st.local_port == 0 {
        st.local_port = sock::local_port(sk.addr);
    }
}

#[inline(always)]
pub fn wants_detail(st: &FlowState) -> bool {
    st.flags & state_flags::DETAIL != 0
}

/// `sock:inet_sock_set_state` (TCP): starts flows at connect(), listen() and accept, marks
/// them established, and sends each flow's FlowEnd when it reaches CLOSE.
#[inline(always)]
pub fn state_change<S: Store>(sk: Sk, old: u8, new: u8) {
    // Only TCP sockets in scope get state: with it, neither needs checking again.
    let existing = S::get(sk);
    let netns = match &existing {
        Some(st) => st.netns_cookie,
        None => {
            if sock::sk_protocol(sk.addr) != net::IPPROTO_TCP {
                return;
            }
            match sock::check(sk.addr, 0) {
                Scope::In(n) => n,
                Scope::Out => return,
            }
        }
    };
    let now = now();
    match (old, new) {
        (_, tcp_state::CLOSE) => flow_end::<S>(sk, existing, netns, old, new, now),
        (_, tcp_state::SYN_SENT) | (_, tcp_state::LISTEN) | (_, tcp_state::SYN_RECV) => {
            let (kind, role_value) = match new {
                tcp_state::SYN_SENT => (EventKind::Connect, role::CLIENT),
                tcp_state::LISTEN => (EventKind::StateChange, role::LISTENER),
                _ => (EventKind::StateChange, role::SERVER),
            };
            count_event(kind);
            // An accepted socket already holds its listener's state (cloned), owner included.
            let st = match existing {
                Some(st) => Some(st),
                None => S::create(sk),
            };
            let Some(st) = st else {
                detail::<S>(kind, sk, None, now, netns, old, new);
                return;
            };
            // Kernels up to 6.12 at least announce an accepted socket's SYN_RECV before giving it its
            // peer and its own cookie: it still holds its listener's. Its cookie is taken when
            // it is established, and this state change is not reported on its own (no record
            // could name the flow); `start_ns` keeps its time.
            let unfinished_child = new == tcp_state::SYN_RECV && sock::remote_port(sk.addr) == 0;
            let cookie = if unfinished_child { 0 } else { S::cookie(sk) };
            flow::start(st, role_value, now, cookie, netns);
            if new == tcp_state::SYN_RECV {
                if st.flags & state_flags::OWNER == 0 {
                    st.cgroup_id = sock::sk_cgroup_id(sk.addr);
                }
                st.local_port = sock::local_port(sk.addr);
            } else {
                flow::take_owner(st);
            }
            flow::decide_detail(st, sk);
            if unfinished_child {
                if wants_detail(st) {
                    count_misc(misc::UNNAMED_STATE_CHANGE);
                }
                return;
            }
            detail::<S>(kind, sk, Some(st), now, netns, old, new);
        }
        (tcp_state::SYN_SENT | tcp_state::SYN_RECV, tcp_state::ESTABLISHED) => {
            let kind = if old == tcp_state::SYN_SENT {
                EventKind::ActiveEstablished
            } else {
                EventKind::PassiveEstablished
            };
            count_event(kind);
            let flow = match find::<S>(sk, now, true) {
                Some(Found::Flow(st)) => {
                    if st.role == role::UNKNOWN {
                        st.role = if old == tcp_state::SYN_SENT {
                            role::CLIENT
                        } else {
                            role::SERVER
                        };
                    }
                    st.established_ns = now;
                    st.local_port = sock::local_port(sk.addr);
                    refresh_cookie::<S>(st, sk);
                    flow::decide_detail(st, sk);
                    Some(st)
                }
                Some(Found::NoState(_)) => None,
                None => return,
            };
            detail::<S>(kind, sk, flow, now, netns, old, new);
        }
        _ => {
            count_event(EventKind::StateChange);
            detail::<S>(EventKind::StateChange, sk, existing, now, netns, old, new);
        }
    }
}

/// A detail record of a state change: for a flow with detail on, or, when detail is on for
/// every flow, for a socket without state. One send for both: each copy of a send is more paths
/// for the verifier.
#[inline(always)]
fn detail<S: Store>(
    kind: EventKind,
    sk: Sk,
    flow: Option<&mut FlowState>,
    now: u64,
    netns: u64,
    old: u8,
    new: u8,
) {
    let (flow, cookie, netns) = match flow {
        Some(st) if wants_detail(st) => named::<S>(st, sk),
        None if flow::detail_for_all() => (None, sock::stored_cookie(sk.addr), netns),
        _ => return,
    };
    let header = Header {
        now,
        cookie,
        netns,
        old,
        new,
    };
    send_hit(kind, flow, 0, header, &sock::addrs(sk.addr), |_| {});
}

/// The flow reached CLOSE: its summary, with the socket's error and counters. A listener is
/// not a flow: its close is a plain state change.
#[inline(always)]
fn flow_end<S: Store>(
    sk: Sk,
    mut existing: Option<&'static mut FlowState>,
    netns: u64,
    old: u8,
    new: u8,
    now: u64,
) {
    if old == tcp_state::SYN_SENT {
        count_misc(misc::CONNECT_FAILED);
    }
    let is_listener = match &existing {
        Some(st) => st.role == role::LISTENER,
        None => old == tcp_state::LISTEN,
    };
    if is_listener {
        count_event(EventKind::StateChange);
        detail::<S>(EventKind::StateChange, sk, existing, now, netns, old, new);
        S::release(sk);
        return;
    }
    let kind = EventKind::FlowEnd;
    count_event(kind);
    let sk_err = sock::sk_err(sk.addr);
    let has_sk_err = sock::has_sk_err();
    let (stats, total_rto) = sock::tcp_stats(sk.addr);
    let mut addrs = sock::addrs(sk.addr);
    if let Some(st) = existing.as_deref_mut() {
        // The kernel released the local port just before this hook.
        if addrs.sport == 0 {
            addrs.sport = st.local_port;
        }
        note_rtos(st, total_rto);
    }
    // A connect closed before any other hit noted its port: the socket still has it.
    if addrs.sport == 0 {
        addrs.sport = sock::released_local_port(sk.addr);
    }
    let header = |cookie| Header {
        now,
        cookie,
        netns,
        old,
        new: tcp_state::CLOSE,
    };
    let end = |rec: &mut FlowRecord| {
        if has_sk_err {
            rec.sk_err = sk_err;
            rec.flags |= flags::SK_ERR;
        }
        rec.stats = stats;
        rec.flags |= flags::STATS;
    };
    match existing {
        Some(st) => {
            refresh_cookie::<S>(st, sk);
            let h = header(st.cookie);
            send_hit(kind, Some(&mut *st), sk_err, h, &addrs, end);
            st.flags |= state_flags::ENDED;
            S::release(sk);
        }
        None => {
            // Opened before linkprobe (or state lost): reported with what the socket knows.
            count_misc(misc::STATE_LATE);
            let cookie = S::cookie(sk);
            send_hit(kind, None, sk_err, header(cookie), &addrs, |rec| {
                end(rec);
                rec.flow.cookie = cookie;
                rec.flow.netns_cookie = netns;
                rec.flow.start_ns = now;
                rec.flow.flags = state_flags::LATE;
                rec.flags |= flags::FLOW;
            });
        }
    }
}

/// `tcp:tcp_receive_reset`: the peer reset this socket. The socket closes at once, and its
/// FlowEnd carries the count, so only detail sends a record here.
#[inline(always)]
pub fn rst_received<S: Store>(sk: Sk) {
    let kind = EventKind::RstReceived;
    let Some((now, found)) = hit::<S>(sk, kind) else {
        return;
    };
    let addrs = sock::addrs(sk.addr);
    let state = sock::sk_state(sk.addr);
    let (mut flow, cookie, netns) = match found {
        Found::Flow(st) => {
            st.counts.rst_received = st.counts.rst_received.saturating_add(1);
            note_port(st, sk);
            named::<S>(st, sk)
        }
        // No flow will carry it: the record is the fact.
        Found::NoState(netns) => (None, S::cookie(sk), netns),
    };
    let header = Header::at(now, cookie, netns, state);
    // With state, the flow's FlowEnd (a received RST closes the socket) carries the count.
    if flow.as_deref().is_none_or(wants_detail) {
        send_hit(kind, flow.as_deref_mut(), 0, header, &addrs, |_| {});
    }
    repeat::check(&header, &addrs, flow);
}

/// `tcp:tcp_send_reset`: this host sent an RST, on a flow, on a time-wait or request socket,
/// or for no socket at all (a closed port). Always a record.
#[inline(always)]
pub fn rst_sent<S: Store>(sk: Sk, skb: u64, reason: u32) {
    let kind = EventKind::RstSent;
    let now = now();
    let state = if sk.addr == 0 {
        0
    } else {
        sock::sk_state(sk.addr)
    };
    // Only full sockets have flow state; a closed one keeps its socket storage (the FlowEnd
    // was sent: this is an abort's RST), but the fallback store already let it go.
    let found = if sk.addr == 0 || !sock::is_full(state) {
        match sock::check(sk.addr, skb) {
            Scope::In(netns) => Some(Found::NoState(netns)),
            Scope::Out => None,
        }
    } else {
        find::<S>(sk, now, state != tcp_state::CLOSE)
    };
    let (mut flow, cookie, netns) = match found {
        Some(Found::Flow(st)) => {
            st.counts.rst_sent = st.counts.rst_sent.saturating_add(1);
            if reason != REASON_UNKNOWN {
                st.last_rst_reason = reason;
            }
            named::<S>(st, sk)
        }
        // No socket (a closed port), a time-wait or request socket: the record is the fact.
        Some(Found::NoState(netns)) => (None, if sk.addr == 0 { 0 } else { S::cookie(sk) }, netns),
        None => return,
    };
    count_event(kind);
    count_rst_reason(reason);
    if cookie == 0 {
        count_no_cookie(kind);
    }
    let addrs = if sk.addr == 0 {
        sock::packet_addrs(skb)
    } else {
        sock::addrs(sk.addr)
    };
    let header = Header::at(now, cookie, netns, state);
    send_hit(kind, flow.as_deref_mut(), 0, header, &addrs, |rec| {
        if sk.addr == 0 {
            rec.flags |= flags::NO_SOCKET;
        }
        if reason != REASON_UNKNOWN {
            rec.reason = reason;
            rec.flags |= flags::REASON;
        }
    });
    repeat::check(&header, &addrs, flow);
}

/// Whether a rate-limited report of this flow may go now (and, if so, it goes now).
#[inline(always)]
pub fn report_due(st: &mut FlowState, now: u64) -> bool {
    if wants_detail(st) {
        return true;
    }
    if st.last_report_ns != 0
        && now.saturating_sub(st.last_report_ns) < TUNING.load().report_interval_ns
    {
        count_misc(misc::HELD_BACK);
        return false;
    }
    st.last_report_ns = now;
    true
}

/// `tcp:tcp_retransmit_skb`: a SYN sent again (always a record: a connect is failing now) or a
/// data segment (counted; at most one record per flow per report interval).
#[inline(always)]
pub fn retransmit<S: Store>(sk: Sk, has_err: bool, err: i32) {
    let kind = EventKind::Retransmit;
    let Some((now, found)) = hit::<S>(sk, kind) else {
        return;
    };
    let state = sock::sk_state(sk.addr);
    let failed = has_err && err != 0;
    let syn = !failed && state == tcp_state::SYN_SENT;
    let addrs = sock::addrs(sk.addr);
    // Data retransmits report the socket's counters (and its RTOs, where the kernel counts them).
    // Plain values with a flag, not an Option: see `sock::window_u64`.
    let (stats, total_rto) = if syn {
        (SockStats::default(), sock::NO_RTO_COUNT)
    } else {
        sock::tcp_stats(sk.addr)
    };
    let extra = |rec: &mut FlowRecord| {
        if has_err {
            rec.args[0] = err as u32;
            rec.flags |= flags::ERR;
        }
        if !syn {
            rec.stats = stats;
            rec.flags |= flags::STATS;
        }
    };
    // One send for both cases: every copy of a send is more paths for the verifier to walk.
    let (flow, cookie, netns) = match found {
        Found::Flow(st) => {
            let c = &mut st.counts;
            if failed {
                c.retrans_failed = c.retrans_failed.saturating_add(1);
            } else if syn {
                c.syn_retrans = c.syn_retrans.saturating_add(1);
            } else {
                c.data_retrans = c.data_retrans.saturating_add(1);
            }
            note_rtos(st, total_rto);
            note_port(st, sk);
            if !syn && !report_due(st, now) {
                return;
            }
            named::<S>(st, sk)
        }
        Found::NoState(netns) => (None, S::cookie(sk), netns),
    };
    let header = Header::at(now, cookie, netns, state);
    send_hit(kind, flow, 0, header, &addrs, extra);
}

/// `tcp:tcp_retransmit_synack`: a listener sent its SYN-ACK again. The flow is the request
/// socket's, which has no state of its own: always a record.
#[inline(always)]
pub fn retransmit_synack(listener: u64, req: u64) {
    let Scope::In(netns) = sock::check(listener, 0) else {
        return;
    };
    let kind = EventKind::RetransmitSynack;
    count_event(kind);
    let now = now();
    let cookie = sock::stored_cookie(req);
    if cookie == 0 {
        count_no_cookie(kind);
    }
    let header = Header::at(now, cookie, netns, sock::sk_state(req));
    let addrs = sock::addrs(req);
    send_hit(kind, None, 0, header, &addrs, |_| {});
}
