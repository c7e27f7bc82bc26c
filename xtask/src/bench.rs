//! `cargo xtask bench`: what the probes cost on TCP connection churn. Every figure is a ratio
//! against a baseline measured in the same run, on the same machine, alternating runs.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{run, stdout_of, workspace_root};

const ROUNDS: usize = 3;

/// A network namespace removed on drop, even when the bench fails.
struct Netns(String);

impl Netns {
    fn new() -> Result<Netns> {
        let name = format!("lpbench-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns(name);
        run(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// One measurement of the churn loop.
struct Sample {
    conns_per_sec: f64,
}

fn run_worker(ns: &Netns, count: u32) -> Result<Sample> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let out = stdout_of(
        Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .arg(exe)
            .args(["bench-worker", "--count", &count.to_string()]),
    )?;
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("worker printed {out:?}"))?;
    Ok(Sample {
        conns_per_sec: v["conns_per_sec"].as_f64().context("conns_per_sec")?,
    })
}

/// A running `linkprobe trace` scoped to the namespace.
struct Probe {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
}

impl Probe {
    fn start(ns: &Netns) -> Result<Probe> {
        let bin = workspace_root().join("target/release/linkprobe");
        let mut child = Command::new(bin)
            .args(["trace", "--netns", &ns.0, "-o", "none"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting linkprobe")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("linkprobe: ready") => break,
                Ok(_) => {}
                Err(_) => bail!("linkprobe did not print `linkprobe: ready` within 30 s"),
            }
        }
        Ok(Probe {
            child,
            stderr_lines: rx,
        })
    }

    fn status_field(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
    }

    /// utime + stime in clock ticks.
    fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        let after_comm = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }

    /// SIGINT; returns the final counters JSON.
    fn stop(mut self) -> Result<serde_json::Value> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        let lines: Vec<String> = self.stderr_lines.try_iter().collect();
        if !status.success() {
            bail!("linkprobe exited with {status}:\n{}", lines.join("\n"));
        }
        let counters = lines
            .iter()
            .find_map(|l| l.strip_prefix("linkprobe: final counters "))
            .context("linkprobe printed no final counters")?;
        Ok(serde_json::from_str(counters)?)
    }
}

struct ProbedSample {
    sample: Sample,
    rss_kb: u64,
    cpu_ms: f64,
    events: u64,
    lost: u64,
    connects: u64,
}

fn run_probed(ns: &Netns, count: u32) -> Result<ProbedSample> {
    let probe = Probe::start(ns)?;
    let ticks_before = probe.cpu_ticks().unwrap_or(0);
    let sample = run_worker(ns, count)?;
    // Let the drain timer empty the ring before reading memory and CPU.
    std::thread::sleep(Duration::from_millis(200));
    let rss_kb = probe.status_field("VmHWM:").unwrap_or(0);
    let ticks = probe.cpu_ticks().unwrap_or(0).saturating_sub(ticks_before);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let counters = probe.stop()?;
    let sum = |section: &str| -> u64 {
        counters[section]
            .as_object()
            .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
            .unwrap_or(0)
    };
    Ok(ProbedSample {
        sample,
        rss_kb,
        cpu_ms: ticks as f64 * 1000.0 / hz,
        events: sum("events"),
        lost: sum("lost"),
        connects: counters["events"]["connect"].as_u64().unwrap_or(0),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn bench(count: u32) -> Result<()> {
    let ns = Netns::new()?;
    let mut base = Vec::new();
    let mut probed = Vec::new();
    for round in 1..=ROUNDS {
        println!(
            "[bench] round {round}/{ROUNDS}: baseline, then with probes ({count} connections each)"
        );
        base.push(run_worker(&ns, count)?.conns_per_sec);
        let p = run_probed(&ns, count)?;
        if p.connects != u64::from(count) {
            bail!(
                "linkprobe counted {} connects for {count} connections",
                p.connects
            );
        }
        probed.push(p);
    }
    let base_rate = median(base);
    let probed_rate = median(probed.iter().map(|p| p.sample.conns_per_sec).collect());
    let rss = probed.iter().map(|p| p.rss_kb).max().unwrap_or(0);
    let events: u64 = probed.iter().map(|p| p.events).sum();
    let lost: u64 = probed.iter().map(|p| p.lost).sum();
    let cpu_ms: f64 = probed.iter().map(|p| p.cpu_ms).sum();
    println!();
    println!("{:<44} {:>14}", "measure (median of 3)", "value");
    println!("{:<44} {:>14.0}", "baseline connections/s", base_rate);
    println!("{:<44} {:>14.0}", "with probes connections/s", probed_rate);
    println!(
        "{:<44} {:>14.3}",
        "ratio with/baseline",
        probed_rate / base_rate
    );
    println!(
        "{:<44} {:>14}",
        "kernel events counted (all rounds)", events
    );
    println!("{:<44} {:>14}", "records lost (all rounds)", lost);
    println!(
        "{:<44} {:>14.2}",
        "linkprobe CPU ms per 10k events",
        if events > 0 {
            cpu_ms * 10_000.0 / events as f64
        } else {
            0.0
        }
    );
    println!("{:<44} {:>14}", "linkprobe peak RSS (VmHWM) kB", rss);
    Ok(())
}

/// Sequential loopback connections: connect, accept, 1 byte each way, close.
pub fn worker(count: u32) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    for _ in 0..count {
        let mut client = TcpStream::connect(addr)?;
        let (mut server, _) = listener.accept()?;
        client.write_all(b"x")?;
        let mut b = [0u8; 1];
        server.read_exact(&mut b)?;
        server.write_all(b"y")?;
        client.read_exact(&mut b)?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({ "count": count, "secs": secs, "conns_per_sec": f64::from(count) / secs })
    );
    Ok(())
}
