//! Every record linkprobe shows, one type each, and its renderers: serialisable records built
//! from the pipeline's types (`event`, `flow`, `anomaly`: the same bytes for `-o json`, the API
//! and `--dump-flows`), one text renderer per record (shared by the daemon's stdout and the
//! CLI), the aligned tables, and the daemon's own `ready` and `counters` lines. JSON field names
//! are a contract: tests and users' scripts read them.
pub mod anomaly;
pub mod event;
pub mod flow;
pub mod incident;
pub mod netns;
pub mod request;
pub mod table;
#[cfg(test)]
mod tests_pods;
use std::collections::BTreeMap;

use serde::Serialize;

use crate::{event::totals::Totals, kernel::counters::KernelCounters, kernel::probes::ProbeStatus};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One aligned line per event.
    Text,
    /// One JSON object per line (`type` = ready | event | counters).
    Json,
    /// Nothing per event (counters still print at exit).
    None,
}

#[derive(Serialize)]
struct ProbeView<'a> {
    name: &'static str,
    hook: &'a str,
    how: &'a str,
    program: &'static str,
    attached: bool,
    /// Not attached because this kernel does not need it.
    skipped: bool,
    reason: Option<&'a str>,
}

/// JSON line announcing that probes are attached, which flows get every hook hit as a record
/// (`detail`: off, all or match), and the backup programs (`backups`: mode, attached, probes).
pub fn ready_json(
    probes: &[ProbeStatus],
    detail: &str,
    backups: &crate::kernel::backups::Backups,
) -> String {
    let probes: Vec<ProbeView<'_>> = probes
        .iter()
        .map(|p| ProbeView {
            name: p.spec.program,
            hook: &p.target,
            how: &p.how,
            program: p.program,
            attached: p.state.is_attached(),
            skipped: p.state.is_skipped(),
            reason: p.state.why(),
        })
        .collect();
    let backups = serde_json::json!({
        "mode": format!("{:?}", backups.mode).to_lowercase(),
        "attached": backups.attached(),
        "probes": backups.probes().collect::<Vec<_>>(),
        "unavailable": backups.refused.iter()
            .map(|(program, why)| serde_json::json!({"program": program, "why": why}))
            .collect::<Vec<_>>(),
    });
    json_line(&serde_json::json!({
        "type": "ready",
        "probes": probes,
        "detail": detail,
        "backups": backups,
    }))
}

#[derive(Serialize)]
struct CountersView<'a> {
    #[serde(rename = "type")]
    record: &'static str,
    /// Records decoded by this process, per kind.
    records: &'a BTreeMap<&'static str, u64>,
    decode_errors: u64,
    output_dropped_lines: u64,
    /// Runs of each probe the kernel skipped (already running on that CPU): hits never seen.
    recursion_misses: &'a BTreeMap<&'static str, u64>,
    flows: FlowsView,
    anomalies: AnomaliesView,
    #[serde(flatten)]
    kernel: &'a KernelCounters,
}

#[derive(Serialize)]
struct FlowsView {
    tracked: usize,
    evicted: u64,
    expired: u64,
    expired_open: u64,
}

#[derive(Serialize)]
struct AnomaliesView {
    active: usize,
    raised: BTreeMap<&'static str, u64>,
    scopes_tracked: usize,
    scopes_evicted: u64,
}

/// JSON line with the kernel counters, what this process received, and the flow table and
/// detector totals.
pub fn counters_json(
    kernel: &KernelCounters,
    totals: &Totals,
    recursion_misses: &BTreeMap<&'static str, u64>,
    flows: &crate::pipeline::flowtable::FlowTableStats,
    detect: &crate::pipeline::detect::DetectStats,
) -> String {
    json_line(&CountersView {
        record: "counters",
        records: &totals.records,
        decode_errors: totals.decode_errors,
        output_dropped_lines: totals.output_dropped_lines,
        recursion_misses,
        flows: FlowsView {
            tracked: flows.tracked,
            evicted: flows.evicted,
            expired: flows.expired,
            expired_open: flows.expired_open,
        },
        anomalies: AnomaliesView {
            active: detect.active,
            raised: crate::pipeline::detect::AnomalyKind::ALL
                .iter()
                .map(|k| (k.name(), detect.raised(*k)))
                .collect(),
            scopes_tracked: detect.scopes_tracked,
            scopes_evicted: detect.scopes_evicted,
        },
        kernel,
    })
}

pub fn json_line<T: Serialize>(value: &T) -> String {
    // Serialising our own plain structs cannot fail; fall back to an error object regardless.
    serde_json::to_string(value)
        .unwrap_or_else(|e| format!("{{\"type\":\"error\",\"error\":\"{e}\"}}"))
}
