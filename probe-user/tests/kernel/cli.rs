//! The on-call CLI against a real daemon on the real kernel: after a known workload in the
//! test's namespace, every command's output is checked against the test's own sockets
//! (`SO_COOKIE`), process id and counts.
use std::time::Duration;

use serde_json::Value;

use crate::{
    common::{
        api::{assert_aligned_table, Daemon, Stream},
        can_run_kernel_tests,
        netns::TestNetns,
        workload,
    },
    KERNEL,
};

fn flow_by_cookie(flows: &Value, cookie: u64) -> Option<&Value> {
    flows
        .as_array()
        .expect("flows array")
        .iter()
        .find(|f| f["cookie"].as_u64() == Some(cookie))
}

#[test]
fn cli_commands_tell_the_story_of_a_known_workload() {
    if !can_run_kernel_tests("cli_commands") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    const REFUSED: usize = 5;
    let ns = TestNetns::new("cli");
    // Every hook hit of flows on port 9 (the refused ones): the daemon's scoped detail.
    let daemon = Daemon::start(&ns.name, "cli", &["--detail", "port=9"]);

    // `watch -o json` subscribed before the workload must stream its events live.
    let watch = Stream::start(&daemon.socket, &["watch", "-o", "json", "--port", "9"]);
    let refused = ns.enter(|| workload::refused_connects(9, REFUSED));
    let (aborted_clients, aborted_servers) = ns.enter(|| workload::linger_zero_aborts(2));
    let lines = watch.collect_until(Duration::from_secs(10), |got| {
        refused.iter().all(|c| {
            got.iter().any(|l| {
                l.contains(&format!("\"cookie\":{c},")) && l.contains("\"kind\":\"rst_received\"")
            })
        })
    });
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for c in &refused {
        let kinds: Vec<&str> = events
            .iter()
            .filter(|e| e["cookie"].as_u64() == Some(*c))
            .filter_map(|e| e["kind"].as_str())
            .collect();
        assert!(
            kinds.contains(&"connect") && kinds.contains(&"rst_received"),
            "watch stream for cookie {c}: {kinds:?}"
        );
    }
    // The aborted pairs (another port) are outside the detail filter: their flows send only
    // what matters (summaries and the RST sent), which the `--port 9` watch does not show.
    assert!(
        events.iter().all(|e| e["type"] == "event"
            && (e["local"].as_str().unwrap().ends_with(":9")
                || e["remote"].as_str().unwrap().ends_with(":9"))),
        "--port 9 filter: {lines:#?}"
    );
    eprintln!(
        "== watch -o json: {} events streamed live for {REFUSED} refused connects",
        events.len()
    );
    drop(watch);

    // flows -o json: every socket of ours with the right fields.
    let flows = daemon.json(&["flows", "--limit", "1000"]);
    let pid = u64::from(std::process::id());
    for c in &refused {
        let f = flow_by_cookie(&flows, *c).unwrap_or_else(|| panic!("cookie {c} in {flows:#}"));
        assert_eq!(f["type"], "flow");
        assert_eq!(f["role"], "client");
        assert_eq!(f["close"], "refused");
        assert_eq!(f["state"], "CLOSE");
        assert_eq!(f["remote"], "127.0.0.1:9");
        assert_eq!(f["pid"].as_u64(), Some(pid));
        assert_eq!(f["rst_received"], 1);
    }
    for c in &aborted_clients {
        let f = flow_by_cookie(&flows, *c).expect("aborted client flow");
        assert_eq!(f["close"], "rst_received");
        assert!(f["handshake_us"].as_u64().is_some());
    }
    for c in &aborted_servers {
        let f = flow_by_cookie(&flows, *c).expect("aborted server flow");
        assert_eq!(f["role"], "server");
        assert_eq!(f["rst_sent"], 1);
    }
    // Filters select exactly our sockets.
    let failed = daemon.json(&["flows", "--failed"]);
    let mut got: Vec<u64> = failed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["cookie"].as_u64())
        .collect();
    got.sort_unstable();
    // One vocabulary with connect_failures_total: refused connects and connections ended by
    // an RST (cause "reset"), on both ends of the aborted pairs.
    let mut want: Vec<u64> = refused
        .iter()
        .chain(&aborted_clients)
        .chain(&aborted_servers)
        .copied()
        .collect();
    want.sort_unstable();
    assert_eq!(
        got, want,
        "--failed lists exactly the refused and the reset flows"
    );
    let with_rst = daemon.json(&[
        "flows",
        "--with-rst",
        "--state",
        "closed",
        "--pid",
        &pid.to_string(),
    ]);
    assert_eq!(
        with_rst.as_array().unwrap().len(),
        REFUSED + aborted_clients.len() + aborted_servers.len(),
        "--with-rst --pid (an accepted socket belongs to its listener's owner: us too)"
    );
    assert_eq!(
        daemon
            .json(&["flows", "--limit", "2"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Table output: header and aligned columns, one row per flow.
    let table = daemon.ok(&["flows", "--failed"]);
    eprintln!("== linkprobe flows --failed\n{table}");
    assert_aligned_table(&table, "COOKIE");
    assert_eq!(
        table.lines().count(),
        1 + REFUSED + aborted_clients.len() + aborted_servers.len()
    );
    for c in &refused {
        assert!(table.contains(&c.to_string()));
    }
    // Colour only on a terminal, and never with NO_COLOR.
    let on_tty = |no_color: bool| {
        let cmd = format!(
            "{} flows --failed --socket {}",
            env!("CARGO_BIN_EXE_linkprobe"),
            daemon.socket.display()
        );
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"]).env_remove("NO_COLOR");
        if no_color {
            c.env("NO_COLOR", "1");
        }
        let out = c.output().expect("script (util-linux)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(on_tty(false).contains("\x1b["), "colour on a TTY");
    assert!(!on_tty(true).contains("\x1b["), "NO_COLOR honoured");
    let piped = std::process::Command::new(env!("CARGO_BIN_EXE_linkprobe"))
        .args(["flows", "--failed", "--socket"])
        .arg(&daemon.socket)
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&piped.stdout).contains('\x1b'),
        "no colour in a pipe"
    );

    let wide = daemon.ok(&["flows", "-o", "wide", "--with-rst"]);
    assert_aligned_table(&wide, "COOKIE");
    assert!(wide.lines().next().unwrap().contains("HANDSHAKE"));

    // flow <cookie>: the whole story, timeline in order.
    let story = daemon.ok(&["flow", &refused[0].to_string()]);
    eprintln!("== linkprobe flow {}\n{story}", refused[0]);
    let offsets: Vec<f64> = story
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix('+'))
        .filter_map(|l| l.split('s').next()?.parse().ok())
        .collect();
    assert!(offsets.len() >= 3, "timeline lines: {story}");
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]),
        "timeline in order: {offsets:?}"
    );
    let pos = |what: &str| {
        story
            .find(what)
            .unwrap_or_else(|| panic!("{what:?} in {story}"))
    };
    assert!(pos(" connect") < pos("rst_received"));
    assert!(pos("rst_received") < pos("SYN_SENT->CLOSE sk_err=111"));
    assert!(story.contains("127.0.0.1:9"));
    assert!(story.contains("closed: refused"));
    assert!(story.contains("connect_refused on peer 127.0.0.1:9"));
    assert!(story.contains("root cause: nothing listening on 127.0.0.1:9 (RST to SYN)"));
    let fj = daemon.json(&["flow", &format!("{:#x}", refused[0])]);
    assert_eq!(fj["flow"]["cookie"].as_u64(), Some(refused[0]));
    let kinds: Vec<&str> = fj["flow"]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    let at = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("{k} in {kinds:?}"))
    };
    assert!(
        at("connect") < at("rst_received") && at("rst_received") < at("flow_end"),
        "{kinds:?}"
    );
    let offs: Vec<u64> = fj["flow"]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["offset_ns"].as_u64())
        .collect();
    assert!(offs.windows(2).all(|w| w[0] <= w[1]), "{offs:?}");
    assert!(fj["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["kind"] == "connect_refused"));
    let server = daemon.ok(&["flow", &aborted_servers[0].to_string()]);
    assert!(
        server.contains("reason=TCP_ABORT_ON_LINGER") || server.contains("rst      sent 1"),
        "{server}"
    );

    // A storm: `anomalies --watch` reports it as it is raised; `anomalies` shows it while it
    // is active, with our refused sockets as evidence.
    let follow = Stream::start(&daemon.socket, &["anomalies", "--watch", "-o", "json"]);
    let made = ns.enter(|| workload::refused_storm(9, 1500, Duration::from_secs(3)));
    let changes = follow.collect_until(Duration::from_secs(5), |got| {
        got.iter()
            .any(|l| l.contains("\"rst_storm\"") && l.contains("\"raised\""))
    });
    let raised: Vec<Value> = changes
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|a: &Value| a["kind"] == "rst_storm" && a["change"] == "raised")
        .collect();
    assert!(
        !raised.is_empty(),
        "anomalies --watch streamed: {changes:#?}"
    );
    assert_eq!(raised[0]["type"], "anomaly");
    eprintln!(
        "== anomalies --watch: {}",
        changes.iter().find(|l| l.contains("rst_storm")).unwrap()
    );
    drop(follow);
    std::thread::sleep(Duration::from_millis(1500));
    let anomalies = daemon.json(&["anomalies"]);
    let active = anomalies["active"].as_array().expect("active");
    let storm: Vec<&Value> = active.iter().filter(|a| a["kind"] == "rst_storm").collect();
    assert!(
        storm.iter().any(|a| a["scope"] == "local port 9")
            && storm.iter().any(|a| a["scope"] == "peer 127.0.0.1:9"),
        "{made} refused connects: rst_storm active on both scopes: {anomalies:#}"
    );
    let refused_anomaly = active
        .iter()
        .find(|a| a["kind"] == "connect_refused")
        .expect("connect_refused active");
    let evidence: Vec<u64> = refused_anomaly["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(
        refused.iter().all(|c| evidence.contains(c)),
        "evidence {evidence:?}"
    );
    let table = daemon.ok(&["anomalies"]);
    eprintln!("== linkprobe anomalies\n{table}");
    // Incidents first, then the anomalies.
    let (incidents, table) = table
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("incidents, then anomalies: {table}"));
    assert_aligned_table(incidents, "INCIDENT");
    assert_aligned_table(table, "ID");
    assert!(table.contains("rst_storm") && table.contains("active"));

    // top ranks the storm first by RST rate.
    let top = daemon.json(&["top", "--once"]);
    // The storm's scopes (the client's peer 127.0.0.1:9, the sender's local port 9 and its
    // peer 127.0.0.1) lead, far above the two linger-0 aborts.
    let rows = top["rows"].as_array().unwrap();
    let leaders: Vec<&str> = rows
        .iter()
        .take(3)
        .filter_map(|r| r["scope"].as_str())
        .collect();
    for scope in ["peer 127.0.0.1:9", "local port 9"] {
        assert!(leaders.contains(&scope), "{scope} in the top 3: {top:#}");
    }
    assert!(rows[0]["rst_per_sec"].as_f64().unwrap() > 50.0, "{top:#}");
    let by_fail = daemon.json(&["top", "--once", "--by", "failure", "--limit", "1"]);
    assert_eq!(
        by_fail["rows"][0]["scope"], "peer 127.0.0.1:9",
        "{by_fail:#}"
    );
    let top_text = daemon.ok(&["top", "--once"]);
    eprintln!("== linkprobe top --once\n{top_text}");
    assert_aligned_table(top_text.split_once('\n').unwrap().1, "SCOPE");

    // status: the probe table, counters, flow table fill, anomalies.
    let status = daemon.json(&["status"]);
    assert_eq!(status["probes"].as_array().unwrap().len(), 7);
    assert!(status["probes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["attached"] == true || p["skipped"] == true));
    assert!(status["flows"]["tracked"].as_u64().unwrap() >= made);
    assert!(status["anomalies"]["active"].as_u64().unwrap() >= 3);
    assert!(status["records"]["connect"].as_u64().unwrap() >= made);
    assert_eq!(
        status["kernel"].as_str().unwrap(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim()
    );
    let text = daemon.ok(&["status"]);
    eprintln!("== linkprobe status\n{text}");
    assert!(
        text.contains("probes: ") && !text.contains("(degraded)"),
        "{text}"
    );
    assert!(text.contains("[detect]"), "config in effect");
    daemon.stop();
}
