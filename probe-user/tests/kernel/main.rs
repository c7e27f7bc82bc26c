//! Real-kernel tests: real programs attached, real sockets, each in a network namespace the
//! test creates. Every count is compared with an independent oracle: the test's own operation
//! counts, the cookies of its own sockets (`SO_COOKIE`), and `nstat` deltas of the namespace.
mod cli;
mod cli_robust;
mod common;
mod detect;
mod envoy;
mod eventpath;
mod exactness;
mod exporter;
mod exporter_abuse;
mod flows_truth;
mod incidents;
mod limits;
mod names;
mod pods;
mod prometheus_harness;
mod repeat;
mod restart;
mod retransmit;
mod summary;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::TcpListener,
    process::Command,
    sync::RwLock,
    time::Duration,
};

use common::{
    can_run_kernel_tests,
    netns::{delta, nft, TestNetns},
    send_reset_has_reason,
    tracer::Tracer,
    workload,
};

/// Scenario tests share the kernel (read); the clean-detach test needs it to itself (write).
pub(crate) static KERNEL: RwLock<()> = RwLock::new(());

const ALL_PROBES: [&str; 7] = [
    "lp_state",
    "lp_rst_received",
    "lp_rst_sent",
    "lp_retransmit",
    "lp_retrans_synack",
    "lp_sock_ops",
    "lp_open_flows",
];

fn set(v: &[u64]) -> BTreeSet<u64> {
    v.iter().copied().collect()
}

pub(crate) fn report(test: &str, figures: &[(&str, u64, u64)]) {
    eprintln!("== {test}: linkprobe vs oracle");
    for (what, ours, oracle) in figures {
        eprintln!("   {what:<40} linkprobe={ours:<6} oracle={oracle}");
    }
}

#[test]
fn refused_connects_are_received_rsts_with_client_cookies() {
    if !can_run_kernel_tests("refused_connects") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    const N: usize = 25;
    let ns = TestNetns::new("refused");
    let tracer = Tracer::start(&ns.name, &[]);
    assert_eq!(
        tracer.attached(),
        ALL_PROBES.iter().map(|s| s.to_string()).collect()
    );
    let before = ns.nstat();
    let cookies = ns.enter(|| workload::refused_connects(9, N));
    let after = ns.nstat();
    let trace = tracer.stop();
    trace.assert_nothing_lost();

    let out_rsts = delta(&before, &after, "TcpOutRsts");
    let attempt_fails = delta(&before, &after, "TcpAttemptFails");
    let active_opens = delta(&before, &after, "TcpActiveOpens");
    report(
        "refused connects",
        &[
            (
                "rst_received (kernel count)",
                trace.kernel("events", "rst_received"),
                N as u64,
            ),
            (
                "rst_sent (kernel count) vs TcpOutRsts",
                trace.kernel("events", "rst_sent"),
                out_rsts,
            ),
            (
                "connect_failed vs TcpAttemptFails",
                trace.misc("connect_failed"),
                attempt_fails,
            ),
            (
                "connect vs TcpActiveOpens",
                trace.kernel("events", "connect"),
                active_opens,
            ),
        ],
    );
    assert_eq!(out_rsts, N as u64, "nstat TcpOutRsts");
    assert_eq!(trace.kernel("events", "rst_received"), N as u64);
    assert_eq!(set(&trace.cookies("rst_received")), set(&cookies));
    assert_eq!(trace.kernel("events", "rst_sent"), out_rsts);
    // The refusing side has no socket: those RSTs are counted as cookie-less, not dropped.
    assert_eq!(trace.kernel("no_cookie", "rst_sent"), N as u64);
    assert!(trace
        .of_kind("rst_sent")
        .all(|e| e["no_socket"] == true && e["cookie"].is_null()));
    assert!(trace.of_kind("rst_sent").all(|e| e["remote"]
        .as_str()
        .is_some_and(|r| r.starts_with("127.0.0.1:"))
        && e["local"] == "127.0.0.1:9"));
    assert_eq!(trace.misc("connect_failed"), attempt_fails);
    assert_eq!(attempt_fails, N as u64);
    assert_eq!(trace.kernel("events", "connect"), active_opens);
    assert_eq!(set(&trace.cookies("connect")), set(&cookies));
    for c in &cookies {
        let flow = trace.flow(*c);
        let kinds: Vec<&str> = flow.iter().filter_map(|e| e["kind"].as_str()).collect();
        assert!(
            kinds.contains(&"connect") && kinds.contains(&"rst_received"),
            "{kinds:?}"
        );
        // The flow's summary: it ended from SYN_SENT with ECONNREFUSED after one RST.
        let end = flow
            .iter()
            .find(|e| e["kind"] == "flow_end")
            .unwrap_or_else(|| panic!("no flow_end for cookie {c}: {kinds:?}"));
        assert_eq!(end["old_state"], "SYN_SENT", "{end}");
        assert_eq!(
            end["sk_err"], 111,
            "cookie {c}: the kernel's error is ECONNREFUSED"
        );
        assert_eq!(end["flow"]["rst_received"], 1, "{end}");
        assert_eq!(end["flow"]["role"], "client", "{end}");
        assert_eq!(
            end["local"].as_str().map(|l| l.ends_with(":0")),
            Some(false),
            "{end}"
        );
    }
    // 25 RSTs within a second from one peer and on one service port: the kernel's own
    // repeat-RST check fires once per scope and window.
    let scopes: BTreeSet<&str> = trace
        .of_kind("repeat_rst")
        .filter_map(|e| e["repeat_scope"].as_str())
        .collect();
    assert_eq!(
        scopes,
        BTreeSet::from(["local_port", "peer"]),
        "repeat_rst scopes"
    );
    assert!(trace
        .of_kind("repeat_rst")
        .filter(|e| e["repeat_scope"] == "local_port")
        .all(|e| e["local"] == "127.0.0.1:9"));
}

#[test]
fn linger_zero_aborts_are_sent_rsts_with_cookie_and_reason() {
    if !can_run_kernel_tests("linger_zero_aborts") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    const N: usize = 25;
    let ns = TestNetns::new("linger");
    let tracer = Tracer::start(&ns.name, &[]);
    let before = ns.nstat();
    let (clients, servers) = ns.enter(|| workload::linger_zero_aborts(N));
    let after = ns.nstat();
    let trace = tracer.stop();
    trace.assert_nothing_lost();

    let out_rsts = delta(&before, &after, "TcpOutRsts");
    let passive = delta(&before, &after, "TcpPassiveOpens");
    report(
        "SO_LINGER 0 aborts",
        &[
            (
                "rst_sent (kernel count) vs TcpOutRsts",
                trace.kernel("events", "rst_sent"),
                out_rsts,
            ),
            (
                "rst_received (kernel count)",
                trace.kernel("events", "rst_received"),
                N as u64,
            ),
            (
                "passive_established vs TcpPassiveOpens",
                trace.kernel("events", "passive_established"),
                passive,
            ),
        ],
    );
    assert_eq!(out_rsts, N as u64);
    assert_eq!(trace.kernel("events", "rst_sent"), out_rsts);
    assert_eq!(set(&trace.cookies("rst_sent")), set(&servers));
    assert_eq!(trace.kernel("no_cookie", "rst_sent"), 0);
    assert_eq!(set(&trace.cookies("rst_received")), set(&clients));
    assert_eq!(trace.kernel("events", "passive_established"), passive);
    assert_eq!(set(&trace.cookies("passive_established")), set(&servers));
    // The kernel says why it reset (6.10+): every sent RST carries a named reason, and the
    // per-reason counters add up to the total. Before, none has one and all count as unknown.
    let named = send_reset_has_reason();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for e in trace.of_kind("rst_sent") {
        let reason = if named {
            e["reason"].as_str().expect("reason on kernels >= 6.10")
        } else {
            assert!(e.get("reason").is_none(), "a reason before 6.10: {e}");
            "unknown"
        };
        assert!(!reason.starts_with("reason_"), "unnamed reason {reason}");
        *reasons.entry(reason.to_owned()).or_default() += 1;
    }
    eprintln!("   reasons: {reasons:?}");
    let counted: BTreeMap<String, u64> =
        serde_json::from_value(trace.counters["rst_reasons"].clone()).expect("rst_reasons");
    assert_eq!(reasons, counted);
    assert_eq!(reasons.values().sum::<u64>(), N as u64);
}

#[test]
fn normal_connection_keeps_one_cookie_from_connect_to_its_end() {
    if !can_run_kernel_tests("normal_connection") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("normal");
    let tracer = Tracer::start(&ns.name, &[]);
    let before = ns.nstat();
    let (client_cookie, server_cookie) = ns.enter(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (mut client, cc, mut server, sc) = workload::connected_pair(&listener);
        workload::transfer(&mut client, &mut server, b"hello");
        workload::transfer(&mut server, &mut client, b"world");
        drop(client);
        // Wait for the FIN, then close our side too.
        use std::io::Read as _;
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).expect("read EOF"), 0);
        drop(server);
        (cc, sc)
    });
    let after = ns.nstat();
    let trace = tracer.stop();
    trace.assert_nothing_lost();
    report(
        "normal connect/close",
        &[
            (
                "connect vs TcpActiveOpens",
                trace.kernel("events", "connect"),
                delta(&before, &after, "TcpActiveOpens"),
            ),
            (
                "passive_established vs TcpPassiveOpens",
                trace.kernel("events", "passive_established"),
                delta(&before, &after, "TcpPassiveOpens"),
            ),
        ],
    );
    assert_eq!(
        trace.kernel("events", "connect"),
        delta(&before, &after, "TcpActiveOpens")
    );
    assert_eq!(
        trace.kernel("events", "passive_established"),
        delta(&before, &after, "TcpPassiveOpens")
    );
    assert_eq!(
        trace.kernel("events", "rst_sent") + trace.kernel("events", "rst_received"),
        0
    );

    let client: Vec<&str> = trace
        .flow(client_cookie)
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    eprintln!("   client timeline: {client:?}");
    let pos = |k: &str| client.iter().position(|x| *x == k);
    let (connect, established, end) = (pos("connect"), pos("active_established"), pos("flow_end"));
    assert!(
        connect.is_some() && established.is_some() && end.is_some(),
        "{client:?}"
    );
    assert!(connect < established && established < end, "{client:?}");
    assert_eq!(
        client.last(),
        Some(&"flow_end"),
        "flow_end is the last event: {client:?}"
    );
    assert!(client.contains(&"state_change"), "{client:?}");
    // connect() ran in this process: the flow's owner, on every record of it, its summary
    // included (taken in process context, kept in the kernel's flow state).
    let me = Some(u64::from(std::process::id()));
    for e in trace.flow(client_cookie) {
        assert_eq!(e["pid"].as_u64(), me, "{e}");
    }
    let end = trace
        .flow(client_cookie)
        .into_iter()
        .find(|e| e["kind"] == "flow_end")
        .expect("flow_end");
    assert_eq!(end["sk_err"], 0, "{end}");
    assert!(end["stats"]["bytes_acked"].as_u64() >= Some(5), "{end}");
    assert!(end["stats"]["srtt_us"].as_u64() > Some(0), "{end}");
    assert!(end["flow"]["established_ns"].as_u64() > end["flow"]["start_ns"].as_u64());

    let server: Vec<&str> = trace
        .flow(server_cookie)
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    eprintln!("   server timeline: {server:?}");
    // Its SYN_RECV state change comes first where the kernel gives the accepted socket its own
    // cookie before announcing it; where it does so after (6.1, 6.12), the flow starts at
    // passive_established, its SYN_RECV time kept as the flow's start.
    let established = trace
        .flow(server_cookie)
        .into_iter()
        .find(|e| e["kind"] == "passive_established")
        .unwrap_or_else(|| panic!("passive_established: {server:?}"));
    match server.first() {
        Some(&"state_change") => {}
        Some(&"passive_established") => assert!(
            established["flow"]["start_ns"].as_u64()
                < established["flow"]["established_ns"].as_u64(),
            "{established}"
        ),
        other => panic!("the server flow starts with {other:?}: {server:?}"),
    }
    assert_eq!(server.last(), Some(&"flow_end"), "{server:?}");
    // An accepted socket belongs to its listener's owner: this process too.
    for e in trace.flow(server_cookie) {
        assert_eq!(e["pid"].as_u64(), me, "{e}");
    }
}

#[test]
fn daemon_is_single_instance_and_detaches_cleanly() {
    if !can_run_kernel_tests("clean_detach") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let run_dir = std::env::temp_dir().join(format!("linkprobe-detach-{}", std::process::id()));
    let run_dir = run_dir.to_str().expect("utf-8").to_owned();
    let ns = TestNetns::new("detach");
    let first = Tracer::start_daemon(&ns.name, &run_dir);
    let second = Command::new(env!("CARGO_BIN_EXE_linkprobe"))
        .args(["daemon", "--run-dir", &run_dir, "-o", "none"])
        .output()
        .expect("second daemon");
    let msg = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{msg}");
    assert!(msg.contains("already running"), "{msg}");
    // The daemon's own programs and links, by id from its descriptors: another linkprobe on
    // the host (a production one, another test binary) must not decide this test.
    let ours = restart::Held::of(first.pid());
    assert!(
        !ours.programs.is_empty(),
        "the daemon holds no program while it runs"
    );
    let trace = first.stop();
    trace.assert_nothing_lost();
    // The kernel puts a raw tracepoint link's program only after an RCU grace period
    // (bpf_link_free defers the link's dealloc), so those programs leave the list a few
    // milliseconds after the daemon exited.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut left = ours.left_in(&restart::KernelView::now());
    while left != (0, 0, 0) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        left = ours.left_in(&restart::KernelView::now());
    }
    assert_eq!(
        left,
        (0, 0, 0),
        "the daemon's (programs, links, cgroup attachments) left after exit"
    );
    let _ = std::fs::remove_dir_all(&run_dir);
}

pub(crate) fn cgroup2_root() -> String {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .expect("cgroup2 mount")
}
