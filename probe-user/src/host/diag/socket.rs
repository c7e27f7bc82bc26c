//! What a dump finds (one TCP socket each) and why one failed.
use std::{io, net::SocketAddr, path::PathBuf};

/// The families as sock_diag's one-byte fields hold them.
pub(super) const AF_INET: u8 = probe_common::kernel::net::AF_INET as u8;
pub(super) const AF_INET6: u8 = probe_common::kernel::net::AF_INET6 as u8;

/// One TCP socket found in the namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingSocket {
    /// Socket cookie, as `bpf_get_socket_cookie()` / `SO_COOKIE` report it.
    pub cookie: u64,
    /// `AF_INET` or `AF_INET6` (dual-stack sockets are `AF_INET6` with v4-mapped addresses).
    pub family: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Kernel `TCP_*` numbering: 1 ESTABLISHED … 10 LISTEN; request sockets report 3
    /// (SYN_RECV), time-wait sockets 6 (TIME_WAIT) or 5 (FIN_WAIT2), bound-only sockets 7.
    pub state: u8,
    /// Socket inode (0 for request and time-wait mini-sockets).
    pub inode: u32,
    pub uid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("cannot open a NETLINK_SOCK_DIAG netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("cannot bind the sock_diag netlink socket: {0}")]
    Bind(#[source] io::Error),
    #[error("cannot set a receive timeout on the sock_diag netlink socket: {0}")]
    SetTimeout(#[source] io::Error),
    #[error("cannot send the {} TCP sock_diag dump request: {source}", family_name(*.family))]
    Send { family: u8, source: io::Error },
    #[error(
        "the {} TCP sock_diag dump request was sent short ({sent} of {expected} bytes)",
        family_name(*.family)
    )]
    ShortSend {
        family: u8,
        sent: usize,
        expected: usize,
    },
    #[error("cannot receive the {} TCP sock_diag dump reply: {source}", family_name(*.family))]
    Recv { family: u8, source: io::Error },
    #[error(
        "the kernel sent no {} TCP sock_diag dump reply within {secs} seconds",
        family_name(*.family)
    )]
    NoReply { family: u8, secs: u64 },
    #[error(
        "a {len}-byte sock_diag netlink datagram was truncated to the {capacity}-byte receive buffer"
    )]
    DatagramTruncated { len: usize, capacity: usize },
    #[error(
        "the kernel rejected the {} TCP sock_diag dump with netlink error -{errno} ({})",
        family_name(*.family),
        strerror(*.errno)
    )]
    Netlink { family: u8, errno: i32 },
    #[error(
        "the kernel aborted the {} TCP sock_diag dump midway with error -{errno} ({})",
        family_name(*.family),
        strerror(*.errno)
    )]
    DumpAborted { family: u8, errno: i32 },
    #[error(
        "truncated sock_diag reply: the {what} needs {needed} bytes but only {available} remain"
    )]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error(
        "invalid sock_diag reply: a netlink message claims length {len}, but it must be at least \
         16 and at most the {available} bytes left in the datagram"
    )]
    BadLength { len: u32, available: usize },
    #[error("unexpected netlink message type {ty} in a sock_diag dump reply")]
    UnexpectedType { ty: u16 },
    #[error("the kernel reported a netlink overrun (NLMSG_OVERRUN) during the sock_diag dump")]
    Overrun,
    #[error("a sock_diag reply carries unknown address family {family}")]
    UnexpectedFamily { family: u8 },
    #[error("cannot open the network namespace {}: {source}", .path.display())]
    OpenNetns { path: PathBuf, source: io::Error },
    #[error("cannot enter the network namespace {} (setns): {source}", .path.display())]
    Setns { path: PathBuf, source: io::Error },
    #[error("cannot spawn the thread that enters a network namespace: {0}")]
    Thread(#[source] io::Error),
    #[error("the thread listing TCP sockets in the network namespace {} panicked", .path.display())]
    ThreadPanicked { path: PathBuf },
}

fn family_name(family: u8) -> &'static str {
    match family {
        AF_INET => "IPv4",
        AF_INET6 => "IPv6",
        _ => "unknown-family",
    }
}

fn strerror(errno: i32) -> String {
    // Display of an OS error is "<strerror> (os error N)"; keep the text only.
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}
