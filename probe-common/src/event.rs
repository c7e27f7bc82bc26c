//! The ring-buffer record, the per-flow state the kernel keeps (and copies into every record
//! of a flow), and the indices of the in-kernel counters.
//!
//! The contract is "keep the flow's state in the kernel, send what matters": a healthy flow
//! costs one [`EventKind::FlowEnd`] record when it reaches CLOSE; exceptions (RSTs sent, SYN
//! and SYN-ACK retransmits, rate-limited data retransmits and RTOs, repeat-RST alerts) are sent
//! at once; every other hook hit is only counted, unless detail is on for the flow (then every
//! hook hit is a record, for `linkprobe trace`). Every record of a flow carries the flow's
//! [`FlowState`] as it is after the hit, so userspace derives facts from counter deltas and a
//! lost record only delays them until the next record of the flow.

use crate::kernel::errno;

/// What produced a [`FlowRecord`]. Values index the per-CPU counter arrays (and the record's
/// `kind` holds one as u32).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A flow reached CLOSE: its summary (state, `sk_err`, socket counters). Always a record.
    FlowEnd = 0,
    /// connect(): CLOSE → SYN_SENT. Counted; a record with detail only.
    Connect = 1,
    /// SYN_SENT → ESTABLISHED. Counted; a record with detail only.
    ActiveEstablished = 2,
    /// SYN_RECV → ESTABLISHED (an accepted connection). Counted; a record with detail only.
    PassiveEstablished = 3,
    /// Any TCP state change (the kinds above are also counted here). A record with detail only.
    StateChange = 4,
    /// `tcp_receive_reset`. Counted in the flow; its FlowEnd follows at once (a received RST
    /// always closes the socket), so a record with detail only.
    RstReceived = 5,
    /// `tcp_send_reset`. Always a record (with or without a socket).
    RstSent = 6,
    /// `tcp_retransmit_skb`. SYNs: always a record. Data: at most one record per flow per
    /// report interval; every one counted in the flow.
    Retransmit = 7,
    /// `tcp_retransmit_synack` (a listener's request socket). Always a record.
    RetransmitSynack = 8,
    /// sock_ops RTO callback: the retransmission timer fired. Counted in the flow; a record at
    /// most once per flow per report interval, and not in SYN_SENT (its SYN retransmit is one).
    Rto = 9,
    /// In-kernel repeat-RST check fired. `args[0]` = [`repeat_scope`], `args[1]` = RSTs in
    /// the window.
    RepeatRst = 10,
    /// An open flow, written by the open-flow iterator when userspace asks (never in the ring).
    Open = 11,
}

/// Number of [`EventKind`] values; length of the per-kind counter arrays.
pub const EVENT_KIND_COUNT: u32 = 12;

/// `args[0]` of [`EventKind::RepeatRst`] records.
pub mod repeat_scope {
    pub const SOCKET: u32 = 0;
    pub const PEER: u32 = 1;
    pub const LOCAL_PORT: u32 = 2;
}

impl EventKind {
    pub const ALL: [EventKind; EVENT_KIND_COUNT as usize] = [
        EventKind::FlowEnd,
        EventKind::Connect,
        EventKind::ActiveEstablished,
        EventKind::PassiveEstablished,
        EventKind::StateChange,
        EventKind::RstReceived,
        EventKind::RstSent,
        EventKind::Retransmit,
        EventKind::RetransmitSynack,
        EventKind::Rto,
        EventKind::RepeatRst,
        EventKind::Open,
    ];

    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }
}

/// Indices into the `MISC_COUNTS` per-CPU array: counts that are not one per record kind.
pub mod misc {
    use crate::kernel::errno;

    /// SYN_SENT → CLOSE transitions (connect failed: refused, timed out or unreachable).
    pub const CONNECT_FAILED: u32 = 0;
    /// Events dropped by the scope filter because the socket's netns/cgroup could not be read.
    pub const SCOPE_UNKNOWN: u32 = 1;
    /// `bpf_sock_ops_cb_flags_set` failures (the socket will miss RTO callbacks).
    pub const CB_FLAGS_FAILED: u32 = 2;
    /// Failed connects whose FlowEnd record the ring could not take, by the socket's error:
    /// the exported failure totals stay exact under loss.
    pub const CONNECT_FAILED_LOST_REFUSED: u32 = 3;
    pub const CONNECT_FAILED_LOST_TIMEOUT: u32 = 4;
    pub const CONNECT_FAILED_LOST_UNREACHABLE: u32 = 5;
    /// Any other (or unreadable) `sk_err`.
    pub const CONNECT_FAILED_LOST_OTHER: u32 = 6;
    // CONNECT_FAILED_LOST_ABANDONED is after the backup slots (added later).
    /// Flow state could not be created (out of memory): the flow is reported without it.
    pub const STATE_CREATE_FAILED: u32 = 7;
    /// Flows first seen after their start (opened before linkprobe, or their state was
    /// evicted from the fallback LRU map).
    pub const STATE_LATE: u32 = 8;
    /// Data-retransmit and RTO hits counted in their flow but not sent as a record (the
    /// per-flow report interval): the flow's next record carries them.
    pub const HELD_BACK: u32 = 9;
    /// Facts whose only record was lost: the kernel counted them here, so exported totals
    /// stay exact (userspace shows them under `peer="lost"`).
    pub const LOST_CONN_CLIENT: u32 = 10;
    pub const LOST_CONN_SERVER: u32 = 11;
    pub const LOST_RST_SENT: u32 = 12;
    pub const LOST_RST_RECEIVED: u32 = 13;
    pub const LOST_RETRANS_SYN: u32 = 14;
    pub const LOST_RETRANS_DATA: u32 = 15;
    pub const LOST_RETRANS_FAILED: u32 = 16;
    pub const LOST_RTO: u32 = 17;
    pub const LOST_RETRANS_SYNACK: u32 = 18;
    /// Connections ended by an RST whose closing record was lost.
    pub const LOST_FAIL_RESET: u32 = 19;
    /// State changes counted but sent as no record, detail on: an accepted socket's SYN_RECV
    /// where the kernel announces it before giving the socket its own cookie (6.1, 6.12), so no
    /// record could name the flow.
    pub const UNNAMED_STATE_CHANGE: u32 = 20;
    /// Hits a backup program handled because the kernel skipped its primary (the primary
    /// was already running on that CPU: preempted or interrupted), one slot per
    /// [`crate::backup`] hook, from `BACKUP_RUNS`.
    pub const BACKUP_RUNS: u32 = 21;
    /// A primary could not leave its mark for its backup (no task storage): that hit may be
    /// counted twice.
    pub const BACKUP_MARK_FAILED: u32 = BACKUP_RUNS + crate::event::backup::COUNT;
    /// Failed connects whose FlowEnd the ring could not take, closed by the app in SYN_SENT
    /// without a socket error ([`crate::CloseClass::Abandoned`]).
    pub const CONNECT_FAILED_LOST_ABANDONED: u32 = BACKUP_MARK_FAILED + 1;
    pub const COUNT: u32 = CONNECT_FAILED_LOST_ABANDONED + 1;

    /// The `CONNECT_FAILED_LOST_*` slot of a failed connect's `sk_err`.
    pub const fn connect_failed_lost_slot(sk_err: i32) -> u32 {
        match sk_err {
            errno::ECONNREFUSED => CONNECT_FAILED_LOST_REFUSED,
            errno::ETIMEDOUT => CONNECT_FAILED_LOST_TIMEOUT,
            errno::ENETDOWN | errno::ENETUNREACH | errno::EHOSTDOWN | errno::EHOSTUNREACH => {
                CONNECT_FAILED_LOST_UNREACHABLE
            }
            _ => CONNECT_FAILED_LOST_OTHER,
        }
    }
}

/// Slots in the `RST_REASON_COUNTS` array; reasons at or above the last slot share it.
pub const RST_REASON_SLOTS: u32 = 128;

/// `FlowRecord::flags` bits.
pub mod flags {
    /// `cookie` holds the socket cookie. Unset: no socket (e.g. RST for a closed port).
    pub const COOKIE: u32 = 1 << 0;
    /// Addresses are IPv6 (else IPv4 in the first 4 bytes).
    pub const IPV6: u32 = 1 << 1;
    /// `flow` holds the flow's state after this hit.
    pub const FLOW: u32 = 1 << 2;
    /// `reason` holds the kernel's `sk_rst_reason` (tcp_send_reset on kernels with it).
    pub const REASON: u32 = 1 << 3;
    /// `stats` holds the socket's counters (FlowEnd, data retransmits, RTOs).
    pub const STATS: u32 = 1 << 4;
    /// `netns_cookie` is filled.
    pub const NETNS: u32 = 1 << 5;
    /// The event has no socket: addresses come from the packet.
    pub const NO_SOCKET: u32 = 1 << 6;
    /// `sk_err` holds the socket's error (FlowEnd, and state changes to CLOSE).
    pub const SK_ERR: u32 = 1 << 7;
    /// `args[0]` holds the retransmit's `err` (tcp_retransmit_skb on kernels with it).
    pub const ERR: u32 = 1 << 8;
}

/// `FlowState::role` values.
pub mod role {
    pub const UNKNOWN: u8 = 0;
    /// connect() on this socket.
    pub const CLIENT: u8 = 1;
    /// Accepted from a listener.
    pub const SERVER: u8 = 2;
    /// A listening socket: its state only carries the owner its accepted sockets inherit.
    pub const LISTENER: u8 = 3;
}

/// `FlowState::flags` bits.
pub mod state_flags {
    /// `pid`, `comm` and `cgroup_id` were taken in the owner's process context (connect(),
    /// listen()); accepted sockets inherit their listener's.
    pub const OWNER: u8 = 1 << 0;
    /// The FlowEnd record was sent (or counted lost): later records are post-close facts.
    pub const ENDED: u8 = 1 << 1;
    /// A record of this flow reached the ring: userspace knows the flow exists.
    pub const DELIVERED: u8 = 1 << 2;
    /// First seen after its start (opened before linkprobe, or state evicted).
    pub const LATE: u8 = 1 << 3;
    /// Every hook hit of this flow is sent as a record (detail on for it).
    pub const DETAIL: u8 = 1 << 4;
}

/// Per-flow counts of the facts the kernel saw. Userspace turns increases into signals.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounts {
    pub syn_retrans: u32,
    pub data_retrans: u32,
    /// Retransmits the kernel could not send (`err` != 0, 6.13+).
    pub retrans_failed: u32,
    pub rtos: u32,
    pub rst_sent: u32,
    pub rst_received: u32,
}

impl FlowCounts {
    /// Field-wise `self - earlier` (saturating): the facts added since `earlier`.
    pub const fn since(&self, earlier: &FlowCounts) -> FlowCounts {
        FlowCounts {
            syn_retrans: self.syn_retrans.saturating_sub(earlier.syn_retrans),
            data_retrans: self.data_retrans.saturating_sub(earlier.data_retrans),
            retrans_failed: self.retrans_failed.saturating_sub(earlier.retrans_failed),
            rtos: self.rtos.saturating_sub(earlier.rtos),
            rst_sent: self.rst_sent.saturating_sub(earlier.rst_sent),
            rst_received: self.rst_received.saturating_sub(earlier.rst_received),
        }
    }
}

/// What the kernel keeps per flow (socket local storage, or the fallback LRU map), created at
/// connect() / accept / first sight. Copied into every record of the flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// connect() (clients), the accepted socket's creation (servers), or first sight (LATE).
    pub start_ns: u64,
    /// 0 until ESTABLISHED.
    pub established_ns: u64,
    pub cookie: u64,
    pub netns_cookie: u64,
    /// cgroup v2 id of the owner (the socket's cgroup when no process context was seen).
    pub cgroup_id: u64,
    /// Last data-retransmit / RTO record sent (the per-flow report interval). Kernel-internal.
    pub last_report_ns: u64,
    /// Start of this flow's current repeat-RST window (the socket scope). Kernel-internal.
    pub rst_window_start_ns: u64,
    /// Thread-group id of the owner when [`state_flags::OWNER`] is set.
    pub pid: u32,
    /// `sk_rst_reason` of the last RST sent on this flow (kernels with reasons).
    pub last_rst_reason: u32,
    pub comm: [u8; 16],
    pub counts: FlowCounts,
    /// `counts` as carried by the last record of this flow that reached the ring: what
    /// userspace knows. Kernel-internal: decides what a lost FlowEnd takes with it.
    pub reported: FlowCounts,
    /// RSTs of this flow in the current repeat-RST window. Kernel-internal.
    pub rst_window: u32,
    /// Local port (host order) once bound: the kernel releases it before the CLOSE hook runs.
    pub local_port: u16,
    /// [`role`] value.
    pub role: u8,
    /// [`state_flags`] bits.
    pub flags: u8,
}

/// The socket's own counters (`struct tcp_sock`), read at FlowEnd and on data retransmits.
/// Userspace shows them as they are (`user`: serde, JSON field names a contract).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct SockStats {
    /// Smoothed RTT in µs (`srtt_us >> 3`).
    pub srtt_us: u32,
    /// Windowed minimum RTT in µs (`rtt_min`).
    #[cfg_attr(feature = "user", serde(default))]
    pub min_rtt_us: u32,
    pub total_retrans: u32,
    pub segs_in: u32,
    pub segs_out: u32,
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    #[cfg_attr(feature = "user", serde(skip))]
    pub _pad: u32,
    pub bytes_received: u64,
    pub bytes_acked: u64,
}

/// One ring-buffer record. Fixed size so the decoder can check it before reading.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRecord {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC, boot-relative).
    pub ts_ns: u64,
    pub cookie: u64,
    pub netns_cookie: u64,
    /// [`EventKind`] as u32.
    pub kind: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// Address family ([`crate::kernel::net`]: `AF_INET`, `AF_INET6`).
    pub family: u16,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// TCP state before (state changes) or at the event ([`crate::kernel::tcp_state`]).
    pub old_state: u8,
    /// TCP state after a state change, else equal to `old_state`.
    pub new_state: u8,
    /// Local address, network byte order; IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    /// Remote address, network byte order; IPv4 in the first 4 bytes.
    pub daddr: [u8; 16],
    /// RST reason (`sk_rst_reason`) for `RstSent` when [`flags::REASON`] is set.
    pub reason: u32,
    /// The socket's error when [`flags::SK_ERR`] is set.
    pub sk_err: i32,
    /// Kind-specific arguments (retransmit `err`, repeat-RST scope and count).
    pub args: [u32; 2],
    /// The flow after this hit, when [`flags::FLOW`] is set.
    pub flow: FlowState,
    /// Socket counters, when [`flags::STATS`] is set.
    pub stats: SockStats,
}

/// Size checked by the decoder; a mismatch means kernel and userspace objects differ.
pub const FLOW_RECORD_SIZE: usize = core::mem::size_of::<FlowRecord>();

const _: () = assert!(core::mem::size_of::<FlowCounts>() == 24);
const _: () = assert!(core::mem::size_of::<FlowState>() == 136);
const _: () = assert!(core::mem::size_of::<SockStats>() == 48);
const _: () = assert!(FLOW_RECORD_SIZE == 272);

/// How a flow ended, decided the same way in the kernel (for the counts a lost FlowEnd takes
/// with it) and in userspace (the flow table's close cause).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseClass {
    Fin,
    RstReceived,
    RstSent,
    Refused,
    Timeout,
    Unreachable,
    /// The app closed its socket while connecting (SYN_SENT, no socket error): it gave up
    /// (its own connect timeout) before the kernel did; `Timeout` is the kernel's (ETIMEDOUT).
    Abandoned,
}

impl CloseClass {
    /// A connect that never established is typed by the kernel's `sk_err` (a received RST
    /// without one is a refusal, no error and no RST the app's own close, any other error a
    /// timeout); any other flow by its RSTs.
    pub const fn of(
        role: u8,
        established: bool,
        sk_err: i32,
        rst_sent: u32,
        rst_received: u32,
    ) -> CloseClass {
        if role == role::CLIENT && !established {
            return match sk_err {
                errno::ECONNREFUSED => CloseClass::Refused,
                errno::ETIMEDOUT => CloseClass::Timeout,
                errno::ENETDOWN | errno::ENETUNREACH | errno::EHOSTDOWN | errno::EHOSTUNREACH => {
                    CloseClass::Unreachable
                }
                _ if rst_received > 0 => CloseClass::Refused,
                0 => CloseClass::Abandoned,
                _ => CloseClass::Timeout,
            };
        }
        if rst_received > 0 {
            CloseClass::RstReceived
        } else if rst_sent > 0 {
            CloseClass::RstSent
        } else {
            CloseClass::Fin
        }
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowRecord {}

/// The hooks that run with a backup copy: the kernel skips a BTF tracepoint program while that
/// program already runs on the CPU (preempted inside it on kernels whose tracepoints are
/// preemptible, or interrupted by a softirq), so each hook has a second program that handles
/// exactly the hits its primary did not. Indexes `misc::BACKUP_RUNS + n`.
pub mod backup {
    pub const STATE: u32 = 0;
    pub const RST_RECEIVED: u32 = 1;
    pub const RST_SENT: u32 = 2;
    pub const RETRANSMIT: u32 = 3;
    pub const RETRANS_SYNACK: u32 = 4;
    pub const COUNT: u32 = 5;
}
