//! The open-flow iterator (`iter/tcp`): when userspace asks (`linkprobe flows`), one pass over
//! the host's TCP sockets writes an `Open` record for each flow in scope, with its state. Open
//! flows cost nothing on the event path this way: no record until they end or misbehave.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::seq_file,
    helpers::generated::{bpf_seq_write, bpf_sk_storage_get, bpf_skc_to_tcp_sock},
    macros::map,
    maps::PerCpuArray,
};
use probe_common::{flags, state_flags, tcp_state, EventKind, FlowRecord, FlowState};

use crate::{
    hooks::header,
    maps::FLOWS,
    sock::{self, Scope},
};

/// `struct bpf_iter_meta` (include/linux/bpf.h).
#[repr(C)]
pub struct IterMeta {
    pub seq: *mut seq_file,
    pub session_id: u64,
    pub seq_num: u64,
}

/// `struct bpf_iter__tcp`: the iterator program's context.
#[repr(C)]
pub struct IterTcp {
    pub meta: *mut IterMeta,
    pub sk_common: *mut c_void,
    pub uid: u32,
}

/// The record being written: too large for the stack next to everything else.
#[map]
static OPEN_RECORD: PerCpuArray<FlowRecord> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn open_flow(ctx: &IterTcp) {
    let skc = ctx.sk_common;
    if skc.is_null() {
        return;
    }
    // SAFETY: a `sock_common` the iterator hands us; NULL for time-wait and request sockets.
    let tp = unsafe { bpf_skc_to_tcp_sock(skc) };
    if tp.is_null() {
        return;
    }
    let addr = skc as u64;
    let state = sock::sk_state(addr).unwrap_or(0);
    if state == tcp_state::LISTEN || state == tcp_state::CLOSE {
        return;
    }
    let Scope::In(netns) = sock::check(addr, 0) else {
        return;
    };
    // SAFETY: the helper returns NULL or this socket's storage, live for the program run.
    let st = unsafe {
        bpf_sk_storage_get(FLOWS.as_ptr(), tp.cast(), core::ptr::null_mut(), 0)
            .cast::<FlowState>()
            .as_ref()
    };
    let Some(rec) = OPEN_RECORD.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; the iterator does not nest on a CPU.
    let rec = unsafe {
        core::ptr::write_bytes(rec, 0, 1);
        &mut *rec
    };
    rec.kind = EventKind::Open as u32;
    let cookie = st.map_or_else(|| sock::stored_cookie(addr), |s| s.cookie);
    // SAFETY: no arguments.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    header(rec, now, cookie, netns, state, state);
    sock::addrs(addr).write(rec);
    rec.stats = sock::tcp_stats(addr);
    rec.flags |= flags::STATS | flags::FLOW;
    match st {
        Some(st) => rec.flow = *st,
        None => {
            rec.flow.cookie = cookie;
            rec.flow.netns_cookie = netns.unwrap_or(0);
            rec.flow.flags = state_flags::LATE;
        }
    }
    // SAFETY: `meta` and its `seq` are the iterator's own; the record is FlowRecord bytes.
    unsafe {
        let seq = (*ctx.meta).seq;
        bpf_seq_write(
            seq,
            core::ptr::from_ref(rec).cast(),
            core::mem::size_of::<FlowRecord>() as u32,
        );
    }
}
