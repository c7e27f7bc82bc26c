//! Scope filters, privileges and a full ring: the edges of exact counting.
use std::{collections::BTreeSet, process::Command};

use crate::{
    cgroup2_root,
    common::{
        can_run_kernel_tests,
        netns::{delta, TestNetns},
        tracer::Tracer,
        workload, TINY_RING_ARGS,
    },
    report, KERNEL,
};

#[test]
fn cgroup_filter_counts_only_sockets_of_that_cgroup() {
    if !can_run_kernel_tests("cgroup_filter") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    const INSIDE: usize = 5;
    const OUTSIDE: usize = 7;
    let root = cgroup2_root();
    let cgroup = format!("{root}/lpt-cg-{}", std::process::id());
    std::fs::create_dir(&cgroup).expect("create test cgroup");
    let ns = TestNetns::new("cgroup");
    let tracer = Tracer::start(&ns.name, &["--cgroup", &cgroup]);
    // Refused connects from a shell that first moves itself into the cgroup...
    // `ip netns exec` remounts /sys, so join the cgroup before entering the namespace.
    let connects = format!(
        "for i in $(seq {INSIDE}); do (exec 3<>/dev/tcp/127.0.0.1/9) 2>/dev/null || true; done"
    );
    let script = format!(
        "echo $$ > {cgroup}/cgroup.procs && exec ip netns exec {} bash -c '{connects}'",
        ns.name
    );
    let status = Command::new("bash")
        .args(["-c", &script])
        .status()
        .expect("bash");
    assert!(status.success());
    // ...and from this process, outside it.
    let outside = ns.enter(|| workload::refused_connects(9, OUTSIDE));
    let trace = tracer.stop();
    trace.assert_nothing_lost();
    let cgroup_id = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&cgroup).expect("cgroup dir").ino()
    };
    let _ = std::fs::remove_dir(&cgroup);
    // Records of a flow carry its owner's cgroup id (taken at connect()): the test cgroup's
    // directory inode.
    let ids: BTreeSet<u64> = trace
        .events
        .iter()
        .filter_map(|e| e["cgroup_id"].as_u64())
        .collect();
    assert_eq!(ids, BTreeSet::from([cgroup_id]), "cgroup ids of flows");
    assert!(trace
        .of_kind("connect")
        .all(|e| e["cgroup_id"] == cgroup_id));

    report(
        "cgroup filter",
        &[
            (
                "rst_received inside the cgroup",
                trace.kernel("events", "rst_received"),
                INSIDE as u64,
            ),
            (
                "connect inside the cgroup",
                trace.kernel("events", "connect"),
                INSIDE as u64,
            ),
        ],
    );
    assert_eq!(trace.kernel("events", "rst_received"), INSIDE as u64);
    assert_eq!(trace.kernel("events", "connect"), INSIDE as u64);
    assert_eq!(trace.misc("connect_failed"), INSIDE as u64);
    assert!(trace
        .cookies("rst_received")
        .iter()
        .all(|c| !outside.contains(c)));
    // RSTs for a closed port have no socket, hence no cgroup: counted as out of known scope.
    assert_eq!(trace.misc("scope_unknown"), (INSIDE + OUTSIDE) as u64);
}

#[test]
fn unprivileged_user_gets_one_clear_sentence() {
    if !can_run_kernel_tests("unprivileged") {
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args([
            "--bounding-set=-all",
            env!("CARGO_BIN_EXE_linkprobe"),
            "trace",
        ])
        .output()
        .expect("setpriv (util-linux)");
    let msg = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(msg.contains("linkprobe needs root"), "{msg}");
    assert_eq!(msg.trim().lines().count(), 1, "one sentence: {msg}");
}

#[test]
fn a_full_ring_loses_records_but_never_counts() {
    if !can_run_kernel_tests("full_ring") {
        return;
    }
    let _shared = KERNEL.read().unwrap_or_else(|e| e.into_inner());
    const N: usize = 300;
    let ns = TestNetns::new("fullring");
    let tracer = Tracer::start(&ns.name, TINY_RING_ARGS);
    let before = ns.nstat();
    ns.enter(|| workload::refused_connects(9, N));
    let after = ns.nstat();
    let trace = tracer.stop();

    let total = |section: &str| -> u64 {
        trace.counters[section]
            .as_object()
            .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
            .unwrap_or(0)
    };
    let lost_total = total("lost");
    report(
        "full ring",
        &[
            (
                "rst_sent (kernel count) vs TcpOutRsts",
                trace.kernel("events", "rst_sent"),
                delta(&before, &after, "TcpOutRsts"),
            ),
            (
                "kernel events vs records + lost",
                total("events"),
                total("records") + lost_total,
            ),
        ],
    );
    assert!(lost_total > 0, "the test must overflow the ring");
    for (kind, n) in trace.counters["events"].as_object().expect("events") {
        let records = trace.counters["records"][kind].as_u64().unwrap_or(0);
        let lost = trace.kernel("lost", kind);
        assert_eq!(
            n.as_u64(),
            Some(records + lost),
            "{kind}: events = records + lost"
        );
    }
    assert_eq!(
        trace.kernel("events", "rst_sent"),
        delta(&before, &after, "TcpOutRsts")
    );
    assert_eq!(trace.kernel("events", "rst_received"), N as u64);
    assert_eq!(
        trace.misc("connect_failed"),
        delta(&before, &after, "TcpAttemptFails")
    );
}
