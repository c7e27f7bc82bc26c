//! Real-kernel tests of the Envoy access-log join (`[envoy]`): real HAProxy in the test's
//! namespace writing Envoy-named JSON lines in front of upstreams that answer, refuse, reset
//! after reading and stall (`haproxy`); and Envoy-documented fixture lines replayed with their
//! addresses rewritten to the test's own connections, CRI-wrapped in a kubelet pod log
//! directory, through rotation and truncation, with garbage (`replay`). Every line must join
//! to the flow the test knows it used (its tuple, or the test's own socket cookie); the counts
//! are exact. What both share is here.
mod haproxy;
mod replay;

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::api::Daemon;

pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> TempDir {
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

pub(super) fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    f.write_all(text.as_bytes()).expect("write log");
}

pub(super) fn unix_ms_now() -> i128 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i128::try_from(d.as_millis()).expect("ms")
}

/// `unix_ms` as RFC 3339 UTC with milliseconds, as Envoy writes `start_time`.
pub(super) fn rfc3339_utc(unix_ms: i128) -> String {
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

/// Polls `status` until the join has taken `total` requests; returns the `envoy` row.
pub(super) fn joined(daemon: &Daemon, total: u64) -> Value {
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
pub(super) type Joined = BTreeMap<(String, String), (u64, String, String, Value, String)>;

pub(super) fn requests_on(daemon: &Daemon, port: u16) -> Joined {
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

pub(super) fn metric(body: &str, line_start: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line_start} not in /metrics"))
}
