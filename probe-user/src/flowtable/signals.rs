//! Event (+ the flow it updated) → the signals the detectors count.
use std::time::Duration;

use super::{CloseCause, Flow};
use crate::{
    event::{Detail, Event, RepeatScope, Role, SockStats, TcpState},
    rst_reason::ReasonNames,
    signal::{ConnectFailure, Peer, RetransmitKind, RstDirection, Signal},
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

/// Signals of an event that belongs to `flow` (already updated). `close_changed` when this
/// event closed it or corrected its close cause (each flow's failure is reported once: only a
/// FIN close is ever corrected, and a FIN close reports none).
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
    match &ev.detail {
        Detail::Connect { .. } => out.push(Signal::Connection {
            ts_ns,
            role: Role::Client,
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
                role: Role::Server,
                peer,
                local_port,
                cookie,
            });
            data_segments(flow, ts_ns, stats, out);
        }
        Detail::Established { stats, .. } => {
            if let Some(ns) = flow.handshake_ns {
                out.push(Signal::Handshake {
                    ts_ns,
                    peer,
                    duration: Duration::from_nanos(ns),
                });
            }
            data_segments(flow, ts_ns, stats, out);
        }
        Detail::Rto { stats, .. } => {
            out.push(Signal::Retransmit {
                ts_ns,
                peer,
                cookie: Some(cookie),
                kind: RetransmitKind::Rto,
            });
            data_segments(flow, ts_ns, stats, out);
        }
        Detail::Rtt { sample_us, stats } => {
            out.push(Signal::Rtt {
                ts_ns,
                peer,
                rtt: Duration::from_micros(u64::from(*sample_us)),
            });
            data_segments(flow, ts_ns, stats, out);
        }
        Detail::SockOpsState { stats, .. } | Detail::SockOpsRetrans { stats, .. } => {
            data_segments(flow, ts_ns, stats, out)
        }
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
        Detail::Retransmit { state, err } => {
            let since_first_syn = flow
                .first_syn_ns
                .map(|first| Duration::from_nanos(ts_ns.saturating_sub(first)));
            out.push(Signal::Retransmit {
                ts_ns,
                peer,
                cookie: Some(cookie),
                kind: retransmit_kind(*state, *err, since_first_syn),
            });
        }
        Detail::RetransmitSynack => out.push(Signal::Retransmit {
            ts_ns,
            peer,
            cookie: Some(cookie),
            kind: RetransmitKind::SynAck,
        }),
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
    if close_changed {
        let cause = match flow.close {
            Some(CloseCause::Refused) => Some(ConnectFailure::Refused),
            Some(CloseCause::Timeout) => Some(ConnectFailure::Timeout),
            Some(CloseCause::Unreachable) => Some(ConnectFailure::Unreachable),
            Some(CloseCause::RstReceived | CloseCause::RstSent) => Some(ConnectFailure::Reset),
            Some(CloseCause::Fin) | None => None,
        };
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

/// A retransmit tracepoint hit: a SYN in SYN_SENT, else data; `Failed` when the kernel could
/// not send it (the tracepoint also fires for failed attempts).
fn retransmit_kind(state: TcpState, err: i32, since_first_syn: Option<Duration>) -> RetransmitKind {
    if err != 0 {
        RetransmitKind::Failed
    } else if state == TcpState::SYN_SENT {
        RetransmitKind::Syn { since_first_syn }
    } else {
        RetransmitKind::Data
    }
}

/// Signals of an event without a socket: an RST for a closed port (our refusal), the kernel's
/// repeat-RST alert about such RSTs, and any RST or retransmit whose cookie was not resolved
/// (every such event is still counted).
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
        // Cookie-less RSTs received (the cookie could not be resolved): still counted.
        Detail::RstReceived { .. } => out.push(Signal::Rst {
            ts_ns: ev.ts_ns,
            direction: RstDirection::Received,
            peer,
            local_port,
            cookie: None,
            reason: None,
            after_established: false,
        }),
        Detail::Retransmit { state, err } => out.push(Signal::Retransmit {
            ts_ns: ev.ts_ns,
            peer,
            cookie: None,
            kind: retransmit_kind(*state, *err, None),
        }),
        Detail::RetransmitSynack => out.push(Signal::Retransmit {
            ts_ns: ev.ts_ns,
            peer,
            cookie: None,
            kind: RetransmitKind::SynAck,
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
