//! TCP sockets that already existed when the daemon started, with their socket cookies, read
//! from the kernel through a `NETLINK_SOCK_DIAG` dump (what `ss -t` uses). The eBPF probes key
//! flows by socket cookie, so this lets the daemon attribute traffic on connections it never saw
//! being set up.
//!
//! Raw `libc` netlink: one `SOCK_DIAG_BY_FAMILY` dump per address family, multipart replies read
//! until `NLMSG_DONE`. The wire format and its bounds-checked parser live in [`wire`].
use std::{
    fs::File,
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::Duration,
};

mod socket;
mod wire;

#[cfg(test)]
mod kernel_tests;

pub use socket::{DiagError, ExistingSocket};
use socket::{AF_INET, AF_INET6};
use wire::Progress;

/// For the fuzz targets: `bytes` as one dump datagram of each family. The sequence number is
/// the first message's own (bytes 8..12), so fuzzed messages are parsed, not skipped as stale.
#[cfg(feature = "fuzzing")]
pub fn fuzz_datagram(bytes: &[u8]) -> bool {
    let seq = bytes
        .get(8..12)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes);
    let mut out = Vec::new();
    [AF_INET, AF_INET6]
        .iter()
        .all(|&family| wire::parse_datagram(bytes, family, seq, &mut out).is_ok())
}

/// Receive buffer for one netlink datagram. The kernel sizes dump datagrams to the reader's
/// buffer (up to 32 KiB), so a reply never outgrows it.
const RECV_BUF: usize = 32 * 1024;
/// A dump datagram that takes longer than this to arrive means something is wrong.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// All TCP sockets (IPv4 and IPv6, every state except LISTEN unless `include_listen`) of the
/// calling thread's network namespace.
pub fn tcp_sockets(include_listen: bool) -> Result<Vec<ExistingSocket>, DiagError> {
    let sock = NlSocket::open()?;
    let states = wire::state_mask(include_listen);
    let mut buf = vec![0u8; RECV_BUF];
    let mut out = Vec::new();
    for (seq, family) in [(1, AF_INET), (2, AF_INET6)] {
        sock.send(family, &wire::encode_request(family, states, seq))?;
        loop {
            let len = sock.recv(family, &mut buf)?;
            let datagram = buf.get(..len).unwrap_or_default();
            if wire::parse_datagram(datagram, family, seq, &mut out)? == Progress::Done {
                break;
            }
        }
    }
    Ok(out)
}

/// Same, inside the network namespace at `netns_path` (e.g. /run/netns/NAME or
/// /proc/PID/ns/net): run on a short-lived thread that setns()s into it.
pub fn tcp_sockets_in(
    netns_path: &Path,
    include_listen: bool,
) -> Result<Vec<ExistingSocket>, DiagError> {
    let path = netns_path.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("linkprobe-diag".into())
        .spawn(move || {
            enter_netns(&path)?;
            // The netlink socket is created after setns, so it belongs to the target namespace;
            // the namespace switch ends with this thread.
            tcp_sockets(include_listen)
        })
        .map_err(DiagError::Thread)?;
    handle.join().unwrap_or_else(|_| {
        Err(DiagError::ThreadPanicked {
            path: netns_path.to_path_buf(),
        })
    })
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &Path) -> Result<(), DiagError> {
    let ns = File::open(path).map_err(|source| DiagError::OpenNetns {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: setns on a descriptor we own; it only changes this thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(DiagError::Setns {
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A `NETLINK_SOCK_DIAG` socket bound to a kernel-assigned port id.
struct NlSocket {
    fd: OwnedFd,
}

fn kernel_addr() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain integers; all-zero is a valid value (pid 0 = the kernel).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

const NL_ADDR_LEN: libc::socklen_t = size_of::<libc::sockaddr_nl>() as libc::socklen_t;

impl NlSocket {
    fn open() -> Result<Self, DiagError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if raw < 0 {
            return Err(DiagError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        // nl_pid 0: the kernel assigns a unique port id.
        let local = kernel_addr();
        // SAFETY: `local` is a valid sockaddr_nl of NL_ADDR_LEN bytes for the call's duration.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const local).cast::<libc::sockaddr>(),
                NL_ADDR_LEN,
            )
        };
        if rc != 0 {
            return Err(DiagError::Bind(io::Error::last_os_error()));
        }

        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a valid timeval of the size passed, alive for the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast::<libc::c_void>(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(DiagError::SetTimeout(io::Error::last_os_error()));
        }
        Ok(Self { fd })
    }

    fn send(&self, family: u8, request: &[u8]) -> Result<(), DiagError> {
        let kernel = kernel_addr();
        loop {
            // SAFETY: `request` and `kernel` are valid for the stated lengths during the call.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    request.as_ptr().cast::<libc::c_void>(),
                    request.len(),
                    0,
                    (&raw const kernel).cast::<libc::sockaddr>(),
                    NL_ADDR_LEN,
                )
            };
            if sent < 0 {
                let source = io::Error::last_os_error();
                if source.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(DiagError::Send { family, source });
            }
            let sent = sent.unsigned_abs();
            if sent != request.len() {
                return Err(DiagError::ShortSend {
                    family,
                    sent,
                    expected: request.len(),
                });
            }
            return Ok(());
        }
    }

    /// Receives one datagram from the kernel into `buf`, returning its length. Datagrams from
    /// other senders (user-space processes can unicast to our port id) are dropped.
    fn recv(&self, family: u8, buf: &mut [u8]) -> Result<usize, DiagError> {
        loop {
            let mut from = kernel_addr();
            let mut from_len = NL_ADDR_LEN;
            // SAFETY: `buf` is writable for buf.len() bytes and `from` for `from_len` bytes.
            // MSG_TRUNC makes the kernel return the real datagram length even when it was
            // longer than `buf`; only `buf.len()` bytes are ever written.
            let got = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&raw mut from).cast::<libc::sockaddr>(),
                    &raw mut from_len,
                )
            };
            if got < 0 {
                let source = io::Error::last_os_error();
                match source.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        return Err(DiagError::NoReply {
                            family,
                            secs: RECV_TIMEOUT.as_secs(),
                        })
                    }
                    _ => return Err(DiagError::Recv { family, source }),
                }
            }
            let got = got.unsigned_abs();
            if from.nl_pid != 0 {
                log::debug!(
                    "sock_diag: dropping a {got}-byte datagram from netlink port {}",
                    from.nl_pid
                );
                continue;
            }
            if got > buf.len() {
                return Err(DiagError::DatagramTruncated {
                    len: got,
                    capacity: buf.len(),
                });
            }
            return Ok(got);
        }
    }
}
