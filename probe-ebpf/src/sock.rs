//! Reads from kernel `struct sock` / `struct sk_buff` through offsets taken from BTF at load
//! time (see `probe_common::KernelOffsets`), and the scope filter built on them.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use probe_common::{flags, misc, FlowEvent, KernelOffsets};

use crate::{
    emit::count_misc,
    maps::{OFFSETS, SCOPE},
};

const ABSENT: u32 = KernelOffsets::ABSENT;
const AF_INET6: u16 = 10;
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;

#[inline(always)]
fn read_at<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == ABSENT {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// The socket cookie, or 0 when it was never generated or cannot be read.
#[inline(always)]
pub fn sk_cookie(sk: u64) -> u64 {
    read_at::<u64>(sk, OFFSETS.load().sk_cookie).unwrap_or(0)
}

/// The socket's pending error (errno), read when it moves to CLOSE.
#[inline(always)]
pub fn sk_err(sk: u64) -> Option<i32> {
    read_at::<i32>(sk, OFFSETS.load().sk_err)
}

/// `sk_protocol` (`IPPROTO_*`).
#[inline(always)]
pub fn sk_protocol(sk: u64) -> Option<u16> {
    read_at::<u16>(sk, OFFSETS.load().sk_protocol)
}

#[inline(always)]
pub fn sk_state(sk: u64) -> Option<u8> {
    read_at::<u8>(sk, OFFSETS.load().sk_state)
}

#[inline(always)]
fn net_cookie(net: u64) -> Option<u64> {
    read_at::<u64>(net, OFFSETS.load().net_cookie)
}

/// Network-namespace cookie of a socket (same value as `SO_NETNS_COOKIE`).
#[inline(always)]
pub fn sk_netns(sk: u64) -> Option<u64> {
    net_cookie(read_at::<u64>(sk, OFFSETS.load().sk_net)?)
}

/// Network-namespace cookie of a packet's device, for RSTs sent without a socket.
#[inline(always)]
pub fn skb_netns(skb: u64) -> Option<u64> {
    let offsets = OFFSETS.load();
    let dev = read_at::<u64>(skb, offsets.skb_dev)?;
    net_cookie(read_at::<u64>(dev, offsets.dev_net)?)
}

/// Family, ports and addresses from the socket (raw tracepoints have no record to take them
/// from). IPv4 sockets report IPv4, IPv6 sockets (v4-mapped included) IPv6.
#[inline(always)]
pub fn fill_addrs(sk: u64, ev: &mut FlowEvent) {
    let o = OFFSETS.load();
    ev.family = read_at::<u16>(sk, o.sk_family).unwrap_or(0);
    ev.sport = read_at::<u16>(sk, o.sk_num).unwrap_or(0);
    ev.dport = u16::from_be(read_at::<u16>(sk, o.sk_dport).unwrap_or(0));
    if ev.family == AF_INET6 {
        ev.flags |= flags::IPV6;
        ev.saddr = read_at::<[u8; 16]>(sk, o.sk_v6_rcv_saddr).unwrap_or([0; 16]);
        ev.daddr = read_at::<[u8; 16]>(sk, o.sk_v6_daddr).unwrap_or([0; 16]);
    } else {
        ev.saddr[..4].copy_from_slice(&read_at::<[u8; 4]>(sk, o.sk_rcv_saddr).unwrap_or([0; 4]));
        ev.daddr[..4].copy_from_slice(&read_at::<[u8; 4]>(sk, o.sk_daddr).unwrap_or([0; 4]));
    }
}

/// The socket's cgroup v2 id (full sockets only).
#[inline(always)]
pub fn sk_cgroup_id(sk: u64) -> Option<u64> {
    let offsets = OFFSETS.load();
    let state = sk_state(sk)?;
    if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
        return None;
    }
    let cgroup = read_at::<u64>(sk, offsets.sk_cgroup)?;
    let kn = read_at::<u64>(cgroup, offsets.cgroup_kn)?;
    read_at::<u64>(kn, offsets.kn_id)
}

/// Whether the socket's cgroup is the filter cgroup or below it.
#[inline(always)]
fn sk_in_cgroup(sk: u64, want_id: u64, want_level: u32) -> Option<bool> {
    let offsets = OFFSETS.load();
    // Time-wait and request sockets are only `sock_common`: they have no cgroup data.
    let state = sk_state(sk)?;
    if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
        return None;
    }
    let cgroup = read_at::<u64>(sk, offsets.sk_cgroup)?;
    let at_level = if offsets.cgroup_ancestors == ABSENT {
        cgroup
    } else {
        let level = read_at::<i32>(cgroup, offsets.cgroup_level)?;
        if level < 0 || (level as u32) < want_level {
            return Some(false);
        }
        let slot = offsets
            .cgroup_ancestors
            .checked_add(want_level.checked_mul(8)?)?;
        read_at::<u64>(cgroup, slot)?
    };
    let kn = read_at::<u64>(at_level, offsets.cgroup_kn)?;
    Some(read_at::<u64>(kn, offsets.kn_id)? == want_id)
}

/// Outcome of the scope check for one event.
pub enum Scope {
    /// Report it; carries the netns cookie when known.
    In(Option<u64>),
    Out,
}

/// Applies the load-time scope filter to an event about socket `sk` (0 when there is none)
/// and packet `skb` (0 when there is none). Events whose scope cannot be read while a filter is
/// set are counted in `SCOPE_UNKNOWN` and left out.
#[inline(always)]
pub fn check(sk: u64, skb: u64) -> Scope {
    let filter = SCOPE.load();
    let netns = if sk != 0 {
        sk_netns(sk)
    } else {
        skb_netns(skb)
    };
    if filter.netns_cookie != 0 {
        match netns {
            Some(n) if n == filter.netns_cookie => {}
            Some(_) => return Scope::Out,
            None => {
                count_misc(misc::SCOPE_UNKNOWN);
                return Scope::Out;
            }
        }
    }
    if filter.cgroup_id != 0 {
        let inside = if sk == 0 {
            None
        } else {
            sk_in_cgroup(sk, filter.cgroup_id, filter.cgroup_level)
        };
        match inside {
            Some(true) => {}
            Some(false) => return Scope::Out,
            None => {
                count_misc(misc::SCOPE_UNKNOWN);
                return Scope::Out;
            }
        }
    }
    Scope::In(netns)
}
