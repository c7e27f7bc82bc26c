//! The typed events the rest of the daemon works with, decoded from kernel records by
//! [`crate::decode`].
use std::{fmt, net::SocketAddr};

use probe_common::EventKind;

pub use crate::signal::RepeatScope;

/// Kernel TCP states (include/net/tcp_states.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpState(pub u8);

impl TcpState {
    pub const ESTABLISHED: TcpState = TcpState(1);
    pub const SYN_SENT: TcpState = TcpState(2);
    pub const SYN_RECV: TcpState = TcpState(3);
    pub const CLOSE: TcpState = TcpState(7);
    pub const LISTEN: TcpState = TcpState(10);

    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "ESTABLISHED",
            2 => "SYN_SENT",
            3 => "SYN_RECV",
            4 => "FIN_WAIT1",
            5 => "FIN_WAIT2",
            6 => "TIME_WAIT",
            7 => "CLOSE",
            8 => "CLOSE_WAIT",
            9 => "LAST_ACK",
            10 => "LISTEN",
            11 => "CLOSING",
            12 => "NEW_SYN_RECV",
            13 => "BOUND_INACTIVE",
            _ => "UNKNOWN",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Socket counters sock_ops reports with each of its callbacks (JSON field names are a contract).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SockStats {
    pub srtt_us: u32,
    pub total_retrans: u32,
    pub segs_in: u32,
    pub segs_out: u32,
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    pub bytes_received: u64,
    pub bytes_acked: u64,
}

/// The process that owned the socket when the event happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
}

/// Which end opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// What happened, with the details each hook knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
    /// An active open starts (sock_ops TCP_CONNECT_CB).
    Connect { stats: SockStats },
    /// The handshake completed (sock_ops ACTIVE/PASSIVE_ESTABLISHED_CB).
    Established { role: Role, stats: SockStats },
    /// sock_ops STATE_CB: a state change with the socket's counters at that moment.
    SockOpsState {
        from: TcpState,
        to: TcpState,
        stats: SockStats,
    },
    /// sock_ops RETRANS_CB.
    SockOpsRetrans {
        seq: u32,
        segs: u32,
        result: i32,
        stats: SockStats,
    },
    /// sock_ops RTO_CB: the retransmission timer fired.
    Rto {
        retransmits: u32,
        rto_jiffies: u32,
        stats: SockStats,
    },
    /// sock_ops RTT_CB (sampled per flow).
    Rtt { sample_us: u32, stats: SockStats },
    /// tcp:tcp_receive_reset: the peer reset this socket.
    RstReceived { state: TcpState },
    /// tcp:tcp_send_reset: this host sent a reset; `no_socket` when no socket matched.
    RstSent {
        state: TcpState,
        reason: Option<u32>,
        no_socket: bool,
    },
    /// tcp:tcp_retransmit_skb.
    Retransmit { state: TcpState, err: i32 },
    /// tcp:tcp_retransmit_synack.
    RetransmitSynack,
    /// tcp:tcp_destroy_sock.
    Destroy { state: TcpState },
    /// sock:inet_sock_set_state for TCP.
    StateChange { from: TcpState, to: TcpState },
    /// The in-kernel repeat-RST check fired; the event carries the RST's cookie and addresses.
    RepeatRst { scope: RepeatScope, count: u32 },
}

impl Detail {
    /// The record kind this detail was decoded from.
    pub fn kind(&self) -> EventKind {
        match self {
            Detail::Connect { .. } => EventKind::Connect,
            Detail::Established {
                role: Role::Client, ..
            } => EventKind::ActiveEstablished,
            Detail::Established {
                role: Role::Server, ..
            } => EventKind::PassiveEstablished,
            Detail::SockOpsState { .. } => EventKind::SockOpsState,
            Detail::SockOpsRetrans { .. } => EventKind::SockOpsRetrans,
            Detail::Rto { .. } => EventKind::Rto,
            Detail::Rtt { .. } => EventKind::Rtt,
            Detail::RstReceived { .. } => EventKind::RstReceived,
            Detail::RstSent { .. } => EventKind::RstSent,
            Detail::Retransmit { .. } => EventKind::RetransmitSkb,
            Detail::RetransmitSynack => EventKind::RetransmitSynack,
            Detail::Destroy { .. } => EventKind::DestroySock,
            Detail::StateChange { .. } => EventKind::StateChange,
            Detail::RepeatRst { .. } => EventKind::RepeatRst,
        }
    }
}

/// Stable name of an event kind, used in output, counters and metrics.
pub fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Connect => "connect",
        EventKind::ActiveEstablished => "active_established",
        EventKind::PassiveEstablished => "passive_established",
        EventKind::SockOpsState => "sockops_state",
        EventKind::SockOpsRetrans => "sockops_retrans",
        EventKind::Rto => "rto",
        EventKind::Rtt => "rtt",
        EventKind::RstReceived => "rst_received",
        EventKind::RstSent => "rst_sent",
        EventKind::RetransmitSkb => "retransmit",
        EventKind::RetransmitSynack => "retransmit_synack",
        EventKind::DestroySock => "destroy",
        EventKind::StateChange => "state_change",
        EventKind::RepeatRst => "repeat_rst",
    }
}

/// One decoded kernel event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub ts_ns: u64,
    /// Socket cookie; `None` when there was no socket or its cookie was never generated.
    pub cookie: Option<u64>,
    pub netns_cookie: Option<u64>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The process that called connect() on this socket, where the kernel side knew it.
    pub process: Option<Process>,
    /// The socket's error (`sk_err`, an errno) when it moved to CLOSE: 111 ECONNREFUSED,
    /// 110 ETIMEDOUT, 113 EHOSTUNREACH, … `None` on other events or when unreadable.
    pub sk_err: Option<i32>,
    /// The socket's cgroup v2 id (on state changes), the directory inode under the cgroup2 mount.
    pub cgroup_id: Option<u64>,
    pub detail: Detail,
}
