//! Proxy requests (`accesslog`) joined to the flows that carried them. The reader's thread
//! parses; the loop drains its queue once a second (bounded) and joins what it took against
//! the flow table, open and retained closed flows alike.
use crate::accesslog::{self, AccessLogs, ReaderStatus, Request};
use crate::config::EnvoyConfig;

/// The reader's and the join's counts, for the exporter.
#[derive(Clone, Debug, Default)]
pub struct EnvoyStats {
    pub reader: ReaderStatus,
    pub received: u64,
}

/// The join's state, owned by the pipeline.
#[derive(Default)]
pub struct Requests {
    logs: Option<AccessLogs>,
    /// Requests drained from the reader, joined at the next tick.
    pending: Vec<Request>,
    queue_len: usize,
    /// Requests taken from the reader's queue.
    pub received: u64,
}

impl Requests {
    /// Starts the access-log reader when `[envoy] paths` names any path; a reader that
    /// cannot start is logged, never fatal.
    pub fn start(cfg: &EnvoyConfig) -> Requests {
        let mut r = Requests {
            queue_len: cfg.queue_len,
            ..Requests::default()
        };
        if let Some(settings) = accesslog::Settings::of(cfg) {
            match AccessLogs::start(settings) {
                Ok(logs) => r.logs = Some(logs),
                Err(e) => log::warn!("envoy: the access-log reader did not start: {e}"),
            }
        }
        r
    }

    /// Once a second: takes what the reader queued (at most one queue's worth).
    pub fn tick(&mut self) {
        let Some(logs) = &self.logs else { return };
        let before = self.pending.len();
        logs.drain(self.queue_len.saturating_sub(before), &mut self.pending);
        self.received += (self.pending.len() - before) as u64;
        self.pending.clear();
    }

    /// What the exporter shows, `None` when no access log is configured.
    pub fn stats(&self) -> Option<EnvoyStats> {
        Some(EnvoyStats {
            reader: self.reader_status()?,
            received: self.received,
        })
    }

    /// The reader's sources and counts, `None` when no access log is configured.
    pub fn reader_status(&self) -> Option<ReaderStatus> {
        self.logs.as_ref().map(AccessLogs::status)
    }
}
