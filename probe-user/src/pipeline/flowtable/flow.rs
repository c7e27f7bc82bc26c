//! One flow's state and timeline, updated record by record. The kernel keeps the flow's counts
//! and sends them with every record of the flow; the flow remembers what it already turned
//! into signals (`accounted`), so a lost record only delays its facts.
use std::{net::SocketAddr, num::NonZeroU64};

use probe_common::{role, CloseClass, EventKind};

use super::timeline::{Note, Timeline, TimelineEntry};
use crate::{
    event::{Detail, Event, FlowCounts, Process, Role, SockStats, TcpState},
    pipeline::signal::ConnectFailure,
};

/// A flow's identity: socket cookies are unique per boot; the netns cookie tells namespaces
/// apart in what the table shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Netns cookie (0 when unknown).
    pub netns: u64,
    pub cookie: u64,
}

/// Why a flow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause {
    Fin,
    RstReceived,
    RstSent,
    /// The kernel gave up (ETIMEDOUT: SYN retries exhausted).
    Timeout,
    Refused,
    Unreachable,
    /// The app closed the socket while connecting (no socket error): its own timeout.
    Abandoned,
}

impl CloseCause {
    /// Stable name for output and metrics.
    pub fn name(self) -> &'static str {
        match self {
            CloseCause::Fin => "fin",
            CloseCause::RstReceived => "rst_received",
            CloseCause::RstSent => "rst_sent",
            CloseCause::Timeout => "timeout",
            CloseCause::Refused => "refused",
            CloseCause::Unreachable => "unreachable",
            CloseCause::Abandoned => "abandoned",
        }
    }
}

impl CloseCause {
    /// What `connect_failures_total{cause}` counts this close as, and what `--failed` keeps:
    /// one vocabulary. Every close but a FIN is a failure: a connect that did not connect
    /// (refused, timeout, unreachable, abandoned) or a connection ended by an RST (reset).
    pub fn failure(self) -> Option<ConnectFailure> {
        match self {
            CloseCause::Refused => Some(ConnectFailure::Refused),
            CloseCause::Timeout => Some(ConnectFailure::Timeout),
            CloseCause::Unreachable => Some(ConnectFailure::Unreachable),
            CloseCause::Abandoned => Some(ConnectFailure::Abandoned),
            CloseCause::RstReceived | CloseCause::RstSent => Some(ConnectFailure::Reset),
            CloseCause::Fin => None,
        }
    }

    /// The close cause a flow's end record says, from its own state (`watch` has no flow
    /// table): the classification the kernel and [`Flow`] use.
    pub fn of_end(ev: &Event) -> Option<CloseCause> {
        let (Detail::FlowEnd { .. }, Some(flow)) = (&ev.detail, &ev.flow) else {
            return None;
        };
        let role = match flow.role {
            Some(Role::Client) => role::CLIENT,
            Some(Role::Server) => role::SERVER,
            None => role::UNKNOWN,
        };
        let established = flow.established_ns.is_some();
        // An unreadable `sk_err` of a connect without an RST: a timeout, as `classify` says.
        let unread = if established || flow.counts.rst_received > 0 {
            0
        } else {
            probe_common::kernel::errno::ETIMEDOUT
        };
        Some(
            CloseClass::of(
                role,
                established,
                ev.sk_err.unwrap_or(unread),
                flow.counts.rst_sent,
                flow.counts.rst_received,
            )
            .into(),
        )
    }
}

impl From<CloseClass> for CloseCause {
    fn from(c: CloseClass) -> CloseCause {
        match c {
            CloseClass::Fin => CloseCause::Fin,
            CloseClass::RstReceived => CloseCause::RstReceived,
            CloseClass::RstSent => CloseCause::RstSent,
            CloseClass::Refused => CloseCause::Refused,
            CloseClass::Timeout => CloseCause::Timeout,
            CloseClass::Unreachable => CloseCause::Unreachable,
            CloseClass::Abandoned => CloseCause::Abandoned,
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
    /// cgroup v2 id of the owner.
    pub cgroup_id: Option<u64>,
    /// Open before linkprobe started (or first seen mid-life).
    pub preexisting: bool,
    pub start_ns: u64,
    /// SYN → ESTABLISHED (clients). `NonZeroU64` (a handshake takes time): 8 bytes in each of
    /// up to 65,536 flows instead of an `Option<u64>`'s 16.
    pub handshake_ns: Option<NonZeroU64>,
    pub syn_retransmits: u32,
    /// Gaps between successive SYNs (first one from the first SYN), at most 8; allocated only
    /// for flows that retransmitted a SYN (read with [`Flow::syn_retransmit_intervals_ms`]).
    #[expect(
        clippy::box_collection,
        reason = "8 bytes instead of 24 in each of up to 65,536 flows; most never allocate it"
    )]
    syn_intervals: Option<Box<Vec<u32>>>,
    /// The last SYN sent (0: none yet).
    last_syn_ns: u64,
    pub srtt_us: u32,
    pub min_rtt_us: Option<u32>,
    pub data_retransmits: u32,
    pub rtos: u32,
    /// Highest socket counters the kernel reported (segments, bytes, total retransmits).
    pub counters: SockStats,
    pub rst_sent: u32,
    pub rst_received: u32,
    pub last_rst_reason: Option<u32>,
    pub state: TcpState,
    pub established: bool,
    pub close: Option<CloseCause>,
    /// The state the flow left for CLOSE.
    pub close_from: Option<TcpState>,
    /// When the flow ended (kernel clock, never 0 once set).
    pub closed_ns: Option<NonZeroU64>,
    /// The kernel's `sk_err` at the flow's end.
    pub close_sk_err: Option<i32>,
    pub last_seen_ns: u64,
    pub timeline: Timeline,
    /// The kernel's counts already turned into signals.
    pub(super) accounted: FlowCounts,
    /// The connection signal was given (once per flow).
    pub(super) connection_counted: bool,
    /// The flow was counted as reset for the RST ratio (its first RST after its connection).
    pub(super) reset_counted: bool,
    pub(super) handshake_counted: bool,
    /// Last socket counters reported as a `DataSegments` signal.
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
            syn_retransmits: 0,
            syn_intervals: None,
            last_syn_ns: 0,
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
            close_from: None,
            closed_ns: None,
            close_sk_err: None,
            last_seen_ns: ts_ns,
            timeline: Timeline::default(),
            accounted: FlowCounts::default(),
            connection_counted: false,
            reset_counted: false,
            handshake_counted: false,
            reported_segs_out: 0,
            reported_retrans: 0,
        }
    }

    fn stats(&mut self, s: &SockStats) {
        if s.srtt_us > 0 {
            self.srtt_us = s.srtt_us;
            let min = if s.min_rtt_us > 0 {
                s.min_rtt_us
            } else {
                s.srtt_us
            };
            self.min_rtt_us = Some(self.min_rtt_us.map_or(min, |m| m.min(min)));
        }
        // Counters only grow; a late record must not move them back.
        let c = &mut self.counters;
        c.srtt_us = self.srtt_us;
        c.min_rtt_us = self.min_rtt_us.unwrap_or(0);
        c.total_retrans = c.total_retrans.max(s.total_retrans);
        c.segs_in = c.segs_in.max(s.segs_in);
        c.segs_out = c.segs_out.max(s.segs_out);
        c.data_segs_in = c.data_segs_in.max(s.data_segs_in);
        c.data_segs_out = c.data_segs_out.max(s.data_segs_out);
        c.bytes_received = c.bytes_received.max(s.bytes_received);
        c.bytes_acked = c.bytes_acked.max(s.bytes_acked);
    }

    /// Payload bytes (sent and acknowledged, received), without the sequence space the
    /// kernel's counters also hold: `bytes_acked` counts a client's SYN once it is acknowledged
    /// and this end's FIN once acknowledged; `bytes_received` counts the peer's FIN. (So curl's
    /// 78-byte request read 80 sent on its side and 79 received on the server's.) A flow that
    /// left FIN_WAIT2 by the FIN timeout, without the peer's FIN, reads one byte short.
    pub fn payload(&self) -> (u64, u64) {
        use TcpState as S;
        let syn_acked = self.role == Some(Role::Client) && self.established;
        let (our_fin_acked, peer_fin) = match self.close_from {
            // Left for CLOSE from: FIN_WAIT2 (our FIN acked, the peer's in: time-wait),
            // CLOSING and LAST_ACK (the ACK of our FIN, after the peer's), CLOSE_WAIT (an
            // abort after the peer's FIN).
            Some(from) => (
                matches!(from, S::FIN_WAIT2 | S::CLOSING | S::LAST_ACK),
                matches!(
                    from,
                    S::FIN_WAIT2 | S::CLOSING | S::LAST_ACK | S::CLOSE_WAIT
                ),
            ),
            None => (
                matches!(self.state, S::FIN_WAIT2 | S::TIME_WAIT),
                matches!(
                    self.state,
                    S::CLOSE_WAIT | S::LAST_ACK | S::CLOSING | S::TIME_WAIT
                ),
            ),
        };
        let c = &self.counters;
        (
            c.bytes_acked
                .saturating_sub(u64::from(syn_acked) + u64::from(our_fin_acked)),
            c.bytes_received.saturating_sub(u64::from(peer_fin)),
        )
    }

    /// When the first SYN went out: a client's start (connect()), unless first seen late.
    pub fn first_syn_ns(&self) -> Option<u64> {
        (self.role == Some(Role::Client) && !self.preexisting).then_some(self.start_ns)
    }

    /// The flow's kernel role as `role::*`, for the shared close classification.
    fn kernel_role(&self) -> u8 {
        match self.role {
            Some(Role::Client) => role::CLIENT,
            Some(Role::Server) => role::SERVER,
            None => role::UNKNOWN,
        }
    }

    /// The close cause from what the flow knows now (the kernel decides a lost FlowEnd's the
    /// same way).
    pub(super) fn classify(&self) -> CloseCause {
        // Where the kernel's `sk_err` cannot be read, a connect that ended without an RST is
        // taken for a timeout, as before the app's own close could be told apart.
        let unread = if self.rst_received > 0 {
            0
        } else {
            probe_common::kernel::errno::ETIMEDOUT
        };
        CloseClass::of(
            self.kernel_role(),
            self.established,
            self.close_sk_err.unwrap_or(unread),
            self.rst_sent,
            self.rst_received,
        )
        .into()
    }

    /// Identity and times from the kernel's flow state.
    fn learn(&mut self, ev: &Event) {
        if self.process.is_none() {
            self.process.clone_from(&ev.process);
        }
        if self.cgroup_id.is_none() {
            self.cgroup_id = ev.cgroup_id;
        }
        // The first record with a real 4-tuple wins (connect() runs before the local port is
        // bound).
        if self.local.port() == 0 && ev.local.port() != 0 {
            self.local = ev.local;
            self.remote = ev.remote;
        }
        let Some(f) = ev.flow else {
            return;
        };
        if f.late {
            self.preexisting = true;
        }
        if self.role.is_none() {
            self.role = f.role;
        }
        if f.start_ns != 0 && !f.late {
            self.start_ns = self.start_ns.min(f.start_ns);
            if self.role == Some(Role::Client) && self.last_syn_ns == 0 {
                self.last_syn_ns = f.start_ns;
            }
        }
        if let Some(est) = f.established_ns {
            self.established = true;
            if self.role == Some(Role::Client) && !f.late {
                let took = est.saturating_sub(f.start_ns);
                self.handshake_ns
                    .get_or_insert(NonZeroU64::new(took).unwrap_or(NonZeroU64::MIN));
            }
        }
        if f.last_rst_reason.is_some() {
            self.last_rst_reason = f.last_rst_reason;
        }
        let c = &f.counts;
        self.syn_retransmits = self.syn_retransmits.max(c.syn_retrans);
        self.data_retransmits = self.data_retransmits.max(c.data_retrans);
        self.rtos = self.rtos.max(c.rtos);
        self.rst_sent = self.rst_sent.max(c.rst_sent);
        self.rst_received = self.rst_received.max(c.rst_received);
    }

    /// A record without flow state stands for its own fact.
    fn count_bare(&mut self, ev: &Event) {
        match &ev.detail {
            Detail::RstSent { .. } => self.rst_sent += 1,
            Detail::RstReceived { .. } => self.rst_received += 1,
            Detail::Rto { .. } => self.rtos += 1,
            Detail::Retransmit { state, err } if err.unwrap_or(0) == 0 => {
                if *state == TcpState::SYN_SENT {
                    self.syn_retransmits += 1;
                } else {
                    self.data_retransmits += 1;
                }
            }
            _ => {}
        }
    }

    /// Updates the flow from one of its records.
    pub fn apply(&mut self, ev: &Event, timeline_len: usize) {
        let ts = ev.ts_ns;
        self.last_seen_ns = self.last_seen_ns.max(ts);
        let first_record = self.timeline.is_empty();
        self.learn(ev);
        if ev.flow.is_none() {
            self.count_bare(ev);
        }
        if let Some(s) = &ev.stats {
            self.stats(s);
        }
        if first_record && !self.preexisting && ev.flow.is_some() {
            self.story_start(ev, timeline_len);
        }
        let mut state = None;
        let note = match &ev.detail {
            Detail::FlowEnd { from } => {
                self.state = TcpState::CLOSE;
                self.close_from = Some(*from);
                self.close_sk_err = ev.sk_err;
                if self.close.is_none() {
                    self.closed_ns = NonZeroU64::new(ts);
                }
                self.close = Some(self.classify());
                Note::Transition {
                    from: *from,
                    to: TcpState::CLOSE,
                    sk_err: ev.sk_err.unwrap_or(0),
                }
            }
            Detail::Connect => {
                self.state = TcpState::SYN_SENT;
                Note::None
            }
            Detail::Established { role } => {
                self.role.get_or_insert(*role);
                self.established = true;
                self.state = TcpState::ESTABLISHED;
                Note::None
            }
            Detail::StateChange { from, to } => {
                self.state = *to;
                Note::Transition {
                    from: *from,
                    to: *to,
                    sk_err: ev.sk_err.unwrap_or(0),
                }
            }
            Detail::RstReceived { state: s } => {
                state = Some(*s);
                Note::None
            }
            Detail::RstSent {
                state: s, reason, ..
            } => {
                state = Some(*s);
                if reason.is_some() {
                    self.last_rst_reason = *reason;
                }
                // An abort (SO_LINGER 0, unread data) moves the socket to CLOSE before it
                // sends its RST: a flow that looked FIN-closed was reset. An RST from the
                // time-wait socket afterwards is not.
                if self.close.is_some() && *s == TcpState::CLOSE {
                    self.close = Some(self.classify());
                }
                Note::Reason(*reason)
            }
            Detail::Retransmit { state: s, err } => {
                state = Some(*s);
                if *s == TcpState::SYN_SENT && err.unwrap_or(0) == 0 {
                    self.syn_interval(ts);
                }
                match err {
                    Some(e) if *e != 0 => Note::Err(*e),
                    _ if *s == TcpState::SYN_SENT => Note::None,
                    _ => Note::Retransmits {
                        data: self.data_retransmits,
                        rtos: self.rtos,
                    },
                }
            }
            Detail::Rto { state: s } => {
                state = Some(*s);
                Note::Retransmits {
                    data: self.data_retransmits,
                    rtos: self.rtos,
                }
            }
            Detail::RetransmitSynack => Note::None,
            Detail::RepeatRst { scope, count } => Note::Repeat {
                scope: *scope,
                count: *count,
            },
            Detail::Open { state: s } => {
                self.state = *s;
                // The kernel's view, not an event of the flow's story.
                return;
            }
        };
        // A record names the state the socket is in (a SYN retransmit: SYN_SENT): an open flow
        // first learnt from it is not UNKNOWN until the next open-flow pass.
        if let Some(s) = state.filter(|s| s.0 != 0 && *s != TcpState::CLOSE) {
            if self.close.is_none() {
                self.state = s;
            }
        }
        self.push(
            TimelineEntry {
                offset_ns: ts.saturating_sub(self.start_ns),
                kind: ev.detail.kind(),
                state,
                note,
            },
            timeline_len,
        );
    }

    /// The first record of a flow that started while linkprobe ran: the connect (and the
    /// handshake) it reports, placed at their own times, unless this record is them (detail).
    fn story_start(&mut self, ev: &Event, timeline_len: usize) {
        let Some(f) = ev.flow else {
            return;
        };
        let detailed = matches!(ev.detail, Detail::Connect | Detail::Established { .. });
        if detailed {
            return;
        }
        let start_kind = match f.role {
            Some(Role::Client) => EventKind::Connect,
            _ => EventKind::StateChange,
        };
        self.push(
            TimelineEntry {
                offset_ns: 0,
                kind: start_kind,
                state: None,
                note: match f.role {
                    Some(Role::Server) => Note::Transition {
                        from: TcpState::LISTEN,
                        to: TcpState::SYN_RECV,
                        sk_err: 0,
                    },
                    _ => Note::None,
                },
            },
            timeline_len,
        );
        if let Some(est) = f.established_ns {
            let kind = match f.role {
                Some(Role::Server) => EventKind::PassiveEstablished,
                _ => EventKind::ActiveEstablished,
            };
            self.push(
                TimelineEntry {
                    offset_ns: est.saturating_sub(self.start_ns),
                    kind,
                    state: None,
                    note: Note::None,
                },
                timeline_len,
            );
        }
    }

    fn syn_interval(&mut self, ts: u64) {
        let last = std::mem::replace(&mut self.last_syn_ns, ts);
        if last == 0 {
            return;
        }
        let intervals = self.syn_intervals.get_or_insert_default();
        if intervals.len() < MAX_SYN_INTERVALS {
            let ms = ts.saturating_sub(last) / 1_000_000;
            intervals.push(u32::try_from(ms).unwrap_or(u32::MAX));
        }
    }

    /// Gaps between successive SYNs (first one from the first SYN), at most 8.
    pub fn syn_retransmit_intervals_ms(&self) -> &[u32] {
        self.syn_intervals.as_deref().map_or(&[], Vec::as_slice)
    }

    fn push(&mut self, entry: TimelineEntry, timeline_len: usize) {
        self.timeline.push(entry, timeline_len);
    }
}
