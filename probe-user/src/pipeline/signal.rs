//! What the flow table tells the detectors: one value per fact worth counting, already
//! attributed to a scope. The contract between `flows` (producer) and `detect` (consumer).
use std::{net::IpAddr, time::Duration};

use crate::event::{RepeatScope, Role};

/// Where a peer is: its address, plus its port only when that is a service port (we are the
/// client), seen from one network namespace (the same address in two namespaces is two
/// peers). Never an ephemeral port, so scopes stay bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    pub addr: IpAddr,
    pub port: Option<u16>,
    /// The netns cookie of our end (0: unknown). Not shown by `Display`: renderers name it.
    pub netns: u64,
}

impl std::fmt::Display for Peer {
    /// `10.0.0.5:443` (IPv6 `[fd00::1]:443`) with a service port, else the address alone.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}", std::net::SocketAddr::new(self.addr, port)),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Which side sent a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RstDirection {
    Sent,
    Received,
}

impl RstDirection {
    /// Stable name for output and metrics.
    pub fn name(self) -> &'static str {
        match self {
            RstDirection::Sent => "sent",
            RstDirection::Received => "received",
        }
    }
}

/// Why a connection failed: an attempt (SYN_SENT) that ended without a connection, or a
/// connection that ended with a reset instead of a FIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectFailure {
    /// RST in SYN_SENT (ECONNREFUSED).
    Refused,
    /// SYN retries exhausted (ETIMEDOUT).
    Timeout,
    /// ICMP unreachable or another hard error (EHOSTUNREACH, ENETUNREACH, …).
    Unreachable,
    /// The app closed its socket in SYN_SENT without a socket error: it gave up first.
    Abandoned,
    /// The connection (or its handshake) ended with an RST, sent or received.
    Reset,
}

impl ConnectFailure {
    /// Stable name for output and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Unreachable => "unreachable",
            ConnectFailure::Abandoned => "abandoned",
            ConnectFailure::Reset => "reset",
        }
    }
}

/// What a retransmit-like event was.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RetransmitKind {
    /// A SYN sent again; `since_first_syn` where the flow knows its first SYN.
    Syn { since_first_syn: Option<Duration> },
    /// A SYN-ACK sent again by a listener.
    SynAck,
    /// A data (or FIN) segment sent again.
    Data,
    /// The retransmission timer fired (sock_ops RTO callback).
    Rto,
    /// The kernel tried to retransmit but could not send (`err` != 0 in the tracepoint).
    Failed,
}

impl RetransmitKind {
    /// Stable name for output and metrics.
    pub fn name(self) -> &'static str {
        match self {
            RetransmitKind::Syn { .. } => "syn",
            RetransmitKind::SynAck => "synack",
            RetransmitKind::Data => "data",
            RetransmitKind::Rto => "rto",
            RetransmitKind::Failed => "failed",
        }
    }
}

/// One countable fact, produced by the flow table as events arrive.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// A connection was opened (client: connect; server: handshake completed).
    Connection {
        ts_ns: u64,
        role: Role,
        peer: Peer,
        /// Our listening port for server flows.
        local_port: Option<u16>,
        cookie: u64,
    },
    /// An RST was sent or received.
    Rst {
        ts_ns: u64,
        direction: RstDirection,
        peer: Peer,
        local_port: Option<u16>,
        /// `None` when the RST had no socket (closed port).
        cookie: Option<u64>,
        /// Kernel reason name where known (shared: no allocation per RST).
        reason: Option<std::sync::Arc<str>>,
        /// The flow was established before the reset (a "reset after established").
        after_established: bool,
        /// On the first RST of a flow whose `Connection` was counted: that connection's
        /// `ts_ns`. The RST ratio counts reset flows (not RST packets) against the connections
        /// of the same window, so it stays a fraction of the same flows.
        connection_ns: Option<u64>,
    },
    /// A segment was retransmitted or the retransmission timer fired: one signal per
    /// retransmit, SYN-ACK retransmit and RTO event, with or without a socket.
    Retransmit {
        ts_ns: u64,
        peer: Peer,
        /// `None` when the event had no socket cookie.
        cookie: Option<u64>,
        kind: RetransmitKind,
    },
    /// A connection attempt failed, or a connection ended with a reset (once per flow, when
    /// it closes).
    ConnectFailed {
        ts_ns: u64,
        peer: Peer,
        /// Our listening port for server flows.
        local_port: Option<u16>,
        cookie: u64,
        /// `None` when the flow's role is unknown (seen first at its close).
        role: Option<Role>,
        cause: ConnectFailure,
    },
    /// A client handshake completed: connect() (first SYN) to ESTABLISHED.
    Handshake {
        ts_ns: u64,
        peer: Peer,
        duration: Duration,
    },
    /// An RTT sample of a flow (at most one per flow per `--rtt-sample-ms`).
    Rtt {
        ts_ns: u64,
        peer: Peer,
        rtt: Duration,
    },
    /// Data segments a flow sent and retransmitted since the previous signal for it.
    DataSegments {
        ts_ns: u64,
        peer: Peer,
        sent: u64,
        retransmitted: u64,
    },
    /// The kernel's own repeat-RST check fired.
    RepeatRst {
        ts_ns: u64,
        scope: RepeatScope,
        peer: Option<Peer>,
        local_port: Option<u16>,
        /// The netns cookie of our end (0: unknown): a local port's scope is in it.
        netns: u64,
        cookie: Option<u64>,
        count: u32,
    },
}

impl Signal {
    pub fn ts_ns(&self) -> u64 {
        match self {
            Signal::Connection { ts_ns, .. }
            | Signal::Rst { ts_ns, .. }
            | Signal::Retransmit { ts_ns, .. }
            | Signal::ConnectFailed { ts_ns, .. }
            | Signal::Handshake { ts_ns, .. }
            | Signal::Rtt { ts_ns, .. }
            | Signal::DataSegments { ts_ns, .. }
            | Signal::RepeatRst { ts_ns, .. } => *ts_ns,
        }
    }
}
