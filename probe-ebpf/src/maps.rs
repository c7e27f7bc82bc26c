//! Maps and load-time globals shared by every program.
use aya_ebpf::{
    bindings::{
        bpf_map_type::{BPF_MAP_TYPE_SK_STORAGE, BPF_MAP_TYPE_TASK_STORAGE},
        BPF_F_CLONE, BPF_F_NO_PREALLOC,
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    Global,
};
use probe_common::{
    misc, DetailFilter, FlowState, HookArgs, KernelOffsets, RepeatRstConfig, ScopeFilter, Tuning,
    EVENT_KIND_COUNT, RST_REASON_SLOTS, TCP_WINDOW_MAX,
};

/// Records for userspace. Size is overridden at load time (`--ring-bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Exact per-kind hook hits, counted before anything can return early.
#[map]
pub static EVENT_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KIND_COUNT, 0);

/// Per-kind ring-buffer reserve failures: records userspace will never see.
#[map]
pub static LOST_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KIND_COUNT, 0);

/// Per-kind hits without a socket cookie (no socket, e.g. an RST for a closed port).
#[map]
pub static NO_COOKIE_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KIND_COUNT, 0);

/// Sent RSTs per kernel `sk_rst_reason`; the last slot holds unknown and out-of-range reasons.
#[map]
pub static RST_REASON_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(RST_REASON_SLOTS, 0);

/// Counts that are not one per record kind, indexed by `probe_common::misc`.
#[map]
pub static MISC_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(misc::COUNT, 0);

/// A BTF map definition of a local storage map (`BPF_MAP_TYPE_SK_STORAGE`,
/// `BPF_MAP_TYPE_TASK_STORAGE`: the kernel requires BTF for them): the `#[repr(C)]` shape libbpf
/// and aya read from the `.maps` section, where each field's pointee type carries a number
/// (`[i32; N]`) or the key/value type.
#[repr(C)]
pub struct LocalStorageDef<V, const KIND: usize, const FLAGS: usize> {
    r#type: *const [i32; KIND],
    key: *const i32,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; FLAGS],
}

// SAFETY: placeholder pointers the loader replaces; never dereferenced.
unsafe impl<V, const KIND: usize, const FLAGS: usize> Sync for LocalStorageDef<V, KIND, FLAGS> {}

impl<V, const KIND: usize, const FLAGS: usize> LocalStorageDef<V, KIND, FLAGS> {
    pub const fn new() -> Self {
        LocalStorageDef {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    #[inline(always)]
    pub fn as_ptr(&self) -> *mut core::ffi::c_void {
        core::ptr::from_ref(self).cast_mut().cast()
    }
}

/// Socket storage, not preallocated (required), cloned into accepted sockets so a child starts
/// with its listener's owner.
pub type SkStorageDef<V> = LocalStorageDef<
    V,
    { BPF_MAP_TYPE_SK_STORAGE as usize },
    { (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize },
>;

/// Task storage, not preallocated (required).
pub type TaskStorageDef<V> =
    LocalStorageDef<V, { BPF_MAP_TYPE_TASK_STORAGE as usize }, { BPF_F_NO_PREALLOC as usize }>;

/// Per-flow state in the socket's own storage: freed with the socket, no bound, no eviction.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "FLOWS")]
pub static FLOWS: SkStorageDef<FlowState> = SkStorageDef::new();

/// Per-flow state on kernels whose tracing programs cannot use socket storage (before 5.11),
/// keyed by the socket's kernel address, removed at CLOSE. Sized at load time
/// (`kernel.fallback_flows`); an evicted flow is seen again as LATE.
#[map]
pub static FLOWS_LRU: LruHashMap<u64, FlowState> = LruHashMap::with_max_entries(65_536, 0);

/// Per task: the last hits its primaries handled, for their backups (see `backup`).
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "HIT_MARKS")]
pub static HIT_MARKS: TaskStorageDef<HitMarks> = TaskStorageDef::new();

/// The last hits one task's primaries handled (keys, 0 for none), written round-robin.
#[repr(C)]
pub struct HitMarks {
    pub keys: [u64; HIT_MARKS_LEN],
    pub next: u32,
    pub _pad: u32,
}

/// Marks kept per task: more than the hits that can nest between a primary and its backup.
pub const HIT_MARKS_LEN: usize = 8;

/// Slot 0 is 1 while backup programs are attached: primaries then mark their hits. Written by
/// userspace at run time.
#[map]
pub static BACKUP_ON: Array<u32> = Array::with_max_entries(1, 0);

/// One all-zero state, never written: what a new fallback-map entry starts from.
#[map]
pub static ZERO_STATE: PerCpuArray<FlowState> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU copy of a socket's `tcp_sock` counter block (see `KernelOffsets::tp_window`).
#[map]
pub static TCP_WINDOW: PerCpuArray<[u8; TCP_WINDOW_MAX as usize]> =
    PerCpuArray::with_max_entries(1, 0);

/// RSTs per remote endpoint in the current window.
#[map]
pub static RST_PEER_HISTORY: LruHashMap<PeerKey, Window> = LruHashMap::with_max_entries(16_384, 0);

/// RSTs per local service port in the current window.
#[map]
pub static RST_PORT_HISTORY: LruHashMap<u32, Window> = LruHashMap::with_max_entries(4_096, 0);

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
pub static HOOK_ARGS: Global<HookArgs> = Global::new(HookArgs {
    rst_reason: 0,
    retransmit_err: 0,
    task_storage: 0,
});

#[unsafe(no_mangle)]
pub static DETAIL: Global<DetailFilter> = Global::new(DetailFilter {
    mode: 0,
    port: 0,
    family: 0,
    addr: [0; 16],
    cookie: 0,
    cgroup_id: 0,
});
