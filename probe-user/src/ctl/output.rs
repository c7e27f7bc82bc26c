//! What every CLI command shares: its error, the daemon's reply checked and named, and
//! stdout (a closed pipe is not an error).
use std::io::{self, Write};

use crate::{
    api::proto::{ErrorCode, Reply},
    cli::View,
    ctl::conn::ConnError,
};

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("{message}")]
    Daemon { code: ErrorCode, message: String },
    #[error("--cgroup {path}: {source} (give a cgroup v2 directory or its numeric id)")]
    Cgroup { path: String, source: io::Error },
    #[error(
        "--cgroup {path}: {why}; give a directory under the cgroup2 mount (e.g. \
         /sys/fs/cgroup/system.slice/nginx.service) or its numeric id"
    )]
    NotCgroup { path: String, why: &'static str },
    #[error(
        "--since filters flows only: watch shows live events from now on (for past flows: \
         `linkprobe flows --since …`)"
    )]
    WatchSince,
    #[error("the daemon answered with an unexpected reply ({0}); are the CLI and daemon the same version?")]
    Unexpected(&'static str),
    #[error("writing output: {0}")]
    Output(io::Error),
    #[error("{0} is not a CLI command")]
    NotCli(&'static str),
}

pub(super) fn reply_name(r: &Reply) -> &'static str {
    match r {
        Reply::Status(_) => "status",
        Reply::Flows { .. } => "flows",
        Reply::Flow { .. } => "flow",
        Reply::Anomalies { .. } => "anomalies",
        Reply::Top(_) => "top",
        Reply::Subscribed => "subscribed",
        Reply::Event { .. } => "event",
        Reply::Anomaly { .. } => "anomaly",
        Reply::Overflow { .. } => "overflow",
        Reply::Error { .. } => "error",
    }
}

/// Turns a daemon error reply into an error; passes anything else through.
pub(super) fn check(r: Reply) -> Result<Reply, CtlError> {
    match r {
        Reply::Error { code, message } => Err(CtlError::Daemon { code, message }),
        other => Ok(other),
    }
}

pub(super) fn out(text: &str) -> Result<(), CtlError> {
    let mut o = io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        // `| head` closed the pipe: not an error for the user.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(CtlError::Output),
    }
}

pub(super) fn json<T: serde::Serialize>(v: &T) -> Result<(), CtlError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| CtlError::Output(e.into()))?;
    out(&(text + "\n"))
}

pub(super) fn overflow(lost: u64, view: View) -> Result<(), CtlError> {
    match view {
        View::Json => out(&format!("{{\"type\":\"overflow\",\"lost\":{lost}}}\n")),
        _ => {
            eprintln!("linkprobe: this client fell behind; {lost} items were dropped for it");
            Ok(())
        }
    }
}
