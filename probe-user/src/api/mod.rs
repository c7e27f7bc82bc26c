//! The daemon's local API on a Unix socket: typed requests and responses (`proto`, shared with
//! the CLI), the server thread (`server`, `socket`), request filters (`filter`) and the event
//! loop's answers (`answer`).
pub mod answer;
pub mod filter;
pub mod proto;
pub mod server;
pub mod socket;
#[cfg(test)]
mod tests;

pub use server::{spawn, Answer, ApiLoop, Live, LoopQuery};

/// The socket's file name inside the daemon's run directory.
pub const SOCKET_NAME: &str = "api.sock";
/// Where the CLI looks by default.
pub const DEFAULT_SOCKET: &str = "/run/linkprobe/api.sock";

/// The daemon's API server as its flags ask: `<run dir>/api.sock`, root only or with
/// `--api-group`; none with `--no-api`.
pub fn for_daemon(
    args: &crate::cli::DaemonArgs,
    reasons: &crate::rst_reason::ReasonNames,
) -> Result<Option<ApiLoop>, socket::SocketError> {
    if args.no_api {
        return Ok(None);
    }
    let gid = args
        .api_group
        .as_deref()
        .map(socket::group_id)
        .transpose()?;
    spawn(&args.run_dir.join(SOCKET_NAME), gid, reasons.clone()).map(Some)
}
