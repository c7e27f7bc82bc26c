//! Why the daemon (or `trace`) could not start or had to stop.
use std::io;

use crate::{
    config::ConfigError, host::mounts::MountError, host::preflight::PreflightError,
    host::scope::ScopeError, kernel::counters::CounterError, kernel::loader::LoadError,
    kernel::reader::ReaderError,
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Reader(#[from] ReaderError),
    #[error(transparent)]
    Counters(#[from] CounterError),
    #[error(
        "--strict: {off} of {total} probes are off on this kernel (see the table above); run \
         without --strict to use the others"
    )]
    Strict { off: usize, total: usize },
    #[error("installing the signal handler: {0}")]
    Signal(io::Error),
    #[error("waiting for ring-buffer data: {0}")]
    Poll(io::Error),
}
