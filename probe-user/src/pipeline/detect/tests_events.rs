//! Event kinds (typed connect failures, resets after established, SYN retries, kernel
//! repeat-RST), the scope cap, time handling and determinism.
use std::time::Duration;

use super::tests::{client, conn, peer, rst, spread, Harness, S, T0};
use super::*;
use crate::pipeline::signal::Peer;
use crate::{
    event::RepeatScope,
    pipeline::signal::{ConnectFailure, RetransmitKind, RstDirection, Signal},
};

fn failed(ts: u64, peer: Peer, cookie: u64, cause: ConnectFailure) -> Signal {
    Signal::ConnectFailed {
        ts_ns: ts,
        peer,
        local_port: None,
        cookie,
        role: Some(crate::event::Role::Client),
        cause,
    }
}

fn syn_retry(ts: u64, peer: Peer, cookie: u64, since_ms: u64) -> Signal {
    Signal::Retransmit {
        ts_ns: ts,
        peer,
        cookie: Some(cookie),
        kind: RetransmitKind::Syn {
            since_first_syn: Some(Duration::from_millis(since_ms)),
        },
    }
}

fn repeat(ts: u64, scope: RepeatScope, cookie: Option<u64>, count: u32) -> Signal {
    Signal::RepeatRst {
        ts_ns: ts,
        scope,
        peer: Some(peer(9)),
        local_port: Some(8080),
        netns: 0,
        cookie,
        count,
    }
}

#[test]
fn typed_connect_failures_raise_one_anomaly_per_kind_and_peer() {
    let (a, b, c) = (peer(1), peer(2), peer(3));
    let mut h = Harness::new(DetectConfig::default());
    h.run(1, |_, out| {
        out.push(failed(T0 + 10, a, 1, ConnectFailure::Refused));
        out.push(failed(T0 + 20, a, 2, ConnectFailure::Refused));
        out.push(failed(T0 + 30, b, 3, ConnectFailure::Timeout));
        out.push(failed(T0 + 40, c, 4, ConnectFailure::Unreachable));
        out.push(failed(T0 + 50, a, 5, ConnectFailure::Refused));
        out.push(failed(T0 + 60, a, 5, ConnectFailure::Refused));
    });
    let raised = h.raised();
    let got: Vec<_> = raised
        .iter()
        .map(|(_, a)| (a.id, a.kind, a.scope))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, AnomalyKind::ConnectRefused, Scope::Peer(a)),
            (2, AnomalyKind::ConnectTimeout, Scope::Peer(b)),
            (3, AnomalyKind::ConnectUnreachable, Scope::Peer(c)),
        ]
    );
    assert_eq!(
        raised[0].1.hint,
        "nothing listening or the service is refusing connections (RST to SYN)"
    );
    assert_eq!(
        raised[1].1.hint,
        "SYNs unanswered: backend down or firewall dropping SYNs"
    );
    assert_eq!(
        raised[2].1.hint,
        "no route to the backend (ICMP unreachable)"
    );
    assert_eq!(raised[0].1.start_ns, T0 + 10);
    // The active one grew: evidence without duplicates, peak = occurrences in the window.
    let refused = h.d.active().find(|x| x.id == 1).unwrap();
    assert_eq!(refused.evidence, vec![1, 2, 5]);
    assert_eq!(refused.peak_rate, 4.0);
    assert_eq!(refused.last_ns, T0 + 60);
    let updated = h.updated();
    assert_eq!(updated.len(), 1);
    assert_eq!((updated[0].1.id, updated[0].1.peak_rate), (1, 4.0));

    // event_clear_after (10) windows without an occurrence: windows 1..=10.
    h.run(12, |_, _| {});
    let cleared = h.cleared();
    assert_eq!(cleared.len(), 3);
    assert!(cleared
        .iter()
        .all(|(sec, x)| *sec == 10 && x.end_ns == Some(T0 + 11 * S)));
    assert_eq!(h.d.active().count(), 0);

    // A new occurrence in the quiet scope is a new anomaly with a higher id.
    h.run(1, |sec, out| {
        out.push(failed(T0 + sec * S, a, 9, ConnectFailure::Refused))
    });
    let raised = h.raised();
    assert_eq!(raised.len(), 4);
    assert_eq!(
        (raised[3].1.id, raised[3].1.kind),
        (4, AnomalyKind::ConnectRefused)
    );
    assert_eq!(h.d.stats().raised(AnomalyKind::ConnectRefused), 2);
}

#[test]
fn occurrences_keep_an_event_anomaly_active() {
    let a = peer(1);
    let mut h = Harness::new(DetectConfig::default());
    // One refused connection every 8 s for 80 s: never 10 quiet windows in a row.
    h.run(92, |sec, out| {
        if sec % 8 == 0 && sec <= 80 {
            out.push(failed(T0 + sec * S, a, sec, ConnectFailure::Refused));
        }
    });
    assert_eq!(h.raised().len(), 1);
    assert_eq!(h.cleared().len(), 1);
    assert_eq!(h.cleared()[0].0, 90);
    assert_eq!(h.cleared()[0].1.last_ns, T0 + 80 * S);
}

#[test]
fn reset_after_established_is_per_peer() {
    let a = peer(1);
    let mut h = Harness::new(DetectConfig::default());
    h.run(1, |_, out| {
        out.push(rst(T0 + 1, a, 1));
        out.push(Signal::Rst {
            ts_ns: T0 + 2,
            direction: RstDirection::Received,
            peer: client(7),
            local_port: Some(8080),
            cookie: Some(2),
            reason: None,
            after_established: true,
            connection_ns: None,
        });
    });
    let raised = h.raised();
    assert_eq!(raised.len(), 1);
    let an = raised[0].1;
    assert_eq!(
        (an.kind, an.scope),
        (AnomalyKind::ResetAfterEstablished, Scope::Peer(client(7)))
    );
    assert_eq!(an.evidence, vec![2]);
    assert_eq!(
        an.detail,
        format!(
            "{} reset an established connection (RST received)",
            client(7)
        )
    );
    assert!(an
        .hint
        .starts_with("the peer reset established connections"));
}

/// An RST this host sent on an established connection is this host's doing: a kind of its
/// own, and the hint follows the kernel's reason (the local app aborted, or the kernel answered
/// the peer's segment), never "the peer reset".
#[test]
fn reset_sent_says_who_reset_whom() {
    let mut h = Harness::new(DetectConfig::default());
    let sent = |ts, n: u8, cookie, reason: &str| Signal::Rst {
        ts_ns: ts,
        direction: RstDirection::Sent,
        peer: client(n),
        local_port: Some(8080),
        cookie: Some(cookie),
        reason: Some(reason.into()),
        after_established: true,
        connection_ns: None,
    };
    h.run(1, |_, out| {
        out.push(sent(T0 + 1, 7, 1, "TCP_STATE"));
        out.push(sent(T0 + 2, 8, 2, "TCP_INVALID_ACK_SEQUENCE"));
        out.push(sent(T0 + 3, 9, 3, "SOMETHING_NEWER"));
    });
    let raised = h.raised();
    assert_eq!(raised.len(), 3);
    for (_, an) in &raised {
        assert_eq!(an.kind, AnomalyKind::LocalResetEstablished);
        assert!(!an.hint.contains("peer reset"), "{}", an.hint);
    }
    let by_peer = |n| {
        raised
            .iter()
            .map(|(_, a)| *a)
            .find(|a| a.scope == Scope::Peer(client(n)))
            .expect("raised")
    };
    let abort = by_peer(7);
    assert!(
        abort.hint.starts_with("the local application aborted"),
        "{}",
        abort.hint
    );
    assert_eq!(
        abort.detail,
        format!(
            "the local application aborted the connection to {} (kernel reason TCP_STATE: close \
             with SO_LINGER 0, or disconnect)",
            client(7)
        )
    );
    assert!(by_peer(8)
        .hint
        .contains("answering segments it could not accept"));
    assert!(by_peer(9)
        .detail
        .ends_with("(kernel reason SOMETHING_NEWER)"));
}

#[test]
fn syn_retry_only_after_more_than_a_second() {
    let (a, b) = (peer(1), peer(2));
    let mut h = Harness::new(DetectConfig::default());
    h.run(1, |_, out| {
        out.push(syn_retry(T0 + 1, a, 1, 1000));
        out.push(syn_retry(T0 + 2, a, 2, 999));
        out.push(Signal::Retransmit {
            ts_ns: T0 + 3,
            peer: b,
            cookie: Some(3),
            kind: RetransmitKind::Syn {
                since_first_syn: Some(Duration::from_micros(1_000_001)),
            },
        });
    });
    let raised = h.raised();
    assert_eq!(raised.len(), 1);
    assert_eq!(
        (raised[0].1.kind, raised[0].1.scope),
        (AnomalyKind::SynRetry, Scope::Peer(b))
    );
    h.run(1, |sec, out| out.push(syn_retry(T0 + sec * S, b, 4, 3000)));
    assert_eq!(h.raised().len(), 1);
    assert_eq!(h.d.active().next().unwrap().evidence, vec![3, 4]);
    assert_eq!(h.d.stats().raised(AnomalyKind::SynRetry), 1);
}

#[test]
fn kernel_repeat_rst_raises_at_once_per_scope() {
    let mut h = Harness::new(DetectConfig::default());
    h.run(1, |_, out| {
        out.push(repeat(T0 + 1, RepeatScope::Socket, Some(77), 2));
        out.push(repeat(T0 + 2, RepeatScope::Peer, Some(78), 10));
        out.push(repeat(T0 + 3, RepeatScope::LocalPort, Some(79), 20));
        out.push(repeat(T0 + 4, RepeatScope::Peer, Some(80), 25));
        out.push(repeat(T0 + 5, RepeatScope::Socket, None, 2));
    });
    let raised = h.raised();
    let scopes: Vec<_> = raised.iter().map(|(_, a)| (a.kind, a.scope)).collect();
    assert_eq!(
        scopes,
        vec![
            (AnomalyKind::KernelRepeatRst, Scope::Socket(77)),
            (AnomalyKind::KernelRepeatRst, Scope::Peer(peer(9))),
            (AnomalyKind::KernelRepeatRst, Scope::LocalPort(0, 8080)),
        ]
    );
    assert_eq!(raised[1].1.peak_rate, 10.0);
    let peer_anomaly =
        h.d.active()
            .find(|a| a.scope == Scope::Peer(peer(9)))
            .unwrap();
    assert_eq!(
        (peer_anomaly.peak_rate, peer_anomaly.evidence.clone()),
        (25.0, vec![78, 80])
    );
    assert!(
        peer_anomaly.detail.contains("25 RSTs"),
        "{}",
        peer_anomaly.detail
    );
    assert_eq!(h.updated().len(), 1);
    assert_eq!(h.d.stats().signals_unscoped, 1);
    // The same scope again while active: still one anomaly.
    h.run(1, |_, out| {
        out.push(repeat(T0 + S + 1, RepeatScope::Socket, Some(77), 2))
    });
    assert_eq!(h.raised().len(), 3);
    h.run(11, |_, _| {});
    assert_eq!(h.cleared().len(), 3);
}

#[test]
fn scope_cap_evicts_the_least_recently_active_scope() {
    let cfg = DetectConfig {
        max_scopes: 16,
        ..DetectConfig::default()
    };
    let mut h = Harness::new(cfg);
    h.run(1, |_, out| {
        for n in 1..=16 {
            out.push(conn(T0 + u64::from(n), peer(n), None));
        }
        out.push(conn(T0 + 100, peer(1), None));
        out.push(conn(T0 + 101, peer(17), None));
    });
    let d = &h.d;
    assert_eq!(d.stats().scopes_tracked, 16);
    assert_eq!(d.stats().scopes_evicted, 1);
    assert!(d.tracks(&Scope::Peer(peer(1))), "touched last, kept");
    assert!(
        !d.tracks(&Scope::Peer(peer(2))),
        "least recently active, evicted"
    );
    assert!(d.tracks(&Scope::Peer(peer(17))));

    // Many more scopes: memory stays at the cap.
    h.run(1, |sec, out| {
        for n in 0..=255u8 {
            out.push(conn(T0 + sec * S + u64::from(n), client(n), Some(9000)));
        }
    });
    let stats = h.d.stats();
    assert_eq!(stats.scopes_tracked, 16);
    // 256 client scopes and the port scope, each evicting one.
    assert_eq!(stats.scopes_evicted, 1 + 257);

    // Scopes with an active anomaly are never evicted: with all 16 held, a new one is dropped.
    h.run(1, |sec, out| {
        for n in 100..116 {
            out.push(failed(
                T0 + sec * S + u64::from(n),
                peer(n),
                u64::from(n),
                ConnectFailure::Refused,
            ));
        }
        out.push(failed(
            T0 + sec * S + 500,
            peer(200),
            200,
            ConnectFailure::Refused,
        ));
    });
    let stats = h.d.stats();
    assert_eq!(stats.scopes_tracked, 16);
    assert_eq!(stats.scopes_rejected, 1);
    assert_eq!(stats.active, 16);
    assert!(!h.d.tracks(&Scope::Peer(peer(200))));
    // Once they clear, their scopes can go.
    h.run(10, |_, _| {});
    assert_eq!(h.d.active().count(), 0);
    h.run(1, |sec, out| {
        out.push(failed(
            T0 + sec * S,
            peer(200),
            200,
            ConnectFailure::Refused,
        ))
    });
    assert!(h.d.tracks(&Scope::Peer(peer(200))));
    assert_eq!(h.d.stats().active, 1);
}

#[test]
fn recent_is_bounded_and_ids_increase() {
    let cfg = DetectConfig {
        recent_len: 2,
        evidence_len: 2,
        ..DetectConfig::default()
    };
    let mut h = Harness::new(cfg);
    h.run(1, |_, out| {
        for n in 1..=3u8 {
            for c in 0..4 {
                out.push(failed(
                    T0 + u64::from(n) * 10 + c,
                    peer(n),
                    c,
                    ConnectFailure::Timeout,
                ));
            }
        }
    });
    h.run(10, |_, _| {});
    let recent: Vec<_> = h.d.recent().map(|a| a.id).collect();
    assert_eq!(recent, vec![2, 3]);
    assert!(h.d.recent().all(|a| a.evidence == vec![0, 1]));
    let ids: Vec<u64> = h.raised().iter().map(|(_, a)| a.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn time_comes_from_signals_and_ticks_only() {
    let a = peer(1);
    let mut d = Detectors::new(DetectConfig::default());
    // Signals alone close windows: a storm window followed by a later signal raises.
    for ts in spread(0, 50) {
        d.observe(&rst(ts, a, ts));
    }
    assert_eq!(d.active().count(), 0);
    d.observe(&rst(T0 + S + 5, a, 1));
    assert_eq!(d.active().count(), 1);
    // A tick in the past or the same window changes nothing; repeated ticks are idempotent.
    let changes = d.tick(T0 + S + 10);
    assert_eq!(changes.len(), 1);
    assert!(d.tick(T0).is_empty());
    assert!(d.tick(T0 + S + 20).is_empty());
    // A late signal (from a closed window) counts into the open one.
    d.observe(&rst(T0 + 10, a, 2));
    // A long gap: everything clears on the first tick after it, without visiting each window.
    let changes = d.tick(T0 + 1_000_000_000 * S);
    assert_eq!(changes.len(), 1);
    assert!(matches!(&changes[0], AnomalyChange::Cleared(x) if x.end_ns == Some(T0 + 4 * S)));
    assert_eq!(d.stats().active, 0);
}

#[test]
fn same_stream_same_changes() {
    let run = || {
        let mut h = Harness::new(DetectConfig::default());
        h.run(120, |sec, out| {
            for n in 1..=20u8 {
                let rate = if (40..60).contains(&sec) && n % 3 == 0 {
                    80
                } else {
                    u64::from(n % 4)
                };
                out.extend(spread(sec, rate).map(|ts| rst(ts + u64::from(n), peer(n), ts)));
                out.extend(spread(sec, 12).map(|ts| conn(ts + 1, peer(n), Some(8080))));
            }
            if sec % 7 == 0 {
                out.push(failed(T0 + sec * S, peer(3), sec, ConnectFailure::Refused));
            }
        });
        h.log
    };
    let first = run();
    assert!(first.len() > 10, "{first:?}");
    assert_eq!(first, run());
}
