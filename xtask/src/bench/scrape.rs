//! The scrape-latency phase of `cargo xtask bench`, for the requirement "a scrape never blocks
//! on the event path and returns within 100 ms with 2,000 series".
//!
//! A `linkprobe daemon` scoped to the bench namespace serves /metrics on loopback. Refused
//! connects to port 9 of thousands of distinct loopback addresses (all of 127/8 is local in the
//! namespace) fill its label budget, so /metrics carries about 2,000 series. Then full
//! `GET /metrics` round trips (connect to the last body byte, `Connection: close`) are timed at
//! a fixed cadence: (a) with the daemon idle, the baseline; (b) while the churn worker runs back
//! to back in the namespace. The figure is the p99 ratio under load / idle; the 100 ms target
//! is reported, never enforced (machines differ, the ratio is what compares).
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;

use testkit::{netns::Netns, workload::connect_refused};

use super::{
    exposition,
    plan::Workload,
    session::check_interrupted,
    tracers::Daemon,
    workload::{worker_command, WorkerResult},
};
use crate::cmd::{capture, run_stdout, shown, CommandFailed};

pub const DEFAULT_SCRAPES: u32 = 100;
/// One scrape starts every this often (a late one starts at once, no burst to catch up).
const INTERVAL: Duration = Duration::from_millis(50);
/// The requirement's bound on a scrape.
const TARGET: Duration = Duration::from_millis(100);
/// Distinct peers made before measuring: far more than get a series, so the top-K and the
/// series cap are full and the rest folds into `other`.
const FILL_PEERS: u32 = 3000;
/// `metrics.max_peers` for the daemon. A refused peer has four series (connections, failures,
/// resets received and its `connect_refused` anomaly gauge): with the self-health and process
/// metrics (about 100 lines), 470 peers make about 2,000 lines.
const MAX_PEERS: u32 = 470;
/// The daemon publishes once a second; the filled counts must show within this time.
const FILL_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections per churn-worker run under the scrapes (repeated until they end).
pub const CHURN_COUNT: u32 = 5000;
/// The scrapes under load start this long after the first worker, so it is churning by then.
const LOAD_WARMUP: Duration = Duration::from_millis(200);
const CONNECTIONS: &str = "linkprobe_tcp_connections_total";

/// One timed `GET /metrics`.
struct Scrape {
    elapsed: Duration,
    bytes: usize,
    /// Non-comment, non-empty lines of the body: the series served.
    lines: usize,
}

/// What the scrape phase measured.
pub struct ScrapeBench {
    idle: Vec<Scrape>,
    load: Vec<Scrape>,
    /// Worker connections per second while the scrapes under load ran.
    churn_rate: f64,
    /// The daemon's lost records (ring full) over the whole phase, from its last snapshot.
    lost: Option<u64>,
}

impl ScrapeBench {
    pub fn to_json(&self) -> serde_json::Value {
        let phase = |v: &[Scrape]| {
            json!({
                "scrapes": v.len(),
                "series": v.last().map(|s| s.lines),
                "bytes": v.last().map(|s| s.bytes),
                "p50_ms": ms(percentile(v, 0.5)),
                "p99_ms": ms(percentile(v, 0.99)),
                "max_ms": ms(percentile(v, 1.0)),
            })
        };
        json!({
            "idle": phase(&self.idle),
            "under_load": phase(&self.load),
            "churn_conns_per_sec": self.churn_rate,
            "lost": self.lost,
            "target_ms": TARGET.as_millis() as u64,
        })
    }
}

pub fn run(ns: &Netns, count: u32, scrapes: u32) -> Result<ScrapeBench> {
    let max_peers = format!("metrics.max_peers={MAX_PEERS}");
    let daemon = Daemon::start(ns, &["--set", &max_peers])?;
    let addr = daemon.addr;
    fill(ns, addr)?;
    check_interrupted()?;
    println!(
        "[bench] scrape: {scrapes} scrapes of http://{addr}/metrics every {} ms, daemon idle",
        INTERVAL.as_millis()
    );
    let idle = scrape_series(addr, scrapes, &AtomicBool::new(false))?;
    println!(
        "[bench] scrape: idle p99 {:.2} ms; now {scrapes} more while the churn worker runs",
        ms(percentile(&idle, 0.99))
    );
    let (load, churn_rate) = under_load(ns, count, addr, scrapes)?;
    let lost = Some(exposition::sum(&daemon.metrics()?, super::measure::LOST, &[]) as u64);
    daemon.stop()?;
    Ok(ScrapeBench {
        idle,
        load,
        churn_rate,
        lost,
    })
}

/// Makes [`FILL_PEERS`] distinct peers in the namespace and waits until /metrics counts them.
fn fill(ns: &Netns, addr: SocketAddr) -> Result<()> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let out =
        run_stdout(
            ns.command(exe)
                .args(["bench-refused", "--peers", &FILL_PEERS.to_string()]),
        );
    check_interrupted()?;
    let out = out?;
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .with_context(|| format!("bench-refused printed {out:?}"))?;
    let refused = v["refused"]
        .as_u64()
        .with_context(|| format!("bench-refused printed no count: {out:?}"))?;
    if refused < u64::from(FILL_PEERS) {
        println!(
            "[bench] WARNING: only {refused} of {FILL_PEERS} connects were refused: {}",
            v["first_error"]
        );
    }
    let deadline = Instant::now() + FILL_TIMEOUT;
    loop {
        let body = exposition::fetch(addr)?.1;
        let counted = exposition::sum(&body, CONNECTIONS, &[]);
        if counted >= refused as f64 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "after {} s, /metrics counts {counted} connections for {refused} refused \
                 connects (`{CONNECTIONS}`)",
                FILL_TIMEOUT.as_secs()
            );
        }
        check_interrupted()?;
        thread::sleep(Duration::from_millis(250));
    }
}

/// Scrapes from a thread while the main thread runs the churn worker back to back; each
/// side stops the other when it ends (or fails). Returns the scrapes and the churn rate.
fn under_load(
    ns: &Netns,
    count: u32,
    addr: SocketAddr,
    scrapes: u32,
) -> Result<(Vec<Scrape>, f64)> {
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let scraper = s.spawn(|| {
            thread::sleep(LOAD_WARMUP);
            let r = scrape_series(addr, scrapes, &stop);
            stop.store(true, Ordering::SeqCst);
            r
        });
        let churn = churn_until(ns, count, &stop);
        stop.store(true, Ordering::SeqCst);
        let samples = scraper
            .join()
            .map_err(|_| anyhow!("the scraper thread panicked"))?;
        let churn = churn?;
        Ok((samples?, churn))
    })
}

/// Runs the churn worker until `stop`; connections per second over the whole time.
fn churn_until(ns: &Netns, count: u32, stop: &AtomicBool) -> Result<f64> {
    let mut cmd = worker_command(ns, Workload::Conn, count)?;
    println!("$ {} (repeated until the scrapes end)", shown(&cmd));
    let start = Instant::now();
    let mut runs = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let out = capture(&mut cmd);
        check_interrupted()?;
        let out = out?;
        if !out.status.success() {
            return Err(CommandFailed {
                command: shown(&cmd),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            }
            .into());
        }
        WorkerResult::parse(&String::from_utf8_lossy(&out.stdout))?;
        runs += 1;
    }
    Ok(f64::from(runs) * f64::from(count) / start.elapsed().as_secs_f64())
}

/// `n` scrapes, one every [`INTERVAL`]; fails on the first failed scrape or when stopped early.
fn scrape_series(addr: SocketAddr, n: u32, stop: &AtomicBool) -> Result<Vec<Scrape>> {
    let mut out = Vec::with_capacity(n as usize);
    let mut next = Instant::now();
    for i in 1..=n {
        check_interrupted()?;
        if stop.load(Ordering::SeqCst) {
            bail!("scrapes stopped after {} of {n}", i - 1);
        }
        thread::sleep(next.saturating_duration_since(Instant::now()));
        let (elapsed, body) =
            exposition::fetch(addr).with_context(|| format!("scrape {i} of {n}"))?;
        out.push(Scrape {
            elapsed,
            bytes: body.len(),
            lines: body
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .count(),
        });
        next = (next + INTERVAL).max(Instant::now());
    }
    Ok(out)
}

/// Nearest-rank percentile (`q` in 0..=1) of the scrape times.
fn percentile(samples: &[Scrape], q: f64) -> Duration {
    let mut v: Vec<Duration> = samples.iter().map(|s| s.elapsed).collect();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
    v.get(rank - 1).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn report(b: &ScrapeBench) {
    let last = |v: &[Scrape]| v.last().map_or((0, 0), |s| (s.lines, s.bytes));
    let (idle_lines, idle_bytes) = last(&b.idle);
    let (load_lines, load_bytes) = last(&b.load);
    let idle_p99 = percentile(&b.idle, 0.99);
    let load_p99 = percentile(&b.load, 0.99);
    println!();
    println!(
        "linkprobe scrape latency: GET /metrics (connect to last byte, Connection: close) every \
         {} ms, {} idle, then {} under churn; {FILL_PEERS} peers, metrics.max_peers={MAX_PEERS}",
        INTERVAL.as_millis(),
        b.idle.len(),
        b.load.len()
    );
    println!("{:<40} {:>14}", "measure", "value");
    println!(
        "{:<40} {:>14}",
        "series served (non-comment lines), idle", idle_lines
    );
    println!(
        "{:<40} {:>14}",
        "series served, under load (last)", load_lines
    );
    println!("{:<40} {:>14}", "response bytes, idle", idle_bytes);
    println!(
        "{:<40} {:>14}",
        "response bytes, under load (last)", load_bytes
    );
    for (name, v) in [("idle", &b.idle), ("under load", &b.load)] {
        for (stat, q) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            println!(
                "{:<40} {:>14.2}",
                format!("scrape {stat} ms, {name}"),
                ms(percentile(v, q))
            );
        }
    }
    println!(
        "{:<40} {:>14.3}",
        "ratio p99 (under load/idle)",
        ms(load_p99) / ms(idle_p99).max(f64::MIN_POSITIVE)
    );
    println!(
        "{:<40} {:>14.0}",
        "churn during scrapes connections/s", b.churn_rate
    );
    println!(
        "{:<40} {:>14}",
        "records lost (scrape phase)",
        b.lost.map_or_else(|| "n/a".to_owned(), |l| l.to_string())
    );
    let verdict = if load_p99 <= TARGET {
        "OK"
    } else {
        "OVER TARGET"
    };
    println!(
        "{:<40} {:>14}",
        format!("p99 under load vs {} ms target", TARGET.as_millis()),
        verdict
    );
}

/// `bench-refused`: one refused connect to port 9 of each of `peers` distinct addresses
/// 127.1.x.y; prints `{"peers", "refused", "first_error"}` (the first other outcome) on stdout.
pub fn refused(peers: u32) -> Result<()> {
    if peers > 65_536 {
        bail!("at most 65536 peers (127.1.0.0/16), not {peers}");
    }
    let mut refused = 0u32;
    let mut first_error = None;
    for i in 0..peers {
        let [_, _, hi, lo] = i.to_be_bytes();
        let dst = SocketAddr::from(([127, 1, hi, lo], 9));
        match connect_refused(dst) {
            Ok(()) => refused += 1,
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({ "peers": peers, "refused": refused, "first_error": first_error })
    );
    Ok(())
}
