//! Event (+ the flow it updated) → the signals the detectors count.
use std::time::Duration;

use super::{CloseCause, Flow};
use crate::{
    event::{Detail, Event, RepeatScope, Role, SockStats, TcpState},
    rst_reason::ReasonNames,
    signal::{ConnectFailure, Peer, RstDirection, Signal},
};

/// Scope of a flow's peer: a client's peer keeps its service port; a server's peer is the
/// address alone and the scope also names our listening port.
fn scope(flow: &Flow) -> (Peer, Option<u16>) {
    match flow.role {
        Some(Role::Client) => (
            Peer {
                addr: flow.remote.ip(),
                port: Some(flow.remote.port()),
            },
            None,
        ),
        Some(Role::Server) => (
            Peer {
                addr: flow.remote.ip(),
                port: None,
            },
            Some(flow.local.port()),
        ),
        None => (
            Peer {
                addr: flow.remote.ip(),
                port: None,
            },
            None,
        ),
    }
}

fn reason_name(reason: Option<u32>, reasons: &ReasonNames) -> Option<String> {
    reason.map(|r| reasons.name(r))
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

/// Signals of an event that belongs to `flow` (already updated). `just_closed` when this event
/// closed it.
pub fn from_flow(
    flow: &mut Flow,
    ev: &Event,
    reasons: &ReasonNames,
    just_closed: bool,
    out: &mut Vec<Signal>,
) {
    let ts_ns = ev.ts_ns;
    let cookie = flow.key.cookie;
    let (peer, local_port) = scope(flow);
    match &ev.detail {
        Detail::Connect { .. } => out.push(Signal::Connection {
            ts_ns,
            peer,
            local_port,
            cookie,
        }),
        Detail::Established {
            role: Role::Server,
            stats,
        } => {
            out.push(Signal::Connection {
                ts_ns,
                peer,
                local_port,
                cookie,
            });
            data_segments(flow, ts_ns, stats, out);
        }
        Detail::Established { stats, .. }
        | Detail::SockOpsState { stats, .. }
        | Detail::SockOpsRetrans { stats, .. }
        | Detail::Rto { stats, .. }
        | Detail::Rtt { stats, .. } => data_segments(flow, ts_ns, stats, out),
        Detail::RstReceived { .. } | Detail::RstSent { .. } => {
            let (direction, reason) = match &ev.detail {
                Detail::RstSent { reason, .. } => (RstDirection::Sent, *reason),
                _ => (RstDirection::Received, None),
            };
            out.push(Signal::Rst {
                ts_ns,
                direction,
                peer,
                local_port,
                cookie: Some(cookie),
                reason: reason_name(reason, reasons),
                after_established: flow.established,
            });
        }
        Detail::Retransmit { state, err } if *state == TcpState::SYN_SENT && *err == 0 => {
            let since = ts_ns.saturating_sub(flow.first_syn_ns.unwrap_or(ts_ns));
            out.push(Signal::SynRetransmit {
                ts_ns,
                peer,
                cookie,
                since_first_syn: Duration::from_nanos(since),
            });
        }
        Detail::RepeatRst { scope: s, count } => {
            out.push(Signal::RepeatRst {
                ts_ns,
                scope: *s,
                peer: Some(peer),
                local_port: local_port.or(Some(ev.local.port())),
                cookie: Some(cookie),
                count: *count,
            });
        }
        _ => {}
    }
    if just_closed && !flow.established && flow.role == Some(Role::Client) {
        let cause = match flow.close {
            Some(CloseCause::Refused) => Some(ConnectFailure::Refused),
            Some(CloseCause::Timeout) => Some(ConnectFailure::Timeout),
            Some(CloseCause::Unreachable) => Some(ConnectFailure::Unreachable),
            _ => None,
        };
        if let Some(cause) = cause {
            out.push(Signal::ConnectFailed {
                ts_ns,
                peer,
                cookie,
                cause,
            });
        }
    }
}

/// Signals of an event without a socket: an RST for a closed port (our refusal), or the
/// kernel's repeat-RST alert about such RSTs.
pub fn socketless(ev: &Event, reasons: &ReasonNames, out: &mut Vec<Signal>) {
    let peer = Peer {
        addr: ev.remote.ip(),
        port: None,
    };
    let local_port = Some(ev.local.port());
    match &ev.detail {
        Detail::RstSent { reason, .. } => out.push(Signal::Rst {
            ts_ns: ev.ts_ns,
            direction: RstDirection::Sent,
            peer,
            local_port,
            cookie: None,
            reason: reason_name(*reason, reasons),
            after_established: false,
        }),
        Detail::RepeatRst { scope, count } => out.push(Signal::RepeatRst {
            ts_ns: ev.ts_ns,
            scope: *scope,
            peer: (*scope == RepeatScope::Peer).then_some(peer),
            local_port,
            cookie: None,
            count: *count,
        }),
        _ => {}
    }
}
