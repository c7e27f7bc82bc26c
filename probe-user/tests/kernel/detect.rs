//! Real-kernel tests of the flow table and the detectors: the daemon's own anomaly and flow
//! records, checked against what the test did (timing from CLOCK_MONOTONIC, the clock of the
//! kernel's event timestamps).
use std::{net::TcpListener, time::Duration};

use crate::{
    common::{self, can_run_kernel_tests, netns::TestNetns, tracer::Tracer, workload},
    KERNEL,
};
use serde_json::Value;

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into our timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn anomalies<'a>(lines: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    lines.iter().filter(move |a| a["kind"] == kind)
}

#[test]
fn rst_storm_raises_one_anomaly_per_scope_within_two_seconds_and_clears() {
    if !can_run_kernel_tests("rst_storm") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("storm");
    let tracer = Tracer::start(&ns.name, &["--no-events"]);
    // Background: normal connections to another port during the whole test.
    let background = {
        let ns_name = ns.name.clone();
        std::thread::spawn(move || {
            common::netns::enter_current_thread(&ns_name);
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let made = workload::background_traffic(&listener, 50, Duration::from_secs(11));
            (port, made)
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let onset = monotonic_ns();
    let storm = ns.enter(|| workload::refused_storm(9, 1500, Duration::from_secs(5)));
    let storm_end = monotonic_ns();
    // Quiet windows for the clear streak.
    std::thread::sleep(Duration::from_secs(5));
    let (bg_port, bg_made) = background.join().expect("background");
    let trace = tracer.stop();
    let rate = storm as f64 / ((storm_end - onset) as f64 / 1e9);
    eprintln!("== storm: {storm} refused connects at {rate:.0}/s; background {bg_made} connections to port {bg_port}");
    assert!(rate >= 1000.0, "storm rate {rate:.0}/s");

    let all = &trace.anomalies;
    for scope in ["local port 9", "peer 127.0.0.1:9"] {
        let raised: Vec<&Value> = anomalies(all, "rst_storm")
            .filter(|a| a["change"] == "raised" && a["scope"] == scope)
            .collect();
        assert_eq!(
            raised.len(),
            1,
            "exactly one rst_storm for {scope}: {all:#?}"
        );
        let at = raised[0]["at_ns"].as_u64().expect("at_ns");
        let latency = at.saturating_sub(onset) as f64 / 1e9;
        eprintln!(
            "   rst_storm on {scope}: raised {latency:.2} s after onset, peak {} RST/s",
            raised[0]["peak_rate"]
        );
        assert!(
            latency <= 2.0,
            "detection latency {latency:.2} s for {scope}"
        );
        let id = &raised[0]["id"];
        let cleared =
            anomalies(all, "rst_storm").find(|a| a["change"] == "cleared" && &a["id"] == id);
        let cleared =
            cleared.unwrap_or_else(|| panic!("rst_storm on {scope} never cleared: {all:#?}"));
        let end = cleared["end_ns"].as_u64().expect("end_ns");
        assert!(end > storm_end, "cleared before the storm ended");
        eprintln!(
            "   cleared {:.2} s after the storm ended",
            (end - storm_end) as f64 / 1e9
        );
        assert!(
            !raised[0]["evidence"]
                .as_array()
                .expect("evidence")
                .is_empty()
                || scope.starts_with("local")
        );
    }
    // Refused connects are typed as such.
    assert!(anomalies(all, "connect_refused")
        .any(|a| a["change"] == "raised" && a["scope"] == "peer 127.0.0.1:9"));
    // The background traffic raised nothing.
    let bg = format!(":{bg_port}");
    let false_positives: Vec<&Value> = all
        .iter()
        .filter(|a| {
            a["scope"]
                .as_str()
                .is_some_and(|s| s.ends_with(&bg) || s == format!("local port {bg_port}"))
        })
        .collect();
    assert!(
        false_positives.is_empty(),
        "background traffic raised {false_positives:#?}"
    );
}

#[test]
fn dropped_syns_are_typed_syn_retry_then_timeout() {
    if !can_run_kernel_tests("syn_typed") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("syntyped");
    ns.nft(
        "table inet lptest {\n chain input {\n type filter hook input priority 0;\n \
         tcp dport 7777 tcp flags & (syn | ack) == syn drop\n }\n}\n",
    );
    let tracer = Tracer::start(&ns.name, &["--no-events", "--dump-flows"]);
    let cookies = ns.enter(|| workload::syn_timeouts(7777, 2, 2));
    // A tick closes the last window before we stop.
    std::thread::sleep(Duration::from_millis(1200));
    let trace = tracer.stop();
    let all = &trace.anomalies;
    let syn_retry = anomalies(all, "syn_retry")
        .find(|a| a["change"] == "raised" && a["scope"] == "peer 127.0.0.1:7777")
        .unwrap_or_else(|| panic!("no syn_retry anomaly: {all:#?}"));
    assert!(syn_retry["hint"]
        .as_str()
        .is_some_and(|h| h.contains("firewall dropping SYNs")));
    let timeout = anomalies(all, "connect_timeout")
        .find(|a| a["change"] == "raised" && a["scope"] == "peer 127.0.0.1:7777")
        .unwrap_or_else(|| panic!("no connect_timeout anomaly: {all:#?}"));
    let evidence: Vec<u64> = timeout["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    // Evidence is what the anomaly knew when it was raised: at least the first failure.
    assert!(
        cookies.iter().any(|c| evidence.contains(c)),
        "evidence {evidence:?} vs {cookies:?}"
    );
    assert!(
        anomalies(all, "connect_refused").next().is_none(),
        "a timeout is not a refusal"
    );
    for c in &cookies {
        let flow = trace
            .flows
            .iter()
            .find(|f| f["cookie"].as_u64() == Some(*c))
            .unwrap_or_else(|| panic!("no flow for cookie {c}"));
        assert_eq!(flow["close"], "timeout", "{flow:#}");
        assert!(flow["syn_retransmits"].as_u64() >= Some(2), "{flow:#}");
        let intervals = flow["syn_retransmit_intervals_ms"]
            .as_array()
            .expect("intervals");
        assert!(
            intervals.iter().all(|i| i.as_u64() >= Some(900)),
            "{intervals:?}"
        );
    }
}

#[test]
fn flow_timeline_runs_connect_established_retransmits_fin_under_one_cookie() {
    if !can_run_kernel_tests("timeline") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("timeline");
    let tracer = Tracer::start(&ns.name, &["--no-events", "--dump-flows"]);
    let ns_name = ns.name.clone();
    let client_cookie = ns.enter(move || {
        use std::io::{Read as _, Write as _};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (mut client, cc, mut server, _) = workload::connected_pair(&listener);
        workload::transfer(&mut client, &mut server, b"warm-up");
        common::netns::nft(
            &ns_name,
            &format!(
                "table inet lpdata {{\n chain input {{\n type filter hook input priority 0;\n \
                 tcp dport {port} meta length > 100 drop\n }}\n}}\n"
            ),
        );
        client.write_all(&[7u8; 600]).expect("write");
        std::thread::sleep(Duration::from_millis(1200));
        common::netns::nft(&ns_name, "delete table inet lpdata\n");
        let mut got = vec![0u8; 600];
        server
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        server.read_exact(&mut got).expect("data after the window");
        drop(client);
        let mut b = [0u8; 1];
        assert_eq!(server.read(&mut b).expect("EOF"), 0);
        drop(server);
        cc
    });
    let trace = tracer.stop();
    let flow = trace
        .flows
        .iter()
        .find(|f| f["cookie"].as_u64() == Some(client_cookie))
        .unwrap_or_else(|| panic!("no flow for {client_cookie}"));
    let kinds: Vec<&str> = flow["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    eprintln!("== timeline of {client_cookie}: {kinds:?}");
    let pos = |k: &str| kinds.iter().position(|x| *x == k);
    let (connect, established, retrans) =
        (pos("connect"), pos("active_established"), pos("retransmit"));
    assert!(
        connect.is_some() && established.is_some() && retrans.is_some(),
        "{kinds:?}"
    );
    assert!(connect < established && established < retrans, "{kinds:?}");
    assert_eq!(flow["role"], "client");
    assert_eq!(flow["close"], "fin");
    assert!(flow["data_retransmits"].as_u64() >= Some(1));
    let offsets: Vec<u64> = flow["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["offset_ns"].as_u64())
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]),
        "timeline in time order"
    );
}

#[test]
fn flow_table_stays_at_its_bound_and_counts_evictions() {
    if !can_run_kernel_tests("table_bound") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    const N: u64 = 1500;
    const BOUND: u64 = 200;
    let ns = TestNetns::new("bound");
    let tracer = Tracer::start(
        &ns.name,
        &["--no-events", "--set", &format!("flows.max_flows={BOUND}")],
    );
    let made = ns.enter(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        for _ in 0..N {
            let (mut client, _, mut server, _) = workload::connected_pair(&listener);
            workload::transfer(&mut client, &mut server, b"x");
        }
        N
    });
    let trace = tracer.stop();
    let tracked = trace.counters["flows"]["tracked"]
        .as_u64()
        .expect("tracked");
    let evicted = trace.counters["flows"]["evicted"]
        .as_u64()
        .expect("evicted");
    eprintln!("== {made} connections (2 flows each): tracked {tracked}, evicted {evicted}");
    assert_eq!(tracked, BOUND);
    // Every flow that could not stay was counted: client + server socket per connection.
    assert_eq!(tracked + evicted, 2 * made);
}

#[test]
fn connections_open_before_start_are_listed_as_preexisting() {
    if !can_run_kernel_tests("preexisting") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("preexist");
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let ns_name = ns.name.clone();
    let holder = std::thread::spawn(move || {
        common::netns::enter_current_thread(&ns_name);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (client, cc, server, sc) = workload::connected_pair(&listener);
        tx.send((cc, sc)).expect("send");
        done_rx.recv().expect("wait");
        drop((client, server, listener));
    });
    let (cc, sc) = rx.recv().expect("cookies");
    let tracer = Tracer::start(&ns.name, &["--no-events", "--dump-flows"]);
    std::thread::sleep(Duration::from_millis(300));
    let trace = tracer.stop();
    done_tx.send(()).expect("release");
    holder.join().expect("holder");
    for c in [cc, sc] {
        let flow = trace
            .flows
            .iter()
            .find(|f| f["cookie"].as_u64() == Some(c))
            .unwrap_or_else(|| panic!("pre-existing socket {c} not listed: {:#?}", trace.flows));
        assert_eq!(flow["preexisting"], true);
        assert_eq!(flow["state"], "ESTABLISHED");
    }
}
