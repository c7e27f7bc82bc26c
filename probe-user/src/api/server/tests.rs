//! The server thread with a stand-in for the event loop (this test plays the loop's side of
//! the channels, so it decides exactly when a change is published relative to the snapshot —
//! a kernel test cannot hit that window deterministically).
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    os::unix::net::UnixStream,
    time::Duration,
};

use serde_json::Value;

use super::*;
use crate::{
    api::socket::tests::connect_as,
    host::run_dir::{tests::TempDir, RunDir},
    pipeline::detect::{Anomaly, AnomalyKind, Scope},
};

fn record(id: u64, change: &str, at_ns: u64) -> AnomalyRecord {
    let a = Anomaly {
        id,
        kind: AnomalyKind::ConnectRefused,
        scope: Scope::LocalPort(0, 80),
        start_ns: 1,
        end_ns: None,
        last_ns: at_ns,
        peak_rate: 1.0,
        evidence: vec![42],
        hint: AnomalyKind::ConnectRefused.hint(),
        detail: "connection refused".into(),
    };
    AnomalyRecord::new(&a, change, at_ns)
}

fn lines(r: &mut BufReader<UnixStream>, n: usize) -> Vec<Value> {
    (0..n)
        .map(|_| {
            let mut line = String::new();
            r.read_line(&mut line).expect("a reply line");
            serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{e}: {line}"))["reply"]
                .clone()
        })
        .collect()
}

#[test]
fn anomalies_watch_loses_nothing_between_snapshot_and_subscription_and_repeats_nothing() {
    let tmp = TempDir::new("api-watch-order");
    let run = RunDir::prepare(&tmp.path().join("run"), None).unwrap();
    let mut api = spawn(&run, None, ReasonNames::default()).unwrap();
    let mut queries = api.take_queries().unwrap();
    let s = UnixStream::connect(run.path().join(SOCKET_NAME)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (&s).write_all(b"{\"v\":1,\"req\":{\"type\":\"anomalies\",\"watch\":true}}\n")
        .unwrap();
    let q = queries.blocking_recv().expect("the snapshot query");
    assert_eq!(q.query, Query::Anomalies { watch: false });
    // The loop's order: anomaly 1 was raised (t=40) and is in the snapshot (t=50); anomaly 2 is
    // raised (t=100) after the snapshot but before the server reads the answer — the window
    // where a server that subscribes after its snapshot loses it. Then 1 clears (t=120).
    assert!(api.watched(), "subscribed before asking for the snapshot");
    api.publish(Live::Anomaly(record(1, "raised", 40)));
    api.publish(Live::Anomaly(record(2, "raised", 100)));
    let snapshot = Reply::Anomalies {
        active: vec![record(1, "active", 50)],
        recent: vec![],
        incidents: vec![],
    };
    q.reply.send(snapshot).ok().unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let got = lines(&mut r, 3);
    api.publish(Live::Anomaly(record(1, "cleared", 120)));
    let cleared = lines(&mut r, 1);
    let seen: Vec<(String, Option<u64>, Option<String>)> = got
        .iter()
        .chain(&cleared)
        .map(|v| {
            (
                v["type"].as_str().unwrap().to_owned(),
                v["anomaly"]["id"].as_u64(),
                v["anomaly"]["change"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let anomaly = |id, change: &str| ("anomaly".to_owned(), Some(id), Some(change.to_owned()));
    assert_eq!(
        seen[..2],
        [
            ("anomalies".to_owned(), None, None),
            ("subscribed".to_owned(), None, None)
        ]
    );
    assert_eq!(seen[2..], [anomaly(2, "raised"), anomaly(1, "cleared")]);
    assert_eq!(got[0]["active"][0]["id"], 1);
    // Nothing more: the raise of 1 (already in the snapshot) was not repeated.
    s.set_nonblocking(true).unwrap();
    let mut extra = String::new();
    assert!(
        r.read_line(&mut extra).is_err() || extra.is_empty(),
        "{extra}"
    );
}

/// The first line the server sent on `s`.
fn first_reply(s: &UnixStream) -> Value {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    serde_json::from_str::<Value>(&line).map_or(Value::Null, |v| v["reply"].clone())
}

#[test]
fn each_uid_is_capped_and_all_uids_together_by_the_global_cap() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    const GROUP: u32 = 4711;
    let tmp = TempDir::new("api-caps");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = RunDir::prepare(&tmp.path().join("run"), Some(GROUP)).unwrap();
    let api = spawn(&run, Some(GROUP), ReasonNames::default()).unwrap();
    let sock = run.path().join(SOCKET_NAME);
    let mut held = Vec::new();
    // Four users fill their shares: each is refused past its own 16, naming its uid.
    for uid in 5001..5005 {
        for _ in 0..MAX_PER_UID {
            held.push(connect_as(uid, GROUP, &sock).unwrap());
        }
        let extra = connect_as(uid, GROUP, &sock).unwrap();
        let v = first_reply(&extra);
        assert_eq!(v["code"], "too_many_clients", "{v}");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("from uid {uid} (at most 16 per user)")),
            "{msg}"
        );
    }
    assert_eq!(held.len(), MAX_CLIENTS);
    // A fifth user has its share free, but the server is full.
    let v = first_reply(&connect_as(5005, GROUP, &sock).unwrap());
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains("too many API clients (at most 64)"), "{v}");
    // One of the first user's connections goes: a place frees up, for anyone.
    drop(held.swap_remove(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = connect_as(5005, GROUP, &sock).unwrap();
        // A refused one may be closed before this write lands.
        let _ = (&s).write_all(b"{\"v\":1,\"req\":{\"type\":\"bogus\"}}\n");
        let v = first_reply(&s);
        if v["code"] == "bad_request" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never served again: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(api);
    drop(held);
}
