//! What the reader needs from `[envoy]`.
use std::{path::PathBuf, time::Duration};

use super::parse::FieldNames;
use crate::config::EnvoyConfig;

/// What the reader thread needs from `[envoy]`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub paths: Vec<PathBuf>,
    pub names: FieldNames,
    pub max_line: usize,
    pub queue_len: usize,
    pub max_files: usize,
    pub poll: Duration,
    pub rescan: Duration,
}

impl Settings {
    /// `None` when no path is configured (the reader is off).
    pub fn of(c: &EnvoyConfig) -> Option<Settings> {
        if c.paths.0.is_empty() {
            return None;
        }
        Some(Settings {
            paths: c.paths.0.iter().map(PathBuf::from).collect(),
            names: FieldNames::of(c),
            max_line: c.max_line_bytes,
            queue_len: c.queue_len,
            max_files: c.max_files,
            poll: Duration::from_millis(c.poll_ms),
            rescan: Duration::from_secs(c.rescan_secs),
        })
    }
}
