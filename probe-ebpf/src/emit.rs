//! Counting and ring-buffer emission. Counts always come first so that userspace totals are
//! exact even when the ring is full.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_ringbuf_query,
    maps::PerCpuArray,
};
use probe_common::{flags, misc, EventKind, FlowEvent, RST_REASON_SLOTS};

use crate::maps::{
    EVENTS, EVENT_COUNTS, LOST_COUNTS, MISC_COUNTS, NO_COOKIE_COUNTS, RST_REASON_COUNTS, SCRATCH,
    SCRATCH_DEPTH, SCRATCH_LEVELS, TUNING,
};

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it. A program interrupting another on this CPU
        // (see `SCRATCH`) is of another kind, so it bumps another slot, except for shared
        // `misc` slots, where such a collision can lose one increment.
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

/// A per-CPU scratch record, held until dropped. A program that interrupts another one on the
/// same CPU gets the next slot, so neither overwrites the other's record.
pub struct Scratch {
    ev: *mut FlowEvent,
    depth: *mut u32,
    level: u32,
}

impl Scratch {
    #[inline(always)]
    pub fn ev(&mut self) -> &mut FlowEvent {
        // SAFETY: this CPU's slot `level`, which nothing else uses until `self` is dropped.
        unsafe { &mut *self.ev }
    }
}

impl Drop for Scratch {
    #[inline(always)]
    fn drop(&mut self) {
        // Back to the level we found: a program that interrupted us has restored it already.
        // SAFETY: per-CPU map value, valid for the program's whole run.
        unsafe { *self.depth = self.level };
    }
}

/// The next free per-CPU scratch record, zeroed. `None` if a map lookup fails (which the
/// verifier forces us to handle) or every nesting level is in use.
#[inline(always)]
pub fn scratch() -> Option<Scratch> {
    let depth = SCRATCH_DEPTH.get_ptr_mut(0)?;
    // An interruption between this read and the write below finishes (and restores the depth)
    // before we continue, so the slot is still ours.
    // SAFETY: per-CPU map value, valid for the program's whole run.
    let level = unsafe { *depth };
    if level >= SCRATCH_LEVELS {
        return None;
    }
    let ev = SCRATCH.get_ptr_mut(level)?;
    // SAFETY: as above.
    unsafe { *depth = level + 1 };
    let mut s = Scratch { ev, depth, level };
    *s.ev() = FlowEvent::default();
    Some(s)
}

/// Sends one record, counting the loss when the ring is full (a lost failed connect also by
/// its cause). Wakes userspace only once a batch has accumulated; the daemon also drains on a
/// short timer, so a quiet ring still gets read.
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
        if kind == EventKind::StateChange
            && event.old_state == TCP_SYN_SENT
            && event.new_state == TCP_CLOSE
        {
            let sk_err = if event.flags & flags::SK_ERR != 0 {
                event.args[1] as i32
            } else {
                0
            };
            count_misc(misc::connect_failed_lost_slot(sk_err));
        }
    }
}

/// TCP states (include/net/tcp_states.h).
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_CLOSE: u8 = 7;
