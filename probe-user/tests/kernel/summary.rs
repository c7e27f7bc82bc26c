//! The v2 contract: the kernel keeps each flow's state and sends one summary per flow plus
//! its exceptions. Oracles: a second tracer on the same namespace streaming every hook hit
//! (`--detail all`), the test's own sockets, and nstat.
use std::{collections::BTreeMap, io::Read as _, net::TcpListener, time::Duration};

use serde_json::Value;

use crate::{
    common::{
        api::Daemon,
        can_run_kernel_tests,
        netns::{delta, nft, TestNetns},
        rsts_the_kernel_hides,
        tracer::{Trace, Tracer},
        workload,
    },
    report, KERNEL,
};

/// A mixed workload: healthy connections, refused connects, SO_LINGER 0 aborts, SYN timeouts
/// and a data-drop window. Returns every client and server cookie it made.
fn mixed_workload(ns: &TestNetns) -> Vec<u64> {
    let mut cookies = Vec::new();
    cookies.extend(ns.enter(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut made = Vec::new();
        for _ in 0..20 {
            let (mut client, cc, mut server, sc) = workload::connected_pair(&listener);
            workload::transfer(&mut client, &mut server, b"ping");
            workload::transfer(&mut server, &mut client, b"pong");
            drop(client);
            let mut buf = [0u8; 1];
            assert_eq!(server.read(&mut buf).expect("EOF"), 0);
            made.extend([cc, sc]);
        }
        made
    }));
    cookies.extend(ns.enter(|| workload::refused_connects(9, 10)));
    let (clients, servers) = ns.enter(|| workload::linger_zero_aborts(5));
    cookies.extend(clients.into_iter().chain(servers));
    ns.nft(
        "table inet lpsum {\n chain input {\n type filter hook input priority 0;\n \
         tcp dport 7777 tcp flags & (syn | ack) == syn drop\n }\n}\n",
    );
    cookies.extend(ns.enter(|| workload::syn_timeouts(7777, 2, 1)));
    let ns_name = ns.name.clone();
    cookies.extend(ns.enter(move || {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (mut client, cc, mut server, sc) = workload::connected_pair(&listener);
        workload::transfer(&mut client, &mut server, b"warm-up");
        let add = format!(
            "table inet lpsumdata {{\n chain input {{\n type filter hook input priority 0;\n \
             tcp dport {port} meta length > 100 drop\n }}\n}}\n"
        );
        nft(&ns_name, &add);
        let sender = std::thread::spawn(move || {
            use std::io::Write as _;
            client.write_all(&[7u8; 600]).expect("write");
            client
        });
        std::thread::sleep(Duration::from_millis(1200));
        nft(&ns_name, "delete table inet lpsumdata\n");
        let client = sender.join().expect("sender");
        let mut got = vec![0u8; 600];
        server
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        server.read_exact(&mut got).expect("data after the window");
        drop((client, server));
        vec![cc, sc]
    }));
    cookies
}

/// What a flow's every-hit stream says about it: the old event stream's facts.
#[derive(Debug, Default, PartialEq, Eq)]
struct Story {
    syn_retrans: u64,
    data_retrans: u64,
    rst_sent: u64,
    rst_received: u64,
    sk_err: Option<i64>,
    ended_from: Option<String>,
    established: bool,
}

fn story_of(events: &[&Value]) -> Story {
    let mut s = Story::default();
    for e in events {
        match e["kind"].as_str() {
            Some("retransmit") if e["err"].as_i64().unwrap_or(0) == 0 => {
                if e["state"] == "SYN_SENT" {
                    s.syn_retrans += 1;
                } else {
                    s.data_retrans += 1;
                }
            }
            Some("rst_sent") => s.rst_sent += 1,
            Some("rst_received") => s.rst_received += 1,
            Some("active_established" | "passive_established") => s.established = true,
            Some("flow_end") => {
                s.sk_err = e["sk_err"].as_i64();
                s.ended_from = e["old_state"].as_str().map(str::to_owned);
            }
            _ => {}
        }
    }
    s
}

/// What a flow's summary (and the exception records of the default mode) says about it: the
/// counts of its last record with flow state, plus records without it after that (the fallback
/// store forgets a flow at CLOSE, so an abort's RST comes without).
fn summary_of(events: &[&Value]) -> Story {
    let last = events
        .iter()
        .rposition(|e| e["flow"].is_object())
        .expect("a record with the flow's state");
    let end = events.iter().find(|e| e["kind"] == "flow_end");
    let f = &events[last]["flow"];
    let after = |kind: &str| {
        events[last + 1..]
            .iter()
            .filter(|e| e["kind"] == kind)
            .count() as u64
    };
    Story {
        syn_retrans: f["syn_retrans"].as_u64().unwrap_or(0),
        data_retrans: f["data_retrans"].as_u64().unwrap_or(0),
        rst_sent: f["rst_sent"].as_u64().unwrap_or(0) + after("rst_sent"),
        rst_received: f["rst_received"].as_u64().unwrap_or(0) + after("rst_received"),
        sk_err: end.and_then(|e| e["sk_err"].as_i64()),
        ended_from: end.and_then(|e| e["old_state"].as_str().map(str::to_owned)),
        established: f["established_ns"].is_u64(),
    }
}

fn by_cookie(trace: &Trace) -> BTreeMap<u64, Vec<&Value>> {
    let mut m: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for e in &trace.events {
        if let Some(c) = e["cookie"].as_u64() {
            m.entry(c).or_default().push(e);
        }
    }
    m
}

#[test]
fn summaries_equal_the_every_hit_stream_and_healthy_flows_cost_one_record() {
    if !can_run_kernel_tests("summaries") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("summary");
    // Two independent tracers on the same hooks: each has its own programs and flow state.
    let every_hit = Tracer::start(&ns.name, &["--detail", "all"]);
    let summaries = Tracer::start(&ns.name, &["--detail", "off"]);
    let before = ns.nstat();
    let cookies = mixed_workload(&ns);
    let after = ns.nstat();
    let summaries = summaries.stop();
    let every_hit = every_hit.stop();
    summaries.assert_nothing_lost();
    every_hit.assert_nothing_lost();

    let full = by_cookie(&every_hit);
    let cheap = by_cookie(&summaries);
    let mut healthy = 0;
    for c in &cookies {
        let stream = full
            .get(c)
            .unwrap_or_else(|| panic!("cookie {c} in the stream"));
        let records = cheap
            .get(c)
            .unwrap_or_else(|| panic!("cookie {c} has no summary"));
        let want = story_of(stream);
        let got = summary_of(records);
        assert_eq!(got, want, "cookie {c}: summary vs stream");
        // Handshake: one tracepoint hit, timed by two programs. Their clocks differ by the time
        // between the two runs (microseconds, more under emulation), so the summary's moment is
        // checked against the hits around it: after the stream's previous record of this
        // socket and before its next one.
        let established = stream
            .iter()
            .find(|e| e["kind"] == "active_established")
            .and_then(|e| e["ts_ns"].as_u64());
        let snapshot = records
            .last()
            .and_then(|e| e["flow"]["established_ns"].as_u64());
        if let (Some(est), Some(snapshot)) = (established, snapshot) {
            let others = stream.iter().filter_map(|e| e["ts_ns"].as_u64());
            let before = others.clone().filter(|&t| t < est).max();
            let after = others.filter(|&t| t > est).min();
            assert!(
                before.is_none_or(|t| t < snapshot) && after.is_none_or(|t| snapshot < t),
                "cookie {c}: the summary's handshake at {snapshot} is not the stream's at {est} \
                 (previous record {before:?}, next {after:?})"
            );
        }
        if want
            == (Story {
                established: true,
                sk_err: Some(0),
                ended_from: want.ended_from.clone(),
                ..Story::default()
            })
        {
            healthy += 1;
            let kinds: Vec<&str> = records.iter().filter_map(|e| e["kind"].as_str()).collect();
            assert_eq!(
                kinds,
                ["flow_end"],
                "a healthy flow is one record: cookie {c}"
            );
        }
    }
    assert!(
        healthy >= 40,
        "20 healthy connections, both ends: {healthy}"
    );
    let records: u64 = summaries.counters["records"]
        .as_object()
        .expect("records")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    let flows = cookies.len() as u64;
    // Sent RSTs a kernel before 6.10 does not trace: the 10 answers to refused connects.
    let out_rsts = delta(&before, &after, "TcpOutRsts") - rsts_the_kernel_hides(10);
    report(
        "summaries vs every-hit stream",
        &[
            ("flows (test's sockets)", flows, flows),
            ("records, default mode", records, flows),
            (
                "records, every hit",
                every_hit.counters["records"]
                    .as_object()
                    .map_or(0, |m| m.values().filter_map(Value::as_u64).sum()),
                flows,
            ),
            (
                "RSTs sent (kernel) vs TcpOutRsts (less those it hides)",
                summaries.kernel("events", "rst_sent"),
                out_rsts,
            ),
            (
                "connect (kernel) vs TcpActiveOpens",
                summaries.kernel("events", "connect"),
                delta(&before, &after, "TcpActiveOpens"),
            ),
        ],
    );
    assert_eq!(summaries.kernel("events", "rst_sent"), out_rsts);
    assert_eq!(
        summaries.kernel("events", "connect"),
        delta(&before, &after, "TcpActiveOpens")
    );
    // The default mode sends summaries and exceptions only: per flow one FlowEnd, plus the
    // RSTs sent, the SYN retransmits and the data-retransmit/RTO reports.
    let rec = |k: &str| summaries.counters["records"][k].as_u64().unwrap_or(0);
    for k in [
        "connect",
        "active_established",
        "passive_established",
        "state_change",
    ] {
        assert_eq!(rec(k), 0, "{k} is not sent in the default mode");
    }
    assert_eq!(rec("flow_end"), summaries.kernel("events", "flow_end"));
    assert_eq!(rec("rst_sent"), summaries.kernel("events", "rst_sent"));
}

#[test]
fn the_fallback_store_counts_like_socket_storage() {
    if !can_run_kernel_tests("fallback_store") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    const N: usize = 10;
    let ns = TestNetns::new("lrustore");
    let lru = Tracer::start(&ns.name, &["--flow-store", "lru", "--detail", "off"]);
    let hows: Vec<&str> = lru.ready["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .filter_map(|p| p["how"].as_str())
        .collect();
    assert!(hows.contains(&"tp_btf, LRU map"), "{hows:?}");
    let before = ns.nstat();
    let refused = ns.enter(|| workload::refused_connects(9, N));
    let (clients, servers) = ns.enter(|| workload::linger_zero_aborts(N));
    let after = ns.nstat();
    let trace = lru.stop();
    trace.assert_nothing_lost();
    let flows = by_cookie(&trace);
    for c in &refused {
        let s = summary_of(&flows[c]);
        assert_eq!((s.rst_received, s.sk_err), (1, Some(111)), "cookie {c}");
    }
    for c in &servers {
        assert_eq!(summary_of(&flows[c]).rst_sent, 1, "server {c}");
    }
    for c in &clients {
        assert_eq!(summary_of(&flows[c]).rst_received, 1, "client {c}");
    }
    let out_rsts = delta(&before, &after, "TcpOutRsts") - rsts_the_kernel_hides(N as u64);
    report(
        "fallback LRU store",
        &[
            (
                "rst_sent vs TcpOutRsts (less those the kernel hides)",
                trace.kernel("events", "rst_sent"),
                out_rsts,
            ),
            (
                "connect vs TcpActiveOpens",
                trace.kernel("events", "connect"),
                delta(&before, &after, "TcpActiveOpens"),
            ),
            (
                "flows first seen late (state evicted)",
                trace.misc("state_late"),
                0,
            ),
        ],
    );
    assert_eq!(trace.kernel("events", "rst_sent"), out_rsts);
    assert_eq!(
        trace.kernel("events", "connect"),
        delta(&before, &after, "TcpActiveOpens")
    );
    assert_eq!(trace.misc("state_late"), 0);
}

#[test]
fn open_flows_are_listed_while_connecting_and_while_established() {
    if !can_run_kernel_tests("open_flows") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("openflows");
    ns.nft(
        "table inet lpopen {\n chain input {\n type filter hook input priority 0;\n \
         tcp dport 7778 tcp flags & (syn | ack) == syn drop\n }\n}\n",
    );
    let daemon = Daemon::start(&ns.name, "openflows", &[]);
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let ns_name = ns.name.clone();
    let holder = std::thread::spawn(move || {
        crate::common::netns::enter_current_thread(&ns_name);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (client, cc, server, sc) = workload::connected_pair(&listener);
        // A connect whose SYNs are dropped: SYN_SENT until we let go.
        let (connecting, conn_cookie) = workload::client_socket();
        connecting.set_nonblocking(true).expect("nonblocking");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], 7778).into();
        let _ = connecting.connect(&addr.into());
        tx.send((cc, sc, conn_cookie)).expect("send");
        done_rx.recv().expect("wait");
        drop((client, server, listener, connecting));
    });
    let (cc, sc, connecting) = rx.recv().expect("cookies");
    std::thread::sleep(Duration::from_millis(200));
    let flows = daemon.json(&["flows", "--limit", "100"]);
    let find = |c: u64| -> Value {
        flows
            .as_array()
            .expect("flows")
            .iter()
            .find(|f| f["cookie"].as_u64() == Some(c))
            .cloned()
            .unwrap_or_else(|| panic!("open flow {c} in {flows:#}"))
    };
    let me = Some(u64::from(std::process::id()));
    let client = find(cc);
    assert_eq!(client["state"], "ESTABLISHED", "{client}");
    assert_eq!(client["role"], "client");
    assert_eq!(client["pid"].as_u64(), me);
    assert!(client["handshake_us"].is_u64(), "{client}");
    let server = find(sc);
    assert_eq!(server["state"], "ESTABLISHED", "{server}");
    assert_eq!(server["role"], "server");
    assert_eq!(server["pid"].as_u64(), me, "the listener's owner: {server}");
    let syn = find(connecting);
    assert_eq!(syn["state"], "SYN_SENT", "{syn}");
    assert_eq!(syn["pid"].as_u64(), me, "{syn}");
    assert_eq!(syn["remote"], "127.0.0.1:7778");
    // The CLI's filters see them.
    let connecting_only = daemon.json(&["flows", "--state", "SYN_SENT"]);
    let got: Vec<u64> = connecting_only
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["cookie"].as_u64())
        .collect();
    assert_eq!(got, vec![connecting]);
    let table = daemon.ok(&["flows", "--state", "open"]);
    eprintln!("== linkprobe flows --state open\n{table}");
    done_tx.send(()).expect("release");
    holder.join().expect("holder");
    daemon.stop();
}
