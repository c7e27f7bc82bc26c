//! A real Prometheus server (Debian's `/usr/bin/prometheus`, installed by `cargo xtask setup`)
//! scraping one target, queried with PromQL over its HTTP API; and `promtool check metrics`.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use super::http::{self, url_encode};

/// The job name of the one scrape config; queries select it with `{job="linkprobe"}`.
pub const JOB: &str = "linkprobe";
/// One series of an instant query: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);
/// Upper bound for the server to answer `GET /-/ready` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of the server's stderr kept for failure messages.
const STDERR_TAIL: usize = 40;

/// Whether `prometheus` and `promtool` are on PATH: fails when they are not, unless the user
/// asked for unit tests only (see [`super::cannot_run`]).
pub fn prometheus_available(test: &str) -> bool {
    let missing: Vec<&str> = ["prometheus", "promtool"]
        .into_iter()
        .filter(|tool| find_on_path(tool).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    super::cannot_run(
        test,
        &format!(
            "{} not found on PATH: run `cargo xtask setup` (installs Debian's prometheus package)",
            missing.join(" and ")
        ),
    )
}

fn find_on_path(tool: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// One Prometheus process with its own config and TSDB in a fresh temp dir, listening on a
/// free loopback port. Dropping it stops the process and removes the dir.
pub struct PromServer {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
    scrape_interval: Duration,
    stderr: Arc<Mutex<Vec<String>>>,
    /// How long from spawn to `/-/ready` = 200.
    pub startup: Duration,
}

impl PromServer {
    /// Starts Prometheus scraping `target` (`/metrics`) every `scrape_interval_ms` (also the
    /// rule evaluation interval and the scrape timeout) and waits until it is ready.
    /// Ready takes tens of milliseconds; the first scrape comes about 5 s later (Prometheus
    /// 2.42 applies new targets on a fixed 5 s tick), so use [`Self::wait_for_scrapes`].
    pub fn start(target: SocketAddr, scrape_interval_ms: u64) -> PromServer {
        let dir = fresh_dir();
        let config = format!(
            "# Written by the linkprobe tests (tests/kernel/common/prometheus.rs).\n\
             global:\n  \
               scrape_interval: {ms}ms\n  \
               scrape_timeout: {ms}ms\n  \
               evaluation_interval: {ms}ms\n\
             scrape_configs:\n  \
               - job_name: {JOB}\n    \
                 metrics_path: /metrics\n    \
                 static_configs:\n      \
                   - targets: ['{target}']\n",
            ms = scrape_interval_ms
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)
            .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        // The free port is found by binding :0 and released before Prometheus binds it; if
        // another process takes it in between, Prometheus exits and we try another port.
        let mut last_failure = String::new();
        for _ in 0..3 {
            let addr = free_loopback_port();
            let started = Instant::now();
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn prometheus: {e}"));
            let stderr = collect_stderr(&mut child);
            match wait_ready(&mut child, addr, started) {
                Ok(()) => {
                    let startup = started.elapsed();
                    eprintln!(
                        "[prometheus] ready on {addr} in {:.0} ms, scraping {target} every \
                         {scrape_interval_ms} ms",
                        startup.as_secs_f64() * 1000.0
                    );
                    return PromServer {
                        child,
                        dir,
                        addr,
                        scrape_interval: Duration::from_millis(scrape_interval_ms),
                        stderr,
                        startup,
                    };
                }
                Err(why) => {
                    stop(&mut child);
                    let tail = joined(&stderr);
                    last_failure = format!("{why}\n--- prometheus stderr (tail) ---\n{tail}");
                    if !tail.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("prometheus did not become ready: {last_failure}");
    }

    /// Where the server's HTTP API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The last lines Prometheus wrote on stderr.
    pub fn stderr_tail(&self) -> String {
        joined(&self.stderr)
    }

    /// Instant query at the current time: each series' labels (with `__name__` when the
    /// result keeps it) and value. A scalar result is one entry with no labels.
    /// Panics with Prometheus's error body when the query fails.
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        self.try_query(promql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::query`] that returns the failure (HTTP status and Prometheus's error body, or
    /// the connection error with the server's stderr) instead of panicking.
    pub fn try_query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let response = http::get(self.addr, &path).map_err(|e| {
            format!(
                "query {promql:?}: {e}
{}",
                self.stderr_tail()
            )
        })?;
        let body = response.text();
        if response.status != 200 {
            return Err(format!(
                "query {promql:?}: HTTP {}: {body}",
                response.status
            ));
        }
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("query {promql:?}: answer is not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!("query {promql:?}: {body}"));
        }
        let bad = || format!("query {promql:?}: unexpected answer: {body}");
        let result = &v["data"]["result"];
        match v["data"]["resultType"].as_str() {
            Some("vector") => result
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|s| {
                    let labels = s["metric"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().into()))
                                .collect()
                        })
                        .unwrap_or_default();
                    Ok((labels, sample_value(&s["value"]).ok_or_else(bad)?))
                })
                .collect(),
            Some("scalar") => Ok(vec![(
                BTreeMap::new(),
                sample_value(result).ok_or_else(bad)?,
            )]),
            _ => Err(bad()),
        }
    }

    /// The single value of `promql`; None while it has no series. Panics on several series.
    pub fn query_scalar(&self, promql: &str) -> Option<f64> {
        let mut result = self.query(promql);
        assert!(
            result.len() <= 1,
            "query {promql:?}: expected at most one series, got {result:?}"
        );
        result.pop().map(|(_, v)| v)
    }

    /// Successful scrapes of the target so far (samples of `up` = 1 in the last hour).
    fn successful_scrapes(&self) -> u64 {
        self.query_scalar(&format!("sum_over_time(up{{job=\"{JOB}\"}}[1h])"))
            .unwrap_or(0.0) as u64
    }

    /// Blocks until Prometheus has scraped the target successfully at least `n` more times
    /// (bounded: 4 intervals per scrape + 10 s). Panics with the target's last scrape error.
    pub fn wait_for_scrapes(&self, n: usize) {
        let start = self.successful_scrapes();
        let want = start + n as u64;
        let timeout = self.scrape_interval * 4 * u32::try_from(n).unwrap_or(u32::MAX)
            + Duration::from_secs(10);
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.successful_scrapes();
            if now >= want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} more successful scrapes did not happen within {timeout:?} ({start} → \
                 {now}); target state: {}",
                self.target_health()
            );
            std::thread::sleep(self.scrape_interval / 4);
        }
    }

    /// Polls the single value of `promql` until `pred` holds, and returns that value.
    /// Panics after `timeout` with the last value seen.
    pub fn wait_until(&self, promql: &str, pred: impl Fn(f64) -> bool, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.query_scalar(promql);
            if let Some(v) = value {
                if pred(v) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{promql:?} did not meet the condition within {timeout:?}; last value {value:?}; \
                 target state: {}",
                self.target_health()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `health`, `lastError` and `scrapeUrl` of the active targets (for failure messages).
    pub fn target_health(&self) -> String {
        match http::get(self.addr, "/api/v1/targets?state=active") {
            Ok(r) => {
                let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                v["data"]["activeTargets"]
                    .as_array()
                    .map(|ts| {
                        ts.iter()
                            .map(|t| {
                                format!(
                                    "{} health={} lastError={:?}",
                                    t["scrapeUrl"], t["health"], t["lastError"]
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or_else(|| r.text())
            }
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for PromServer {
    fn drop(&mut self) {
        stop(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `GET /-/ready` until 200, the process exits, or [`READY_TIMEOUT`].
fn wait_ready(child: &mut Child, addr: SocketAddr, started: Instant) -> Result<(), String> {
    let mut last = String::from("no answer yet");
    while started.elapsed() < READY_TIMEOUT {
        if let Ok(Some(status)) = child.try_wait() {
            // Let the stderr thread take the last lines.
            std::thread::sleep(Duration::from_millis(100));
            return Err(format!(
                "prometheus exited with {status} before it was ready"
            ));
        }
        match http::get(addr, "/-/ready") {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => last = format!("GET /-/ready: {} {}", r.status, r.text().trim()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(format!(
        "GET http://{addr}/-/ready was not 200 within {READY_TIMEOUT:?} (last: {last})"
    ))
}

/// SIGTERM, then SIGKILL if it has not exited within 5 s.
fn stop(child: &mut Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    // SAFETY: signalling our own child, which has not been reaped (try_wait said running).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn joined(lines: &Mutex<Vec<String>>) -> String {
    lines.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
}

/// `[timestamp, "value"]` → value (`NaN`, `+Inf`, `-Inf` included).
fn sample_value(pair: &Value) -> Option<f64> {
    pair[1].as_str().and_then(|s| s.parse().ok())
}

/// A new empty directory under the system temp dir.
fn fresh_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "linkprobe-prom-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn free_loopback_port() -> SocketAddr {
    testkit::linkprobe::free_loopback_addr().unwrap_or_else(|e| panic!("{e}"))
}

/// Echoes the child's stderr (`[prometheus] …`) and keeps its last lines.
fn collect_stderr(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let tail = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("prometheus stderr");
    let keep = Arc::clone(&tail);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[prometheus] {line}");
            let mut t = keep.lock().unwrap_or_else(|e| e.into_inner());
            t.push(line);
            if t.len() > STDERR_TAIL {
                t.remove(0);
            }
        }
    });
    tail
}

/// Runs `promtool check metrics` on `text` (exposition format on stdin). Err carries what
/// promtool printed (lint problems go to stderr with exit status 3, parse errors exit 1),
/// also when it printed something but exited 0.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn promtool: {e}"));
    let mut stdin = child.stdin.take().expect("promtool stdin");
    let input = text.to_owned();
    // Written from a thread so a large text cannot deadlock against promtool's output.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("wait for promtool");
    // promtool may stop reading early on a parse error: a broken pipe is not our failure.
    let _ = writer.join();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = printed.trim();
    if out.status.success() && printed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics ({}): {printed}",
            out.status
        ))
    }
}
