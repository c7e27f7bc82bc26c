//! `cargo xtask bench --soak [--minutes N]`: the daemon under mixed connection load for N
//! minutes (normal, aborted, refused and parallel workloads in turn, paced), its resident
//! memory, open descriptors and threads sampled from /proc every few seconds. Flat means the
//! last sample is within a tolerance of the one taken after warm-up; at the end the daemon's
//! counts must equal the namespace's nstat counters (the bench's own exactness checks).
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use super::{
    exposition,
    measure::{settle, LOST},
    nstat::{self, Check},
    plan::Workload,
    session::{check_interrupted, fresh_netns},
    tracers::Daemon,
    workload::run_worker,
};
use crate::procstat;

pub const DEFAULT_MINUTES: u32 = 10;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Connections per worker run; each run is followed by a pause so the load is sustained for
/// the whole soak without exhausting the namespace's ephemeral ports (TIME_WAIT lasts 60 s).
const CHUNK: u32 = 1000;
/// One worker run and its pause take at least this long: at most CHUNK / CHUNK_PERIOD
/// connections a second.
const CHUNK_PERIOD: Duration = Duration::from_secs(2);
/// The flow table has levelled off at this share of the most flows it held.
const PLATEAU_PCT: u64 = 95;
/// RSS may end this much above its value after warm-up (allocator noise, a grown buffer)…
const RSS_TOLERANCE_PCT: u64 = 10;
/// …plus this (a small process's few pages).
const RSS_SLACK_KB: u64 = 2048;
/// Descriptors and threads may end this many above theirs (a scrape or API client in flight,
/// a runtime's blocking thread).
const COUNT_SLACK: u64 = 2;

/// One /proc reading of the daemon, with its flow table's fill from /metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub secs: f64,
    pub rss_kb: u64,
    pub fds: u64,
    pub threads: u64,
    /// `linkprobe_flows_tracked` and `linkprobe_flows_max` (0 when the scrape failed).
    pub flows: u64,
    pub flows_max: u64,
}

impl Sample {
    fn take(pid: u32, addr: SocketAddr, since: Instant) -> Option<Sample> {
        let count = |dir: &str| {
            std::fs::read_dir(format!("/proc/{pid}/{dir}"))
                .ok()
                .map(|d| d.count() as u64)
        };
        let body = exposition::fetch(addr).map(|(_, b)| b).unwrap_or_default();
        let gauge = |family| exposition::sum(&body, family, &[]).max(0.0).round() as u64;
        Some(Sample {
            secs: since.elapsed().as_secs_f64(),
            rss_kb: procstat::rss_kb(pid)?,
            fds: count("fd")?,
            threads: count("task")?,
            flows: gauge("linkprobe_flows_tracked"),
            flows_max: gauge("linkprobe_flows_max"),
        })
    }

    /// The flow table keeps closed flows for a while (`flows.retain_closed_secs`) and evicts
    /// the oldest when full: memory grows with it by design until it is full or its size
    /// levels off (within [`PLATEAU_PCT`] of the most it held during the soak), so the steady
    /// state starts no earlier.
    fn table_settled(&self, most_flows: u64) -> bool {
        (self.flows_max > 0 && self.flows >= self.flows_max)
            || (most_flows > 0 && self.flows * 100 >= most_flows * PLATEAU_PCT)
    }
}

/// A figure's name, how to read it from a sample, and the most it may end at given its value
/// after warm-up.
type Figure = (&'static str, fn(&Sample) -> u64, fn(u64) -> u64);

/// One figure over the soak: first sample, the one after warm-up, last, maximum, and whether
/// it stayed flat.
#[derive(Debug, PartialEq)]
pub struct Trend {
    pub name: &'static str,
    pub start: u64,
    pub warm: u64,
    pub end: u64,
    pub max: u64,
    pub flat: bool,
}

/// The reference is the first sample at or after `warm_secs` with the flow table settled (the
/// last one when there is none). None without samples.
pub fn trends(samples: &[Sample], warm_secs: f64) -> Option<Vec<Trend>> {
    let first = samples.first()?;
    let last = samples.last()?;
    let warm = warm_sample(samples, warm_secs).unwrap_or(last);
    let figures: [Figure; 3] = [
        (
            "rss_kb",
            |s| s.rss_kb,
            |w| w + w * RSS_TOLERANCE_PCT / 100 + RSS_SLACK_KB,
        ),
        ("fds", |s| s.fds, |w| w + COUNT_SLACK),
        ("threads", |s| s.threads, |w| w + COUNT_SLACK),
    ];
    Some(
        figures
            .iter()
            .map(|(name, get, limit)| Trend {
                name,
                start: get(first),
                warm: get(warm),
                end: get(last),
                max: samples.iter().map(get).max().unwrap_or(0),
                flat: get(last) <= limit(get(warm)),
            })
            .collect(),
    )
}

fn warm_sample(samples: &[Sample], warm_secs: f64) -> Option<&Sample> {
    let most = samples.iter().map(|s| s.flows).max().unwrap_or(0);
    samples
        .iter()
        .find(|s| s.secs >= warm_secs && s.table_settled(most))
}

/// What a soak found.
pub struct Soak {
    pub warm_secs: f64,
    pub connections: u64,
    pub worker_runs: u32,
    pub samples: Vec<Sample>,
    pub trends: Vec<Trend>,
    pub checks: Vec<Check>,
    pub lost: u64,
}

pub fn run(minutes: u32) -> Result<Soak> {
    let ns = fresh_netns("soak")?;
    let duration = Duration::from_secs(u64::from(minutes) * 60);
    // Warm-up: a minute, or a quarter of a short soak.
    let warm_secs = (duration.as_secs_f64() / 4.0).min(60.0);
    println!(
        "[soak] {minutes} min of mixed load (conn, abort, refused, parallel; {CHUNK} \
         connections per run, at most one run per {} s), /proc sampled every {} s, warm-up \
         {warm_secs:.0} s",
        CHUNK_PERIOD.as_secs(),
        SAMPLE_EVERY.as_secs()
    );
    let d = Daemon::start(&ns, &[])?;
    let Some(pid) = d.pid() else {
        bail!("the daemon has no pid");
    };
    let metrics_before = d.metrics()?;
    let nstat_before = ns.nstat()?;
    let start = Instant::now();
    let addr = d.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(s) = Sample::take(pid, addr, start) {
                    println!(
                        "[soak] {:>4.0} s: rss {} kB, {} fds, {} threads, {} of {} flows",
                        s.secs, s.rss_kb, s.fds, s.threads, s.flows, s.flows_max
                    );
                    samples.push(s);
                }
                let next = Instant::now() + SAMPLE_EVERY;
                while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(100));
                }
            }
            samples
        })
    };
    let mut connections = 0u64;
    let mut worker_runs = 0u32;
    let mixed = Workload::ALL;
    let load = (|| -> Result<()> {
        while start.elapsed() < duration {
            let began = Instant::now();
            let w = mixed[worker_runs as usize % mixed.len()];
            connections += u64::from(run_worker(&ns, w, CHUNK)?.done);
            worker_runs += 1;
            thread::sleep(CHUNK_PERIOD.saturating_sub(began.elapsed()));
            check_interrupted()?;
        }
        Ok(())
    })();
    let settled = load.and_then(|()| settle(&d, &ns, &metrics_before, &nstat_before));
    // The last sample: after the drain.
    stop.store(true, Ordering::Relaxed);
    let mut samples = sampler.join().unwrap_or_default();
    samples.extend(Sample::take(pid, d.addr, start));
    let settled = settled?;
    let body = d.metrics()?;
    d.stop()?;
    let Some(trends) = trends(&samples, warm_secs) else {
        bail!("no /proc sample of the daemon (pid {pid})");
    };
    Ok(Soak {
        warm_secs,
        connections,
        worker_runs,
        samples,
        trends,
        checks: settled.figures.checks,
        lost: super::measure::family_delta(&metrics_before, &body, LOST),
    })
}

/// The figures and the verdicts; an error when a figure grew or a count is off.
pub fn report(s: &Soak) -> Result<()> {
    println!();
    println!(
        "soak: {} connections in {} worker runs, {} samples over {:.0} s",
        s.connections,
        s.worker_runs,
        s.samples.len(),
        s.samples.last().map_or(0.0, |x| x.secs)
    );
    match warm_sample(&s.samples, s.warm_secs) {
        Some(w) => println!(
            "  steady state from {:.0} s (warm-up {:.0} s, flow table settled: {} of {} flows)",
            w.secs, s.warm_secs, w.flows, w.flows_max
        ),
        None => println!(
            "  NO steady state: the flow table never settled ({} of {} flows at the end); run \
             longer",
            s.samples.last().map_or(0, |x| x.flows),
            s.samples.last().map_or(0, |x| x.flows_max)
        ),
    }
    println!(
        "  {:<8} {:>10} {:>12} {:>10} {:>10}  verdict",
        "figure", "start", "after warm", "end", "max"
    );
    for t in &s.trends {
        println!(
            "  {:<8} {:>10} {:>12} {:>10} {:>10}  {}",
            t.name,
            t.start,
            t.warm,
            t.end,
            t.max,
            if t.flat { "flat" } else { "GROWING" }
        );
    }
    println!(
        "  counts against nstat ({} records lost in the ring):",
        s.lost
    );
    for c in &s.checks {
        println!(
            "    {:<40} linkprobe {:>8} nstat {:>8}{}",
            c.name,
            c.linkprobe,
            c.nstat,
            if c.off() == 0 { "" } else { "  OFF" }
        );
    }
    if warm_sample(&s.samples, s.warm_secs).is_none() {
        bail!("soak: no steady state to judge (the flow table never settled)");
    }
    let growing: Vec<&str> = s
        .trends
        .iter()
        .filter(|t| !t.flat)
        .map(|t| t.name)
        .collect();
    if !growing.is_empty() {
        bail!("soak: {} kept growing after warm-up", growing.join(", "));
    }
    let off = nstat::counts_off(&s.checks);
    if off > 0 {
        bail!("soak: the daemon's counts are {off} off nstat's");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64, rss_kb: u64, fds: u64, threads: u64) -> Sample {
        Sample {
            secs,
            rss_kb,
            fds,
            threads,
            flows: 100,
            flows_max: 100,
        }
    }

    #[test]
    fn flat_is_judged_against_the_sample_after_warm_up() {
        // Start-up growth before the warm-up is not a leak; growth after it is.
        let samples = [
            s(0.0, 10_000, 20, 5),
            s(30.0, 40_000, 24, 6),
            s(60.0, 41_000, 24, 6),
            s(600.0, 42_000, 26, 6),
        ];
        let t = trends(&samples, 30.0).unwrap();
        assert_eq!(
            t[0],
            Trend {
                name: "rss_kb",
                start: 10_000,
                warm: 40_000,
                end: 42_000,
                max: 42_000,
                flat: true,
            }
        );
        assert!(t[1].flat && t[2].flat);
        let leaking = [
            s(0.0, 10_000, 20, 5),
            s(30.0, 40_000, 24, 6),
            s(600.0, 47_000, 27, 6),
        ];
        let t = trends(&leaking, 30.0).unwrap();
        assert!(!t[0].flat, "{:?}", t[0]);
        assert!(!t[1].flat, "{:?}", t[1]);
        assert!(t[2].flat);
        assert_eq!(trends(&[], 30.0), None);
    }

    #[test]
    fn the_steady_state_waits_for_the_flow_table_to_settle() {
        // Filling the table is growth by design; after it, growth is a leak.
        let filling = |secs, rss_kb, flows| Sample {
            flows,
            ..s(secs, rss_kb, 20, 3)
        };
        let samples = [
            filling(0.0, 10_000, 0),
            filling(30.0, 30_000, 50),
            filling(60.0, 50_000, 100),
            filling(120.0, 50_500, 100),
        ];
        let t = trends(&samples, 30.0).unwrap();
        assert_eq!((t[0].warm, t[0].end, t[0].flat), (50_000, 50_500, true));
        assert_eq!(warm_sample(&samples[..2], 30.0).map(|s| s.secs), Some(30.0));
        // Levelled off below the bound: closed flows expire as fast as new ones come.
        let levelled = [
            filling(0.0, 10_000, 0),
            filling(30.0, 30_000, 40),
            filling(60.0, 40_000, 78),
            filling(90.0, 40_100, 80),
        ];
        assert_eq!(warm_sample(&levelled, 30.0).map(|s| s.secs), Some(60.0));
        assert_eq!(warm_sample(&levelled, 90.0).map(|s| s.secs), Some(90.0));
    }
}
