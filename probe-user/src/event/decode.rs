//! Kernel record → [`Event`]. One decoder for the single `probe_common::FlowRecord`
//! definition the eBPF side writes (ring records and the open-flow iterator's output alike).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use probe_common::{
    flags, repeat_scope, role, state_flags, EventKind, FlowRecord, FLOW_RECORD_SIZE,
};

use crate::event::{Comm, Detail, Event, FlowSnapshot, Process, RepeatScope, Role, TcpState};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(
        "ring-buffer record is {0} bytes, expected {FLOW_RECORD_SIZE}: the eBPF object and the \
         daemon were built from different sources; rebuild with `cargo xtask build`"
    )]
    Size(usize),
    #[error("unknown event kind {0} in ring-buffer record (eBPF object newer than the daemon?)")]
    Kind(u32),
    #[error(
        "unknown repeat-RST scope {0} in ring-buffer record (eBPF object newer than the daemon?)"
    )]
    RepeatScope(u32),
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() != FLOW_RECORD_SIZE {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: the length was checked; FlowRecord is plain old data with no invalid bit
    // patterns, and read_unaligned copes with the ring's 8-byte alignment.
    let raw: FlowRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    decode_record(&raw)
}

/// Decodes a record already copied out of the ring.
pub fn decode_record(raw: &FlowRecord) -> Result<Event, DecodeError> {
    let kind = EventKind::from_u32(raw.kind).ok_or(DecodeError::Kind(raw.kind))?;
    let state = TcpState(raw.old_state);
    let detail = match kind {
        EventKind::FlowEnd => Detail::FlowEnd { from: state },
        EventKind::Connect => Detail::Connect,
        EventKind::ActiveEstablished => Detail::Established { role: Role::Client },
        EventKind::PassiveEstablished => Detail::Established { role: Role::Server },
        EventKind::StateChange => Detail::StateChange {
            from: state,
            to: TcpState(raw.new_state),
        },
        EventKind::RstReceived => Detail::RstReceived { state },
        EventKind::RstSent => Detail::RstSent {
            state,
            reason: (raw.flags & flags::REASON != 0).then_some(raw.reason),
            no_socket: raw.flags & flags::NO_SOCKET != 0,
        },
        EventKind::Retransmit => Detail::Retransmit {
            state,
            err: (raw.flags & flags::ERR != 0).then_some(raw.args[0] as i32),
        },
        EventKind::RetransmitSynack => Detail::RetransmitSynack,
        EventKind::Rto => Detail::Rto { state },
        EventKind::RepeatRst => repeat_rst(raw)?,
        EventKind::Open => Detail::Open { state },
    };
    let (local, remote) = endpoints(raw);
    // A listener's state only holds the owner its accepted sockets inherit: not a flow.
    let flow =
        (raw.flags & flags::FLOW != 0 && raw.flow.role != role::LISTENER).then_some(&raw.flow);
    let owner = (raw.flags & flags::FLOW != 0 && raw.flow.flags & state_flags::OWNER != 0)
        .then_some(&raw.flow);
    Ok(Event {
        ts_ns: raw.ts_ns,
        cookie: (raw.flags & flags::COOKIE != 0).then_some(raw.cookie),
        netns_cookie: (raw.flags & flags::NETNS != 0).then_some(raw.netns_cookie),
        local,
        remote,
        sk_err: (raw.flags & flags::SK_ERR != 0).then_some(raw.sk_err),
        cgroup_id: (raw.flags & flags::FLOW != 0 && raw.flow.cgroup_id != 0)
            .then_some(raw.flow.cgroup_id),
        process: owner.map(|f| Process {
            pid: f.pid,
            comm: Comm::from_kernel(&f.comm),
        }),
        flow: flow.map(snapshot),
        stats: (raw.flags & flags::STATS != 0).then_some(raw.stats),
        detail,
    })
}

fn snapshot(f: &probe_common::FlowState) -> FlowSnapshot {
    FlowSnapshot {
        start_ns: f.start_ns,
        established_ns: (f.established_ns != 0).then_some(f.established_ns),
        role: match f.role {
            role::CLIENT => Some(Role::Client),
            role::SERVER => Some(Role::Server),
            _ => None,
        },
        counts: f.counts,
        last_rst_reason: (f.counts.rst_sent > 0 && f.last_rst_reason != 0)
            .then_some(f.last_rst_reason),
        late: f.flags & state_flags::LATE != 0,
    }
}

fn repeat_rst(raw: &FlowRecord) -> Result<Detail, DecodeError> {
    let scope = match raw.args[0] {
        repeat_scope::SOCKET => RepeatScope::Socket,
        repeat_scope::PEER => RepeatScope::Peer,
        repeat_scope::LOCAL_PORT => RepeatScope::LocalPort,
        other => return Err(DecodeError::RepeatScope(other)),
    };
    Ok(Detail::RepeatRst {
        scope,
        count: raw.args[1],
    })
}

fn endpoints(raw: &FlowRecord) -> (SocketAddr, SocketAddr) {
    let ip = |bytes: &[u8; 16]| -> IpAddr {
        if raw.flags & flags::IPV6 != 0 {
            let v6 = Ipv6Addr::from(*bytes);
            // Kernels without a `family` field report IPv4 sockets as v4-mapped addresses.
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        } else {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        }
    };
    (
        SocketAddr::new(ip(&raw.saddr), raw.sport),
        SocketAddr::new(ip(&raw.daddr), raw.dport),
    )
}

#[cfg(test)]
mod tests {
    use probe_common::kernel::net;

    use super::*;

    fn record(kind: EventKind) -> FlowRecord {
        FlowRecord {
            ts_ns: 42,
            cookie: 7,
            netns_cookie: 9,
            kind: kind as u32,
            flags: flags::COOKIE | flags::NETNS,
            family: net::AF_INET,
            sport: 40000,
            dport: 80,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..FlowRecord::default()
        }
    }

    fn bytes_of(raw: &FlowRecord) -> Vec<u8> {
        // SAFETY: FlowRecord is repr(C) plain data without padding.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(raw).cast::<u8>(), FLOW_RECORD_SIZE)
        }
        .to_vec()
    }

    #[test]
    fn decodes_every_kind() {
        for kind in EventKind::ALL {
            let ev = decode(&bytes_of(&record(kind))).unwrap();
            assert_eq!(ev.detail.kind(), kind);
            assert_eq!(ev.cookie, Some(7));
            assert_eq!(ev.netns_cookie, Some(9));
            assert_eq!(ev.local, "127.0.0.1:40000".parse().unwrap());
            assert_eq!(ev.remote, "10.1.2.3:80".parse().unwrap());
            assert_eq!(ev.ts_ns, 42);
            assert_eq!(ev.flow, None);
        }
    }

    #[test]
    fn rst_sent_without_socket_and_reason() {
        let mut raw = record(EventKind::RstSent);
        raw.flags = flags::NO_SOCKET | flags::REASON;
        raw.reason = 1;
        let ev = decode_record(&raw).unwrap();
        assert_eq!(ev.cookie, None);
        assert_eq!(
            ev.detail,
            Detail::RstSent {
                state: TcpState(0),
                reason: Some(1),
                no_socket: true
            }
        );
    }

    #[test]
    fn v4_mapped_addresses_are_unmapped() {
        let mut raw = record(EventKind::RstReceived);
        raw.flags |= flags::IPV6;
        raw.saddr = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets();
        raw.daddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let ev = decode_record(&raw).unwrap();
        assert_eq!(ev.local.ip(), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(ev.remote.ip(), "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn flow_state_gives_owner_role_and_counts() {
        let mut raw = record(EventKind::FlowEnd);
        raw.flags |= flags::FLOW | flags::SK_ERR | flags::STATS;
        raw.old_state = 2;
        raw.new_state = 7;
        raw.sk_err = 111;
        raw.stats.srtt_us = 30;
        raw.flow.start_ns = 10;
        raw.flow.role = role::CLIENT;
        raw.flow.flags = state_flags::OWNER;
        raw.flow.pid = 1234;
        raw.flow.cgroup_id = 77;
        raw.flow.comm[..4].copy_from_slice(b"curl");
        raw.flow.counts.rst_received = 1;
        let ev = decode_record(&raw).unwrap();
        assert_eq!(
            ev.detail,
            Detail::FlowEnd {
                from: TcpState::SYN_SENT
            }
        );
        assert_eq!(ev.sk_err, Some(111));
        assert_eq!(ev.cgroup_id, Some(77));
        assert_eq!(
            ev.process,
            Some(Process {
                pid: 1234,
                comm: "curl".into()
            })
        );
        let flow = ev.flow.unwrap();
        assert_eq!(flow.role, Some(Role::Client));
        assert_eq!(flow.established_ns, None);
        assert_eq!(flow.counts.rst_received, 1);
        assert_eq!(ev.stats.map(|s| s.srtt_us), Some(30));
    }

    #[test]
    fn a_comm_cannot_carry_terminal_escapes() {
        let mut raw = record(EventKind::FlowEnd);
        raw.flags |= flags::FLOW;
        raw.flow.flags = state_flags::OWNER;
        let name = b"\x1b[2J\xe2\x80\xaeevil\n\x9b";
        raw.flow.comm[..name.len()].copy_from_slice(name);
        let ev = decode_record(&raw).unwrap();
        let comm = ev.process.unwrap().comm;
        assert_eq!(comm.as_str(), "\\x1b[2J\\u{202e}evil\\x0a\\x9b");
        assert_eq!(comm.to_string(), comm.as_str());
        let mut raw = [0u8; 16];
        raw[..5].copy_from_slice(&[b'n', 0xc3, 0xa9, b'\n', b'x']);
        assert_eq!(Comm::from_kernel(&raw).as_str(), "né\\x0ax");
        // No NUL in all 16 bytes: the kernel's comm is 15 bytes at most.
        assert_eq!(Comm::from_kernel(&[b'a'; 16]).as_str().len(), 15);
    }

    #[test]
    fn no_owner_without_process_context() {
        let mut raw = record(EventKind::RstSent);
        raw.flags |= flags::FLOW;
        raw.flow.pid = 99;
        let ev = decode_record(&raw).unwrap();
        assert_eq!(ev.process, None);
    }

    #[test]
    fn rejects_wrong_size_and_kind() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Size(10)));
        let mut raw = record(EventKind::Connect);
        raw.kind = 99;
        assert_eq!(decode(&bytes_of(&raw)), Err(DecodeError::Kind(99)));
    }
}
