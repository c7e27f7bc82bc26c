//! The table's bounds and lifecycle: eviction, expiry, flows open before start, open-flow
//! records, and the memory a flow costs.
use std::net::SocketAddr;

use super::tests::{count, end, key, rec, run, syn_retransmit, CLIENT, START};
use super::*;
use crate::{
    event::{Detail, FlowCounts},
    pipeline::signal::ConnectFailure,
};

#[test]
fn table_bound_evicts_closed_first_and_counts() {
    let cfg = FlowConfig {
        max_flows: 1000,
        ..FlowConfig::default()
    };
    let mut t = FlowTable::new(cfg);
    let start = std::time::Instant::now();
    let mut out = Vec::new();
    let reasons = ReasonNames::default();
    for c in 1..=200_000u64 {
        let mut connect = rec(c, Detail::Connect, None, FlowCounts::default());
        connect.cookie = Some(c);
        t.apply(&connect, &reasons, &mut out);
        if c % 2 == 0 {
            let mut close = end(c, 1, 0, Some(c), FlowCounts::default());
            close.cookie = Some(c);
            t.apply(&close, &reasons, &mut out);
        }
        out.clear();
    }
    eprintln!(
        "flow table: 200k flows (half closed) in {:?} ({:.0} flows/s)",
        start.elapsed(),
        200_000.0 / start.elapsed().as_secs_f64()
    );
    assert_eq!(t.len(), 1000);
    assert_eq!(t.evicted(), 199_000);
    // Closed flows went first: every open flow among the last ones is still here, and no
    // closed one.
    assert!(t.get(&key(199_999)).is_some());
    assert!(t.get(&key(199_997)).is_some());
    assert!(t.get(&key(199_998)).is_none());
}

/// The bound's order, flow by flow: a plain LRU would evict the oldest flow (open, idle since
/// the start); the table evicts every closed flow first, oldest close first, even ones active
/// after it, and only then the least recently active open flow.
#[test]
fn table_bound_keeps_an_old_open_flow_over_newer_closed_ones() {
    let mut t = FlowTable::new(FlowConfig {
        max_flows: 4,
        ..FlowConfig::default()
    });
    let reasons = ReasonNames::default();
    let mut out = Vec::new();
    let mut connect = |t: &mut FlowTable, c: u64, ts: u64| {
        let mut e = rec(ts, Detail::Connect, None, FlowCounts::default());
        e.cookie = Some(c);
        t.apply(&e, &reasons, &mut out);
    };
    // Flow 1 opens first and stays idle; flows 2, 3, 4 open and close after it, 3 closing
    // before 2.
    connect(&mut t, 1, 100);
    for (c, ts) in [(2, 200), (3, 300), (4, 400)] {
        connect(&mut t, c, ts);
    }
    let close = |t: &mut FlowTable, c: u64, ts: u64| {
        let mut e = end(ts, 1, 0, Some(ts), FlowCounts::default());
        e.cookie = Some(c);
        t.apply(&e, &ReasonNames::default(), &mut Vec::new());
    };
    close(&mut t, 3, 500);
    close(&mut t, 2, 600);
    close(&mut t, 4, 700);
    let present =
        |t: &FlowTable| -> Vec<u64> { (1..=8).filter(|c| t.get(&key(*c)).is_some()).collect() };
    assert_eq!(present(&t), [1, 2, 3, 4]);
    // Each new flow takes the oldest-closed slot: 3, then 2, then 4; flow 1 (the least
    // recently active of all) stays.
    connect(&mut t, 5, 800);
    assert_eq!(present(&t), [1, 2, 4, 5], "the first closed (3) goes first");
    connect(&mut t, 6, 900);
    assert_eq!(present(&t), [1, 4, 5, 6]);
    connect(&mut t, 7, 1000);
    assert_eq!(present(&t), [1, 5, 6, 7]);
    // No closed flow left: now the least recently active open flow goes.
    connect(&mut t, 8, 1100);
    assert_eq!(present(&t), [5, 6, 7, 8]);
    assert_eq!(t.evicted(), 4);
}

#[test]
fn closed_flows_expire_after_retention() {
    let cfg = FlowConfig {
        retain_closed: std::time::Duration::from_secs(60),
        ..FlowConfig::default()
    };
    let mut t = FlowTable::new(cfg);
    run(&mut t, &[end(1_000, 2, 111, None, FlowCounts::default())]);
    assert_eq!(t.expire(59_000_000_000), 0);
    assert_eq!(t.expire(61_000_000_000), 1);
    assert!(t.is_empty());
    assert_eq!(t.stats().expired, 1);
}

#[test]
fn preexisting_flows_are_marked_and_not_new_connections() {
    let mut t = FlowTable::new(FlowConfig::default());
    let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let remote: SocketAddr = "127.0.0.1:6000".parse().unwrap();
    t.insert_existing(key(9), local, remote, TcpState::ESTABLISHED, 10);
    let f = t.get(&key(9)).unwrap();
    assert!(f.preexisting);
    assert_eq!(f.state, TcpState::ESTABLISHED);
    // Its summary (first seen late by the kernel too) counts no connection.
    let mut late = end(50, 1, 0, None, FlowCounts::default());
    late.cookie = Some(9);
    if let Some(s) = late.flow.as_mut() {
        s.late = true;
        s.role = None;
    }
    let signals = run(&mut t, &[late]);
    assert!(!signals
        .iter()
        .any(|s| matches!(s, Signal::Connection { .. })));
    assert_eq!(t.get(&key(9)).unwrap().close, Some(CloseCause::Fin));
}

#[test]
fn failures_are_counted_even_for_flows_evicted_before_they_closed() {
    let mut t = FlowTable::new(FlowConfig {
        max_flows: 16,
        ..FlowConfig::default()
    });
    let mut events = Vec::new();
    for c in 100..140 {
        let mut e = syn_retransmit(c, 1);
        e.cookie = Some(c);
        events.push(e);
    }
    for c in 100..140 {
        let mut e = end(
            1_000 + c,
            2,
            libc::ETIMEDOUT,
            None,
            FlowCounts {
                syn_retrans: 1,
                ..FlowCounts::default()
            },
        );
        e.cookie = Some(c);
        events.push(e);
    }
    let signals = run(&mut t, &events);
    assert!(t.evicted() >= 24, "{}", t.evicted());
    let timeouts = count(&signals, |s| {
        matches!(
            s,
            Signal::ConnectFailed {
                cause: ConnectFailure::Timeout,
                ..
            }
        )
    });
    assert_eq!(timeouts, 40);
}

#[test]
fn open_flow_records_update_state_without_a_story_entry() {
    let mut t = FlowTable::new(FlowConfig::default());
    let est = Some(START + 5);
    run(
        &mut t,
        &[rec(
            2_000,
            Detail::Open {
                state: TcpState::ESTABLISHED,
            },
            est,
            FlowCounts::default(),
        )],
    );
    let f = t.get(&key(CLIENT)).unwrap();
    assert_eq!(f.state, TcpState::ESTABLISHED);
    assert!(f.established);
    let kinds: Vec<&str> = f.timeline.iter().map(|e| e.kind_name()).collect();
    assert_eq!(kinds, ["connect", "active_established"]);
}

#[test]
fn the_kernels_lost_failure_slots_type_errors_like_the_flow_table() {
    use probe_common::misc;
    for (err, slot, cause) in [
        (
            libc::ECONNREFUSED,
            misc::CONNECT_FAILED_LOST_REFUSED,
            CloseCause::Refused,
        ),
        (
            libc::ETIMEDOUT,
            misc::CONNECT_FAILED_LOST_TIMEOUT,
            CloseCause::Timeout,
        ),
        (
            libc::EHOSTUNREACH,
            misc::CONNECT_FAILED_LOST_UNREACHABLE,
            CloseCause::Unreachable,
        ),
        (
            libc::ENETUNREACH,
            misc::CONNECT_FAILED_LOST_UNREACHABLE,
            CloseCause::Unreachable,
        ),
        (
            libc::EHOSTDOWN,
            misc::CONNECT_FAILED_LOST_UNREACHABLE,
            CloseCause::Unreachable,
        ),
        (
            libc::ENETDOWN,
            misc::CONNECT_FAILED_LOST_UNREACHABLE,
            CloseCause::Unreachable,
        ),
    ] {
        assert_eq!(misc::connect_failed_lost_slot(err), slot, "errno {err}");
        let mut t = FlowTable::new(FlowConfig::default());
        run(&mut t, &[end(9, 2, err, None, FlowCounts::default())]);
        assert_eq!(
            t.get(&key(CLIENT)).unwrap().close,
            Some(cause),
            "errno {err}"
        );
    }
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

#[test]
#[ignore = "measurement"]
fn measure_memory_per_flow() {
    let mut t = FlowTable::new(FlowConfig::default());
    let reasons = ReasonNames::default();
    let mut out = Vec::new();
    let before = rss_kb();
    for c in 1..=65_536u64 {
        let mut e = end(c * 10, 5, 0, Some(START + 300), FlowCounts::default());
        e.cookie = Some(c);
        t.apply(&e, &reasons, &mut out);
        out.clear();
    }
    let after = rss_kb();
    eprintln!(
        "65,536 flows: {} kB, {} bytes/flow; Flow {} TimelineEntry {}",
        after - before,
        (after - before) * 1024 / 65_536,
        std::mem::size_of::<Flow>(),
        std::mem::size_of::<TimelineEntry>()
    );
}

#[test]
fn a_connect_first_seen_by_its_syn_retransmit_is_syn_sent_with_its_owner() {
    let mut t = FlowTable::new(FlowConfig::default());
    run(&mut t, &[syn_retransmit(START + 1_000_000_000, 1)]);
    let f = t.get(&key(CLIENT)).unwrap();
    assert_eq!(f.state, TcpState::SYN_SENT);
    assert_eq!(
        f.process.as_ref().map(|p| p.comm.as_str().into_owned()),
        Some("psql".into())
    );
    // Its close is not undone by a later record naming an open state.
    run(
        &mut t,
        &[
            end(START + 2_000_000_000, 2, 110, None, FlowCounts::default()),
            syn_retransmit(START + 2_100_000_000, 1),
        ],
    );
    assert_eq!(t.get(&key(CLIENT)).unwrap().state, TcpState::CLOSE);
}

#[test]
fn payload_bytes_leave_out_the_syn_and_fins_the_kernel_counts() {
    // curl's 78-byte request, a 1106-byte response (measured: bytes_acked 80 on curl's side,
    // bytes_received 79 on the server's, 1107 both ways for the response).
    let mut t = FlowTable::new(FlowConfig::default());
    let mut client = end(
        START + 5_000_000,
        crate::event::TcpState::FIN_WAIT2.0,
        0,
        Some(START + 100_000),
        FlowCounts::default(),
    );
    client.stats = Some(crate::event::SockStats {
        bytes_acked: 80,
        bytes_received: 1107,
        ..crate::event::SockStats::default()
    });
    run(&mut t, &[client]);
    assert_eq!(t.get(&key(CLIENT)).unwrap().payload(), (78, 1106));

    let mut server = end(
        START + 5_000_000,
        crate::event::TcpState::LAST_ACK.0,
        0,
        Some(START + 100_000),
        FlowCounts::default(),
    );
    server.cookie = Some(8);
    if let Some(f) = server.flow.as_mut() {
        f.role = Some(crate::event::Role::Server);
    }
    server.stats = Some(crate::event::SockStats {
        bytes_acked: 1107,
        bytes_received: 79,
        ..crate::event::SockStats::default()
    });
    run(&mut t, &[server]);
    assert_eq!(t.get(&key(8)).unwrap().payload(), (1106, 78));

    // Open and established: only the client's SYN is in its count.
    let mut open = rec(
        START + 1_000_000,
        Detail::Open {
            state: crate::event::TcpState::ESTABLISHED,
        },
        Some(START + 100_000),
        FlowCounts::default(),
    );
    open.cookie = Some(9);
    open.stats = Some(crate::event::SockStats {
        bytes_acked: 11,
        bytes_received: 20,
        ..crate::event::SockStats::default()
    });
    run(&mut t, &[open]);
    assert_eq!(t.get(&key(9)).unwrap().payload(), (10, 20));
}
