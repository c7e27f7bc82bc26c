//! The HTTP endpoints Prometheus and Kubernetes use: `/metrics` (Prometheus text format),
//! `/healthz` (the process answers) and `/readyz` (the ring buffer being drained; see
//! [`readiness`]). Who is served and for how long: [`connections`].
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
use hyper::{body::Incoming, service::service_fn, Method, Request, Response};
use hyper_util::rt::TokioIo;
use prometheus::{
    core::Collector as _, process_collector::ProcessCollector, TextEncoder, TEXT_FORMAT,
};
use tokio::sync::watch;

use crate::clock::monotonic_ns;

mod connections;
mod published;
mod readiness;

use connections::{Admission, Lane, HEALTH_SLOTS};
pub use published::Snapshot;
pub use readiness::readiness;

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
        if !local.ip().is_loopback() {
            log::warn!(
                "/metrics on {local} is reachable beyond this host and names every tenant's \
                 peers, without authentication: firewall it or put an authenticating proxy in \
                 front (see deploy/kubernetes/daemonset.yaml)"
            );
        }
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
        let admission = Arc::new(Admission::new());
        loop {
            // Accept whatever the slots: a connection that cannot be served is refused and
            // counted at once instead of waiting in the kernel's queue behind stalled ones.
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::warn!("HTTP exporter: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some((lane, permit)) = admission.admit() else {
                drop(stream);
                continue;
            };
            let rx = rx.clone();
            let process = process.clone();
            let admission = admission.clone();
            tokio::spawn(async move {
                let counted = admission.clone();
                let service = service_fn(move |req| {
                    let snapshot = rx.borrow().clone();
                    let ctx = RequestContext {
                        process: &process,
                        admission: &admission,
                        lane,
                    };
                    let response = respond(&req, &snapshot, &ctx);
                    async move { Ok::<_, Infallible>(response) }
                });
                let outcome = connections::serve(TokioIo::new(stream), lane, service).await;
                counted.count(outcome);
                drop(permit);
            });
        }
    });
}

/// What a request is answered with besides the snapshot.
struct RequestContext<'a> {
    process: &'a ProcessCollector,
    admission: &'a Admission,
    lane: Lane,
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
    ctx: &RequestContext<'_>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(405, PLAIN, "only GET and HEAD are served\n");
    }
    let path = req.uri().path();
    if ctx.lane == Lane::Health && path != "/healthz" && path != "/readyz" {
        return reply(
            503,
            PLAIN,
            format!(
                "busy: every scrape slot is taken; this connection is one of the {HEALTH_SLOTS} \
                 kept for /healthz and /readyz; retry\n"
            ),
        );
    }
    match path {
        "/metrics" => metrics(snapshot, ctx),
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

fn metrics(snapshot: &Snapshot, ctx: &RequestContext<'_>) -> Response<Full<Bytes>> {
    let mut families = snapshot.families.clone();
    families.extend(ctx.admission.families());
    families.extend(ctx.process.collect());
    let mut text = String::with_capacity(64 * 1024);
    match TextEncoder::new().encode_utf8(&families, &mut text) {
        Ok(()) => reply(200, TEXT_FORMAT, text),
        Err(e) => reply(500, PLAIN, format!("encoding metrics: {e}\n")),
    }
}
