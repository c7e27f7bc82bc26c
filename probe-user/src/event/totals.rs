//! What the daemon's loop received since it started: records per kind, what could not be
//! decoded and the output lines stdout did not take. One owner (the loop); `status`, `/metrics` and the final counters line borrow it.
use std::{collections::BTreeMap, time::Instant};

use crate::event::{kind_name, Event};

#[derive(Debug)]
pub struct Totals {
    /// Records decoded, per kind.
    pub records: BTreeMap<&'static str, u64>,
    /// Records that could not be decoded (each logged).
    pub decode_errors: u64,
    /// Lines the daemon's stdout did not take in time (dropped, never blocking the loop).
    pub output_dropped_lines: u64,
    pub started: Instant,
    /// The running kernel's release, read once at start.
    pub kernel_release: String,
}

impl Totals {
    pub fn start() -> Totals {
        Totals {
            records: BTreeMap::new(),
            decode_errors: 0,
            output_dropped_lines: 0,
            started: Instant::now(),
            kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|r| r.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
        }
    }

    pub fn decoded(&mut self, ev: &Event) {
        *self.records.entry(kind_name(ev.detail.kind())).or_default() += 1;
    }

    pub fn undecodable(&mut self) {
        self.decode_errors += 1;
    }
}
