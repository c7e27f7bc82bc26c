//! The bench's outputs: the table and target list on stdout, and the JSON document with every
//! measurement (`target/bench/bench.json` by default).
use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};
use serde_json::json;

use super::{
    fill::Fill, measure::Measurement, plan::BenchOptions, profile::Profile, stats::Summary,
    targets::Target,
};

fn opt_f(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.decimals$}"))
}

/// One aligned row per (workload, tracer).
pub fn table(rows: &[Summary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<10} {:>8} {:>6} {:>11} {:>9} {:>12} {:>12} {:>7}  counts off per round",
        "workload",
        "tracer",
        "conn/s",
        "ratio",
        "CPU us/conn",
        "idle ms/s",
        "peak RSS MiB",
        "records/conn",
        "lost",
    );
    for r in rows {
        let off = if r.counts_off.is_empty() {
            "-".to_owned()
        } else {
            r.counts_off
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "{:<9} {:<10} {:>8.0} {:>6} {:>11} {:>9} {:>12} {:>12} {:>7}  {off}",
            r.workload.name(),
            r.tracer.name(),
            r.rate,
            opt_f(r.ratio, 3),
            opt_f(r.cpu_us_per_conn, 2),
            opt_f(r.idle_ms_per_s, 1),
            opt_f(r.peak_rss_kb.map(|kb| kb as f64 / 1024.0), 1),
            opt_f(r.records_per_conn, 2),
            r.lost.map_or_else(|| "-".to_owned(), |l| l.to_string()),
        );
    }
    out
}

/// Target, figure, verdict.
pub fn targets_table(targets: &[Target]) -> String {
    let width = targets.iter().map(|t| t.name.len()).max().unwrap_or(0);
    let fig = targets.iter().map(|t| t.figure.len()).max().unwrap_or(0);
    let mut out = String::new();
    for t in targets {
        let _ = writeln!(
            out,
            "{:<width$}  {:<fig$}  {}",
            t.name,
            t.figure,
            t.verdict()
        );
    }
    out
}

/// The flow-table phase in a few lines.
pub fn fill_text(f: &Fill) -> String {
    let mib = |kb: Option<u64>| opt_f(kb.map(|k| k as f64 / 1024.0), 1);
    format!(
        "flow table: {} conn connections ({:.0}/s): {} flows tracked of {} (evicted {}), \
         daemon peak RSS {} MiB, RSS now {} MiB, CPU {} us/conn, {} records, {} lost",
        f.connections,
        f.conns_per_sec,
        f.flows_tracked,
        f.flows_max,
        f.flows_evicted,
        mib(f.peak_rss_kb),
        mib(f.rss_kb),
        opt_f(f.cpu_us_per_conn, 2),
        f.linkprobe.records,
        f.linkprobe.lost
    )
}

fn measurement_json(m: &Measurement) -> serde_json::Value {
    json!({
        "round": m.round,
        "workload": m.workload.name(),
        "tracer": m.tracer.name(),
        "done": m.worker.done,
        "secs": m.worker.secs,
        "conns_per_sec": m.rate(),
        "unexpected": m.worker.unexpected,
        "cpu": m.cpu.map(|c| json!({
            "gross_ms": c.gross_ms,
            "secs": c.secs,
            "idle_ms_per_s": c.idle_ms_per_s,
            "net_ms": c.net_ms(),
        })),
        "cpu_us_per_conn": m.cpu_us_per_conn(),
        "peak_rss_kb": m.peak_rss_kb,
        "linkprobe": m.linkprobe.as_ref().map(|l| json!({
            "records": l.records,
            "records_per_conn": m.records_per_conn(),
            "lost": l.lost,
            "settle_secs": l.settle_secs,
            "counts_off": m.counts_off(),
            "checks": l.checks.iter().map(|c| json!({
                "check": c.name, "linkprobe": c.linkprobe, "nstat": c.nstat,
            })).collect::<Vec<_>>(),
        })),
    })
}

fn summary_json(r: &Summary) -> serde_json::Value {
    json!({
        "workload": r.workload.name(),
        "tracer": r.tracer.name(),
        "rounds": r.rounds,
        "conns_per_sec": r.rate,
        "ratio": r.ratio,
        "cpu_us_per_conn": r.cpu_us_per_conn,
        "idle_cpu_ms_per_s": r.idle_ms_per_s,
        "peak_rss_kb": r.peak_rss_kb,
        "records_per_conn": r.records_per_conn,
        "lost": r.lost,
        "counts_off": r.counts_off,
    })
}

/// Everything one run produced.
pub struct Results<'a> {
    pub options: &'a BenchOptions,
    pub kernel: String,
    pub measurements: &'a [Measurement],
    pub rows: &'a [Summary],
    pub fill: Option<&'a Fill>,
    pub targets: &'a [Target],
    pub profile: Option<&'a Profile>,
    pub scrape: Option<serde_json::Value>,
}

impl Results<'_> {
    pub fn to_json(&self) -> serde_json::Value {
        let o = self.options;
        json!({
            "meta": {
                "kernel": self.kernel,
                "cpus": std::thread::available_parallelism().map_or(0, usize::from),
                "count": o.count,
                "rounds": o.rounds,
                "workloads": o.workloads.iter().map(|w| w.name()).collect::<Vec<_>>(),
                "tracers": o.tracers.iter().map(|t| t.name()).collect::<Vec<_>>(),
                "unix_time": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            },
            "summary": self.rows.iter().map(summary_json).collect::<Vec<_>>(),
            "targets": self.targets.iter().map(Target::to_json).collect::<Vec<_>>(),
            "fill": self.fill.map(Fill::to_json),
            "profile": self.profile.map(Profile::to_json),
            "scrape": self.scrape,
            "measurements": self.measurements.iter().map(measurement_json).collect::<Vec<_>>(),
        })
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&self.to_json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        plan::{TracerKind, Workload},
        stats::{summarize, tests::meas},
    };

    #[test]
    fn table_rows_and_dashes() {
        let w = Workload::Abort;
        let ms = vec![
            meas(1, w, TracerKind::None, 2000, 0),
            meas(1, w, TracerKind::Linkprobe, 1000, 0),
            meas(1, w, TracerKind::Tcplife, 1500, 0),
        ];
        let rows = summarize(&ms, &[w], &TracerKind::ALL);
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("workload  tracer"), "{t}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["abort", "none", "2000", "1.000", "-", "-", "-", "-", "-", "-"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "abort",
                "linkprobe",
                "1000",
                "0.500",
                "10.00",
                "1.0",
                "1.0",
                "22.00",
                "1",
                "0"
            ]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["abort", "tcplife", "1500", "0.750", "10.00", "1.0", "1.0", "-", "-", "-"]
        );
        // Columns line up: every row is as long as the header up to the last column.
        let col = lines[0].find("counts off").unwrap();
        assert!(lines.iter().all(|l| l.len() >= col), "{t}");
    }

    #[test]
    fn json_document_has_every_section() {
        let w = Workload::Conn;
        let ms = vec![
            meas(1, w, TracerKind::None, 1000, 0),
            meas(1, w, TracerKind::Linkprobe, 800, 1),
        ];
        let rows = summarize(&ms, &[w], &TracerKind::ALL);
        let options = BenchOptions {
            count: 1000,
            rounds: 1,
            workloads: vec![w],
            tracers: vec![TracerKind::None, TracerKind::Linkprobe],
            fill_connections: 0,
            scrapes: 10,
            skip_scrape: true,
            skip_profile: true,
            json: "x.json".into(),
            chart: "x.png".into(),
            update_docs: false,
        };
        let targets = crate::bench::targets::evaluate(&rows, None);
        let r = Results {
            options: &options,
            kernel: "6.18".into(),
            measurements: &ms,
            rows: &rows,
            fill: None,
            targets: &targets,
            profile: None,
            scrape: None,
        };
        let v = r.to_json();
        assert_eq!(v["meta"]["tracers"], json!(["none", "linkprobe"]));
        assert_eq!(v["summary"][1]["ratio"], json!(0.8));
        assert_eq!(v["summary"][1]["counts_off"], json!([1]));
        assert_eq!(
            v["measurements"][1]["linkprobe"]["checks"][0]["nstat"],
            json!(100)
        );
        assert_eq!(v["measurements"][0]["linkprobe"], json!(null));
        assert_eq!(v["targets"][0]["met"], json!(false));
        assert_eq!(v["fill"], json!(null));
        let tt = targets_table(&targets);
        assert!(tt.lines().next().unwrap().ends_with("NOT MET"), "{tt}");
    }
}
