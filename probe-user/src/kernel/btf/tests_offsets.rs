//! `KernelOffsets` from BTF: a synthetic pre-5.7 layout, and the running kernel's own BTF
//! cross-checked with bpftool.
use std::{path::Path, process::Command, time::Instant};

use probe_common::KernelOffsets;

use super::{offsets::kernel_offsets, test_builder::*, *};

/// The shape of a pre-5.7 kernel: tagged `sock_cgroup_data`, `union kernfs_node_id`,
/// `ancestor_ids`, no `net_cookie`, no `sk_buff` / `net_device`.
#[test]
fn kernel_offsets_on_an_old_layout() {
    let mut b = Builder::new();
    let int = b.int("int", 4, 0, 32);
    let u8t = b.int("unsigned char", 1, 0, 8);
    let u32t = b.int("unsigned int", 4, 0, 32);
    let u64t = b.int("long long unsigned int", 8, 0, 64);
    let s64 = b.int("long long int", 8, 0, 64);
    let net = b.composite(STRUCT, "net", 8, false, &[("count", int, 0)]);
    let net_ptr = b.modifier(PTR, "", net);
    let pnet = b.composite(STRUCT, "", 8, false, &[("net", net_ptr, 0)]);
    let pnet_t = b.modifier(TYPEDEF, "possible_net_t", pnet);
    let atomic = b.composite(STRUCT, "", 8, false, &[("counter", s64, 0)]);
    let atomic_t = b.modifier(TYPEDEF, "atomic64_t", atomic);
    let vol_u8 = b.modifier(VOLATILE, "", u8t);
    let u16t = b.int("short unsigned int", 2, 0, 16);
    // The addresses sit in an anonymous struct inside an anonymous union, as in the kernel.
    let pair = b.composite(
        STRUCT,
        "",
        8,
        false,
        &[("skc_daddr", u32t, 0), ("skc_rcv_saddr", u32t, 32)],
    );
    let addrs = b.composite(
        UNION,
        "",
        8,
        false,
        &[("skc_addrpair", u64t, 0), ("", pair, 0)],
    );
    let common = b.composite(
        STRUCT,
        "sock_common",
        40,
        false,
        &[
            ("skc_state", vol_u8, 0),
            ("skc_net", pnet_t, 64),
            ("skc_cookie", atomic_t, 128),
            ("", addrs, 192),
            ("skc_dport", u16t, 256),
            ("skc_num", u16t, 272),
            ("skc_family", u16t, 288),
        ],
    );
    let tagged = b.composite(
        STRUCT,
        "",
        8,
        true,
        &[
            ("is_data", u8t, bitfield(0, 1)),
            ("padding", u8t, bitfield(1, 7)),
        ],
    );
    let cgrp_union = b.composite(UNION, "", 8, false, &[("", tagged, 0), ("val", u64t, 0)]);
    let cgrp_data = b.composite(STRUCT, "sock_cgroup_data", 8, false, &[("", cgrp_union, 0)]);
    b.composite(
        STRUCT,
        "sock",
        56,
        false,
        &[("__sk_common", common, 0), ("sk_cgrp_data", cgrp_data, 384)],
    );
    let ino = b.composite(
        STRUCT,
        "",
        8,
        false,
        &[("ino", u32t, 0), ("generation", u32t, 32)],
    );
    let kn_id = b.composite(
        UNION,
        "kernfs_node_id",
        8,
        false,
        &[("", ino, 0), ("id", u64t, 0)],
    );
    let kn = b.composite(
        STRUCT,
        "kernfs_node",
        16,
        false,
        &[("count", int, 0), ("id", kn_id, 64)],
    );
    let kn_ptr = b.modifier(PTR, "", kn);
    let ids = b.array(u64t, int, 0);
    b.composite(
        STRUCT,
        "cgroup",
        24,
        false,
        &[
            ("kn", kn_ptr, 0),
            ("level", int, 64),
            ("ancestor_ids", ids, 128),
        ],
    );
    let btf = Btf::from_bytes(&b.bytes()).expect("parses");
    let (o, notes) = kernel_offsets(&btf);
    assert_eq!(o.sk_cookie, 16);
    assert_eq!(o.sk_net, 8);
    assert_eq!(o.sk_state, 0);
    assert_eq!(o.net_cookie, KernelOffsets::ABSENT);
    assert_eq!(o.skb_dev, KernelOffsets::ABSENT);
    assert_eq!(o.dev_net, KernelOffsets::ABSENT);
    assert_eq!(o.sk_cgroup, 48);
    assert_eq!(o.sk_daddr, 24);
    assert_eq!(o.sk_rcv_saddr, 28);
    assert_eq!(o.sk_dport, 32);
    assert_eq!(o.sk_num, 34);
    assert_eq!(o.sk_family, 36);
    assert_eq!(o.sk_v6_daddr, KernelOffsets::ABSENT);
    assert_eq!(o.sk_v6_rcv_saddr, KernelOffsets::ABSENT);
    assert_eq!(o.cgroup_kn, 0);
    assert_eq!(o.kn_id, 8);
    assert_eq!(o.cgroup_level, 8);
    assert_eq!(o.cgroup_ancestors, KernelOffsets::ABSENT);
    assert_eq!(
        o.sk_err,
        KernelOffsets::ABSENT,
        "the synthetic sock has no sk_err"
    );
    assert_eq!(o.valid, 0, "no net_cookie");
    let all = notes.join("\n");
    for want in [
        "net.net_cookie (kernel < 5.7)",
        "sk_buff.dev",
        "net_device.nd_net.net",
        "sock.sk_cgrp_data.cgroup (kernel < 5.15): using sock.sk_cgrp_data.val",
        "cgroup.ancestors (kernel < 5.19; its cgroup.ancestor_ids is not used): cgroup filter \
         matches the exact cgroup only",
        "sock.sk_err (missing): connect failures cannot be typed",
        "inet_sock.inet_sport (missing): a connect closed before any other hit shows local port 0",
        "sock.sk_protocol (kernel < 5.6, where it is a bitfield): TCP state changes are not",
        "sock.__sk_common.skc_v6_rcv_saddr (no CONFIG_IPV6): retransmits and state changes",
        "sock.__sk_common.skc_v6_daddr (no CONFIG_IPV6): retransmits and state changes",
        "tcp_sock.srtt_us (missing): flow summaries lack that socket counter",
        "tcp_sock.rtt_min (missing): flows have no minimum RTT",
        "sk_buff.head (missing): RSTs sent without a socket have no addresses",
    ] {
        assert!(all.contains(want), "missing note {want:?} in:\n{all}");
    }
    // 10 socket notes, 8 socket counters + the minimum RTT, 3 packet header fields.
    assert_eq!(notes.len(), 22, "{all}");
}

fn kernel_release() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[test]
fn running_kernel_offsets() {
    let read_start = Instant::now();
    let data = match std::fs::read(VMLINUX_BTF) {
        Ok(data) => data,
        Err(e) => {
            eprintln!("skipping: cannot read {VMLINUX_BTF}: {e}");
            return;
        }
    };
    let read_time = read_start.elapsed();
    let start = Instant::now();
    let btf = Btf::from_bytes(&data).expect("vmlinux BTF parses");
    let parse_time = start.elapsed();
    eprintln!(
        "read {} bytes of vmlinux BTF in {read_time:?}, parsed {} types in {parse_time:?}",
        data.len(),
        btf.type_count()
    );
    let start = Instant::now();
    let (o, _) = kernel_offsets(&btf);
    eprintln!("kernel_offsets took {:?}", start.elapsed());
    assert_eq!(
        Btf::from_sys_fs().map(|b| kernel_offsets(&b).0).ok(),
        Some(o)
    );
    let (o, notes) = kernel_offsets(&btf);
    eprintln!("{o:#?}");
    for note in &notes {
        eprintln!("note: {note}");
    }
    let release = kernel_release();
    if release.is_some_and(|r| r >= (5, 19)) {
        let fields = [
            ("sk_cookie", o.sk_cookie),
            ("sk_net", o.sk_net),
            ("sk_state", o.sk_state),
            ("net_cookie", o.net_cookie),
            ("skb_dev", o.skb_dev),
            ("dev_net", o.dev_net),
            ("sk_cgroup", o.sk_cgroup),
            ("cgroup_kn", o.cgroup_kn),
            ("kn_id", o.kn_id),
            ("cgroup_level", o.cgroup_level),
            ("cgroup_ancestors", o.cgroup_ancestors),
        ];
        for (name, value) in fields {
            assert_ne!(value, KernelOffsets::ABSENT, "{name}: {notes:?}");
        }
        assert_eq!(o.valid, 1);
        assert!(notes.is_empty(), "{notes:?}");
    } else {
        eprintln!("kernel {release:?} < 5.19: not requiring every offset");
    }
    let common = btf
        .member_size("sock", "__sk_common")
        .expect("sock_common size");
    for (name, value) in [
        ("sk_cookie", o.sk_cookie),
        ("sk_net", o.sk_net),
        ("sk_state", o.sk_state),
    ] {
        if value != KernelOffsets::ABSENT {
            assert!(
                value < common,
                "{name} {value} outside sock_common ({common})"
            );
        }
    }
    cross_check_with_bpftool(&btf, &o);
}

/// Member bit offset and struct size from `bpftool btf dump ... format raw`.
fn bpftool_member(dump: &str, struct_name: &str, member: &str) -> Option<(u64, u64)> {
    let header = format!("STRUCT '{struct_name}' size=");
    let mut lines = dump.lines().skip_while(|l| !l.contains(&header));
    let size = lines
        .next()?
        .split_once(" size=")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let prefix = format!("'{member}' ");
    let bits = lines
        .take_while(|l| l.starts_with('\t'))
        .find(|l| l.trim_start().starts_with(&prefix))?
        .split_once("bits_offset=")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((bits, size))
}

fn cross_check_with_bpftool(btf: &Btf, o: &KernelOffsets) {
    let Some(bpftool) = [
        "/usr/sbin/bpftool",
        "/usr/bin/bpftool",
        "/usr/local/sbin/bpftool",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists()) else {
        eprintln!("skipping bpftool cross-check: bpftool not found");
        return;
    };
    let out = match Command::new(bpftool)
        .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
        .output()
    {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            eprintln!(
                "skipping bpftool cross-check: bpftool failed: {}",
                out.status
            );
            return;
        }
        Err(e) => {
            eprintln!("skipping bpftool cross-check: {e}");
            return;
        }
    };
    let dump = String::from_utf8_lossy(&out.stdout);
    // Byte offset per bpftool, when the dump has it.
    let bytes = |struct_name: &str, member: &str| {
        let found = bpftool_member(&dump, struct_name, member);
        if found.is_none() {
            eprintln!("bpftool dump has no {struct_name}.{member}");
        }
        found.map(|(bits, _)| bits / 8)
    };
    let mut checked = 0;
    for (struct_name, member) in [
        ("sock_common", "skc_cookie"),
        ("sock_common", "skc_state"),
        ("sock_common", "skc_net"),
        ("sock", "__sk_common"),
        ("sock", "sk_cgrp_data"),
        ("net", "net_cookie"),
        ("cgroup", "kn"),
        ("cgroup", "level"),
        ("cgroup", "ancestors"),
        ("kernfs_node", "id"),
        ("net_device", "nd_net"),
    ] {
        if let Some(want) = bytes(struct_name, member) {
            let ours = btf
                .member_offset(struct_name, member)
                .unwrap_or_else(|e| panic!("{struct_name}.{member}: {e}"));
            assert_eq!(u64::from(ours), want, "{struct_name}.{member}");
            checked += 1;
        }
    }
    assert!(
        checked >= 8,
        "only {checked} members found in the bpftool dump"
    );
    // The composed KernelOffsets fields agree too.
    let sk_common = bytes("sock", "__sk_common");
    let composed = [
        (
            "sk_cookie",
            o.sk_cookie,
            sk_common.zip(bytes("sock_common", "skc_cookie")),
        ),
        (
            "sk_state",
            o.sk_state,
            sk_common.zip(bytes("sock_common", "skc_state")),
        ),
        (
            "net_cookie",
            o.net_cookie,
            bytes("net", "net_cookie").zip(Some(0)),
        ),
        ("cgroup_kn", o.cgroup_kn, bytes("cgroup", "kn").zip(Some(0))),
        (
            "cgroup_level",
            o.cgroup_level,
            bytes("cgroup", "level").zip(Some(0)),
        ),
        ("kn_id", o.kn_id, bytes("kernfs_node", "id").zip(Some(0))),
    ];
    for (name, ours, parts) in composed {
        if let Some((a, b)) = parts {
            assert_eq!(u64::from(ours), a + b, "{name}");
            checked += 1;
        }
    }
    if let Some((_, size)) = bpftool_member(&dump, "sock_common", "skc_cookie") {
        let ours = btf.member_size("sock", "__sk_common").expect("size");
        assert_eq!(u64::from(ours), size, "sizeof(struct sock_common)");
        checked += 1;
    }
    eprintln!("bpftool agrees on {checked} offsets and sizes");
}
