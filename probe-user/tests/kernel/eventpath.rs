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

/// One TCP SYN from `src:sport` to `dst:9`, IP header included (the kernel fills the IP
/// checksum and id).
fn syn_packet(src: [u8; 4], sport: u16, dst: [u8; 4]) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = libc::IPPROTO_TCP as u8;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let tcp = &mut p[20..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&9u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&u32::from(sport).to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    // The checksum over the pseudo-header (addresses, protocol, length) and the header.
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for w in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
    };
    add(&src);
    add(&dst);
    add(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
    add(tcp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p
}

/// SYNs to a closed port of `dst` from `n` distinct addresses of 10.100.0.0/16 (and
/// 10.101.0.0/16 past 65,536), through a raw socket: each one answered by a socketless RST.
fn spoofed_syns(dst: [u8; 4], n: u32) {
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let mut to: libc::sockaddr_in = std::mem::zeroed();
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from_ne_bytes(dst);
        for i in 0..n {
            let [_, b, c, d] = i.to_be_bytes();
            let src = [10, 100 + b, c, d];
            let p = syn_packet(src, 40_000 + (i % 1000) as u16, dst);
            let sent = libc::sendto(
                fd,
                p.as_ptr().cast(),
                p.len(),
                0,
                std::ptr::from_ref(&to).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            assert_eq!(sent, 40, "sendto: {}", std::io::Error::last_os_error());
        }
        libc::close(fd);
    }
}

#[test]
fn rsts_to_a_hundred_thousand_spoofed_sources_keep_the_loop_responsive_and_bounded() {
    if !can_run_kernel_tests("spoofed_sources") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    const SOURCES: u32 = 100_000;
    let ns = TestNetns::new("spoof");
    // A local address on one end of a veth pair (no ARP); replies to the spoofed /15 leave
    // through it and die at the other end (no forwarding).
    for args in [
        "link add v0 type veth peer name v1",
        "link set v0 arp off",
        "addr add 10.98.0.1/24 dev v0",
        "link set v0 up",
        "link set v1 up",
        "route add 10.100.0.0/15 dev v0",
    ] {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &ns.name]).args(args.split(' '));
        assert!(cmd.status().expect("ip").success(), "ip {args}");
    }
    let daemon = crate::common::api::Daemon::start(&ns.name, "spoof", &[]);
    let before = ns.nstat();
    let storm = {
        let name = ns.name.clone();
        std::thread::spawn(move || {
            crate::common::netns::enter_current_thread(&name);
            let start = Instant::now();
            spoofed_syns([10, 98, 0, 1], SOURCES);
            start.elapsed()
        })
    };
    // The API answers during the storm, each `status` within a bound.
    let mut slowest = Duration::ZERO;
    let mut asked = 0;
    while !storm.is_finished() || asked < 3 {
        let t = Instant::now();
        let status = daemon.json(&["status"]);
        slowest = slowest.max(t.elapsed());
        asked += 1;
        assert!(status["pid"].as_u64().is_some(), "{status}");
    }
    let took = storm.join().expect("storm");
    // Let the loop take the last records (each of its turns is bounded in time, so a backlog
    // takes several): every RST the kernel saw is then either received or counted lost.
    let caught_up = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = daemon.json(&["status"]);
        let field = |k: &str| status[k]["rst_sent"].as_u64().unwrap_or(0);
        let seen = field("kernel_events");
        if seen > 0 && field("records") + field("kernel_lost") == seen {
            break status;
        }
        assert!(
            Instant::now() < caught_up,
            "the loop never caught up: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let top = daemon.json(&["top", "--once"]);
    let after = ns.nstat();
    let trace_counters = daemon.stop();
    let out_rsts = delta(&before, &after, "TcpOutRsts");
    let rst_sent = trace_counters["events"]["rst_sent"].as_u64().unwrap_or(0);
    let received = trace_counters["records"]["rst_sent"].as_u64().unwrap_or(0);
    let lost = trace_counters["lost"]["rst_sent"].as_u64().unwrap_or(0);
    let scopes_tracked = top["scopes_tracked"].as_u64().expect("scopes_tracked");
    let scopes_evicted = top["scopes_evicted"].as_u64().expect("scopes_evicted");
    let detect = &trace_counters["anomalies"];
    eprintln!(
        "== {SOURCES} spoofed sources in {took:?}; {asked} status queries, slowest {slowest:?}"
    );
    report(
        "spoofed sources",
        &[
            ("rst_sent (kernel) vs TcpOutRsts", rst_sent, out_rsts),
            (
                "records + lost vs kernel rst_sent",
                received + lost,
                rst_sent,
            ),
            ("top scopes tracked (bound 4096)", scopes_tracked, 4096),
            ("RST records lost (ring full, counted)", lost, 0),
            (
                "top scopes evicted vs sources received + port - 4096",
                scopes_evicted,
                received + 1 - 4096,
            ),
            (
                "detector scopes evicted vs the same",
                detect["scopes_evicted"].as_u64().unwrap_or(0),
                received + 1 - 4096,
            ),
        ],
    );
    assert_eq!(out_rsts, u64::from(SOURCES), "every SYN got its RST");
    assert_eq!(rst_sent, out_rsts);
    assert_eq!(received + lost, rst_sent);
    assert!(scopes_tracked <= 4096);
    // Every source that reached the loop is a new peer scope, the port one more (always the
    // most recent): all but 4,096 were evicted, each counted.
    assert_eq!(scopes_evicted, received + 1 - 4096);
    assert!(detect["scopes_tracked"].as_u64() <= Some(4096), "{detect}");
    assert_eq!(detect["scopes_evicted"].as_u64(), Some(received + 1 - 4096));
    // Each turn of the loop is bounded in time (50 ms per drain), whatever a record costs: the
    // bound is loose for a debug build's CLI on a busy machine, not for the loop.
    assert!(
        slowest < Duration::from_secs(3),
        "a status query took {slowest:?} during the storm"
    );
    assert!(status["pid"].as_u64().is_some());
}
