//! A real proxy in front of an upstream, inside a test's namespace: HAProxy (Debian's
//! `haproxy`, run in the foreground), and the upstreams the outages had (one that
//! aborts each established connection with SO_LINGER 0; a closed port), plus `curl` through it.
use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::Socket;
use testkit::process::Background;

use super::{netns::enter_current_thread, workload};

/// HAProxy listening on 127.0.0.1:`port` in the namespace, forwarding HTTP to 127.0.0.1:`upstream`
/// (no retries, no redispatch: one connect per request, so counts line up). Stopped on drop.
pub struct Haproxy {
    _process: Background,
    dir: PathBuf,
    pub port: u16,
}

impl Haproxy {
    pub fn start(netns: &str, port: u16, upstream: u16) -> Haproxy {
        let dir = std::env::temp_dir().join(format!("lpt-haproxy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("haproxy dir");
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 1000\n\ndefaults\n  mode http\n  timeout connect 2s\n  \
                 timeout client 5s\n  timeout server 5s\n  retries 0\n  option http-server-close\n\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\n\
                 backend be\n  server up 127.0.0.1:{upstream}\n"
            ),
        )
        .expect("haproxy.cfg");
        let haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| panic!("haproxy is missing: run `cargo xtask setup`"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, haproxy, "-db", "-f"])
            .arg(&cfg);
        let process = Background::start(&mut cmd, Some("[haproxy]")).expect("spawn haproxy");
        // Ready once it accepts.
        let ns = netns.to_owned();
        let up = std::thread::spawn(move || {
            enter_current_thread(&ns);
            let start = Instant::now();
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "haproxy never listened"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        up.join().expect("haproxy ready");
        Haproxy {
            _process: process,
            dir,
            port,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `curl` run `n` times in the namespace against `url`; returns how many got an HTTP answer
/// with status `expect`.
pub fn curl(netns: &str, url: &str, n: usize, expect: u16) -> usize {
    (0..n)
        .filter(|_| {
            let out = Command::new("ip")
                .args(["netns", "exec", netns, "curl", "-s", "-o", "/dev/null"])
                .args(["-w", "%{http_code}", "--max-time", "5", url])
                .output()
                .expect("run curl");
            String::from_utf8_lossy(&out.stdout).trim() == expect.to_string()
        })
        .count()
}

/// An upstream on 127.0.0.1:`port` in the namespace that reads each request and aborts the
/// connection with SO_LINGER 0 (an RST instead of an answer). The cookies of the sockets it
/// aborted are collected; stopped by [`AbortingUpstream::stop`].
pub struct AbortingUpstream {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    aborted: Arc<Mutex<Vec<u64>>>,
    pub port: u16,
}

impl AbortingUpstream {
    pub fn start(netns: &str) -> AbortingUpstream {
        let stop = Arc::new(AtomicBool::new(false));
        let aborted = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let ns = netns.to_owned();
        let (stop2, aborted2) = (stop.clone(), aborted.clone());
        let thread = std::thread::spawn(move || {
            enter_current_thread(&ns);
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
            listener.set_nonblocking(true).expect("nonblocking");
            tx.send(listener.local_addr().expect("addr").port())
                .expect("send port");
            while !stop2.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                s.set_nonblocking(false).expect("blocking");
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                // Read the whole request head, so nothing is left unread at the abort.
                read_head(&mut s);
                aborted2.lock().expect("lock").push(workload::cookie(&s));
                let s = Socket::from(s);
                s.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
                drop(s);
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("upstream port");
        AbortingUpstream {
            stop,
            thread: Some(thread),
            aborted,
            port,
        }
    }

    /// Stops accepting; returns the cookies of the connections it aborted.
    pub fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("upstream thread");
        }
        std::mem::take(&mut *self.aborted.lock().expect("lock"))
    }
}

impl Drop for AbortingUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one HTTP request head (up to the blank line, the peer's close or the socket's read
/// timeout).
pub fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A closed port in a fresh namespace (nothing listens on it): bound then dropped.
pub fn closed_port(netns: &str) -> u16 {
    let ns = netns.to_owned();
    std::thread::spawn(move || {
        enter_current_thread(&ns);
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    })
    .join()
    .expect("closed port")
}
