//! Where a flow's state lives, and how it starts.
//!
//! Two stores, one body: socket local storage (`FLOWS`, kernels whose BTF tracepoints may use
//! it: 5.11+) and the fallback LRU hash keyed by the socket's address (`FLOWS_LRU`). Each hook
//! is compiled once per store; userspace loads the first that the verifier accepts.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_socket_cookie,
            bpf_sk_storage_get,
        },
    },
};
use probe_common::{detail_mode, misc, role, state_flags, FlowState};

use crate::{
    counters::count_misc,
    emit::zero_words,
    maps::{DETAIL, FLOWS, FLOWS_LRU, ZERO_STATE},
    sock::{self, Scope},
};

/// A socket as a hook gets it: the BTF-typed pointer (what helpers accept) and the same
/// address as a number (for `bpf_probe_read_kernel` at BTF offsets).
#[derive(Clone, Copy)]
pub struct Sk {
    pub typed: *mut c_void,
    pub addr: u64,
}

/// A flow state store.
pub trait Store {
    /// The state of `sk`, if it has one.
    fn get(sk: Sk) -> Option<&'static mut FlowState>;
    /// The state of `sk`, created (zeroed) when missing. `None`: out of memory (counted).
    fn create(sk: Sk) -> Option<&'static mut FlowState>;
    /// Forgets the state when the flow has ended (socket storage is freed with the socket).
    fn release(sk: Sk);
    /// The socket cookie: generated where this program type may, else as stored (0 if never
    /// generated).
    fn cookie(sk: Sk) -> u64;
}

/// Socket local storage.
pub struct SkStore;

impl Store for SkStore {
    #[inline(always)]
    fn get(sk: Sk) -> Option<&'static mut FlowState> {
        // SAFETY: the helper returns NULL or a pointer to this socket's storage, valid for the
        // whole program run.
        unsafe {
            bpf_sk_storage_get(FLOWS.as_ptr(), sk.typed, core::ptr::null_mut(), 0)
                .cast::<FlowState>()
                .as_mut()
        }
    }

    #[inline(always)]
    fn create(sk: Sk) -> Option<&'static mut FlowState> {
        // SAFETY: as above; a new storage is zero-filled by the kernel.
        let st = unsafe {
            bpf_sk_storage_get(
                FLOWS.as_ptr(),
                sk.typed,
                core::ptr::null_mut(),
                u64::from(BPF_SK_STORAGE_GET_F_CREATE),
            )
            .cast::<FlowState>()
            .as_mut()
        };
        if st.is_none() {
            count_misc(misc::STATE_CREATE_FAILED);
        }
        st
    }

    #[inline(always)]
    fn release(_sk: Sk) {}

    #[inline(always)]
    fn cookie(sk: Sk) -> u64 {
        // SAFETY: `typed` is the hook's BTF socket pointer; the helper handles NULL.
        unsafe { bpf_get_socket_cookie(sk.typed) }
    }
}

/// The fallback LRU hash, keyed by the socket's kernel address (its cookie may not exist yet
/// where these programs run); removed at CLOSE, so an address reused by a new socket starts
/// clean. An entry evicted while its flow lives shows up again as LATE.
pub struct LruStore;

impl Store for LruStore {
    #[inline(always)]
    fn get(sk: Sk) -> Option<&'static mut FlowState> {
        // SAFETY: a live map value; see `LruStore` for its lifetime.
        FLOWS_LRU
            .get_ptr_mut(sk.addr)
            .and_then(|p| unsafe { p.as_mut() })
    }

    #[inline(always)]
    fn create(sk: Sk) -> Option<&'static mut FlowState> {
        if let Some(st) = Self::get(sk) {
            return Some(st);
        }
        // A zeroed state from a map (never written), not from the 512-byte stack.
        let inserted = ZERO_STATE
            .get(0)
            .is_some_and(|zero| FLOWS_LRU.insert(sk.addr, zero, 0).is_ok());
        if !inserted {
            count_misc(misc::STATE_CREATE_FAILED);
            return None;
        }
        Self::get(sk)
    }

    #[inline(always)]
    fn release(sk: Sk) {
        let _ = FLOWS_LRU.remove(sk.addr);
    }

    #[inline(always)]
    fn cookie(sk: Sk) -> u64 {
        sock::stored_cookie(sk.addr)
    }
}

/// Starts (or restarts) `st` as a flow of `role` at `now`, in network namespace `netns`. The
/// owner stays (a listener's, cloned into its accepted socket); the rest starts over.
#[inline(always)]
pub fn start(st: &mut FlowState, role_value: u8, now: u64, cookie: u64, netns: u64) {
    let (pid, comm, cgroup_id, owner) =
        (st.pid, st.comm, st.cgroup_id, st.flags & state_flags::OWNER);
    // SAFETY: an 8-aligned FlowState (socket storage or map value).
    unsafe { zero_words(st) };
    st.pid = pid;
    st.comm = comm;
    st.cgroup_id = cgroup_id;
    st.flags = owner;
    st.start_ns = now;
    st.cookie = cookie;
    st.netns_cookie = netns;
    st.role = role_value;
}

/// The process running now owns `st` (connect(), listen(): process context).
#[inline(always)]
pub fn take_owner(st: &mut FlowState) {
    st.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: `comm` is 16 writable bytes; the helper NUL-terminates within them.
    unsafe { bpf_get_current_comm(st.comm.as_mut_ptr().cast(), 16) };
    // SAFETY: no arguments; allowed in tracing programs.
    st.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    st.flags |= state_flags::OWNER;
}

/// The state of a socket a hook met mid-life: its own, or a new LATE one when it has none
/// (opened before linkprobe, or evicted from the fallback map). `None` when the socket is
/// out of scope or the state cannot be created.
#[inline(always)]
pub fn of_socket<S: Store>(sk: Sk, now: u64) -> Option<&'static mut FlowState> {
    if let Some(st) = S::get(sk) {
        return Some(st);
    }
    let Scope::In(netns) = sock::check(sk.addr, 0) else {
        return None;
    };
    let st = S::create(sk)?;
    start(st, role::UNKNOWN, now, S::cookie(sk), netns);
    st.flags |= state_flags::LATE;
    st.cgroup_id = sock::sk_cgroup_id(sk.addr);
    st.local_port = sock::local_port(sk.addr);
    count_misc(misc::STATE_LATE);
    decide_detail(st, sk);
    Some(st)
}

/// Whether every hook hit of this flow is sent (the detail filter), decided when the flow
/// starts and again when it is established, once its addresses are final.
#[inline(always)]
pub fn decide_detail(st: &mut FlowState, sk: Sk) {
    let filter = DETAIL.load();
    let wanted = match filter.mode {
        detail_mode::ALL => true,
        detail_mode::MATCH => {
            let a = sock::addrs(sk.addr);
            (filter.cookie == 0 || filter.cookie == st.cookie)
                && (filter.cgroup_id == 0 || filter.cgroup_id == st.cgroup_id)
                && (filter.family == 0
                    || (filter.family == a.family && filter.addr == a.remote_bytes()))
                && (filter.port == 0 || filter.port == a.dport || filter.port == a.sport)
        }
        _ => false,
    };
    if wanted {
        st.flags |= state_flags::DETAIL;
    } else {
        st.flags &= !state_flags::DETAIL;
    }
}

/// Detail is on for every flow (`linkprobe trace` without a filter): also for hits of sockets
/// without state.
#[inline(always)]
pub fn detail_for_all() -> bool {
    DETAIL.load().mode == detail_mode::ALL
}
