//! The daemon (and `trace`): `start` (configuration, preflight, mounts, scope, load and
//! attach), then the event loop until SIGINT/SIGTERM, after which everything is detached
//! (dropping the `Ebpf` closes every link) and the final counters are printed. The loop's state
//! has one owner (`state`); printing, the exporter's snapshot, the open-flow refresh and the
//! backups of `--backup-probes auto` are its parts.
mod auto_backups;
mod error;
mod event_loop;
pub mod exporter;
mod open_flows;
mod output;
mod printer;
mod snapshot;
mod start;
mod state;

pub use error::RunError;
pub use event_loop::run;
pub use start::{announce_ready, start};
