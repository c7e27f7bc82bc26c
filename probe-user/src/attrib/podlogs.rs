//! The fallback pod source: the kubelet's log directories, `/var/log/pods/<namespace>_<pod>_<uid>`
//! (namespace and pod names cannot contain `_`, so the split is exact). They name every pod
//! of this node without API access, but not its IPs. Rescanned periodically on a thread of its
//! own; the directory is hostile input: entries read per scan are bounded, names that are not
//! a valid namespace, pod name and UID are rejected and counted.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use super::{
    kubepath,
    pods::{PodDirectory, PodMeta},
};

/// The status source name.
pub const SOURCE: &str = "pod-log-dirs";

/// What one scan found.
#[derive(Debug, Default, PartialEq)]
pub struct Scan {
    pub pods: Vec<PodMeta>,
    /// Entries whose names are not `<namespace>_<pod>_<uid>`.
    pub rejected: u64,
    /// Entries not read: the listing passed `max_entries`.
    pub truncated: bool,
}

/// Reads `dir` once, at most `max_entries` entries.
pub fn scan(dir: &Path, max_entries: usize) -> std::io::Result<Scan> {
    let mut out = Scan::default();
    for (n, entry) in std::fs::read_dir(dir)?.enumerate() {
        if n >= max_entries {
            out.truncated = true;
            break;
        }
        let entry = entry?;
        // Symlinks and files are not the kubelet's (it creates real directories).
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.rejected += 1;
            continue;
        }
        match entry.file_name().to_str().and_then(parse_dir_name) {
            Some(pod) => out.pods.push(pod),
            None => out.rejected += 1,
        }
    }
    Ok(out)
}

/// `<namespace>_<pod>_<uid>` → the pod (no IPs).
pub fn parse_dir_name(name: &str) -> Option<PodMeta> {
    let mut parts = name.split('_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !dns_label(namespace, 63) || !dns_subdomain(pod) {
        return None;
    }
    Some(PodMeta {
        uid: kubepath::uuid(uid, '-')?,
        namespace: namespace.to_string(),
        name: pod.to_string(),
        ips: Vec::new(),
    })
}

/// RFC 1123 label: lowercase alphanumerics and `-`, alphanumeric at both ends.
fn dns_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain (a pod name): labels joined by dots, at most 253 bytes.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|l| dns_label(l, 63))
}

/// The scanning thread; dropping it stops the thread.
pub struct PodLogWatch {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for PodLogWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Scans `dir` now and every `every` on a thread, filling `pods`.
pub fn start(
    dir: PathBuf,
    every: Duration,
    max_entries: usize,
    pods: PodDirectory,
) -> std::io::Result<PodLogWatch> {
    pods.set_status(SOURCE, "listing");
    let mut known = HashSet::new();
    refresh(&dir, max_entries, &pods, &mut known);
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("pod-log-dirs".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                refresh(&dir, max_entries, &pods, &mut known);
            }
        })?;
    Ok(PodLogWatch {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// One scan applied to `pods`: new pods added, pods whose directory is gone removed (`known`:
/// the UIDs the previous scan found). A listing cut short removes nothing.
fn refresh(dir: &Path, max_entries: usize, pods: &PodDirectory, known: &mut HashSet<String>) {
    match scan(dir, max_entries) {
        Ok(found) => {
            let n = found.pods.len();
            let now: HashSet<String> = found.pods.iter().map(|p| p.uid.clone()).collect();
            let (truncated, rejected) = (found.truncated, found.rejected);
            if known.is_empty() && !truncated {
                // The first complete listing (or one after every pod left): the whole set.
                pods.replace_all(found.pods);
            } else {
                if !truncated {
                    for gone in known.difference(&now) {
                        pods.remove(gone);
                    }
                }
                for pod in found.pods.into_iter().filter(|p| !known.contains(&p.uid)) {
                    pods.upsert(pod);
                }
            }
            if truncated {
                known.extend(now);
            } else {
                *known = now;
            }
            let mut state = format!("synced: {n} pods");
            if rejected > 0 {
                state.push_str(&format!(", {rejected} names rejected"));
            }
            if truncated {
                state.push_str(&format!(", listing cut at {max_entries} entries"));
            }
            let changed = pods.status().state != state;
            if changed && (rejected > 0 || truncated) {
                log::warn!("{}: {state}", dir.display());
            }
            pods.set_status(SOURCE, state);
        }
        Err(e) => {
            // Keep what the last scan found: a transient error must not unname every pod.
            pods.count_error();
            pods.set_last_error(e.to_string());
            pods.set_status(SOURCE, format!("unreadable: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6cf0c3-8f4e-4d2a-9a57-1c2d3e4f5a6b";

    #[test]
    fn names_parse_and_hostile_ones_are_rejected() {
        let p = parse_dir_name(&format!("kube-system_coredns-5d78c9869d-x2x7q_{UID}")).unwrap();
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str(), p.uid.as_str()),
            ("kube-system", "coredns-5d78c9869d-x2x7q", UID)
        );
        let dotted = parse_dir_name(&format!("default_web.v1_{}", UID.to_uppercase())).unwrap();
        assert_eq!((dotted.name.as_str(), dotted.uid.as_str()), ("web.v1", UID));
        for bad in [
            format!("default_web_{UID}_x"),
            "default_web".to_string(),
            format!("Default_web_{UID}"),
            format!("default_-web_{UID}"),
            format!("default_web._{UID}"),
            format!("default_web_{}", &UID[1..]),
            format!("default_web_{}", UID.replace('-', "_")),
            format!("{}_web_{UID}", "a".repeat(64)),
            format!("default_{}_{UID}", "a".repeat(254)),
            format!("default_we\u{1b}[31mb_{UID}"),
            format!("_web_{UID}"),
            format!("default__{UID}"),
        ] {
            assert_eq!(parse_dir_name(&bad), None, "{}", bad.escape_debug());
        }
    }

    #[test]
    fn a_scan_is_bounded_and_counts_what_it_rejects() {
        let dir = std::env::temp_dir().join(format!("lp-podlogs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(format!("default_web-1_{UID}"))).unwrap();
        std::fs::create_dir_all(dir.join("not-a-pod")).unwrap();
        std::fs::write(dir.join(format!("default_file_{UID}")), "").unwrap();
        let found = scan(&dir, 100).unwrap();
        assert_eq!(found.pods.len(), 1);
        assert_eq!(found.pods[0].name, "web-1");
        assert_eq!(found.rejected, 2);
        assert!(!found.truncated);
        let cut = scan(&dir, 1).unwrap();
        assert!(cut.truncated);

        let pods = PodDirectory::new(16);
        let watch = start(dir.clone(), Duration::from_millis(20), 100, pods.clone()).unwrap();
        assert_eq!(pods.by_uid(UID).unwrap().namespace, "default");
        assert_eq!(pods.status().source, SOURCE);
        assert!(
            pods.status().state.starts_with("synced: 1 pods"),
            "{:?}",
            pods.status()
        );
        // A pod gone from the directory leaves the directory at the next scan.
        std::fs::remove_dir(dir.join(format!("default_web-1_{UID}"))).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pods.by_uid(UID).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(pods.by_uid(UID).is_none());
        drop(watch);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
