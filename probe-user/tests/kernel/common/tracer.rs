//! A `linkprobe trace -o json` process scoped to one namespace (a
//! [`testkit::process::Background`], stopped on every path), and what it printed.
use std::{collections::BTreeSet, process::Command, time::Duration};

use serde_json::Value;
use testkit::process::{Background, Pipe};

/// Its first stdout line, the `ready` record, comes once every probe is attached.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// A final drain, the counters and the probes detached, after SIGINT.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Tracer {
    process: Background,
    pub ready: Value,
}

/// Everything the tracer printed, split by record type.
pub struct Trace {
    pub events: Vec<Value>,
    /// `anomaly` records (raised / updated / cleared), in output order.
    pub anomalies: Vec<Value>,
    /// `flow` records printed at exit (with `--dump-flows`).
    pub flows: Vec<Value>,
    pub counters: Value,
    /// Every hook hit was a record (`--detail all`, trace's default).
    pub detail_all: bool,
}

/// Flags every test's linkprobe gets unless the test sets them: a short drain interval, and the
/// backup programs attached from the start, so that every count a test compares is exact on
/// kernels that skip probe runs too (software emulation preempts often); the exactness test
/// covers `--backup-probes auto` itself.
const TEST_DEFAULTS: [(&str, &str); 2] =
    [("--drain-interval-ms", "20"), ("--backup-probes", "always")];

impl Tracer {
    pub fn start(netns: &str, extra: &[&str]) -> Tracer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_linkprobe"));
        cmd.args(["trace", "-o", "json", "--netns", netns]);
        for (flag, default) in TEST_DEFAULTS {
            if !extra.contains(&flag) {
                cmd.args([flag, default]);
            }
        }
        Self::spawn(cmd.args(extra))
    }

    /// Starts it, its stderr echoed (`[linkprobe] …`), and waits for its ready record.
    fn spawn(cmd: &mut Command) -> Tracer {
        let mut process = Background::start(cmd, Some("[linkprobe]")).expect("spawn linkprobe");
        let first = process
            .wait_for(Pipe::Stdout, READY_TIMEOUT, |_| true)
            .unwrap_or_else(|e| {
                panic!("linkprobe did not become ready (its stderr is above): {e}")
            });
        let ready: Value = serde_json::from_str(&first).expect("ready line is JSON");
        assert_eq!(ready["type"], "ready", "first line: {first}");
        Tracer { process, ready }
    }

    /// Waits for a stderr (log) line that `wanted` accepts.
    pub fn wait_log(&mut self, limit: Duration, wanted: impl Fn(&str) -> bool) -> String {
        self.process
            .wait_for(Pipe::Stderr, limit, wanted)
            .unwrap_or_else(|e| panic!("no such log line: {e}"))
    }

    /// Names of the probes that attached, or are not needed on this kernel.
    pub fn attached(&self) -> BTreeSet<String> {
        self.ready["probes"]
            .as_array()
            .expect("probes")
            .iter()
            .filter(|p| p["attached"] == true || p["skipped"] == true)
            .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.process
            .pid()
            .expect("a tracer not stopped yet has a pid")
    }

    /// SIGKILL: no drain, no detach, no clean-up of its own; returns how it ended.
    pub fn kill(self) -> std::process::ExitStatus {
        self.process
            .kill()
            .unwrap_or_else(|e| panic!("killing linkprobe: {e}"))
            .status
    }

    /// SIGINT, then collect every line until exit.
    pub fn stop(self) -> Trace {
        // Let the drain timer pick up the last records and the kernel finish socket teardown.
        std::thread::sleep(Duration::from_millis(300));
        let detail_all = self.ready["detail"] == "all";
        // Every line up to the exit: the process is gone, so its pipes are closed.
        let exited = self
            .process
            .stop(EXIT_TIMEOUT)
            .unwrap_or_else(|e| panic!("stopping linkprobe: {e}"));
        let status = exited.status;
        let stderr = exited.stderr.join("\n");
        assert!(status.success(), "linkprobe exited with {status}\n{stderr}");
        let mut events = Vec::new();
        let mut anomalies = Vec::new();
        let mut flows = Vec::new();
        let mut counters = Value::Null;
        for line in exited.stdout {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            match v["type"].as_str() {
                Some("event") => events.push(v),
                Some("anomaly") => anomalies.push(v),
                Some("flow") => flows.push(v),
                Some("counters") => counters = v,
                other => panic!("unexpected record type {other:?}: {line}"),
            }
        }
        assert!(counters.is_object(), "no counters line\n{stderr}");
        Trace {
            events,
            anomalies,
            flows,
            counters,
            detail_all,
        }
    }
}

impl Trace {
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["kind"] == kind)
    }

    /// Kernel counter `section.key` (e.g. `events.rst_sent`).
    pub fn kernel(&self, section: &str, key: &str) -> u64 {
        self.counters[section][key].as_u64().unwrap_or(0)
    }

    pub fn misc(&self, key: &str) -> u64 {
        self.counters[key].as_u64().unwrap_or(0)
    }

    /// Cookies of the events of one kind.
    pub fn cookies(&self, kind: &str) -> Vec<u64> {
        self.of_kind(kind)
            .filter_map(|e| e["cookie"].as_u64())
            .collect()
    }

    /// Runs of our probes the kernel skipped, all probes together (`recursion_misses`).
    pub fn recursion_misses(&self) -> u64 {
        self.counters["recursion_misses"]
            .as_object()
            .expect("recursion_misses")
            .values()
            .filter_map(Value::as_u64)
            .sum()
    }

    /// Hits backup programs handled for skipped probes, all probes together.
    pub fn backup_runs(&self) -> u64 {
        self.counters["backup_runs"]
            .as_object()
            .expect("backup_runs")
            .values()
            .filter_map(Value::as_u64)
            .sum()
    }

    /// Every event of one socket, in time order.
    pub fn flow(&self, cookie: u64) -> Vec<&Value> {
        let mut v: Vec<&Value> = self
            .events
            .iter()
            .filter(|e| e["cookie"].as_u64() == Some(cookie))
            .collect();
        v.sort_by_key(|e| e["ts_ns"].as_u64());
        v
    }

    /// No record was lost in the ring and every kernel count reached us as a record
    /// (except RTT callbacks, which are sampled by design).
    /// No record lost or undecodable; with every hook hit a record (detail for all flows),
    /// also each kind's kernel count equals the records received.
    pub fn assert_nothing_lost(&self) {
        let lost = self.counters["lost"].as_object().expect("lost");
        for (kind, n) in lost {
            assert_eq!(n.as_u64(), Some(0), "records lost for {kind}");
        }
        assert_eq!(self.counters["decode_errors"], 0);
        assert_eq!(
            self.recursion_misses(),
            0,
            "runs the kernel skipped (a probe already running on that CPU): {}",
            self.counters["recursion_misses"]
        );
        if !self.detail_all {
            return;
        }
        let events = self.counters["events"].as_object().expect("events");
        // The one kind of hit the kernel counts without a record, detail on: an accepted
        // socket's SYN_RECV announced before it has its own cookie (6.1, 6.12), counted apart.
        let unnamed = self.counters["unnamed_state_changes"]
            .as_u64()
            .expect("unnamed_state_changes");
        for (kind, n) in events {
            let mut records = self.counters["records"][kind].as_u64().unwrap_or(0);
            if kind == "state_change" {
                records += unnamed;
            }
            assert_eq!(
                n.as_u64(),
                Some(records),
                "kernel count vs records (+ unnamed) for {kind}"
            );
        }
        assert_eq!(self.counters["decode_errors"], 0);
    }
}

impl Tracer {
    /// The host daemon (with its lock in `run_dir`), scoped to a namespace.
    pub fn start_daemon(netns: &str, run_dir: &str) -> Tracer {
        Self::start_daemon_with(netns, run_dir, &[])
    }

    /// The daemon with extra flags; its exporter is off unless `extra` sets `--metrics-addr`
    /// (tests run in parallel and must not compete for the default port).
    pub fn start_daemon_with(netns: &str, run_dir: &str, extra: &[&str]) -> Tracer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_linkprobe"));
        cmd.args(["daemon", "--run-dir", run_dir, "-o", "json"]);
        // No namespace: the whole host (a test that watches several namespaces of its own).
        if !netns.is_empty() {
            cmd.args(["--netns", netns]);
        }
        for (flag, default) in TEST_DEFAULTS.into_iter().chain([("--metrics-addr", "off")]) {
            if !extra.contains(&flag) {
                cmd.args([flag, default]);
            }
        }
        Self::spawn(cmd.args(extra))
    }
}
