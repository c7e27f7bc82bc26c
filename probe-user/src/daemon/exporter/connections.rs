//! Who gets served, for how long, and what became of each connection. Every connection is
//! accepted at once (a slot is never awaited with clients queueing in the kernel behind it),
//! then admitted to one of two lanes or refused:
//!
//! - the scrape lane ([`SCRAPE_SLOTS`]): any path, one request per connection (no keep-alive),
//!   the whole connection bounded by [`SCRAPE_LIFETIME`] (headers, the reply's writes, all);
//! - the health lane ([`HEALTH_SLOTS`]), used when every scrape slot is taken: `/healthz` and
//!   `/readyz` only, bounded by [`HEALTH_LIFETIME`], so the kubelet's probes are answered while
//!   scrapers stall (a client that never reads a reply, or trickles its headers);
//! - refused when both are full: closed at once.
//!
//! Each outcome is counted in `linkprobe_exporter_connections_total{result}`.
use std::{error::Error, sync::Arc, time::Duration};

use hyper::{
    body::{Body, Incoming},
    rt::{Read, Write},
    server::conn::http1,
    service::HttpService,
};
use hyper_util::rt::TokioTimer;
use prometheus::{core::Collector as _, proto::MetricFamily, IntCounterVec, Opts};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections served at once on the scrape lane.
pub const SCRAPE_SLOTS: usize = 64;
/// Connections kept for health checks when the scrape lane is full.
pub const HEALTH_SLOTS: usize = 8;
/// A client must send its request headers within this time (scrape lane).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The kubelet sends its probe's request at once.
pub const HEALTH_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// A scrape connection's whole life: Prometheus's default scrape timeout; encoding takes
/// milliseconds, so only a client that stalls reaches it.
pub const SCRAPE_LIFETIME: Duration = Duration::from_secs(10);
/// A health connection's whole life: the kubelet's default probe timeout is 1 s.
pub const HEALTH_LIFETIME: Duration = Duration::from_secs(2);
/// Request head bytes hyper buffers per connection (its minimum is 8 KiB).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Request headers accepted per request.
pub const MAX_HEADERS: usize = 32;

pub const CONNECTIONS_METRIC: &str = "linkprobe_exporter_connections_total";

/// Which slots a connection holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Scrape,
    Health,
}

impl Lane {
    pub fn lifetime(self) -> Duration {
        match self {
            Lane::Scrape => SCRAPE_LIFETIME,
            Lane::Health => HEALTH_LIFETIME,
        }
    }

    pub fn header_timeout(self) -> Duration {
        match self {
            Lane::Scrape => HEADER_TIMEOUT,
            Lane::Health => HEALTH_HEADER_TIMEOUT,
        }
    }
}

/// Serves one connection on its lane: one request (no keep-alive, so no idle connection holds
/// a slot), head size and header count capped, and the whole connection, the reply's writes
/// included, bounded by the lane's lifetime. A request body is never read.
pub async fn serve<I, S, B>(io: I, lane: Lane, service: S) -> Outcome
where
    I: Read + Write + Unpin,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(lane.header_timeout())
        .keep_alive(false)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .serve_connection(io, service);
    Outcome::of(tokio::time::timeout(lane.lifetime(), conn).await.ok())
}

/// What became of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its request was answered (or it closed cleanly before sending one).
    Served,
    /// Every slot was taken: closed at once.
    Refused,
    /// Headers not sent within the header timeout, or the connection outlived its lane's
    /// lifetime (a reply the client does not read, a trickled request).
    TimedOut,
    /// An I/O or protocol error (reset, malformed or oversized request).
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Served,
        Outcome::Refused,
        Outcome::TimedOut,
        Outcome::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::Refused => "refused",
            Outcome::TimedOut => "timed_out",
            Outcome::Failed => "failed",
        }
    }

    /// How a connection future ended: `None` when its lifetime ran out first.
    pub fn of(ended: Option<Result<(), hyper::Error>>) -> Outcome {
        match ended {
            None => Outcome::TimedOut,
            Some(Ok(())) => Outcome::Served,
            Some(Err(e)) if e.is_timeout() => Outcome::TimedOut,
            Some(Err(e)) => {
                log::debug!("HTTP exporter connection: {e}");
                Outcome::Failed
            }
        }
    }
}

/// The two lanes' slots and the outcome counters; shared by the accept loop and every
/// connection task.
pub struct Admission {
    scrape: Arc<Semaphore>,
    health: Arc<Semaphore>,
    outcomes: IntCounterVec,
}

impl Admission {
    pub fn new() -> Admission {
        let outcomes = IntCounterVec::new(
            Opts::new(
                CONNECTIONS_METRIC,
                "Connections to the exporter by what became of them: served, refused (every \
                 slot taken), timed_out (headers or the reply not through in time), failed.",
            ),
            &["result"],
        )
        .expect("a valid metric name and label");
        for o in Outcome::ALL {
            outcomes.with_label_values(&[o.label()]);
        }
        Admission {
            scrape: Arc::new(Semaphore::new(SCRAPE_SLOTS)),
            health: Arc::new(Semaphore::new(HEALTH_SLOTS)),
            outcomes,
        }
    }

    /// A slot on the scrape lane, else on the health lane; `None` (counted as refused) when
    /// both are full.
    pub fn admit(&self) -> Option<(Lane, OwnedSemaphorePermit)> {
        let admitted = match self.scrape.clone().try_acquire_owned() {
            Ok(p) => Some((Lane::Scrape, p)),
            Err(_) => self
                .health
                .clone()
                .try_acquire_owned()
                .ok()
                .map(|p| (Lane::Health, p)),
        };
        if admitted.is_none() {
            self.count(Outcome::Refused);
        }
        admitted
    }

    pub fn count(&self, outcome: Outcome) {
        self.outcomes.with_label_values(&[outcome.label()]).inc();
    }

    pub fn families(&self) -> Vec<MetricFamily> {
        self.outcomes.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(a: &Admission, o: Outcome) -> u64 {
        a.outcomes.with_label_values(&[o.label()]).get()
    }

    #[test]
    fn scrape_lane_then_health_lane_then_refused_and_counted() {
        let a = Admission::new();
        let mut held = Vec::new();
        for _ in 0..SCRAPE_SLOTS {
            let (lane, p) = a.admit().expect("scrape slot");
            assert_eq!(lane, Lane::Scrape);
            held.push(p);
        }
        for _ in 0..HEALTH_SLOTS {
            let (lane, p) = a.admit().expect("health slot");
            assert_eq!(lane, Lane::Health);
            held.push(p);
        }
        assert!(a.admit().is_none());
        assert!(a.admit().is_none());
        assert_eq!(count(&a, Outcome::Refused), 2);
        // A freed scrape slot is taken before the health lane again.
        drop(held.remove(0));
        assert_eq!(a.admit().map(|(lane, _)| lane), Some(Lane::Scrape));
        // Every result is a series from the start, at 0.
        let f = a.families();
        assert_eq!(f[0].get_metric().len(), Outcome::ALL.len());
        assert_eq!(count(&a, Outcome::TimedOut), 0);
    }

    fn big_reply(
        _req: hyper::Request<Incoming>,
    ) -> std::future::Ready<Result<hyper::Response<String>, std::convert::Infallible>> {
        std::future::ready(Ok(hyper::Response::new("x".repeat(1 << 20))))
    }

    /// Runs [`serve`] on one end of an in-memory pipe of `buffer` bytes; `client` gets the
    /// other end.
    async fn serve_piped<F: std::future::Future<Output = ()>>(
        lane: Lane,
        client: impl FnOnce(tokio::io::DuplexStream) -> F,
    ) -> (Outcome, Duration) {
        let (server_end, client_end) = tokio::io::duplex(4096);
        let started = tokio::time::Instant::now();
        let server = serve(
            hyper_util::rt::TokioIo::new(server_end),
            lane,
            hyper::service::service_fn(big_reply),
        );
        let (outcome, ()) = tokio::join!(server, client(client_end));
        (outcome, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_the_reply_is_cut_at_the_lifetime() {
        use tokio::io::AsyncWriteExt as _;
        let (outcome, took) = serve_piped(Lane::Scrape, |mut c| async move {
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("request");
            // Never reads: the 1 MiB reply stalls in the 4 KiB pipe. Kept open past the bound.
            tokio::time::sleep(SCRAPE_LIFETIME * 3).await;
            drop(c);
        })
        .await;
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(took >= SCRAPE_LIFETIME, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn trickled_headers_time_out_on_either_lane() {
        use tokio::io::AsyncWriteExt as _;
        for lane in [Lane::Scrape, Lane::Health] {
            let (outcome, _) = serve_piped(lane, |mut c| async move {
                c.write_all(b"GET /healthz HTTP/1.1\r\n")
                    .await
                    .expect("line");
                for _ in 0..100 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if c.write_all(b"X").await.is_err() {
                        return;
                    }
                }
            })
            .await;
            assert_eq!(outcome, Outcome::TimedOut, "{lane:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_is_served_and_the_connection_closed_after_one_reply() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (outcome, _) = serve_piped(Lane::Scrape, |mut c| async move {
            // Two requests pipelined: only the first is answered (no keep-alive).
            c.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("requests");
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.expect("reply");
            let text = String::from_utf8_lossy(&got);
            assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "{}", &text[..200]);
            assert!(got.len() > 1 << 20);
        })
        .await;
        assert_eq!(outcome, Outcome::Served);
    }

    #[test]
    fn a_lifetime_that_ran_out_is_a_timeout() {
        assert_eq!(Outcome::of(None), Outcome::TimedOut);
        assert_eq!(Outcome::of(Some(Ok(()))), Outcome::Served);
    }
}
