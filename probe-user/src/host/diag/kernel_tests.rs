//! Against the real kernel: cookies from the dump must equal `getsockopt(SO_COOKIE)`.
//! The namespace tests need root and the `ip` tool and skip (with a message) otherwise.
use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, RawFd},
    path::PathBuf,
    process::Command,
};

use probe_common::kernel::tcp_state::{ESTABLISHED as TCP_ESTABLISHED, LISTEN as TCP_LISTEN};

use super::*;

/// `SO_COOKIE` from include/uapi/asm-generic/socket.h.
const SO_COOKIE: libc::c_int = 57;

fn cookie_of(fd: RawFd) -> u64 {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is a writable u64 and `len` its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&raw mut cookie).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "SO_COOKIE: {}", io::Error::last_os_error());
    assert_eq!(len as usize, size_of::<u64>());
    cookie
}

fn inode_of(fd: RawFd) -> u32 {
    // SAFETY: all-zero is a valid `stat`; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable and `fd` is open.
    assert_eq!(unsafe { libc::fstat(fd, &raw mut st) }, 0);
    u32::try_from(st.st_ino).unwrap()
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// What the dump must say about one of our stream sockets.
fn expect_stream(stream: &TcpStream) -> ExistingSocket {
    let local = stream.local_addr().unwrap();
    ExistingSocket {
        cookie: cookie_of(stream.as_raw_fd()),
        family: if local.is_ipv4() { AF_INET } else { AF_INET6 },
        local,
        remote: stream.peer_addr().unwrap(),
        state: TCP_ESTABLISHED,
        inode: inode_of(stream.as_raw_fd()),
        uid: euid(),
    }
}

fn expect_listener(listener: &TcpListener) -> ExistingSocket {
    let local = listener.local_addr().unwrap();
    let remote: SocketAddr = if local.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    ExistingSocket {
        cookie: cookie_of(listener.as_raw_fd()),
        family: if local.is_ipv4() { AF_INET } else { AF_INET6 },
        local,
        remote,
        state: TCP_LISTEN,
        inode: inode_of(listener.as_raw_fd()),
        uid: euid(),
    }
}

/// Listeners plus `pairs` connected client/server pairs per listener.
struct Workload {
    listeners: Vec<TcpListener>,
    streams: Vec<TcpStream>,
}

impl Workload {
    fn build(v4_pairs: usize, v6_pairs: usize) -> Self {
        let mut listeners = Vec::new();
        let mut streams = Vec::new();
        for (bind, pairs) in [("127.0.0.1:0", v4_pairs), ("[::1]:0", v6_pairs)] {
            let listener = TcpListener::bind(bind).unwrap();
            let addr = listener.local_addr().unwrap();
            for _ in 0..pairs {
                streams.push(TcpStream::connect(addr).unwrap());
                streams.push(listener.accept().unwrap().0);
            }
            listeners.push(listener);
        }
        Self { listeners, streams }
    }

    fn expected(&self, include_listen: bool) -> Vec<ExistingSocket> {
        let mut out: Vec<_> = self.streams.iter().map(expect_stream).collect();
        if include_listen {
            out.extend(self.listeners.iter().map(expect_listener));
        }
        out
    }
}

fn by_cookie(found: &[ExistingSocket]) -> HashMap<u64, &ExistingSocket> {
    found.iter().map(|s| (s.cookie, s)).collect()
}

#[test]
fn host_namespace_lists_our_connection() {
    let work = Workload::build(1, 1);
    for include_listen in [false, true] {
        let found = tcp_sockets(include_listen).unwrap();
        let map = by_cookie(&found);
        for want in work.expected(include_listen) {
            assert_eq!(
                map.get(&want.cookie),
                Some(&&want),
                "include_listen={include_listen}"
            );
        }
        if !include_listen {
            assert!(found.iter().all(|s| s.state != TCP_LISTEN), "LISTEN leaked");
        }
    }
}

#[test]
fn bad_namespace_paths_are_reported() {
    let missing = Path::new("/nonexistent/linkprobe-netns");
    let err = tcp_sockets_in(missing, false).unwrap_err();
    assert!(matches!(err, DiagError::OpenNetns { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/linkprobe-netns"),
        "{err}"
    );

    let err = tcp_sockets_in(Path::new("/dev/null"), false).unwrap_err();
    assert!(matches!(err, DiagError::Setns { .. }), "{err}");
    assert!(err.to_string().contains("setns"), "{err}");
}

/// A named network namespace with `lo` up, deleted on drop (also when the test panics).
struct TestNetns {
    name: String,
}

impl TestNetns {
    /// `None` (with a printed reason) when the test cannot run here.
    fn create(tag: &str) -> Option<Self> {
        if euid() != 0 {
            eprintln!(
                "skipping: creating a network namespace needs root (euid {})",
                euid()
            );
            return None;
        }
        if Command::new("ip").arg("-V").output().is_err() {
            eprintln!("skipping: the `ip` tool (iproute2) is not installed");
            return None;
        }
        let name = format!("lpdiag-{}{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run_ip(&["netns", "add", &name]);
        let ns = Self { name };
        run_ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        Some(ns)
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Builds a workload with sockets living in this namespace.
    fn workload(&self, v4_pairs: usize, v6_pairs: usize) -> Workload {
        let path = self.path();
        std::thread::spawn(move || {
            enter_netns(&path).unwrap();
            Workload::build(v4_pairs, v6_pairs)
        })
        .join()
        .unwrap()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run_ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn namespace_dump_matches_so_cookie_exactly() {
    let Some(ns) = TestNetns::create("") else {
        return;
    };
    let work = ns.workload(3, 1);
    assert_eq!(work.listeners.len(), 2);
    assert_eq!(work.streams.len(), 8);

    for include_listen in [true, false] {
        let found = tcp_sockets_in(&ns.path(), include_listen).unwrap();
        let expected = work.expected(include_listen);
        let map = by_cookie(&found);
        assert_eq!(map.len(), found.len(), "duplicate cookies: {found:#?}");
        for want in &expected {
            assert_ne!(want.cookie, 0);
            assert_eq!(
                map.get(&want.cookie),
                Some(&want),
                "include_listen={include_listen}"
            );
        }
        // Nothing from the host namespace, nothing we did not create.
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        let listens = found.iter().filter(|s| s.state == TCP_LISTEN).count();
        assert_eq!(listens, if include_listen { 2 } else { 0 });
    }
}

#[test]
fn namespace_dump_spanning_many_datagrams() {
    let Some(ns) = TestNetns::create("-many") else {
        return;
    };
    // ~100 bytes per socket on the wire: 600 sockets need several 32 KiB datagrams.
    let work = ns.workload(200, 100);
    let found = tcp_sockets_in(&ns.path(), false).unwrap();
    let expected = work.expected(false);
    assert_eq!(found.len(), expected.len());
    let map = by_cookie(&found);
    for want in &expected {
        assert_eq!(map.get(&want.cookie), Some(&want));
    }
}
