//! Record (+ the flow it updated) → the signals the detectors count. A record with the flow's
//! state gives every fact the kernel counted since the flow's previous record (usually the one
//! this record is about); a record without it is its own fact.
use std::time::Duration;

use super::flow::{CloseCause, Flow};
use crate::{
    event::rst_reason::ReasonNames,
    event::{Detail, Event, FlowCounts, RepeatScope, Role, SockStats, TcpState},
    pipeline::signal::{Peer, RetransmitKind, RstDirection, Signal},
};

/// Scope of a flow's peer: a client's peer keeps its service port; a server's peer is the
/// address alone and the scope also names our listening port.
pub fn scope(flow: &Flow) -> (Peer, Option<u16>) {
    match flow.role {
        Some(Role::Client) => (
            Peer {
                addr: flow.remote.ip(),
                port: Some(flow.remote.port()),
                netns: flow.key.netns,
            },
            None,
        ),
        Some(Role::Server) => (
            Peer {
                addr: flow.remote.ip(),
                port: None,
                netns: flow.key.netns,
            },
            Some(flow.local.port()),
        ),
        None => (
            Peer {
                addr: flow.remote.ip(),
                port: None,
                netns: flow.key.netns,
            },
            None,
        ),
    }
}

fn reason_name(reason: Option<u32>, reasons: &ReasonNames) -> Option<std::sync::Arc<str>> {
    reason.map(|r| reasons.shared(r))
}

fn data_segments(flow: &mut Flow, ts_ns: u64, stats: &SockStats, out: &mut Vec<Signal>) {
    let sent = stats.data_segs_out.saturating_sub(flow.reported_segs_out);
    let retransmitted = stats.total_retrans.saturating_sub(flow.reported_retrans);
    if sent == 0 && retransmitted == 0 {
        return;
    }
    flow.reported_segs_out = flow.reported_segs_out.max(stats.data_segs_out);
    flow.reported_retrans = flow.reported_retrans.max(stats.total_retrans);
    let (peer, _) = scope(flow);
    out.push(Signal::DataSegments {
        ts_ns,
        peer,
        sent: u64::from(sent),
        retransmitted: u64::from(retransmitted),
    });
}

/// Signals of a record that belongs to `flow` (already updated). `close_changed` when this
/// record closed the flow or corrected its close cause (each flow's failure is reported once:
/// only a FIN close is ever corrected, and a FIN close reports none).
pub fn from_flow(
    flow: &mut Flow,
    ev: &Event,
    reasons: &ReasonNames,
    close_changed: bool,
    out: &mut Vec<Signal>,
) {
    let ts_ns = ev.ts_ns;
    let cookie = flow.key.cookie;
    let (peer, local_port) = scope(flow);
    connection(flow, peer, local_port, out);
    let first_fact = out.len();
    match ev.flow {
        Some(snapshot) => {
            let new = snapshot.counts.since(&flow.accounted);
            flow.accounted = max_counts(&flow.accounted, &snapshot.counts);
            facts(flow, ev, &new, reasons, out);
        }
        None => bare_fact(flow, ev, reasons, out),
    }
    if let Some(facts) = out.get_mut(first_fact..) {
        mark_first_reset(flow, facts);
    }
    if let Some(stats) = &ev.stats {
        data_segments(flow, ts_ns, stats, out);
    }
    match &ev.detail {
        Detail::FlowEnd { .. } if flow.srtt_us > 0 => out.push(Signal::Rtt {
            ts_ns,
            peer,
            rtt: Duration::from_micros(u64::from(flow.srtt_us)),
        }),
        Detail::RepeatRst { scope: s, count } => out.push(Signal::RepeatRst {
            ts_ns,
            scope: *s,
            peer: Some(peer),
            local_port: local_port.or(Some(ev.local.port())),
            netns: peer.netns,
            cookie: Some(cookie),
            count: *count,
        }),
        _ => {}
    }
    if close_changed {
        let cause = flow.close.and_then(CloseCause::failure);
        if let Some(cause) = cause {
            out.push(Signal::ConnectFailed {
                ts_ns,
                peer,
                local_port,
                cookie,
                role: flow.role,
                cause,
            });
        }
    }
}

/// The first RST of a flow whose connection was counted carries that connection's time: the
/// RST ratio counts the flow as reset once, against the window its connection is in, so the
/// ratio is of the same flows (never above 100 %).
fn mark_first_reset(flow: &mut Flow, facts: &mut [Signal]) {
    if !flow.connection_counted || flow.reset_counted {
        return;
    }
    if let Some(Signal::Rst { connection_ns, .. }) =
        facts.iter_mut().find(|s| matches!(s, Signal::Rst { .. }))
    {
        *connection_ns = Some(flow.start_ns);
        flow.reset_counted = true;
    }
}

fn max_counts(a: &FlowCounts, b: &FlowCounts) -> FlowCounts {
    FlowCounts {
        syn_retrans: a.syn_retrans.max(b.syn_retrans),
        data_retrans: a.data_retrans.max(b.data_retrans),
        retrans_failed: a.retrans_failed.max(b.retrans_failed),
        rtos: a.rtos.max(b.rtos),
        rst_sent: a.rst_sent.max(b.rst_sent),
        rst_received: a.rst_received.max(b.rst_received),
    }
}

/// The connection (once per flow: a client from connect(), a server once established) and a
/// client's handshake time once known. Flows open before linkprobe are not new connections.
fn connection(flow: &mut Flow, peer: Peer, local_port: Option<u16>, out: &mut Vec<Signal>) {
    if flow.preexisting {
        return;
    }
    let role = match flow.role {
        Some(Role::Client) => Role::Client,
        Some(Role::Server) if flow.established => Role::Server,
        _ => return,
    };
    if !flow.connection_counted {
        flow.connection_counted = true;
        out.push(Signal::Connection {
            ts_ns: flow.start_ns,
            role,
            peer,
            local_port,
            cookie: flow.key.cookie,
        });
    }
    let handshake_ns = flow.handshake_ns.map(std::num::NonZeroU64::get);
    if let (false, Role::Client, Some(ns)) = (flow.handshake_counted, role, handshake_ns) {
        flow.handshake_counted = true;
        out.push(Signal::Handshake {
            ts_ns: flow.start_ns.saturating_add(ns),
            peer,
            duration: Duration::from_nanos(ns),
        });
    }
}

/// The facts a record's counts add: one signal per RST, retransmit and RTO.
fn facts(flow: &Flow, ev: &Event, new: &FlowCounts, reasons: &ReasonNames, out: &mut Vec<Signal>) {
    let ts_ns = ev.ts_ns;
    let cookie = Some(flow.key.cookie);
    let (peer, local_port) = scope(flow);
    let sent_reason = match &ev.detail {
        Detail::RstSent { reason, .. } => *reason,
        _ => flow.last_rst_reason,
    };
    let rst = |direction, reason: Option<u32>| Signal::Rst {
        ts_ns,
        direction,
        peer,
        local_port,
        cookie,
        reason: reason_name(reason, reasons),
        after_established: flow.established,
        connection_ns: None,
    };
    let retransmit = |kind| Signal::Retransmit {
        ts_ns,
        peer,
        cookie,
        kind,
    };
    let since_first_syn = flow
        .first_syn_ns()
        .map(|first| Duration::from_nanos(ts_ns.saturating_sub(first)));
    let repeat = |n: u32, signal: Signal, out: &mut Vec<Signal>| {
        for _ in 0..n {
            out.push(signal.clone());
        }
    };
    repeat(new.rst_sent, rst(RstDirection::Sent, sent_reason), out);
    repeat(new.rst_received, rst(RstDirection::Received, None), out);
    repeat(
        new.syn_retrans,
        retransmit(RetransmitKind::Syn { since_first_syn }),
        out,
    );
    repeat(new.data_retrans, retransmit(RetransmitKind::Data), out);
    repeat(new.retrans_failed, retransmit(RetransmitKind::Failed), out);
    repeat(new.rtos, retransmit(RetransmitKind::Rto), out);
}

/// A record without flow state is its own fact (the fallback store's RTO, a post-close RST).
fn bare_fact(flow: &Flow, ev: &Event, reasons: &ReasonNames, out: &mut Vec<Signal>) {
    let ts_ns = ev.ts_ns;
    let cookie = Some(flow.key.cookie);
    let (peer, local_port) = scope(flow);
    let signal = match &ev.detail {
        Detail::RstSent { reason, .. } => Signal::Rst {
            ts_ns,
            direction: RstDirection::Sent,
            peer,
            local_port,
            cookie,
            reason: reason_name(*reason, reasons),
            after_established: flow.established,
            connection_ns: None,
        },
        Detail::RstReceived { .. } => Signal::Rst {
            ts_ns,
            direction: RstDirection::Received,
            peer,
            local_port,
            cookie,
            reason: None,
            after_established: flow.established,
            connection_ns: None,
        },
        Detail::Retransmit { state, err } => Signal::Retransmit {
            ts_ns,
            peer,
            cookie,
            kind: retransmit_kind(*state, *err, None),
        },
        Detail::Rto { .. } => Signal::Retransmit {
            ts_ns,
            peer,
            cookie,
            kind: RetransmitKind::Rto,
        },
        Detail::RetransmitSynack => Signal::Retransmit {
            ts_ns,
            peer,
            cookie,
            kind: RetransmitKind::SynAck,
        },
        _ => return,
    };
    out.push(signal);
}

/// A retransmit the kernel reported without flow state: a SYN in SYN_SENT, else data; `Failed`
/// when the kernel could not send it.
fn retransmit_kind(
    state: TcpState,
    err: Option<i32>,
    since_first_syn: Option<Duration>,
) -> RetransmitKind {
    if err.unwrap_or(0) != 0 {
        RetransmitKind::Failed
    } else if state == TcpState::SYN_SENT {
        RetransmitKind::Syn { since_first_syn }
    } else {
        RetransmitKind::Data
    }
}

/// Signals of a record without a socket cookie: an RST for a closed port (our refusal), the
/// kernel's repeat-RST alert about such RSTs, and any RST or retransmit without a flow (every
/// such event is still counted).
pub fn socketless(ev: &Event, reasons: &ReasonNames, out: &mut Vec<Signal>) {
    let peer = Peer {
        addr: ev.remote.ip(),
        port: None,
        netns: ev.netns_cookie.unwrap_or(0),
    };
    let local_port = Some(ev.local.port());
    match &ev.detail {
        Detail::RstSent { reason, .. } => out.push(Signal::Rst {
            ts_ns: ev.ts_ns,
            direction: RstDirection::Sent,
            peer,
            local_port,
            cookie: ev.cookie,
            reason: reason_name(*reason, reasons),
            after_established: false,
            connection_ns: None,
        }),
        Detail::RstReceived { .. } => out.push(Signal::Rst {
            ts_ns: ev.ts_ns,
            direction: RstDirection::Received,
            peer,
            local_port,
            cookie: ev.cookie,
            reason: None,
            after_established: false,
            connection_ns: None,
        }),
        Detail::Retransmit { state, err } => out.push(Signal::Retransmit {
            ts_ns: ev.ts_ns,
            peer,
            cookie: ev.cookie,
            kind: retransmit_kind(*state, *err, None),
        }),
        Detail::Rto { .. } => out.push(Signal::Retransmit {
            ts_ns: ev.ts_ns,
            peer,
            cookie: ev.cookie,
            kind: RetransmitKind::Rto,
        }),
        Detail::RetransmitSynack => out.push(Signal::Retransmit {
            ts_ns: ev.ts_ns,
            peer,
            cookie: ev.cookie,
            kind: RetransmitKind::SynAck,
        }),
        Detail::RepeatRst { scope, count } => out.push(Signal::RepeatRst {
            ts_ns: ev.ts_ns,
            scope: *scope,
            peer: (*scope == RepeatScope::Peer).then_some(peer),
            local_port,
            netns: peer.netns,
            cookie: ev.cookie,
            count: *count,
        }),
        _ => {}
    }
}
