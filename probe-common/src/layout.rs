//! Load-time configuration handed to the eBPF programs as read-only globals.
//!
//! Tracepoint record layouts and kernel struct offsets differ between kernels, so userspace
//! reads them at load time (tracefs `format` files, `/sys/kernel/btf/vmlinux`) and passes them
//! in here. Nothing in the eBPF object hard-codes an offset.

/// Marker for "this field does not exist on this kernel".
pub const ABSENT: u16 = u16::MAX;

/// How a tracepoint stores its addresses.
pub mod addr_style {
    /// `sport`, `dport`, `family`, `saddr[4]`, `daddr[4]`, `saddr_v6[16]`, `daddr_v6[16]`.
    pub const SPLIT: u16 = 0;
    /// `saddr[28]`, `daddr[28]` holding a `sockaddr_in` / `sockaddr_in6` (tcp_send_reset, 6.10+).
    pub const SOCKADDR: u16 = 1;
}

/// Byte offsets of the fields one tracepoint program reads from its record.
/// Every offset is [`ABSENT`] where the kernel's format has no such field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpLayout {
    /// [`addr_style`] value.
    pub addr_style: u16,
    pub skaddr: u16,
    pub skbaddr: u16,
    /// `tcp_retransmit_synack`: the request socket.
    pub req: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// `int state` (tcp_event_sk_skb).
    pub state: u16,
    pub oldstate: u16,
    pub newstate: u16,
    /// `enum sk_rst_reason reason` (tcp_send_reset, 6.10+).
    pub reason: u16,
    /// `__u64 sock_cookie` (tcp_event_sk).
    pub sock_cookie: u16,
    /// `int err` (tcp_retransmit_skb, 6.13+).
    pub err: u16,
    /// Non-zero when userspace validated this layout; programs do nothing with an unset one.
    pub valid: u16,
    /// Bytes of the record the program copies in one read (the end of its last field);
    /// 0 when larger than the program's buffer, then fields are read one by one.
    pub record_len: u16,
}

impl TpLayout {
    pub const EMPTY: TpLayout = TpLayout {
        addr_style: addr_style::SPLIT,
        skaddr: ABSENT,
        skbaddr: ABSENT,
        req: ABSENT,
        sport: ABSENT,
        dport: ABSENT,
        family: ABSENT,
        protocol: ABSENT,
        saddr: ABSENT,
        daddr: ABSENT,
        saddr_v6: ABSENT,
        daddr_v6: ABSENT,
        state: ABSENT,
        oldstate: ABSENT,
        newstate: ABSENT,
        reason: ABSENT,
        sock_cookie: ABSENT,
        err: ABSENT,
        valid: 0,
        record_len: 0,
    };
}

/// Size of the buffer tracepoint programs copy a record into.
pub const RECORD_BUF: usize = 128;

/// Offsets into kernel structs, taken from BTF at load time, so tracepoint programs can read
/// the socket cookie, network namespace and cgroup of a `struct sock *`.
/// Each is [`KernelOffsets::ABSENT`] where BTF lacks the member.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sock_common.skc_cookie` (atomic64_t, 0 until something asked for the cookie).
    pub sk_cookie: u32,
    /// `sock_common.skc_net` (possible_net_t → `struct net *`).
    pub sk_net: u32,
    /// `sock_common.skc_state` (u8).
    pub sk_state: u32,
    /// `net.net_cookie` (u64).
    pub net_cookie: u32,
    /// `sk_buff.dev` (`struct net_device *`).
    pub skb_dev: u32,
    /// `net_device.nd_net` (possible_net_t).
    pub dev_net: u32,
    /// `sock.sk_cgrp_data` + the cgroup pointer inside it.
    pub sk_cgroup: u32,
    /// `cgroup.kn` (`struct kernfs_node *`).
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (u64; the cgroup id userspace sees as the directory inode).
    pub kn_id: u32,
    /// `cgroup.level` (int).
    pub cgroup_level: u32,
    /// `cgroup.ancestors` (flexible array of `struct cgroup *`, 5.19+).
    pub cgroup_ancestors: u32,
    /// `sock.sk_err` (int): why a connection attempt ended.
    pub sk_err: u32,
    /// `sock.sk_protocol` (u16 since 5.6): raw `inet_sock_set_state` keeps TCP only.
    pub sk_protocol: u32,
    /// `sock_common.skc_family` (u16), for raw tracepoints, which get the socket, not a record.
    pub sk_family: u32,
    /// `sock_common.skc_num` (u16, host order: the local port).
    pub sk_num: u32,
    /// `sock_common.skc_dport` (__be16).
    pub sk_dport: u32,
    /// `sock_common.skc_rcv_saddr` (__be32).
    pub sk_rcv_saddr: u32,
    /// `sock_common.skc_daddr` (__be32).
    pub sk_daddr: u32,
    /// `sock_common.skc_v6_rcv_saddr` (struct in6_addr; absent without IPv6).
    pub sk_v6_rcv_saddr: u32,
    /// `sock_common.skc_v6_daddr` (struct in6_addr; absent without IPv6).
    pub sk_v6_daddr: u32,
    /// Non-zero when userspace filled these from BTF.
    pub valid: u32,
    pub _pad: u32,
}

impl KernelOffsets {
    pub const ABSENT: u32 = u32::MAX;
    pub const EMPTY: KernelOffsets = KernelOffsets {
        sk_cookie: Self::ABSENT,
        sk_net: Self::ABSENT,
        sk_state: Self::ABSENT,
        net_cookie: Self::ABSENT,
        skb_dev: Self::ABSENT,
        dev_net: Self::ABSENT,
        sk_cgroup: Self::ABSENT,
        cgroup_kn: Self::ABSENT,
        kn_id: Self::ABSENT,
        cgroup_level: Self::ABSENT,
        cgroup_ancestors: Self::ABSENT,
        sk_err: Self::ABSENT,
        sk_protocol: Self::ABSENT,
        sk_family: Self::ABSENT,
        sk_num: Self::ABSENT,
        sk_dport: Self::ABSENT,
        sk_rcv_saddr: Self::ABSENT,
        sk_daddr: Self::ABSENT,
        sk_v6_rcv_saddr: Self::ABSENT,
        sk_v6_daddr: Self::ABSENT,
        valid: 0,
        _pad: 0,
    };
}

/// Which sockets the programs report. Applied in the kernel, before counting, so the
/// counters respect it too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeFilter {
    /// Only sockets in this network namespace (`SO_NETNS_COOKIE` value); 0 = any.
    pub netns_cookie: u64,
    /// Only sockets in this cgroup v2 or below it; 0 = any.
    pub cgroup_id: u64,
    /// Depth of `cgroup_id` below the root (0 = root), for the ancestor check.
    pub cgroup_level: u32,
    pub _pad: u32,
}

/// Run-time tuning passed as globals.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Wake userspace once this many bytes wait in the ring (batching); a timer drains the rest.
    pub wakeup_bytes: u64,
    /// Minimum gap between two RTT records of one flow, ns.
    pub rtt_sample_ns: u64,
}

impl Tuning {
    pub const DEFAULT: Tuning = Tuning {
        wakeup_bytes: 64 * 1024,
        rtt_sample_ns: 1_000_000_000,
    };
}

/// The in-kernel repeat-RST check: a second RST on one socket within `window_ns`, or
/// `peer_threshold` RSTs with one remote endpoint, or `port_threshold` on one local service
/// port, within the same window.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepeatRstConfig {
    pub window_ns: u64,
    pub peer_threshold: u32,
    pub port_threshold: u32,
    /// `ip_local_port_range`: ports inside it are ephemeral and never a scope key.
    pub ephemeral_low: u16,
    pub ephemeral_high: u16,
    pub _pad: u32,
}

impl RepeatRstConfig {
    pub const DEFAULT: RepeatRstConfig = RepeatRstConfig {
        window_ns: 1_000_000_000,
        peer_threshold: 10,
        port_threshold: 20,
        ephemeral_low: 32768,
        ephemeral_high: 60999,
        _pad: 0,
    };
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::RepeatRstConfig {}
    unsafe impl aya::Pod for super::TpLayout {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::ScopeFilter {}
    unsafe impl aya::Pod for super::Tuning {}
}
