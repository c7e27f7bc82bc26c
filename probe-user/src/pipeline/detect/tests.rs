//! Rate and ratio kinds (RST storm, RST ratio, retransmit rate) on synthetic signal streams,
//! plus the harness the event tests share.
use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::pipeline::signal::{Peer, RstDirection, Signal};

pub(super) const S: u64 = WINDOW_NS;
/// Start of the synthetic clock: a host that has been up for a while.
pub(super) const T0: u64 = 10_000 * S;

pub(super) fn peer(n: u8) -> Peer {
    Peer {
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)),
        port: Some(443),
        netns: 0,
    }
}

/// A client address (no service port), for server-side flows.
pub(super) fn client(n: u8) -> Peer {
    Peer {
        addr: IpAddr::V4(Ipv4Addr::new(192, 168, 1, n)),
        port: None,
        netns: 0,
    }
}

pub(super) fn rst(ts: u64, peer: Peer, cookie: u64) -> Signal {
    Signal::Rst {
        ts_ns: ts,
        direction: RstDirection::Received,
        peer,
        local_port: None,
        cookie: Some(cookie),
        reason: None,
        after_established: false,
        connection_ns: None,
    }
}

/// The first RST of a flow whose connection was counted at `conn_ts`.
pub(super) fn reset(ts: u64, peer: Peer, conn_ts: u64) -> Signal {
    Signal::Rst {
        ts_ns: ts,
        direction: RstDirection::Received,
        peer,
        local_port: None,
        cookie: Some(conn_ts),
        reason: None,
        after_established: false,
        connection_ns: Some(conn_ts),
    }
}

pub(super) fn conn(ts: u64, peer: Peer, local_port: Option<u16>) -> Signal {
    Signal::Connection {
        ts_ns: ts,
        role: if local_port.is_some() {
            crate::event::Role::Server
        } else {
            crate::event::Role::Client
        },
        peer,
        local_port,
        cookie: ts,
    }
}

fn segs(ts: u64, peer: Peer, sent: u64, retransmitted: u64) -> Signal {
    Signal::DataSegments {
        ts_ns: ts,
        peer,
        sent,
        retransmitted,
    }
}

/// Timestamps of `n` signals spread evenly over second `sec` of the run.
pub(super) fn spread(sec: u64, n: u64) -> impl Iterator<Item = u64> {
    (0..n).map(move |i| T0 + sec * S + i * (S / n.max(1)))
}

/// Feeds a stream second by second and ticks at the end of each second.
pub(super) struct Harness {
    pub d: Detectors,
    /// Each change with the second whose closing tick reported it.
    pub log: Vec<(u64, AnomalyChange)>,
    pub sec: u64,
}

impl Harness {
    pub fn new(cfg: DetectConfig) -> Harness {
        Harness {
            d: Detectors::new(cfg),
            log: Vec::new(),
            sec: 0,
        }
    }

    /// Runs `secs` seconds; `feed(sec, out)` adds that second's signals.
    pub fn run(&mut self, secs: u64, mut feed: impl FnMut(u64, &mut Vec<Signal>)) {
        for _ in 0..secs {
            let mut signals = Vec::new();
            feed(self.sec, &mut signals);
            for s in &signals {
                self.d.observe(s);
            }
            for c in self.d.tick(T0 + (self.sec + 1) * S) {
                self.log.push((self.sec, c));
            }
            self.sec += 1;
        }
    }

    pub fn raised(&self) -> Vec<(u64, &Anomaly)> {
        self.changes(|c| matches!(c, AnomalyChange::Raised(_)))
    }

    pub fn cleared(&self) -> Vec<(u64, &Anomaly)> {
        self.changes(|c| matches!(c, AnomalyChange::Cleared(_)))
    }

    pub fn updated(&self) -> Vec<(u64, &Anomaly)> {
        self.changes(|c| matches!(c, AnomalyChange::Updated(_)))
    }

    fn changes(&self, f: impl Fn(&AnomalyChange) -> bool) -> Vec<(u64, &Anomaly)> {
        self.log
            .iter()
            .filter(|(_, c)| f(c))
            .map(|(s, c)| (*s, c.anomaly()))
            .collect()
    }
}

#[test]
fn rst_storm_onset_raises_once_for_that_peer_only() {
    let (a, b) = (peer(1), peer(2));
    let mut h = Harness::new(DetectConfig::default());
    let steady = |sec: u64, out: &mut Vec<Signal>| {
        out.extend(spread(sec, 1).map(|ts| rst(ts + 7, b, ts + 7)));
    };
    h.run(40, |sec, out| {
        let n = if sec < 30 { 1 } else { 200 };
        out.extend(spread(sec, n).map(|ts| rst(ts, a, ts)));
        steady(sec, out);
    });
    let raised = h.raised();
    assert_eq!(raised.len(), 1, "{:?}", h.log);
    let (sec, an) = (raised[0].0, raised[0].1.clone());
    // Reported by the tick that closes the onset window: within one window of the onset.
    assert_eq!(sec, 30);
    assert_eq!(an.kind, AnomalyKind::RstStorm);
    assert_eq!(an.scope, Scope::Peer(a));
    assert_eq!(an.start_ns, T0 + 30 * S);
    assert_eq!(an.end_ns, None);
    assert_eq!(an.peak_rate, 200.0);
    assert_eq!(an.hint, AnomalyKind::RstStorm.hint());
    assert_eq!(an.evidence.len(), 16);
    assert!(
        an.detail.starts_with("200 RST/s (raise at 20/s"),
        "{}",
        an.detail
    );
    assert!(h.cleared().is_empty());
    assert_eq!(h.d.active().count(), 1);

    // The storm stops: cleared after clear_after (3) windows below the clear threshold.
    h.run(10, |sec, out| {
        out.extend(spread(sec, 1).map(|ts| rst(ts, a, ts)));
        steady(sec, out);
    });
    let cleared = h.cleared();
    assert_eq!(cleared.len(), 1);
    let (sec, c) = cleared[0];
    assert_eq!(sec, 42);
    assert_eq!(
        (c.id, c.end_ns, c.last_ns),
        (an.id, Some(T0 + 43 * S), T0 + 40 * S)
    );
    assert_eq!(h.raised().len(), 1);
    assert_eq!(h.d.active().count(), 0);
    assert_eq!(h.d.recent().map(|a| a.id).collect::<Vec<_>>(), vec![an.id]);
    assert_eq!(h.d.stats().raised(AnomalyKind::RstStorm), 1);
}

#[test]
fn rst_storm_onset_mid_window_is_seen_within_two_windows() {
    let a = peer(1);
    let mut h = Harness::new(DetectConfig::default());
    h.run(20, |sec, out| {
        out.extend(spread(sec, 1).map(|ts| rst(ts, a, ts)));
    });
    // 200/s from 20.95 s: only 10 RSTs in window 20, the storm shows in window 21.
    h.run(3, |sec, out| {
        let ts: Vec<u64> = match sec {
            20 => (0..10)
                .map(|i| T0 + 20 * S + 950_000_000 + i * 5_000_000)
                .collect(),
            _ => spread(sec, 200).collect(),
        };
        out.extend(ts.into_iter().map(|ts| rst(ts, a, ts)));
    });
    let raised = h.raised();
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].0, 21);
}

#[test]
fn rst_storm_does_not_flap_around_the_threshold() {
    let (a, quiet) = (peer(1), peer(2));
    let mut h = Harness::new(DetectConfig::default());
    // Just above / just below the raise level: raised once, never cleared (19 > 10 = clear).
    h.run(40, |sec, out| {
        let n = if sec % 2 == 0 { 21 } else { 19 };
        out.extend(spread(sec, n).map(|ts| rst(ts, a, ts)));
        // Just below the floor all the time: never raised.
        out.extend(spread(sec, 19).map(|ts| rst(ts + 1, quiet, ts + 1)));
    });
    // Dipping below the clear level for single windows does not clear either.
    h.run(30, |sec, out| {
        let n = if sec % 2 == 0 { 25 } else { 5 };
        out.extend(spread(sec, n).map(|ts| rst(ts, a, ts)));
    });
    assert_eq!(h.raised().len(), 1);
    assert_eq!(h.raised()[0].1.scope, Scope::Peer(a));
    assert!(h.cleared().is_empty());
    // Three windows below (the last 5/s window, 69, then two empty ones): cleared, once.
    h.run(5, |_, _| {});
    assert_eq!(h.cleared().len(), 1);
    assert_eq!(h.cleared()[0].0, 71);
    assert_eq!(h.raised().len(), 1);
}

#[test]
fn rst_storm_scope_that_starts_high_clears_once_its_baseline_adapts() {
    // No history: baseline 0, so the 20/s floor decides and a scope always at 25 RST/s raises
    // at once. During the storm the baseline adapts with rst_storm_adapt_alpha (0.002): once
    // 25 < 0.5 × 10 × baseline (baseline > 5, after 112 windows) three windows below clear it,
    // and the learned baseline keeps it from being raised again.
    let a = peer(1);
    let mut h = Harness::new(DetectConfig::default());
    h.run(400, |sec, out| {
        out.extend(spread(sec, 25).map(|ts| rst(ts, a, ts)));
    });
    let raised = h.raised();
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].0, 0);
    let cleared = h.cleared();
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].0, 114);
    assert_eq!(h.d.stats().raised(AnomalyKind::RstStorm), 1);

    // With adaptation off the baseline is frozen during storms: it stays raised.
    let cfg = DetectConfig {
        rst_storm_adapt_alpha: 0.0,
        ..DetectConfig::default()
    };
    let mut h = Harness::new(cfg);
    h.run(400, |sec, out| {
        out.extend(spread(sec, 25).map(|ts| rst(ts, a, ts)));
    });
    assert_eq!(h.raised().len(), 1);
    assert!(h.cleared().is_empty());
}

#[test]
fn rst_storm_needs_ten_times_the_learned_baseline() {
    let (a, b) = (peer(1), peer(2));
    let mut h = Harness::new(DetectConfig::default());
    // Both learn a baseline of ~5 RST/s (calm: below the 20/s floor).
    h.run(60, |sec, out| {
        out.extend(spread(sec, 5).map(|ts| rst(ts, a, ts)));
        out.extend(spread(sec, 5).map(|ts| rst(ts + 1, b, ts + 1)));
    });
    assert!(h.raised().is_empty());
    // a: 40/s is above the floor but below 10 × 5; b: 60/s is above both.
    h.run(1, |sec, out| {
        out.extend(spread(sec, 40).map(|ts| rst(ts, a, ts)));
        out.extend(spread(sec, 60).map(|ts| rst(ts + 1, b, ts + 1)));
    });
    let raised = h.raised();
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].1.scope, Scope::Peer(b));
    assert!(
        raised[0].1.detail.contains("raise at 50/s"),
        "{}",
        raised[0].1.detail
    );
}

#[test]
fn rst_storm_per_local_port_in_both_directions_and_new_peaks() {
    let mut h = Harness::new(DetectConfig::default());
    let port_rst = |ts: u64, n: u8, direction| Signal::Rst {
        ts_ns: ts,
        direction,
        peer: client(n),
        local_port: Some(8080),
        cookie: Some(ts),
        reason: Some("NOT_SPECIFIED".into()),
        after_established: false,
        connection_ns: None,
    };
    // 60 RST/s on port 8080, spread over 60 clients, half sent, half received.
    h.run(3, |sec, out| {
        let n = if sec == 0 { 60 } else { 120 };
        out.extend(spread(sec, n).enumerate().map(|(i, ts)| {
            let dir = if i % 2 == 0 {
                RstDirection::Sent
            } else {
                RstDirection::Received
            };
            port_rst(ts, (i % 60) as u8, dir)
        }));
    });
    let raised = h.raised();
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0].1.scope, Scope::LocalPort(0, 8080));
    assert_eq!(raised[0].1.peak_rate, 60.0);
    // The rate doubled: one Updated with the new peak, not one per window.
    let updated = h.updated();
    assert_eq!(updated.len(), 1);
    assert_eq!((updated[0].0, updated[0].1.peak_rate), (1, 120.0));
    assert_eq!(updated[0].1.id, raised[0].1.id);
}

#[test]
fn rst_ratio_needs_enough_connections() {
    let a = peer(1);
    let mut h = Harness::new(DetectConfig::default());
    // 19 connections in 120 s, every one reset: 100 % but too few to judge.
    h.run(120, |sec, out| {
        if sec % 6 == 0 && sec < 114 {
            let ts = T0 + sec * S;
            out.push(conn(ts, a, None));
            out.push(reset(ts + 1000, a, ts));
        }
    });
    assert!(h.log.is_empty(), "{:?}", h.log);
}

#[test]
fn rst_ratio_raises_above_five_percent_and_clears_below_half_of_it() {
    let (a, b) = (peer(1), peer(2));
    let mut h = Harness::new(DetectConfig::default());
    // a: 10 connections/s, 1 RST/s (10 %); b: 25/s and 1 RST/s (4 %, below).
    h.run(13, |sec, out| {
        for (p, n) in [(a, 10), (b, 25)] {
            out.extend(spread(sec, n).map(|ts| conn(ts, p, None)));
            out.extend(spread(sec, 1).map(|ts| reset(ts + 3, p, ts)));
        }
    });
    let raised = h.raised();
    assert_eq!(raised.len(), 1, "{raised:?}");
    let (sec, an) = raised[0];
    // Window 1 reaches 20 connections (10 %), window 2 is the second in a row.
    assert_eq!(sec, 2);
    assert_eq!((an.kind, an.scope), (AnomalyKind::RstRatio, Scope::Peer(a)));
    assert_eq!(an.start_ns, T0 + S);
    assert!((an.peak_rate - 0.1).abs() < 1e-9);
    assert_eq!(an.evidence.len(), 3);
    assert_eq!(an.detail, "3 of 30 connections reset in 60 s (10.0 %)");
    // RSTs stop; connections go on: the 13 RSTs fall below 2.5 % of the window's connections.
    h.run(80, |sec, out| {
        out.extend(spread(sec, 10).map(|ts| conn(ts, a, None)));
    });
    let cleared = h.cleared();
    assert_eq!(cleared.len(), 1);
    // 13 / 530 < 2.5 % first in window 52; three windows below.
    assert_eq!(cleared[0].0, 54);
    assert_eq!(h.raised().len(), 1);
}

#[test]
fn rst_ratio_per_local_port_across_many_clients() {
    let mut h = Harness::new(DetectConfig::default());
    // 10 connections/s to port 8080 from 100 rotating clients, 1 RST/s: 10 % for the port,
    // fewer than 20 connections per client in any 60 s.
    let mut next = 0u8;
    h.run(30, |sec, out| {
        for ts in spread(sec, 10) {
            out.push(conn(ts, client(next % 100), Some(8080)));
            next = next.wrapping_add(1);
        }
        out.push(Signal::Rst {
            ts_ns: T0 + sec * S + 500,
            direction: RstDirection::Sent,
            peer: client(next % 100),
            local_port: Some(8080),
            cookie: Some(sec),
            reason: None,
            after_established: false,
            connection_ns: Some(T0 + sec * S),
        });
    });
    let raised = h.raised();
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0].1.kind, AnomalyKind::RstRatio);
    assert_eq!(raised[0].1.scope, Scope::LocalPort(0, 8080));
}

/// The bare-peer scope: RSTs without a socket (a closed port answering), a flow's
/// second and third RSTs and resets of connections counted before the window all add RST
/// packets, not reset flows: the ratio stays a fraction of the same flows, 100 % at most.
#[test]
fn rst_ratio_counts_reset_flows_of_its_own_connections_never_above_one() {
    let a = client(9);
    let mut h = Harness::new(DetectConfig::default());
    // A long-lived connection, reset 70 s later (its connection left the 60 s window).
    h.run(1, |_, out| out.push(conn(T0 + 10, a, None)));
    h.run(69, |_, _| {});
    h.run(10, |sec, out| {
        if sec == 70 {
            out.push(reset(T0 + sec * S + 5, a, T0 + 10));
        }
        for ts in spread(sec, 10) {
            out.push(conn(ts, a, None));
            // Every flow reset, three RSTs each; 40 RSTs without a socket besides.
            out.push(reset(ts + 1, a, ts));
            out.push(rst(ts + 2, a, ts));
            out.push(rst(ts + 3, a, ts));
        }
        out.extend(spread(sec, 40).map(|ts| Signal::Rst {
            ts_ns: ts + 4,
            direction: RstDirection::Sent,
            peer: a,
            local_port: None,
            cookie: None,
            reason: Some("NO_SOCKET".into()),
            after_established: false,
            connection_ns: None,
        }));
    });
    let ratio: Vec<&Anomaly> = h
        .raised()
        .into_iter()
        .chain(h.updated())
        .map(|(_, an)| an)
        .filter(|an| an.kind == AnomalyKind::RstRatio)
        .collect();
    assert_eq!(ratio.len(), 1, "{ratio:?}");
    for an in &ratio {
        assert!((an.peak_rate - 1.0).abs() < 1e-9, "{an:?}");
        assert!(an.detail.contains(" of "), "{}", an.detail);
    }
    for (_, an) in h.log.iter().map(|(s, c)| (s, c.anomaly())) {
        if an.kind == AnomalyKind::RstRatio {
            assert!(an.peak_rate <= 1.0, "{an:?}");
        }
    }
    // Raised after two windows over the 20-connection minimum.
    assert_eq!(
        ratio[0].detail,
        "30 of 30 connections reset in 60 s (100.0 %)"
    );
}

/// Any mix of connections, resets and stray RSTs: no ratio above 1.
#[test]
fn rst_ratio_never_exceeds_one_over_random_traffic() {
    let mut h = Harness::new(DetectConfig {
        rst_ratio_window_secs: 5,
        ..DetectConfig::default()
    });
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut open: Vec<u64> = Vec::new();
    h.run(300, |sec, out| {
        for ts in spread(sec, next() % 60) {
            match next() % 4 {
                0 | 1 => {
                    out.push(conn(ts, client(1), Some(80)));
                    open.push(ts);
                }
                2 if !open.is_empty() => {
                    let i = usize::try_from(next() % open.len() as u64).unwrap_or(0);
                    let c = open.swap_remove(i);
                    out.push(reset(ts, client(1), c));
                }
                _ => out.push(rst(ts, client(1), ts)),
            }
        }
    });
    let ratios: Vec<f64> = h
        .log
        .iter()
        .map(|(_, c)| c.anomaly())
        .filter(|an| an.kind == AnomalyKind::RstRatio)
        .map(|an| an.peak_rate)
        .collect();
    assert!(!ratios.is_empty(), "the traffic raises a ratio");
    assert!(ratios.iter().all(|r| *r <= 1.0), "{ratios:?}");
}

#[test]
fn retransmit_rate_threshold_minimum_and_clear() {
    let (a, b, c) = (peer(1), peer(2), peer(3));
    let mut h = Harness::new(DetectConfig::default());
    h.run(20, |sec, out| {
        let ts = T0 + sec * S + 10;
        // a: 3 % over 100 segments/s; b: 1.5 %, below; c: 5 % but only 900 segments ever.
        out.push(segs(ts, a, 100, 3));
        out.push(segs(ts, b, 1000, 15));
        if sec < 9 {
            out.push(segs(ts, c, 100, 5));
        }
    });
    let raised = h.raised();
    assert_eq!(raised.len(), 1, "{raised:?}");
    let (sec, an) = raised[0];
    // 1,000 segments at the end of window 9, second window in a row at 10.
    assert_eq!(sec, 10);
    assert_eq!(
        (an.kind, an.scope),
        (AnomalyKind::RetransmitRate, Scope::Peer(a))
    );
    assert_eq!(an.start_ns, T0 + 9 * S);
    assert!((an.peak_rate - 0.03).abs() < 1e-9);
    assert!(an.evidence.is_empty(), "DataSegments carries no cookie");
    assert_eq!(
        an.detail,
        "33 of 1100 data segments retransmitted in 60 s (3.00 %)"
    );
    // Retransmits stop: 60 retransmitted over 60 s of traffic is 1 %, clear is below that.
    h.run(80, |sec, out| {
        out.push(segs(T0 + sec * S + 10, a, 100, 0));
    });
    let cleared = h.cleared();
    assert_eq!(cleared.len(), 1);
    assert_eq!(h.raised().len(), 1);
    assert!((40..80).contains(&cleared[0].0), "{}", cleared[0].0);
}

#[test]
fn raise_after_two_windows_ignores_a_single_window_spike() {
    let cfg = DetectConfig {
        rst_storm_raise_after: 2,
        ..DetectConfig::default()
    };
    let a = peer(1);
    let mut h = Harness::new(cfg);
    h.run(10, |sec, out| {
        let n = if sec == 4 || sec == 7 || sec == 8 {
            100
        } else {
            0
        };
        out.extend(spread(sec, n).map(|ts| rst(ts, a, ts)));
    });
    let raised = h.raised();
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].0, 8);
    assert_eq!(raised[0].1.start_ns, T0 + 7 * S);
}

#[test]
fn small_peak_increases_are_not_reported() {
    let a = peer(1);
    let mut h = Harness::new(DetectConfig::default());
    h.run(4, |sec, out| {
        let n = [100, 105, 109, 111][sec as usize];
        out.extend(spread(sec, n).map(|ts| rst(ts, a, ts)));
    });
    assert_eq!(h.raised().len(), 1);
    let updated = h.updated();
    assert_eq!(updated.len(), 1);
    assert_eq!((updated[0].0, updated[0].1.peak_rate), (3, 111.0));
    assert_eq!(h.d.active().next().unwrap().peak_rate, 111.0);
}
