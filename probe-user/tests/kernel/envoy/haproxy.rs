//! Real HAProxy in the test's namespace, its JSON `log-format` with Envoy's field names shipped
//! as Envoy lines, in front of upstreams that answer, refuse, reset after reading and stall.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;
use socket2::Socket;
use testkit::{http, process::Background};

use super::{append, joined, metric, requests_on, rfc3339_utc, TempDir};
use crate::{
    common::{
        api::Daemon,
        can_run_kernel_tests,
        netns::{enter_current_thread, TestNetns},
        proxy::{closed_port, read_head},
    },
    KERNEL,
};

/// Requests per scenario.
const N: usize = 4;

/// The nearest Envoy response flag for HAProxy's termination state (its first two
/// characters: who ended the session, and in which phase).
fn envoy_flags(tsc: &str) -> &'static str {
    match tsc.get(..2).unwrap_or("") {
        "--" => "-",
        // The server refused or the connect failed: upstream connection failure.
        "SC" => "UF",
        // HAProxy's server timeout: upstream request timeout.
        "sH" | "sD" => "UT",
        // The server aborted (RST or close) before or during the response.
        "SH" | "SD" => "UC",
        // The client went away.
        "CH" | "CD" | "CR" | "CC" | "cH" | "cD" | "cR" => "DC",
        _ => "UPE",
    }
}

/// One line of HAProxy's JSON log → Envoy's format: `%Ts.%ms` → RFC 3339, the termination
/// state → `response_flags` (kept as `response_code_details`), and, for a connect failure,
/// no `upstream_local_address` (Envoy logs none for `UF`).
fn envoy_line(haproxy: &str) -> String {
    let mut v: serde_json::Map<String, Value> =
        serde_json::from_str(haproxy).unwrap_or_else(|e| panic!("{e}: {haproxy}"));
    let ts = v["start_time"].as_str().expect("start_time").to_owned();
    let (s, ms) = ts.split_once('.').expect("%Ts.%ms");
    let unix_ms = s.parse::<i128>().expect("secs") * 1000 + ms.parse::<i128>().expect("ms");
    v.insert("start_time".into(), Value::from(rfc3339_utc(unix_ms)));
    let tsc = v["termination_state"].as_str().expect("tsc").to_owned();
    let flags = envoy_flags(&tsc);
    v.insert("response_flags".into(), Value::from(flags));
    v.insert(
        "response_code_details".into(),
        Value::from(format!("haproxy_{tsc}")),
    );
    if flags == "UF" {
        v.insert("upstream_local_address".into(), Value::from("-"));
    }
    serde_json::to_string(&v).expect("json")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Answer,
    ResetAfterRead,
    Stall,
}

/// An upstream on 127.0.0.1 in the namespace: reads each request head, then answers 200,
/// aborts with SO_LINGER 0 or holds the connection without answering. Records, per request
/// id (the `X-Request-Id` HAProxy forwards), the peer address it saw: HAProxy's end of the
/// upstream connection.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<BTreeMap<String, SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start(netns: &str, behaviour: Behaviour) -> Upstream {
        let (seen, stop) = (
            Arc::new(Mutex::new(BTreeMap::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let ns = netns.to_owned();
        let thread = std::thread::spawn(move || {
            enter_current_thread(&ns);
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
            listener.set_nonblocking(true).expect("nonblocking");
            tx.send(listener.local_addr().expect("addr").port())
                .expect("port");
            let mut held = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let Ok((mut s, peer)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                s.set_nonblocking(false).expect("blocking");
                s.set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                let head = read_head(&mut s);
                let id = header(&head, "x-request-id").unwrap_or_default();
                seen2.lock().expect("lock").insert(id, peer);
                match behaviour {
                    Behaviour::Answer => {
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        );
                    }
                    Behaviour::ResetAfterRead => {
                        let s = Socket::from(s);
                        s.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
                    }
                    // HAProxy's server timeout ends it; the socket is held until then.
                    Behaviour::Stall => held.push(s),
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("upstream port");
        Upstream {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> BTreeMap<String, SocketAddr> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// One HTTP request through `port` in the namespace with `X-Request-Id: id`: its status and
/// the client's local address.
fn request(netns: &str, port: u16, id: &str) -> (u16, SocketAddr) {
    let (ns, id) = (netns.to_owned(), id.to_owned());
    std::thread::spawn(move || {
        enter_current_thread(&ns);
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to haproxy");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let local = s.local_addr().expect("local");
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: test\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, local)
    })
    .join()
    .expect("client")
}

/// HAProxy with one frontend per upstream (`(frontend port, upstream port)`), logging its
/// JSON lines with Envoy's field names to stdout.
fn haproxy(netns: &str, dir: &Path, routes: &[(u16, u16)]) -> Background {
    let mut cfg = String::from(
        "global\n  maxconn 1000\n  log stdout format raw local0\n\n\
         defaults\n  mode http\n  log global\n  timeout connect 2s\n  timeout client 5s\n  \
         timeout server 1s\n  retries 0\n  option http-server-close\n  option dontlognull\n",
    );
    cfg.push_str(
        "  log-format \"{\\\"start_time\\\":\\\"%Ts.%ms\\\",\\\"duration\\\":%Tt,\\\"response_code\\\":%ST,\
         \\\"termination_state\\\":\\\"%tsc\\\",\\\"upstream_host\\\":\\\"%si:%sp\\\",\
         \\\"upstream_local_address\\\":\\\"%bi:%bp\\\",\\\"downstream_remote_address\\\":\\\"%ci:%cp\\\",\
         \\\"downstream_local_address\\\":\\\"%fi:%fp\\\",\\\"x_request_id\\\":\\\"%[capture.req.hdr(0)]\\\"}\"\n\n",
    );
    for (i, (front, up)) in routes.iter().enumerate() {
        cfg.push_str(&format!(
            "frontend fe{i}\n  bind 127.0.0.1:{front}\n  capture request header X-Request-Id len 64\n  \
             default_backend be{i}\n\nbackend be{i}\n  server up{i} 127.0.0.1:{up}\n\n"
        ));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).expect("haproxy.cfg");
    let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| panic!("haproxy is missing: run `cargo xtask setup`"));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, bin, "-db", "-f"])
        .arg(&path);
    let process = Background::start(&mut cmd, Some("[haproxy]")).expect("spawn haproxy");
    let (ns, ports): (String, Vec<u16>) = (netns.to_owned(), routes.iter().map(|r| r.0).collect());
    std::thread::spawn(move || {
        enter_current_thread(&ns);
        let start = Instant::now();
        for port in ports {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "haproxy never listened"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
    .join()
    .expect("haproxy ready");
    process
}

/// Moves HAProxy's JSON lines from its stdout into `log` as Envoy lines until `want` lines
/// were shipped; returns them. HAProxy's readiness connects log nothing (no request).
fn ship(haproxy: &Background, log: &Path, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut shipped = Vec::new();
    while shipped.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "HAProxy logged {} of {want} lines",
            shipped.len()
        );
        let Ok(line) = haproxy.stdout().recv_timeout(left) else {
            continue;
        };
        if !line.starts_with('{') {
            continue;
        }
        let envoy = envoy_line(&line);
        append(log, &format!("{envoy}\n"));
        shipped.push(envoy);
    }
    shipped
}

/// Real HAProxy in front of four upstreams (answers, refuses, resets after reading, stalls
/// past HAProxy's server timeout), its log shipped as Envoy JSON lines: every request joins
/// to HAProxy's own upstream socket (the tuple the upstream saw) and its accepted socket (the
/// client's tuple), refused ones approximately to a refused flow; counts exact.
#[test]
fn haproxy_requests_join_to_the_flows_that_carried_them() {
    if !can_run_kernel_tests("envoy_haproxy") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("envoy");
    let tmp = TempDir::new("haproxy");
    let log = tmp.0.join("envoy.log");
    append(&log, "");
    let answer = Upstream::start(&ns.name, Behaviour::Answer);
    let reset = Upstream::start(&ns.name, Behaviour::ResetAfterRead);
    let stall = Upstream::start(&ns.name, Behaviour::Stall);
    let refused = closed_port(&ns.name);
    let fronts: Vec<u16> = (0..4).map(|_| closed_port(&ns.name)).collect();
    let scenarios = [
        ("answers", fronts[0], answer.port, 200u16, "-"),
        ("refuses", fronts[1], refused, 503, "UF"),
        ("resets after reading", fronts[2], reset.port, 502, "UC"),
        ("stalls", fronts[3], stall.port, 504, "UT"),
    ];
    let routes: Vec<(u16, u16)> = scenarios.iter().map(|s| (s.1, s.2)).collect();
    let proxy = haproxy(&ns.name, &tmp.0, &routes);
    let config = tmp.0.join("linkprobe.toml");
    std::fs::write(
        &config,
        format!(
            "[envoy]\npaths = [{:?}]\nnetns = {:?}\njoin_slack_ms = 100\npoll_ms = 50\nrescan_secs = 1\n",
            tmp.0.display().to_string(),
            ns.name
        ),
    )
    .expect("config");
    let metrics: SocketAddr = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let daemon = Daemon::start(
        &ns.name,
        "envoy",
        &[
            "--config",
            &config.display().to_string(),
            "--metrics-addr",
            &metrics.to_string(),
        ],
    );
    // Requests 300 ms apart: a refused connect's approximate match (host and time only,
    // ±100 ms) has one candidate.
    let mut clients: BTreeMap<String, SocketAddr> = BTreeMap::new();
    for (name, front, _, want, _) in &scenarios {
        for i in 0..N {
            let id = format!("{}-{i}", &name[..5]);
            let (status, local) = request(&ns.name, *front, &id);
            assert_eq!(status, *want, "{id} through HAProxy");
            clients.insert(id, local);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let lines = ship(&proxy, &log, 4 * N);
    eprintln!("== HAProxy's lines as Envoy lines, e.g.:");
    for l in lines.iter().step_by(N) {
        eprintln!("   {l}");
    }
    let e = joined(&daemon, (4 * N) as u64);
    let status = daemon.ok(&["status"]);
    let envoy_part: Vec<&str> = status
        .lines()
        .skip_while(|l| !l.starts_with("envoy access logs"))
        .take_while(|l| !l.starts_with("flows:"))
        .collect();
    eprintln!(
        "$ linkprobe status (its envoy part)\n{}",
        envoy_part.join("\n")
    );
    assert_eq!(e["results"]["matched"], 3 * N, "{e:#}");
    assert_eq!(e["results"]["approximate"], N, "{e:#}");
    assert_eq!(e["results"]["unmatched"], 0, "{e:#}");
    assert_eq!(e["sources"][0]["requests"], 4 * N, "{e:#}");
    assert_eq!(e["sources"][0]["malformed"], 0, "{e:#}");

    for (name, front, up, _, flag) in &scenarios {
        let prefix = &name[..5];
        let upstream = requests_on(&daemon, *up);
        let downstream = requests_on(&daemon, *front);
        let seen = match *name {
            "answers" => answer.seen(),
            "resets after reading" => reset.seen(),
            "stalls" => stall.seen(),
            _ => BTreeMap::new(),
        };
        let mut right = 0;
        let mut cookies = Vec::new();
        let mut closes = Vec::new();
        for i in 0..N {
            let id = format!("{prefix}-{i}");
            let (cookie, local, remote, close, matched) = upstream
                .get(&(id.clone(), "upstream".into()))
                .unwrap_or_else(|| panic!("{id}: no upstream flow: {upstream:?}"))
                .clone();
            assert_eq!(remote, format!("127.0.0.1:{up}"), "{id}");
            if *flag == "UF" {
                // Envoy logs no local address for UF: matched by host and time.
                assert_eq!(matched, "approximate", "{id}");
                assert_eq!(close, "refused", "{id}");
            } else {
                assert_eq!(matched, "exact", "{id}");
                // The tuple the upstream saw HAProxy connect from.
                assert_eq!(local, seen[&id].to_string(), "{id}");
            }
            if *flag == "UC" {
                assert_eq!(close, "rst_received", "{id}: HAProxy's socket was reset");
            }
            closes.push(close.as_str().unwrap_or("open").to_owned());
            let (_, dlocal, dremote, _, dmatched) = downstream
                .get(&(id.clone(), "downstream".into()))
                .unwrap_or_else(|| panic!("{id}: no downstream flow: {downstream:?}"))
                .clone();
            assert_eq!(dlocal, format!("127.0.0.1:{front}"), "{id}");
            assert_eq!(dremote, clients[&id].to_string(), "{id}");
            assert_eq!(dmatched, "exact", "{id}");
            cookies.push(cookie);
            right += 1;
        }
        cookies.sort_unstable();
        cookies.dedup();
        assert_eq!(cookies.len(), N, "{name}: one upstream flow per request");
        eprintln!(
            "== join accuracy, upstream that {name}: {right}/{N} lines joined to the right flow \
             ({}); HAProxy's upstream sockets ended {closes:?}",
            if *flag == "UF" {
                "approximate"
            } else {
                "exact"
            }
        );
    }

    let uc = daemon.ok(&["flows", "--envoy-flag", "UC"]);
    eprintln!("$ linkprobe flows --envoy-flag UC\n{uc}");
    let uc_json = daemon.json(&["flows", "--envoy-flag", "uc"]);
    // Each reset request: HAProxy's upstream socket and its accepted socket.
    assert_eq!(
        uc_json.as_array().expect("flows").len(),
        2 * N,
        "{uc_json:#}"
    );
    let timeouts = daemon.json(&["flows", "--status", "504"]);
    assert_eq!(
        timeouts.as_array().expect("flows").len(),
        2 * N,
        "{timeouts:#}"
    );
    let reset_flow = uc_json
        .as_array()
        .expect("flows")
        .iter()
        .find(|f| f["remote"] == format!("127.0.0.1:{}", reset.port))
        .expect("an upstream flow behind UC");
    let cookie = reset_flow["cookie"].as_u64().expect("cookie").to_string();
    let story = daemon.ok(&["flow", &cookie]);
    eprintln!("$ linkprobe flow {cookie}\n{story}");
    assert!(story.contains("requests (1 joined)"), "{story}");
    assert!(story.contains("502     UC"), "{story}");

    // The incident of the resets lists the requests they broke.
    let anomalies = daemon.json(&["anomalies"]);
    let incidents = anomalies["incidents"].as_array().expect("incidents");
    let with_uc: Vec<&Value> = incidents
        .iter()
        .filter(|i| {
            i["requests"]
                .as_array()
                .is_some_and(|r| r.iter().filter(|r| r["flags"] == "UC").count() == N)
        })
        .collect();
    assert_eq!(with_uc.len(), 1, "{anomalies:#}");
    for r in with_uc[0]["requests"].as_array().expect("requests") {
        if r["flags"] == "UC" {
            assert_eq!(r["status"], 502);
            assert_eq!(r["upstream_host"], format!("127.0.0.1:{}", reset.port));
        }
    }
    eprintln!("$ linkprobe anomalies\n{}", daemon.ok(&["anomalies"]));
    let body = http::get(metrics, "/metrics").expect("GET /metrics").text();
    let n = N as f64;
    assert_eq!(
        metric(&body, "linkprobe_envoy_requests_total{result=\"matched\"}"),
        3.0 * n
    );
    assert_eq!(
        metric(
            &body,
            "linkprobe_envoy_requests_total{result=\"approximate\"}"
        ),
        n
    );
    assert_eq!(
        metric(
            &body,
            "linkprobe_envoy_failures_total{flag=\"UC\",close_cause=\"rst_received\"}"
        ),
        n
    );
    assert_eq!(
        metric(
            &body,
            "linkprobe_envoy_failures_total{flag=\"UF\",close_cause=\"refused\"}"
        ),
        n
    );
    assert_eq!(metric(&body, "linkprobe_envoy_log_source_up{"), 1.0);
    drop(proxy);
    daemon.stop();
}
