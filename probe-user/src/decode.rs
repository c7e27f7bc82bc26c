//! Kernel record → [`Event`]. One decoder per record kind, all against the single
//! `probe_common::FlowEvent` definition the eBPF side writes.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use probe_common::{flags, repeat_scope, EventKind, FlowEvent, FLOW_EVENT_SIZE};

use crate::event::{Detail, Event, Process, RepeatScope, Role, SockStats, TcpState};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(
        "ring-buffer record is {0} bytes, expected {FLOW_EVENT_SIZE}: the eBPF object and the \
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
    if bytes.len() != FLOW_EVENT_SIZE {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: the length was checked; FlowEvent is plain old data with no invalid bit patterns,
    // and read_unaligned copes with the ring's 8-byte alignment.
    let raw: FlowEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    decode_record(&raw)
}

/// Decodes a record already copied out of the ring.
pub fn decode_record(raw: &FlowEvent) -> Result<Event, DecodeError> {
    let kind = EventKind::from_u32(raw.kind).ok_or(DecodeError::Kind(raw.kind))?;
    let detail = match kind {
        EventKind::Connect => connect(raw),
        EventKind::ActiveEstablished => established(raw, Role::Client),
        EventKind::PassiveEstablished => established(raw, Role::Server),
        EventKind::SockOpsState => sockops_state(raw),
        EventKind::SockOpsRetrans => sockops_retrans(raw),
        EventKind::Rto => rto(raw),
        EventKind::Rtt => rtt(raw),
        EventKind::RstReceived => rst_received(raw),
        EventKind::RstSent => rst_sent(raw),
        EventKind::RetransmitSkb => retransmit(raw),
        EventKind::RetransmitSynack => Detail::RetransmitSynack,
        EventKind::DestroySock => destroy(raw),
        EventKind::StateChange => state_change(raw),
        EventKind::RepeatRst => repeat_rst(raw)?,
    };
    let (local, remote) = endpoints(raw);
    Ok(Event {
        ts_ns: raw.ts_ns,
        cookie: (raw.flags & flags::COOKIE != 0).then_some(raw.cookie),
        netns_cookie: (raw.flags & flags::NETNS != 0).then_some(raw.netns_cookie),
        local,
        remote,
        sk_err: (raw.flags & flags::SK_ERR != 0).then_some(raw.args[1] as i32),
        cgroup_id: (raw.flags & flags::CGROUP != 0)
            .then(|| u64::from(raw.args[2]) | (u64::from(raw.args[3]) << 32)),
        process: (raw.flags & flags::PID != 0).then(|| Process {
            pid: raw.pid,
            comm: comm(&raw.comm),
        }),
        detail,
    })
}

fn stats(raw: &FlowEvent) -> SockStats {
    SockStats {
        srtt_us: raw.srtt_us,
        total_retrans: raw.total_retrans,
        segs_in: raw.segs_in,
        segs_out: raw.segs_out,
        data_segs_in: raw.data_segs_in,
        data_segs_out: raw.data_segs_out,
        bytes_received: raw.bytes_received,
        bytes_acked: raw.bytes_acked,
    }
}

fn connect(raw: &FlowEvent) -> Detail {
    Detail::Connect { stats: stats(raw) }
}

fn established(raw: &FlowEvent, role: Role) -> Detail {
    Detail::Established {
        role,
        stats: stats(raw),
    }
}

fn sockops_state(raw: &FlowEvent) -> Detail {
    Detail::SockOpsState {
        from: TcpState(raw.old_state),
        to: TcpState(raw.new_state),
        stats: stats(raw),
    }
}

fn sockops_retrans(raw: &FlowEvent) -> Detail {
    // RETRANS_CB args: seq of the first segment, number of segments, tcp_transmit_skb result.
    Detail::SockOpsRetrans {
        seq: raw.args[0],
        segs: raw.args[1],
        result: raw.args[2] as i32,
        stats: stats(raw),
    }
}

fn rto(raw: &FlowEvent) -> Detail {
    // RTO_CB args: icsk_retransmits, icsk_rto (jiffies), TCP_RTO_MAX.
    Detail::Rto {
        retransmits: raw.args[0],
        rto_jiffies: raw.args[1],
        stats: stats(raw),
    }
}

fn rtt(raw: &FlowEvent) -> Detail {
    // RTT_CB args: the measured RTT sample in µs, then srtt (µs << 3).
    Detail::Rtt {
        sample_us: raw.args[0],
        stats: stats(raw),
    }
}

fn rst_received(raw: &FlowEvent) -> Detail {
    Detail::RstReceived {
        state: TcpState(raw.old_state),
    }
}

fn rst_sent(raw: &FlowEvent) -> Detail {
    Detail::RstSent {
        state: TcpState(raw.old_state),
        reason: (raw.flags & flags::REASON != 0).then_some(raw.reason),
        no_socket: raw.flags & flags::NO_SOCKET != 0,
    }
}

fn retransmit(raw: &FlowEvent) -> Detail {
    Detail::Retransmit {
        state: TcpState(raw.old_state),
        err: raw.args[0] as i32,
    }
}

fn destroy(raw: &FlowEvent) -> Detail {
    Detail::Destroy {
        state: TcpState(raw.old_state),
    }
}

fn state_change(raw: &FlowEvent) -> Detail {
    Detail::StateChange {
        from: TcpState(raw.old_state),
        to: TcpState(raw.new_state),
    }
}

fn repeat_rst(raw: &FlowEvent) -> Result<Detail, DecodeError> {
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

fn comm(bytes: &[u8; 16]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn endpoints(raw: &FlowEvent) -> (SocketAddr, SocketAddr) {
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
    use super::*;

    fn record(kind: EventKind) -> FlowEvent {
        FlowEvent {
            ts_ns: 42,
            cookie: 7,
            netns_cookie: 9,
            kind: kind as u32,
            flags: flags::COOKIE | flags::NETNS,
            family: 2,
            sport: 40000,
            dport: 80,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..FlowEvent::default()
        }
    }

    fn bytes_of(raw: &FlowEvent) -> Vec<u8> {
        // SAFETY: FlowEvent is repr(C) plain data without padding.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(raw).cast::<u8>(), FLOW_EVENT_SIZE) }
            .to_vec()
    }

    #[test]
    fn decodes_every_kind() {
        for kind in EventKind::ALL {
            let ev = decode(&bytes_of(&record(kind))).unwrap();
            assert_eq!(ev.cookie, Some(7));
            assert_eq!(ev.netns_cookie, Some(9));
            assert_eq!(ev.local, "127.0.0.1:40000".parse().unwrap());
            assert_eq!(ev.remote, "10.1.2.3:80".parse().unwrap());
            assert_eq!(ev.ts_ns, 42);
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
    fn owner_process_is_decoded() {
        let mut raw = record(EventKind::StateChange);
        raw.flags |= flags::PID;
        raw.pid = 1234;
        raw.comm[..4].copy_from_slice(b"curl");
        raw.old_state = 7;
        raw.new_state = 2;
        let ev = decode_record(&raw).unwrap();
        let Detail::StateChange { from, to } = ev.detail else {
            panic!("wrong variant");
        };
        assert_eq!((from, to), (TcpState::CLOSE, TcpState::SYN_SENT));
        assert_eq!(
            ev.process,
            Some(Process {
                pid: 1234,
                comm: "curl".into()
            })
        );
    }

    #[test]
    fn rejects_wrong_size_and_kind() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Size(10)));
        let mut raw = record(EventKind::Connect);
        raw.kind = 99;
        assert_eq!(decode(&bytes_of(&raw)), Err(DecodeError::Kind(99)));
    }
}
