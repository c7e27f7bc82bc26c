//! Reads from kernel `struct sock` / `struct tcp_sock` / `struct sk_buff` through offsets taken
//! from BTF at load time (see `probe_common::KernelOffsets`), and the scope filter built on them.
//! Addresses are plain numbers here (`bpf_probe_read_kernel` sources), never dereferenced.
use aya_ebpf::helpers::generated::bpf_probe_read_kernel;
use probe_common::{
    flags,
    kernel::{net, sock_cgroup, tcp_state},
    misc, FlowRecord, KernelOffsets, SockStats, TCP_WINDOW_MAX,
};

use crate::{
    counters::count_misc,
    emit::copy_words,
    maps::{OFFSETS, SCOPE, TCP_WINDOW},
};

const ABSENT: u32 = KernelOffsets::ABSENT;

/// `T` at `base + offset`, or zero: where the offset is ABSENT on this kernel (a load-time
/// constant, so the verifier drops the branch), or where the read fails (the helper zeroes its
/// destination then). No branch on the helper's result: each one would double the paths the
/// verifier walks, and older kernels' verifiers give up on a program with dozens of reads.
#[inline(always)]
fn read0<T: Default>(base: u64, offset: u32) -> T {
    let mut v = T::default();
    if offset != ABSENT {
        // SAFETY: the helper reads kernel memory fault-safely into `v`, which it zeroes on
        // failure; `v` is `size_of::<T>()` writable bytes.
        unsafe {
            bpf_probe_read_kernel(
                core::ptr::from_mut(&mut v).cast(),
                core::mem::size_of::<T>() as u32,
                (base + u64::from(offset)) as *const core::ffi::c_void,
            )
        };
    }
    v
}

/// The socket cookie as the kernel stored it: 0 when it was never generated. (BTF programs ask
/// `bpf_get_socket_cookie`, which generates it; this is for the request sockets and kernels
/// where they cannot.)
#[inline(always)]
pub fn stored_cookie(sk: u64) -> u64 {
    read0::<u64>(sk, OFFSETS.load().sk_cookie)
}

/// The socket's pending error (errno), read when it moves to CLOSE.
#[inline(always)]
pub fn sk_err(sk: u64) -> i32 {
    read0::<i32>(sk, OFFSETS.load().sk_err)
}

/// Whether this kernel lets us read `sk_err` (else failures cannot be typed by it).
#[inline(always)]
pub fn has_sk_err() -> bool {
    OFFSETS.load().sk_err != ABSENT
}

/// `sk_protocol` (`IPPROTO_*`; 0 when unreadable).
#[inline(always)]
pub fn sk_protocol(sk: u64) -> u16 {
    read0::<u16>(sk, OFFSETS.load().sk_protocol)
}

/// `skc_state` (0 when unreadable).
#[inline(always)]
pub fn sk_state(sk: u64) -> u8 {
    read0::<u8>(sk, OFFSETS.load().sk_state)
}

/// Whether a socket in `state` is a full socket: time-wait and request sockets are only
/// `sock_common` (no flow state, no cgroup data).
#[inline(always)]
pub fn is_full(state: u8) -> bool {
    state != tcp_state::TIME_WAIT && state != tcp_state::NEW_SYN_RECV
}

/// The cookie of a `struct net` (0: unknown). Integers, not `Option`s, throughout this module:
/// LLVM spills a `None`'s undefined payload, which older verifiers reject.
#[inline(always)]
fn net_cookie(net: u64) -> u64 {
    if net == 0 {
        return 0;
    }
    read0::<u64>(net, OFFSETS.load().net_cookie)
}

/// Network-namespace cookie of a socket (same value as `SO_NETNS_COOKIE`; 0: unknown).
#[inline(always)]
pub fn sk_netns(sk: u64) -> u64 {
    net_cookie(read0::<u64>(sk, OFFSETS.load().sk_net))
}

/// Network-namespace cookie of a packet's device, for RSTs sent without a socket (0: unknown).
#[inline(always)]
pub fn skb_netns(skb: u64) -> u64 {
    // The tracepoint's packet pointer may be NULL: the verifier wants the check before any
    // arithmetic on it.
    if skb == 0 {
        return 0;
    }
    let offsets = OFFSETS.load();
    let dev = read0::<u64>(skb, offsets.skb_dev);
    if dev == 0 {
        return 0;
    }
    net_cookie(read0::<u64>(dev, offsets.dev_net))
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
    if o.sk_tuple != ABSENT {
        let t = read0::<[u64; 3]>(sk, o.sk_tuple);
        {
            // daddr, rcv_saddr | hash, dport, num | family
            a.daddr = v4_words(t[0] as u32);
            a.saddr = v4_words((t[0] >> 32) as u32);
            a.dport = u16::from_be((t[1] >> 32) as u16);
            a.sport = (t[1] >> 48) as u16;
            a.family = t[2] as u16;
        }
    } else {
        a.family = read0::<u16>(sk, o.sk_family);
        a.sport = read0::<u16>(sk, o.sk_num);
        a.dport = u16::from_be(read0::<u16>(sk, o.sk_dport));
        a.saddr = v4_words(read0::<u32>(sk, o.sk_rcv_saddr));
        a.daddr = v4_words(read0::<u32>(sk, o.sk_daddr));
    }
    if a.family == net::AF_INET6 {
        a.saddr = read0::<[u64; 2]>(sk, o.sk_v6_rcv_saddr);
        a.daddr = read0::<[u64; 2]>(sk, o.sk_v6_daddr);
    }
    a
}

/// Addresses of an RST sent without a socket, from the segment it answers (`skb`): the RST
/// goes from that segment's destination to its source.
#[inline(always)]
pub fn packet_addrs(skb: u64) -> Addrs {
    let o = OFFSETS.load();
    let mut a = Addrs::default();
    if skb == 0
        || o.skb_head == ABSENT
        || o.skb_network_header == ABSENT
        || o.skb_transport_header == ABSENT
    {
        return a;
    }
    let head = read0::<u64>(skb, o.skb_head);
    let nh = u32::from(read0::<u16>(skb, o.skb_network_header));
    let th = u32::from(read0::<u16>(skb, o.skb_transport_header));
    // TCP header: source port, destination port (network order).
    let ports = read0::<u32>(head, th);
    a.dport = u16::from_be(ports as u16);
    a.sport = u16::from_be((ports >> 16) as u16);
    if read0::<u8>(head, nh) >> 4 == 6 {
        // ipv6hdr: saddr at 8, daddr at 24.
        a.family = net::AF_INET6;
        a.daddr = read0::<[u64; 2]>(head, nh + 8);
        a.saddr = read0::<[u64; 2]>(head, nh + 24);
    } else {
        // iphdr: saddr at 12, daddr at 16.
        a.family = net::AF_INET;
        let pair = read0::<u64>(head, nh + 12);
        a.daddr = v4_words(pair as u32);
        a.saddr = v4_words((pair >> 32) as u32);
    }
    a
}

/// The local port (host order); 0 until bound, and again once the socket closes.
#[inline(always)]
pub fn local_port(sk: u64) -> u16 {
    read0::<u16>(sk, OFFSETS.load().sk_num)
}

/// The local port (host order) as the socket keeps it after the port was released at CLOSE
/// (`inet_sport`); 0 where unreadable or never bound.
#[inline(always)]
pub fn released_local_port(sk: u64) -> u16 {
    u16::from_be(read0::<u16>(sk, OFFSETS.load().inet_sport))
}

/// The remote port (host order); 0 until the socket has a peer.
#[inline(always)]
pub fn remote_port(sk: u64) -> u16 {
    u16::from_be(read0::<u16>(sk, OFFSETS.load().sk_dport))
}

/// [`tcp_stats`]' RTO count where the kernel keeps none (before 6.7).
pub const NO_RTO_COUNT: u32 = u32::MAX;

/// The socket's own counters (`struct tcp_sock`) and its RTO count where the kernel keeps one
/// ([`NO_RTO_COUNT`] before 6.7): one block read where they fit a window, else field by field.
#[inline(always)]
pub fn tcp_stats(sk: u64) -> (SockStats, u32) {
    let o = OFFSETS.load();
    let window = if o.tp_window_len > 0 && o.tp_window_len <= TCP_WINDOW_MAX {
        TCP_WINDOW.get_ptr_mut(0)
    } else {
        None
    };
    let Some(buf) = window else {
        return tcp_stats_by_field(sk);
    };
    // SAFETY: a per-CPU buffer of TCP_WINDOW_MAX bytes; the length is bounded above.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            buf.cast(),
            o.tp_window_len,
            (sk + u64::from(o.tp_window)) as *const core::ffi::c_void,
        )
    };
    if rc != 0 {
        // Counters unknown: reported as 0.
        return (SockStats::default(), NO_RTO_COUNT);
    }
    // SAFETY: filled by the read above; lives in the map for the program's run.
    let block = unsafe { &*buf };
    stats_from(
        |off| window_u64(block, o.tp_window, off) as u32,
        |off| window_u64(block, o.tp_window, off),
    )
}

/// The counters, each read by `u32_at` / `u64_at` at its offset.
#[inline(always)]
fn stats_from(u32_at: impl Fn(u32) -> u32, u64_at: impl Fn(u32) -> u64) -> (SockStats, u32) {
    let o = OFFSETS.load();
    let rtos = if o.tp_total_rto == ABSENT {
        NO_RTO_COUNT
    } else {
        u32_at(o.tp_total_rto) & 0xffff
    };
    let stats = SockStats {
        srtt_us: u32_at(o.tp_srtt_us) >> 3,
        min_rtt_us: no_sample(u32_at(o.tp_min_rtt)),
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

/// `rtt_min` is `~0U` until the first RTT sample.
#[inline(always)]
fn no_sample(v: u32) -> u32 {
    if v == u32::MAX {
        0
    } else {
        v
    }
}

/// [`tcp_stats`] one field at a time (counters spread wider than the window).
#[inline(always)]
fn tcp_stats_by_field(sk: u64) -> (SockStats, u32) {
    // `total_rto` is 16 bits wide; `stats_from` masks it.
    stats_from(|off| read0::<u32>(sk, off), |off| read0::<u64>(sk, off))
}

/// The 8 bytes at field `off` of the socket, from the block read at `base` (0 when the field is
/// absent or outside the block). Plain integers throughout: an `Option` of a pointer would leave
/// LLVM spilling an undefined payload, which older verifiers reject.
#[inline(always)]
fn window_u64(block: &[u8; TCP_WINDOW_MAX as usize], base: u32, off: u32) -> u64 {
    let at = off.wrapping_sub(base) as usize;
    if off == ABSENT || off < base || at > TCP_WINDOW_MAX as usize - 8 {
        return 0;
    }
    // SAFETY: `at + 8` is inside the buffer (checked above).
    unsafe { core::ptr::read_unaligned(block.as_ptr().add(at).cast::<u64>()) }
}

/// The socket's cgroup v2 id (full sockets only; 0: unknown).
#[inline(always)]
pub fn sk_cgroup_id(sk: u64) -> u64 {
    let offsets = OFFSETS.load();
    let cgroup = full_sock_cgroup(sk);
    if cgroup == 0 {
        return 0;
    }
    let kn = read0::<u64>(cgroup, offsets.cgroup_kn);
    if kn == 0 {
        return 0;
    }
    read0::<u64>(kn, offsets.kn_id)
}

/// `sock_cgroup_data`'s cgroup pointer (0: none or unknown).
#[inline(always)]
fn full_sock_cgroup(sk: u64) -> u64 {
    if !is_full(sk_state(sk)) {
        return 0;
    }
    // Before 5.15 a tagged value, not always a pointer.
    sock_cgroup::pointer(read0::<u64>(sk, OFFSETS.load().sk_cgroup))
}

/// Whether the socket's cgroup is the filter cgroup or below it.
#[inline(always)]
fn sk_in_cgroup(sk: u64, want_id: u64, want_level: u32) -> Option<bool> {
    let offsets = OFFSETS.load();
    let cgroup = full_sock_cgroup(sk);
    if cgroup == 0 {
        return None;
    }
    let at_level = if offsets.cgroup_ancestors == ABSENT {
        cgroup
    } else {
        let level = read0::<i32>(cgroup, offsets.cgroup_level);
        if level < 0 || (level as u32) < want_level {
            return Some(false);
        }
        let slot = offsets
            .cgroup_ancestors
            .saturating_add(want_level.saturating_mul(8));
        read0::<u64>(cgroup, slot)
    };
    if at_level == 0 {
        return None;
    }
    let kn = read0::<u64>(at_level, offsets.cgroup_kn);
    if kn == 0 {
        return None;
    }
    Some(read0::<u64>(kn, offsets.kn_id) == want_id)
}

/// Outcome of the scope check for one event.
pub enum Scope {
    /// Report it; carries the netns cookie (0: unknown).
    In(u64),
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
    if filter.netns_cookie != 0 && netns != filter.netns_cookie {
        if netns == 0 {
            count_misc(misc::SCOPE_UNKNOWN);
        }
        return Scope::Out;
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
