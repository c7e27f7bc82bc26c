//! Open flows whose close never arrives: expired once idle past their timeout, unless the
//! kernel's open-flow pass saw them since; counted apart from closed-flow expiry.
use std::{net::SocketAddr, time::Duration};

use super::tests::{key, rec, run, CLIENT, START};
use super::*;
use crate::event::{Detail, FlowCounts, Role};

const S: u64 = 1_000_000_000;

fn table() -> FlowTable {
    FlowTable::new(FlowConfig {
        idle_open: Duration::from_secs(3600),
        idle_transient: Duration::from_secs(180),
        ..FlowConfig::default()
    })
}

/// An established flow of `cookie` seen at `ts` (a retransmit record, no close).
fn established(cookie: u64, ts: u64) -> Event {
    let mut e = rec(
        ts,
        Detail::Retransmit {
            state: TcpState::ESTABLISHED,
            err: None,
        },
        Some(START + 5),
        FlowCounts {
            data_retrans: 1,
            ..FlowCounts::default()
        },
    );
    e.cookie = Some(cookie);
    e
}

/// The open-flow iterator's record of `cookie` at `ts`.
fn kernel_open(cookie: u64, ts: u64) -> Event {
    let mut e = rec(
        ts,
        Detail::Open {
            state: TcpState::ESTABLISHED,
        },
        Some(START + 5),
        FlowCounts::default(),
    );
    e.cookie = Some(cookie);
    e
}

#[test]
fn an_idle_open_flow_expires_after_its_timeout_and_is_counted_apart() {
    let mut t = table();
    run(&mut t, &[established(CLIENT, 10 * S)]);
    assert!(!t.idle_due(3609 * S));
    assert_eq!(t.expire_idle(3609 * S, None), 0);
    assert!(t.idle_due(3610 * S));
    assert_eq!(t.expire_idle(3610 * S, None), 1);
    assert!(t.is_empty());
    let stats = t.stats();
    assert_eq!(
        (stats.expired_open, stats.expired, stats.evicted),
        (1, 0, 0)
    );
}

#[test]
fn handshakes_and_time_wait_expire_sooner_than_established_flows() {
    let mut t = table();
    // A connect whose end was lost, a TIME_WAIT socket from sock_diag, an established one.
    let mut syn = rec(10 * S, Detail::Connect, None, FlowCounts::default());
    syn.cookie = Some(1);
    run(&mut t, &[syn, established(2, 10 * S)]);
    let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
    t.insert_existing(key(3), a, a, TcpState::TIME_WAIT, 10 * S);
    t.insert_existing(key(4), a, a, TcpState::ESTABLISHED, 10 * S);
    assert_eq!(t.expire_idle(190 * S, None), 2);
    assert!(t.get(&key(1)).is_none() && t.get(&key(3)).is_none());
    assert!(t.get(&key(2)).is_some() && t.get(&key(4)).is_some());
    assert_eq!(t.expire_idle(3610 * S, None), 2);
    assert_eq!(t.stats().expired_open, 4);
}

#[test]
fn a_handshake_that_completes_gets_the_established_timeout() {
    let mut t = table();
    let mut syn = rec(10 * S, Detail::Connect, None, FlowCounts::default());
    syn.cookie = Some(1);
    let mut up = rec(
        11 * S,
        Detail::Established { role: Role::Client },
        Some(11 * S),
        FlowCounts::default(),
    );
    up.cookie = Some(1);
    run(&mut t, &[syn, up]);
    assert_eq!(t.expire_idle(1000 * S, None), 0);
    assert!(t.get(&key(1)).is_some());
}

#[test]
fn a_flow_the_kernel_still_lists_stays_and_one_it_dropped_goes() {
    let mut t = table();
    run(&mut t, &[established(1, 10 * S), established(2, 10 * S)]);
    // Past the timeout, the daemon asks the kernel: its pass at 3700 s lists flow 1 only.
    let pass = 3700 * S;
    assert!(t.idle_due(pass));
    run(&mut t, &[kernel_open(1, pass + 1)]);
    assert_eq!(t.expire_idle(pass + 2, Some(pass)), 1);
    assert!(t.get(&key(1)).is_some(), "re-seen by the iterator");
    assert!(t.get(&key(2)).is_none(), "the kernel no longer has it");
    // Flow 1 is idle again for the timeout: the next pass decides again.
    assert!(!t.idle_due(pass + 3600 * S));
    assert!(t.idle_due(pass + 3601 * S));
    assert_eq!(t.stats().expired_open, 1);
}

#[test]
fn without_a_pass_since_they_went_idle_no_flow_is_expired() {
    let mut t = table();
    run(&mut t, &[established(1, 10 * S)]);
    // The last pass predates the flow's last activity: the kernel has not been asked.
    assert_eq!(t.expire_idle(4000 * S, Some(5 * S)), 0);
    assert!(t.get(&key(1)).is_some());
}

#[test]
fn expiry_walks_only_what_it_expires() {
    // 100k open flows, the oldest half idle past the timeout: each expiry pass stops at the
    // first young flow (the lists are ordered by last activity).
    let mut t = FlowTable::new(FlowConfig {
        max_flows: 200_000,
        ..FlowConfig::default()
    });
    let events: Vec<Event> = (1..=100_000u64)
        .map(|c| established(c, if c <= 50_000 { 10 * S } else { 2000 * S }))
        .collect();
    run(&mut t, &events);
    assert_eq!(t.expire_idle(3610 * S, None), 50_000);
    assert_eq!(t.expire_idle(3610 * S, None), 0);
    assert_eq!(t.len(), 50_000);
    assert!(t.get(&key(50_001)).is_some());
}
