use std::net::SocketAddr;

use super::*;
use crate::{
    event::{Detail, Process, Role, SockStats},
    signal::{ConnectFailure, RetransmitKind, RstDirection},
};

const CLIENT: u64 = 7;

fn ev(ts_ns: u64, cookie: Option<u64>, detail: Detail) -> Event {
    Event {
        ts_ns,
        cookie,
        netns_cookie: Some(1),
        local: "10.0.0.1:40000".parse().unwrap(),
        remote: "10.0.0.2:5432".parse().unwrap(),
        process: None,
        sk_err: None,
        cgroup_id: None,
        detail,
    }
}

fn state(ts: u64, from: u8, to: u8, sk_err: Option<i32>) -> Event {
    let mut e = ev(
        ts,
        Some(CLIENT),
        Detail::StateChange {
            from: TcpState(from),
            to: TcpState(to),
        },
    );
    e.sk_err = sk_err;
    e
}

fn run(table: &mut FlowTable, events: &[Event]) -> Vec<Signal> {
    let mut out = Vec::new();
    for e in events {
        table.apply(e, &ReasonNames::default(), &mut out);
    }
    out
}

fn key(cookie: u64) -> FlowKey {
    FlowKey { netns: 1, cookie }
}

#[test]
fn client_lifecycle_keeps_one_cookie_and_an_ordered_timeline() {
    let mut t = FlowTable::new(FlowConfig::default());
    let stats = SockStats {
        srtt_us: 50,
        data_segs_out: 10,
        total_retrans: 1,
        ..SockStats::default()
    };
    let mut first = state(100, 7, 2, None);
    first.process = Some(Process {
        pid: 42,
        comm: "psql".into(),
    });
    let signals = run(
        &mut t,
        &[
            first,
            ev(
                110,
                Some(CLIENT),
                Detail::Connect {
                    stats: SockStats::default(),
                },
            ),
            ev(
                300,
                Some(CLIENT),
                Detail::Established {
                    role: Role::Client,
                    stats,
                },
            ),
            ev(
                900,
                Some(CLIENT),
                Detail::Retransmit {
                    state: TcpState::ESTABLISHED,
                    err: 0,
                },
            ),
            state(2000, 1, 4, None),
            state(2100, 4, 7, None),
            ev(
                2200,
                Some(CLIENT),
                Detail::Destroy {
                    state: TcpState::CLOSE,
                },
            ),
        ],
    );
    let f = t.get(&key(CLIENT)).unwrap();
    assert_eq!(f.role, Some(Role::Client));
    assert_eq!(f.process.as_ref().map(|p| p.pid), Some(42));
    assert_eq!(f.handshake_ns, Some(200));
    assert_eq!(f.data_retransmits, 1);
    assert_eq!(f.close, Some(CloseCause::Fin));
    let kinds: Vec<&str> = f.timeline.iter().map(TimelineEntry::kind_name).collect();
    assert_eq!(
        kinds,
        [
            "state_change",
            "connect",
            "active_established",
            "retransmit",
            "state_change",
            "state_change",
            "destroy"
        ]
    );
    assert!(f
        .timeline
        .iter()
        .zip(f.timeline.iter().skip(1))
        .all(|(a, b)| a.offset_ns <= b.offset_ns));
    assert!(signals
        .iter()
        .any(|s| matches!(s, Signal::Connection { cookie: CLIENT, .. })));
    assert!(signals.iter().any(|s| matches!(
        s,
        Signal::DataSegments {
            sent: 10,
            retransmitted: 1,
            ..
        }
    )));
    assert!(!signals
        .iter()
        .any(|s| matches!(s, Signal::ConnectFailed { .. })));
}

#[test]
fn refused_and_timed_out_connects_are_typed() {
    for (sk_err, rst, want, cause) in [
        (
            Some(111),
            true,
            CloseCause::Refused,
            ConnectFailure::Refused,
        ),
        (
            Some(110),
            false,
            CloseCause::Timeout,
            ConnectFailure::Timeout,
        ),
        (
            Some(113),
            false,
            CloseCause::Unreachable,
            ConnectFailure::Unreachable,
        ),
        (None, true, CloseCause::Refused, ConnectFailure::Refused),
    ] {
        let mut t = FlowTable::new(FlowConfig::default());
        let mut events = vec![
            state(0, 7, 2, None),
            ev(
                1,
                Some(CLIENT),
                Detail::Connect {
                    stats: SockStats::default(),
                },
            ),
            ev(
                1_500_000_000,
                Some(CLIENT),
                Detail::Retransmit {
                    state: TcpState::SYN_SENT,
                    err: 0,
                },
            ),
        ];
        if rst {
            events.push(ev(
                1_600_000_000,
                Some(CLIENT),
                Detail::RstReceived {
                    state: TcpState::SYN_SENT,
                },
            ));
        }
        events.push(state(1_700_000_000, 2, 7, sk_err));
        let signals = run(&mut t, &events);
        let f = t.get(&key(CLIENT)).unwrap();
        assert_eq!(f.close, Some(want), "{sk_err:?}");
        assert_eq!(f.syn_retransmits, 1);
        assert_eq!(f.syn_retransmit_intervals_ms, vec![1500]);
        assert!(signals
            .iter()
            .any(|s| matches!(s, Signal::ConnectFailed { cause: c, .. } if *c == cause)));
        assert!(signals.iter().any(|s| matches!(
            s,
            Signal::Retransmit {
                kind: RetransmitKind::Syn { since_first_syn: Some(since) },
                ..
            } if since.as_millis() == 1500
        )));
    }
}

#[test]
fn rst_for_a_closed_port_makes_a_signal_but_no_flow() {
    let mut t = FlowTable::new(FlowConfig::default());
    let mut e = ev(
        5,
        None,
        Detail::RstSent {
            state: TcpState(0),
            reason: Some(1),
            no_socket: true,
        },
    );
    e.local = "10.0.0.1:9".parse().unwrap();
    let signals = run(&mut t, &[e]);
    assert!(t.is_empty());
    assert!(matches!(
        &signals[..],
        [Signal::Rst {
            direction: RstDirection::Sent,
            local_port: Some(9),
            cookie: None,
            ..
        }]
    ));
}

#[test]
fn reset_after_established_is_flagged() {
    let mut t = FlowTable::new(FlowConfig::default());
    let signals = run(
        &mut t,
        &[
            ev(
                1,
                Some(CLIENT),
                Detail::Connect {
                    stats: SockStats::default(),
                },
            ),
            ev(
                2,
                Some(CLIENT),
                Detail::Established {
                    role: Role::Client,
                    stats: SockStats::default(),
                },
            ),
            ev(
                3,
                Some(CLIENT),
                Detail::RstReceived {
                    state: TcpState::ESTABLISHED,
                },
            ),
            state(4, 1, 7, Some(104)),
        ],
    );
    assert_eq!(
        t.get(&key(CLIENT)).unwrap().close,
        Some(CloseCause::RstReceived)
    );
    assert!(signals.iter().any(|s| matches!(
        s,
        Signal::Rst {
            after_established: true,
            ..
        }
    )));
}

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
        let connect = ev(
            c,
            Some(c),
            Detail::Connect {
                stats: SockStats::default(),
            },
        );
        t.apply(&connect, &reasons, &mut out);
        if c % 2 == 0 {
            let mut close = state(c, 1, 7, None);
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
    // Closed flows went first: every open flow among the last ones is still here.
    assert!(t.get(&key(199_999)).is_some());
    assert!(t.get(&key(199_997)).is_some());
}

#[test]
fn closed_flows_expire_after_retention() {
    let cfg = FlowConfig {
        retain_closed: std::time::Duration::from_secs(60),
        ..FlowConfig::default()
    };
    let mut t = FlowTable::new(cfg);
    run(
        &mut t,
        &[
            ev(
                1,
                Some(CLIENT),
                Detail::Connect {
                    stats: SockStats::default(),
                },
            ),
            state(1_000, 2, 7, Some(111)),
        ],
    );
    assert_eq!(t.expire(59_000_000_000), 0);
    assert_eq!(t.expire(61_000_000_000), 1);
    assert!(t.is_empty());
    assert_eq!(t.stats().expired, 1);
}

#[test]
fn preexisting_flows_are_marked() {
    let mut t = FlowTable::new(FlowConfig::default());
    let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let remote: SocketAddr = "127.0.0.1:6000".parse().unwrap();
    t.insert_existing(key(9), local, remote, TcpState::ESTABLISHED, 10);
    let f = t.get(&key(9)).unwrap();
    assert!(f.preexisting);
    assert_eq!(f.state, TcpState::ESTABLISHED);
}

#[test]
fn a_socket_first_seen_at_destroy_is_not_a_flow() {
    let mut t = FlowTable::new(FlowConfig::default());
    let signals = run(
        &mut t,
        &[ev(
            1,
            Some(99),
            Detail::Destroy {
                state: TcpState::LISTEN,
            },
        )],
    );
    assert!(t.is_empty());
    assert!(signals.is_empty());
}

#[test]
fn an_abort_that_closes_before_its_rst_is_a_reset_not_a_fin() {
    // SO_LINGER 0: tcp_disconnect moves the socket to CLOSE, then sends the RST.
    let mut t = FlowTable::new(FlowConfig::default());
    let signals = run(
        &mut t,
        &[
            state(100, 7, 2, None),
            state(200, 2, 1, None),
            state(300, 1, 7, None),
            ev(
                301,
                Some(CLIENT),
                Detail::RstSent {
                    state: TcpState::CLOSE,
                    reason: Some(1),
                    no_socket: false,
                },
            ),
        ],
    );
    assert_eq!(
        t.get(&key(CLIENT)).unwrap().close,
        Some(CloseCause::RstSent)
    );
    let failures: Vec<_> = signals
        .iter()
        .filter_map(|s| match s {
            Signal::ConnectFailed { cause, .. } => Some(*cause),
            _ => None,
        })
        .collect();
    assert_eq!(failures, vec![ConnectFailure::Reset], "reported once");
}

#[test]
fn failures_are_counted_even_for_flows_evicted_before_they_closed() {
    let mut t = FlowTable::new(FlowConfig {
        max_flows: 16,
        ..FlowConfig::default()
    });
    let with_cookie = |mut e: Event, cookie: u64| {
        e.cookie = Some(cookie);
        e
    };
    let mut events = Vec::new();
    for c in 100..140 {
        events.push(with_cookie(state(c, 7, 2, None), c));
    }
    for c in 100..140 {
        events.push(with_cookie(
            state(1_000 + c, 2, 7, Some(libc::ETIMEDOUT)),
            c,
        ));
    }
    let signals = run(&mut t, &events);
    assert!(t.evicted() >= 24, "{}", t.evicted());
    let timeouts = signals
        .iter()
        .filter(|s| {
            matches!(
                s,
                Signal::ConnectFailed {
                    cause: ConnectFailure::Timeout,
                    ..
                }
            )
        })
        .count();
    assert_eq!(timeouts, 40);
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
        assert_eq!(flow::failure_cause(Some(err), false), cause, "errno {err}");
    }
}
