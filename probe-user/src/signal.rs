//! What the flow table tells the detectors: one value per fact worth counting, already
//! attributed to a scope. The contract between `flows` (producer) and `detect` (consumer).
use std::{net::IpAddr, time::Duration};

/// Where a peer is: its address, plus its port only when that is a service port (we are the
/// client). Never an ephemeral port, so scopes stay bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

/// Which side sent a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RstDirection {
    Sent,
    Received,
}

/// Why a connection attempt (SYN_SENT) ended without a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectFailure {
    /// RST in SYN_SENT (ECONNREFUSED).
    Refused,
    /// SYN retries exhausted (ETIMEDOUT).
    Timeout,
    /// ICMP unreachable or another hard error (EHOSTUNREACH, ENETUNREACH, …).
    Unreachable,
}

/// Which in-kernel repeat-RST check fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RepeatScope {
    /// Second RST on the same socket within the window.
    Socket,
    /// N RSTs to/from the same remote endpoint within the window.
    Peer,
    /// N RSTs on the same local listening port within the window.
    LocalPort,
}

/// One countable fact, produced by the flow table as events arrive.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// A connection was opened (client: connect; server: handshake completed).
    Connection {
        ts_ns: u64,
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
        /// Kernel reason name where known.
        reason: Option<String>,
        /// The flow was established before the reset (a "reset after established").
        after_established: bool,
    },
    /// A SYN was retransmitted; `since_first_syn` is the time since the flow's first SYN.
    SynRetransmit {
        ts_ns: u64,
        peer: Peer,
        cookie: u64,
        since_first_syn: Duration,
    },
    /// A connection attempt failed.
    ConnectFailed {
        ts_ns: u64,
        peer: Peer,
        cookie: u64,
        cause: ConnectFailure,
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
        cookie: Option<u64>,
        count: u32,
    },
}

impl Signal {
    pub fn ts_ns(&self) -> u64 {
        match self {
            Signal::Connection { ts_ns, .. }
            | Signal::Rst { ts_ns, .. }
            | Signal::SynRetransmit { ts_ns, .. }
            | Signal::ConnectFailed { ts_ns, .. }
            | Signal::DataSegments { ts_ns, .. }
            | Signal::RepeatRst { ts_ns, .. } => *ts_ns,
        }
    }
}
