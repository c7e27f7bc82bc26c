//! `cargo xtask bench`: what the probes cost on TCP connection churn. Every figure is a ratio
//! against a baseline measured in the same run, on the same machine, in alternating runs:
//! (a) the churn worker alone, (b) the same with `linkprobe trace --netns NS -o none` attached.
//! Both run in a private network namespace, so the probes only see the worker's sockets.
//! Then the scrape-latency phase ([`crate::bench_scrape`]) times `GET /metrics` of a daemon.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    bench_scrape,
    cargo_cmds::{build, linkprobe_bin},
    cmd::{is_root, run_stdout},
    netns::Netns,
    setup,
    tracer::Tracer,
};

/// Rounds per configuration; the median is reported.
const ROUNDS: usize = 3;
pub const DEFAULT_COUNT: u32 = 5000;
pub const MAX_COUNT: u32 = 100_000;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// On Ctrl-C the children (same process group) get SIGINT and stop; xtask itself only notes
/// it, so that the namespace guard and the tracer guard still clean up on the way out.
fn catch_sigint() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe. A handler (not
    // SIG_IGN) is reset to the default in exec'd children, so they still die on Ctrl-C.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// `ip netns exec NS xtask bench-worker --count N`.
pub fn worker_command(ns: &Netns, count: u32) -> Result<Command> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut c = ns.command(exe);
    c.args(["bench-worker", "--count", &count.to_string()]);
    Ok(c)
}

/// One run of the churn worker.
fn run_worker(ns: &Netns, count: u32) -> Result<f64> {
    let out = run_stdout(&mut worker_command(ns, count)?);
    check_interrupted()?;
    worker_rate(&out?)
}

/// The `conns_per_sec` a worker printed.
pub fn worker_rate(out: &str) -> Result<f64> {
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("worker printed {out:?}"))?;
    v["conns_per_sec"]
        .as_f64()
        .with_context(|| format!("worker printed no conns_per_sec: {out:?}"))
}

struct Probed {
    conns_per_sec: f64,
    rss_kb: Option<u64>,
    cpu_ms: Option<f64>,
    counters: Option<serde_json::Value>,
}

fn run_probed(ns: &Netns, count: u32) -> Result<Probed> {
    let tracer = Tracer::start(&linkprobe_bin(true), ns.name())?;
    let cpu_before = tracer.cpu_ms();
    let conns_per_sec = run_worker(ns, count)?;
    // Give the drain timer time to empty the ring before reading memory and CPU.
    std::thread::sleep(Duration::from_millis(200));
    let rss_kb = tracer.peak_rss_kb();
    let cpu_ms = tracer.cpu_ms().zip(cpu_before).map(|(a, b)| a - b);
    let stopped = tracer.stop()?;
    Ok(Probed {
        conns_per_sec,
        rss_kb,
        cpu_ms,
        counters: stopped.counters,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Sum of a counters section (`events`, `lost`) over all rounds that reported one.
fn counter_sum(probed: &[Probed], section: &str) -> Option<u64> {
    let per_round: Vec<u64> = probed
        .iter()
        .filter_map(|p| p.counters.as_ref()?[section].as_object())
        .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
        .collect();
    (!per_round.is_empty()).then(|| per_round.iter().sum())
}

pub fn bench(count: u32, scrapes: u32) -> Result<()> {
    if !is_root() {
        bail!(
            "the bench creates a network namespace and attaches eBPF probes, which needs root: \
             run `sudo -E cargo xtask bench`"
        );
    }
    setup::setup()?;
    build(true)?;
    catch_sigint();
    let ns = Netns::create(format!("lpbench-{}", std::process::id()))?;
    let mut base = Vec::new();
    let mut probed = Vec::new();
    for round in 1..=ROUNDS {
        println!("[bench] round {round}/{ROUNDS} ({count} connections per run)");
        let b = run_worker(&ns, count)?;
        println!("[bench] round {round}/{ROUNDS}: baseline {b:.0} conn/s");
        base.push(b);
        let p = run_probed(&ns, count)?;
        println!(
            "[bench] round {round}/{ROUNDS}: with probes {:.0} conn/s",
            p.conns_per_sec
        );
        if let Some(connects) = p
            .counters
            .as_ref()
            .and_then(|c| c["events"]["connect"].as_u64())
        {
            if connects != u64::from(count) {
                println!(
                    "[bench] WARNING: linkprobe counted {connects} connects for {count} connections"
                );
            }
        }
        probed.push(p);
        check_interrupted()?;
    }
    let scrape = bench_scrape::run(&ns, count, scrapes)?;
    drop(ns);
    report(count, &base, &probed);
    bench_scrape::report(&scrape);
    Ok(())
}

fn report(count: u32, base: &[f64], probed: &[Probed]) {
    let base_rate = median(base.to_vec());
    let probed_rate = median(probed.iter().map(|p| p.conns_per_sec).collect());
    let rss = probed.iter().filter_map(|p| p.rss_kb).max();
    let events = counter_sum(probed, "events");
    let lost = counter_sum(probed, "lost");
    let cpu_ms: f64 = probed.iter().filter_map(|p| p.cpu_ms).sum();
    let na = || "n/a".to_owned();
    println!();
    println!(
        "linkprobe bench: {count} sequential loopback connections per run, {ROUNDS} rounds \
         alternating, median"
    );
    println!("{:<40} {:>14}", "measure", "value");
    println!("{:<40} {:>14.0}", "baseline connections/s", base_rate);
    println!("{:<40} {:>14.0}", "with probes connections/s", probed_rate);
    println!(
        "{:<40} {:>14.3}",
        "ratio (with/baseline)",
        probed_rate / base_rate
    );
    println!(
        "{:<40} {:>14}",
        "linkprobe peak RSS (VmHWM), kB",
        rss.map_or_else(na, |r| r.to_string())
    );
    println!(
        "{:<40} {:>14}",
        "kernel events counted (all rounds)",
        events.map_or_else(na, |e| e.to_string())
    );
    println!(
        "{:<40} {:>14}",
        "records lost (all rounds)",
        lost.map_or_else(na, |l| l.to_string())
    );
    let cpu_per_10k = events
        .filter(|&e| e > 0)
        .map(|e| format!("{:.2}", cpu_ms * 10_000.0 / e as f64));
    println!(
        "{:<40} {:>14}",
        "linkprobe CPU ms per 10k events",
        cpu_per_10k.unwrap_or_else(na)
    );
}

/// `bench-worker`: sequential loopback connections (connect, accept, one byte each way,
/// close); prints `{"count", "secs", "conns_per_sec"}` on stdout.
pub fn worker(count: u32) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the churn listener")?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    for i in 0..count {
        let mut client =
            TcpStream::connect(addr).with_context(|| format!("connection {i}: connect"))?;
        let (mut server, _) = listener
            .accept()
            .with_context(|| format!("connection {i}: accept"))?;
        let mut b = [0u8; 1];
        client.write_all(b"x")?;
        server.read_exact(&mut b)?;
        server.write_all(b"y")?;
        client.read_exact(&mut b)?;
        // The client closes first, so TIME_WAIT stays on the connecting side (reusable).
        drop(client);
        drop(server);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({ "count": count, "secs": secs, "conns_per_sec": f64::from(count) / secs })
    );
    Ok(())
}
