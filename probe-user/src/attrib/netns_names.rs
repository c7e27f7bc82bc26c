//! Network namespace cookie → a name people know: `host` for the namespace of PID 1 (ours
//! where PID 1's cannot be read), the
//! `ip netns` name of a bind mount under /run/netns, else the first process found in it
//! (`pid 1234 (nginx)`). The flow table keys flows by cookie; names are resolved only when a
//! query or an output line shows them, never per event.
//!
//! A cookie is read by entering the namespace from a short-lived thread and asking a socket
//! for `SO_NETNS_COOKIE` ([`scope::netns_cookie`]); each namespace (by its nsfs inode) is
//! entered once and remembered. A miss rescans /run/netns and /proc at most once per
//! `min_rescan`, bounded in entries; cookies are never reused within a boot, so names once
//! found stay true (the map is bounded and starts over when full).
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{host::scope, untrusted::escape_str};

/// Directory of `ip netns` bind mounts.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// Most /run/netns entries and /proc entries one scan reads.
const MAX_NAMED: usize = 4096;
const MAX_PROCS: usize = 65_536;
/// Most namespaces one scan enters (each costs a thread and a `setns`).
const MAX_ENTERED_PER_SCAN: usize = 1024;
/// Most cookies named at once.
const MAX_NAMES: usize = 16_384;
/// How long a cookie a whole scan did not name goes without another scan (a namespace held
/// only by a socket or a file descriptor has neither a bind mount nor a process).
const UNFOUND_RETRY: Duration = Duration::from_secs(10);
/// Longest `ip netns` name kept (iproute2 allows NAME_MAX).
const MAX_NAME_LEN: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum NetnsNameError {
    #[error(
        "no network namespace {0:?}: give an `ip netns list` name, `host`, or a netns cookie \
         (the NETNS column of `linkprobe flows -o wide`)"
    )]
    Unknown(String),
    #[error("network namespace {name:?}: {source}")]
    Cookie {
        name: String,
        source: scope::ScopeError,
    },
}

/// What the name cache did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsNameStats {
    pub named: usize,
    pub scans: u64,
    pub rate_limited: u64,
    /// Namespaces entered to read their cookie.
    pub entered: u64,
}

pub struct NetnsNames {
    min_rescan: Duration,
    names: HashMap<u64, Arc<str>>,
    /// nsfs (device, inode) → cookie: each namespace is entered once.
    cookies: HashMap<(u64, u64), u64>,
    /// Cookies a scan did not name, and when.
    unfound: HashMap<u64, Instant>,
    last_scan: Option<Instant>,
    stats: NetnsNameStats,
}

impl NetnsNames {
    pub fn new(min_rescan: Duration) -> NetnsNames {
        NetnsNames {
            min_rescan,
            names: HashMap::new(),
            cookies: HashMap::new(),
            unfound: HashMap::new(),
            last_scan: None,
            stats: NetnsNameStats::default(),
        }
    }

    #[cfg(test)]
    pub fn stats(&self) -> NetnsNameStats {
        NetnsNameStats {
            named: self.names.len(),
            ..self.stats
        }
    }

    /// The name of the namespace with `cookie` (0: unknown, no name), rescanning on a miss
    /// unless a scan ran within `min_rescan`.
    pub fn name(&mut self, cookie: u64) -> Option<Arc<str>> {
        if cookie == 0 {
            return None;
        }
        if let Some(n) = self.names.get(&cookie) {
            return Some(Arc::clone(n));
        }
        let recently_unfound = self
            .unfound
            .get(&cookie)
            .is_some_and(|t| t.elapsed() < UNFOUND_RETRY);
        if recently_unfound
            || self
                .last_scan
                .is_some_and(|t| t.elapsed() < self.min_rescan)
        {
            self.stats.rate_limited += 1;
            return None;
        }
        self.scan();
        let found = self.names.get(&cookie).cloned();
        if found.is_none() {
            if self.unfound.len() >= MAX_NAMES {
                self.unfound.clear();
            }
            self.unfound.insert(cookie, Instant::now());
        }
        found
    }

    /// The cookie of the namespace at `path` (an nsfs file), entering it only when its inode
    /// is new.
    fn cookie_of(&mut self, path: &Path, entered: &mut usize) -> Option<u64> {
        let meta = std::fs::metadata(path).ok()?;
        let key = (meta.dev(), meta.ino());
        if let Some(c) = self.cookies.get(&key) {
            return Some(*c);
        }
        if *entered >= MAX_ENTERED_PER_SCAN {
            return None;
        }
        *entered += 1;
        self.stats.entered += 1;
        let cookie = scope::netns_cookie(path).ok()?;
        if self.cookies.len() >= MAX_NAMES {
            self.cookies.clear();
        }
        self.cookies.insert(key, cookie);
        Some(cookie)
    }

    fn put(&mut self, cookie: u64, name: String) {
        if self.names.len() >= MAX_NAMES {
            self.names.clear();
        }
        self.names.entry(cookie).or_insert_with(|| name.into());
    }

    /// Names every namespace it can find: PID 1's first (`host`), then /run/netns, then
    /// processes (the lowest pid naming a namespace no earlier source named).
    pub fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        self.stats.scans += 1;
        let mut entered = 0;
        // Names given before win: an `ip netns` name over a process name found earlier.
        let mut fresh: Vec<(u64, String)> = Vec::new();
        let host = self
            .cookie_of(Path::new("/proc/1/ns/net"), &mut entered)
            .or_else(|| scope::socket_netns_cookie().ok());
        if let Some(c) = host {
            fresh.push((c, "host".to_owned()));
        }
        if let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) {
            for entry in dir.flatten().take(MAX_NAMED) {
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if name.len() > MAX_NAME_LEN {
                    continue;
                }
                if let Some(c) = self.cookie_of(&entry.path(), &mut entered) {
                    fresh.push((c, escape_str(&name).into_owned()));
                }
            }
        }
        let mut pids: Vec<u32> = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .take(MAX_PROCS)
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        pids.sort_unstable();
        let mut seen: std::collections::HashSet<u64> = fresh.iter().map(|(c, _)| *c).collect();
        for pid in pids {
            let path = format!("/proc/{pid}/ns/net");
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            // Known namespace, already named: no need to read the process's name.
            if let Some(c) = self.cookies.get(&(meta.dev(), meta.ino())) {
                if seen.contains(c) || self.names.contains_key(c) {
                    continue;
                }
            }
            let Some(c) = self.cookie_of(Path::new(&path), &mut entered) else {
                continue;
            };
            if !seen.insert(c) || self.names.contains_key(&c) {
                continue;
            }
            let comm = std::fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
            let comm = crate::untrusted::escape(comm.trim_ascii_end()).into_owned();
            fresh.push((c, format!("pid {pid} ({comm})")));
        }
        // Process names are a fallback: an `ip netns` name found now replaces one.
        for (c, name) in fresh {
            let replaces = self
                .names
                .get(&c)
                .is_some_and(|old| old.starts_with("pid ") && !name.starts_with("pid "));
            if replaces {
                self.names.remove(&c);
            }
            self.put(c, name);
        }
    }
}

/// The host's namespace: PID 1's, or ours where PID 1's cannot be read (a container that
/// shares the host's network but not its PID namespace).
fn host_cookie() -> Option<u64> {
    scope::netns_cookie(Path::new("/proc/1/ns/net"))
        .ok()
        .or_else(|| scope::socket_netns_cookie().ok())
}

/// The cookie a user's `--netns` filter names: a cookie (digits), `host` (PID 1's namespace)
/// or an `ip netns` name. Paths are refused: the daemon answers clients that may not open them.
pub fn resolve(arg: &str) -> Result<u64, NetnsNameError> {
    if let Ok(c) = arg.parse::<u64>() {
        if c != 0 {
            return Ok(c);
        }
    }
    let unknown = || NetnsNameError::Unknown(escape_str(arg).into_owned());
    if arg == "host" {
        return host_cookie().ok_or_else(unknown);
    }
    let path = {
        let plain = !arg.is_empty()
            && arg.len() <= MAX_NAME_LEN
            && arg != "."
            && arg != ".."
            && !arg.contains(['/', '\0']);
        if !plain {
            return Err(unknown());
        }
        Path::new(NETNS_RUN_DIR).join(arg)
    };
    if !path.exists() {
        return Err(unknown());
    }
    scope::netns_cookie(&path).map_err(|source| NetnsNameError::Cookie {
        name: escape_str(arg).into_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_named_and_bad_names_are_refused() {
        let host = resolve("host").expect("PID 1's namespace");
        let mut names = NetnsNames::new(Duration::from_secs(60));
        assert_eq!(names.name(host).as_deref(), Some("host"));
        assert_eq!(resolve(&host.to_string()).unwrap(), host);
        for bad in ["no-such-ns-for-linkprobe", "../etc", "", "a/b", "0"] {
            let e = resolve(bad).unwrap_err();
            assert!(e.to_string().contains("ip netns list"), "{bad}: {e}");
        }
        // A miss right after a scan does not scan again.
        let scans = names.stats().scans;
        assert_eq!(names.name(u64::MAX), None);
        assert_eq!(names.stats().scans, scans);
        assert_eq!(names.stats().rate_limited, 1);
        // Nor does a cookie a whole scan did not name, for a while, whatever `min_rescan`.
        let mut eager = NetnsNames::new(Duration::ZERO);
        assert_eq!(eager.name(u64::MAX - 1), None);
        let scans = eager.stats().scans;
        assert_eq!(eager.name(u64::MAX - 1), None);
        assert_eq!(eager.stats().scans, scans);
    }
}
