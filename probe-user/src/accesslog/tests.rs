//! The reader on Envoy-documented lines (fixtures in `tests/fixtures/envoy`), CRI-wrapped and
//! plain, through rotation and truncation mid-stream, garbage and overlong lines.
use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    cri::{self, Joined, Joiner, Stream, Wrapped},
    follow::Tail,
    parse::{parse_line, FieldNames, LineError},
    AccessLogs, Request, Settings,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/envoy");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("lp-accesslog-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
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
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn addr(s: &str) -> Option<std::net::SocketAddr> {
    Some(s.parse().unwrap())
}

#[test]
fn envoy_documented_lines_parse() {
    let names = FieldNames::default();
    let reqs: Vec<Request> = fixture("access.jsonl")
        .lines()
        .map(|l| parse_line(l, &names).unwrap())
        .collect();
    assert_eq!(reqs.len(), 5);
    let ok = &reqs[0];
    assert_eq!(ok.start_unix_ns, 1_681_287_802_546_000_000);
    assert_eq!(ok.duration_ms, 19);
    assert_eq!(ok.status, Some(200));
    assert!(ok.flags.is_empty());
    assert_eq!(ok.details.as_deref(), Some("via_upstream"));
    assert_eq!(ok.upstream_host, addr("10.244.0.18:9080"));
    assert_eq!(ok.upstream_local, addr("10.244.0.13:46738"));
    assert_eq!(ok.downstream_local, addr("10.96.41.97:9080"));
    assert_eq!(ok.downstream_remote, addr("10.244.0.13:35396"));
    assert_eq!(ok.upstream_connection_id, Some(7));
    assert_eq!(
        ok.request_id.as_deref(),
        Some("6e3c9d5c-2a3f-9b1e-9a59-0f7a3f1c2d11")
    );
    // UF: no upstream local address (the connection never came up).
    let uf = &reqs[1];
    assert_eq!(
        (uf.status, uf.flags.as_slice()),
        (Some(503), &["UF".to_owned()][..])
    );
    assert_eq!(uf.upstream_local, None);
    assert_eq!(uf.upstream_host, addr("10.244.0.18:9080"));
    assert_eq!(uf.upstream_connection_id, None);
    // Several flags, IPv6, numbers as strings.
    let uc = &reqs[2];
    assert_eq!(uc.flags, ["UC", "URX"]);
    assert_eq!(uc.duration_ms, 1204);
    assert_eq!(uc.upstream_local, addr("[fd00:10:244::13]:51002"));
    assert_eq!(uc.upstream_connection_id, Some(42));
    // DC with response code 0: no status; nulls are absent fields.
    let dc = &reqs[3];
    assert_eq!((dc.status, dc.request_id.as_ref()), (None, None));
    assert_eq!((dc.upstream_host, dc.upstream_local), (None, None));
    assert_eq!(reqs[4].flags, ["UH"]);
    assert_eq!(reqs[4].upstream_host, None);
}

#[test]
fn field_names_are_configurable() {
    let names = FieldNames {
        start_time: "ts".into(),
        response_code: "status".into(),
        upstream_host: "backend".into(),
        ..FieldNames::default()
    };
    let r = parse_line(
        r#"{"ts":"2024-01-01T00:00:00+01:00","status":"502","backend":"[::ffff:10.1.2.3]:80"}"#,
        &names,
    )
    .unwrap();
    assert_eq!(r.start_unix_ns, 1_704_063_600_000_000_000);
    assert_eq!(r.status, Some(502));
    // An IPv4-mapped address compares as IPv4, as flows show it.
    assert_eq!(r.upstream_host, addr("10.1.2.3:80"));
    assert_eq!(
        parse_line(r#"{"start_time":"2024-01-01T00:00:00Z"}"#, &names),
        Err(LineError::NoStartTime("ts".into()))
    );
}

#[test]
fn garbage_is_an_error_never_a_panic() {
    let names = FieldNames::default();
    let lines = fixture("garbage.txt");
    for l in lines.lines() {
        assert!(parse_line(l, &names).is_err(), "accepted {l}");
    }
    // Hostile values stay bounded and are escaped where they name something.
    let long = "x".repeat(10_000);
    let r = parse_line(
        &format!(
            r#"{{"start_time":"2024-01-01T00:00:00Z","x_request_id":"{long}","response_flags":"{}","upstream_host":"{long}"}}"#,
            ["UF"; 40].join(",")
        ),
        &names,
    )
    .unwrap();
    assert_eq!(r.request_id.unwrap().len(), super::parse::MAX_TEXT);
    assert_eq!(r.flags.len(), super::parse::MAX_FLAGS);
    assert_eq!(r.upstream_host, None);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(
        parse_line(&deep, &names),
        Err(LineError::NotJson(_))
    ));
    let e = parse_line(
        r#"{"start_time":"2024-01-01T00:00:00Z","duration":{}}"#,
        &names,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e, r#"field "duration" is not a whole number of ms"#);
}

#[test]
fn cri_wrapper_is_unwrapped_and_partial_lines_joined() {
    assert_eq!(
        cri::unwrap("2023-04-12T08:23:22.546812345Z stdout F {\"a\":1}"),
        Wrapped::Cri {
            stream: Stream::Stdout,
            partial: false,
            content: "{\"a\":1}"
        }
    );
    assert_eq!(cri::unwrap("{\"a\":1}"), Wrapped::Plain("{\"a\":1}"));
    assert_eq!(
        cri::unwrap("2023 stdout F x"),
        Wrapped::Plain("2023 stdout F x")
    );
    assert_eq!(
        cri::unwrap("2023-04-12T08:23:22Z stdin F x"),
        Wrapped::Plain("2023-04-12T08:23:22Z stdin F x")
    );
    let text = fixture("cri.log");
    let mut j = Joiner::default();
    let mut lines = Vec::new();
    for l in text.lines() {
        if let Joined::Line { line, cri } = j.push(l, 4096) {
            assert!(cri);
            lines.push(line.into_owned());
        }
    }
    assert_eq!(lines.len(), 3, "{lines:?}");
    let names = FieldNames::default();
    let first = parse_line(&lines[0], &names).unwrap();
    assert_eq!(first.request_id.as_deref(), Some("cri-1"));
    assert!(lines[1].starts_with("[2023-04-12 08:23:23.000]"));
    let joined = parse_line(&lines[2], &names).unwrap();
    assert_eq!(joined.request_id.as_deref(), Some("cri-2"));
    assert_eq!(joined.upstream_local, addr("10.244.0.13:46740"));
    assert_eq!(joined.flags, ["UC"]);

    // Streams join apart; a joined line past the bound is dropped whole.
    let t = "2023-04-12T08:23:22Z";
    let mut j = Joiner::default();
    assert_eq!(j.push(&format!("{t} stdout P aa"), 10), Joined::Pending);
    assert_eq!(j.push(&format!("{t} stderr P bb"), 10), Joined::Pending);
    assert_eq!(
        j.push(&format!("{t} stdout F cc"), 10),
        Joined::Line {
            line: "aacc".into(),
            cri: true
        }
    );
    assert_eq!(
        j.push(&format!("{t} stderr P 123456789"), 10),
        Joined::Pending
    );
    assert_eq!(j.push(&format!("{t} stderr F z"), 10), Joined::Overlong);
    assert_eq!(
        j.push(&format!("{t} stderr F ok"), 10),
        Joined::Line {
            line: "ok".into(),
            cri: true
        }
    );
}

fn poll_lines(t: &mut Tail) -> (Vec<String>, super::follow::PollStats) {
    let mut out = Vec::new();
    let stats = t
        .poll(&mut |l| out.push(String::from_utf8_lossy(l).into_owned()))
        .unwrap();
    (out, stats)
}

#[test]
fn a_tail_follows_rotation_and_truncation_mid_stream() {
    let dir = TempDir::new("tail");
    let log = dir.0.join("envoy.log");
    append(&log, "old-1\n");
    // A file present at start is read from its end.
    let mut t = Tail::new(log.clone(), 64, true).unwrap();
    assert!(poll_lines(&mut t).0.is_empty());
    append(&log, "a-1\na-2\na-3 no newline yet");
    assert_eq!(poll_lines(&mut t).0, ["a-1", "a-2"]);
    // Rotation mid-line: the rest of the old file (and its unfinished last line) comes first.
    append(&log, " ...done\na-4\na-5");
    std::fs::rename(&log, dir.0.join("envoy.log.1")).unwrap();
    append(&log, "b-1\n");
    let (lines, stats) = poll_lines(&mut t);
    assert_eq!(lines, ["a-3 no newline yet ...done", "a-4", "a-5", "b-1"]);
    assert_eq!(stats.rotations, 1);
    // Truncation (copytruncate) mid-line: the partial line is dropped, the file read again.
    append(&log, "b-2\nb-3 partial");
    assert_eq!(poll_lines(&mut t).0, ["b-2"]);
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    append(&log, "c-1\n");
    let (lines, stats) = poll_lines(&mut t);
    assert_eq!(lines, ["c-1"]);
    assert_eq!(stats.truncations, 1);
    // Overlong lines are skipped to their newline and counted, across reads.
    append(
        &log,
        &format!("{}\nc-2\n{}", "x".repeat(100), "y".repeat(40)),
    );
    let (lines, stats) = poll_lines(&mut t);
    assert_eq!(
        (lines.as_slice(), stats.overlong),
        (&["c-2".to_owned()][..], 1)
    );
    append(&log, &format!("{}\nc-3\r\n", "y".repeat(40)));
    let (lines, stats) = poll_lines(&mut t);
    assert_eq!(
        (lines.as_slice(), stats.overlong),
        (&["c-3".to_owned()][..], 1)
    );
    // Renamed away and polled before the new file exists: an error (its end read first),
    // then the new file is read from its start, counted as a rotation.
    append(&log, "c-4\n");
    std::fs::rename(&log, dir.0.join("envoy.log.2")).unwrap();
    let mut got = Vec::new();
    assert!(t
        .poll(&mut |l| got.push(String::from_utf8_lossy(l).into_owned()))
        .is_err());
    assert_eq!(got, ["c-4"]);
    append(&log, "d-1\n");
    let (lines, stats) = poll_lines(&mut t);
    assert_eq!(
        (lines.as_slice(), stats.rotations),
        (&["d-1".to_owned()][..], 1)
    );
}

#[test]
fn a_fifo_in_place_of_a_log_does_not_block() {
    let dir = TempDir::new("fifo");
    let fifo = dir.0.join("x.log");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string for the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = Tail::new(fifo, 64, false).err().unwrap();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

fn settings(paths: Vec<PathBuf>, queue_len: usize) -> Settings {
    Settings {
        paths,
        names: FieldNames::default(),
        max_line: 4096,
        queue_len,
        max_files: 16,
        poll: Duration::from_millis(10),
        rescan: Duration::from_millis(50),
    }
}

/// Waits until `done` holds for the reader, collecting requests.
fn collect(logs: &AccessLogs, got: &mut Vec<Request>, done: impl Fn(&[Request]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(got) && Instant::now() < deadline {
        logs.drain(1000, got);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(done(got), "{} requests: {got:?}", got.len());
}

#[test]
fn the_reader_follows_pod_log_directories_and_reports_bad_paths() {
    let dir = TempDir::new("pods");
    let uid = "0b6cf0c3-8f4e-4d2a-9a57-1c2d3e4f5a6b";
    let sidecar = dir.0.join(format!("default_web-1_{uid}/istio-proxy"));
    std::fs::create_dir_all(&sidecar).unwrap();
    std::fs::create_dir_all(dir.0.join(format!("default_web-1_{uid}/app"))).unwrap();
    let log = sidecar.join("0.log");
    append(&log, &fixture("cri.log"));
    // An app container's log is not followed.
    append(&dir.0.join(format!("default_web-1_{uid}/app/0.log")), "");
    let plain = dir.0.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let missing = dir.0.join("elsewhere/nope.log");
    let logs = AccessLogs::start(settings(
        vec![dir.0.clone(), plain.clone(), missing.clone()],
        64,
    ))
    .unwrap();
    let st = logs.status();
    assert_eq!(st.sources.len(), 3);
    assert_eq!(st.sources[0].files, 1, "{st:?}");
    assert!(st.sources[0].ok);
    assert!(!st.sources[2].ok);
    assert!(st.sources[2].state.starts_with("missing: "), "{st:?}");
    // What was there at start is skipped; appended lines are read, CRI pieces joined.
    append(&log, &fixture("cri.log"));
    let mut got = Vec::new();
    collect(&logs, &mut got, |g| g.len() >= 2);
    let ids: Vec<_> = got.iter().map(|r| r.request_id.clone().unwrap()).collect();
    assert_eq!(ids, ["cri-1", "cri-2"]);
    // A file appearing later is read from its start: fixtures and garbage.
    let p = plain.join("envoy.log");
    append(&p, &fixture("access.jsonl"));
    append(&p, &fixture("garbage.txt"));
    append(&p, &format!("{}\n", "z".repeat(5000)));
    collect(&logs, &mut got, |g| g.len() >= 7);
    let deadline = Instant::now() + Duration::from_secs(5);
    while logs.status().sources[1].malformed < 9 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = logs.status();
    let s = &st.sources[1];
    assert_eq!(
        (s.files, s.requests, s.malformed, s.overlong),
        (1, 5, 9, 1),
        "{s:?}"
    );
    assert!(
        s.last_error.as_deref().unwrap().contains("malformed line"),
        "{s:?}"
    );
    // Envoy's own stderr line in the pod log is "other", not malformed.
    let pod = &st.sources[0];
    assert_eq!(
        (pod.requests, pod.malformed, pod.other),
        (2, 0, 1),
        "{pod:?}"
    );
    // The missing path appears: followed from its start at the next listing.
    std::fs::create_dir_all(dir.0.join("elsewhere")).unwrap();
    append(&missing, &fixture("access.jsonl"));
    collect(&logs, &mut got, |g| g.len() >= 12);
    assert!(logs.status().sources[2].ok);
}

#[test]
fn a_full_queue_counts_and_never_blocks_the_reader() {
    let dir = TempDir::new("queue");
    let log = dir.0.join("a.log");
    let logs = AccessLogs::start(settings(vec![log.clone()], 16)).unwrap();
    let line = fixture("access.jsonl").lines().next().unwrap().to_owned() + "\n";
    append(&log, &line.repeat(100));
    let deadline = Instant::now() + Duration::from_secs(10);
    while logs.status().sources[0].requests < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = logs.status();
    assert_eq!(st.sources[0].requests, 100);
    assert_eq!(st.queue_full, 84);
    let mut got = Vec::new();
    logs.drain(1000, &mut got);
    assert_eq!(got.len(), 16);
}

mod hostile {
    use proptest::prelude::*;

    use super::super::{cri, parse};

    proptest! {
        /// Any text: an error or a request, never a panic; a request's kept strings bounded.
        #[test]
        fn any_line_parses_or_fails_cleanly(line in ".{0,400}") {
            if let Ok(r) = parse::parse_line(&line, &parse::FieldNames::default()) {
                prop_assert!(r.request_id.is_none_or(|s| s.len() <= parse::MAX_TEXT));
                prop_assert!(r.flags.len() <= parse::MAX_FLAGS);
            }
            let _ = crate::clock::parse_rfc3339(&line);
            let _ = cri::unwrap(&line);
        }

        /// Near-JSON built from the fields' own vocabulary.
        #[test]
        fn near_json_never_panics(
            line in r#"\{("start_time"|"duration"|"response_code"|"response_flags"|"upstream_host"|:|,|"2024-01-01T00:00:00Z"|"-"|null|-1|18446744073709551616|1e9|"10.0.0.1:80"|"\[::1\]:0"|\[|\]|\{|\}){0,30}"#,
        ) {
            let _ = parse::parse_line(&line, &parse::FieldNames::default());
        }

        /// The CRI joiner never holds more than its bound, whatever the pieces.
        #[test]
        fn the_joiner_stays_bounded(
            pieces in prop::collection::vec((any::<bool>(), any::<bool>(), ".{0,40}"), 0..60),
        ) {
            let mut j = cri::Joiner::default();
            for (stderr, partial, content) in pieces {
                let line = format!(
                    "2024-01-01T00:00:00Z {} {} {content}",
                    if stderr { "stderr" } else { "stdout" },
                    if partial { "P" } else { "F" }
                );
                if let cri::Joined::Line { line, .. } = j.push(&line, 64) {
                    prop_assert!(line.len() <= 64);
                }
            }
        }
    }
}
