//! The targets of issue 11 ("kernel side v2"), each with the figure that decides it: met,
//! not met, or not measured in this run (a workload, tracer or phase left out).
use serde_json::json;

use super::{
    fill::{Fill, TARGET_FLOWS},
    plan::{TracerKind, Workload},
    stats::{find, Summary},
};

pub const CONN_RATIO: f64 = 0.95;
pub const ABORT_RATIO: f64 = 0.90;
pub const RSS_MIB: f64 = 64.0;
pub const RECORDS_PER_CONN: f64 = 1.5;
pub const CPU_US_PER_CONN: f64 = 2.0;

#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub name: String,
    pub figure: String,
    /// None: not measured in this run.
    pub met: Option<bool>,
}

impl Target {
    fn new(name: impl Into<String>, figure: impl Into<String>, met: Option<bool>) -> Target {
        Target {
            name: name.into(),
            figure: figure.into(),
            met,
        }
    }

    fn not_measured(name: impl Into<String>, why: &str) -> Target {
        Target::new(name, format!("not measured ({why})"), None)
    }

    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "-",
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({ "target": self.name, "figure": self.figure, "met": self.met })
    }
}

fn ratio(rows: &[Summary], w: Workload, t: TracerKind) -> Option<f64> {
    find(rows, w, t)?.ratio
}

fn ratio_target(rows: &[Summary], w: Workload, min: f64) -> Target {
    let name = format!("linkprobe {} >= {min:.2} of baseline", w.name());
    match ratio(rows, w, TracerKind::Linkprobe) {
        Some(r) => Target::new(name, format!("{r:.3}"), Some(r >= min)),
        None => Target::not_measured(name, "workload or tracer not run"),
    }
}

fn ahead_target(rows: &[Summary], w: Workload) -> Target {
    let name = format!("linkprobe ahead of bpftrace on {}", w.name());
    match (
        ratio(rows, w, TracerKind::Linkprobe),
        ratio(rows, w, TracerKind::Bpftrace),
    ) {
        (Some(lp), Some(bt)) => Target::new(name, format!("{lp:.3} vs {bt:.3}"), Some(lp > bt)),
        _ => Target::not_measured(name, "linkprobe or bpftrace not run"),
    }
}

fn exact_target(rows: &[Summary], fill: Option<&Fill>) -> Target {
    let name = "0 counts off against nstat in every round";
    let mut per_round: Vec<u64> = rows
        .iter()
        .filter(|r| r.tracer == TracerKind::Linkprobe)
        .flat_map(|r| r.counts_off.iter().copied())
        .collect();
    if let Some(f) = fill {
        per_round.push(super::nstat::counts_off(&f.linkprobe.checks));
    }
    if per_round.is_empty() {
        return Target::not_measured(name, "linkprobe not run");
    }
    let off: Vec<u64> = per_round.iter().copied().filter(|&o| o > 0).collect();
    let figure = if off.is_empty() {
        format!("0 off in {} of {} runs", per_round.len(), per_round.len())
    } else {
        format!(
            "off in {} of {} runs (max {})",
            off.len(),
            per_round.len(),
            off.iter().max().copied().unwrap_or(0)
        )
    };
    Target::new(name, figure, Some(off.is_empty()))
}

fn rss_target(fill: Option<&Fill>) -> Target {
    let name = format!("RSS <= {RSS_MIB:.0} MiB at {TARGET_FLOWS} flows");
    let Some(f) = fill else {
        return Target::not_measured(name, "flow-table phase skipped");
    };
    let Some(kb) = f.peak_rss_kb else {
        return Target::not_measured(name, "no VmHWM");
    };
    let mib = kb as f64 / 1024.0;
    if !f.filled() {
        return Target::new(
            name,
            format!(
                "{mib:.1} MiB, but the table held only {} flows",
                f.flows_tracked
            ),
            None,
        );
    }
    Target::new(
        name,
        format!("{mib:.1} MiB peak ({} flows)", f.flows_tracked),
        Some(mib <= RSS_MIB),
    )
}

fn records_target(rows: &[Summary]) -> Target {
    let name = format!("<= {RECORDS_PER_CONN} ring records per healthy connection (conn)");
    match find(rows, Workload::Conn, TracerKind::Linkprobe).and_then(|r| r.records_per_conn) {
        Some(r) => Target::new(name, format!("{r:.2}"), Some(r <= RECORDS_PER_CONN)),
        None => Target::not_measured(name, "linkprobe on conn not run"),
    }
}

fn cpu_target(rows: &[Summary]) -> Target {
    let name = format!("daemon CPU <= {CPU_US_PER_CONN} us per connection (conn)");
    match find(rows, Workload::Conn, TracerKind::Linkprobe).and_then(|r| r.cpu_us_per_conn) {
        Some(c) => Target::new(name, format!("{c:.2} us"), Some(c <= CPU_US_PER_CONN)),
        None => Target::not_measured(name, "linkprobe on conn not run"),
    }
}

/// Every target, in the order.
pub fn evaluate(rows: &[Summary], fill: Option<&Fill>) -> Vec<Target> {
    vec![
        ratio_target(rows, Workload::Conn, CONN_RATIO),
        ratio_target(rows, Workload::Abort, ABORT_RATIO),
        ahead_target(rows, Workload::Conn),
        ahead_target(rows, Workload::Abort),
        exact_target(rows, fill),
        rss_target(fill),
        records_target(rows),
        cpu_target(rows),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        measure::LinkprobeFigures,
        stats::{summarize, tests::meas},
    };

    fn fill(flows: u64, kb: u64) -> Fill {
        Fill {
            connections: 40_000,
            conns_per_sec: 10_000.0,
            flows_tracked: flows,
            flows_max: 65_536,
            flows_evicted: 0,
            peak_rss_kb: Some(kb),
            rss_kb: Some(kb),
            cpu_us_per_conn: Some(20.0),
            linkprobe: LinkprobeFigures {
                records: 0,
                lost: 0,
                checks: Vec::new(),
                settle_secs: 1.0,
            },
        }
    }

    #[test]
    fn verdicts_from_figures() {
        let w = Workload::Conn;
        let ms = vec![
            meas(1, w, TracerKind::None, 1000, 0),
            meas(1, w, TracerKind::Linkprobe, 960, 0),
            meas(1, w, TracerKind::Bpftrace, 970, 0),
            meas(2, w, TracerKind::None, 1000, 0),
            meas(2, w, TracerKind::Linkprobe, 950, 2),
            meas(2, w, TracerKind::Bpftrace, 900, 0),
        ];
        let rows = summarize(&ms, &[w], &TracerKind::ALL);
        let t = evaluate(&rows, Some(&fill(65_536, 100 * 1024)));
        let by = |prefix: &str| t.iter().find(|t| t.name.starts_with(prefix)).unwrap();
        let conn = by("linkprobe conn");
        assert_eq!((conn.met, conn.figure.as_str()), (Some(true), "0.955"));
        assert_eq!(by("linkprobe abort").met, None);
        assert_eq!(by("linkprobe abort").verdict(), "-");
        let ahead = by("linkprobe ahead of bpftrace on conn");
        assert_eq!(
            (ahead.met, ahead.figure.as_str()),
            (Some(true), "0.955 vs 0.935")
        );
        let exact = by("0 counts off");
        assert_eq!(exact.met, Some(false));
        assert_eq!(exact.figure, "off in 1 of 3 runs (max 2)");
        let rss = by("RSS");
        assert_eq!(
            (rss.met, rss.figure.as_str()),
            (Some(false), "100.0 MiB peak (65536 flows)")
        );
        assert_eq!(by("<= 1.5 ring records").figure, "22.00");
        assert_eq!(by("<= 1.5 ring records").verdict(), "NOT MET");
        assert_eq!(by("daemon CPU").figure, "10.00 us");
    }

    #[test]
    fn a_half_full_table_decides_nothing() {
        let t = rss_target(Some(&fill(1000, 10 * 1024)));
        assert_eq!(t.met, None);
        assert!(t.figure.contains("only 1000 flows"), "{}", t.figure);
        assert_eq!(rss_target(None).met, None);
    }
}
