//! Real-kernel tests of the Envoy access-log join (`[envoy]`): real HAProxy in the test's
//! namespace writing Envoy-named JSON lines in front of upstreams that answer, refuse, reset
//! after reading and stall; and Envoy-documented fixture lines replayed with their addresses
//! rewritten to the test's own connections, CRI-wrapped in a kubelet pod log directory,
//! through rotation and truncation, with garbage. Every line must join to the flow the test
//! knows it used (its tuple, or the test's own socket cookie); the counts are exact.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
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

use crate::{
    common::{
        api::Daemon,
        can_run_kernel_tests,
        netns::{enter_current_thread, TestNetns},
        proxy::closed_port,
        workload,
    },
    KERNEL,
};

const UID: &str = "5f0c9a1e-3b7d-4c2a-8e6f-9a0b1c2d3e4f";
/// Requests per HAProxy scenario.
const N: usize = 4;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("lpt-envoy-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    f.write_all(text.as_bytes()).expect("write log");
}

fn unix_ms_now() -> i128 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i128::try_from(d.as_millis()).expect("ms")
}

/// `unix_ms` as RFC 3339 UTC with milliseconds, as Envoy writes `start_time`.
fn rfc3339_utc(unix_ms: i128) -> String {
    let secs = i64::try_from(unix_ms.div_euclid(1000)).expect("secs");
    let ms = unix_ms.rem_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

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

fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
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

/// Polls `status` until the join has taken `total` requests; returns the `envoy` row.
fn joined(daemon: &Daemon, total: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = daemon.json(&["status"]);
        let e = status["envoy"].clone();
        let sum: u64 = ["matched", "approximate", "unmatched"]
            .iter()
            .map(|k| e["results"][k].as_u64().unwrap_or(0))
            .sum();
        if sum >= total || Instant::now() > deadline {
            return e;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every flow touching `port` with its joined requests: request id → (side, cookie, local,
/// remote, close, match).
type Joined = BTreeMap<(String, String), (u64, String, String, Value, String)>;

fn requests_on(daemon: &Daemon, port: u16) -> Joined {
    let flows = daemon.json(&["flows", "--port", &port.to_string(), "--limit", "2000"]);
    let mut out = Joined::new();
    for f in flows.as_array().expect("flows") {
        for r in f["requests"].as_array().into_iter().flatten() {
            let key = (
                r["request_id"].as_str().unwrap_or("").to_owned(),
                r["side"].as_str().expect("side").to_owned(),
            );
            let row = (
                f["cookie"].as_u64().expect("cookie"),
                f["local"].as_str().expect("local").to_owned(),
                f["remote"].as_str().expect("remote").to_owned(),
                f["close"].clone(),
                r["match"].as_str().expect("match").to_owned(),
            );
            assert!(
                out.insert(key.clone(), row).is_none(),
                "{key:?} joined twice"
            );
        }
    }
    out
}

fn metric(body: &str, line_start: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line_start} not in /metrics"))
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

/// One of the test's own connections, as an Envoy line will name it.
struct Conn {
    cookie: u64,
    local: SocketAddr,
    remote: SocketAddr,
    start_ms: i128,
    end_ms: i128,
}

/// Envoy-documented lines (fixtures) replayed with their addresses rewritten to the test's
/// own connections, CRI-wrapped in a kubelet pod log directory (`istio-proxy/0.log`), with
/// `P` pieces, the proxy's own log lines, garbage and an overlong line, through a rotation
/// (rename + new file) and a truncation: every request joins to the test's own socket
/// cookie; counts exact.
#[test]
fn replayed_envoy_lines_join_through_rotation_truncation_and_garbage() {
    if !can_run_kernel_tests("envoy_replay") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("envoyrp");
    let tmp = TempDir::new("replay");
    let pods = tmp.0.join("pods");
    let sidecar = pods.join(format!("shop_cart-7d9f_{UID}/istio-proxy"));
    std::fs::create_dir_all(&sidecar).expect("pod log dir");
    let log = sidecar.join("0.log");
    append(&log, "");
    let config = tmp.0.join("linkprobe.toml");
    std::fs::write(
        &config,
        format!(
            "[envoy]\npaths = [{:?}]\nnetns = {:?}\njoin_slack_ms = 100\npoll_ms = 50\n\
             rescan_secs = 1\nmax_line_bytes = 4096\n",
            pods.display().to_string(),
            ns.name
        ),
    )
    .expect("config");
    let closed = closed_port(&ns.name);
    let daemon = Daemon::start(
        &ns.name,
        "envoyrp",
        &["--config", &config.display().to_string()],
    );

    // Six connections (two closed with a FIN, two reset by the server, two left open) and a
    // refused connect, all the test's own sockets.
    let (conns, refused, _open) = ns.enter(move || {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut conns = Vec::new();
        let mut open = Vec::new();
        for i in 0..6 {
            let start_ms = unix_ms_now();
            let (mut client, cookie, mut server, _) = workload::connected_pair(&listener);
            workload::transfer(&mut client, &mut server, b"GET / HTTP/1.1\r\n\r\n");
            workload::transfer(&mut server, &mut client, b"HTTP/1.1 200 OK\r\n\r\n");
            let (local, remote) = (
                client.local_addr().expect("l"),
                client.peer_addr().expect("r"),
            );
            std::thread::sleep(Duration::from_millis(20));
            match i {
                0 | 1 => drop((client, server)),
                2 | 3 => {
                    let s = Socket::from(server);
                    s.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
                    drop(s);
                    let mut buf = [0u8; 1];
                    let _ = client.read(&mut buf);
                }
                _ => open.push((client, server)),
            }
            conns.push(Conn {
                cookie,
                local,
                remote,
                start_ms,
                end_ms: unix_ms_now(),
            });
            // Apart by more than the join's slack: each line has one candidate.
            std::thread::sleep(Duration::from_millis(250));
        }
        let at = unix_ms_now();
        let refused = workload::refused_connects(closed, 1)[0];
        // Returned: the open flows stay open while the test reads them.
        (conns, (refused, at), open)
    });

    let fixture: Vec<Value> = include_str!("../fixtures/envoy/access.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("fixture"))
        .collect();
    let line = |template: usize, c: &Conn, id: &str| -> String {
        let mut v = fixture[template].clone();
        v["start_time"] = Value::from(rfc3339_utc(c.start_ms));
        v["duration"] = Value::from(u64::try_from(c.end_ms - c.start_ms).expect("ms"));
        v["upstream_local_address"] = Value::from(c.local.to_string());
        v["upstream_host"] = Value::from(c.remote.to_string());
        // The downstream side is not part of this replay: Envoy's "-".
        v["downstream_local_address"] = Value::from("-");
        v["downstream_remote_address"] = Value::from("-");
        v["x_request_id"] = Value::from(id);
        serde_json::to_string(&v).expect("json")
    };
    let cri = |content: &str| format!("{} stdout F {content}\n", rfc3339_utc(unix_ms_now()));
    let (ok, uc) = (0, 2);
    let lines: Vec<String> = conns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            line(
                if (2..4).contains(&i) { uc } else { ok },
                c,
                &format!("rp-{i}"),
            )
        })
        .collect();
    let mut uf = fixture[1].clone();
    uf["start_time"] = Value::from(rfc3339_utc(refused.1));
    uf["upstream_host"] = Value::from(format!("127.0.0.1:{closed}"));
    uf["downstream_local_address"] = Value::from("-");
    uf["downstream_remote_address"] = Value::from("-");
    uf["x_request_id"] = Value::from("rp-uf");
    let uf = serde_json::to_string(&uf).expect("json");
    let mut nowhere = fixture[0].clone();
    nowhere["start_time"] = Value::from(rfc3339_utc(unix_ms_now()));
    nowhere["upstream_local_address"] = Value::from("127.0.0.1:1");
    nowhere["upstream_host"] = Value::from("127.0.0.1:2");
    nowhere["x_request_id"] = Value::from("rp-nowhere");
    let nowhere = serde_json::to_string(&nowhere).expect("json");

    let source = |daemon: &Daemon| daemon.json(&["status"])["envoy"]["sources"][0].clone();
    let wait = |what: &str, done: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = source(&daemon);
            if done(&s) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {s:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // 1. Two lines, the second in three `P`/`F` pieces; the proxy's own log; garbage.
    append(&log, &cri(&lines[0]));
    let (a, rest) = lines[1].split_at(40);
    let (b, c) = rest.split_at(60);
    let t = rfc3339_utc(unix_ms_now());
    append(&log, &format!("{t} stdout P {a}\n{t} stdout P {b}\n"));
    append(
        &log,
        &format!("{t} stderr F [2026-11-30 04:00:00.000][1][warning][config] gRPC config stream closed\n"),
    );
    append(&log, &format!("{t} stdout F {c}\n"));
    append(&log, &cri(r#"{"start_time":"not a time","duration":1}"#));
    wait("first lines", &|s| {
        s["requests"] == 2 && s["malformed"] == 1
    });
    // 2. Rotation mid-stream: a line lands in the file just before it is renamed.
    append(&log, &cri(&lines[2]));
    std::fs::rename(&log, sidecar.join("0.log.20261130-040000")).expect("rotate");
    append(&log, &cri(&lines[3]));
    append(&log, &cri("{not json at all"));
    wait("rotation", &|s| {
        s["requests"] == 4 && s["rotations"] == 1 && s["malformed"] == 2
    });
    // 3. Truncation (copytruncate), then the rest, an overlong line and two that cannot
    //    match exactly: a UF line without a local address and a tuple nobody used.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .expect("truncate");
    wait("truncation", &|s| s["truncations"] == 1);
    for l in [&lines[4], &lines[5], &uf, &nowhere] {
        append(&log, &cri(l));
    }
    append(
        &log,
        &cri(&format!(
            r#"{{"start_time":"{}","x":"{}"}}"#,
            rfc3339_utc(0),
            "x".repeat(5000)
        )),
    );
    wait("the rest", &|s| s["requests"] == 8 && s["overlong"] == 1);

    let e = joined(&daemon, 8);
    let status = daemon.ok(&["status"]);
    eprintln!("{status}");
    assert!(
        status.contains("joined: 6 matched, 1 approximate, 1 unmatched (no_flow 1)"),
        "{status}"
    );
    let s = &e["sources"][0];
    assert_eq!(
        (
            &s["requests"],
            &s["malformed"],
            &s["other"],
            &s["overlong"],
            &s["rotations"],
            &s["truncations"],
            &s["files"]
        ),
        (
            &Value::from(8),
            &Value::from(2),
            &Value::from(1),
            &Value::from(1),
            &Value::from(1),
            &Value::from(1),
            &Value::from(1)
        ),
        "{e:#}"
    );
    assert_eq!(e["results"]["matched"], 6, "{e:#}");
    assert_eq!(e["results"]["approximate"], 1, "{e:#}");
    assert_eq!(e["results"]["unmatched"], 1, "{e:#}");
    assert_eq!(e["unmatched"]["no_flow"], 1, "{e:#}");

    let mut right = 0;
    for (i, c) in conns.iter().enumerate() {
        let f = daemon.json(&["flow", &c.cookie.to_string()]);
        let reqs = f["flow"]["requests"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(reqs.len(), 1, "flow {} of rp-{i}: {f:#}", c.cookie);
        assert_eq!(reqs[0]["request_id"], format!("rp-{i}"));
        assert_eq!(reqs[0]["match"], "exact");
        assert_eq!(reqs[0]["side"], "upstream");
        right += 1;
    }
    let f = daemon.json(&["flow", &refused.0.to_string()]);
    assert_eq!(f["flow"]["close"], "refused");
    assert_eq!(f["flow"]["requests"][0]["request_id"], "rp-uf");
    assert_eq!(f["flow"]["requests"][0]["match"], "approximate");
    eprintln!("== join accuracy, replayed fixture lines: {right}/6 exact to the test's own cookies, 1/1 UF approximate to the refused connect, 1 unmatched (no_flow) as planted");
    let uc = daemon.ok(&["flows", "--envoy-flag", "UC"]);
    eprintln!("$ linkprobe flows --envoy-flag UC\n{uc}");
    let uc = daemon.json(&["flows", "--envoy-flag", "UC"]);
    let mut got: Vec<u64> = uc
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| f["cookie"].as_u64().expect("cookie"))
        .collect();
    got.sort_unstable();
    let mut want = vec![conns[2].cookie, conns[3].cookie];
    want.sort_unstable();
    assert_eq!(got, want);
    let story = daemon.ok(&["flow", &conns[2].cookie.to_string()]);
    eprintln!("$ linkprobe flow {}\n{story}", conns[2].cookie);
    daemon.stop();
}
