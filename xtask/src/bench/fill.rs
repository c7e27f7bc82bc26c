//! The flow-table phase: the daemon's memory with its flow table full. Closed flows stay in
//! the table for `flows.retain_closed_secs` (60 s), so a burst of `conn` connections (two
//! sockets, two flows each) fills the 65,536 flows within that time; the figure is the
//! daemon's peak RSS once it has processed them.
use anyhow::Result;
use serde_json::json;
use testkit::netns::Netns;

use super::{
    exposition,
    measure::{settle, CpuMark, CpuUse, LinkprobeFigures},
    nstat,
    plan::Workload,
    tracers::Daemon,
    workload::run_worker,
};
use crate::procstat;

/// 80,000 sockets: more flows than the table holds, whatever else the namespace had.
pub const DEFAULT_CONNECTIONS: u32 = 40_000;
/// The table size the memory target is stated at (`flows.max_flows`' default).
pub const TARGET_FLOWS: u64 = 65_536;

#[derive(Clone, Debug, PartialEq)]
pub struct Fill {
    pub connections: u32,
    pub conns_per_sec: f64,
    pub flows_tracked: u64,
    pub flows_max: u64,
    pub flows_evicted: u64,
    pub peak_rss_kb: Option<u64>,
    pub rss_kb: Option<u64>,
    pub cpu_us_per_conn: Option<f64>,
    pub linkprobe: LinkprobeFigures,
}

impl Fill {
    /// Whether the table was full enough for the memory figure to mean "at 65,536 flows".
    pub fn filled(&self) -> bool {
        self.flows_tracked >= TARGET_FLOWS
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "connections": self.connections,
            "conns_per_sec": self.conns_per_sec,
            "flows_tracked": self.flows_tracked,
            "flows_max": self.flows_max,
            "flows_evicted": self.flows_evicted,
            "peak_rss_kb": self.peak_rss_kb,
            "rss_kb": self.rss_kb,
            "cpu_us_per_conn": self.cpu_us_per_conn,
            "records": self.linkprobe.records,
            "lost": self.linkprobe.lost,
            "counts_off": nstat::counts_off(&self.linkprobe.checks),
        })
    }
}

pub fn run(ns: &Netns, connections: u32) -> Result<Fill> {
    println!("[bench] flow table: {connections} conn connections with the daemon, then its memory");
    let d = Daemon::start(ns, &[])?;
    let pid = d.pid();
    let metrics_before = d.metrics()?;
    let nstat_before = ns.nstat()?;
    let cpu_before = CpuMark::now(pid);
    let worker = run_worker(ns, Workload::Conn, connections)?;
    let settled = settle(&d, ns, &metrics_before, &nstat_before)?;
    let body = d.metrics()?;
    let gauge = |family| exposition::sum(&body, family, &[]).round() as u64;
    // Gross: the table filling up is what this phase is about, idle time included.
    let cpu_ms = cpu_before
        .zip(settled.cpu_at_drained)
        .map(|(a, b)| CpuUse::between(a, b, 0.0).gross_ms);
    let fill = Fill {
        connections: worker.done,
        conns_per_sec: worker.rate(),
        flows_tracked: gauge("linkprobe_flows_tracked"),
        flows_max: gauge("linkprobe_flows_max"),
        flows_evicted: gauge("linkprobe_flows_evicted_total"),
        peak_rss_kb: pid.and_then(procstat::peak_rss_kb),
        rss_kb: pid.and_then(procstat::rss_kb),
        cpu_us_per_conn: cpu_ms.map(|ms| ms * 1000.0 / f64::from(worker.done.max(1))),
        linkprobe: settled.figures,
    };
    d.stop()?;
    Ok(fill)
}
