//! The exporter against clients that misbehave, on a real daemon over real sockets: 80 clients
//! that trickle their request headers and never finish them take every scrape slot and more;
//! `/healthz` must still answer within a bound (the kubelet's liveness probe shares the
//! listener), every stalled connection must be closed by the daemon's bounds, and
//! `linkprobe_exporter_connections_total` must count each refused and timed-out one as the
//! clients themselves saw it.
use std::{
    io::{ErrorKind, Write as _},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use crate::{
    common::{can_run_kernel_tests, http, netns::TestNetns},
    exporter::{parse, scrape, start_daemon, sum},
    report, KERNEL,
};

/// More than the 64 scrape slots and the 8 kept for health checks.
const STALLED: usize = 80;
/// The daemon's 64 scrape + 8 health slots: the rest are refused at once.
const SLOTS: usize = 72;
/// Within this, /healthz answers while scrapers stall (the kubelet's default probe timeout is
/// 1 s and a liveness failure takes 3 misses; the health lane's stalled clients are cut at 1 s).
const HEALTH_BOUND: Duration = Duration::from_secs(3);
/// A client closed this soon after connecting was refused, not timed out (the health lane's
/// shortest bound is 1 s after accept).
const REFUSED_WITHIN: Duration = Duration::from_millis(900);
/// Every stalled connection closed by then (scrape lane: 5 s for headers, 10 s in all).
const ALL_CLOSED_BOUND: Duration = Duration::from_secs(15);

const CONNECTIONS: &str = "linkprobe_exporter_connections_total";

fn counts(addr: SocketAddr) -> [u64; 3] {
    let lines = parse(&scrape(addr));
    ["served", "refused", "timed_out"].map(|r| sum(&lines, CONNECTIONS, &[("result", r)]) as u64)
}

/// One trickling client: the request line, then a byte of a header that never ends.
struct Trickler {
    stream: TcpStream,
    opened: Instant,
    closed_after: Option<Duration>,
}

impl Trickler {
    fn open(addr: SocketAddr) -> Trickler {
        let mut stream = TcpStream::connect(addr).expect("connect");
        let opened = Instant::now();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            .expect("request line");
        stream.set_nonblocking(true).expect("nonblocking");
        Trickler {
            stream,
            opened,
            closed_after: None,
        }
    }

    /// Sends one more byte; notes when the daemon closed the connection (EOF, reset, or a
    /// reply: anything but "nothing yet").
    fn poke(&mut self) {
        if self.closed_after.is_some() {
            return;
        }
        let mut byte = [0u8; 1];
        let closed = match self.stream.peek(&mut byte) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => self.stream.write(b"x").is_err(),
            _ => true,
        };
        if closed {
            self.closed_after = Some(self.opened.elapsed());
        }
    }
}

#[test]
fn stalled_clients_neither_block_health_checks_nor_go_uncounted() {
    if !can_run_kernel_tests("exporter_stalls") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("expstall");
    let (tracer, addr, _run_dir) = start_daemon(&ns, "expstall");
    let deadline = Instant::now() + Duration::from_secs(10);
    while http::get(addr, "/healthz").map(|r| r.status).ok() != Some(200) {
        assert!(Instant::now() < deadline, "/healthz never answered");
        thread::sleep(Duration::from_millis(100));
    }
    let before = counts(addr);

    let started = Instant::now();
    let mut stalled: Vec<Trickler> = (0..STALLED).map(|_| Trickler::open(addr)).collect();
    let trickling = thread::spawn(move || {
        while started.elapsed() < ALL_CLOSED_BOUND {
            stalled.iter_mut().for_each(Trickler::poke);
            if stalled.iter().all(|t| t.closed_after.is_some()) {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        stalled
    });

    // The kubelet's view: /healthz until it answers; a refused attempt is retried.
    let (mut health_ok, mut health_refused) = (0u64, 0u64);
    let answered_after = loop {
        match http::get(addr, "/healthz") {
            Ok(r) if r.status == 200 => {
                health_ok += 1;
                break started.elapsed();
            }
            Ok(r) => panic!("/healthz: {} {}", r.status, r.text()),
            Err(e) => {
                eprintln!("   /healthz attempt refused: {e}");
                health_refused += 1;
            }
        }
        if started.elapsed() > 2 * HEALTH_BOUND {
            break started.elapsed();
        }
        thread::sleep(Duration::from_millis(100));
    };
    eprintln!("   /healthz answered after {answered_after:?} ({health_refused} attempts refused)");
    assert!(
        answered_after <= HEALTH_BOUND,
        "/healthz took {answered_after:?} under stalled scrapers"
    );
    // Scrape slots still held (headers get 5 s): /metrics on the health lane is turned away
    // with a reason, not left hanging.
    let busy = http::get(addr, "/metrics").expect("GET /metrics on the health lane");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the stall ended too early to check"
    );
    assert_eq!(busy.status, 503, "{}", busy.text());
    assert!(
        busy.text().starts_with("busy: every scrape slot is taken"),
        "{}",
        busy.text()
    );
    let stalled = trickling.join().expect("trickling thread");
    let refused_seen = stalled
        .iter()
        .filter(|t| t.closed_after.is_some_and(|d| d < REFUSED_WITHIN))
        .count() as u64;
    let open_left = stalled.iter().filter(|t| t.closed_after.is_none()).count();
    let after = counts(addr);
    tracer.stop();

    let d = |i: usize| after[i] - before[i];
    report(
        "exporter under 80 stalled clients",
        &[
            (
                "refused (metric) vs clients closed at once",
                d(1),
                refused_seen + health_refused,
            ),
            (
                "timed_out (metric) vs clients cut later",
                d(2),
                STALLED as u64 - refused_seen,
            ),
            // The scrape taken before the stall ends after its counts were encoded; the busy
            // reply is an answer too.
            ("served (metric) vs answers we got", d(0), health_ok + 2),
        ],
    );
    assert_eq!(
        open_left, 0,
        "stalled connections still open after {ALL_CLOSED_BOUND:?}"
    );
    assert_eq!(
        refused_seen,
        (STALLED - SLOTS) as u64,
        "refused at once: all but the slots"
    );
    assert_eq!(d(1), refused_seen + health_refused);
    assert_eq!(d(2), STALLED as u64 - refused_seen);
    assert_eq!(d(0), health_ok + 2);
}
