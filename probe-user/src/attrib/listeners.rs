//! The owner of an accepted socket whose listener started before linkprobe. The kernel side
//! takes a listener's owner at listen() and every accepted socket inherits it; a listener
//! that was already listening has no such state, so its accepted sockets would show no
//! process. This finds the process the way `ss -p` does: each namespace's listening sockets
//! (`/proc/PID/net/tcp{,6}`: port and inode) and the process holding that inode among its
//! descriptors (`/proc/PID/fd`), keyed by the namespace's cookie (`SO_NETNS_COOKIE`, as the
//! kernel records it).
//!
//! A scan walks every process's descriptors, so it runs only for a listener not found yet, at
//! most once per [`MIN_RESCAN`], with bounds on processes, descriptors and namespaces; what
//! it finds is kept (bounded) until a later scan replaces it.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    event::{Comm, Process},
    host::scope,
};

/// Least time between two scans of /proc.
const MIN_RESCAN: Duration = Duration::from_secs(2);
/// Processes, descriptors per process, namespaces and listeners a scan looks at, at most.
const MAX_PIDS: usize = 65_536;
const MAX_FDS_PER_PID: usize = 65_536;
const MAX_NAMESPACES: usize = 1024;
const MAX_LISTENERS: usize = 65_536;
/// `/proc/PID/net/tcp*` files read at most this far.
const MAX_TABLE_BYTES: u64 = 64 << 20;

/// A listener: network namespace cookie and local port.
type ListenerKey = (u64, u16);

#[derive(Debug)]
pub struct ListenerOwners {
    proc_root: &'static Path,
    owners: HashMap<ListenerKey, Process>,
    last_scan: Option<Instant>,
    scans: u64,
}

impl Default for ListenerOwners {
    fn default() -> Self {
        ListenerOwners {
            proc_root: Path::new("/proc"),
            owners: HashMap::new(),
            last_scan: None,
            scans: 0,
        }
    }
}

impl ListenerOwners {
    /// The process owning the listener on `port` in the namespace `netns` (a cookie), scanning
    /// /proc when it is not known and a scan is due.
    pub fn owner(&mut self, netns: u64, port: u16) -> Option<Process> {
        let key = (netns, port);
        if let Some(p) = self.owners.get(&key) {
            return Some(p.clone());
        }
        if self.last_scan.is_some_and(|at| at.elapsed() < MIN_RESCAN) {
            return None;
        }
        self.scan();
        self.owners.get(&key).cloned()
    }

    /// Scans of /proc so far.
    #[cfg(test)]
    pub fn scans(&self) -> u64 {
        self.scans
    }

    fn scan(&mut self) {
        let started = Instant::now();
        self.last_scan = Some(started);
        self.scans += 1;
        self.owners = scan(self.proc_root);
        log::debug!(
            "listener owners: {} listeners found in {:?}",
            self.owners.len(),
            started.elapsed()
        );
    }
}

/// What one scan finds: every listener of every namespace with the process that holds it
/// (the lowest pid among those sharing it: a server's parent before its workers).
fn scan(proc_root: &Path) -> HashMap<ListenerKey, Process> {
    // Socket inode → the lowest pid holding it; namespace inode → a pid inside it.
    let mut holders: HashMap<u64, u32> = HashMap::new();
    let mut namespaces: BTreeMap<String, u32> = BTreeMap::new();
    let Ok(dir) = fs::read_dir(proc_root) else {
        return HashMap::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .take(MAX_PIDS)
        .collect();
    pids.sort_unstable();
    for &pid in &pids {
        let base = proc_root.join(pid.to_string());
        let Ok(ns) = fs::read_link(base.join("ns/net")) else {
            continue;
        };
        if let Some(ns) = ns.to_str() {
            if namespaces.len() < MAX_NAMESPACES || namespaces.contains_key(ns) {
                namespaces.entry(ns.to_owned()).or_insert(pid);
            }
        }
        let Ok(fds) = fs::read_dir(base.join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok).take(MAX_FDS_PER_PID) {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            if let Some(inode) = socket_inode(target.to_str().unwrap_or("")) {
                holders.entry(inode).or_insert(pid);
            }
        }
    }
    let mut owners = HashMap::new();
    for pid in namespaces.values() {
        let base = proc_root.join(pid.to_string());
        let Ok(cookie) = scope::netns_cookie(&base.join("ns/net")) else {
            continue;
        };
        for table in ["net/tcp", "net/tcp6"] {
            let Ok(text) = read_bounded(&base.join(table)) else {
                continue;
            };
            for (port, inode) in listening(&text) {
                let Some(&holder) = holders.get(&inode) else {
                    continue;
                };
                if owners.len() >= MAX_LISTENERS {
                    return owners;
                }
                if let Some(process) = process_of(proc_root, holder) {
                    owners.entry((cookie, port)).or_insert(process);
                }
            }
        }
    }
    owners
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    fs::File::open(path)?
        .take(MAX_TABLE_BYTES)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// `(local port, inode)` of each LISTEN (`0A`) line of a `/proc/net/tcp{,6}` table.
fn listening(table: &str) -> impl Iterator<Item = (u16, u64)> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.get(3) != Some(&"0A") {
            return None;
        }
        let port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
        let inode = cols.get(9)?.parse().ok()?;
        Some((port, inode))
    })
}

fn process_of(proc_root: &Path, pid: u32) -> Option<Process> {
    let raw = fs::read(proc_root.join(pid.to_string()).join("comm")).ok()?;
    let name = raw.strip_suffix(b"\n").unwrap_or(&raw);
    let mut comm = [0u8; 16];
    for (d, b) in comm.iter_mut().zip(name.iter().take(15)) {
        *d = *b;
    }
    Some(Process {
        pid,
        comm: Comm::from_kernel(&comm),
    })
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsRawFd as _};

    use super::*;

    #[test]
    fn parses_listeners_and_socket_links() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n\
            1: 0100007F:C350 0100007F:1F91 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 100 0 0 10 0\n\
            garbage line\n";
        assert_eq!(listening(table).collect::<Vec<_>>(), [(8081, 4242)]);
        assert_eq!(socket_inode("socket:[77]"), Some(77));
        assert_eq!(socket_inode("pipe:[77]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[test]
    fn finds_this_process_as_the_owner_of_its_own_listener() {
        let Ok(cookie) = scope::socket_netns_cookie() else {
            eprintln!("skip: SO_NETNS_COOKIE unsupported here");
            return;
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(listener.as_raw_fd() > 0);
        let port = listener.local_addr().unwrap().port();
        let mut owners = ListenerOwners::default();
        let p = owners.owner(cookie, port).expect("our listener's owner");
        assert_eq!(p.pid, std::process::id());
        assert_eq!(owners.scans(), 1);
        // Known now: no second scan; an unknown one waits for the next allowed scan.
        assert!(owners.owner(cookie, port).is_some());
        assert_eq!(owners.owner(cookie, 1), None);
        assert_eq!(owners.scans(), 1);
    }
}
