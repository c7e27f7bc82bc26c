//! Load-time configuration handed to the eBPF programs as read-only globals.
//!
//! Kernel struct offsets and tracepoint arguments differ between kernels, so userspace reads
//! them at load time (`/sys/kernel/btf/vmlinux`, tracefs `format` files) and passes them in
//! here. Nothing in the eBPF object hard-codes an offset.

/// Marker for "this field does not exist on this kernel".
pub const ABSENT: u16 = u16::MAX;

/// How a tracepoint stores its addresses.
pub mod addr_style {
    /// `sport`, `dport`, `family`, `saddr[4]`, `daddr[4]`, `saddr_v6[16]`, `daddr_v6[16]`.
    pub const SPLIT: u16 = 0;
    /// `saddr[28]`, `daddr[28]` holding a `sockaddr_in` / `sockaddr_in6` (tcp_send_reset, 6.10+).
    pub const SOCKADDR: u16 = 1;
}

/// Byte offsets of a tracepoint record's fields, from its tracefs `format` file. The programs
/// take TP_PROTO arguments (BTF-typed or raw tracepoints); userspace uses this to know which
/// arguments a kernel passes (`reason`, `err`) and to report the fields each kernel has.
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

/// Largest `tcp_sock` block read at once for the flow's counters (see `tp_window`).
pub const TCP_WINDOW_MAX: u32 = 1024;

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
    /// `tcp_sock.srtt_us` (u32, µs << 3).
    pub tp_srtt_us: u32,
    /// `tcp_sock.rtt_min` + `minmax_sample.v` (u32 µs): the windowed minimum RTT.
    pub tp_min_rtt: u32,
    /// `tcp_sock.total_retrans` (u32).
    pub tp_total_retrans: u32,
    /// `tcp_sock.segs_in`, `segs_out`, `data_segs_in`, `data_segs_out` (u32 each).
    pub tp_segs_in: u32,
    pub tp_segs_out: u32,
    pub tp_data_segs_in: u32,
    pub tp_data_segs_out: u32,
    /// `tcp_sock.bytes_received`, `bytes_acked` (u64).
    pub tp_bytes_received: u32,
    pub tp_bytes_acked: u32,
    /// `tcp_sock.total_rto` (u16, 6.7+): RTOs the kernel counted, SYN timeouts included.
    pub tp_total_rto: u32,
    /// The `tcp_sock` counters above lie in `[tp_window, tp_window + tp_window_len)`: read as one
    /// block (one helper call, not ten). `tp_window_len` 0: read them one by one.
    pub tp_window: u32,
    pub tp_window_len: u32,
    /// `sock_common.skc_daddr`, with `skc_rcv_saddr` at +4, `skc_dport` at +12, `skc_num` at +14
    /// and `skc_family` at +16 (the layout of every kernel so far): the IPv4 tuple in one read.
    /// ABSENT: read field by field.
    pub sk_tuple: u32,
    /// `sk_buff.head` (pointer) and the `network_header` / `transport_header` offsets (u16)
    /// from it: addresses of an RST sent without a socket.
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    /// Non-zero when userspace filled these from BTF.
    pub valid: u32,
    /// `inet_sock.inet_sport` (__be16): the local port as the socket keeps it; `skc_num` is
    /// already 0 when a connect's CLOSE is announced (the port was released), this is not.
    pub inet_sport: u32,
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
        tp_srtt_us: Self::ABSENT,
        tp_min_rtt: Self::ABSENT,
        tp_total_retrans: Self::ABSENT,
        tp_segs_in: Self::ABSENT,
        tp_segs_out: Self::ABSENT,
        tp_data_segs_in: Self::ABSENT,
        tp_data_segs_out: Self::ABSENT,
        tp_bytes_received: Self::ABSENT,
        tp_bytes_acked: Self::ABSENT,
        tp_total_rto: Self::ABSENT,
        tp_window: Self::ABSENT,
        tp_window_len: 0,
        sk_tuple: Self::ABSENT,
        skb_head: Self::ABSENT,
        skb_network_header: Self::ABSENT,
        skb_transport_header: Self::ABSENT,
        valid: 0,
        inet_sport: Self::ABSENT,
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
    /// Minimum gap between two data-retransmit / RTO records of one flow, ns (every hit is
    /// still counted in the flow).
    pub report_interval_ns: u64,
}

impl Tuning {
    pub const DEFAULT: Tuning = Tuning {
        wakeup_bytes: 64 * 1024,
        report_interval_ns: 1_000_000_000,
    };
}

/// TP_PROTO arguments that only some kernels pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookArgs {
    /// 1 when `tcp_send_reset` passes `enum sk_rst_reason reason` as its third argument (6.10+).
    pub rst_reason: u32,
    /// 1 when `tcp_retransmit_skb` passes `int err` as its third argument (6.13+).
    pub retransmit_err: u32,
    /// 1 when the kernel has task storage (5.11+): primaries can mark hits for their backups.
    /// 0: `HIT_MARKS` is a stand-in map and the verifier never walks the marking code.
    pub task_storage: u32,
}

/// Which flows get a record for every hook hit (`linkprobe trace`, or the daemon's
/// `--detail`). Decided when the flow's state is created and when it is established (once its
/// addresses are final), then kept as a flag in the flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetailFilter {
    /// [`detail_mode`] value.
    pub mode: u32,
    /// With `MATCH`: a flow matches when every set criterion matches. Port 0 = any.
    pub port: u16,
    /// Address family of `addr`; 0 = any address.
    pub family: u16,
    /// Remote address (network byte order, IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Socket cookie; 0 = any.
    pub cookie: u64,
    /// cgroup v2 id of the flow's owner; 0 = any.
    pub cgroup_id: u64,
}

/// [`DetailFilter::mode`] values.
pub mod detail_mode {
    /// Exceptions and summaries only (the default).
    pub const OFF: u32 = 0;
    /// Every hook hit of every flow in scope.
    pub const ALL: u32 = 1;
    /// Every hook hit of the flows the filter matches (`port` matches either end).
    pub const MATCH: u32 = 2;
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
    unsafe impl aya::Pod for super::HookArgs {}
    unsafe impl aya::Pod for super::DetailFilter {}
}
