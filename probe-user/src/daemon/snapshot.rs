//! What the exporter serves: traffic metrics, anomalies and self-health, with the kernel's
//! counters read now (after a drain, so the sums match them).
use crate::{
    clock::monotonic_ns,
    config::Config,
    daemon::exporter::Snapshot,
    event::totals::Totals,
    kernel::{counters, loader::Loaded, probes::ProbeState, progstats},
    pipeline::{metrics::families::Health, Pipeline},
};

/// None when the kernel's counters cannot be read: /readyz then turns stale and says so.
pub fn take(
    loaded: &Loaded,
    pipeline: &Pipeline,
    totals: &Totals,
    config: &Config,
) -> Option<Snapshot> {
    let kernel = match counters::read(&loaded.ebpf, &loaded.reason_names) {
        Ok(k) => k,
        Err(e) => {
            log::error!("metrics not published: {e}");
            return None;
        }
    };
    let detect = pipeline.detectors.stats();
    let recursion_misses = progstats::unrecovered(
        &progstats::recursion_misses(&loaded.ebpf, &loaded.probes),
        &kernel.backup_runs,
    );
    let envoy = pipeline.requests.stats();
    let health = Health {
        kernel: &kernel,
        totals,
        flows: pipeline.flows.stats(),
        max_flows: config.flows.max_flows,
        detect: &detect,
        probes: &loaded.probes,
        recursion_misses: &recursion_misses,
        version: env!("CARGO_PKG_VERSION"),
        envoy: envoy.as_ref(),
    };
    let families = pipeline
        .metrics
        .families(&health, pipeline.detectors.active());
    let probes_down = loaded
        .probes
        .iter()
        .filter_map(|p| match &p.state {
            ProbeState::Off(why) => Some(format!("{}: {why}", p.spec.program)),
            ProbeState::Attached | ProbeState::Skipped(_) => None,
        })
        .collect();
    Some(Snapshot {
        families,
        published_ns: monotonic_ns(),
        probes_total: loaded.probes.len(),
        probes_down,
    })
}
