//! Wire format of the `NETLINK_SOCK_DIAG` TCP dump: the kernel structs (exact layouts from
//! `include/uapi/linux/netlink.h`, `linux/sock_diag.h` and `linux/inet_diag.h`), request encoding
//! and a bounds-checked reply parser. Nothing here touches a socket, so every path is unit-tested
//! on hand-built buffers.
use std::{
    mem::{offset_of, size_of},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
};

use probe_common::kernel::{net, tcp_state};

use super::socket::{DiagError, ExistingSocket, AF_INET, AF_INET6};

pub(super) const NLMSG_NOOP: u16 = 1;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLMSG_OVERRUN: u16 = 4;
pub(super) const SOCK_DIAG_BY_FAMILY: u16 = 20;
pub(super) const NLM_F_REQUEST: u16 = 1;
pub(super) const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ALIGNTO: usize = 4;

const IPPROTO_TCP: u8 = net::IPPROTO_TCP as u8;

pub(super) const TCP_LISTEN: u8 = tcp_state::LISTEN;
/// Every state bit from `TCP_ESTABLISHED` (1) through `TCP_BOUND_INACTIVE` (13, Linux 6.10+; older
/// kernels ignore the bit): 0x3ffe. Bound-but-inactive sockets come back with state `TCP_CLOSE`.
const TCPF_ALL: u32 = (2 << tcp_state::BOUND_INACTIVE) - (1 << tcp_state::ESTABLISHED);
const _: () = assert!(TCPF_ALL == 0x3ffe);

/// `struct nlmsghdr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct NlMsgHdr {
    pub nlmsg_len: u32,
    pub nlmsg_type: u16,
    pub nlmsg_flags: u16,
    pub nlmsg_seq: u32,
    pub nlmsg_pid: u32,
}

/// `struct nlmsgerr` (the payload of `NLMSG_ERROR`; extended-ack attributes may follow).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct NlMsgErr {
    pub error: i32,
    pub msg: NlMsgHdr,
}

/// `struct inet_diag_sockid`: ports and addresses in network byte order, the rest native.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct InetDiagSockId {
    pub idiag_sport: u16,
    pub idiag_dport: u16,
    pub idiag_src: [u32; 4],
    pub idiag_dst: [u32; 4],
    pub idiag_if: u32,
    pub idiag_cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct InetDiagReqV2 {
    pub sdiag_family: u8,
    pub sdiag_protocol: u8,
    pub idiag_ext: u8,
    pub pad: u8,
    pub idiag_states: u32,
    pub id: InetDiagSockId,
}

/// `struct inet_diag_msg` (netlink attributes may follow it inside the message).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct InetDiagMsg {
    pub idiag_family: u8,
    pub idiag_state: u8,
    pub idiag_timer: u8,
    pub idiag_retrans: u8,
    pub id: InetDiagSockId,
    pub idiag_expires: u32,
    pub idiag_rqueue: u32,
    pub idiag_wqueue: u32,
    pub idiag_uid: u32,
    pub idiag_inode: u32,
}

pub(super) const NLMSG_HDRLEN: usize = size_of::<NlMsgHdr>();
pub(super) const REQUEST_LEN: usize = NLMSG_HDRLEN + size_of::<InetDiagReqV2>();

// The layouts must match the kernel's byte for byte.
const _: () = {
    assert!(size_of::<NlMsgHdr>() == 16);
    assert!(size_of::<NlMsgErr>() == 20);
    assert!(size_of::<InetDiagSockId>() == 48);
    assert!(offset_of!(InetDiagSockId, idiag_src) == 4);
    assert!(offset_of!(InetDiagSockId, idiag_dst) == 20);
    assert!(offset_of!(InetDiagSockId, idiag_if) == 36);
    assert!(offset_of!(InetDiagSockId, idiag_cookie) == 40);
    assert!(size_of::<InetDiagReqV2>() == 56);
    assert!(offset_of!(InetDiagReqV2, idiag_states) == 4);
    assert!(offset_of!(InetDiagReqV2, id) == 8);
    assert!(size_of::<InetDiagMsg>() == 72);
    assert!(offset_of!(InetDiagMsg, id) == 4);
    assert!(offset_of!(InetDiagMsg, idiag_expires) == 52);
    assert!(offset_of!(InetDiagMsg, idiag_uid) == 64);
    assert!(offset_of!(InetDiagMsg, idiag_inode) == 68);
};

/// Structs made only of integers: every bit pattern is a valid value.
///
/// # Safety
/// Implementors must be `#[repr(C)]` with integer (or array-of-integer / nested `Plain`) fields.
unsafe trait Plain: Copy {}
// SAFETY: all four are #[repr(C)] structs of integers and integer arrays.
unsafe impl Plain for NlMsgHdr {}
// SAFETY: as above.
unsafe impl Plain for NlMsgErr {}
// SAFETY: as above.
unsafe impl Plain for InetDiagMsg {}
// SAFETY: a byte array is plain data.
unsafe impl Plain for [u8; 4] {}

/// Reads a `T` from the front of `bytes`, or reports that `what` is truncated.
fn read<T: Plain>(bytes: &[u8], what: &'static str) -> Result<T, DiagError> {
    if bytes.len() < size_of::<T>() {
        return Err(DiagError::Truncated {
            what,
            needed: size_of::<T>(),
            available: bytes.len(),
        });
    }
    // SAFETY: `bytes` holds at least size_of::<T>() readable bytes (checked above), the read is
    // unaligned-tolerant, and `T: Plain` accepts any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

const fn nlmsg_align(len: usize) -> usize {
    (len + NLMSG_ALIGNTO - 1) & !(NLMSG_ALIGNTO - 1)
}

/// State bitmask for `idiag_states`.
pub(super) const fn state_mask(include_listen: bool) -> u32 {
    if include_listen {
        TCPF_ALL
    } else {
        TCPF_ALL & !(1 << TCP_LISTEN)
    }
}

/// Encodes `nlmsghdr` + `inet_diag_req_v2` for a TCP dump of `family`.
pub(super) fn encode_request(family: u8, states: u32, seq: u32) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    out[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    out[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    out[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: addressed to the kernel. The request body follows.
    let body = NLMSG_HDRLEN;
    out[body + offset_of!(InetDiagReqV2, sdiag_family)] = family;
    out[body + offset_of!(InetDiagReqV2, sdiag_protocol)] = IPPROTO_TCP;
    // idiag_ext 0 (no extensions), pad 0, id all zero (no filter, no cookie).
    let states_at = body + offset_of!(InetDiagReqV2, idiag_states);
    out[states_at..states_at + 4].copy_from_slice(&states.to_ne_bytes());
    out
}

/// Where a dump stands after one datagram.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Progress {
    More,
    Done,
}

/// Parses one received datagram of the `family` dump with sequence number `seq`, appending
/// sockets to `out`. Messages carrying another sequence number (stale replies) are skipped.
pub(super) fn parse_datagram(
    buf: &[u8],
    family: u8,
    seq: u32,
    out: &mut Vec<ExistingSocket>,
) -> Result<Progress, DiagError> {
    let mut rest = buf;
    while !rest.is_empty() {
        let hdr: NlMsgHdr = read(rest, "netlink message header")?;
        let len = hdr.nlmsg_len as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(DiagError::BadLength {
                len: hdr.nlmsg_len,
                available: rest.len(),
            });
        }
        let payload = &rest[NLMSG_HDRLEN..len];
        // The last message of a datagram may omit its alignment padding.
        rest = rest.get(nlmsg_align(len)..).unwrap_or_default();

        if hdr.nlmsg_seq != seq {
            log::debug!(
                "sock_diag: skipping netlink message type {} with sequence {} (want {seq})",
                hdr.nlmsg_type,
                hdr.nlmsg_seq
            );
            continue;
        }
        match hdr.nlmsg_type {
            SOCK_DIAG_BY_FAMILY => out.push(parse_socket(payload)?),
            NLMSG_DONE => {
                // The payload is an int: 0, or a negative errno when the dump failed midway.
                // Tolerate producers that omit it.
                let error =
                    read::<[u8; 4]>(payload, "NLMSG_DONE payload").map_or(0, i32::from_ne_bytes);
                if error < 0 {
                    return Err(DiagError::DumpAborted {
                        family,
                        errno: error.saturating_abs(),
                    });
                }
                return Ok(Progress::Done);
            }
            NLMSG_ERROR => {
                // Only `error` is required; the echoed request header may be capped.
                let error =
                    read::<[u8; 4]>(payload, "netlink error payload").map(i32::from_ne_bytes)?;
                if error == 0 {
                    // A plain ACK: nothing more will come for this request.
                    return Ok(Progress::Done);
                }
                return Err(DiagError::Netlink {
                    family,
                    errno: error.saturating_abs(),
                });
            }
            NLMSG_NOOP => {}
            NLMSG_OVERRUN => return Err(DiagError::Overrun),
            other => return Err(DiagError::UnexpectedType { ty: other }),
        }
    }
    Ok(Progress::More)
}

fn parse_socket(payload: &[u8]) -> Result<ExistingSocket, DiagError> {
    let msg: InetDiagMsg = read(payload, "inet_diag_msg")?;
    let id = &msg.id;
    let (local, remote) = match msg.idiag_family {
        AF_INET => (
            SocketAddr::V4(SocketAddrV4::new(
                v4(&id.idiag_src),
                u16::from_be(id.idiag_sport),
            )),
            SocketAddr::V4(SocketAddrV4::new(
                v4(&id.idiag_dst),
                u16::from_be(id.idiag_dport),
            )),
        ),
        AF_INET6 => (
            v6_addr(&id.idiag_src, id.idiag_sport, id.idiag_if),
            v6_addr(&id.idiag_dst, id.idiag_dport, id.idiag_if),
        ),
        other => return Err(DiagError::UnexpectedFamily { family: other }),
    };
    Ok(ExistingSocket {
        cookie: u64::from(id.idiag_cookie[0]) | (u64::from(id.idiag_cookie[1]) << 32),
        family: msg.idiag_family,
        local,
        remote,
        state: msg.idiag_state,
        inode: msg.idiag_inode,
        uid: msg.idiag_uid,
    })
}

/// The in-memory bytes of a `__be32[4]` address (already network order).
fn addr_bytes(words: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    out
}

fn v4(words: &[u32; 4]) -> Ipv4Addr {
    Ipv4Addr::from(words[0].to_ne_bytes())
}

fn v6_addr(words: &[u32; 4], port_be: u16, ifindex: u32) -> SocketAddr {
    let ip = Ipv6Addr::from(addr_bytes(words));
    // `idiag_if` is the bound device; it is the scope only for link-local addresses.
    let scope = if ip.is_unicast_link_local() {
        ifindex
    } else {
        0
    };
    SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(port_be), 0, scope))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message, padded to NLMSG_ALIGN.
    fn nlmsg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + payload.len()) as u32;
        let mut out = Vec::new();
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(nlmsg_align(out.len()), 0);
        out
    }

    fn be_words(bytes: [u8; 16]) -> [u32; 4] {
        let mut words = [0u32; 4];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(4)) {
            *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        words
    }

    /// An `inet_diag_msg` payload followed by one INET_DIAG_SHUTDOWN attribute, like the kernel.
    fn diag_payload(sock: &ExistingSocket) -> Vec<u8> {
        let (src, dst) = match (sock.local, sock.remote) {
            (SocketAddr::V4(l), SocketAddr::V4(r)) => {
                let mut s = [0u8; 16];
                let mut d = [0u8; 16];
                s[..4].copy_from_slice(&l.ip().octets());
                d[..4].copy_from_slice(&r.ip().octets());
                (s, d)
            }
            (SocketAddr::V6(l), SocketAddr::V6(r)) => (l.ip().octets(), r.ip().octets()),
            _ => panic!("mixed families"),
        };
        let mut out = Vec::new();
        out.extend_from_slice(&[sock.family, sock.state, 0, 0]);
        out.extend_from_slice(&sock.local.port().to_be_bytes());
        out.extend_from_slice(&sock.remote.port().to_be_bytes());
        for word in be_words(src).iter().chain(&be_words(dst)) {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        out.extend_from_slice(&0u32.to_ne_bytes()); // if
        out.extend_from_slice(&(sock.cookie as u32).to_ne_bytes());
        out.extend_from_slice(&((sock.cookie >> 32) as u32).to_ne_bytes());
        for v in [0u32, 0, 0, sock.uid, sock.inode] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(out.len(), size_of::<InetDiagMsg>());
        // struct nlattr { u16 len = 5, u16 type = INET_DIAG_SHUTDOWN (8) } + u8 + padding
        out.extend_from_slice(&5u16.to_ne_bytes());
        out.extend_from_slice(&8u16.to_ne_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out
    }

    fn sock4() -> ExistingSocket {
        ExistingSocket {
            cookie: 0x1234_5678_9abc_def0,
            family: AF_INET,
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "10.1.2.3:51000".parse().unwrap(),
            state: 1,
            inode: 4242,
            uid: 1000,
        }
    }

    fn sock6() -> ExistingSocket {
        ExistingSocket {
            cookie: 7,
            family: AF_INET6,
            local: "[::ffff:192.0.2.1]:443".parse().unwrap(),
            remote: "[2001:db8::1]:60000".parse().unwrap(),
            state: 8,
            inode: 99,
            uid: 0,
        }
    }

    fn done(seq: u32, error: i32) -> Vec<u8> {
        nlmsg(NLMSG_DONE, seq, &error.to_ne_bytes())
    }

    #[test]
    fn request_layout() {
        let req = encode_request(AF_INET6, state_mask(false), 7);
        assert_eq!(req.len(), 72);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(req[4..6].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(req[6..8].try_into().unwrap()), 0x301);
        assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 7);
        assert_eq!(&req[16..20], &[AF_INET6, 6, 0, 0]);
        let states = u32::from_ne_bytes(req[20..24].try_into().unwrap());
        assert_eq!(states & (1 << 10), 0);
        assert_ne!(states & (1 << 1), 0);
        assert_ne!(state_mask(true) & (1 << 10), 0);
        assert!(req[24..].iter().all(|&b| b == 0));
    }

    #[test]
    fn one_message() {
        let buf = nlmsg(SOCK_DIAG_BY_FAMILY, 5, &diag_payload(&sock4()));
        let mut out = Vec::new();
        assert_eq!(
            parse_datagram(&buf, AF_INET, 5, &mut out).unwrap(),
            Progress::More
        );
        assert_eq!(out, vec![sock4()]);
    }

    #[test]
    fn multipart_until_done() {
        let mut first = nlmsg(SOCK_DIAG_BY_FAMILY, 9, &diag_payload(&sock4()));
        first.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 9, &diag_payload(&sock6())));
        let mut second = nlmsg(SOCK_DIAG_BY_FAMILY, 9, &diag_payload(&sock6()));
        second.extend(done(9, 0));
        // Anything after DONE is ignored.
        second.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 9, &diag_payload(&sock4())));
        let mut out = Vec::new();
        assert_eq!(
            parse_datagram(&first, AF_INET, 9, &mut out).unwrap(),
            Progress::More
        );
        assert_eq!(
            parse_datagram(&second, AF_INET, 9, &mut out).unwrap(),
            Progress::Done
        );
        assert_eq!(out, vec![sock4(), sock6(), sock6()]);
        assert!(
            matches!(out[1].local, SocketAddr::V6(_)),
            "v4-mapped stays V6"
        );
    }

    #[test]
    fn stale_sequence_and_noop_are_skipped() {
        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &diag_payload(&sock4()));
        buf.extend(nlmsg(NLMSG_NOOP, 2, &[]));
        buf.extend(done(1, 0));
        buf.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 2, &diag_payload(&sock6())));
        buf.extend(done(2, 0));
        let mut out = Vec::new();
        assert_eq!(
            parse_datagram(&buf, AF_INET, 2, &mut out).unwrap(),
            Progress::Done
        );
        assert_eq!(out, vec![sock6()]);
    }

    #[test]
    fn netlink_error_names_errno() {
        let mut payload = (-libc::EACCES).to_ne_bytes().to_vec();
        payload.extend_from_slice(&encode_request(AF_INET, 0, 3)[..NLMSG_HDRLEN]);
        let buf = nlmsg(NLMSG_ERROR, 3, &payload);
        let err = parse_datagram(&buf, AF_INET, 3, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, DiagError::Netlink { errno, .. } if errno == libc::EACCES));
        let msg = err.to_string();
        assert!(msg.contains("Permission denied"), "{msg}");
        assert!(msg.contains("13"), "{msg}");
        // A zero error is an ACK and ends the request.
        let ack = nlmsg(NLMSG_ERROR, 3, &0i32.to_ne_bytes());
        assert_eq!(
            parse_datagram(&ack, AF_INET, 3, &mut Vec::new()).unwrap(),
            Progress::Done
        );
    }

    #[test]
    fn done_with_error_is_an_error() {
        let err = parse_datagram(&done(4, -libc::EINTR), AF_INET6, 4, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, DiagError::DumpAborted { errno, .. } if errno == libc::EINTR));
        let msg = err.to_string();
        assert!(msg.contains("Interrupted system call"), "{msg}");
        assert!(msg.contains("IPv6"), "{msg}");
        // A bare DONE without the int is accepted.
        let bare = nlmsg(NLMSG_DONE, 4, &[]);
        assert_eq!(
            parse_datagram(&bare, AF_INET, 4, &mut Vec::new()).unwrap(),
            Progress::Done
        );
    }

    #[test]
    fn truncated_header_is_an_error() {
        let buf = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &diag_payload(&sock4()));
        let err = parse_datagram(&buf[..10], AF_INET, 1, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                DiagError::Truncated {
                    needed: 16,
                    available: 10,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn lying_lengths_are_errors() {
        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &diag_payload(&sock4()));
        let real = buf.len();
        for lie in [0u32, 1, 15, real as u32 + 1, u32::MAX] {
            buf[0..4].copy_from_slice(&lie.to_ne_bytes());
            let err = parse_datagram(&buf, AF_INET, 1, &mut Vec::new()).unwrap_err();
            assert!(
                matches!(err, DiagError::BadLength { .. }),
                "len {lie}: {err}"
            );
        }
        // A length that fits but is too short for inet_diag_msg.
        buf[0..4].copy_from_slice(&(NLMSG_HDRLEN as u32 + 40).to_ne_bytes());
        let err = parse_datagram(&buf, AF_INET, 1, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                DiagError::Truncated {
                    what: "inet_diag_msg",
                    needed: 72,
                    available: 40
                }
            ),
            "{err}"
        );
        // NLMSG_ERROR too short to hold its errno.
        let short = nlmsg(NLMSG_ERROR, 1, &[0xff, 0xff]);
        assert!(matches!(
            parse_datagram(&short, AF_INET, 1, &mut Vec::new()),
            Err(DiagError::Truncated { .. })
        ));
    }

    #[test]
    fn every_prefix_parses_or_errors_without_panic() {
        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &diag_payload(&sock4()));
        buf.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 1, &diag_payload(&sock6())));
        buf.extend(nlmsg(NLMSG_ERROR, 1, &(-1i32).to_ne_bytes()));
        buf.extend(done(1, 0));
        for cut in 0..buf.len() {
            let _ = parse_datagram(&buf[..cut], AF_INET, 1, &mut Vec::new());
        }
        // Also flip every byte of the headers to extreme values.
        for at in 0..buf.len() {
            for value in [0u8, 0x7f, 0xff] {
                let mut mangled = buf.clone();
                mangled[at] = value;
                let _ = parse_datagram(&mangled, AF_INET, 1, &mut Vec::new());
            }
        }
    }

    #[test]
    fn unexpected_family_and_type() {
        let buf = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &diag_payload(&sock4()));
        let mut mangled = buf.clone();
        mangled[NLMSG_HDRLEN] = 1;
        assert!(matches!(
            parse_datagram(&mangled, AF_INET, 1, &mut Vec::new()),
            Err(DiagError::UnexpectedFamily { family: 1 })
        ));
        let other = nlmsg(77, 1, &[]);
        assert!(matches!(
            parse_datagram(&other, AF_INET, 1, &mut Vec::new()),
            Err(DiagError::UnexpectedType { ty: 77 })
        ));
        let overrun = nlmsg(NLMSG_OVERRUN, 1, &[]);
        assert!(matches!(
            parse_datagram(&overrun, AF_INET, 1, &mut Vec::new()),
            Err(DiagError::Overrun)
        ));
    }
}
