//! The daemon's local API on a Unix socket: typed requests and responses (`proto`, shared with
//! the CLI), the server thread (`server`, `socket`, `peer`: who connects, per-uid caps), request filters (`filter`) and the event
//! loop's answers (`answer`).
pub mod answer;
pub mod filter;
pub mod peer;
pub mod proto;
pub mod server;
pub mod socket;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_requests;

pub use server::{spawn, ApiLoop, Live, LoopQuery};

/// Where the CLI looks by default.
pub const DEFAULT_SOCKET: &str = "/run/linkprobe/api.sock";
