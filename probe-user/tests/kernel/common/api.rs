//! A real `linkprobe daemon` with its API socket in a run directory of its own, and helpers
//! to run the real `linkprobe` CLI against it.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{
    linkprobe::RunDir,
    process::{Background, Pipe},
};

use super::tracer::Tracer;

pub struct Daemon {
    tracer: Option<Tracer>,
    /// After `tracer`: removed once the daemon is gone.
    pub run_dir: RunDir,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts the daemon scoped to `netns` (empty: the whole host, other traffic of the
    /// machine included) with a fresh run dir, and waits for its socket.
    pub fn start(netns: &str, tag: &str, extra: &[&str]) -> Daemon {
        let run_dir = RunDir::create(&format!("lpt-{tag}")).expect("run dir");
        let tracer = Tracer::start_daemon_with(netns, run_dir.as_str(), extra);
        let socket = run_dir.path().join("api.sock");
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the daemon never created {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            tracer: Some(tracer),
            run_dir,
            socket,
        }
    }

    /// SIGINT; the daemon must exit 0 and remove its socket. Returns its final counters.
    pub fn stop(mut self) -> Value {
        let counters = self
            .tracer
            .take()
            .map_or(Value::Null, |t| t.stop().counters);
        assert!(!self.socket.exists(), "the daemon left its socket behind");
        counters
    }

    /// Waits for a line of the daemon's log that `wanted` accepts.
    pub fn wait_log(&mut self, limit: Duration, wanted: impl Fn(&str) -> bool) -> String {
        self.tracer
            .as_mut()
            .expect("the daemon runs")
            .wait_log(limit, wanted)
    }

    /// Runs `linkprobe ARGS --socket <ours>` to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_at(&self.socket, args)
    }

    /// Runs the CLI and returns stdout, asserting exit 0.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "linkprobe {args:?} exited {}: {stderr}",
            out.status
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs the CLI with `-o json` appended and parses its stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

pub fn cli_at(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_linkprobe"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .env("NO_COLOR", "1")
        .output()
        .expect("run linkprobe")
}

/// A streaming CLI process (`watch`, `anomalies --watch`): its stdout lines as they come;
/// stopped when dropped.
pub struct Stream {
    process: Background,
}

impl Stream {
    /// Starts `linkprobe ARGS` and waits until it says (on stderr) that it is subscribed.
    pub fn start(socket: &Path, args: &[&str]) -> Stream {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_linkprobe"));
        cmd.args(args)
            .arg("--socket")
            .arg(socket)
            .env("NO_COLOR", "1");
        let mut process =
            Background::start(&mut cmd, Some("[linkprobe-cli]")).expect("spawn linkprobe");
        process
            .wait_for(Pipe::Stderr, Duration::from_secs(20), |l| {
                l.starts_with("linkprobe: watching ")
            })
            .unwrap_or_else(|e| panic!("the stream never subscribed: {e}"));
        Stream { process }
    }

    /// Lines until `done` says enough or `limit` passes.
    pub fn collect_until(
        &self,
        limit: Duration,
        mut done: impl FnMut(&[String]) -> bool,
    ) -> Vec<String> {
        let start = Instant::now();
        let mut got = Vec::new();
        while start.elapsed() < limit && !done(&got) {
            if let Ok(l) = self
                .process
                .stdout()
                .recv_timeout(Duration::from_millis(100))
            {
                got.push(l);
            }
        }
        got
    }
}

/// Checks that a table's columns are aligned: every header word starts a column, and in
/// every row the character before each column start is a space and the column is not empty.
pub fn assert_aligned_table(text: &str, header_start: &str) {
    let lines: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
    let header: String = lines.first().expect("a header line").iter().collect();
    assert!(header.starts_with(header_start), "header: {header}");
    let mut starts = vec![0usize];
    for i in 1..lines[0].len() {
        if lines[0][i] != ' ' && lines[0][i - 1] == ' ' {
            starts.push(i);
        }
    }
    assert!(starts.len() >= 3, "header has columns: {header}");
    for row in lines
        .iter()
        .skip(1)
        .filter(|r| !r.is_empty() && r[0] != '(')
    {
        let text: String = row.iter().collect();
        for &s in &starts[1..] {
            assert!(s < row.len(), "row shorter than the header: {text:?}");
            assert!(
                row[s - 1] == ' ' && row[s] != ' ',
                "column at {s} not aligned in {text:?} (header {header:?})"
            );
        }
    }
}
