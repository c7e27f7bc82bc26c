//! Names, not cookies (issue 15 item 7): two `ip netns` namespaces of the test, each with a
//! real HTTP server (python3 http.server) on the same port, curl against it, a client that
//! aborts its connections to it (SO_LINGER 0: RSTs at the listener's port) and curl refused
//! by a closed port. `flows` names each flow's namespace and cgroup; `--netns NAME` filters by
//! name; anomalies and `top` keep the two namespaces apart and name them in their scopes.
use std::{
    collections::BTreeSet,
    io::Write as _,
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::process::Background;

use crate::{
    common::{
        api::{Daemon, Stream},
        can_run_kernel_tests,
        netns::{enter_current_thread, TestNetns},
        proxy::{closed_port, curl},
    },
    KERNEL,
};

const PORT: u16 = 8080;

/// `python3 -m http.server` on 127.0.0.1:PORT inside `ns`, answering once curl gets a 200.
fn http_server(ns: &str) -> Background {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "/usr/bin/python3", "-m", "http.server"])
        .args([&PORT.to_string(), "--bind", "127.0.0.1"])
        .current_dir("/usr/share");
    let server = Background::start(&mut cmd, None).expect("start python3 http.server");
    let url = format!("http://127.0.0.1:{PORT}/");
    let start = Instant::now();
    while curl(ns, &url, 1, 200) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "http.server in {ns} never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

/// `n` connections to PORT in `ns` that send a request line and abort (SO_LINGER 0).
fn aborting_clients(ns: &str, n: usize) {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter_current_thread(&ns);
        for _ in 0..n {
            let mut s = TcpStream::connect(("127.0.0.1", PORT)).expect("connect");
            s.write_all(b"GET / HTTP/1.0\r\n").expect("write");
            let s = socket2::Socket::from(s);
            s.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
            drop(s);
        }
    })
    .join()
    .expect("aborting clients");
}

fn array(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v:#}"))
}

/// Polls `f` until it returns `Some` or `limit` passes.
fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_namespaces_on_one_port_are_named_and_kept_apart() {
    if !can_run_kernel_tests("names_not_cookies") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let (a, b) = (TestNetns::new("nameA"), TestNetns::new("nameB"));
    // The whole host: the test's two namespaces at once (other traffic of the machine is
    // there too; every assertion below is about the test's own namespaces).
    let daemon = Daemon::start("", "names", &[]);
    let servers = [http_server(&a.name), http_server(&b.name)];
    let url = format!("http://127.0.0.1:{PORT}/");
    for ns in [&a.name, &b.name] {
        assert_eq!(curl(ns, &url, 3, 200), 3, "curl in {ns}");
        aborting_clients(ns, 3);
        let closed = format!("http://127.0.0.1:{}/", closed_port(ns));
        for _ in 0..2 {
            let refused = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "curl",
                    "-s",
                    "--max-time",
                    "5",
                    &closed,
                ])
                .output()
                .expect("run curl");
            // curl's exit code 7: failed to connect.
            assert_eq!(
                refused.status.code(),
                Some(7),
                "curl to a closed port in {ns}"
            );
        }
    }

    // top first (its window is 10 s, and a slow machine spends that on the checks below):
    // the two listeners on PORT are two rows, each named.
    let local = format!("local port {PORT} in netns ");
    let top_rows = eventually(Duration::from_secs(5), || {
        let top = daemon.json(&["top", "--once", "--limit", "500"]);
        let rows: Vec<String> = array(&top["rows"])
            .iter()
            .filter_map(|r| r["scope"].as_str())
            .filter(|s| s.starts_with(&local))
            .map(str::to_owned)
            .collect();
        (rows.contains(&format!("{local}{}", a.name))
            && rows.contains(&format!("{local}{}", b.name)))
        .then_some(rows)
    });
    assert!(
        top_rows.is_some(),
        "two rows for port {PORT}: {:#}",
        daemon.json(&["top", "--once"])
    );
    // top --netns NAME: that namespace's rows only (its port row among them); a missing name
    // is an error.
    let only = daemon.json(&["top", "--once", "--limit", "500", "--netns", &b.name]);
    let scopes: Vec<&str> = array(&only["rows"])
        .iter()
        .filter_map(|r| r["scope"].as_str())
        .collect();
    assert!(
        scopes.contains(&format!("{local}{}", b.name).as_str()),
        "{only:#}"
    );
    assert!(
        array(&only["rows"])
            .iter()
            .all(|r| r["netns"] == b.name.as_str()),
        "{only:#}"
    );
    let bad = daemon.cli(&["top", "--once", "--netns", "no-such-netns-lpt"]);
    assert!(!bad.status.success(), "a missing namespace accepted by top");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ip netns list"));
    // flows: each flow of PORT names its namespace; both namespaces are there.
    let port = PORT.to_string();
    let names = eventually(Duration::from_secs(5), || {
        let flows = daemon.json(&["flows", "--port", &port, "--limit", "2000"]);
        let names: BTreeSet<String> = array(&flows)
            .iter()
            .filter_map(|f| f["netns"].as_str().map(str::to_owned))
            .collect();
        names
            .is_superset(&[a.name.clone(), b.name.clone()].into())
            .then_some(names)
    })
    .expect("flows of both namespaces, named");
    assert!(
        !names.iter().any(|n| n.chars().all(|c| c.is_ascii_digit())),
        "{names:?}"
    );
    // --netns NAME: only that namespace's flows, its servers' accepted sockets owned by
    // python3 (the listener's owner), a cookie in JSON, and the cgroup's path.
    let only_a = daemon.json(&[
        "flows", "--netns", &a.name, "--port", &port, "--limit", "2000",
    ]);
    let rows = array(&only_a);
    assert!(
        rows.len() >= 3 * 2,
        "curl's and the aborting clients' flows: {only_a:#}"
    );
    let cookie_a = rows[0]["netns_cookie"].as_u64().expect("netns_cookie");
    for f in rows {
        assert_eq!(f["netns"], a.name.as_str(), "{f:#}");
        assert_eq!(f["netns_cookie"].as_u64(), Some(cookie_a), "{f:#}");
        if f["cgroup_id"].is_u64() {
            assert!(
                f["cgroup"].as_str().is_some_and(|p| p.starts_with('/')),
                "{f:#}"
            );
        }
    }
    assert!(
        rows.iter().any(|f| f["role"] == "server"
            && f["comm"].as_str().is_some_and(|c| c.starts_with("python"))),
        "python3's accepted sockets: {only_a:#}"
    );
    // The same by cookie; and the wide table shows names, not numbers.
    let by_cookie = daemon.json(&["flows", "--netns", &cookie_a.to_string(), "--port", &port]);
    assert!(array(&by_cookie)
        .iter()
        .all(|f| f["netns"] == a.name.as_str()));
    let wide = daemon.ok(&["flows", "--netns", &a.name, "--port", &port, "-o", "wide"]);
    assert!(wide.contains("NETNS") && wide.contains(&a.name), "{wide}");
    // A JSON answer cut by --limit stays a bare array and says so on stderr.
    let cut = daemon.cli(&[
        "flows", "--netns", &a.name, "--port", &port, "--limit", "1", "-o", "json",
    ]);
    let shown: Value = serde_json::from_slice(&cut.stdout).expect("a JSON array");
    assert_eq!(array(&shown).len(), 1);
    let note = String::from_utf8_lossy(&cut.stderr);
    assert!(
        note.contains(&format!(
            "truncated: 1 of {} matching flows shown",
            rows.len()
        )),
        "{note}"
    );
    // A name that does not exist is a clear error.
    let bad = daemon.cli(&["flows", "--netns", "no-such-netns-lpt"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "a missing namespace accepted");
    assert!(
        stderr.contains("no network namespace \"no-such-netns-lpt\"")
            && stderr.contains("ip netns list"),
        "{stderr}"
    );

    // Anomalies: a refused connect in each namespace is its own, named in its scope.
    let in_scope = |ns: &str| format!("in netns {ns}");
    let anomalies = eventually(Duration::from_secs(8), || {
        let all = daemon.json(&["anomalies"]);
        let refused: Vec<Value> = array(&all["active"])
            .iter()
            .chain(array(&all["recent"]))
            .filter(|x| x["kind"] == "connect_refused")
            .filter(|x| x["netns"] == a.name.as_str() || x["netns"] == b.name.as_str())
            .cloned()
            .collect();
        let named: BTreeSet<&str> = refused.iter().filter_map(|x| x["netns"].as_str()).collect();
        (named.len() == 2).then_some(refused)
    })
    .expect("a connect_refused in each namespace");
    // Each is its own incident (the same address and port, but another namespace).
    let all = daemon.json(&["anomalies"]);
    for x in &anomalies {
        let holding: Vec<&Value> = array(&all["incidents"])
            .iter()
            .filter(|i| {
                i["primary"] == x["id"] || array(&i["symptoms"]).iter().any(|s| *s == x["id"])
            })
            .collect();
        assert_eq!(holding.len(), 1, "{x:#} in {:#}", all["incidents"]);
        let others: Vec<&Value> = anomalies
            .iter()
            .filter(|y| y["netns"] != x["netns"])
            .collect();
        for y in others {
            assert!(
                holding[0]["primary"] != y["id"]
                    && !array(&holding[0]["symptoms"]).iter().any(|s| *s == y["id"]),
                "the two namespaces' refusals in one incident: {:#}",
                holding[0]
            );
        }
    }
    for x in &anomalies {
        let ns = x["netns"].as_str().expect("netns");
        // The process behind it: curl, whose connects were refused.
        assert!(
            array(&x["processes"])
                .iter()
                .any(|p| p.as_str().is_some_and(|p| p.starts_with("curl/"))),
            "{x:#}"
        );
        assert!(
            x["scope"]
                .as_str()
                .is_some_and(|s| s.ends_with(&in_scope(ns))),
            "{x:#}"
        );
    }

    // anomalies --netns NAME: that namespace's only; a missing name is an error.
    let only = daemon.json(&["anomalies", "--netns", &b.name]);
    let picked: Vec<&Value> = array(&only["active"])
        .iter()
        .chain(array(&only["recent"]))
        .collect();
    assert!(
        picked.iter().any(|x| x["kind"] == "connect_refused"),
        "{only:#}"
    );
    assert!(
        picked.iter().all(|x| x["netns"] == b.name.as_str()),
        "{only:#}"
    );
    let bad = daemon.cli(&["watch", "--netns", "no-such-netns-lpt", "--count", "1"]);
    assert!(
        !bad.status.success(),
        "a missing namespace accepted by watch"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ip netns list"));
    let bad = daemon.cli(&["anomalies", "--netns", "no-such-netns-lpt"]);
    assert!(
        !bad.status.success(),
        "a missing namespace accepted by anomalies"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ip netns list"));

    // watch --netns NAME: live events of that namespace only, curl in both.
    let watch = Stream::start(&daemon.socket, &["watch", "--netns", &a.name, "-o", "json"]);
    assert_eq!(curl(&b.name, &url, 1, 200), 1);
    assert_eq!(curl(&a.name, &url, 1, 200), 1);
    let lines = watch.collect_until(Duration::from_secs(5), |got| {
        got.iter().any(|l| l.contains("\"flow_end\""))
    });
    let events: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "event")
        .collect();
    assert!(!events.is_empty(), "{lines:#?}");
    assert!(
        events
            .iter()
            .all(|e| e["netns_cookie"].as_u64() == Some(cookie_a)),
        "{lines:#?}"
    );
    drop(watch);

    drop(servers);
    daemon.stop();
}
