//! The reader thread: the configured paths expanded to files (directories listed again every
//! `rescan`), each file followed (`follow::Tail`), lines unwrapped (`cri`), parsed (`parse`)
//! and queued for the loop with `try_send` (full: counted).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use super::{
    cri::{Joined, Joiner},
    follow::Tail,
    parse::{self, Request},
    settings::Settings,
    status::{ReaderStatus, SourceStatus},
};
use crate::attrib::podlogs;

/// Directory entries read per listing (a directory is hostile input too).
const MAX_ENTRIES: usize = 4096;
/// Least time between two warnings about one path's malformed lines.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// The kubelet's directory of a sidecar's logs inside a pod's log directory.
const SIDECAR_DIR: &str = "istio-proxy";

struct Followed {
    tail: Tail,
    joiner: Joiner,
}

struct Source {
    path: PathBuf,
    files: BTreeMap<PathBuf, Followed>,
    status: SourceStatus,
    /// Malformed lines since the last warning, and when it was.
    unwarned: u64,
    warned: Option<Instant>,
    /// The listing failed (missing or unreadable path).
    listing_error: Option<String>,
    /// Files that could not be read at the last poll.
    read_errors: usize,
}

pub(super) struct Reader {
    s: Settings,
    tx: mpsc::SyncSender<Request>,
    shared: Arc<Mutex<ReaderStatus>>,
    sources: Vec<Source>,
    queue_full: u64,
    files_over_cap: u64,
}

impl Reader {
    pub(super) fn new(
        s: Settings,
        tx: mpsc::SyncSender<Request>,
        shared: Arc<Mutex<ReaderStatus>>,
    ) -> Reader {
        let sources = s
            .paths
            .iter()
            .map(|p| Source {
                path: p.clone(),
                files: BTreeMap::new(),
                status: SourceStatus {
                    path: crate::untrusted::escape(p.as_os_str().as_encoded_bytes()).into_owned(),
                    ..SourceStatus::default()
                },
                unwarned: 0,
                warned: None,
                listing_error: None,
                read_errors: 0,
            })
            .collect();
        Reader {
            s,
            tx,
            shared,
            sources,
            queue_full: 0,
            files_over_cap: 0,
        }
    }

    pub(super) fn run(mut self, stopped: &mpsc::Receiver<()>) {
        let mut listed = Instant::now();
        loop {
            self.poll();
            self.publish();
            match stopped.recv_timeout(self.s.poll) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            if listed.elapsed() >= self.s.rescan {
                self.rescan(false);
                listed = Instant::now();
            }
        }
    }

    /// Lists every path again: new files are followed (from their end on the first listing,
    /// from their start later), files gone from the listing are read to their end and left.
    pub(super) fn rescan(&mut self, first: bool) {
        let mut over = 0;
        let mut budget = self
            .s
            .max_files
            .saturating_sub(self.sources.iter().map(|s| s.files.len()).sum());
        for i in 0..self.sources.len() {
            let listing = files_of(&self.sources[i].path);
            let src = &mut self.sources[i];
            let found = match listing {
                Ok(found) => {
                    src.listing_error = None;
                    found
                }
                Err(e) => {
                    src.listing_error = Some(e.clone());
                    src.status.last_error = Some(e);
                    continue;
                }
            };
            let gone: Vec<PathBuf> = src
                .files
                .keys()
                .filter(|p| !found.contains(p))
                .cloned()
                .collect();
            for p in gone {
                if let Some(mut f) = src.files.remove(&p) {
                    budget += 1;
                    let _ = poll_one(&mut f, &self.s, &self.tx, src, &mut self.queue_full);
                }
            }
            for p in found {
                if src.files.contains_key(&p) {
                    continue;
                }
                if budget == 0 {
                    over += 1;
                    continue;
                }
                match Tail::new(p, self.s.max_line, first) {
                    Ok(tail) => {
                        budget -= 1;
                        src.files.insert(
                            tail.path().to_path_buf(),
                            Followed {
                                tail,
                                joiner: Joiner::default(),
                            },
                        );
                    }
                    Err(e) => src.status.last_error = Some(escaped(&e.to_string())),
                }
            }
        }
        self.files_over_cap = over;
    }

    fn poll(&mut self) {
        for src in &mut self.sources {
            let mut files = std::mem::take(&mut src.files);
            src.read_errors = 0;
            for f in files.values_mut() {
                if let Err(e) = poll_one(f, &self.s, &self.tx, src, &mut self.queue_full) {
                    src.read_errors += 1;
                    src.status.last_error = Some(e);
                }
            }
            src.files = files;
        }
    }

    pub(super) fn publish(&mut self) {
        for src in &mut self.sources {
            let st = &mut src.status;
            st.files = src.files.len();
            st.ok = src.listing_error.is_none() && src.read_errors == 0;
            st.state = match &src.listing_error {
                Some(e) => e.clone(),
                None if src.read_errors > 0 => format!(
                    "following {} files, {} unreadable",
                    src.files.len(),
                    src.read_errors
                ),
                None => format!("following {} files", src.files.len()),
            };
        }
        let status = ReaderStatus {
            sources: self.sources.iter().map(|s| s.status.clone()).collect(),
            queue_full: self.queue_full,
            files_over_cap: self.files_over_cap,
        };
        match self.shared.lock() {
            Ok(mut s) => *s = status,
            Err(p) => *p.into_inner() = status,
        }
    }
}

/// Reads one file's new lines into the queue. `Err`: the file could not be read (text for
/// `status`).
fn poll_one(
    f: &mut Followed,
    s: &Settings,
    tx: &mpsc::SyncSender<Request>,
    src: &mut Source,
    queue_full: &mut u64,
) -> Result<(), String> {
    let Followed { tail, joiner } = f;
    let path = tail.path().to_path_buf();
    let st = &mut src.status;
    let mut bad: Option<String> = None;
    // The clocks' offset when the lines were read, moments after they were written: a later
    // step of the wall clock does not move where their requests land.
    let offset = crate::clock::wall_minus_monotonic_ns();
    let mut on_line = |raw: &[u8]| {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        st.lines += 1;
        let Ok(text) = std::str::from_utf8(raw) else {
            st.malformed += 1;
            bad = Some("not UTF-8".into());
            return;
        };
        let line = match joiner.push(text, s.max_line) {
            // A container's other output (the proxy's own log) beside its access log.
            Joined::Line { line, cri: true } if !line.trim_start().starts_with('{') => {
                st.other += 1;
                return;
            }
            Joined::Line { line, .. } => line,
            Joined::Pending => return,
            Joined::Overlong => {
                st.overlong += 1;
                return;
            }
        };
        match parse::parse_line(&line, &s.names) {
            Ok(mut req) => {
                req.wall_minus_mono = Some(offset);
                st.requests += 1;
                if let Err(mpsc::TrySendError::Full(_)) = tx.try_send(req) {
                    *queue_full += 1;
                }
            }
            Err(e) => {
                st.malformed += 1;
                bad = Some(e.to_string());
            }
        }
    };
    let r = tail.poll(&mut on_line);
    match r {
        Ok(p) => {
            src.status.overlong += p.overlong;
            src.status.rotations += p.rotations;
            src.status.truncations += p.truncations;
            if p.truncations > 0 || p.rotations > 0 {
                // Pieces of a CRI line from before never get their end.
                joiner.reset();
            }
        }
        Err(e) => return Err(escaped(&e.to_string())),
    }
    if let Some(why) = bad {
        let text = format!("{}: malformed line: {why}", escaped_path(&path));
        src.unwarned += 1;
        if src.warned.is_none_or(|w| w.elapsed() >= WARN_EVERY) {
            log::warn!(
                "access log {text} ({} malformed lines since the last warning; skipped)",
                src.unwarned
            );
            src.unwarned = 0;
            src.warned = Some(Instant::now());
        }
        src.status.last_error = Some(text);
    }
    Ok(())
}

/// The files a configured path stands for (see `[envoy] paths`), sorted; `Err`: the path
/// cannot be listed (text for `status`).
fn files_of(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("missing: {}", escaped_path(path))
        } else {
            format!("unreadable: {}: {e}", escaped_path(path))
        }
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let pod_dir = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| podlogs::parse_dir_name(n).is_some());
    if pod_dir {
        logs_in(&path.join(SIDECAR_DIR), &mut out);
        logs_in(path, &mut out);
    } else {
        let entries = std::fs::read_dir(path)
            .map_err(|e| format!("unreadable: {}: {e}", escaped_path(path)))?;
        for entry in entries.take(MAX_ENTRIES).flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && podlogs::parse_dir_name(name).is_some() {
                logs_in(&entry.path().join(SIDECAR_DIR), &mut out);
            } else if !is_dir && name.ends_with(".log") {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `dir`'s `*.log` entries that are not directories (bounded; a missing `dir` has none).
fn logs_in(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.take(MAX_ENTRIES).flatten() {
        let is_log = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".log"));
        if is_log && !entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
}

fn escaped(s: &str) -> String {
    crate::untrusted::escape_str(s).into_owned()
}

fn escaped_path(p: &Path) -> String {
    crate::untrusted::escape(p.as_os_str().as_encoded_bytes()).into_owned()
}
