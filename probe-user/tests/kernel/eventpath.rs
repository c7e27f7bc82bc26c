//! The event path under hostile conditions: a stdout nobody reads during a connection storm
//! (SIGTERM still handled at once, counts still the kernel's), and a process name full of
//! terminal escapes (shown escaped by every output).
use std::{
    process::{Child, Command, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::process::{line_channel, Background, Pipe};

use crate::{
    common::{
        api::{cli_at, Stream},
        can_run_kernel_tests,
        netns::{delta, TestNetns},
        workload,
    },
    report, KERNEL,
};

/// A child killed when dropped (a test that fails must not leave a daemon behind).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn line_within(rx: &Receiver<String>, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if pred(&l) => return l,
            Ok(_) => {}
            Err(e) => panic!("no such line within {limit:?}: {e}"),
        }
    }
}

#[test]
fn sigterm_is_handled_at_once_while_stdout_is_stalled_under_a_storm() {
    if !can_run_kernel_tests("stalled_stdout") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("stall");
    // `-o text` into a pipe this test holds and never reads: it is full after a few hundred
    // lines, and every write after that would block.
    let child = Command::new(env!("CARGO_BIN_EXE_linkprobe"))
        .args(["trace", "-o", "text", "--netns", &ns.name])
        .args(["--drain-interval-ms", "20", "--backup-probes", "always"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn linkprobe");
    let mut child = Killed(child);
    let _unread = child.0.stdout.take().expect("stdout");
    let stderr = line_channel(
        child.0.stderr.take().expect("stderr"),
        Some("[linkprobe]".into()),
    );
    line_within(&stderr, Duration::from_secs(60), |l| {
        l.starts_with("linkprobe: ready")
    });
    let before = ns.nstat();
    // Refused connects as fast as they go; the signal comes the moment the last one is
    // done, with the loop's backlog at its fullest and stdout long stalled. (No event
    // follows it, so the final counts can be compared with nstat exactly.)
    let made = ns.enter(|| workload::refused_storm(9, 20_000, Duration::from_secs(2)));
    // SAFETY: signalling our own child, not waited for yet.
    unsafe {
        libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "linkprobe still running 10 s after SIGTERM: its loop is blocked"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = sent.elapsed();
    let after = ns.nstat();
    assert!(status.success(), "linkprobe exited with {status}");
    let counters_line = line_within(&stderr, Duration::from_secs(5), |l| {
        l.starts_with("linkprobe: final counters ")
    });
    let counters: Value = serde_json::from_str(
        counters_line
            .strip_prefix("linkprobe: final counters ")
            .expect("prefix"),
    )
    .expect("counters JSON");
    eprintln!(
        "== SIGTERM under a storm ({made} refused connects), stdout stalled: exit {} ms later",
        took.as_millis()
    );
    // One second to take the signal, the final drain of the ring and 250 ms for stdout.
    assert!(
        took < Duration::from_millis(2000),
        "exit took {took:?} after SIGTERM"
    );
    // Every fact the kernel counted reached the loop as a record or is counted lost; nothing
    // waited on stdout.
    let events = counters["events"].as_object().expect("events");
    let unnamed = counters["unnamed_state_changes"].as_u64().unwrap_or(0);
    for (kind, n) in events {
        let records = counters["records"][kind].as_u64().unwrap_or(0);
        let lost = counters["lost"][kind].as_u64().unwrap_or(0);
        let extra = if kind == "state_change" { unnamed } else { 0 };
        assert_eq!(
            n.as_u64(),
            Some(records + lost + extra),
            "{kind}: kernel count vs records + lost"
        );
    }
    assert_eq!(counters["decode_errors"], 0);
    let rst_sent = counters["events"]["rst_sent"].as_u64().unwrap_or(0);
    let connects = counters["events"]["connect"].as_u64().unwrap_or(0);
    let dropped = counters["output_dropped_lines"].as_u64().expect("dropped");
    let out_rsts = delta(&before, &after, "TcpOutRsts");
    let opens = delta(&before, &after, "TcpActiveOpens");
    report(
        "stalled stdout",
        &[
            ("rst_sent vs TcpOutRsts", rst_sent, out_rsts),
            ("connect vs TcpActiveOpens", connects, opens),
            ("output lines dropped (stdout stalled)", dropped, 0),
        ],
    );
    assert_eq!(rst_sent, out_rsts);
    assert_eq!(connects, opens);
    assert_eq!(opens, made);
    assert!(
        dropped > 0,
        "a stalled stdout drops lines, counted: {counters}"
    );
}

#[test]
fn a_process_name_with_terminal_escapes_is_shown_escaped_everywhere() {
    if !can_run_kernel_tests("evil_comm") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("comm");
    let run_dir = testkit::linkprobe::RunDir::create("lpt-comm").expect("run dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_linkprobe"));
    cmd.args(["daemon", "-o", "text", "--metrics-addr", "off"])
        .args(["--run-dir", run_dir.as_str(), "--netns", &ns.name])
        .args(["--drain-interval-ms", "20", "--backup-probes", "always"])
        .env("NO_COLOR", "1");
    let mut daemon = Background::start(&mut cmd, Some("[linkprobe]")).expect("daemon");
    daemon
        .wait_for(Pipe::Stderr, Duration::from_secs(60), |l| {
            l.starts_with("linkprobe: ready")
        })
        .expect("ready");
    let socket = run_dir.path().join("api.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no API socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let watch = Stream::start(&socket, &["watch", "--port", "9"]);
    // A shell renames itself (ESC, a colour sequence, a right-to-left override), then
    // connects to a closed port: its flow is owned by that name.
    let script = "printf '\\033[31mev\\342\\200\\256il' > /proc/self/comm && \
                  { exec 3<>/dev/tcp/127.0.0.1/9; } 2>/dev/null; true";
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.name, "bash", "-c", script])
        .status()
        .expect("bash");
    assert!(status.success());
    let escaped = "\\x1b[31mev\\u{202e}il";
    let raw = ['\u{1b}', '\u{202e}'];
    let watched = watch.collect_until(Duration::from_secs(10), |got| {
        got.iter().any(|l| l.contains(escaped))
    });
    drop(watch);
    let flows = cli_at(&socket, &["flows", "--port", "9"]);
    let flows = String::from_utf8(flows.stdout).expect("utf-8");
    let flows_json = cli_at(&socket, &["flows", "--port", "9", "-o", "json"]);
    let flows_json: Value = serde_json::from_slice(&flows_json.stdout).expect("flows JSON");
    let exited = daemon.stop(Duration::from_secs(60)).expect("daemon stops");
    eprintln!("== watch:\n{}\n== flows:\n{flows}", watched.join("\n"));
    for (what, text) in [
        ("watch", watched.join("\n")),
        ("flows", flows.clone()),
        ("the daemon's -o text", exited.stdout.join("\n")),
    ] {
        assert!(
            text.contains(escaped),
            "{what} shows the escaped name: {text}"
        );
        assert!(!text.contains(raw), "{what} carries a raw ESC or override");
    }
    let comms: Vec<&str> = flows_json
        .as_array()
        .expect("flows")
        .iter()
        .filter_map(|f| f["comm"].as_str())
        .collect();
    assert!(comms.contains(&escaped), "{comms:?}");
}
