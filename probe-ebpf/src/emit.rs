//! Building records in ring-buffer reservations (no scratch copies, nothing on the 512-byte
//! stack), and what a lost record takes with it.
//!
//! A record of a flow carries the flow's counts, so losing one only delays its facts until the
//! flow's next record. Facts are lost for good only with a flow's last record (its FlowEnd, or
//! an RST sent after it) or with a record that has no flow (an RST for a closed port, a SYN-ACK
//! retransmit): those are counted in the `misc::LOST_*` slots, so exported totals stay exact.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_ringbuf_query,
};
use probe_common::{flags, misc, role, state_flags, CloseClass, EventKind, FlowRecord, FlowState};

use crate::{
    counters::{count_lost, count_misc, count_misc_n},
    maps::{EVENTS, TUNING},
};

/// What every record starts with: when, which socket (cookie 0: none) in which network
/// namespace (0: unknown), and the TCP state before and after the hit (the same but for state
/// changes).
#[derive(Clone, Copy)]
pub struct Header {
    pub now: u64,
    pub cookie: u64,
    pub netns: u64,
    pub old: u8,
    pub new: u8,
}

impl Header {
    /// The header of a hit that changes no state (the socket stays in `state`).
    #[inline(always)]
    pub fn at(now: u64, cookie: u64, netns: u64, state: u8) -> Header {
        Header {
            now,
            cookie,
            netns,
            old: state,
            new: state,
        }
    }

    /// Into a (zeroed) record.
    #[inline(always)]
    pub fn write(&self, rec: &mut FlowRecord) {
        rec.ts_ns = self.now;
        if self.cookie != 0 {
            rec.cookie = self.cookie;
            rec.flags |= flags::COOKIE;
        }
        if self.netns != 0 {
            rec.netns_cookie = self.netns;
            rec.flags |= flags::NETNS;
        }
        rec.old_state = self.old;
        rec.new_state = self.new;
    }
}

/// Sends one `kind` record: `fill` writes the header (on a zeroed record), then the flow's
/// state is copied in. A record the ring cannot take is counted with what it takes with it.
#[inline(always)]
pub fn send(
    kind: EventKind,
    flow: Option<&mut FlowState>,
    sk_err: i32,
    fill: impl FnOnce(&mut FlowRecord),
) {
    let Some(mut entry) = EVENTS.reserve::<FlowRecord>(0) else {
        count_lost(kind);
        match flow {
            Some(st) => lost_with_flow(kind, st, sk_err),
            None => {
                let slot = lost_slot_without_flow(kind);
                if slot != NO_SLOT {
                    count_misc(slot);
                }
            }
        }
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: the reservation is `size_of::<FlowRecord>()` bytes, 8-aligned, ours until
    // submitted; zeroing it first means no byte of an earlier record leaks into this one.
    let rec = unsafe {
        zero_words(rec);
        &mut *rec
    };
    rec.kind = kind as u32;
    fill(rec);
    if let Some(st) = flow {
        // SAFETY: both 8-aligned FlowStates (a map value, a field of the reservation).
        unsafe { copy_words(&mut rec.flow, st) };
        rec.flags |= flags::FLOW;
        // What this record carries is what userspace will know.
        st.reported = st.counts;
        st.flags |= state_flags::DELIVERED;
    }
    entry.submit(wakeup_flags());
}

/// Zeroes a value as 8-byte words. LLVM would emit a call to `memset`, which in BPF is a byte
/// loop: slow, and each byte a step the verifier must walk on every path.
///
/// # Safety
/// `dst` is valid for writes and 8-aligned; `T`'s size is a multiple of 8.
#[inline(always)]
pub unsafe fn zero_words<T>(dst: *mut T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8)) };
    let words = dst.cast::<u64>();
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: in bounds and aligned, per the contract.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
}

/// Copies a value as 8-byte words (not `memcpy`: see [`zero_words`]).
///
/// # Safety
/// Both are valid, 8-aligned and do not overlap; `T`'s size is a multiple of 8.
#[inline(always)]
pub unsafe fn copy_words<T>(dst: *mut T, src: *const T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8)) };
    let (d, s) = (dst.cast::<u64>(), src.cast::<u64>());
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: in bounds and aligned, per the contract.
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// Wakes userspace once per batch: only the record that takes the ring's backlog past
/// `wakeup_bytes` does (a wake-up costs more than a record; waking for every record while the
/// backlog stays above the mark cost over a microsecond each). The daemon also drains on a
/// short timer, so a quiet ring still gets read.
#[inline(always)]
fn wakeup_flags() -> u64 {
    let ring = core::ptr::from_ref(&EVENTS).cast_mut().cast::<c_void>();
    // SAFETY: the ring map pointer, as the helper expects. The backlog includes this record,
    // reserved but not yet submitted.
    let pending = unsafe { bpf_ringbuf_query(ring, u64::from(BPF_RB_AVAIL_DATA)) };
    let mark = TUNING.load().wakeup_bytes;
    let record = RECORD_STRIDE;
    u64::from(
        if pending >= mark && pending < mark.saturating_add(record) {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        },
    )
}

/// Bytes one record takes in the ring: the record and the ring's 8-byte header.
const RECORD_STRIDE: u64 = core::mem::size_of::<FlowRecord>() as u64 + 8;

/// No `misc` slot.
const NO_SLOT: u32 = u32::MAX;

/// The `misc::LOST_*` slot of a record that has no flow to carry its fact later ([`NO_SLOT`]:
/// alerts and detail-only kinds carry no countable fact of their own).
#[inline(always)]
fn lost_slot_without_flow(kind: EventKind) -> u32 {
    match kind {
        EventKind::RstSent => misc::LOST_RST_SENT,
        EventKind::RetransmitSynack => misc::LOST_RETRANS_SYNACK,
        EventKind::Rto => misc::LOST_RTO,
        EventKind::Retransmit => misc::LOST_RETRANS_DATA,
        EventKind::RstReceived => misc::LOST_RST_RECEIVED,
        _ => NO_SLOT,
    }
}

/// A flow's record was lost. While the flow lives, its next record carries the facts; its
/// FlowEnd (or a record after it) was the last chance, so count what userspace never got.
#[inline(always)]
fn lost_with_flow(kind: EventKind, st: &mut FlowState, sk_err: i32) {
    let ended = st.flags & state_flags::ENDED != 0;
    if kind != EventKind::FlowEnd && !ended {
        return;
    }
    let d = st.counts.since(&st.reported);
    count_misc_n(misc::LOST_RST_SENT, d.rst_sent);
    count_misc_n(misc::LOST_RST_RECEIVED, d.rst_received);
    count_misc_n(misc::LOST_RETRANS_SYN, d.syn_retrans);
    count_misc_n(misc::LOST_RETRANS_DATA, d.data_retrans);
    count_misc_n(misc::LOST_RETRANS_FAILED, d.retrans_failed);
    count_misc_n(misc::LOST_RTO, d.rtos);
    let established = st.established_ns != 0;
    if st.flags & state_flags::DELIVERED == 0 {
        if st.role == role::CLIENT {
            count_misc(misc::LOST_CONN_CLIENT);
        } else if st.role == role::SERVER && established {
            count_misc(misc::LOST_CONN_SERVER);
        }
    }
    let c = &st.counts;
    let now = CloseClass::of(st.role, established, sk_err, c.rst_sent, c.rst_received);
    if kind == EventKind::FlowEnd {
        match now {
            CloseClass::Refused | CloseClass::Timeout | CloseClass::Unreachable => {
                count_misc(misc::connect_failed_lost_slot(sk_err));
            }
            CloseClass::Abandoned => count_misc(misc::CONNECT_FAILED_LOST_ABANDONED),
            CloseClass::RstReceived | CloseClass::RstSent => count_misc(misc::LOST_FAIL_RESET),
            CloseClass::Fin => {}
        }
    } else {
        // An RST after the close turns a FIN-closed flow into a reset one (an abort moves the
        // socket to CLOSE before it sends its RST).
        let before = CloseClass::of(
            st.role,
            established,
            sk_err,
            c.rst_sent.saturating_sub(d.rst_sent),
            c.rst_received.saturating_sub(d.rst_received),
        );
        if before == CloseClass::Fin && now != CloseClass::Fin {
            count_misc(misc::LOST_FAIL_RESET);
        }
    }
    // Counted as lost now: not to be counted again by a later loss.
    st.reported = st.counts;
    st.flags |= state_flags::DELIVERED;
}
