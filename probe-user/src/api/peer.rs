//! Who is on the other end of an API connection (`SO_PEERCRED`: uid, pid, and the process's
//! name from /proc), how many connections each uid holds (one user cannot take every slot),
//! and a rate-limited log line per connection (a client looping on connect cannot flood the
//! log; what is not logged is counted and said in the next line).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

/// Connections one uid may hold at once (of the server's `MAX_CLIENTS`).
pub const MAX_PER_UID: usize = 16;
/// At most this many connection lines per [`LOG_WINDOW`].
const LOG_BURST: u32 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// The peer of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
    /// `/proc/<pid>/comm`, control characters escaped (any process can name itself).
    pub comm: String,
}

impl Peer {
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid().filter(|p| *p > 0);
        let comm = pid
            .and_then(|p| std::fs::read(format!("/proc/{p}/comm")).ok())
            .map(|b| {
                let name = b.strip_suffix(b"\n").unwrap_or(&b);
                crate::untrusted::escape(name).into_owned()
            })
            .unwrap_or_else(|| "?".to_owned());
        Ok(Peer {
            uid: cred.uid(),
            pid,
            comm,
        })
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "uid {} pid {pid} ({})", self.uid, self.comm),
            None => write!(f, "uid {} (pid unknown)", self.uid),
        }
    }
}

/// Connections held per uid.
#[derive(Debug, Default)]
pub struct UidSlots {
    held: Mutex<HashMap<u32, usize>>,
}

/// One connection's place in its uid's count, given back when dropped.
pub struct UidSlot {
    slots: Arc<UidSlots>,
    uid: u32,
}

impl UidSlots {
    /// A slot for `uid`, or `None` when it already holds [`MAX_PER_UID`].
    pub fn take(self: &Arc<Self>, uid: u32) -> Option<UidSlot> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(uid).or_default();
        if *n >= MAX_PER_UID {
            return None;
        }
        *n += 1;
        Some(UidSlot {
            slots: self.clone(),
            uid,
        })
    }

    #[cfg(test)]
    pub fn held(&self, uid: u32) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&uid).copied().unwrap_or(0)
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                // Bounded by the uids connected now, not every uid ever seen.
                held.remove(&self.uid);
            }
        }
    }
}

/// Rate limit for the per-connection log line.
#[derive(Debug)]
pub struct ConnLog {
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

impl Default for ConnLog {
    fn default() -> Self {
        ConnLog {
            window_start: Instant::now(),
            in_window: 0,
            suppressed: 0,
        }
    }
}

impl ConnLog {
    /// The line to log for this connection now, or `None` (counted) past the rate.
    pub fn line(&mut self, now: Instant, peer: &Peer, outcome: &str) -> Option<String> {
        if now.duration_since(self.window_start) >= LOG_WINDOW {
            self.window_start = now;
            self.in_window = 0;
        }
        if self.in_window >= LOG_BURST {
            self.suppressed += 1;
            return None;
        }
        self.in_window += 1;
        let mut line = format!("API connection from {peer}: {outcome}");
        if self.suppressed > 0 {
            line.push_str(&format!(
                " ({} earlier connections not logged: more than {LOG_BURST} per {} s)",
                self.suppressed,
                LOG_WINDOW.as_secs()
            ));
            self.suppressed = 0;
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            pid: Some(7),
            comm: "curl".into(),
        }
    }

    #[test]
    fn each_uid_holds_at_most_its_cap_and_gets_slots_back() {
        let slots = Arc::new(UidSlots::default());
        let mut a: Vec<_> = (0..MAX_PER_UID)
            .map(|_| slots.take(1000).unwrap())
            .collect();
        assert!(slots.take(1000).is_none());
        // Another uid is not affected.
        let b = slots.take(1001).unwrap();
        a.pop();
        assert_eq!(slots.held(1000), MAX_PER_UID - 1);
        assert!(slots.take(1000).is_some());
        drop(b);
        assert_eq!(slots.held(1001), 0);
        assert!(!slots.held.lock().unwrap().contains_key(&1001));
    }

    #[test]
    fn the_connection_log_is_rate_limited_and_says_what_it_skipped() {
        let mut log = ConnLog::default();
        let t0 = Instant::now();
        let logged = (0..100)
            .filter_map(|_| log.line(t0, &peer(5), "accepted"))
            .count();
        assert_eq!(logged, LOG_BURST as usize);
        let next = log
            .line(t0 + LOG_WINDOW, &peer(5), "accepted")
            .expect("a new window logs again");
        assert!(
            next.starts_with("API connection from uid 5 pid 7 (curl): accepted")
                && next.contains("80 earlier connections not logged"),
            "{next}"
        );
    }
}
