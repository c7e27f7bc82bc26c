//! Counting and ring-buffer emission. Counts always come first so that userspace totals are
//! exact even when the ring is full.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_ringbuf_query,
    maps::PerCpuArray,
};
use probe_common::{EventKind, FlowEvent, RST_REASON_SLOTS};

use crate::maps::{
    EVENTS, EVENT_COUNTS, LOST_COUNTS, MISC_COUNTS, NO_COOKIE_COUNTS, RST_REASON_COUNTS, SCRATCH,
    TUNING,
};

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it, and programs do not nest on one CPU for our hooks.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn count_event(kind: EventKind) {
    bump(&EVENT_COUNTS, kind as u32);
}

#[inline(always)]
pub fn count_no_cookie(kind: EventKind) {
    bump(&NO_COOKIE_COUNTS, kind as u32);
}

#[inline(always)]
pub fn count_misc(index: u32) {
    bump(&MISC_COUNTS, index);
}

#[inline(always)]
pub fn count_rst_reason(reason: u32) {
    let slot = if reason < RST_REASON_SLOTS - 1 {
        reason
    } else {
        RST_REASON_SLOTS - 1
    };
    bump(&RST_REASON_COUNTS, slot);
}

/// The per-CPU scratch record, zeroed. `None` only if the map lookup fails, which the
/// verifier forces us to handle.
#[inline(always)]
pub fn scratch() -> Option<&'static mut FlowEvent> {
    let ev = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, used by one program at a time on this CPU.
    let ev = unsafe { &mut *ev };
    *ev = FlowEvent::default();
    Some(ev)
}

/// Sends one record, counting the loss when the ring is full. Wakes userspace only once a
/// batch has accumulated; the daemon also drains on a short timer, so a quiet ring still gets read.
#[inline(always)]
pub fn emit(kind: EventKind, event: &FlowEvent) {
    let ring = core::ptr::from_ref(&EVENTS).cast_mut().cast::<c_void>();
    let pending = unsafe { bpf_ringbuf_query(ring, u64::from(BPF_RB_AVAIL_DATA)) };
    let flags = if pending >= TUNING.load().wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<FlowEvent>(event, u64::from(flags)).is_err() {
        bump(&LOST_COUNTS, kind as u32);
    }
}
