//! The one ring-buffer record type and the in-kernel counter indices.

/// What produced a [`FlowEvent`]. Values index the per-CPU counter arrays.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// sock_ops `TCP_CONNECT_CB`: an active open starts (SYN about to be sent).
    Connect = 0,
    /// sock_ops `ACTIVE_ESTABLISHED_CB`: our SYN was answered, handshake done.
    ActiveEstablished = 1,
    /// sock_ops `PASSIVE_ESTABLISHED_CB`: an accepted connection finished its handshake.
    PassiveEstablished = 2,
    /// sock_ops `STATE_CB`: state change with the socket's counters.
    SockOpsState = 3,
    /// sock_ops `RETRANS_CB`: a retransmission attempt (args: seq, segs, result).
    SockOpsRetrans = 4,
    /// sock_ops `RTO_CB`: a retransmission timer fired.
    Rto = 5,
    /// sock_ops `RTT_CB`: an RTT sample. Counted every time; records are rate-limited per flow.
    Rtt = 6,
    /// tracepoint `tcp:tcp_receive_reset`.
    RstReceived = 7,
    /// tracepoint `tcp:tcp_send_reset`.
    RstSent = 8,
    /// tracepoint `tcp:tcp_retransmit_skb`.
    RetransmitSkb = 9,
    /// tracepoint `tcp:tcp_retransmit_synack`.
    RetransmitSynack = 10,
    /// tracepoint `tcp:tcp_destroy_sock`.
    DestroySock = 11,
    /// tracepoint `sock:inet_sock_set_state` (TCP only).
    StateChange = 12,
    /// In-kernel repeat-RST check fired (same socket, remote endpoint or local port within the
    /// window). `args[0]` = [`repeat_scope`], `args[1]` = RSTs counted in the window.
    RepeatRst = 13,
}

/// Number of [`EventKind`] values; length of the per-kind counter arrays.
pub const EVENT_KIND_COUNT: u32 = 14;

/// `args[0]` of [`EventKind::RepeatRst`] records.
pub mod repeat_scope {
    pub const SOCKET: u32 = 0;
    pub const PEER: u32 = 1;
    pub const LOCAL_PORT: u32 = 2;
}

impl EventKind {
    pub const ALL: [EventKind; EVENT_KIND_COUNT as usize] = [
        EventKind::Connect,
        EventKind::ActiveEstablished,
        EventKind::PassiveEstablished,
        EventKind::SockOpsState,
        EventKind::SockOpsRetrans,
        EventKind::Rto,
        EventKind::Rtt,
        EventKind::RstReceived,
        EventKind::RstSent,
        EventKind::RetransmitSkb,
        EventKind::RetransmitSynack,
        EventKind::DestroySock,
        EventKind::StateChange,
        EventKind::RepeatRst,
    ];

    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }
}

/// Indices into the `MISC_COUNTS` per-CPU array: counts that are not one per record kind.
pub mod misc {
    /// SYN_SENT → CLOSE transitions (connect failed: refused, timed out or unreachable).
    pub const CONNECT_FAILED: u32 = 0;
    /// Events dropped by the scope filter because the socket's netns/cgroup could not be read.
    pub const SCOPE_UNKNOWN: u32 = 1;
    /// RTT callbacks that were counted but not sent as records (per-flow rate limit).
    pub const RTT_NOT_SAMPLED: u32 = 2;
    /// `bpf_sock_ops_cb_flags_set` failures (the socket will miss STATE/RETRANS/RTO/RTT callbacks).
    pub const CB_FLAGS_FAILED: u32 = 3;
    /// SYN_SENT → CLOSE records the ring could not take, by the socket's error: their failure
    /// cause is counted here so the exported failure totals stay exact under loss.
    pub const CONNECT_FAILED_LOST_REFUSED: u32 = 4;
    pub const CONNECT_FAILED_LOST_TIMEOUT: u32 = 5;
    pub const CONNECT_FAILED_LOST_UNREACHABLE: u32 = 6;
    /// Any other (or unreadable) `sk_err`.
    pub const CONNECT_FAILED_LOST_OTHER: u32 = 7;
    pub const COUNT: u32 = 8;

    /// Linux errno values of the connect failures (asm-generic/errno.h).
    pub const ECONNREFUSED: i32 = 111;
    pub const ETIMEDOUT: i32 = 110;
    pub const ENETDOWN: i32 = 100;
    pub const ENETUNREACH: i32 = 101;
    pub const EHOSTDOWN: i32 = 112;
    pub const EHOSTUNREACH: i32 = 113;

    /// The `CONNECT_FAILED_LOST_*` slot of a failed connect's `sk_err`.
    pub const fn connect_failed_lost_slot(sk_err: i32) -> u32 {
        match sk_err {
            ECONNREFUSED => CONNECT_FAILED_LOST_REFUSED,
            ETIMEDOUT => CONNECT_FAILED_LOST_TIMEOUT,
            ENETDOWN | ENETUNREACH | EHOSTDOWN | EHOSTUNREACH => CONNECT_FAILED_LOST_UNREACHABLE,
            _ => CONNECT_FAILED_LOST_OTHER,
        }
    }
}

/// Slots in the `RST_REASON_COUNTS` array; reasons at or above the last slot share it.
pub const RST_REASON_SLOTS: u32 = 128;

/// `FlowEvent::flags` bits.
pub mod flags {
    /// `cookie` holds the socket cookie. Unset: no socket (e.g. RST for a closed port) or its
    /// cookie was never generated.
    pub const COOKIE: u32 = 1 << 0;
    /// Addresses are IPv6 (else IPv4 in the first 4 bytes).
    pub const IPV6: u32 = 1 << 1;
    /// `pid`/`comm` are the process that owns the socket (the hook ran in its context).
    pub const PID: u32 = 1 << 2;
    /// `reason` holds the kernel's `sk_rst_reason` (tcp_send_reset on kernels with it).
    pub const REASON: u32 = 1 << 3;
    /// The socket counters (`srtt_us` … `bytes_acked`) are filled (sock_ops events).
    pub const STATS: u32 = 1 << 4;
    /// `netns_cookie` is filled.
    pub const NETNS: u32 = 1 << 5;
    /// The event has no socket: addresses come from the packet.
    pub const NO_SOCKET: u32 = 1 << 6;
    /// `args[1]` holds the socket's `sk_err` (state changes to CLOSE).
    pub const SK_ERR: u32 = 1 << 7;
    /// `args[2]` (low) and `args[3]` (high) hold the socket's cgroup v2 id (state changes).
    pub const CGROUP: u32 = 1 << 8;
}

/// One ring-buffer record. Fixed size so the decoder can check it before reading.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC, boot-relative).
    pub ts_ns: u64,
    pub cookie: u64,
    pub netns_cookie: u64,
    /// [`EventKind`] as u32.
    pub kind: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// Address family (`AF_INET` = 2, `AF_INET6` = 10).
    pub family: u16,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// TCP state before (state changes) or at the event; kernel `TCP_*` numbering.
    pub old_state: u8,
    /// TCP state after a state change, else equal to `old_state`.
    pub new_state: u8,
    /// Local address, network byte order; IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    /// Remote address, network byte order; IPv4 in the first 4 bytes.
    pub daddr: [u8; 16],
    /// RST reason (`sk_rst_reason`) for `RstSent`.
    pub reason: u32,
    /// Thread-group id when [`flags::PID`] is set.
    pub pid: u32,
    pub comm: [u8; 16],
    /// Kind-specific arguments (sock_ops args, tracepoint `err`, RTT sample in µs).
    pub args: [u32; 4],
    /// Smoothed RTT in µs (sock_ops `srtt_us >> 3`).
    pub srtt_us: u32,
    pub total_retrans: u32,
    pub segs_in: u32,
    pub segs_out: u32,
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    pub bytes_received: u64,
    pub bytes_acked: u64,
}

/// Size checked by the decoder; a mismatch means kernel and userspace objects differ.
pub const FLOW_EVENT_SIZE: usize = core::mem::size_of::<FlowEvent>();

const _: () = assert!(FLOW_EVENT_SIZE == 152);

#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowEvent {}
