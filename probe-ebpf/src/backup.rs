//! Backup programs: the kernel skips a BTF tracepoint program while that same program already
//! runs on the CPU (`recursion_misses`): another task hit the tracepoint while one was
//! preempted inside the program (tracepoints are preemptible on recent kernels), or a softirq
//! interrupted it. Each such hit would be lost, so each hook is attached twice. The primary
//! handles every hit it runs for and, while backups are attached, leaves a mark in the
//! current task's storage; its backup runs right after it for the same hit and handles the hit
//! only when it finds no mark, that is when the kernel skipped the primary.
//!
//! Marks are per task, not per CPU: between the two programs of one hit the task may be
//! preempted or migrated, and a softirq runs in the interrupted task (several marks are kept for
//! the hits that nest there). A hit both programs miss stays lost; userspace counts those as the
//! primary's misses minus its backup's runs.
use aya_ebpf::{
    bindings::BPF_LOCAL_STORAGE_GET_F_CREATE,
    helpers::generated::{bpf_get_current_task_btf, bpf_task_storage_get},
};
use probe_common::misc;

use crate::{
    counters::count_misc,
    maps::{HitMarks, BACKUP_ON, HIT_MARKS, HIT_MARKS_LEN, HOOK_ARGS},
};

/// What identifies one hit of `hook`: its arguments (a socket or packet address and the hook's
/// small integers), never 0.
#[inline(always)]
pub fn key(hook: u32, addr: u64, extra: u64) -> u64 {
    let k = addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ extra ^ (u64::from(hook) << 59);
    if k == 0 {
        1
    } else {
        k
    }
}

/// Whether backups are attached (primaries then mark their hits). The load-time constant comes
/// first: where it is 0 the verifier prunes every task-storage call it guards.
#[inline(always)]
pub fn on() -> bool {
    HOOK_ARGS.load().task_storage != 0 && BACKUP_ON.get(0).is_some_and(|v| *v != 0)
}

#[inline(always)]
fn marks(create: bool) -> Option<&'static mut HitMarks> {
    let flags = if create {
        u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE)
    } else {
        0
    };
    // SAFETY: the current task's BTF pointer, valid for the run; the helper returns NULL or
    // this task's storage (zeroed when new).
    unsafe {
        let task = bpf_get_current_task_btf();
        bpf_task_storage_get(HIT_MARKS.as_ptr(), task, core::ptr::null_mut(), flags)
            .cast::<HitMarks>()
            .as_mut()
    }
}

/// The primary handled hit `key`: tell its backup (call only while [`on`]).
#[inline(always)]
pub fn mark(key: u64) {
    let Some(m) = marks(true) else {
        count_misc(misc::BACKUP_MARK_FAILED);
        return;
    };
    let slot = (m.next as usize) % HIT_MARKS_LEN;
    m.keys[slot] = key;
    m.next = m.next.wrapping_add(1);
}

/// Whether the backup of `hook` must handle hit `key`: backups are on and its primary left no
/// mark for it (the mark is taken). Counted per hook when it must.
#[inline(always)]
pub fn stands_in(hook: u32, key: u64) -> bool {
    if !on() {
        return false;
    }
    if let Some(m) = marks(false) {
        let mut i = 0;
        while i < HIT_MARKS_LEN {
            if m.keys[i] == key {
                m.keys[i] = 0;
                return false;
            }
            i += 1;
        }
    }
    count_misc(misc::BACKUP_RUNS + hook);
    true
}
