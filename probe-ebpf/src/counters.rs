//! The exact in-kernel counters. Every add is atomic: a program in preemptible context
//! (sock_ops, BTF tracepoints under preemptible RCU) can be interrupted or preempted by
//! another of ours bumping the same per-CPU slot, and a plain read-modify-write would lose
//! one of the two increments.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::maps::PerCpuArray;
use probe_common::{EventKind, RST_REASON_SLOTS};

use crate::maps::{EVENT_COUNTS, LOST_COUNTS, MISC_COUNTS, NO_COOKIE_COUNTS, RST_REASON_COUNTS};

#[inline(always)]
fn add(map: &PerCpuArray<u64>, index: u32, n: u64) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: a live per-CPU map value; the add is one atomic instruction (BPF_XADD) whose
        // result is unused, which every kernel with BPF supports.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, n) };
    }
}

#[inline(always)]
pub fn count_event(kind: EventKind) {
    add(&EVENT_COUNTS, kind as u32, 1);
}

#[inline(always)]
pub fn count_lost(kind: EventKind) {
    add(&LOST_COUNTS, kind as u32, 1);
}

#[inline(always)]
pub fn count_no_cookie(kind: EventKind) {
    add(&NO_COOKIE_COUNTS, kind as u32, 1);
}

#[inline(always)]
pub fn count_misc(index: u32) {
    add(&MISC_COUNTS, index, 1);
}

/// Adds `n` to a `misc` slot (facts a lost record took with it); nothing when `n` is 0.
#[inline(always)]
pub fn count_misc_n(index: u32, n: u32) {
    if n > 0 {
        add(&MISC_COUNTS, index, u64::from(n));
    }
}

#[inline(always)]
pub fn count_rst_reason(reason: u32) {
    let slot = if reason < RST_REASON_SLOTS - 1 {
        reason
    } else {
        RST_REASON_SLOTS - 1
    };
    add(&RST_REASON_COUNTS, slot, 1);
}
