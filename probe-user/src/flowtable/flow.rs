//! One flow's state and timeline, updated event by event.
use std::{collections::VecDeque, net::SocketAddr};

use probe_common::EventKind;

use super::FlowKey;
use crate::{
    event::{kind_name, Detail, Event, Process, RepeatScope, Role, SockStats, TcpState},
    rst_reason::ReasonNames,
};

/// Why a flow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause {
    Fin,
    RstReceived,
    RstSent,
    Timeout,
    Refused,
    Unreachable,
}

/// What a timeline entry adds to its kind; plain data, rendered only when shown (a flow keeps
/// up to `timeline_len` of these, so no allocation per event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    None,
    Transition {
        from: TcpState,
        to: TcpState,
        sk_err: Option<i32>,
    },
    Srtt(u32),
    Retrans {
        seq: u32,
        segs: u32,
    },
    Rto {
        retransmits: u32,
    },
    Rtt {
        sample_us: u32,
    },
    Reason(Option<u32>),
    Err(i32),
    Repeat {
        scope: RepeatScope,
        count: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineEntry {
    /// Since the flow's first event.
    pub offset_ns: u64,
    pub kind: EventKind,
    /// The state the hook reported, where it reports one.
    pub state: Option<TcpState>,
    pub note: Note,
}

impl TimelineEntry {
    pub fn kind_name(&self) -> &'static str {
        kind_name(self.kind)
    }

    /// Short human text, e.g. `SYN_SENT->ESTABLISHED` or `reason=TCP_STATE`.
    pub fn detail(&self, reasons: &ReasonNames) -> String {
        match self.note {
            Note::None => String::new(),
            Note::Transition { from, to, sk_err } => match sk_err {
                Some(e) if e != 0 => format!("{from}->{to} sk_err={e}"),
                _ => format!("{from}->{to}"),
            },
            Note::Srtt(us) => format!("srtt={us}us"),
            Note::Retrans { seq, segs } => format!("seq={seq} segs={segs}"),
            Note::Rto { retransmits } => format!("retransmits={retransmits}"),
            Note::Rtt { sample_us } => format!("sample={sample_us}us"),
            Note::Reason(r) => {
                r.map_or_else(String::new, |r| format!("reason={}", reasons.name(r)))
            }
            Note::Err(e) => format!("err={e}"),
            Note::Repeat { scope, count } => format!("{scope:?} count={count}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Flow {
    pub key: FlowKey,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub role: Option<Role>,
    pub process: Option<Process>,
    /// cgroup v2 id of the socket, from its first state change.
    pub cgroup_id: Option<u64>,
    pub preexisting: bool,
    pub start_ns: u64,
    /// SYN → ESTABLISHED.
    pub handshake_ns: Option<u64>,
    pub first_syn_ns: Option<u64>,
    pub syn_retransmits: u32,
    /// Gaps between successive SYNs (first one from the first SYN), at most 8.
    pub syn_retransmit_intervals_ms: Vec<u32>,
    last_syn_ns: Option<u64>,
    pub srtt_us: u32,
    pub min_rtt_us: Option<u32>,
    pub data_retransmits: u32,
    pub rtos: u32,
    /// Highest socket counters sock_ops reported (segments, bytes, total retransmits).
    pub counters: SockStats,
    pub rst_sent: u32,
    pub rst_received: u32,
    pub last_rst_reason: Option<u32>,
    pub state: TcpState,
    pub established: bool,
    pub close: Option<CloseCause>,
    pub closed_ns: Option<u64>,
    pub last_seen_ns: u64,
    pub timeline: VecDeque<TimelineEntry>,
    /// Timeline entries dropped at the bound (oldest first).
    pub timeline_dropped: u32,
    /// Last sock_ops counters reported as a `DataSegments` signal.
    pub(super) reported_segs_out: u32,
    pub(super) reported_retrans: u32,
}

const MAX_SYN_INTERVALS: usize = 8;

impl Flow {
    pub fn new(key: FlowKey, local: SocketAddr, remote: SocketAddr, ts_ns: u64) -> Flow {
        Flow {
            key,
            local,
            remote,
            role: None,
            process: None,
            cgroup_id: None,
            preexisting: false,
            start_ns: ts_ns,
            handshake_ns: None,
            first_syn_ns: None,
            syn_retransmits: 0,
            syn_retransmit_intervals_ms: Vec::new(),
            last_syn_ns: None,
            srtt_us: 0,
            min_rtt_us: None,
            data_retransmits: 0,
            rtos: 0,
            counters: SockStats::default(),
            rst_sent: 0,
            rst_received: 0,
            last_rst_reason: None,
            state: TcpState(0),
            established: false,
            close: None,
            closed_ns: None,
            last_seen_ns: ts_ns,
            timeline: VecDeque::new(),
            timeline_dropped: 0,
            reported_segs_out: 0,
            reported_retrans: 0,
        }
    }

    fn stats(&mut self, s: &SockStats) {
        if s.srtt_us > 0 {
            self.srtt_us = s.srtt_us;
            self.min_rtt_us = Some(self.min_rtt_us.map_or(s.srtt_us, |m| m.min(s.srtt_us)));
        }
        // Counters only grow; a late record must not move them back.
        let c = &mut self.counters;
        c.srtt_us = self.srtt_us;
        c.total_retrans = c.total_retrans.max(s.total_retrans);
        c.segs_in = c.segs_in.max(s.segs_in);
        c.segs_out = c.segs_out.max(s.segs_out);
        c.data_segs_in = c.data_segs_in.max(s.data_segs_in);
        c.data_segs_out = c.data_segs_out.max(s.data_segs_out);
        c.bytes_received = c.bytes_received.max(s.bytes_received);
        c.bytes_acked = c.bytes_acked.max(s.bytes_acked);
    }

    fn syn_sent(&mut self, ts: u64) {
        if self.first_syn_ns.is_none() {
            self.first_syn_ns = Some(ts);
            self.last_syn_ns = Some(ts);
        }
        self.role.get_or_insert(Role::Client);
    }

    fn closed(&mut self, ts: u64, sk_err: Option<i32>) {
        if self.close.is_some() {
            return;
        }
        self.closed_ns = Some(ts);
        self.close = Some(if !self.established && self.role == Some(Role::Client) {
            failure_cause(sk_err, self.rst_received > 0)
        } else if self.rst_received > 0 {
            CloseCause::RstReceived
        } else if self.rst_sent > 0 {
            CloseCause::RstSent
        } else {
            CloseCause::Fin
        });
    }

    /// An abort (SO_LINGER 0, `tcp_disconnect`) moves the socket to CLOSE before it sends
    /// its RST: a flow that looked FIN-closed and then resets was reset.
    fn reset_after_close(&mut self, cause: CloseCause) {
        if self.close == Some(CloseCause::Fin) {
            self.close = Some(cause);
        }
    }

    /// Updates the flow from one of its events.
    pub fn apply(&mut self, ev: &Event, timeline_len: usize) {
        let ts = ev.ts_ns;
        self.last_seen_ns = self.last_seen_ns.max(ts);
        if self.process.is_none() {
            self.process.clone_from(&ev.process);
        }
        if self.cgroup_id.is_none() {
            self.cgroup_id = ev.cgroup_id;
        }
        // The first event with a real 4-tuple wins over a CLOSE→SYN_SENT with port 0.
        if self.local.port() == 0 && ev.local.port() != 0 {
            self.local = ev.local;
            self.remote = ev.remote;
        }
        let mut state = None;
        let note = match &ev.detail {
            Detail::Connect { stats } => {
                self.syn_sent(ts);
                self.stats(stats);
                Note::None
            }
            Detail::Established { role, stats } => {
                self.role.get_or_insert(*role);
                self.established = true;
                self.state = TcpState::ESTABLISHED;
                if let Some(syn) = self.first_syn_ns {
                    self.handshake_ns.get_or_insert(ts.saturating_sub(syn));
                }
                self.stats(stats);
                Note::Srtt(stats.srtt_us)
            }
            Detail::SockOpsState { from, to, stats } => {
                self.stats(stats);
                Note::Transition {
                    from: *from,
                    to: *to,
                    sk_err: None,
                }
            }
            Detail::SockOpsRetrans {
                seq, segs, stats, ..
            } => {
                self.stats(stats);
                Note::Retrans {
                    seq: *seq,
                    segs: *segs,
                }
            }
            Detail::Rto {
                retransmits, stats, ..
            } => {
                self.rtos += 1;
                self.stats(stats);
                Note::Rto {
                    retransmits: *retransmits,
                }
            }
            Detail::Rtt { sample_us, stats } => {
                self.stats(stats);
                Note::Rtt {
                    sample_us: *sample_us,
                }
            }
            Detail::RstReceived { state: s } => {
                self.rst_received += 1;
                self.reset_after_close(CloseCause::RstReceived);
                state = Some(*s);
                Note::None
            }
            Detail::RstSent {
                state: s, reason, ..
            } => {
                self.rst_sent += 1;
                self.reset_after_close(CloseCause::RstSent);
                self.last_rst_reason = *reason;
                state = Some(*s);
                Note::Reason(*reason)
            }
            Detail::Retransmit { state: s, err } => {
                state = Some(*s);
                if *err == 0 {
                    if *s == TcpState::SYN_SENT {
                        self.syn_retransmits += 1;
                        if let Some(last) = self.last_syn_ns.replace(ts) {
                            if self.syn_retransmit_intervals_ms.len() < MAX_SYN_INTERVALS {
                                let ms = ts.saturating_sub(last) / 1_000_000;
                                self.syn_retransmit_intervals_ms
                                    .push(u32::try_from(ms).unwrap_or(u32::MAX));
                            }
                        }
                    } else {
                        self.data_retransmits += 1;
                    }
                }
                Note::Err(*err)
            }
            Detail::RetransmitSynack => Note::None,
            Detail::Destroy { state: s } => {
                state = Some(*s);
                self.closed(ts, None);
                Note::None
            }
            Detail::StateChange { from, to } => {
                self.state = *to;
                // Only a client socket is ever in SYN_SENT: a flow first seen at its failed
                // connect's close (evicted meanwhile) is still typed as a failed attempt.
                if *from == TcpState::SYN_SENT {
                    self.role.get_or_insert(Role::Client);
                }
                if *to == TcpState::SYN_SENT {
                    self.syn_sent(ts);
                }
                if *to == TcpState::ESTABLISHED {
                    self.established = true;
                }
                if *to == TcpState::CLOSE {
                    self.closed(ts, ev.sk_err);
                }
                Note::Transition {
                    from: *from,
                    to: *to,
                    sk_err: ev.sk_err,
                }
            }
            Detail::RepeatRst { scope, count } => Note::Repeat {
                scope: *scope,
                count: *count,
            },
        };
        if self.timeline.len() >= timeline_len.max(1) {
            self.timeline.pop_front();
            self.timeline_dropped = self.timeline_dropped.saturating_add(1);
        }
        self.timeline.push_back(TimelineEntry {
            offset_ns: ts.saturating_sub(self.start_ns),
            kind: ev.detail.kind(),
            state,
            note,
        });
    }
}

/// How a connection attempt ended, from the kernel's `sk_err` when it has one.
pub fn failure_cause(sk_err: Option<i32>, rst_received: bool) -> CloseCause {
    match sk_err {
        Some(libc::ECONNREFUSED) => CloseCause::Refused,
        Some(libc::ETIMEDOUT) => CloseCause::Timeout,
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN) => {
            CloseCause::Unreachable
        }
        _ if rst_received => CloseCause::Refused,
        _ => CloseCause::Timeout,
    }
}
