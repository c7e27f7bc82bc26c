//! Maps and load-time globals shared by every program.
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
    Global,
};
use probe_common::{
    misc, FlowEvent, KernelOffsets, RepeatRstConfig, ScopeFilter, TpLayout, Tuning,
    EVENT_KIND_COUNT, RECORD_BUF, RST_REASON_SLOTS,
};

/// Records for userspace. Size is overridden at load time (`--ring-bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Exact per-kind event counts, incremented before any ring-buffer reserve.
#[map]
pub static EVENT_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KIND_COUNT, 0);

/// Per-kind ring-buffer reserve failures: records userspace will never see.
#[map]
pub static LOST_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KIND_COUNT, 0);

/// Per-kind events whose socket cookie could not be resolved (no socket, or never generated).
#[map]
pub static NO_COOKIE_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KIND_COUNT, 0);

/// Sent RSTs per kernel `sk_rst_reason`; the last slot holds unknown and out-of-range reasons.
#[map]
pub static RST_REASON_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(RST_REASON_SLOTS, 0);

/// Counts that are not one per record kind, indexed by `probe_common::misc`.
#[map]
pub static MISC_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(misc::COUNT, 0);

/// Last RTT record time per socket cookie, for the per-flow RTT sample rate limit.
#[map]
pub static RTT_LAST: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65_536, 0);

/// Per-CPU scratch records: a `FlowEvent` is too large to build on the 512-byte BPF stack
/// next to everything else a program keeps there. One slot per nesting level: the raw
/// tracepoint and `sock_ops` programs are not held back by the kernel's per-CPU
/// `bpf_prog_active` guard, so they can interrupt another of our programs on the same CPU
/// (softirq over process context) and must not overwrite its record.
#[map]
pub static SCRATCH: PerCpuArray<FlowEvent> = PerCpuArray::with_max_entries(SCRATCH_LEVELS, 0);

/// Slots of [`SCRATCH`]: process context, softirq, hardirq, NMI.
pub const SCRATCH_LEVELS: u32 = 4;

/// Per-CPU index of the next free [`SCRATCH`] slot.
#[map]
pub static SCRATCH_DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU copy of the tracepoint record being handled: one kernel read instead of one per
/// field.
#[map]
pub static TP_RECORD: PerCpuArray<[u8; RECORD_BUF]> = PerCpuArray::with_max_entries(1, 0);

/// Process that called connect() on a socket, keyed by the socket's kernel address. The
/// SYN_SENT transition is the only tracepoint in process context and comes before the cookie
/// exists, so later events of the same socket look the owner up here.
#[map]
pub static SK_OWNER: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(65_536, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Owner {
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// Last RST time and RST count per socket cookie, for the repeat-RST check.
#[map]
pub static RST_HISTORY: LruHashMap<u64, RstHistory> = LruHashMap::with_max_entries(65_536, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct RstHistory {
    pub last_ns: u64,
    pub count: u32,
    pub _pad: u32,
}

/// RSTs per remote endpoint in the current window.
#[map]
pub static RST_PEER_HISTORY: LruHashMap<PeerKey, Window> = LruHashMap::with_max_entries(16_384, 0);

/// RSTs per local service port in the current window.
#[map]
pub static RST_PORT_HISTORY: LruHashMap<u32, Window> = LruHashMap::with_max_entries(4_096, 0);

/// Sockets the repeat-RST check flagged: cookie → time of the alert.
#[map]
pub static ANOMALY_ALERTS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// A remote endpoint: address (IPv4 in the first 4 bytes) and service port (0 when ephemeral).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PeerKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
}

/// A fixed counting window.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Window {
    pub start_ns: u64,
    pub count: u32,
    /// 1 once this window raised its alert.
    pub alerted: u32,
}

#[unsafe(no_mangle)]
pub static REPEAT: Global<RepeatRstConfig> = Global::new(RepeatRstConfig::DEFAULT);

#[unsafe(no_mangle)]
pub static SCOPE: Global<ScopeFilter> = Global::new(ScopeFilter {
    netns_cookie: 0,
    cgroup_id: 0,
    cgroup_level: 0,
    _pad: 0,
});

#[unsafe(no_mangle)]
pub static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets::EMPTY);

#[unsafe(no_mangle)]
pub static TUNING: Global<Tuning> = Global::new(Tuning::DEFAULT);

#[unsafe(no_mangle)]
pub static TP_RST_RECEIVED: Global<TpLayout> = Global::new(TpLayout::EMPTY);
#[unsafe(no_mangle)]
pub static TP_RST_SENT: Global<TpLayout> = Global::new(TpLayout::EMPTY);
#[unsafe(no_mangle)]
pub static TP_RETRANSMIT_SKB: Global<TpLayout> = Global::new(TpLayout::EMPTY);
#[unsafe(no_mangle)]
pub static TP_RETRANSMIT_SYNACK: Global<TpLayout> = Global::new(TpLayout::EMPTY);
#[unsafe(no_mangle)]
pub static TP_DESTROY_SOCK: Global<TpLayout> = Global::new(TpLayout::EMPTY);
#[unsafe(no_mangle)]
pub static TP_SET_STATE: Global<TpLayout> = Global::new(TpLayout::EMPTY);
