//! The kernel's exact per-CPU counters, summed. Totals come from here, never from the number of
//! records that reached userspace.
use std::collections::BTreeMap;

use aya::{
    maps::{MapError, PerCpuArray},
    Ebpf,
};
use probe_common::{misc, EventKind, EVENT_KIND_COUNT, RST_REASON_SLOTS};
use serde::Serialize;

use crate::{event::kind_name, event::rst_reason::ReasonNames};

#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("counter map {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("reading counter map {map}: {source}")]
    Read { map: &'static str, source: MapError },
}

/// The `misc::LOST_*` slots by their name in counters and metrics.
pub const LOST_FACTS: [(&str, u32); 10] = [
    ("connections_client", misc::LOST_CONN_CLIENT),
    ("connections_server", misc::LOST_CONN_SERVER),
    ("resets_sent", misc::LOST_RST_SENT),
    ("resets_received", misc::LOST_RST_RECEIVED),
    ("retransmits_syn", misc::LOST_RETRANS_SYN),
    ("retransmits_data", misc::LOST_RETRANS_DATA),
    ("retransmits_failed", misc::LOST_RETRANS_FAILED),
    ("retransmits_rto", misc::LOST_RTO),
    ("retransmits_synack", misc::LOST_RETRANS_SYNACK),
    ("failures_reset", misc::LOST_FAIL_RESET),
];

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
    /// Failed connects whose FlowEnd was lost in the ring, by failure cause (`refused`, `timeout`,
    /// `unreachable`, `abandoned`, `unknown`).
    pub connect_failed_lost: BTreeMap<&'static str, u64>,
    pub scope_unknown: u64,
    /// Data-retransmit and RTO hits counted in their flow but sent with its next record (the
    /// per-flow report interval).
    pub held_back: u64,
    pub cb_flags_failed: u64,
    /// Flows whose kernel state could not be created (out of memory).
    pub state_create_failed: u64,
    /// Flows first seen after their start (open before linkprobe, or evicted state).
    pub state_late: u64,
    /// State changes with detail on that no record could name (an accepted socket's SYN_RECV
    /// before the kernel gave it its cookie: 6.1, 6.12).
    pub unnamed_state_changes: u64,
    /// Hits each probe's backup program handled because the kernel skipped the probe.
    pub backup_runs: BTreeMap<&'static str, u64>,
    /// Hits whose primary could not mark them for its backup (may be counted twice).
    pub backup_mark_failed: u64,
    /// Facts whose only record was lost, counted by the kernel (`connections_client`,
    /// `resets_sent`, `retransmits_data`, …): exported under `peer="lost"`.
    pub lost_facts: BTreeMap<&'static str, u64>,
}

impl KernelCounters {
    /// A fact the kernel counted as lost (see [`LOST_FACTS`]).
    pub fn lost_fact(&self, name: &str) -> u64 {
        self.lost_facts.get(name).copied().unwrap_or(0)
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

/// Every state change the kernel counted (connects, accepts, handshakes, closes, any other
/// move): unchanged since the open-flow iterator's last pass, that pass still lists every
/// open flow in its current state. A few array reads, no pass over the sockets.
pub fn state_moves(ebpf: &Ebpf) -> Result<u64, CounterError> {
    let events = sum_all(ebpf, "EVENT_COUNTS", EVENT_KIND_COUNT)?;
    Ok([
        EventKind::Connect,
        EventKind::ActiveEstablished,
        EventKind::PassiveEstablished,
        EventKind::StateChange,
        EventKind::FlowEnd,
    ]
    .iter()
    .filter_map(|k| events.get(*k as usize))
    .sum())
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
            ("abandoned", misc::CONNECT_FAILED_LOST_ABANDONED),
            ("unknown", misc::CONNECT_FAILED_LOST_OTHER),
        ]
        .into_iter()
        .map(|(cause, i)| (cause, misc_at(i)))
        .collect(),
        scope_unknown: misc_at(misc::SCOPE_UNKNOWN),
        held_back: misc_at(misc::HELD_BACK),
        cb_flags_failed: misc_at(misc::CB_FLAGS_FAILED),
        state_create_failed: misc_at(misc::STATE_CREATE_FAILED),
        state_late: misc_at(misc::STATE_LATE),
        unnamed_state_changes: misc_at(misc::UNNAMED_STATE_CHANGE),
        backup_runs: crate::kernel::probes::PROBES
            .iter()
            .filter_map(|p| Some((p.program, misc_at(misc::BACKUP_RUNS + p.backup?))))
            .collect(),
        backup_mark_failed: misc_at(misc::BACKUP_MARK_FAILED),
        lost_facts: LOST_FACTS
            .iter()
            .map(|(name, i)| (*name, misc_at(*i)))
            .collect(),
    })
}
