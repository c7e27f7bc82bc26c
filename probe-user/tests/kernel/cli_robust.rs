//! API robustness on a real daemon: garbage, truncated, huge and unknown requests, idle and
//! excess connections, a watcher that stops reading, and users without permission. After each
//! the daemon still answers `status`, and the event path lost nothing.
use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    common::{
        api::{cli_at, Daemon},
        can_run_kernel_tests,
        netns::TestNetns,
        workload,
    },
    KERNEL,
};

fn connect(socket: &Path) -> (UnixStream, BufReader<UnixStream>) {
    let s = UnixStream::connect(socket).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn reply(r: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    r.read_line(&mut line).expect("a reply line");
    assert!(!line.is_empty(), "connection closed without a reply");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["v"], 1, "{line}");
    v["reply"].clone()
}

fn status_answers(daemon: &Daemon) -> Value {
    let (mut s, mut r) = connect(&daemon.socket);
    s.write_all(b"{\"v\":1,\"req\":{\"type\":\"status\"}}\n")
        .unwrap();
    let v = reply(&mut r);
    assert_eq!(v["type"], "status", "{v}");
    v
}

#[test]
fn garbage_truncated_huge_and_unknown_requests_leave_the_daemon_serving() {
    if !can_run_kernel_tests("api_robustness") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("apirobust");
    let daemon = Daemon::start(&ns.name, "apirobust", &[]);
    let started = Instant::now();
    assert_default_socket_is_root_only(&daemon.socket);
    // An idle client (slowloris): closed with a timeout error, checked at the end.
    let (_idle, mut idle_r) = connect(&daemon.socket);

    // Garbage, then an unknown request type, then a bad version, on one connection.
    let (mut s, mut r) = connect(&daemon.socket);
    s.write_all(b"\x00\x01\xffgarbage\n").unwrap();
    let v = reply(&mut r);
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{v}"
    );
    s.write_all(b"{\"v\":1,\"req\":{\"type\":\"reboot\"}}\n")
        .unwrap();
    let v = reply(&mut r);
    assert_eq!(v["code"], "bad_request", "{v}");
    assert!(v["message"].as_str().unwrap().contains("reboot"), "{v}");
    s.write_all(b"{\"v\":99,\"req\":{\"type\":\"status\"}}\n")
        .unwrap();
    assert_eq!(reply(&mut r)["code"], "unsupported_version");
    // The same connection still works.
    s.write_all(b"{\"v\":1,\"req\":{\"type\":\"flows\",\"limit\":1}}\n")
        .unwrap();
    assert_eq!(reply(&mut r)["type"], "flows");
    eprintln!("== garbage / unknown type / bad version: error replies, connection kept");

    // Truncated: half a request, then the client closes its write side.
    let (s, mut r) = connect(&daemon.socket);
    (&s).write_all(b"{\"v\":1,\"req\":{\"type\":\"sta").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let v = reply(&mut r);
    assert_eq!(v["code"], "bad_request", "{v}");
    eprintln!("== truncated request: {}", v["message"]);

    // 10 MiB without a newline: one error, then the daemon closes; it never buffers it all.
    let (s, mut r) = connect(&daemon.socket);
    // Bounded: a daemon that neither reads nor closes fails the test instead of hanging it.
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            while sent < 10 * 1024 * 1024 {
                match s.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(_) => break,
                }
            }
            sent
        })
    };
    let v = reply(&mut r);
    assert_eq!(v["code"], "too_large", "{v}");
    // Then the daemon closes: end of stream, or a reset (it closed with our bytes unread);
    // never the read timeout.
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the daemon did not close the connection after too_large: {e}"),
    }
    assert!(rest.is_empty(), "more after too_large: {rest:?}");
    let sent = writer.join().unwrap();
    eprintln!("== 10 MiB line: too_large after the first 64 KiB, connection closed ({sent} bytes got into the socket before the close)");
    assert!(
        sent < 10 * 1024 * 1024,
        "the daemon read the whole 10 MiB line"
    );

    // More connections than allowed: the excess are told so; the rest keep working.
    let mut held = Vec::new();
    let mut rejected = 0;
    for _ in 0..70 {
        let (s, r) = connect(&daemon.socket);
        held.push((s, r));
    }
    std::thread::sleep(Duration::from_millis(300));
    for (s, r) in &mut held {
        s.set_nonblocking(true).unwrap();
        let mut line = String::new();
        if r.read_line(&mut line).is_ok() && line.contains("too_many_clients") {
            rejected += 1;
        }
    }
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        rejected >= 70 - 64 - 2,
        "rejected {rejected} of 70 extra clients"
    );
    eprintln!("== 70 concurrent connections: {rejected} told too_many_clients");

    // Random bytes on many connections (a seeded xorshift: reproducible): every line the
    // daemon answers is an error reply; none crashes or stalls it.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut errors = 0;
    for _ in 0..300 {
        let len = (next() % 4096) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let (s, r) = connect(&daemon.socket);
        let _ = (&s).write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        // Every reply up to the daemon's close; a read timeout (a stalled daemon) fails.
        for line in r.lines() {
            let line = match line {
                Ok(line) => line,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("neither a reply nor a close within 20 s: {e}")
                }
                // A reset (the daemon closed with our bytes unread) also ends the stream.
                Err(_) => break,
            };
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(v["reply"]["type"], "error", "{line}");
            errors += 1;
        }
    }
    status_answers(&daemon);
    eprintln!("== 300 connections of random bytes: {errors} error replies, daemon still serving");

    // A watcher that stops reading: it loses items (told so), the event loop loses nothing.
    let (mut w, mut wr) = connect(&daemon.socket);
    w.write_all(b"{\"v\":1,\"req\":{\"type\":\"watch\"}}\n")
        .unwrap();
    assert_eq!(reply(&mut wr)["type"], "subscribed");
    // Two records each (the client's summary, the refusing RST): more than a watcher's
    // 4096-item queue.
    ns.enter(|| workload::refused_connects(9, 3000));
    // The server is not stuck behind the stalled watcher.
    let during = status_answers(&daemon);
    assert!(
        during["records"]["flow_end"].as_u64().unwrap() >= 3000,
        "{during}"
    );
    let mut overflow = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while overflow.is_none() && Instant::now() < deadline {
        let v = reply(&mut wr);
        if v["type"] == "overflow" {
            overflow = v["lost"].as_u64();
        }
    }
    let lost = overflow.expect("the stalled watcher was told what it lost");
    drop(w);
    let st = status_answers(&daemon);
    assert!(st["api"]["watch_lost"].as_u64().unwrap() >= lost, "{st}");
    let ring_lost: u64 = st["kernel_lost"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(ring_lost, 0, "the event path lost records: {st}");
    eprintln!(
        "== stalled watcher: told it lost {lost} items; status api.watch_lost={}; ring lost 0",
        st["api"]["watch_lost"]
    );

    // The idle client was closed with a timeout (after 10 s).
    let v = reply(&mut idle_r);
    assert_eq!(v["code"], "timeout", "{v}");
    eprintln!(
        "== idle client closed after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let st = status_answers(&daemon);
    eprintln!("== api counters after the abuse: {}", st["api"]);
    assert!(st["api"]["bad_requests"].as_u64().unwrap() >= 5 + errors);
    assert!(st["api"]["rejected_connections"].as_u64().unwrap() >= 1);
    // And the CLI itself still works.
    let out = cli_at(&daemon.socket, &["status"]);
    assert!(out.status.success());
    daemon.stop();
}

/// The socket as the daemon created it without `--api-group`: a socket file, root's, mode 0600
/// (`stat`, not what the daemon reports), and a non-root user is refused.
fn assert_default_socket_is_root_only(socket: &Path) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(socket).unwrap();
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(
        format!("{:o}", meta.mode() & 0o7777),
        "600",
        "default API socket mode"
    );
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    let out = setpriv("65534", socket);
    let msg = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "non-root on a 0600 socket: {msg}"
    );
    assert!(msg.contains("permission denied"), "{msg}");
}

fn setpriv(gid: &str, socket: &Path) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_linkprobe"))
        .args(["status", "--socket"])
        .arg(socket)
        .output()
        .expect("setpriv (util-linux)")
}

#[test]
fn api_socket_is_root_only_unless_a_group_is_given_and_errors_say_the_fix() {
    if !can_run_kernel_tests("api_permissions") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("apiperm");
    // gid 65534 may use the API; other non-root users may not.
    let daemon = Daemon::start(&ns.name, "apiperm", &["--api-group", "65534"]);
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, 65534));

    let out = setpriv("65533", &daemon.socket);
    let msg = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "== non-root, not in the group: exit {:?}: {msg}",
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(msg.contains("permission denied"), "{msg}");
    assert!(
        msg.contains("run as root") && msg.contains("--api-group"),
        "{msg}"
    );
    assert_eq!(msg.trim().lines().count(), 1, "one sentence: {msg}");

    let out = setpriv("65534", &daemon.socket);
    assert!(
        out.status.success(),
        "the api group may use the API: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("probes: ") && !status.contains("(degraded)"),
        "{status}"
    );

    // No daemon: the socket is missing, one sentence with the fix.
    let missing = daemon.run_dir.path().join("nope.sock");
    let out = cli_at(&missing, &["flows"]);
    let msg = String::from_utf8_lossy(&out.stderr);
    eprintln!("== no socket: exit {:?}: {msg}", out.status.code());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        msg.contains("no linkprobe daemon socket") && msg.contains("linkprobe daemon"),
        "{msg}"
    );
    assert_eq!(msg.trim().lines().count(), 1, "{msg}");
    // A stale socket file (nothing accepting): "not running".
    let stale = daemon.run_dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = cli_at(&stale, &["status"]);
    let msg = String::from_utf8_lossy(&out.stderr);
    eprintln!("== stale socket: exit {:?}: {msg}", out.status.code());
    assert_eq!(out.status.code(), Some(1));
    assert!(msg.contains("not running"), "{msg}");
    // Usage errors exit 2.
    let out = cli_at(&daemon.socket, &["flows", "--sort", "sideways"]);
    assert_eq!(out.status.code(), Some(2));
    daemon.stop();
}

/// `linkprobe watch` as uid/gid 65534 (the API group here): one connection held open.
fn watcher_as_nobody(socket: &Path) -> std::process::Child {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_linkprobe"))
        .args(["watch", "--socket"])
        .arg(socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)")
}

#[test]
fn one_uid_gets_at_most_16_connections_and_the_daemon_logs_who_asked() {
    if !can_run_kernel_tests("api_per_uid") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("apiuid");
    let mut daemon = Daemon::start(&ns.name, "apiuid", &["--api-group", "65534"]);
    // 20 watchers of one uid: 16 are served and stay, 4 are told the per-uid cap and exit.
    let mut watchers: Vec<_> = (0..20).map(|_| watcher_as_nobody(&daemon.socket)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = Vec::new();
    while refused.len() < 4 && Instant::now() < deadline {
        for w in &mut watchers {
            if refused.iter().any(|(pid, _)| *pid == w.id()) {
                continue;
            }
            if let Some(status) = w.try_wait().unwrap() {
                let mut msg = String::new();
                w.stderr.take().unwrap().read_to_string(&mut msg).unwrap();
                assert_eq!(status.code(), Some(1), "{msg}");
                refused.push((w.id(), msg));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Settle, then nothing else was refused.
    std::thread::sleep(Duration::from_millis(500));
    let mut still = 0;
    for w in &mut watchers {
        still += usize::from(w.try_wait().unwrap().is_none());
    }
    eprintln!(
        "== 20 watchers of uid 65534: {} refused, {still} served",
        refused.len()
    );
    assert_eq!((refused.len(), still), (4, 16), "{refused:?}");
    for (_, msg) in &refused {
        assert!(
            msg.contains("too many API connections from uid 65534")
                && msg.contains("at most 16 per user"),
            "{msg}"
        );
    }
    // Root is another uid: served while uid 65534 is at its cap; the refusals are counted.
    let st = daemon.json(&["status"]);
    assert_eq!(st["api"]["rejected_per_uid"], 4, "{}", st["api"]);
    assert_eq!(st["api"]["rejected_connections"], 4, "{}", st["api"]);
    assert_eq!(st["api"]["clients_now"], 16 + 1, "{}", st["api"]);
    let text = daemon.ok(&["status"]);
    assert!(
        text.contains("4 rejected (4 over the per-uid cap)"),
        "{text}"
    );
    // The daemon logged the peers, uid, pid and name: a refused one and a served one.
    let (pid, _) = &refused[0];
    let refused_line = format!("API connection from uid 65534 pid {pid} (linkprobe): refused");
    let served = watchers
        .iter()
        .map(|w| w.id())
        .find(|p| !refused.iter().any(|(r, _)| r == p))
        .unwrap();
    let served_line = format!("API connection from uid 65534 pid {served} (linkprobe): accepted");
    let found = std::cell::RefCell::new((false, false));
    daemon.wait_log(Duration::from_secs(10), |l| {
        let mut f = found.borrow_mut();
        f.0 |= l.contains(&refused_line);
        f.1 |= l.contains(&served_line);
        if l.contains(&refused_line) {
            eprintln!("== daemon log: {l}");
        }
        f.0 && f.1
    });
    // Slots come back when the watchers go: the uid is served again.
    for w in &mut watchers {
        let _ = w.kill();
        let _ = w.wait();
    }
    let out = setpriv("65534", &daemon.socket);
    assert!(
        out.status.success(),
        "uid 65534 served again after its watchers left: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.stop();
}
