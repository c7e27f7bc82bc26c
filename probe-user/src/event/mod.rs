//! The typed events the rest of the daemon works with, decoded from kernel records by
//! [`crate::event::decode`].
pub mod decode;
pub mod parse;
pub mod rst_reason;
pub mod totals;
use std::{borrow::Cow, fmt, net::SocketAddr};

use probe_common::{kernel::tcp_state, EventKind};

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

impl RepeatScope {
    /// Stable name for output.
    pub fn name(self) -> &'static str {
        match self {
            RepeatScope::Socket => "socket",
            RepeatScope::Peer => "peer",
            RepeatScope::LocalPort => "local_port",
        }
    }
}

/// A kernel TCP state ([`probe_common::kernel::tcp_state`] numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpState(pub u8);

impl TcpState {
    pub const ESTABLISHED: TcpState = TcpState(tcp_state::ESTABLISHED);
    pub const SYN_SENT: TcpState = TcpState(tcp_state::SYN_SENT);
    pub const SYN_RECV: TcpState = TcpState(tcp_state::SYN_RECV);
    pub const CLOSE: TcpState = TcpState(tcp_state::CLOSE);
    pub const LISTEN: TcpState = TcpState(tcp_state::LISTEN);
    pub const TIME_WAIT: TcpState = TcpState(tcp_state::TIME_WAIT);
    pub const NEW_SYN_RECV: TcpState = TcpState(tcp_state::NEW_SYN_RECV);
    pub const FIN_WAIT2: TcpState = TcpState(tcp_state::FIN_WAIT2);
    pub const CLOSE_WAIT: TcpState = TcpState(tcp_state::CLOSE_WAIT);
    pub const LAST_ACK: TcpState = TcpState(tcp_state::LAST_ACK);
    pub const CLOSING: TcpState = TcpState(tcp_state::CLOSING);

    pub fn name(self) -> &'static str {
        match self.0 {
            tcp_state::ESTABLISHED => "ESTABLISHED",
            tcp_state::SYN_SENT => "SYN_SENT",
            tcp_state::SYN_RECV => "SYN_RECV",
            tcp_state::FIN_WAIT1 => "FIN_WAIT1",
            tcp_state::FIN_WAIT2 => "FIN_WAIT2",
            tcp_state::TIME_WAIT => "TIME_WAIT",
            tcp_state::CLOSE => "CLOSE",
            tcp_state::CLOSE_WAIT => "CLOSE_WAIT",
            tcp_state::LAST_ACK => "LAST_ACK",
            tcp_state::LISTEN => "LISTEN",
            tcp_state::CLOSING => "CLOSING",
            tcp_state::NEW_SYN_RECV => "NEW_SYN_RECV",
            tcp_state::BOUND_INACTIVE => "BOUND_INACTIVE",
            _ => "UNKNOWN",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The socket's own counters (`struct tcp_sock`), read at a flow's end and on data
/// retransmits and RTOs: the kernel's record, shown as it is (JSON field names are a contract).
pub use probe_common::SockStats;

/// The process that owned the socket: the one that called connect() or listen() (an accepted
/// socket belongs to its listener's owner).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub comm: Comm,
}

/// A task's `comm` (at most 15 bytes), kept inline: no allocation per record. Any process can
/// set its own comm, so the only way out of a `Comm` is its escaped form
/// ([`crate::untrusted::escape`]: `\x1b`, `\u{202e}`, invalid UTF-8 as `\xNN`): a comm never
/// carries terminal escapes into `flows`, `watch`, the daemon's output or the JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Comm {
    bytes: [u8; 16],
    len: u8,
}

impl Comm {
    /// From the kernel's NUL-padded bytes (the comm ends at the first NUL).
    pub fn from_kernel(raw: &[u8; 16]) -> Comm {
        let len = raw.iter().take(15).take_while(|&&b| b != 0).count();
        let mut bytes = [0u8; 16];
        bytes[..len].copy_from_slice(&raw[..len]);
        Comm {
            bytes,
            len: len as u8,
        }
    }

    /// The escaped name: borrowed when the comm needed no escaping.
    pub fn as_str(&self) -> Cow<'_, str> {
        crate::untrusted::escape(&self.bytes[..usize::from(self.len)])
    }
}

impl From<&str> for Comm {
    fn from(s: &str) -> Comm {
        let mut raw = [0u8; 16];
        for (d, b) in raw.iter_mut().zip(s.bytes().take(15)) {
            *d = b;
        }
        Comm::from_kernel(&raw)
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.as_str(), f)
    }
}

/// Which end opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    /// Stable name for output and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// A flow's state as the kernel keeps it, after the hit a record reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSnapshot {
    /// connect() (clients), the accepted socket's creation (servers), first sight (`late`).
    pub start_ns: u64,
    pub established_ns: Option<u64>,
    pub role: Option<Role>,
    /// Facts counted so far (retransmits, RTOs, RSTs).
    pub counts: FlowCounts,
    /// Kernel reason of the flow's last RST sent.
    pub last_rst_reason: Option<u32>,
    /// First seen after its start (open before linkprobe, or its state was evicted).
    pub late: bool,
}

pub use probe_common::FlowCounts;

/// What happened, with the details each hook knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
    /// The flow reached CLOSE (from `from`): its summary.
    FlowEnd { from: TcpState },
    /// connect() started (detail only).
    Connect,
    /// The handshake completed (detail only).
    Established { role: Role },
    /// Another TCP state change (detail only).
    StateChange { from: TcpState, to: TcpState },
    /// The peer reset this socket (detail only; the FlowEnd carries the count).
    RstReceived { state: TcpState },
    /// This host sent a reset; `no_socket` when no socket matched.
    RstSent {
        state: TcpState,
        reason: Option<u32>,
        no_socket: bool,
    },
    /// A segment sent again; `err` where the kernel reports the send's result (6.13+).
    Retransmit { state: TcpState, err: Option<i32> },
    /// A listener sent its SYN-ACK again.
    RetransmitSynack,
    /// The retransmission timer fired (sock_ops).
    Rto { state: TcpState },
    /// The in-kernel repeat-RST check fired; the event carries the RST's cookie and addresses.
    RepeatRst { scope: RepeatScope, count: u32 },
    /// An open flow, read from the kernel when asked (never from the ring).
    Open { state: TcpState },
}

impl Detail {
    /// The record kind this detail was decoded from.
    pub fn kind(&self) -> EventKind {
        match self {
            Detail::FlowEnd { .. } => EventKind::FlowEnd,
            Detail::Connect => EventKind::Connect,
            Detail::Established { role: Role::Client } => EventKind::ActiveEstablished,
            Detail::Established { role: Role::Server } => EventKind::PassiveEstablished,
            Detail::StateChange { .. } => EventKind::StateChange,
            Detail::RstReceived { .. } => EventKind::RstReceived,
            Detail::RstSent { .. } => EventKind::RstSent,
            Detail::Retransmit { .. } => EventKind::Retransmit,
            Detail::RetransmitSynack => EventKind::RetransmitSynack,
            Detail::Rto { .. } => EventKind::Rto,
            Detail::RepeatRst { .. } => EventKind::RepeatRst,
            Detail::Open { .. } => EventKind::Open,
        }
    }
}

/// Stable name of an event kind, used in output, counters and metrics.
pub fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::FlowEnd => "flow_end",
        EventKind::Connect => "connect",
        EventKind::ActiveEstablished => "active_established",
        EventKind::PassiveEstablished => "passive_established",
        EventKind::StateChange => "state_change",
        EventKind::RstReceived => "rst_received",
        EventKind::RstSent => "rst_sent",
        EventKind::Retransmit => "retransmit",
        EventKind::RetransmitSynack => "retransmit_synack",
        EventKind::Rto => "rto",
        EventKind::RepeatRst => "repeat_rst",
        EventKind::Open => "open",
    }
}

/// One decoded kernel record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub ts_ns: u64,
    /// Socket cookie; `None` when there was no socket.
    pub cookie: Option<u64>,
    pub netns_cookie: Option<u64>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The socket's owner, where the kernel took it in process context.
    pub process: Option<Process>,
    /// The socket's error (`sk_err`, an errno) at its end: 111 ECONNREFUSED, 110 ETIMEDOUT,
    /// 113 EHOSTUNREACH, … `None` on other events or when unreadable.
    pub sk_err: Option<i32>,
    /// cgroup v2 id of the owner (the directory inode under the cgroup2 mount).
    pub cgroup_id: Option<u64>,
    /// The flow's state after this hit, when the socket has one.
    pub flow: Option<FlowSnapshot>,
    /// The socket's counters, when the record carries them.
    pub stats: Option<SockStats>,
    pub detail: Detail,
}
