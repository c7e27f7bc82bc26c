//! The Kubernetes API source against [`FakeApiserver`] replaying apiserver JSON (fixtures in
//! tests/fixtures/kube/: a two-page list of node-a's pods, watch streams, a relist, 410
//! Status bodies). Each step asserts the directory and the status the source shows.
use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use super::{feed::SOURCE, start, KubeError, KubeSettings};
use crate::attrib::pods::PodDirectory;

mod fake_apiserver;
use fake_apiserver::{FakeApiserver, WatchFeed};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/kube/",
            $name
        ))
    };
}

const PAGE_1: &str = fixture!("list-page-1.json");
const PAGE_2: &str = fixture!("list-page-2.json");
const RELIST: &str = fixture!("relist.json");
const WATCH_1: &str = fixture!("watch-1.jsonl");
const WATCH_2: &str = fixture!("watch-2.jsonl");
const WATCH_3: &str = fixture!("watch-3.jsonl");
const WATCH_GONE: &str = fixture!("watch-gone.json");
const CONTINUE_EXPIRED: &str = fixture!("continue-expired.json");
const CONTINUE_TOKEN: &str =
    "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6NDgyMzAsInN0YXJ0IjoicmVkaXMtMFx1MDAwMCJ9";

const FRONTEND: &str = "0b6c3a8e-5d0c-4a4e-9a57-2f4f1e6b8c11";
const REDIS: &str = "5f0e2c1d-8b3a-4f6e-9c2d-7a1b3e4f5a60";
const PROXY: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const CART: &str = "c4a1e2b3-7d6c-4b5a-9e8f-0a1b2c3d4e5f";
const CHECKOUT: &str = "d5b2f3c4-8e7d-4c6b-a09f-1b2c3d4e5f60";
const PAYMENTS: &str = "e6c3a4d5-9f8e-4d7c-b1a0-2c3d4e5f6a71";

fn settings(server: &FakeApiserver, retry_first_ms: u64) -> KubeSettings {
    KubeSettings {
        node_name: "node-a".into(),
        api_url: Some(server.url.clone()),
        page_size: 2,
        retry_first: Duration::from_millis(retry_first_ms),
        retry_max: Duration::from_millis(retry_first_ms * 4),
        ..KubeSettings::default()
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn pod_at(dir: &PodDirectory, addr: &str) -> Option<String> {
    dir.by_ip(ip(addr))
        .map(|p| format!("{}/{}", p.namespace, p.name))
}

/// Polls `cond` for up to 10 s; the panic shows the status.
fn wait_for(dir: &PodDirectory, what: &str, cond: impl Fn(&PodDirectory) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond(dir) {
        assert!(
            Instant::now() < deadline,
            "not within 10 s: {what}; status {:?}, {} pods",
            dir.status(),
            dir.len()
        );
        thread::sleep(Duration::from_millis(2));
    }
}

fn state(dir: &PodDirectory) -> String {
    dir.status().state
}

/// Serves node-a's two list pages (asserting the requests) and opens the first watch.
fn list_both_pages(server: &FakeApiserver, dir: &PodDirectory, first_request: usize) -> WatchFeed {
    let first = server.request(first_request);
    assert!(
        first.starts_with("/api/v1/pods?"),
        "all namespaces' pods: {first}"
    );
    assert!(
        first.contains("fieldSelector=spec.nodeName%3Dnode-a"),
        "only this node's pods: {first}"
    );
    assert!(
        first.contains("limit=2") && !first.contains("watch=true") && !first.contains("continue=")
    );
    server.list(PAGE_1);
    let second = server.request(first_request + 1);
    assert!(
        second.contains(&format!("continue={CONTINUE_TOKEN}")) && second.contains("limit=2"),
        "the list's second page follows the continue token: {second}"
    );
    assert_eq!(dir.len(), 0, "half a list is not shown");
    server.list(PAGE_2);
    let feed = server.watch();
    wait_for(dir, "synced after both pages", |d| state(d) == "synced");
    feed
}

#[test]
fn lists_every_page_then_follows_the_watch_and_resumes_after_disconnects() {
    let server = FakeApiserver::start();
    let dir = PodDirectory::new(64);
    let _watch = start(&settings(&server, 20), dir.clone()).unwrap();
    assert_eq!(dir.status().source, SOURCE);
    server.request(1);
    assert_eq!(state(&dir), "listing");

    let feed = list_both_pages(&server, &dir, 1);
    assert_eq!(dir.len(), 3);
    assert_eq!(
        pod_at(&dir, "10.244.1.17").as_deref(),
        Some("shop/frontend-7d9c6b5f4-x2lqz")
    );
    assert_eq!(
        pod_at(&dir, "fd00:10:244:1::11").as_deref(),
        Some("shop/frontend-7d9c6b5f4-x2lqz")
    );
    assert_eq!(pod_at(&dir, "10.244.1.23").as_deref(), Some("shop/redis-0"));
    // kube-proxy runs with hostNetwork: the node's IP is not the pod's.
    assert_eq!(dir.by_uid(PROXY).unwrap().name, "kube-proxy-q8z7k");
    assert_eq!(pod_at(&dir, "172.18.0.3"), None);

    let watch = server.request(3);
    for part in [
        "watch=true",
        "resourceVersion=48230",
        "allowWatchBookmarks=true",
        "fieldSelector=spec.nodeName%3Dnode-a",
    ] {
        assert!(watch.contains(part), "{part} in {watch}");
    }

    // ADDED (pending, no IP yet), MODIFIED (IP assigned), DELETED, BOOKMARK.
    feed.lines(WATCH_1);
    wait_for(&dir, "cart's IP and redis deleted", |d| {
        pod_at(d, "10.244.1.31").is_some() && d.by_uid(REDIS).is_none()
    });
    assert_eq!(
        pod_at(&dir, "10.244.1.31").as_deref(),
        Some("shop/cart-5c8d7b9f6-kq4tn")
    );
    assert_eq!(pod_at(&dir, "10.244.1.23"), None);
    assert_eq!(dir.len(), 3);

    // The watch ends (the apiserver's timeoutSeconds): resumed from the bookmark's
    // resourceVersion, without a relist.
    feed.end();
    let feed = server.watch();
    let resumed = server.request(4);
    assert!(
        resumed.contains("watch=true") && resumed.contains("resourceVersion=48260"),
        "resumed from the bookmark: {resumed}"
    );
    feed.line(WATCH_2.lines().next().unwrap());
    wait_for(&dir, "checkout added", |d| d.by_uid(CHECKOUT).is_some());
    assert_eq!(
        pod_at(&dir, "10.244.1.40").as_deref(),
        Some("shop/checkout-6f7b8c9d5-zz9wx")
    );

    // The connection is cut mid-stream: resumed from the last event's resourceVersion.
    feed.abort();
    let feed = server.watch();
    let resumed = server.request(5);
    assert!(
        resumed.contains("watch=true") && resumed.contains("resourceVersion=48270"),
        "resumed after the cut: {resumed}"
    );
    feed.line(WATCH_1.lines().nth(2).unwrap()); // redis's DELETED again: harmless
    feed.line(WATCH_3.lines().next().unwrap()); // payments appears by MODIFIED
    wait_for(&dir, "payments after the cut", |d| {
        d.by_uid(PAYMENTS).is_some()
    });
    assert_eq!(state(&dir), "synced");
    assert_eq!(dir.len(), 5);
    assert!(
        server
            .requests()
            .iter()
            .all(|r| !r.contains("continue=") || r.contains("limit=2")),
        "{:#?}",
        server.requests()
    );
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| !r.contains("watch=true"))
            .count(),
        2,
        "no relist for a disconnect: {:#?}",
        server.requests()
    );
}

#[test]
fn gone_relists_and_replaces_the_directory() {
    let server = FakeApiserver::start();
    let dir = PodDirectory::new(64);
    let _watch = start(&settings(&server, 20), dir.clone()).unwrap();
    let feed = list_both_pages(&server, &dir, 1);
    feed.lines(WATCH_1);
    wait_for(&dir, "cart's IP", |d| pod_at(d, "10.244.1.31").is_some());

    // ADDED checkout, then ERROR 410 Expired: the watcher relists. Until the relist is
    // complete, the directory keeps what it had.
    feed.lines(WATCH_2);
    wait_for(&dir, "relisting", |d| state(d) == "relisting (410 Gone)");
    let relist = server.request(4);
    assert!(
        !relist.contains("watch=true")
            && !relist.contains("continue=")
            && !relist.contains("resourceVersion="),
        "a fresh list: {relist}"
    );
    assert!(dir.by_uid(CART).is_some() && dir.by_uid(CHECKOUT).is_some());
    // The relist: cart was deleted while the watch was gone, payments was created.
    server.list(RELIST);
    let feed = server.watch();
    wait_for(&dir, "synced after the relist", |d| state(d) == "synced");
    assert_eq!(dir.by_uid(CART), None, "deleted during the gap");
    assert_eq!(pod_at(&dir, "10.244.1.31"), None);
    for uid in [FRONTEND, PROXY, CHECKOUT, PAYMENTS] {
        assert!(dir.by_uid(uid).is_some(), "{uid} listed");
    }
    assert_eq!(dir.len(), 4);
    let watch = server.request(5);
    assert!(
        watch.contains("watch=true") && watch.contains("resourceVersion=50112"),
        "{watch}"
    );

    // The next watch is refused with HTTP 410 (kube's watcher would retry the expired
    // resourceVersion forever): a new watcher relists.
    feed.lines(WATCH_3);
    wait_for(&dir, "payments moved", |d| {
        pod_at(d, "10.244.1.53").is_some()
    });
    assert_eq!(pod_at(&dir, "10.244.1.52"), None);
    feed.end();
    server.watch_status(410, WATCH_GONE);
    server.request(6);
    wait_for(&dir, "relisting after HTTP 410", |d| {
        state(d) == "relisting (410 Gone)"
    });
    let relist = server.request(7);
    assert!(
        !relist.contains("watch=true") && !relist.contains("continue="),
        "{relist}"
    );

    // That relist's continue token expires between pages (HTTP 410 Expired): start over.
    server.list(PAGE_1);
    assert!(server.request(8).contains("continue="));
    server.list_status(410, CONTINUE_EXPIRED);
    let again = server.request(9);
    assert!(
        !again.contains("continue=") && !again.contains("watch=true"),
        "{again}"
    );
    assert_eq!(state(&dir), "relisting (410 Gone)");
    assert!(
        dir.by_uid(PAYMENTS).is_some(),
        "kept until the relist completes"
    );
    server.list(RELIST);
    let _feed = server.watch();
    wait_for(&dir, "synced again", |d| state(d) == "synced");
    assert_eq!(dir.len(), 4);
    assert_eq!(
        pod_at(&dir, "10.244.1.52").as_deref(),
        Some("shop/payments-84c9d7f6b-m3n4p")
    );
    let status = dir.status();
    assert_eq!(
        (status.errors, status.over_cap),
        (0, 0),
        "a 410 is routine, not an error"
    );
}

#[test]
fn hostile_bodies_are_counted_and_leave_the_directory_intact() {
    let server = FakeApiserver::start();
    let dir = PodDirectory::new(64);
    // Long enough a backoff to see the state between the error and the retry.
    let settings = KubeSettings {
        max_response_line: 3 << 19,
        ..settings(&server, 300)
    };
    let _watch = start(&settings, dir.clone()).unwrap();

    server.request(1);
    server.list(r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":[1,2,"#);
    // The kept last error, not the state: under software emulation the 300 ms backoff can
    // pass, and the state read `listing` again, before the test looks.
    wait_for(&dir, "a garbage list counted", |d| {
        d.status().errors == 1
            && d.status()
                .last_error
                .is_some_and(|e| e.starts_with("failed to perform initial object list"))
    });
    // An apiserver error page, not JSON at all.
    server.request(2);
    server.list_status(502, "<html><body>502 Bad Gateway</body></html>");
    wait_for(&dir, "an HTML 502 counted", |d| {
        d.status().errors == 2 && d.status().last_error.is_some_and(|e| e.contains("502"))
    });
    let after_502 = dir.status().last_error;

    let feed = list_both_pages(&server, &dir, 3);
    assert_eq!(dir.len(), 3);

    feed.line("this is not a watch event");
    // The watch broke on it: a new error of its own (the state may already read `listing`).
    wait_for(&dir, "garbage line counted", |d| {
        d.status().errors == 3 && d.status().last_error != after_502
    });
    let huge_name = "a".repeat(1 << 20);
    feed.line(&format!(
        r#"{{"type":"ADDED","object":{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"{huge_name}","namespace":"shop","uid":"0f0f0f0f-0000-4000-8000-000000000001","resourceVersion":"48300"}},"status":{{"podIP":"10.244.1.99"}}}}}}"#
    ));
    feed.line(r#"{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"x","namespace":"shop","uid":"../../../etc/passwd","resourceVersion":"48301"}}}"#);
    feed.line(r#"{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"x","namespace":"shop","uid":"0f0f0f0f-0000-4000-8000-000000000002","resourceVersion":"48302"},"status":{"podIPs":[{"ip":"not-an-ip"}]}}}"#);
    feed.line(r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcdserver: request timed out\u001b[2J","code":500}}"#);
    wait_for(&dir, "refused pods and the 500 counted", |d| {
        d.status().errors == 7
            && d.status()
                .last_error
                .is_some_and(|e| e.contains("etcdserver"))
    });
    // The state may already say `synced` again (any line within a second does, and a slow
    // machine takes that long): the latest error is kept apart.
    let s = dir.status().last_error.unwrap_or_default();
    assert!(s.contains("etcdserver: request timed out"), "{s}");
    assert!(
        !s.contains('\u{1b}') && s.contains("\\x1b[2J"),
        "escaped: {s}"
    );
    assert_eq!(pod_at(&dir, "10.244.1.99"), None);
    // A bookmark (no pod changed) shows the watch flows again.
    feed.line(WATCH_1.lines().nth(3).unwrap());
    wait_for(&dir, "synced after a bookmark", |d| state(d) == "synced");
    // The stream goes on: a good event is taken and the state is synced again.
    feed.lines(WATCH_1);
    wait_for(&dir, "cart after the garbage", |d| {
        pod_at(d, "10.244.1.31").is_some()
    });
    wait_for(&dir, "synced after the garbage", |d| state(d) == "synced");
    // The state was already `synced` (the bookmark): wait for the stream's last event too.
    wait_for(&dir, "frontend, kube-proxy, cart (redis deleted)", |d| {
        d.len() == 3
    });
    assert_eq!(
        pod_at(&dir, "10.244.1.17").as_deref(),
        Some("shop/frontend-7d9c6b5f4-x2lqz")
    );
    assert_eq!(dir.status().errors, 7);
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.contains("watch=true"))
            .count(),
        1,
        "bad lines do not cost a reconnect: {:#?}",
        server.requests()
    );

    // A line past the bound (1.5 MiB here) fails the response instead of filling memory;
    // the watch resumes where it was.
    feed.raw(vec![b'{'; 2 << 20]);
    wait_for(&dir, "the endless line counted", |d| d.status().errors == 8);
    // The latest error, not the state: a slow machine may already show `synced` again.
    let last = dir.status().last_error.unwrap_or_default();
    assert!(last.contains("without a line break"), "{last}");
    let feed = server.watch();
    let resumed = server.request(6);
    assert!(
        resumed.contains("watch=true") && resumed.contains("resourceVersion=48260"),
        "{resumed}"
    );
    feed.line(WATCH_3.lines().next().unwrap());
    wait_for(&dir, "synced after the endless line", |d| {
        state(d) == "synced" && d.by_uid(PAYMENTS).is_some()
    });
    assert_eq!(dir.len(), 4);
}

#[test]
fn refuses_to_start_without_a_node_name_or_api() {
    let dir = PodDirectory::new(4);
    let err = start(&KubeSettings::default(), dir.clone()).unwrap_err();
    assert!(matches!(err, KubeError::NoNodeName));
    let text = err.to_string();
    assert!(
        text.contains("NODE_NAME") && text.contains("downward API"),
        "{text}"
    );
    let hostile = KubeSettings {
        node_name: "node-a,metadata.namespace=kube-system".into(),
        ..KubeSettings::default()
    };
    assert!(matches!(
        start(&hostile, dir.clone()),
        Err(KubeError::BadNodeName(_))
    ));
    let bad_url = KubeSettings {
        node_name: "node-a".into(),
        api_url: Some("http://[::1".into()),
        ..KubeSettings::default()
    };
    assert!(matches!(
        start(&bad_url, dir.clone()),
        Err(KubeError::BadUrl { .. })
    ));
    // Outside a pod (no service-account token) the in-cluster configuration is refused.
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        let outside = KubeSettings {
            node_name: "node-a".into(),
            ..KubeSettings::default()
        };
        let err = start(&outside, dir.clone()).unwrap_err();
        assert!(matches!(err, KubeError::InCluster(_)), "{err}");
        assert!(err.to_string().contains("service account"), "{err}");
    }
    assert_eq!(dir.status().source, "none", "nothing started");
}

#[test]
fn stops_when_dropped() {
    let server = FakeApiserver::start();
    let dir = PodDirectory::new(8);
    let watch = start(&settings(&server, 20), dir.clone()).unwrap();
    let feed = list_both_pages(&server, &dir, 1);
    let started = Instant::now();
    drop(watch);
    // Bounded, not timed: a drop that waited for the watch would hang for its whole timeout
    // (minutes); 10 s leaves room for software emulation.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Nothing reads the stream any more: an event sent now changes nothing.
    feed.lines(WATCH_1);
    thread::sleep(Duration::from_millis(100));
    assert!(dir.by_uid(REDIS).is_some() && dir.by_uid(CART).is_none());
}

#[test]
fn starts_and_stops_from_inside_an_async_caller() {
    let server = FakeApiserver::start();
    let dir = PodDirectory::new(8);
    let caller = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The daemon may start the source from its own runtime: the watch's runtime is a
    // separate one on its own thread, and stopping it does not block the caller's.
    let watch = caller.block_on(async { start(&settings(&server, 20), dir.clone()).unwrap() });
    let _feed = list_both_pages(&server, &dir, 1);
    assert_eq!(dir.len(), 3);
    caller.block_on(async move { drop(watch) });
}

#[test]
fn tls_is_rustls_with_ring_and_a_failed_handshake_is_counted() {
    // An https URL on a plain-HTTP server: the client is built with rustls (its crypto
    // provider comes from the ring feature; none is installed by hand) and each TLS
    // handshake fails, counted, without a request reaching the server.
    let server = FakeApiserver::start();
    let dir = PodDirectory::new(8);
    let tls = KubeSettings {
        api_url: Some(server.url.replace("http://", "https://")),
        ..settings(&server, 20)
    };
    let _watch = start(&tls, dir.clone()).unwrap();
    wait_for(&dir, "a failed handshake counted", |d| {
        d.status().errors >= 1
    });
    let s = state(&dir);
    assert!(
        s.starts_with("reconnecting: ") && s.contains("corrupt message"),
        "{s}"
    );
    assert!(server.requests().is_empty(), "{:?}", server.requests());
}
