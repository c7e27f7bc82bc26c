//! linkprobe's side of the harness: what it prints once its probes are attached, a run
//! directory for its lock and API socket, a port for its exporter.
use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
};

use crate::error::Error;

/// On stderr, once every probe is attached (`daemon` and `trace`), whatever the output format.
pub const READY: &str = "linkprobe: ready";

/// `metrics.max_series` by default (README): the cap on [`CAPPED_FAMILIES`].
pub const DEFAULT_MAX_SERIES: usize = 1800;

/// The metric families the series cap covers (README: the traffic and anomaly series), as the
/// tests state them: their oracle counts these families' lines in an exposition.
pub const CAPPED_FAMILIES: [&str; 7] = [
    "linkprobe_tcp_connections_total",
    "linkprobe_tcp_resets_total",
    "linkprobe_tcp_retransmits_total",
    "linkprobe_tcp_connect_failures_total",
    "linkprobe_tcp_handshake_duration_seconds",
    "linkprobe_tcp_rtt_seconds",
    "linkprobe_anomalies_active",
];

/// A daemon's run directory (`--run-dir`: its lock and API socket) in the temporary
/// directory, removed when dropped. Keep it alive longer than the daemon: in a struct, declare
/// it after the daemon's guard, so that it drops second.
pub struct RunDir {
    path: PathBuf,
    text: String,
}

impl RunDir {
    /// `<temp dir>/<tag>-<pid>`, emptied if a killed run left it.
    pub fn create(tag: &str) -> Result<RunDir, Error> {
        let path = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let text = path
            .to_str()
            .ok_or_else(|| Error::NotUtf8(path.display().to_string()))?
            .to_owned();
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(RunDir { path, text })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a command-line argument.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A loopback address with a port free now (bound, read, released), for an exporter.
pub fn free_loopback_addr() -> Result<SocketAddr, Error> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::io("finding a free loopback port", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_is_made_and_removed() {
        let d = RunDir::create("testkit-rundir").unwrap();
        assert!(d.path().is_dir());
        assert_eq!(Path::new(d.as_str()), d.path());
        let p = d.path().to_path_buf();
        std::fs::write(p.join("lock"), "").unwrap();
        drop(d);
        assert!(!p.exists());
    }

    #[test]
    fn free_port_is_on_loopback() {
        let a = free_loopback_addr().unwrap();
        assert!(a.ip().is_loopback());
        assert_ne!(a.port(), 0);
    }
}
