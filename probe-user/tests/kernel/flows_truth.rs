//! What `flows` says about a connection is true from connect() on, with real programs in the
//! test's namespace: curl connecting to a port whose SYNs nftables drops is listed SYN_SENT
//! and owned by curl while it waits.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::process::Background;

use crate::{
    common::{api::Daemon, can_run_kernel_tests, netns::TestNetns},
    KERNEL,
};

/// The port whose SYNs the namespace drops.
const DROPPED_PORT: u16 = 9999;

/// `ip netns exec NS ARGS…` (ip execs the program: the child's pid is the program's).
fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// curl connecting to `url`, giving up after `timeout_secs` (its exit code 28 then); a child
/// that ends on its own.
fn curl(ns: &str, timeout_secs: u32, url: &str) -> Child {
    in_ns(
        ns,
        &[
            "curl",
            "-s",
            "--connect-timeout",
            &timeout_secs.to_string(),
            url,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start curl")
}

fn drop_syns_to(ns: &TestNetns, port: u16) {
    ns.nft(&format!(
        "table inet lpsyn {{\n chain input {{\n type filter hook input priority 0;\n \
         tcp dport {port} tcp flags & (syn | ack) == syn drop\n }}\n}}\n"
    ));
}

/// The local ports of the namespace's sockets in SYN_SENT, as `ss` lists them.
fn syn_sent_ports(ns: &str) -> Vec<u16> {
    let out = in_ns(ns, &["ss", "-Htn", "state", "syn-sent"])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter_map(|local| local.rsplit(':').next()?.parse().ok())
        .collect()
}

fn rows(v: &Value) -> &Vec<Value> {
    v.as_array().expect("flows array")
}

#[test]
fn connecting_sockets_are_listed_syn_sent_with_their_owner_from_connect_on() {
    if !can_run_kernel_tests("connecting_sockets_listed") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("connecting");
    drop_syns_to(&ns, DROPPED_PORT);
    let daemon = Daemon::start(&ns.name, "connecting", &[]);
    // A query right before the connects: answering the next ones from this pass would miss
    // them (the pass was rate-limited to one a second).
    let before = daemon.json(&["flows", "--state", "SYN_SENT"]);
    assert!(
        rows(&before).is_empty(),
        "nothing connecting yet: {before:#}"
    );
    let before_counters = daemon.json(&["status"]);

    let url = format!("http://127.0.0.1:{DROPPED_PORT}/");
    let started = Instant::now();
    let mut curls: Vec<Child> = (0..2).map(|_| curl(&ns.name, 4, &url)).collect();
    let pids: Vec<u64> = curls.iter().map(|c| u64::from(c.id())).collect();
    let waited = Instant::now();
    let seen_syn_sent = loop {
        let ports = syn_sent_ports(&ns.name);
        if ports.len() >= 2 {
            break ports;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "curl never reached SYN_SENT"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let syn_sent = daemon.json(&["flows", "--state", "SYN_SENT"]);
    let open = daemon.json(&[
        "flows",
        "--port",
        &DROPPED_PORT.to_string(),
        "--state",
        "open",
    ]);
    let by_comm = daemon.json(&["flows", "--comm", "curl"]);
    let text = daemon.ok(&[
        "flows",
        "--port",
        &DROPPED_PORT.to_string(),
        "--state",
        "open",
    ]);
    let status = daemon.json(&["status"]);
    let took = started.elapsed();
    // Before the first SYN retransmit (1 s after connect()) no record of these flows can have
    // reached the daemon: what it lists, it learnt from the kernel's flow state. (A host too
    // slow to ask within that second still checks the rest.)
    let early = took < Duration::from_millis(950);
    // The ports ss listed before the queries and after them: a slow host's curls may have
    // given up (4 s) by the second reading.
    let mut ports = syn_sent_ports(&ns.name);
    ports.extend(seen_syn_sent);
    for (what, got) in [
        ("--state SYN_SENT", &syn_sent),
        ("--port --state open", &open),
        ("--comm curl", &by_comm),
    ] {
        let got = rows(got);
        assert_eq!(got.len(), 2, "{what}: {got:#?}");
        for f in got {
            assert_eq!(f["state"], "SYN_SENT", "{what}: {f:#}");
            assert_eq!(f["role"], "client", "{what}: {f:#}");
            assert_eq!(f["comm"], "curl", "{what}: {f:#}");
            assert!(pids.contains(&f["pid"].as_u64().unwrap()), "{what}: {f:#}");
            assert_eq!(
                f["remote"],
                format!("127.0.0.1:{DROPPED_PORT}"),
                "{what}: {f:#}"
            );
            let port: u16 = f["local"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                ports.contains(&port),
                "{what}: {f:#} not among ss's {ports:?}"
            );
            if early {
                assert_eq!(
                    f["syn_retransmits"], 0,
                    "{what}: before the first retransmit"
                );
            }
        }
    }
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{text}");
    for line in &lines {
        assert!(line.contains("SYN_SENT"), "{text}");
        assert!(
            pids.iter().any(|p| line.contains(&format!("curl/{p}"))),
            "{text}"
        );
    }
    eprintln!("== flows --port {DROPPED_PORT} --state open, {took:?} after connect():\n{text}");

    // No ring record was spent on the connects (the iterator listed them): none arrived.
    let records = |s: &Value| -> u64 {
        s["records"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
    };
    if early {
        assert_eq!(
            records(&status),
            records(&before_counters),
            "records for the connects: {:#}",
            status["records"]
        );
    }
    for c in &mut curls {
        let _ = c.kill();
        let _ = c.wait();
    }
    daemon.stop();
}

/// Debian's python3, not a version manager's shim.
const PYTHON3: &str = "/usr/bin/python3";

/// `python3 -m http.server PORT` in the namespace, ready.
fn http_server(ns: &str, port: u16) -> Background {
    let port = port.to_string();
    let mut server = Background::start(
        &mut in_ns(
            ns,
            &[
                PYTHON3,
                "-u",
                "-m",
                "http.server",
                &port,
                "--bind",
                "127.0.0.1",
            ],
        ),
        Some("[http.server]"),
    )
    .expect("start python3 -m http.server");
    server
        .wait_for(
            testkit::process::Pipe::Stdout,
            Duration::from_secs(20),
            |l| l.contains("Serving HTTP"),
        )
        .expect("http.server ready");
    server
}

/// curl fetches `/` from `port`: the bytes of its request and of the response (headers and
/// body), as curl counts them.
fn fetch(ns: &str, port: u16) -> (u64, u64) {
    let url = format!("http://127.0.0.1:{port}/");
    let out = in_ns(
        ns,
        &[
            "curl",
            "-sf",
            "-o",
            "/dev/null",
            "-w",
            "%{size_request} %{size_header} %{size_download}",
            &url,
        ],
    )
    .output()
    .expect("curl");
    assert!(out.status.success(), "curl {url}: {}", out.status);
    let sizes: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().expect("a size"))
        .collect();
    (sizes[0], sizes[1] + sizes[2])
}

/// The accepted (server) flows on local `port`, once there are `n`.
fn server_flows(daemon: &Daemon, port: u16, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let flows = daemon.json(&["flows", "--port", &port.to_string(), "--limit", "1000"]);
        let servers: Vec<Value> = rows(&flows)
            .iter()
            .filter(|f| f["role"] == "server")
            .cloned()
            .collect();
        if servers.len() >= n || Instant::now() > deadline {
            return servers;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn accepted_sockets_belong_to_their_listeners_owner_even_one_older_than_the_daemon() {
    // And both ends count the same payload bytes (issue 15: "client sent 86 B, server
    // received 85 B").
    if !can_run_kernel_tests("accepted_sockets_owner") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    const EARLY: u16 = 8181;
    const LATE: u16 = 8182;
    let ns = TestNetns::new("accepted");
    // Listening before the daemon starts: the kernel never sees its listen().
    let early = http_server(&ns.name, EARLY);
    let daemon = Daemon::start(&ns.name, "accepted", &[]);
    let late = http_server(&ns.name, LATE);
    let sizes: Vec<(u16, (u64, u64))> = [EARLY, LATE, EARLY]
        .into_iter()
        .map(|port| (port, fetch(&ns.name, port)))
        .collect();
    for (port, server, n) in [(EARLY, &early, 2), (LATE, &late, 1)] {
        let pid = u64::from(server.pid().unwrap());
        let flows = server_flows(&daemon, port, n);
        assert_eq!(flows.len(), n, "accepted flows on {port}: {flows:#?}");
        for f in &flows {
            assert_eq!(f["comm"], "python3", "port {port}: {f:#}");
            assert_eq!(f["pid"].as_u64(), Some(pid), "port {port}: {f:#}");
        }
        let cookie = flows[0]["cookie"].as_u64().unwrap().to_string();
        let story = daemon.ok(&["flow", &cookie]);
        assert!(
            story.contains(&format!("process  python3/{pid}")),
            "flow {cookie}:\n{story}"
        );
        let by_comm = daemon.json(&["flows", "--comm", "python3", "--port", &port.to_string()]);
        assert_eq!(rows(&by_comm).len(), n, "--comm python3: {by_comm:#}");
        // Both ends agree on the payload, and with curl: no SYN or FIN counted in.
        let all = daemon.json(&["flows", "--port", &port.to_string()]);
        for server in &flows {
            let client = rows(&all)
                .iter()
                .find(|c| c["role"] == "client" && c["local"] == server["remote"])
                .unwrap_or_else(|| panic!("the client of {server:#} in {all:#}"));
            let (request, response) = sizes
                .iter()
                .find(|(p, _)| *p == port)
                .map(|(_, s)| *s)
                .unwrap();
            assert_eq!(client["payload_sent"].as_u64(), Some(request), "{client:#}");
            assert_eq!(
                server["payload_received"].as_u64(),
                Some(request),
                "{server:#}"
            );
            assert_eq!(
                server["payload_sent"].as_u64(),
                Some(response),
                "{server:#}"
            );
            assert_eq!(
                client["payload_received"].as_u64(),
                Some(response),
                "{client:#}"
            );
        }
    }
    let text = daemon.ok(&["flows", "--port", &EARLY.to_string()]);
    eprintln!("== flows --port {EARLY} (listener older than the daemon):\n{text}");
    // `top`: each local port's row names its listener's owner. `top` lists only scopes with
    // some of what it ranks by (RSTs here), so one aborted connection per port gives each a row.
    for port in [EARLY, LATE] {
        ns.enter(move || {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            testkit::workload::set_linger_zero(&s).expect("SO_LINGER 0");
        });
    }
    let has_rows = |top: &serde_json::Value| {
        [EARLY, LATE].iter().all(|port| {
            top["rows"].as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["scope"] == format!("local port {port}").as_str())
            })
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut top = daemon.json(&["top", "--once", "--limit", "100"]);
    while !has_rows(&top) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        top = daemon.json(&["top", "--once", "--limit", "100"]);
    }
    for (port, server) in [(EARLY, &early), (LATE, &late)] {
        let scope = format!("local port {port}");
        let row = top["rows"]
            .as_array()
            .expect("top rows")
            .iter()
            .find(|r| r["scope"] == scope.as_str())
            .unwrap_or_else(|| panic!("no {scope} row in {top:#}"));
        assert_eq!(
            row["process"],
            format!("python3/{}", server.pid().unwrap()),
            "{row:#}"
        );
    }
    eprintln!("== top --once:\n{}", daemon.ok(&["top", "--once"]));
    drop((early, late));
    daemon.stop();
}

/// Sum of `family{…}` samples whose labels contain every one of `labels`.
fn metric_sum(text: &str, family: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn connects_the_app_abandoned_are_not_kernel_timeouts() {
    if !can_run_kernel_tests("connects_abandoned") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    const ABANDONED: usize = 4;
    const TIMED_OUT: usize = 2;
    let ns = TestNetns::new("abandoned");
    drop_syns_to(&ns, DROPPED_PORT);
    let metrics = testkit::linkprobe::free_loopback_addr().expect("a free port");
    let metrics_arg = metrics.to_string();
    let daemon = Daemon::start(&ns.name, "abandoned", &["--metrics-addr", &metrics_arg]);
    let before = ns.nstat();
    let url = format!("http://127.0.0.1:{DROPPED_PORT}/");
    // curl gives up after 2 s (one SYN retransmit at 1 s); the kernel, with TCP_SYNCNT 1, after
    // 3 s (SYN, 1 s, 2 s): both at once.
    // A connect closed at once (before its first SYN retransmit: no other hit noted its local
    // port, released before the kernel announces its CLOSE): abandoned, with its port.
    let (quick, quick_port) = ns.enter(|| {
        let (s, cookie) = crate::common::workload::client_socket();
        s.set_nonblocking(true).expect("non-blocking");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], DROPPED_PORT).into();
        let _ = s.connect(&addr.into());
        let port = s
            .local_addr()
            .expect("local address")
            .as_socket()
            .expect("an inet address")
            .port();
        std::thread::sleep(Duration::from_millis(100));
        (cookie, port)
    });
    let curls: Vec<Child> = (0..ABANDONED).map(|_| curl(&ns.name, 2, &url)).collect();
    let timed_out = ns.enter(|| crate::common::workload::syn_timeouts(DROPPED_PORT, TIMED_OUT, 1));
    let mut curl_pids = Vec::new();
    for mut c in curls {
        curl_pids.push(u64::from(c.id()));
        let status = c.wait().expect("curl ends");
        // curl's exit code 28: operation timed out (its own timeout).
        assert_eq!(status.code(), Some(28), "curl: {status}");
    }
    let after = ns.nstat();
    let attempt_fails = crate::common::netns::delta(&before, &after, "TcpAttemptFails");
    assert_eq!(
        attempt_fails, TIMED_OUT as u64,
        "nstat counts only the kernel's timeouts"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let (abandoned, timeouts) = loop {
        let flows = daemon.json(&["flows", "--failed", "--limit", "1000"]);
        let of = |cause: &str| -> Vec<Value> {
            rows(&flows)
                .iter()
                .filter(|f| f["close"] == cause)
                .cloned()
                .collect()
        };
        let (a, t) = (of("abandoned"), of("timeout"));
        if (a.len() > ABANDONED && t.len() >= TIMED_OUT) || Instant::now() > deadline {
            break (a, t);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let quick_flow = abandoned
        .iter()
        .find(|f| f["cookie"].as_u64() == Some(quick))
        .unwrap_or_else(|| panic!("the quickly closed connect {quick}: {abandoned:#?}"));
    assert_eq!(
        quick_flow["local"],
        format!("127.0.0.1:{quick_port}"),
        "{quick_flow:#}"
    );
    assert_eq!(quick_flow["syn_retransmits"], 0, "{quick_flow:#}");
    let abandoned: Vec<Value> = abandoned
        .into_iter()
        .filter(|f| f["cookie"].as_u64() != Some(quick))
        .collect();
    assert_eq!(abandoned.len(), ABANDONED, "{abandoned:#?}");
    for f in &abandoned {
        assert_eq!(f["comm"], "curl", "{f:#}");
        assert!(curl_pids.contains(&f["pid"].as_u64().unwrap()), "{f:#}");
    }
    let mut got: Vec<u64> = timeouts
        .iter()
        .filter_map(|f| f["cookie"].as_u64())
        .collect();
    got.sort_unstable();
    let mut want = timed_out.clone();
    want.sort_unstable();
    assert_eq!(
        got, want,
        "the kernel's timeouts are the TCP_SYNCNT sockets"
    );

    let cookie = abandoned[0]["cookie"].as_u64().unwrap().to_string();
    let story = daemon.ok(&["flow", &cookie]);
    assert!(story.contains("abandoned"), "{story}");
    assert!(
        story.contains("aborted by the app after 2."),
        "root cause of an abandoned connect:\n{story}"
    );
    let story = daemon.ok(&["flow", &timed_out[0].to_string()]);
    assert!(
        story.contains("timed out in the kernel"),
        "root cause of a kernel timeout:\n{story}"
    );
    eprintln!("== flow {} (kernel timeout):\n{story}", timed_out[0]);

    let anomalies = daemon.ok(&["anomalies"]);
    assert!(anomalies.contains("connect_abandoned"), "{anomalies}");
    assert!(anomalies.contains("connect_timeout"), "{anomalies}");

    // The exporter's snapshot is published once a second.
    let family = "linkprobe_tcp_connect_failures_total";
    let peer = format!("peer=\"127.0.0.1:{DROPPED_PORT}\"");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = crate::common::http::get(metrics, "/metrics")
            .expect("GET /metrics")
            .text();
        let done = metric_sum(&text, family, &["cause=\"abandoned\"", &peer]) > ABANDONED as u64
            && metric_sum(&text, family, &["cause=\"timeout\"", &peer]) >= TIMED_OUT as u64;
        if done || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let shown: Vec<&str> = text.lines().filter(|l| l.starts_with(family)).collect();
    eprintln!("== /metrics:\n{}", shown.join("\n"));
    assert_eq!(
        metric_sum(&text, family, &["cause=\"abandoned\"", &peer]),
        ABANDONED as u64 + 1
    );
    assert_eq!(
        metric_sum(&text, family, &["cause=\"timeout\"", &peer]),
        attempt_fails,
        "cause=\"timeout\" equals nstat TcpAttemptFails"
    );
    daemon.stop();
}
