//! Reads from kernel `struct sock` / `struct tcp_sock` / `struct sk_buff` through offsets taken
//! from BTF at load time (see `probe_common::KernelOffsets`), and the scope filter built on them.
//! Addresses are plain numbers here (`bpf_probe_read_kernel` sources), never dereferenced.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use probe_common::{
    flags, misc, net, tcp_state, FlowRecord, KernelOffsets, SockStats, TCP_WINDOW_MAX,
};

use crate::{
    counters::count_misc,
    emit::copy_words,
    maps::{OFFSETS, SCOPE, TCP_WINDOW},
};

const ABSENT: u32 = KernelOffsets::ABSENT;

#[inline(always)]
fn read_at<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == ABSENT {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// The socket cookie as the kernel stored it: 0 when it was never generated. (BTF programs ask
/// `bpf_get_socket_cookie`, which generates it; this is for the request sockets and kernels
/// where they cannot.)
#[inline(always)]
pub fn stored_cookie(sk: u64) -> u64 {
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

/// A socket's (or packet's) two ends, read once per hit. Addresses are network-order bytes
/// held in 8-byte words (IPv4 in the first 4 bytes), so they copy as two words.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct Addrs {
    pub saddr: [u64; 2],
    pub daddr: [u64; 2],
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
}

impl Addrs {
    /// Into a record's address fields.
    #[inline(always)]
    pub fn write(&self, rec: &mut FlowRecord) {
        rec.family = self.family;
        rec.sport = self.sport;
        rec.dport = self.dport;
        // SAFETY: the record's address fields sit at 8-aligned offsets of an 8-aligned record.
        unsafe {
            copy_words(rec.saddr.as_mut_ptr().cast::<[u64; 2]>(), &self.saddr);
            copy_words(rec.daddr.as_mut_ptr().cast::<[u64; 2]>(), &self.daddr);
        }
        if self.family == net::AF_INET6 {
            rec.flags |= flags::IPV6;
        }
    }

    /// The remote address's bytes (for map keys).
    #[inline(always)]
    pub fn remote_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.daddr[0].to_ne_bytes());
        out[8..].copy_from_slice(&self.daddr[1].to_ne_bytes());
        out
    }
}

/// An IPv4 address (network-order bytes) in the first 4 bytes of an address word pair.
#[inline(always)]
fn v4_words(addr: u32) -> [u64; 2] {
    [u64::from(addr), 0]
}

/// Family, ports and addresses from the socket (any `sock_common`: full, request or
/// time-wait). IPv4 sockets report IPv4, IPv6 sockets (v4-mapped included) IPv6. The IPv4
/// tuple is one read where the kernel has its usual layout.
#[inline(always)]
pub fn addrs(sk: u64) -> Addrs {
    let o = OFFSETS.load();
    let mut a = Addrs::default();
    match read_at::<[u64; 3]>(sk, o.sk_tuple) {
        Some(t) => {
            // daddr, rcv_saddr | hash, dport, num | family
            a.daddr = v4_words(t[0] as u32);
            a.saddr = v4_words((t[0] >> 32) as u32);
            a.dport = u16::from_be((t[1] >> 32) as u16);
            a.sport = (t[1] >> 48) as u16;
            a.family = t[2] as u16;
        }
        None => {
            a.family = read_at::<u16>(sk, o.sk_family).unwrap_or(0);
            a.sport = read_at::<u16>(sk, o.sk_num).unwrap_or(0);
            a.dport = u16::from_be(read_at::<u16>(sk, o.sk_dport).unwrap_or(0));
            a.saddr = v4_words(read_at::<u32>(sk, o.sk_rcv_saddr).unwrap_or(0));
            a.daddr = v4_words(read_at::<u32>(sk, o.sk_daddr).unwrap_or(0));
        }
    }
    if a.family == net::AF_INET6 {
        a.saddr = read_at::<[u64; 2]>(sk, o.sk_v6_rcv_saddr).unwrap_or([0; 2]);
        a.daddr = read_at::<[u64; 2]>(sk, o.sk_v6_daddr).unwrap_or([0; 2]);
    }
    a
}

/// Addresses of an RST sent without a socket, from the segment it answers (`skb`): the RST
/// goes from that segment's destination to its source.
#[inline(always)]
pub fn packet_addrs(skb: u64) -> Addrs {
    let o = OFFSETS.load();
    let mut a = Addrs::default();
    let Some(head) = read_at::<u64>(skb, o.skb_head) else {
        return a;
    };
    let (Some(nh), Some(th)) = (
        read_at::<u16>(skb, o.skb_network_header),
        read_at::<u16>(skb, o.skb_transport_header),
    ) else {
        return a;
    };
    // TCP header: source port, destination port (network order).
    if let Some(ports) = read_at::<u32>(head, u32::from(th)) {
        a.dport = u16::from_be(ports as u16);
        a.sport = u16::from_be((ports >> 16) as u16);
    }
    let Some(version) = read_at::<u8>(head, u32::from(nh)) else {
        return a;
    };
    if version >> 4 == 6 {
        // ipv6hdr: saddr at 8, daddr at 24.
        a.family = net::AF_INET6;
        a.daddr = read_at::<[u64; 2]>(head, u32::from(nh) + 8).unwrap_or([0; 2]);
        a.saddr = read_at::<[u64; 2]>(head, u32::from(nh) + 24).unwrap_or([0; 2]);
    } else {
        // iphdr: saddr at 12, daddr at 16.
        a.family = net::AF_INET;
        let pair = read_at::<u64>(head, u32::from(nh) + 12).unwrap_or(0);
        a.daddr = v4_words(pair as u32);
        a.saddr = v4_words((pair >> 32) as u32);
    }
    a
}

/// The local port (host order); 0 until bound, and again once the socket closes.
#[inline(always)]
pub fn local_port(sk: u64) -> u16 {
    read_at::<u16>(sk, OFFSETS.load().sk_num).unwrap_or(0)
}

/// The socket's own counters (`struct tcp_sock`) and its RTO count where the kernel keeps one
/// (`None` before 6.7): one block read where they fit a window, else field by field.
#[inline(always)]
pub fn tcp_stats(sk: u64) -> (SockStats, Option<u32>) {
    let o = OFFSETS.load();
    let window = TCP_WINDOW
        .get_ptr_mut(0)
        .filter(|_| o.tp_window_len > 0 && o.tp_window_len <= TCP_WINDOW_MAX && sk != 0);
    let block = window.and_then(|buf| {
        // SAFETY: a per-CPU buffer of TCP_WINDOW_MAX bytes; the length is bounded above.
        let rc = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                buf.cast(),
                o.tp_window_len,
                (sk + u64::from(o.tp_window)) as *const core::ffi::c_void,
            )
        };
        // SAFETY: filled by the read above; lives in the map for the program's run.
        (rc == 0).then(|| unsafe { &*buf })
    });
    let u32_at = |off: u32| -> u32 {
        match block {
            Some(b) => in_window(b, o.tp_window, off).map_or(0, |p| {
                // SAFETY: `p` has 4 readable bytes inside the buffer (checked by in_window).
                unsafe { core::ptr::read_unaligned(p.cast::<u32>()) }
            }),
            None => read_at::<u32>(sk, off).unwrap_or(0),
        }
    };
    let u64_at = |off: u32| -> u64 {
        match block {
            Some(b) => in_window(b, o.tp_window, off).map_or(0, |p| {
                // SAFETY: as above, 8 bytes.
                unsafe { core::ptr::read_unaligned(p.cast::<u64>()) }
            }),
            None => read_at::<u64>(sk, off).unwrap_or(0),
        }
    };
    let rtos = (o.tp_total_rto != ABSENT).then(|| u32_at(o.tp_total_rto) & 0xffff);
    let stats = SockStats {
        srtt_us: u32_at(o.tp_srtt_us) >> 3,
        // `~0U` until the first RTT sample.
        min_rtt_us: match u32_at(o.tp_min_rtt) {
            u32::MAX => 0,
            v => v,
        },
        total_retrans: u32_at(o.tp_total_retrans),
        segs_in: u32_at(o.tp_segs_in),
        segs_out: u32_at(o.tp_segs_out),
        data_segs_in: u32_at(o.tp_data_segs_in),
        data_segs_out: u32_at(o.tp_data_segs_out),
        _pad: 0,
        bytes_received: u64_at(o.tp_bytes_received),
        bytes_acked: u64_at(o.tp_bytes_acked),
    };
    (stats, rtos)
}

/// Where field `off` of the socket lies in the block read from `base`, with 8 bytes to read.
#[inline(always)]
fn in_window(block: &[u8; TCP_WINDOW_MAX as usize], base: u32, off: u32) -> Option<*const u8> {
    if off == ABSENT || off < base {
        return None;
    }
    let at = (off - base) as usize;
    // 8 bytes past `at` must stay in the buffer (the verifier checks the same).
    (at <= TCP_WINDOW_MAX as usize - 8).then(|| block[at..].as_ptr())
}

/// The socket's cgroup v2 id (full sockets only).
#[inline(always)]
pub fn sk_cgroup_id(sk: u64) -> Option<u64> {
    let offsets = OFFSETS.load();
    let cgroup = full_sock_cgroup(sk)?;
    let kn = read_at::<u64>(cgroup, offsets.cgroup_kn)?;
    read_at::<u64>(kn, offsets.kn_id)
}

/// `sock_cgroup_data`'s cgroup pointer. Before 5.15 the field is a tagged value that holds a
/// pointer only while bit 0 is clear (else it is a classid/prioidx pair).
#[inline(always)]
fn full_sock_cgroup(sk: u64) -> Option<u64> {
    // Time-wait and request sockets are only `sock_common`: they have no cgroup data.
    let state = sk_state(sk)?;
    if state == tcp_state::TIME_WAIT || state == tcp_state::NEW_SYN_RECV {
        return None;
    }
    let cgroup = read_at::<u64>(sk, OFFSETS.load().sk_cgroup)?;
    (cgroup & 1 == 0 && cgroup != 0).then_some(cgroup)
}

/// Whether the socket's cgroup is the filter cgroup or below it.
#[inline(always)]
fn sk_in_cgroup(sk: u64, want_id: u64, want_level: u32) -> Option<bool> {
    let offsets = OFFSETS.load();
    let cgroup = full_sock_cgroup(sk)?;
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
