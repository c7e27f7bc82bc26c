//! Proxy access logs, read beside the event path: Envoy's JSON access-log lines (or any
//! proxy's lines with Envoy's field names) from the files and directories of `[envoy] paths`,
//! parsed into [`Request`]s the pipeline joins to flows (`pipeline::requests`).
//!
//! A stage between `attrib` and `pipeline`: one thread of its own follows the files
//! (`follow`: rotation, truncation, bounded lines), unwraps CRI lines (`cri`), parses
//! (`parse`) and hands requests to the event loop through a bounded queue that never blocks
//! either side: when it is full, requests are counted, not kept. Nothing here is fatal: a
//! missing or unreadable path is a state in `status` and a metric, a malformed line a count
//! and a rate-limited warning.
pub mod cri;
pub mod follow;
pub mod parse;
mod settings;
mod source;
mod status;
#[cfg(test)]
mod tests;

use std::{
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
};

pub use parse::Request;
pub use settings::Settings;
pub use status::{ReaderStatus, SourceStatus};

/// The reader thread and its queue; dropping it stops the thread.
pub struct AccessLogs {
    rx: mpsc::Receiver<Request>,
    status: Arc<Mutex<ReaderStatus>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AccessLogs {
    /// Lists the paths once (files present now are read from their end: their requests
    /// predate what the daemon saw) and starts the thread.
    pub fn start(s: Settings) -> std::io::Result<AccessLogs> {
        let (tx, rx) = mpsc::sync_channel(s.queue_len);
        let status = Arc::new(Mutex::new(ReaderStatus::default()));
        let (stop, stopped) = mpsc::channel::<()>();
        let mut reader = source::Reader::new(s, tx, status.clone());
        reader.rescan(true);
        reader.publish();
        let thread = std::thread::Builder::new()
            .name("access-logs".into())
            .spawn(move || reader.run(&stopped))?;
        Ok(AccessLogs {
            rx,
            status,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// At most `max` queued requests into `out`; never waits.
    pub fn drain(&self, max: usize, out: &mut Vec<Request>) {
        out.extend(self.rx.try_iter().take(max));
    }

    pub fn status(&self) -> ReaderStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

impl Drop for AccessLogs {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
