use probe_common::CloseClass;

use super::*;
use crate::{
    event::{Detail, FlowCounts, FlowSnapshot, Process, Role, SockStats},
    pipeline::signal::{ConnectFailure, RetransmitKind, RstDirection},
};

pub(super) const CLIENT: u64 = 7;
pub(super) const START: u64 = 1_000;

/// A record of flow `cookie` without flow state.
pub(super) fn bare(ts_ns: u64, cookie: Option<u64>, detail: Detail) -> Event {
    Event {
        ts_ns,
        cookie,
        netns_cookie: Some(1),
        local: "10.0.0.1:40000".parse().unwrap(),
        remote: "10.0.0.2:5432".parse().unwrap(),
        process: None,
        sk_err: None,
        cgroup_id: None,
        flow: None,
        stats: None,
        detail,
    }
}

/// A record of a client flow started at `START`, with the kernel's counts after this hit.
pub(super) fn rec(
    ts_ns: u64,
    detail: Detail,
    established: Option<u64>,
    counts: FlowCounts,
) -> Event {
    let mut e = bare(ts_ns, Some(CLIENT), detail);
    e.process = Some(Process {
        pid: 42,
        comm: "psql".into(),
    });
    e.flow = Some(FlowSnapshot {
        start_ns: START,
        established_ns: established,
        role: Some(Role::Client),
        counts,
        last_rst_reason: None,
        late: false,
    });
    e
}

pub(super) fn end(
    ts_ns: u64,
    from: u8,
    sk_err: i32,
    established: Option<u64>,
    counts: FlowCounts,
) -> Event {
    let mut e = rec(
        ts_ns,
        Detail::FlowEnd {
            from: TcpState(from),
        },
        established,
        counts,
    );
    e.sk_err = Some(sk_err);
    e.stats = Some(SockStats {
        srtt_us: 50,
        min_rtt_us: 40,
        data_segs_out: 10,
        total_retrans: 1,
        ..SockStats::default()
    });
    e
}

pub(super) fn syn_retransmit(ts_ns: u64, count: u32) -> Event {
    rec(
        ts_ns,
        Detail::Retransmit {
            state: TcpState::SYN_SENT,
            err: None,
        },
        None,
        FlowCounts {
            syn_retrans: count,
            ..FlowCounts::default()
        },
    )
}

pub(super) fn run(table: &mut FlowTable, events: &[Event]) -> Vec<Signal> {
    let mut out = Vec::new();
    for e in events {
        table.apply(e, &ReasonNames::default(), &mut out);
    }
    out
}

pub(super) fn key(cookie: u64) -> FlowKey {
    FlowKey { netns: 1, cookie }
}

pub(super) fn count(signals: &[Signal], pred: impl Fn(&Signal) -> bool) -> usize {
    signals.iter().filter(|s| pred(s)).count()
}

#[test]
fn a_summary_alone_tells_a_healthy_flows_story() {
    let mut t = FlowTable::new(FlowConfig::default());
    let est = START + 300;
    let signals = run(
        &mut t,
        &[end(5_000, 4, 0, Some(est), FlowCounts::default())],
    );
    let f = t.get(&key(CLIENT)).unwrap();
    assert_eq!(f.role, Some(Role::Client));
    assert_eq!(f.process.as_ref().map(|p| p.pid), Some(42));
    assert_eq!(f.start_ns, START);
    assert_eq!(f.handshake_ns.map(std::num::NonZeroU64::get), Some(300));
    assert_eq!(f.close, Some(CloseCause::Fin));
    assert_eq!((f.srtt_us, f.min_rtt_us), (50, Some(40)));
    let kinds: Vec<&str> = f.timeline.iter().map(|e| e.kind_name()).collect();
    assert_eq!(kinds, ["connect", "active_established", "flow_end"]);
    let offsets: Vec<u64> = f.timeline.iter().map(|e| e.offset_ns).collect();
    assert_eq!(offsets, [0, 300, 4_000]);
    assert_eq!(
        count(&signals, |s| matches!(
            s,
            Signal::Connection {
                role: Role::Client,
                ts_ns: START,
                ..
            }
        )),
        1
    );
    assert!(signals
        .iter()
        .any(|s| matches!(s, Signal::Handshake { duration, .. } if duration.as_nanos() == 300)));
    assert!(signals.iter().any(|s| matches!(s, Signal::Rtt { .. })));
    assert!(signals
        .iter()
        .any(|s| matches!(s, Signal::DataSegments { sent: 10, .. })));
    assert!(!signals
        .iter()
        .any(|s| matches!(s, Signal::ConnectFailed { .. })));
}

#[test]
fn detail_records_build_one_ordered_timeline_under_one_cookie() {
    let mut t = FlowTable::new(FlowConfig::default());
    let none = FlowCounts::default();
    let est = Some(START + 200);
    let signals = run(
        &mut t,
        &[
            rec(START, Detail::Connect, None, none),
            rec(
                START + 200,
                Detail::Established { role: Role::Client },
                est,
                none,
            ),
            rec(
                START + 500,
                Detail::StateChange {
                    from: TcpState::ESTABLISHED,
                    to: TcpState(4),
                },
                est,
                none,
            ),
            end(START + 900, 5, 0, est, none),
        ],
    );
    let f = t.get(&key(CLIENT)).unwrap();
    let kinds: Vec<&str> = f.timeline.iter().map(|e| e.kind_name()).collect();
    assert_eq!(
        kinds,
        ["connect", "active_established", "state_change", "flow_end"]
    );
    let offsets: Vec<u64> = f.timeline.iter().map(|e| e.offset_ns).collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    // Detail records do not add facts of their own: one connection, one handshake.
    assert_eq!(
        count(&signals, |s| matches!(s, Signal::Connection { .. })),
        1
    );
    assert_eq!(
        count(&signals, |s| matches!(s, Signal::Handshake { .. })),
        1
    );
}

#[test]
fn refused_and_timed_out_connects_are_typed() {
    for (sk_err, rst, want, cause) in [
        (111, 1, CloseCause::Refused, ConnectFailure::Refused),
        (110, 0, CloseCause::Timeout, ConnectFailure::Timeout),
        (113, 0, CloseCause::Unreachable, ConnectFailure::Unreachable),
        (0, 1, CloseCause::Refused, ConnectFailure::Refused),
    ] {
        let mut t = FlowTable::new(FlowConfig::default());
        let counts = FlowCounts {
            syn_retrans: 1,
            rst_received: rst,
            ..FlowCounts::default()
        };
        let last = end(START + 1_700_000_000, 2, sk_err, None, counts);
        // `watch` classifies the end record alone, as the table does.
        assert_eq!(CloseCause::of_end(&last), Some(want), "{sk_err}");
        let signals = run(&mut t, &[syn_retransmit(START + 1_500_000_000, 1), last]);
        let f = t.get(&key(CLIENT)).unwrap();
        assert_eq!(f.close, Some(want), "{sk_err}");
        // `--failed` and connect_failures_total: one vocabulary.
        assert_eq!(want.failure(), Some(cause));
        assert_eq!(f.syn_retransmits, 1);
        assert_eq!(f.syn_retransmit_intervals_ms(), [1500]);
        assert_eq!(
            count(
                &signals,
                |s| matches!(s, Signal::ConnectFailed { cause: c, .. } if *c == cause)
            ),
            1
        );
        assert_eq!(
            count(&signals, |s| matches!(
                s,
                Signal::Retransmit {
                    kind: RetransmitKind::Syn { since_first_syn: Some(since) },
                    ..
                } if since.as_millis() == 1500
            )),
            1,
            "the SYN retransmit once, from its own record"
        );
        assert_eq!(
            count(&signals, |s| matches!(
                s,
                Signal::Rst {
                    direction: RstDirection::Received,
                    ..
                }
            )),
            rst as usize,
            "the RST once, from the summary"
        );
        assert_eq!(
            f.close,
            Some(CloseClass::of(probe_common::role::CLIENT, false, sk_err, 0, rst).into())
        );
    }
}

/// Every close but a FIN is a failure `--failed` lists and connect_failures_total counts;
/// a reset is `cause="reset"` whichever side sent it.
#[test]
fn failures_have_one_vocabulary() {
    for (close, cause) in [
        (CloseCause::RstReceived, Some(ConnectFailure::Reset)),
        (CloseCause::RstSent, Some(ConnectFailure::Reset)),
        (CloseCause::Abandoned, Some(ConnectFailure::Abandoned)),
        (CloseCause::Fin, None),
    ] {
        assert_eq!(close.failure(), cause, "{}", close.name());
    }
    let established = Some(START + 1_000);
    let reset = FlowCounts {
        rst_received: 1,
        ..FlowCounts::default()
    };
    let quiet = FlowCounts::default();
    let of = |counts| CloseCause::of_end(&end(START + 2_000, 1, 0, established, counts));
    assert_eq!(of(reset), Some(CloseCause::RstReceived));
    assert_eq!(of(quiet), Some(CloseCause::Fin));
}

#[test]
fn a_lost_record_only_delays_its_facts() {
    let mut t = FlowTable::new(FlowConfig::default());
    // The first SYN retransmit's record was lost: the second carries both.
    let counts = FlowCounts {
        syn_retrans: 2,
        ..FlowCounts::default()
    };
    let signals = run(
        &mut t,
        &[
            syn_retransmit(START + 3_000_000_000, 2),
            end(START + 4_000_000_000, 2, 110, None, counts),
            // A duplicate of the summary adds nothing.
            end(START + 4_000_000_000, 2, 110, None, counts),
        ],
    );
    let syn = count(&signals, |s| {
        matches!(
            s,
            Signal::Retransmit {
                kind: RetransmitKind::Syn { .. },
                ..
            }
        )
    });
    assert_eq!(syn, 2);
    assert_eq!(
        count(&signals, |s| matches!(s, Signal::ConnectFailed { .. })),
        1
    );
    assert_eq!(t.get(&key(CLIENT)).unwrap().syn_retransmits, 2);
}

#[test]
fn held_back_data_retransmits_arrive_with_the_next_record() {
    let mut t = FlowTable::new(FlowConfig::default());
    let est = Some(START + 10);
    let counts = |data, rtos| FlowCounts {
        data_retrans: data,
        rtos,
        ..FlowCounts::default()
    };
    let mut report = rec(
        START + 100,
        Detail::Retransmit {
            state: TcpState::ESTABLISHED,
            err: None,
        },
        est,
        counts(5, 1),
    );
    report.stats = Some(SockStats {
        data_segs_out: 100,
        total_retrans: 5,
        ..SockStats::default()
    });
    let signals = run(
        &mut t,
        &[report, end(START + 5_000, 4, 0, est, counts(7, 2))],
    );
    let data = count(&signals, |s| {
        matches!(
            s,
            Signal::Retransmit {
                kind: RetransmitKind::Data,
                ..
            }
        )
    });
    let rto = count(&signals, |s| {
        matches!(
            s,
            Signal::Retransmit {
                kind: RetransmitKind::Rto,
                ..
            }
        )
    });
    assert_eq!((data, rto), (7, 2));
    let f = t.get(&key(CLIENT)).unwrap();
    assert_eq!((f.data_retransmits, f.rtos), (7, 2));
    assert!(signals.iter().any(|s| matches!(
        s,
        Signal::DataSegments {
            sent: 100,
            retransmitted: 5,
            ..
        }
    )));
}

#[test]
fn rst_for_a_closed_port_makes_a_signal_but_no_flow() {
    let mut t = FlowTable::new(FlowConfig::default());
    let mut e = bare(
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
fn a_record_without_flow_state_is_not_a_new_flow() {
    // A time-wait socket's RST, a SYN-ACK retransmit of a request socket: signals, no flow.
    let mut t = FlowTable::new(FlowConfig::default());
    let signals = run(
        &mut t,
        &[
            bare(
                1,
                Some(99),
                Detail::RstSent {
                    state: TcpState(6),
                    reason: None,
                    no_socket: false,
                },
            ),
            bare(2, Some(98), Detail::RetransmitSynack),
        ],
    );
    assert!(t.is_empty());
    assert_eq!(signals.len(), 2);
}

#[test]
fn reset_after_established_is_flagged() {
    let mut t = FlowTable::new(FlowConfig::default());
    let counts = FlowCounts {
        rst_received: 1,
        ..FlowCounts::default()
    };
    let signals = run(&mut t, &[end(4, 1, 104, Some(START + 2), counts)]);
    assert_eq!(
        t.get(&key(CLIENT)).unwrap().close,
        Some(CloseCause::RstReceived)
    );
    assert!(signals.iter().any(|s| matches!(
        s,
        Signal::Rst {
            after_established: true,
            direction: RstDirection::Received,
            ..
        }
    )));
    assert!(signals.iter().any(|s| matches!(
        s,
        Signal::ConnectFailed {
            cause: ConnectFailure::Reset,
            ..
        }
    )));
}

#[test]
fn an_abort_that_closes_before_its_rst_is_a_reset_not_a_fin() {
    // SO_LINGER 0: tcp_disconnect moves the socket to CLOSE (its summary), then sends the RST.
    let mut t = FlowTable::new(FlowConfig::default());
    let est = Some(START + 100);
    let sent = FlowCounts {
        rst_sent: 1,
        ..FlowCounts::default()
    };
    let signals = run(
        &mut t,
        &[
            end(300, 1, 0, est, FlowCounts::default()),
            rec(
                301,
                Detail::RstSent {
                    state: TcpState::CLOSE,
                    reason: Some(1),
                    no_socket: false,
                },
                est,
                sent,
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
    assert_eq!(
        count(&signals, |s| matches!(
            s,
            Signal::Rst {
                direction: RstDirection::Sent,
                ..
            }
        )),
        1
    );
}

#[test]
fn a_time_wait_rst_after_a_fin_close_is_not_a_reset_of_the_flow() {
    let mut t = FlowTable::new(FlowConfig::default());
    let est = Some(START + 100);
    let signals = run(
        &mut t,
        &[
            end(300, 5, 0, est, FlowCounts::default()),
            bare(
                400,
                Some(CLIENT),
                Detail::RstSent {
                    state: TcpState(6),
                    reason: None,
                    no_socket: false,
                },
            ),
        ],
    );
    let f = t.get(&key(CLIENT)).unwrap();
    assert_eq!(f.close, Some(CloseCause::Fin));
    assert_eq!(f.rst_sent, 1);
    assert!(!signals
        .iter()
        .any(|s| matches!(s, Signal::ConnectFailed { .. })));
}
