//! The kernel's exact per-CPU counters, summed. Totals come from here, never from the number of
//! records that reached userspace.
use std::collections::BTreeMap;

use aya::{
    maps::{MapError, PerCpuArray},
    Ebpf,
};
use probe_common::{misc, EventKind, EVENT_KIND_COUNT, RST_REASON_SLOTS};
use serde::Serialize;

use crate::{event::kind_name, rst_reason::ReasonNames};

#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("counter map {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("reading counter map {map}: {source}")]
    Read { map: &'static str, source: MapError },
}

/// A snapshot of every kernel counter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelCounters {
    /// Events per kind, counted before any ring-buffer reserve.
    pub events: BTreeMap<&'static str, u64>,
    /// Records per kind the ring buffer could not take.
    pub lost: BTreeMap<&'static str, u64>,
    /// Events per kind whose socket cookie could not be resolved.
    pub no_cookie: BTreeMap<&'static str, u64>,
    /// Sent RSTs per reason name (`unknown` where the kernel reports none).
    pub rst_reasons: BTreeMap<String, u64>,
    pub connect_failed: u64,
    /// SYN_SENT → CLOSE records lost in the ring, by failure cause (`refused`, `timeout`,
    /// `unreachable`, `unknown`).
    pub connect_failed_lost: BTreeMap<&'static str, u64>,
    pub scope_unknown: u64,
    pub rtt_not_sampled: u64,
    pub cb_flags_failed: u64,
}

impl KernelCounters {
    pub fn event(&self, kind: EventKind) -> u64 {
        self.events.get(kind_name(kind)).copied().unwrap_or(0)
    }
}

fn sum_all(ebpf: &Ebpf, map: &'static str, len: u32) -> Result<Vec<u64>, CounterError> {
    let data = ebpf.map(map).ok_or(CounterError::Missing(map))?;
    let array = PerCpuArray::<_, u64>::try_from(data)
        .map_err(|source| CounterError::Read { map, source })?;
    (0..len)
        .map(|i| {
            array
                .get(&i, 0)
                .map(|per_cpu| per_cpu.iter().copied().sum())
                .map_err(|source| CounterError::Read { map, source })
        })
        .collect()
}

fn by_kind(values: &[u64]) -> BTreeMap<&'static str, u64> {
    EventKind::ALL
        .iter()
        .zip(values)
        .map(|(k, v)| (kind_name(*k), *v))
        .collect()
}

/// Reads and sums all counter maps.
pub fn read(ebpf: &Ebpf, names: &ReasonNames) -> Result<KernelCounters, CounterError> {
    let events = sum_all(ebpf, "EVENT_COUNTS", EVENT_KIND_COUNT)?;
    let lost = sum_all(ebpf, "LOST_COUNTS", EVENT_KIND_COUNT)?;
    let no_cookie = sum_all(ebpf, "NO_COOKIE_COUNTS", EVENT_KIND_COUNT)?;
    let reasons = sum_all(ebpf, "RST_REASON_COUNTS", RST_REASON_SLOTS)?;
    let misc_values = sum_all(ebpf, "MISC_COUNTS", misc::COUNT)?;
    let misc_at = |i: u32| misc_values.get(i as usize).copied().unwrap_or(0);

    let last = (RST_REASON_SLOTS - 1) as usize;
    let rst_reasons = reasons
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > 0)
        .map(|(i, v)| {
            let name = if i == last {
                "unknown".to_owned()
            } else {
                names.name(i as u32)
            };
            (name, *v)
        })
        .collect();
    Ok(KernelCounters {
        events: by_kind(&events),
        lost: by_kind(&lost),
        no_cookie: by_kind(&no_cookie),
        rst_reasons,
        connect_failed: misc_at(misc::CONNECT_FAILED),
        connect_failed_lost: [
            ("refused", misc::CONNECT_FAILED_LOST_REFUSED),
            ("timeout", misc::CONNECT_FAILED_LOST_TIMEOUT),
            ("unreachable", misc::CONNECT_FAILED_LOST_UNREACHABLE),
            ("unknown", misc::CONNECT_FAILED_LOST_OTHER),
        ]
        .into_iter()
        .map(|(cause, i)| (cause, misc_at(i)))
        .collect(),
        scope_unknown: misc_at(misc::SCOPE_UNKNOWN),
        rtt_not_sampled: misc_at(misc::RTT_NOT_SAMPLED),
        cb_flags_failed: misc_at(misc::CB_FLAGS_FAILED),
    })
}
