//! The HTTP endpoints Prometheus and Kubernetes use: `/metrics` (Prometheus text format),
//! `/healthz` (the process answers) and `/readyz` (probes attached and the ring buffer being
//! drained).
//!
//! The server runs on a thread of its own with its own tokio runtime: a scrape never waits on
//! the event loop, and a slow or stuck client never delays it. The event loop publishes a
//! [`Snapshot`] once a second (after draining the ring); a scrape encodes the latest one, so
//! it costs the loop nothing and answers in a few milliseconds whatever the load.
use std::{
    convert::Infallible,
    io,
    net::{SocketAddr, TcpListener},
    sync::Arc,
    thread,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{
    core::Collector as _, process_collector::ProcessCollector, proto::MetricFamily, TextEncoder,
    TEXT_FORMAT,
};
use tokio::sync::{watch, Semaphore};

use crate::clock::monotonic_ns;

/// Not ready when the event loop has not published for this long.
const STALE_NS: u64 = 5_000_000_000;
/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error(
        "cannot listen on {addr} for /metrics: {source}; pick another address with \
         --metrics-addr HOST:PORT, or turn the exporter off with --metrics-addr off"
    )]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("starting the HTTP exporter thread: {0}")]
    Thread(io::Error),
}

/// What the event loop publishes for the server.
#[derive(Default)]
pub struct Snapshot {
    pub families: Vec<MetricFamily>,
    /// CLOCK_MONOTONIC time of publication (0: nothing published yet).
    pub published_ns: u64,
    pub probes_total: usize,
    /// `name: why` of each probe that is off.
    pub probes_down: Vec<String>,
}

/// The event loop's handle on the running server.
pub struct Exporter {
    tx: watch::Sender<Arc<Snapshot>>,
}

impl Exporter {
    /// Binds `addr` now (so a taken port is an error at start) and serves on a new thread.
    pub fn start(addr: SocketAddr) -> Result<Exporter, ExporterError> {
        let bind_err = |source| ExporterError::Bind { addr, source };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        thread::Builder::new()
            .name("linkprobe-http".into())
            .spawn(move || serve_thread(listener, rx))
            .map_err(ExporterError::Thread)?;
        log::info!("serving /metrics, /healthz and /readyz on http://{local}");
        Ok(Exporter { tx })
    }

    pub fn publish(&self, snapshot: Snapshot) {
        self.tx.send_replace(Arc::new(snapshot));
    }
}

fn serve_thread(listener: TcpListener, rx: watch::Receiver<Arc<Snapshot>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("HTTP exporter is off: cannot start its runtime: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                log::error!("HTTP exporter is off: {e}");
                return;
            }
        };
        let process = Arc::new(ProcessCollector::for_self());
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::warn!("HTTP exporter: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let rx = rx.clone();
            let process = process.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let snapshot = rx.borrow().clone();
                    let process = process.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &snapshot, &process)) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    log::debug!("HTTP exporter connection: {e}");
                }
                drop(permit);
            });
        }
    });
}

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

fn respond(
    req: &Request<Incoming>,
    snapshot: &Snapshot,
    process: &ProcessCollector,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(405, PLAIN, "only GET and HEAD are served\n");
    }
    match req.uri().path() {
        "/metrics" => metrics(snapshot, process),
        "/healthz" => reply(200, PLAIN, "ok\n"),
        "/readyz" => {
            let (ready, text) = readiness(snapshot, monotonic_ns());
            reply(if ready { 200 } else { 503 }, PLAIN, text)
        }
        "/" => reply(200, PLAIN, INDEX),
        _ => reply(404, PLAIN, format!("not found; {INDEX}")),
    }
}

const INDEX: &str = "linkprobe serves /metrics (Prometheus), /healthz and /readyz\n";

fn metrics(snapshot: &Snapshot, process: &ProcessCollector) -> Response<Full<Bytes>> {
    let mut families = snapshot.families.clone();
    families.extend(process.collect());
    let mut text = String::with_capacity(64 * 1024);
    match TextEncoder::new().encode_utf8(&families, &mut text) {
        Ok(()) => reply(200, TEXT_FORMAT, text),
        Err(e) => reply(500, PLAIN, format!("encoding metrics: {e}\n")),
    }
}

/// Ready when every probe is attached and the event loop published (drained the ring) within
/// the last [`STALE_NS`]; the text says which condition fails.
pub fn readiness(s: &Snapshot, now_ns: u64) -> (bool, String) {
    if s.published_ns == 0 {
        return (false, "not ready: starting, no data published yet\n".into());
    }
    let age = now_ns.saturating_sub(s.published_ns);
    if age > STALE_NS {
        return (
            false,
            format!(
                "not ready: the ring buffer was last drained {:.1} s ago (event loop stalled)\n",
                age as f64 / 1e9
            ),
        );
    }
    if !s.probes_down.is_empty() {
        return (
            false,
            format!(
                "not ready: {} of {} probes are down: {}\n",
                s.probes_down.len(),
                s.probes_total,
                s.probes_down.join("; ")
            ),
        );
    }
    (
        true,
        format!(
            "ready: {} of {} probes attached, ring buffer drained {:.1} s ago\n",
            s.probes_total,
            s.probes_total,
            age as f64 / 1e9
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_is_wrong() {
        let mut s = Snapshot {
            probes_total: 7,
            ..Snapshot::default()
        };
        assert!(readiness(&s, 10).1.contains("starting"));
        s.published_ns = 1_000_000_000;
        let (ready, text) = readiness(&s, 1_500_000_000);
        assert!(ready, "{text}");
        assert!(text.contains("7 of 7 probes attached"));
        let (ready, text) = readiness(&s, 10_000_000_000);
        assert!(!ready);
        assert!(text.contains("9.0 s ago"), "{text}");
        s.probes_down = vec!["lp_rst_sent: tracepoint missing".into()];
        let (ready, text) = readiness(&s, 1_500_000_000);
        assert!(!ready);
        assert!(
            text.contains("1 of 7 probes are down: lp_rst_sent"),
            "{text}"
        );
    }
}
