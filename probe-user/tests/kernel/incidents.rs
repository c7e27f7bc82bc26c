//! Real-kernel tests of what the on-call engineer reads about an outage behind a real proxy
//! (HAProxy in the test's namespace, curl as the client): who reset whom, wall-clock times,
//! ratios, incidents.
use std::time::Duration;

use serde_json::Value;

use crate::{
    common::{
        api::Daemon,
        can_run_kernel_tests,
        netns::TestNetns,
        proxy::{closed_port, curl, AbortingUpstream, Haproxy},
        send_reset_has_reason,
    },
    KERNEL,
};

fn of_kind<'a>(list: &'a Value, kind: &'a str) -> Vec<&'a Value> {
    list.as_array()
        .expect("a list of anomalies")
        .iter()
        .filter(|a| a["kind"] == kind)
        .collect()
}

/// An upstream that aborts each established connection with SO_LINGER 0 behind HAProxy: the
/// upstream's RSTs are this host's doing (`local_reset_established`, "the local application
/// aborted", the kernel's reason explained), HAProxy's side got reset by its peer
/// (`reset_after_established`), and the aborted flow's hint says who reset whom.
#[test]
fn an_aborting_upstream_behind_haproxy_is_blamed_on_the_local_app_not_the_peer() {
    if !can_run_kernel_tests("aborting_upstream") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("abort");
    let upstream = AbortingUpstream::start(&ns.name);
    // Before the daemon: its readiness probe's refused connects are not part of the test.
    let proxy = Haproxy::start(&ns.name, closed_port(&ns.name), upstream.port);
    let daemon = Daemon::start(&ns.name, "abort", &[]);
    let url = format!("http://127.0.0.1:{}/", proxy.port);
    let bad_gateway = curl(&ns.name, &url, 6, 502);
    let aborted = upstream.stop();
    eprintln!("== {bad_gateway} of 6 requests got 502; upstream aborted {aborted:?}");
    assert_eq!(
        bad_gateway, 6,
        "HAProxy answers 502 for an aborted upstream"
    );
    assert_eq!(aborted.len(), 6);
    // Event kinds raise with the next tick.
    std::thread::sleep(Duration::from_millis(1500));
    let all = daemon.json(&["anomalies"]);
    let active = &all["active"];
    eprintln!("{}", daemon.ok(&["anomalies", "-o", "wide"]));

    let local = of_kind(active, "local_reset_established");
    assert_eq!(local.len(), 1, "one local_reset_established: {active:#}");
    let local = local[0];
    // The upstream's peer is HAProxy's ephemeral end: the bare address.
    assert_eq!(local["scope"], "peer 127.0.0.1", "{local:#}");
    let hint = local["hint"].as_str().expect("hint");
    let detail = local["detail"].as_str().expect("detail");
    assert!(!hint.contains("peer reset"), "{hint}");
    let evidence: Vec<u64> = local["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(
        evidence.iter().all(|c| aborted.contains(c)),
        "{evidence:?} ⊄ {aborted:?}"
    );
    if send_reset_has_reason() {
        assert!(hint.starts_with("the local application aborted"), "{hint}");
        assert!(
            detail.contains("kernel reason TCP_STATE") || detail.contains("TCP_ABORT_ON_CLOSE"),
            "{detail}"
        );
    }
    let peer_reset = of_kind(active, "reset_after_established");
    assert_eq!(peer_reset.len(), 1, "HAProxy's side: {active:#}");
    assert_eq!(
        peer_reset[0]["scope"],
        format!("peer 127.0.0.1:{}", upstream_port(&aborted, &daemon)),
    );
    assert!(peer_reset[0]["hint"]
        .as_str()
        .is_some_and(|h| h.starts_with("the peer reset")));

    // The aborted flow's story: this host (the upstream's app) reset HAProxy.
    let flow = daemon.json(&["flow", &aborted[0].to_string()]);
    let hint = flow["hint"].as_str().expect("flow hint");
    eprintln!("flow {}: {hint}", aborted[0]);
    if send_reset_has_reason() {
        assert!(
            hint.starts_with("the local application aborted the connection to 127.0.0.1:"),
            "{hint}"
        );
    }
    assert!(
        hint.contains("evidence for local_reset_established on peer 127.0.0.1"),
        "{hint}"
    );
    drop(proxy);
    daemon.stop();
}

/// The upstream's port, from the aborted flow's local address.
fn upstream_port(aborted: &[u64], daemon: &Daemon) -> u16 {
    let flow = daemon.json(&["flow", &aborted[0].to_string()]);
    let local = flow["flow"]["local"].as_str().expect("local address");
    local
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("port of {local}"))
}

/// Seconds since the epoch of an RFC 3339 time `YYYY-MM-DDTHH:MM:SS.ffffff±HH:MM`.
fn rfc3339_secs(t: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| -> i64 {
        t.get(r.clone())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{t:?}[{r:?}] is not a number"))
    };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let sign = if t.get(26..27) == Some("-") { -1 } else { 1 };
    let offset = sign * (n(27..29) * 3600 + n(30..32) * 60);
    days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19) - offset
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The outage: HAProxy in front of an upstream that is down (nothing listens). One
/// incident, caused by `connect_refused` on the upstream, critical, with every other anomaly
/// as its symptom (not nine anomalies to read); ratios are of the same flows (≤ 100 %) with a
/// unit; times are local wall-clock times that line up with the test's own clock; the filters
/// pick what they say.
#[test]
fn a_refused_upstream_behind_haproxy_is_one_incident() {
    if !can_run_kernel_tests("refused_incident") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("incident");
    let down = closed_port(&ns.name);
    // Before the daemon: its readiness probe's refused connects are not part of the test.
    let proxy = Haproxy::start(&ns.name, closed_port(&ns.name), down);
    let daemon = Daemon::start(&ns.name, "incident", &[]);
    let stream = crate::common::api::Stream::start(&daemon.socket, &["anomalies", "--watch"]);
    let began = now_secs();
    let url = format!("http://127.0.0.1:{}/", proxy.port);
    // Three rounds of 80 parallel requests a second: RST storms and ratios as well.
    let mut unavailable = 0;
    for _ in 0..3 {
        let round = std::time::Instant::now();
        unavailable += curl_parallel(&ns.name, &url, 80, 503);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
    }
    eprintln!("== {unavailable} of 240 requests got 503 from HAProxy");
    assert_eq!(unavailable, 240);
    let lines = stream.collect_until(Duration::from_secs(5), |l| {
        l.iter().any(|l| l.contains(" raised connect_refused "))
    });
    std::thread::sleep(Duration::from_millis(1500));
    let all = daemon.json(&["anomalies"]);
    eprintln!("{}", daemon.ok(&["anomalies"]));
    let incidents = all["incidents"].as_array().expect("incidents");
    let anomalies: Vec<&Value> = all["active"]
        .as_array()
        .expect("active")
        .iter()
        .chain(all["recent"].as_array().expect("recent"))
        .collect();
    assert!(
        anomalies.len() > 2,
        "the outage raised several anomalies: {all:#}"
    );
    assert_eq!(incidents.len(), 1, "one incident: {all:#}");
    let incident = &incidents[0];
    assert_eq!(incident["primary_kind"], "connect_refused", "{incident:#}");
    assert_eq!(incident["primary_scope"], format!("peer 127.0.0.1:{down}"));
    assert_eq!(incident["severity"], "critical");
    assert_eq!(incident["status"], "active");
    let symptoms = incident["symptoms"].as_array().expect("symptoms").len();
    assert_eq!(symptoms + 1, anomalies.len(), "every anomaly is in it");

    // Ratios of the same flows, with units.
    for a in &anomalies {
        let unit = a["peak_unit"].as_str().expect("peak_unit");
        let peak = a["peak_rate"].as_f64().expect("peak_rate");
        match a["kind"].as_str() {
            Some("rst_ratio") => {
                assert_eq!(unit, "ratio");
                assert!(peak <= 1.0, "{a:#}");
                assert!(a["detail"].as_str().is_some_and(|d| d.contains(" of ")));
            }
            Some("rst_storm") => assert_eq!(unit, "RST/s"),
            _ => assert_eq!(unit, "count", "{a:#}"),
        }
    }
    // Wall-clock times, within a few seconds of the test's own clock.
    let start = incident["start_time"].as_str().expect("start_time");
    let at = rfc3339_secs(start);
    assert!((at - began).abs() <= 5, "{start} vs {began}");
    let raised = lines
        .iter()
        .find(|l| l.contains(" raised connect_refused "))
        .unwrap_or_else(|| panic!("no raise in the stream: {lines:?}"));
    let tod = raised.split(' ').next().unwrap_or_default();
    assert!(
        tod.len() == 15 && tod.as_bytes()[2] == b':' && tod.as_bytes()[8] == b'.',
        "the change line starts with the local time: {raised}"
    );

    // Filters.
    let storms = daemon.json(&["anomalies", "--kind", "rst_storm"]);
    assert!(storms["active"]
        .as_array()
        .expect("active")
        .iter()
        .all(|a| a["kind"] == "rst_storm"));
    assert_eq!(storms["incidents"].as_array().map(Vec::len), Some(1));
    let upstream = format!("127.0.0.1:{down}");
    let at_peer = daemon.json(&["anomalies", "--peer", &upstream]);
    let at_peer = at_peer["active"].as_array().expect("active");
    assert!(!at_peer.is_empty());
    assert!(at_peer
        .iter()
        .all(|a| a["peer"].as_str() == Some(upstream.as_str())));
    let elsewhere = daemon.ok(&["anomalies", "--peer", "10.9.9.9"]);
    assert!(elsewhere.contains("(0 of "), "{elsewhere}");

    // Flows and anomalies link both ways, past the 16 evidence cookies: the anomaly counts
    // every refused flow, and a refused flow outside its evidence names it.
    let refused_anomaly = anomalies
        .iter()
        .find(|a| a["kind"] == "connect_refused")
        .expect("connect_refused");
    let covered = refused_anomaly["flows"].as_u64().expect("flows");
    let evidence: Vec<u64> = refused_anomaly["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let failed = daemon.json(&["flows", "--failed", "--limit", "2000"]);
    let refused: Vec<u64> = failed
        .as_array()
        .expect("flows")
        .iter()
        .filter(|f| f["close"] == "refused")
        .filter_map(|f| f["cookie"].as_u64())
        .collect();
    eprintln!(
        "== connect_refused covers {covered} flows ({} refused in the table, {} as evidence)",
        refused.len(),
        evidence.len()
    );
    assert_eq!(refused.len(), 240, "every refused connect is a flow");
    assert_eq!(covered, 240);
    let outside = refused
        .iter()
        .find(|c| !evidence.contains(c))
        .expect("more refused flows than evidence cookies");
    let story = daemon.json(&["flow", &outside.to_string()]);
    assert!(
        story["anomalies"]
            .as_array()
            .expect("anomalies")
            .iter()
            .any(|a| a["kind"] == "connect_refused"),
        "{story:#}"
    );
    assert!(story["hint"]
        .as_str()
        .is_some_and(|h| h.contains("evidence for connect_refused")));
    // Smaller ones: an empty result says so out of how many; `top` has no rows of zeros.
    let none = daemon.ok(&["flows", "--peer", "10.9.9.9"]);
    assert!(
        none.contains("(0 of ") && none.contains(" flows match)"),
        "{none}"
    );
    let top = daemon.json(&["top", "--once", "--by", "retrans"]);
    assert!(
        top["rows"].as_array().is_some_and(Vec::is_empty),
        "no retransmits, no rows: {top:#}"
    );
    drop(stream);
    drop(proxy);
    daemon.stop();
}

/// `curl --parallel` with `n` transfers of `url` in the namespace; how many got `expect`.
fn curl_parallel(netns: &str, url: &str, n: usize, expect: u16) -> usize {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-s",
            "-Z",
            "--parallel-max",
            "20",
        ])
        .args(["--max-time", "5", "-w", "%{http_code}\\n"])
        .args((0..n).flat_map(|_| ["-o", "/dev/null", url]))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim() == expect.to_string())
        .count()
}
