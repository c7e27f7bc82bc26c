//! linkprobe userspace: loads the eBPF probes, drains their ring buffer and turns records into
//! typed events. Folders follow the event path, one way (ARCHITECTURE.md has the diagram):
//! `host` (preflight, mounts, lock, scope, sockets open before start) → `kernel` (tracefs, BTF,
//! loader, ring reader, counters) → `event` (decode) → `attrib` (owners) → `accesslog` (proxy
//! access logs) → `pipeline` (flow table, signals,
//! detectors, metrics, top) → `render` (text and JSON) → `api` (local socket) and `daemon`
//! (start, event loop, exporter) → `ctl` (the CLI's commands). `commands` is the one entry the
//! binary calls.
mod accesslog;
mod api;
mod attrib;
pub mod cli;
mod clock;
mod commands;
mod config;
mod ctl;
mod daemon;
mod event;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod host;
mod kernel;
mod pipeline;
mod render;
mod untrusted;

pub use commands::{run, CommandError};
