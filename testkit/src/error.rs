//! The one error type of the harness (HTTP has its own: [`crate::http::HttpError`]).
use std::{io, net::SocketAddr, process::ExitStatus};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    /// A command that ran but did not exit 0; `stderr` is what it printed there (trimmed).
    #[error("`{command}` failed with {status}{}", colon(stderr))]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A background process printed no ready line in time (`output`: what it printed so far).
    #[error("`{command}` was not ready within {secs} s{output}")]
    NotReady {
        command: String,
        secs: u64,
        output: String,
    },
    #[error("`{command}` exited ({status}) before it was ready{output}")]
    ExitedEarly {
        command: String,
        status: String,
        output: String,
    },
    #[error("pid {pid} did not exit within {secs} s of SIGINT; killed ({status})")]
    Killed {
        pid: u32,
        secs: u64,
        status: ExitStatus,
    },
    /// A connect that should have been refused (nothing listens there) was not.
    #[error("{addr}: {outcome}")]
    NotRefused { addr: SocketAddr, outcome: String },
    #[error("{0} is not valid UTF-8")]
    NotUtf8(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// For `map_err` on a spawn of `command`.
    pub(crate) fn spawn(command: &str) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error::Spawn {
            command: command.to_owned(),
            source,
        }
    }
}

fn colon(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}
