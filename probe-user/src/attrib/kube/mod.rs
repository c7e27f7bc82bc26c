//! Pod names, namespaces and IPs of this node from the Kubernetes API (kube-rs), into a
//! [`PodDirectory`].
//!
//! One watch of `pods` with the field selector `spec.nodeName=<node>`, run by kube's
//! watcher: a paginated initial list, then a watch with bookmarks resumed from the last
//! resourceVersion after a disconnect; a 410 Gone (an ERROR event, an expired continue
//! token, or a watch refused with HTTP 410) relists; other errors are retried with a
//! jittered exponential backoff ([`backoff`]). Pods are read as [`slim::SlimPod`] and kept
//! as [`PodMeta`](super::pods::PodMeta) only, so memory is bounded by the node's pods, not
//! by what the objects carry. [`feed`] turns the watcher's events into directory updates
//! and the status `linkprobe status` shows.
//!
//! The watch runs on a thread of its own with its own tokio runtime (like the exporter): a
//! slow apiserver never delays the event loop. Dropping [`KubeWatch`] stops it.
use std::{
    io,
    sync::{atomic::AtomicU64, Arc},
    thread,
    time::Duration,
};

use futures::StreamExt as _;
use kube::{
    client::ClientBuilder,
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, Config,
};
use tokio::sync::oneshot;

use super::pods::PodDirectory;

mod backoff;
mod feed;
mod lines;
mod slim;
#[cfg(test)]
mod tests;

use backoff::RetryBackoff;
use feed::{AfterError, DirectoryFeed};
use slim::SlimPod;

/// How to reach the API and which node's pods to watch.
#[derive(Clone, Debug)]
pub struct KubeSettings {
    /// `spec.nodeName` of the pods to watch (`NODE_NAME` from the downward API).
    pub node_name: String,
    /// The apiserver to use instead of the in-cluster configuration (service-account
    /// token and CA, `KUBERNETES_SERVICE_HOST`/`_PORT`): e.g. `http://127.0.0.1:8001` from
    /// `kubectl proxy`. No credentials are sent to it. `None` in a cluster.
    pub api_url: Option<String>,
    /// Pods per list request (the initial list and every relist). Bounds the size of one
    /// response; a node's pods usually fit in one or two pages.
    pub page_size: u32,
    /// The first wait after an error; doubled on each further error, jittered.
    pub retry_first: Duration,
    /// The longest wait between retries.
    pub retry_max: Duration,
    /// The most bytes one response line may have (a list page is one line, a watch event
    /// is one): a longer one fails that response, counted, instead of growing a buffer.
    pub max_response_line: usize,
}

impl Default for KubeSettings {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            api_url: None,
            page_size: 100,
            retry_first: Duration::from_millis(800),
            retry_max: Duration::from_secs(30),
            max_response_line: 32 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "no node name to watch pods of: set NODE_NAME from the downward API \
         (env: NODE_NAME valueFrom fieldRef fieldPath spec.nodeName, as in \
         deploy/kubernetes/daemonset.yaml)"
    )]
    NoNodeName,
    #[error(
        "node name {0:?} is not a Kubernetes node name (lowercase letters, digits, '-' and \
         '.', at most 253): check NODE_NAME"
    )]
    BadNodeName(String),
    #[error(
        "not running in a Kubernetes pod with a service account: {0}; mount the service \
         account token (automountServiceAccountToken) or give an API URL"
    )]
    InCluster(#[source] kube::config::InClusterError),
    #[error("the Kubernetes API URL {url:?} is not a URL: {source}")]
    BadUrl {
        url: String,
        source: hyper::http::uri::InvalidUri,
    },
    #[error("cannot make a Kubernetes API client: {0}")]
    Client(#[source] kube::Error),
    #[error("starting the Kubernetes API watch thread: {0}")]
    Thread(#[source] io::Error),
}

/// The running watch; dropping it stops the watch (and waits for its thread).
#[derive(Debug)]
pub struct KubeWatch {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for KubeWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the Kubernetes API watch thread panicked");
            }
        }
    }
}

/// Starts watching this node's pods on a thread of its own, filling `pods`.
///
/// Fails at once, before any request, when the node name is missing or invalid or there is
/// no in-cluster configuration (the daemon then falls back to another pod source); errors
/// of the API itself are retried and shown in the status.
pub fn start(settings: &KubeSettings, pods: PodDirectory) -> Result<KubeWatch, KubeError> {
    let node = checked_node_name(&settings.node_name)?;
    let config = match &settings.api_url {
        Some(url) => Config::new(url.parse().map_err(|source| KubeError::BadUrl {
            url: url.clone(),
            source,
        })?),
        None => Config::incluster().map_err(KubeError::InCluster)?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(KubeError::Thread)?;
    let lines = Arc::new(AtomicU64::new(0));
    // The client's connection pool spawns its tasks on the runtime it is made in.
    let built = {
        let _entered = runtime.enter();
        ClientBuilder::try_from(config).map(|builder| {
            builder
                .with_layer(&lines::layer(settings.max_response_line, lines.clone()))
                .build()
        })
    };
    let client = match built {
        Ok(client) => client,
        Err(e) => {
            // Dropping a runtime blocks, which panics if the caller is itself async.
            runtime.shutdown_background();
            return Err(KubeError::Client(e));
        }
    };
    let watch_config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .page_size(settings.page_size.max(1));
    let (stop_tx, stop_rx) = oneshot::channel();
    let feed = DirectoryFeed::new(pods, lines);
    let (first, max) = (settings.retry_first, settings.retry_max);
    let thread = thread::Builder::new()
        .name("linkprobe-kube".into())
        .spawn(move || {
            runtime.block_on(watch_pods(
                client,
                watch_config,
                feed,
                (first, max),
                stop_rx,
            ));
        })
        .map_err(KubeError::Thread)?;
    log::info!("watching the pods of node {node} through the Kubernetes API");
    Ok(KubeWatch {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// The node name goes into a field selector: anything but a DNS subdomain could change
/// what is selected (`,` adds a term).
fn checked_node_name(name: &str) -> Result<&str, KubeError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(KubeError::NoNodeName);
    }
    let ok = name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !ok {
        return Err(KubeError::BadNodeName(name.chars().take(64).collect()));
    }
    Ok(name)
}

async fn watch_pods(
    client: Client,
    config: watcher::Config,
    mut feed: DirectoryFeed,
    (retry_first, retry_max): (Duration, Duration),
    mut stop: oneshot::Receiver<()>,
) {
    let api: Api<SlimPod> = Api::all(client);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Each watcher starts with a full list; a new one is made only when the old one
        // cannot recover by itself (a watch refused with HTTP 410).
        let mut events = watcher(api.clone(), config.clone())
            .backoff(RetryBackoff::new(retry_first, retry_max))
            .boxed();
        loop {
            let item = tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {
                    feed.tick();
                    continue;
                }
                item = events.next() => item,
            };
            match item {
                Some(Ok(event)) => feed.event(event),
                Some(Err(error)) => {
                    if feed.error(&error) == AfterError::Relist {
                        break;
                    }
                }
                // The watcher's stream does not end; if it did, start over.
                None => break,
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(retry_first) => {}
        }
    }
}
