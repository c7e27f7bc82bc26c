//! Envoy-documented fixture lines replayed with their addresses rewritten to the test's own
//! connections, CRI-wrapped in a kubelet pod log directory, through a rotation and a
//! truncation, with garbage, the proxy's own lines and an overlong line.
use std::{
    io::Read,
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use serde_json::Value;
use socket2::Socket;

use super::{append, joined, rfc3339_utc, unix_ms_now, TempDir};
use crate::{
    common::{api::Daemon, can_run_kernel_tests, netns::TestNetns, proxy::closed_port, workload},
    KERNEL,
};

const UID: &str = "5f0c9a1e-3b7d-4c2a-8e6f-9a0b1c2d3e4f";

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

    let fixture: Vec<Value> = include_str!("../../fixtures/envoy/access.jsonl")
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
