//! The API server: its own thread with its own tokio runtime, so clients never run on the event
//! loop. Queries that need the loop's state go to it over a small bounded channel (full → a
//! `busy` answer, counted); live items (events, anomaly changes) come from the loop over a
//! bounded broadcast channel, and a client that falls behind loses items, is told how many
//! (an `overflow` line) and they are counted in `status`.
//!
//! Limits: request lines ≤ [`MAX_REQUEST_BYTES`] (longer → error, then close); a request must
//! arrive within [`REQUEST_TIMEOUT`] (idle and slowloris clients are closed); writes that make
//! no progress for [`WRITE_TIMEOUT`] close the client; at most [`MAX_CLIENTS`] connections,
//! of them at most [`MAX_PER_UID`] from one uid (more are told so, counted and closed). Every
//! connection's peer (uid, pid, comm) is logged, rate-limited.
use std::{
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{
        unix::{OwnedReadHalf, OwnedWriteHalf},
        UnixStream,
    },
    sync::{broadcast, mpsc, oneshot, OwnedSemaphorePermit, Semaphore},
    time::timeout,
};

use crate::{
    api::{
        filter::Matcher,
        peer::{ConnLog, Peer, UidSlot, UidSlots, MAX_PER_UID},
        proto::{
            decode_request, encode_line, error, AnomalyRecord, ApiCounters, ErrorCode, Query,
            Reply, Response, MAX_REQUEST_BYTES,
        },
        socket::{self, SocketError, SOCKET_NAME},
    },
    event::rst_reason::ReasonNames,
    event::Event,
    host::run_dir::RunDir,
    render::event::EventRecord,
};

pub const MAX_CLIENTS: usize = 64;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for the event loop's answer.
const LOOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Queries waiting for the loop; beyond this clients get `busy`.
const QUERY_QUEUE: usize = 16;
/// Live items buffered per watching client before it starts losing them.
pub const LIVE_QUEUE: usize = 4096;

/// A query for the event loop and where to send its answer.
pub struct LoopQuery {
    pub query: Query,
    pub reply: oneshot::Sender<Reply>,
}

/// What the loop streams to watchers.
#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "items are shared behind an Arc in the broadcast channel: one allocation each, \
              a box would add another per anomaly"
)]
pub enum Live {
    Event(Event),
    Anomaly(AnomalyRecord),
}

/// The loop's end of the API: queries to answer and the live channel to feed. Dropping it
/// removes the socket file.
pub struct ApiLoop {
    queries: Option<mpsc::Receiver<LoopQuery>>,
    live: broadcast::Sender<Arc<Live>>,
    run_dir: RunDir,
}

impl ApiLoop {
    /// The query receiver, for the loop's `select!` (taken once).
    pub fn take_queries(&mut self) -> Option<mpsc::Receiver<LoopQuery>> {
        self.queries.take()
    }

    /// Whether anyone watches (so the loop only clones events when someone does).
    pub fn watched(&self) -> bool {
        self.live.receiver_count() > 0
    }

    /// Never blocks: a slow watcher loses items on its own side.
    pub fn publish(&self, item: Live) {
        let _ = self.live.send(Arc::new(item));
    }
}

impl Drop for ApiLoop {
    fn drop(&mut self) {
        // Through the run dir's descriptor: the socket we made, wherever the path leads now.
        let _ = self.run_dir.remove(SOCKET_NAME);
    }
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    clients_now: AtomicU64,
    rejected: AtomicU64,
    rejected_per_uid: AtomicU64,
    bad_requests: AtomicU64,
    busy: AtomicU64,
    watch_lost: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ApiCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ApiCounters {
            connections: get(&self.connections),
            clients_now: get(&self.clients_now),
            rejected_connections: get(&self.rejected),
            rejected_per_uid: get(&self.rejected_per_uid),
            bad_requests: get(&self.bad_requests),
            busy: get(&self.busy),
            watch_lost: get(&self.watch_lost),
        }
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

struct Ctx {
    queries: mpsc::Sender<LoopQuery>,
    live: broadcast::Sender<Arc<Live>>,
    counters: Arc<Counters>,
    reasons: ReasonNames,
}

/// Binds the socket (errors surface at start-up) and starts the server thread.
pub fn spawn(
    run_dir: &RunDir,
    gid: Option<u32>,
    reasons: ReasonNames,
) -> Result<ApiLoop, SocketError> {
    let listener = socket::bind(run_dir, SOCKET_NAME, gid)?;
    let path = &run_dir.path().join(SOCKET_NAME);
    let (qtx, qrx) = mpsc::channel(QUERY_QUEUE);
    let (live, _) = broadcast::channel(LIVE_QUEUE);
    let ctx = Arc::new(Ctx {
        queries: qtx,
        live: live.clone(),
        counters: Arc::new(Counters::default()),
        reasons,
    });
    let bind_err = |source: io::Error| SocketError::Bind {
        path: path.to_owned(),
        source,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(bind_err)?;
    std::thread::Builder::new()
        .name("linkprobe-api".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::UnixListener::from_std(listener) {
                    Ok(l) => serve(l, ctx).await,
                    Err(e) => log::error!("API server stopped: {e}"),
                }
            });
        })
        .map_err(bind_err)?;
    log::info!("API listening on {}", path.display());
    Ok(ApiLoop {
        queries: Some(qrx),
        live,
        run_dir: run_dir.try_clone().map_err(bind_err)?,
    })
}

async fn serve(listener: tokio::net::UnixListener, ctx: Arc<Ctx>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let per_uid = Arc::new(UidSlots::default());
    let mut log = ConnLog::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("API accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        Counters::add(&ctx.counters.connections, 1);
        let peer = match Peer::of(&stream) {
            Ok(p) => p,
            Err(e) => {
                // Without credentials we cannot tell whose slots it takes.
                Counters::add(&ctx.counters.rejected, 1);
                log::warn!("API connection refused: no peer credentials: {e}");
                continue;
            }
        };
        let admitted = admit(&per_uid, &slots, peer.uid);
        let outcome = match &admitted {
            Ok(_) => "accepted".to_owned(),
            Err(refusal) => format!("refused: {}", refusal.message(peer.uid)),
        };
        if let Some(line) = log.line(std::time::Instant::now(), &peer, &outcome) {
            log::info!("{line}");
        }
        match admitted {
            Ok(held) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    Counters::add(&ctx.counters.clients_now, 1);
                    client(stream, &ctx).await;
                    ctx.counters.clients_now.fetch_sub(1, Ordering::Relaxed);
                    drop(held);
                });
            }
            Err(refusal) => {
                Counters::add(&ctx.counters.rejected, 1);
                if matches!(refusal, Refusal::PerUid) {
                    Counters::add(&ctx.counters.rejected_per_uid, 1);
                }
                let msg = encode_line(&error(ErrorCode::TooManyClients, refusal.message(peer.uid)));
                // Best effort, never waits: the socket buffer takes one short line.
                let _ = stream.try_write(msg.as_bytes());
            }
        }
    }
}

/// Why a connection was not served.
enum Refusal {
    PerUid,
    Full,
}

impl Refusal {
    fn message(&self, uid: u32) -> String {
        match self {
            Refusal::PerUid => format!(
                "too many API connections from uid {uid} (at most {MAX_PER_UID} per user); close \
                 some and try again"
            ),
            Refusal::Full => format!("too many API clients (at most {MAX_CLIENTS}); try again"),
        }
    }
}

/// A place for `uid`'s connection: its uid's share first (so one user filling the server is
/// told it is them), then a global slot.
fn admit(
    per_uid: &Arc<UidSlots>,
    slots: &Arc<Semaphore>,
    uid: u32,
) -> Result<(UidSlot, OwnedSemaphorePermit), Refusal> {
    let mine = per_uid.take(uid).ok_or(Refusal::PerUid)?;
    let permit = slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refusal::Full)?;
    Ok((mine, permit))
}

enum Line {
    Ok(Vec<u8>),
    TooLong,
}

/// Reads one line of at most `MAX_REQUEST_BYTES`, never buffering more than that. `None` at
/// end of input with nothing read; a last line without newline is returned as is.
async fn read_line(rd: &mut BufReader<OwnedReadHalf>) -> io::Result<Option<Line>> {
    let mut buf = Vec::new();
    loop {
        let avail = rd.fill_buf().await?;
        if avail.is_empty() {
            return Ok((!buf.is_empty()).then_some(Line::Ok(buf)));
        }
        let (take, done) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if buf.len() + take > MAX_REQUEST_BYTES {
            return Ok(Some(Line::TooLong));
        }
        buf.extend_from_slice(&avail[..take]);
        rd.consume(if done { take + 1 } else { take });
        if done {
            return Ok(Some(Line::Ok(buf)));
        }
    }
}

/// Writes one response line; `false` when the client is gone or stalled.
async fn send(wr: &mut OwnedWriteHalf, resp: &Response) -> bool {
    let line = encode_line(resp);
    matches!(
        timeout(WRITE_TIMEOUT, wr.write_all(line.as_bytes())).await,
        Ok(Ok(()))
    )
}

async fn client(stream: UnixStream, ctx: &Ctx) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(16 * 1024, rd);
    loop {
        let line = match timeout(REQUEST_TIMEOUT, read_line(&mut rd)).await {
            Err(_) => {
                let msg = format!("no complete request within {} s", REQUEST_TIMEOUT.as_secs());
                send(&mut wr, &error(ErrorCode::Timeout, msg)).await;
                return;
            }
            Ok(Err(_) | Ok(None)) => return,
            Ok(Ok(Some(Line::TooLong))) => {
                Counters::add(&ctx.counters.bad_requests, 1);
                let msg = format!("request line longer than {MAX_REQUEST_BYTES} bytes");
                send(&mut wr, &error(ErrorCode::TooLarge, msg)).await;
                return;
            }
            Ok(Ok(Some(Line::Ok(bytes)))) => bytes,
        };
        let req = match decode_request(&line) {
            Ok(r) => r,
            Err(e) => {
                Counters::add(&ctx.counters.bad_requests, 1);
                if !send(&mut wr, &error(e.code(), e.to_string())).await {
                    return;
                }
                continue;
            }
        };
        match req.req {
            Query::Watch { filter } => {
                let sub = ctx.live.subscribe();
                return watch(rd, wr, ctx, sub, Stream::Events(filter)).await;
            }
            Query::Anomalies { watch: true } => {
                // Subscribe first: a change between the snapshot and the subscription would
                // be lost; one that lands in both is dropped from the stream (`Seen`).
                let sub = ctx.live.subscribe();
                let snapshot = ask_loop(ctx, Query::Anomalies { watch: false }).await;
                let seen = Seen::of(&snapshot);
                if send(&mut wr, &Response::new(snapshot)).await {
                    watch(rd, wr, ctx, sub, Stream::Anomalies(seen)).await;
                }
                return;
            }
            q => {
                let mut answer = ask_loop(ctx, q).await;
                if let Reply::Status(s) = &mut answer {
                    s.api = ctx.counters.snapshot();
                }
                if !send(&mut wr, &Response::new(answer)).await {
                    return;
                }
            }
        }
    }
}

async fn ask_loop(ctx: &Ctx, query: Query) -> Reply {
    let fail = |code, msg: &str| error(code, msg).reply;
    let (tx, rx) = oneshot::channel();
    match ctx.queries.try_send(LoopQuery { query, reply: tx }) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            Counters::add(&ctx.counters.busy, 1);
            return fail(ErrorCode::Busy, "the daemon is busy; try again");
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return fail(ErrorCode::Internal, "the daemon is shutting down");
        }
    }
    match timeout(LOOP_TIMEOUT, rx).await {
        Ok(Ok(answer)) => answer,
        _ => fail(ErrorCode::Timeout, "the event loop did not answer in time"),
    }
}

enum Stream {
    Events(crate::api::proto::Filter),
    /// After this snapshot.
    Anomalies(Seen),
}

/// Streams live items until the client hangs up or stalls.
async fn watch(
    mut rd: BufReader<OwnedReadHalf>,
    mut wr: OwnedWriteHalf,
    ctx: &Ctx,
    mut sub: broadcast::Receiver<Arc<Live>>,
    what: Stream,
) {
    let matcher = match &what {
        Stream::Events(f) => match Matcher::new(f).and_then(Matcher::for_events) {
            Ok(m) => Some(m),
            Err(e) => {
                send(&mut wr, &error(ErrorCode::BadRequest, e.to_string())).await;
                return;
            }
        },
        Stream::Anomalies(_) => None,
    };
    if !send(&mut wr, &Response::new(Reply::Subscribed)).await {
        return;
    }
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            item = sub.recv() => {
                let reply = match item {
                    Ok(item) => match (&*item, &matcher) {
                        (Live::Event(ev), Some(m)) if m.event(ev) => {
                            Reply::Event {
                                event: Box::new(EventRecord::new(ev, &ctx.reasons)),
                            }
                        }
                        (Live::Anomaly(a), None) if !what.seen(a) => Reply::Anomaly {
                            anomaly: Box::new(a.clone()),
                        },
                        _ => continue,
                    },
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Counters::add(&ctx.counters.watch_lost, n);
                        Reply::Overflow { lost: n }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if !send(&mut wr, &Response::new(reply)).await {
                    return;
                }
            }
            // Anything from the client (or its hang-up) ends the stream.
            _ = rd.read(&mut scratch) => return,
        }
    }
}

/// The anomaly ids an `anomalies --watch` snapshot showed and when it was taken: a change the
/// stream delivers that the snapshot already reflects (published before it was taken, or the
/// raise of an anomaly it lists) is not sent again.
#[derive(Debug, Default)]
pub struct Seen {
    at_ns: u64,
    ids: std::collections::HashSet<u64>,
}

impl Seen {
    fn of(snapshot: &Reply) -> Seen {
        let Reply::Anomalies { active, recent, .. } = snapshot else {
            return Seen::default();
        };
        let all = active.iter().chain(recent);
        Seen {
            at_ns: all.clone().map(|a| a.at_ns).max().unwrap_or(0),
            ids: all.map(|a| a.id).collect(),
        }
    }

    fn contains(&self, a: &AnomalyRecord) -> bool {
        self.ids.contains(&a.id) && (a.at_ns < self.at_ns || a.change == "raised")
    }
}

impl Stream {
    /// Already in the snapshot this stream follows.
    fn seen(&self, a: &AnomalyRecord) -> bool {
        matches!(self, Stream::Anomalies(seen) if seen.contains(a))
    }
}

#[cfg(test)]
mod tests;
