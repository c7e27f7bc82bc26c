//! The harness `xtask bench` and probe-user's real-kernel tests (`tests/kernel`) share: what
//! both need to drive linkprobe from outside, in one place.
//!
//! - [`netns`]: a named network namespace deleted on drop, threads entered into it, nftables
//!   scripts and `nstat` counters inside it.
//! - [`process`]: a background process (linkprobe, its CLI, a tool) under a guard that stops it
//!   on every path, its output as line channels, ready when a line says so.
//! - [`linkprobe`]: linkprobe's side of that contract: its ready marker, a run directory, a
//!   port for its exporter.
//! - [`http`]: a blocking HTTP/1.1 `GET` (the exporter, Prometheus's API).
//! - [`workload`]: socket options (cookie, abort on close, SYN retries), loopback connections
//!   and loops bounded by a count, a deadline and a rate.
//! - [`cmd`]: a command line as shown, quiet commands that must succeed.
//!
//! Everything returns typed errors ([`Error`], [`http::HttpError`]); the tests turn them into
//! panics, xtask into its error reports. What changes the system or starts a process is printed
//! first (`$ ip netns add …`) on stdout, as xtask prints every command it runs (libtest
//! captures it per test and shows it with a failure).
pub mod cmd;
mod error;
pub mod http;
pub mod linkprobe;
pub mod netns;
pub mod process;
pub mod workload;

pub use error::Error;
