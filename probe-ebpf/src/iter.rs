//! The open-flow iterator (`iter/bpf_sk_storage_map`): when userspace asks (`linkprobe
//! flows`), one pass over the flow-state map, every network namespace at once, writes an `Open`
//! record for each flow still open. Open flows cost nothing on the event path this way: no
//! record until they end or misbehave.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::seq_file, helpers::generated::bpf_seq_write, macros::map, maps::PerCpuArray,
};
use probe_common::{flags, kernel::tcp_state, role, state_flags, EventKind, FlowRecord, FlowState};

use crate::{
    emit::{copy_words, zero_words, Header},
    hooks::{note_rtos, now},
    sock,
};

/// `struct bpf_iter_meta` (include/linux/bpf.h).
#[repr(C)]
pub struct IterMeta {
    pub seq: *mut seq_file,
    pub session_id: u64,
    pub seq_num: u64,
}

/// `struct bpf_iter__bpf_sk_storage_map`: the iterator program's context.
#[repr(C)]
pub struct IterSkStorage {
    pub meta: *mut IterMeta,
    pub map: *mut c_void,
    pub sk: *mut c_void,
    pub value: *mut FlowState,
}

/// The record being written: too large for the stack next to everything else.
#[map]
static OPEN_RECORD: PerCpuArray<FlowRecord> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn open_flow(ctx: &IterSkStorage) {
    // SAFETY: NULL or this socket's storage (a FlowState), per the map's value type.
    let Some(st) = (unsafe { ctx.value.as_ref() }) else {
        return;
    };
    if ctx.sk.is_null() || st.role == role::LISTENER || st.flags & state_flags::ENDED != 0 {
        return;
    }
    let addr = ctx.sk as u64;
    let state = sock::sk_state(addr);
    if state == tcp_state::CLOSE {
        return;
    }
    let Some(rec) = OPEN_RECORD.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; the iterator does not nest on a CPU.
    let rec = unsafe {
        zero_words(rec);
        &mut *rec
    };
    rec.kind = EventKind::Open as u32;
    Header::at(now(), st.cookie, st.netns_cookie, state).write(rec);
    sock::addrs(addr).write(rec);
    let (stats, total_rto) = sock::tcp_stats(addr);
    rec.stats = stats;
    // SAFETY: both 8-aligned FlowStates.
    unsafe { copy_words(&mut rec.flow, st) };
    note_rtos(&mut rec.flow, total_rto);
    rec.flags |= flags::STATS | flags::FLOW;
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
