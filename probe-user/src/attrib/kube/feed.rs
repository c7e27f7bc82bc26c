//! Watcher events into the [`PodDirectory`], and the source's state into its status.
//!
//! kube's watcher gives `Init`, one `InitApply` per listed pod (page after page), `InitDone`
//! when the (re)list is complete, then `Apply`/`Delete` from the watch. A relist replaces the
//! directory only when it is complete, so readers see the old pods, never half a list.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use kube::runtime::watcher::{Error as WatchError, Event};

use super::super::pods::{PodDirectory, PodMeta};
use super::slim::{checked_uid, to_pod_meta, SlimPod};
use crate::untrusted::escape_str;

/// The name this source gives itself in the directory's status.
pub const SOURCE: &str = "kubernetes-api";

/// Pods buffered during one (re)list before the directory is replaced. The directory keeps
/// at most its own `max_pods`; this only bounds the buffer against an endless list.
const MAX_LISTED: usize = 16_384;

/// The longest error text kept in the status (an apiserver message can be long).
const MAX_STATE_LEN: usize = 240;

/// Refused pods logged at warn level; past that they are only counted (a hostile stream
/// must not flood the log).
const LOGGED_REFUSALS: u64 = 20;

/// What the watch loop does after an error.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterError {
    /// kube's watcher recovers by itself (retry, resume or relist).
    Continue,
    /// A watch refused with HTTP 410: the watcher would retry the same expired
    /// resourceVersion forever, so a new watcher relists from scratch.
    Relist,
}

pub struct DirectoryFeed {
    pods: PodDirectory,
    /// The pods of the (re)list in progress.
    listing: Option<Vec<PodMeta>>,
    synced_once: bool,
    /// The latest error was a 410 Gone: the next list is a relist for that reason.
    gone: bool,
    /// The state says an error; the next event says synced again.
    erred: bool,
    refusals: u64,
    /// Lines received from the API server ([`super::lines`]), and their number at the
    /// latest error: more since means the watch flows again (bookmarks count).
    lines: Arc<AtomicU64>,
    lines_at_error: u64,
}

impl DirectoryFeed {
    pub fn new(pods: PodDirectory, lines: Arc<AtomicU64>) -> Self {
        pods.set_status(SOURCE, "listing");
        Self {
            pods,
            listing: None,
            synced_once: false,
            gone: false,
            erred: false,
            refusals: 0,
            lines,
            lines_at_error: 0,
        }
    }

    /// Called once a second: a watch that failed and has received lines since (a
    /// bookmark on a quiet node) is synced again, without waiting for a pod to change.
    pub fn tick(&mut self) {
        if self.erred && self.lines.load(Ordering::Relaxed) > self.lines_at_error {
            self.synced();
        }
    }

    pub fn event(&mut self, event: Event<SlimPod>) {
        match event {
            Event::Init => {
                self.listing = Some(Vec::new());
                let state = match (self.synced_once, self.gone) {
                    (false, _) => "listing",
                    (true, true) => "relisting (410 Gone)",
                    (true, false) => "relisting",
                };
                self.pods.set_status(SOURCE, state);
            }
            Event::InitApply(pod) => {
                let Some(meta) = self.checked(&pod) else {
                    return;
                };
                let listing = self.listing.get_or_insert_with(Vec::new);
                if listing.len() < MAX_LISTED {
                    listing.push(meta);
                } else {
                    self.pods.count_error();
                }
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                log::info!("kubernetes-api: {} pods of this node listed", listed.len());
                self.pods.replace_all(listed);
                self.synced_once = true;
                self.gone = false;
                self.erred = false;
                self.pods.set_status(SOURCE, "synced");
            }
            Event::Apply(pod) => {
                if let Some(meta) = self.checked(&pod) {
                    self.pods.upsert(meta);
                }
                self.synced();
            }
            Event::Delete(pod) => {
                match checked_uid(&pod) {
                    Ok(uid) => self.pods.remove(&uid),
                    Err(refused) => self.refuse(&refused),
                }
                self.synced();
            }
        }
    }

    /// Counts and shows an error; says whether a new watcher must relist.
    pub fn error(&mut self, error: &WatchError) -> AfterError {
        let status_code = match error {
            WatchError::WatchError(status) => Some(status.code),
            WatchError::InitialListFailed(kube::Error::Api(status))
            | WatchError::WatchStartFailed(kube::Error::Api(status))
            | WatchError::WatchFailed(kube::Error::Api(status)) => Some(status.code),
            _ => None,
        };
        if status_code == Some(410) {
            // The apiserver compacted past our resourceVersion (or a continue token
            // expired): routine, not a failure. The directory stays as it is until the
            // relist completes.
            log::info!(
                "kubernetes-api: {}; relisting",
                escape_str(&error_text(error))
            );
            self.gone = true;
            if self.synced_once {
                self.pods.set_status(SOURCE, "relisting (410 Gone)");
            }
            return match error {
                WatchError::WatchStartFailed(_) => AfterError::Relist,
                _ => AfterError::Continue,
            };
        }
        // The apiserver's words (a Status message) are an outsider's text.
        let said = escape_str(&error_text(error)).into_owned();
        log::warn!("kubernetes-api: {said}; retrying with backoff");
        let mut text = format!("reconnecting: {said}");
        if text.len() > MAX_STATE_LEN {
            let mut end = MAX_STATE_LEN;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        self.pods.set_last_error(&text["reconnecting: ".len()..]);
        self.pods.set_status(SOURCE, text);
        // Counted last: whoever sees the count sees this error's text too.
        self.pods.count_error();
        self.erred = true;
        self.lines_at_error = self.lines.load(Ordering::Relaxed);
        AfterError::Continue
    }

    /// An event from the watch after an error: the state says synced again.
    fn synced(&mut self) {
        if self.erred && self.synced_once && self.listing.is_none() {
            self.erred = false;
            self.pods.set_status(SOURCE, "synced");
        }
    }

    fn checked(&mut self, pod: &SlimPod) -> Option<PodMeta> {
        match to_pod_meta(pod) {
            Ok(meta) => Some(meta),
            Err(refused) => {
                self.refuse(&refused);
                None
            }
        }
    }

    fn refuse(&mut self, refused: &super::slim::Refused) {
        self.pods.count_error();
        self.refusals += 1;
        if self.refusals <= LOGGED_REFUSALS {
            log::warn!("kubernetes-api: {refused}; the pod is not attributed");
        } else {
            log::debug!("kubernetes-api: {refused}");
        }
    }
}

/// An error and its causes, each said once: kube's errors often show only the outermost
/// ("client error (Connect)") and keep the reason ("Connection refused") in a source.
fn error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}
