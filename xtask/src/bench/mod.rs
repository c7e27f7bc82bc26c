//! `cargo xtask bench`: what tracing TCP costs, linkprobe next to the tools users would run
//! instead, measured side by side in one run on one machine.
//!
//! Each round runs every workload once with every tracer, in an order that rotates from
//! round to round (the baseline, no tracer, is one of them); each measurement gets a fresh
//! network namespace (no sockets left in TIME_WAIT by the run before, which linkprobe would
//! list at start and count in its flow table) and a fresh tracer, runs the workload in the
//! namespace and stops the tracer. Figures are
//! medians over rounds, ratios are against the baseline of the same round. linkprobe is
//! measured as a black box, through its exporter and /proc, so the bench works across
//! changes of its kernel side. Then: the flow-table phase (memory at 65,536 flows), a profile
//! of the BPF programs when a target is missed, and the /metrics scrape-latency phase.
mod chart;
mod exposition;
mod fill;
mod measure;
mod nstat;
pub mod plan;
mod profile;
mod report;
pub mod scrape;
mod session;
mod soak;
mod stats;
mod targets;
mod tracers;
pub mod workload;

use anyhow::{bail, Context as _, Result};

pub use self::session::out_dir;
use self::{
    measure::Measurement,
    plan::{rotated, BenchOptions, TracerKind, Workload},
    report::Results,
    session::{catch_sigint, check_interrupted, fresh_netns},
};
use crate::{
    cargo_cmds::build,
    cmd::{is_root, workspace_root},
    setup,
};

pub const DEFAULT_COUNT: u32 = 20_000;
pub const MAX_COUNT: u32 = 200_000;
pub const DEFAULT_ROUNDS: u64 = 3;
pub use fill::DEFAULT_CONNECTIONS as DEFAULT_FILL_CONNECTIONS;
pub use soak::DEFAULT_MINUTES as DEFAULT_SOAK_MINUTES;

/// Where `--update-docs` copies the chart (the README shows it).
const DOCS_CHART: &str = "docs/bench.png";

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Root, set-up and the release build every phase needs.
fn prepare() -> Result<()> {
    if !is_root() {
        bail!(
            "the bench creates a network namespace and attaches eBPF probes, which needs root: \
             run `sudo -E cargo xtask bench`"
        );
    }
    setup::setup()?;
    build(true)
}

/// `--soak`: only the soak phase, for `minutes`.
pub fn soak(minutes: u32) -> Result<()> {
    prepare()?;
    catch_sigint();
    soak::report(&soak::run(minutes)?)
}

pub fn bench(o: &BenchOptions) -> Result<()> {
    prepare()?;
    tracers::check_available(&o.tracers)?;
    catch_sigint();
    let out = out_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let measurements = rounds(o, &out)?;
    let rows = stats::summarize(&measurements, &o.workloads, &o.tracers);
    let fill = if o.fill_connections > 0 && o.tracers.contains(&TracerKind::Linkprobe) {
        Some(fill::run(&fresh_netns("fill")?, o.fill_connections)?)
    } else {
        None
    };
    let targets = targets::evaluate(&rows, fill.as_ref());
    let profile = if o.skip_profile || targets.iter().all(|t| t.met != Some(false)) {
        None
    } else {
        let profiled: Vec<TracerKind> = o
            .tracers
            .iter()
            .copied()
            .filter(|t| matches!(t, TracerKind::Linkprobe | TracerKind::Bpftrace))
            .collect();
        Some(profile::run(&o.workloads, &profiled, o.count, &out)?)
    };
    let scrape = if o.skip_scrape || !o.tracers.contains(&TracerKind::Linkprobe) {
        None
    } else {
        Some(scrape::run(
            &fresh_netns("scrape")?,
            o.count.min(scrape::CHURN_COUNT),
            o.scrapes,
        )?)
    };

    let subtitle = format!(
        "linkprobe bench: {} connections per run, {} rounds, medians; kernel {}, {} CPUs",
        o.count,
        o.rounds,
        kernel_release(),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let results = Results {
        options: o,
        kernel: kernel_release(),
        measurements: &measurements,
        rows: &rows,
        fill: fill.as_ref(),
        targets: &targets,
        profile: profile.as_ref(),
        scrape: scrape.as_ref().map(scrape::ScrapeBench::to_json),
    };
    print_results(&subtitle, &results);
    if let Some(s) = &scrape {
        scrape::report(s);
    }
    write_outputs(o, &results, &subtitle)
}

/// The table, the flow-table phase, the targets and the profile, on stdout.
fn print_results(subtitle: &str, r: &Results<'_>) {
    println!();
    println!("{subtitle}");
    for w in &r.options.workloads {
        println!("  {:<9} {}", w.name(), w.describe());
    }
    println!();
    print!("{}", report::table(r.rows));
    if let Some(f) = r.fill {
        println!();
        println!("{}", report::fill_text(f));
    }
    println!();
    println!("targets (issue 11):");
    print!("{}", report::targets_table(r.targets));
    if let Some(p) = r.profile {
        println!();
        println!("profile (a target is missed): BPF program run time per connection");
        print!("{}", p.text());
    }
}

/// The JSON, the chart and, with `--update-docs`, the README's copy of the chart.
fn write_outputs(o: &BenchOptions, results: &Results<'_>, subtitle: &str) -> Result<()> {
    results.write_json(&o.json)?;
    println!();
    println!("[bench] wrote {}", o.json.display());
    chart::draw(results.rows, subtitle, &o.chart)?;
    println!("[bench] wrote {}", o.chart.display());
    if o.update_docs {
        let docs = workspace_root().join(DOCS_CHART);
        if let Some(dir) = docs.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&o.chart, &docs)
            .with_context(|| format!("copying the chart to {}", docs.display()))?;
        println!("[bench] copied the chart to {}", docs.display());
    }
    Ok(())
}

/// Every round: every workload with every tracer, in rotated order.
fn rounds(o: &BenchOptions, out: &std::path::Path) -> Result<Vec<Measurement>> {
    let mut all = Vec::new();
    for round in 1..=o.rounds {
        for (wi, &workload) in o.workloads.iter().enumerate() {
            for tracer in rotated(&o.tracers, round - 1, wi) {
                println!(
                    "[bench] round {round}/{}: {} with {} ({} connections)",
                    o.rounds,
                    workload.name(),
                    tracer.name(),
                    o.count
                );
                let ns = fresh_netns(&format!("{round}-{}-{}", workload.name(), tracer.name()))?;
                let m = measure::measure(&ns, round, workload, tracer, o.count, out)?;
                drop(ns);
                print_measurement(&m);
                all.push(m);
                check_interrupted()?;
            }
        }
    }
    Ok(all)
}

fn print_measurement(m: &Measurement) {
    let mut line = format!(
        "[bench]   {:.0} conn/s ({} in {:.2} s)",
        m.rate(),
        m.worker.done,
        m.worker.secs
    );
    if let Some(cpu) = m.cpu_us_per_conn() {
        line += &format!(", tracer CPU {cpu:.2} us/conn");
    }
    if let Some(l) = &m.linkprobe {
        line += &format!(
            ", {:.2} records/conn, {} lost, {} counts off",
            m.records_per_conn().unwrap_or(0.0),
            l.lost,
            nstat::counts_off(&l.checks)
        );
        for c in l.checks.iter().filter(|c| c.off() > 0) {
            line += &format!(
                "\n[bench]   OFF: {} linkprobe {} nstat {}",
                c.name, c.linkprobe, c.nstat
            );
        }
    }
    println!("{line}");
}

/// `bench-worker`: entry point of the hidden subcommand.
pub fn worker(workload: Workload, count: u32) -> Result<()> {
    workload::worker(workload, count)
}
