//! [`KernelOffsets`] from BTF: where the programs find the socket cookie, network namespace
//! and cgroup behind a `struct sock *`.
use probe_common::{KernelOffsets, TCP_WINDOW_MAX};

use super::{parse::Kind, Btf, BtfError};

const NEEDED: &str = "linkprobe needs this to read sockets";
const NO_PKT_NETNS: &str = "network namespace of packets without a socket is unknown";
const NO_CGROUP: &str = "cgroup filter and cgroup ids unavailable";
const EXACT_CGROUP: &str = "cgroup filter matches the exact cgroup only";

/// Collects offsets and the notes on what is missing.
struct Finder<'a> {
    btf: &'a Btf,
    notes: Vec<String>,
}

impl Finder<'_> {
    /// Offset of a member whose type must be `size` bytes.
    fn sized(&self, struct_name: &str, path: &str, size: u32) -> Result<u32, Missing> {
        let offset = self.btf.member_offset(struct_name, path)?;
        let found = self.btf.member_size(struct_name, path)?;
        if found != size {
            return Err(Missing::Other(format!(
                "its type is {found} bytes, expected {size}"
            )));
        }
        Ok(offset)
    }

    /// Records why `struct_name.path` is absent; `hint` explains a plain absence.
    fn note(&mut self, struct_name: &str, path: &str, why: Missing, hint: &str, effect: &str) {
        let reason = match why {
            Missing::Absent => hint.to_owned(),
            Missing::Other(reason) => reason,
        };
        self.notes
            .push(format!("{struct_name}.{path} ({reason}): {effect}"));
    }

    /// A member of `size` bytes, or ABSENT with a note.
    fn field(&mut self, struct_name: &str, path: &str, size: u32, hint: &str, effect: &str) -> u32 {
        match self.sized(struct_name, path, size) {
            Ok(offset) => offset,
            Err(why) => {
                self.note(struct_name, path, why, hint, effect);
                KernelOffsets::ABSENT
            }
        }
    }

    /// `sock.sk_cgrp_data` + the cgroup pointer inside it: `cgroup` on 5.15+, before that the
    /// tagged `val` (a pointer only while `probe_common::kernel::sock_cgroup::TAG_BITS` are
    /// clear).
    fn sk_cgroup(&mut self) -> u32 {
        let path = "sk_cgrp_data.cgroup";
        match self.sized("sock", path, 8) {
            Ok(offset) => offset,
            Err(Missing::Absent) if self.btf.has_member("sock", "sk_cgrp_data.val") => {
                let old = "sk_cgrp_data.val";
                match self.sized("sock", old, 8) {
                    Ok(offset) => {
                        self.notes.push(format!(
                            "sock.{path} (kernel < 5.15): using sock.{old}, which holds the cgroup \
                             pointer only while its bits 0 and 1 are clear (else net_cls/net_prio \
                             data or no refcount: cgroup unknown)"
                        ));
                        offset
                    }
                    Err(why) => {
                        self.note("sock", old, why, "", NO_CGROUP);
                        KernelOffsets::ABSENT
                    }
                }
            }
            Err(why) => {
                self.note("sock", path, why, "no CONFIG_SOCK_CGROUP_DATA", NO_CGROUP);
                KernelOffsets::ABSENT
            }
        }
    }

    /// `kernfs_node.id`: a u64 on 5.5+, before that `union kernfs_node_id` whose `id` member
    /// is the 64-bit id.
    fn kn_id(&mut self) -> u32 {
        let path = match self.btf.member_shape("kernfs_node", "id") {
            Ok(shape) if shape.kind.is_composite() => "id.id",
            _ => "id",
        };
        self.field("kernfs_node", path, 8, "missing", NO_CGROUP)
    }

    /// `cgroup.ancestors`, a flexible array of `struct cgroup *` (5.19+).
    fn cgroup_ancestors(&mut self) -> u32 {
        let path = "ancestors";
        let result = self
            .btf
            .member_shape("cgroup", path)
            .map_err(Missing::from)
            .and_then(|shape| {
                if shape.kind == Kind::Array && shape.elem == Some(Kind::Ptr) {
                    Ok(self.btf.member_offset("cgroup", path)?)
                } else {
                    Err(Missing::Other(format!(
                        "a {} here, expected an array of pointers",
                        shape.kind.describe()
                    )))
                }
            });
        match result {
            Ok(offset) => offset,
            Err(why) => {
                let hint = if self.btf.has_member("cgroup", "ancestor_ids") {
                    "kernel < 5.19; its cgroup.ancestor_ids is not used"
                } else {
                    "kernel < 5.19"
                };
                self.note("cgroup", path, why, hint, EXACT_CGROUP);
                KernelOffsets::ABSENT
            }
        }
    }
}

impl Finder<'_> {
    /// `tcp_sock.rtt_min` (a `struct minmax` of three `{t, v}` samples, the best first) + the
    /// offset of `v` in a sample: the windowed minimum RTT in µs.
    fn min_rtt(&mut self) -> u32 {
        let found = self
            .btf
            .member_offset("tcp_sock", "rtt_min")
            .and_then(|base| Ok((base, self.btf.member_offset("minmax_sample", "v")?)))
            .map_err(Missing::from);
        match found {
            Ok((base, v)) => base + v,
            Err(why) => {
                self.note(
                    "tcp_sock",
                    "rtt_min",
                    why,
                    "missing",
                    "flows have no minimum RTT",
                );
                KernelOffsets::ABSENT
            }
        }
    }
}

/// One block covering every `tcp_sock` counter the programs read, when it fits
/// [`TCP_WINDOW_MAX`]; else (ABSENT, 0).
fn tcp_window(o: &KernelOffsets) -> (u32, u32) {
    let fields = [
        (o.tp_srtt_us, 4),
        (o.tp_min_rtt, 4),
        (o.tp_total_retrans, 4),
        (o.tp_segs_in, 4),
        (o.tp_segs_out, 4),
        (o.tp_data_segs_in, 4),
        (o.tp_data_segs_out, 4),
        (o.tp_bytes_received, 8),
        (o.tp_bytes_acked, 8),
        (o.tp_total_rto, 2),
    ];
    let present = fields
        .iter()
        .filter(|(off, _)| *off != KernelOffsets::ABSENT);
    let start = present.clone().map(|(off, _)| *off).min();
    let end = present.map(|(off, size)| off + size).max();
    match (start, end) {
        (Some(s), Some(e)) if e - s <= TCP_WINDOW_MAX => (s, e - s),
        _ => (KernelOffsets::ABSENT, 0),
    }
}

/// The offset of `skc_daddr` when the IPv4 tuple has its usual shape (see
/// `KernelOffsets::sk_tuple`), else ABSENT.
fn sk_tuple(o: &KernelOffsets) -> u32 {
    let base = o.sk_daddr;
    let usual = base != KernelOffsets::ABSENT
        && o.sk_rcv_saddr == base.wrapping_add(4)
        && o.sk_dport == base.wrapping_add(12)
        && o.sk_num == base.wrapping_add(14)
        && o.sk_family == base.wrapping_add(16);
    if usual {
        base
    } else {
        KernelOffsets::ABSENT
    }
}

/// Why a member could not be used.
enum Missing {
    /// No such struct or member in this kernel.
    Absent,
    /// Present but unusable; the reason.
    Other(String),
}

impl From<BtfError> for Missing {
    fn from(e: BtfError) -> Missing {
        match e {
            BtfError::UnknownStruct { .. } | BtfError::UnknownMember { .. } => Missing::Absent,
            other => Missing::Other(other.to_string()),
        }
    }
}

/// Fills every [`KernelOffsets`] field BTF has (byte offsets from the start of the outer
/// struct) and returns notes on each missing one, e.g. `cgroup.ancestors (kernel < 5.19):
/// cgroup filter matches the exact cgroup only`.
/// On kernels before 5.15 `sk_cgroup` points at the tagged `sock_cgroup_data.val`, and a note
/// says so.
///
/// `valid` is 1 when at least `sk_cookie`, `sk_net` and `net_cookie` resolved, the minimum
/// the programs need.
pub fn kernel_offsets(btf: &Btf) -> (KernelOffsets, Vec<String>) {
    let mut f = Finder {
        btf,
        notes: Vec::new(),
    };
    let mut o = KernelOffsets::EMPTY;
    o.sk_cookie = f.field("sock", "__sk_common.skc_cookie", 8, "missing", NEEDED);
    o.sk_net = f.field(
        "sock",
        "__sk_common.skc_net.net",
        8,
        "missing; no CONFIG_NET_NS?",
        NEEDED,
    );
    o.sk_state = f.field(
        "sock",
        "__sk_common.skc_state",
        1,
        "missing",
        "socket state unavailable",
    );
    o.net_cookie = f.field("net", "net_cookie", 8, "kernel < 5.7", NEEDED);
    o.skb_dev = f.field("sk_buff", "dev", 8, "missing", NO_PKT_NETNS);
    o.dev_net = f.field(
        "net_device",
        "nd_net.net",
        8,
        "missing; no CONFIG_NET_NS?",
        NO_PKT_NETNS,
    );
    o.sk_cgroup = f.sk_cgroup();
    o.cgroup_kn = f.field("cgroup", "kn", 8, "missing", NO_CGROUP);
    o.kn_id = f.kn_id();
    o.cgroup_level = f.field("cgroup", "level", 4, "missing", EXACT_CGROUP);
    o.cgroup_ancestors = f.cgroup_ancestors();
    o.sk_err = f.field(
        "sock",
        "sk_err",
        4,
        "missing",
        "connect failures cannot be typed as refused/timeout/unreachable",
    );
    o.inet_sport = f.field(
        "inet_sock",
        "inet_sport",
        2,
        "missing",
        "a connect closed before any other hit shows local port 0",
    );
    o.sk_protocol = f.field(
        "sock",
        "sk_protocol",
        2,
        "kernel < 5.6, where it is a bitfield",
        "TCP state changes are not reported",
    );
    let common = |f: &mut Finder<'_>, member: &str, size: u32, hint: &str| {
        f.field(
            "sock",
            &format!("__sk_common.{member}"),
            size,
            hint,
            "retransmits and state changes lack that part of the address",
        )
    };
    o.sk_family = common(&mut f, "skc_family", 2, "missing");
    o.sk_num = common(&mut f, "skc_num", 2, "missing");
    o.sk_dport = common(&mut f, "skc_dport", 2, "missing");
    o.sk_rcv_saddr = common(&mut f, "skc_rcv_saddr", 4, "missing");
    o.sk_daddr = common(&mut f, "skc_daddr", 4, "missing");
    o.sk_v6_rcv_saddr = common(&mut f, "skc_v6_rcv_saddr", 16, "no CONFIG_IPV6");
    o.sk_v6_daddr = common(&mut f, "skc_v6_daddr", 16, "no CONFIG_IPV6");
    let tcp = |f: &mut Finder<'_>, member: &str, size: u32| {
        f.field(
            "tcp_sock",
            member,
            size,
            "missing",
            "flow summaries lack that socket counter",
        )
    };
    o.tp_srtt_us = tcp(&mut f, "srtt_us", 4);
    o.tp_min_rtt = f.min_rtt();
    o.tp_total_retrans = tcp(&mut f, "total_retrans", 4);
    o.tp_segs_in = tcp(&mut f, "segs_in", 4);
    o.tp_segs_out = tcp(&mut f, "segs_out", 4);
    o.tp_data_segs_in = tcp(&mut f, "data_segs_in", 4);
    o.tp_data_segs_out = tcp(&mut f, "data_segs_out", 4);
    o.tp_bytes_received = tcp(&mut f, "bytes_received", 8);
    o.tp_bytes_acked = tcp(&mut f, "bytes_acked", 8);
    o.tp_total_rto = f
        .sized("tcp_sock", "total_rto", 2)
        .unwrap_or(KernelOffsets::ABSENT);
    (o.tp_window, o.tp_window_len) = tcp_window(&o);
    o.sk_tuple = sk_tuple(&o);
    const NO_PKT_ADDRS: &str = "RSTs sent without a socket have no addresses";
    o.skb_head = f.field("sk_buff", "head", 8, "missing", NO_PKT_ADDRS);
    o.skb_network_header = f.field("sk_buff", "network_header", 2, "missing", NO_PKT_ADDRS);
    o.skb_transport_header = f.field("sk_buff", "transport_header", 2, "missing", NO_PKT_ADDRS);
    let needed = [o.sk_cookie, o.sk_net, o.net_cookie];
    o.valid = u32::from(needed.iter().all(|&v| v != KernelOffsets::ABSENT));
    (o, f.notes)
}
