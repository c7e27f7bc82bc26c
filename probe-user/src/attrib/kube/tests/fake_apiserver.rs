//! An in-process HTTP/1.1 server on 127.0.0.1 that answers the pod list and watch requests
//! the way an apiserver does, with replies the test scripts one by one: a request waits
//! until the test gives its reply, so the test sees each state the source passes through.
use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::stream;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::{body::Frame, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};

type Chunk = Result<Bytes, io::Error>;

/// One scripted answer.
pub enum Reply {
    /// A whole body with this HTTP status.
    Body(u16, String),
    /// A watch stream the test feeds line by line ([`WatchFeed`]).
    Stream(mpsc::UnboundedReceiver<Chunk>),
}

/// The test's end of an open watch stream.
pub struct WatchFeed(mpsc::UnboundedSender<Chunk>);

impl WatchFeed {
    /// One watch event (a JSON line; the newline is added).
    pub fn line(&self, line: &str) {
        let _ = self.0.send(Ok(Bytes::from(format!("{line}\n"))));
    }

    /// Every line of a fixture file, as the apiserver would stream them.
    pub fn lines(&self, text: &str) {
        for line in text.lines() {
            self.line(line);
        }
    }

    /// Bytes as they are (no newline added).
    pub fn raw(&self, bytes: Vec<u8>) {
        let _ = self.0.send(Ok(Bytes::from(bytes)));
    }

    /// Ends the response cleanly, as the apiserver does when `timeoutSeconds` is up.
    pub fn end(self) {}

    /// Drops the connection mid-response, as a restarting apiserver or a load balancer does.
    pub fn abort(self) {
        let _ = self
            .0
            .send(Err(io::Error::other("connection cut by the test")));
    }
}

pub struct FakeApiserver {
    pub url: String,
    requests: Arc<Mutex<Vec<String>>>,
    lists: mpsc::UnboundedSender<Reply>,
    watches: mpsc::UnboundedSender<Reply>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

struct Scripts {
    requests: Arc<Mutex<Vec<String>>>,
    lists: tokio::sync::Mutex<mpsc::UnboundedReceiver<Reply>>,
    watches: tokio::sync::Mutex<mpsc::UnboundedReceiver<Reply>>,
}

impl FakeApiserver {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (lists, lists_rx) = mpsc::unbounded_channel();
        let (watches, watches_rx) = mpsc::unbounded_channel();
        let scripts = Arc::new(Scripts {
            requests: requests.clone(),
            lists: tokio::sync::Mutex::new(lists_rx),
            watches: tokio::sync::Mutex::new(watches_rx),
        });
        let (stop, stop_rx) = oneshot::channel();
        let thread = thread::spawn(move || serve(listener, scripts, stop_rx));
        Self {
            url: format!("http://{addr}"),
            requests,
            lists,
            watches,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The next list request gets this body (HTTP 200).
    pub fn list(&self, body: &str) {
        self.list_status(200, body);
    }

    pub fn list_status(&self, status: u16, body: &str) {
        let _ = self.lists.send(Reply::Body(status, body.to_owned()));
    }

    /// The next watch request gets an open stream, fed through the returned handle.
    pub fn watch(&self) -> WatchFeed {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.watches.send(Reply::Stream(rx));
        WatchFeed(tx)
    }

    /// The next watch request is refused with this status and body.
    pub fn watch_status(&self, status: u16, body: &str) {
        let _ = self.watches.send(Reply::Body(status, body.to_owned()));
    }

    /// Every request so far, as `path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits (bounded) until there are `n` requests, and returns the `n`th.
    pub fn request(&self, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.requests().get(n - 1) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no request #{n} within 10 s; requests: {:#?}",
                self.requests()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for FakeApiserver {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: std::net::TcpListener, scripts: Arc<Scripts>, stop: oneshot::Receiver<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let accept = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let scripts = scripts.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let scripts = scripts.clone();
                        async move { Ok::<_, Infallible>(answer(&scripts, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        };
        tokio::select! {
            _ = stop => {}
            () = accept => {}
        }
    });
}

async fn answer(
    scripts: &Scripts,
    req: Request<hyper::body::Incoming>,
) -> Response<BoxBody<Bytes, io::Error>> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    scripts.requests.lock().unwrap().push(target.clone());
    let is_watch = target.contains("watch=true");
    let reply = if is_watch {
        scripts.watches.lock().await.recv().await
    } else {
        scripts.lists.lock().await.recv().await
    };
    let (status, body) = match reply {
        Some(Reply::Body(status, text)) => (
            status,
            Full::new(Bytes::from(text))
                .map_err(|never: Infallible| match never {})
                .boxed(),
        ),
        Some(Reply::Stream(rx)) => {
            let frames = stream::unfold(rx, |mut rx| async move {
                let chunk = rx.recv().await?;
                Some((chunk.map(Frame::data), rx))
            });
            (200, StreamBody::new(frames).boxed())
        }
        None => (
            500,
            Full::new(Bytes::from("fake apiserver: no script\n"))
                .map_err(|never: Infallible| match never {})
                .boxed(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("audit-id", "3c8a9f4e-1b2d-4e6f-8a0c-5d7e9f1a2b3c")
        .body(body)
        .unwrap()
}
