//! The join on a real flow table fed with records: exact, approximate and unmatched requests
//! with each reason, closed flows, port reuse, a wall-clock step, the per-flow bound and the
//! failure labels.
use std::net::SocketAddr;

use super::*;
use crate::{
    accesslog::Request,
    event::rst_reason::ReasonNames,
    event::{Detail, Event, FlowCounts, FlowSnapshot, Role, TcpState},
    pipeline::flowtable::{FlowConfig, FlowTable},
};

const SEC: u64 = 1_000_000_000;
/// REALTIME − MONOTONIC in these tests: monotonic 0 is 2024-01-01T00:00:00Z.
const OFFSET: i128 = 1_704_067_200 * SEC as i128;

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn event(
    cookie: u64,
    netns: u64,
    local: &str,
    remote: &str,
    ts: u64,
    start: u64,
    detail: Detail,
) -> Event {
    Event {
        ts_ns: ts,
        cookie: Some(cookie),
        netns_cookie: Some(netns),
        local: a(local),
        remote: a(remote),
        process: None,
        sk_err: None,
        cgroup_id: None,
        flow: Some(FlowSnapshot {
            start_ns: start,
            established_ns: Some(start + 1000),
            role: Some(Role::Client),
            counts: FlowCounts::default(),
            last_rst_reason: None,
            late: false,
        }),
        stats: None,
        detail,
    }
}

struct Table {
    flows: FlowTable,
    reasons: ReasonNames,
}

impl Table {
    fn new(max_flows: usize) -> Table {
        Table {
            flows: FlowTable::new(FlowConfig {
                max_flows,
                ..FlowConfig::default()
            }),
            reasons: ReasonNames::default(),
        }
    }

    /// A client flow `local` → `remote` opened at `start` s.
    fn open(&mut self, cookie: u64, netns: u64, local: &str, remote: &str, start: u64) {
        let ev = event(
            cookie,
            netns,
            local,
            remote,
            start * SEC,
            start * SEC,
            Detail::Established { role: Role::Client },
        );
        self.flows.apply(&ev, &self.reasons, &mut Vec::new());
    }

    /// Its end at `at` s: reset by the peer (`rst`) or a FIN.
    fn close(&mut self, cookie: u64, local: &str, remote: &str, start: u64, at: u64, rst: bool) {
        let mut ev = event(
            cookie,
            1,
            local,
            remote,
            at * SEC,
            start * SEC,
            Detail::FlowEnd {
                from: TcpState::ESTABLISHED,
            },
        );
        ev.sk_err = Some(if rst { libc::ECONNRESET } else { 0 });
        if rst {
            ev.flow.as_mut().unwrap().counts.rst_received = 1;
        }
        self.flows.apply(&ev, &self.reasons, &mut Vec::new());
    }

    /// A connect to `remote` refused at `at` s.
    fn refused(&mut self, cookie: u64, local: &str, remote: &str, at: u64) {
        let mut ev = event(
            cookie,
            1,
            local,
            remote,
            at * SEC,
            at * SEC,
            Detail::FlowEnd {
                from: TcpState::SYN_SENT,
            },
        );
        ev.flow.as_mut().unwrap().established_ns = None;
        ev.sk_err = Some(libc::ECONNREFUSED);
        self.flows.apply(&ev, &self.reasons, &mut Vec::new());
    }
}

/// A request at `start` s (monotonic) for `ms`.
fn req(
    start: u64,
    ms: u64,
    up: Option<(&str, &str)>,
    down: Option<(&str, &str)>,
    flags: &[&str],
) -> Request {
    Request {
        start_unix_ns: OFFSET + i128::from(start * SEC),
        duration_ms: ms,
        status: Some(if flags.is_empty() { 200 } else { 503 }),
        flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        details: None,
        upstream_local: up.and_then(|u| (!u.0.is_empty()).then(|| a(u.0))),
        upstream_host: up.map(|u| a(u.1)),
        downstream_local: down.map(|d| a(d.0)),
        downstream_remote: down.map(|d| a(d.1)),
        upstream_connection_id: None,
        request_id: Some(format!("r{start}")),
        wall_minus_mono: None,
    }
}

fn settings() -> JoinSettings {
    JoinSettings {
        slack_ns: SEC / 2,
        per_flow: 4,
        netns: None,
        retain_closed_ns: 60 * SEC,
        queue_len: 100,
    }
}

fn key(cookie: u64, netns: u64) -> FlowKey {
    FlowKey { netns, cookie }
}

const PROXY: &str = "10.0.0.1:40000";
const UPSTREAM: &str = "10.0.0.2:8080";

#[test]
fn requests_join_open_and_closed_flows_by_their_tuple() {
    let mut t = Table::new(100);
    t.open(1, 1, PROXY, UPSTREAM, 100);
    t.open(2, 1, "10.0.0.1:40001", UPSTREAM, 100);
    t.close(2, "10.0.0.1:40001", UPSTREAM, 100, 105, true);
    // The downstream side: the proxy's accepted socket.
    t.open(3, 1, "10.0.0.1:15001", "10.0.0.9:5555", 99);
    let mut r = Requests::new(settings());
    let reqs = [
        req(
            101,
            20,
            Some((PROXY, UPSTREAM)),
            Some(("10.0.0.1:15001", "10.0.0.9:5555")),
            &[],
        ),
        req(104, 900, Some(("10.0.0.1:40001", UPSTREAM)), None, &["UC"]),
    ];
    let out = r.join(&reqs, 106 * SEC, OFFSET, &t.flows);
    assert_eq!(
        out,
        [Outcome::Matched(key(1, 1)), Outcome::Matched(key(2, 1))]
    );
    let up = r.of(&key(1, 1)).unwrap();
    assert_eq!(up.kept.len(), 1);
    assert_eq!(up.kept[0].side, Side::Upstream);
    assert_eq!(up.kept[0].other_flow, Some(3));
    let down = r.of(&key(3, 1)).unwrap();
    assert_eq!(
        (down.kept[0].side, down.kept[0].other_flow),
        (Side::Downstream, Some(1))
    );
    assert_eq!(&*r.of(&key(2, 1)).unwrap().kept[0].flags, "UC");
    assert_eq!(r.failures, BTreeMap::from([(("UC", "rst_received"), 1)]));
    assert_eq!(r.matched, 2);
}

#[test]
fn a_wall_clock_step_is_followed() {
    let mut t = Table::new(100);
    t.open(1, 1, PROXY, UPSTREAM, 100);
    let mut r = Requests::new(settings());
    // The wall clock jumps 1 h ahead: the proxy logs the new time, the offset moved with it.
    let step = 3600 * i128::from(SEC);
    let mut late = req(200, 10, Some((PROXY, UPSTREAM)), None, &[]);
    late.start_unix_ns += step;
    assert_eq!(
        r.join(&[late.clone()], 201 * SEC, OFFSET + step, &t.flows),
        [Outcome::Matched(key(1, 1))]
    );
    // With the offset from before the step, the same line lands an hour away.
    t.close(1, PROXY, UPSTREAM, 100, 300, false);
    assert_eq!(
        r.join(&[late], 301 * SEC, OFFSET, &t.flows),
        [Outcome::Unmatched(Unmatched::OutsideWindow)]
    );
    // A line read before the step carries the offset it was written under: joined after
    // the step, it still lands where it happened.
    let mut before = req(250, 10, Some((PROXY, UPSTREAM)), None, &[]);
    before.wall_minus_mono = Some(OFFSET);
    assert_eq!(
        r.join(&[before], 302 * SEC, OFFSET + step, &t.flows),
        [Outcome::Matched(key(1, 1))]
    );
}

#[test]
fn port_reuse_picks_the_flow_of_the_window() {
    let mut t = Table::new(100);
    t.open(1, 1, PROXY, UPSTREAM, 100);
    t.close(1, PROXY, UPSTREAM, 100, 110, false);
    t.open(2, 1, PROXY, UPSTREAM, 120);
    let mut r = Requests::new(settings());
    let out = r.join(
        &[
            req(105, 10, Some((PROXY, UPSTREAM)), None, &[]),
            req(125, 10, Some((PROXY, UPSTREAM)), None, &[]),
            req(114, 10, Some((PROXY, UPSTREAM)), None, &[]),
        ],
        130 * SEC,
        OFFSET,
        &t.flows,
    );
    assert_eq!(
        out,
        [
            Outcome::Matched(key(1, 1)),
            Outcome::Matched(key(2, 1)),
            Outcome::Unmatched(Unmatched::OutsideWindow)
        ]
    );
}

#[test]
fn uf_lines_without_a_local_address_match_approximately() {
    let mut t = Table::new(100);
    // A healthy connection to the host and, at the request's time, a refused connect.
    t.open(1, 1, PROXY, UPSTREAM, 100);
    t.refused(2, "10.0.0.1:40002", UPSTREAM, 150);
    let mut r = Requests::new(settings());
    let out = r.join(
        &[
            req(150, 1, Some(("", UPSTREAM)), None, &["UF"]),
            req(150, 1, Some(("", "10.0.0.3:80")), None, &["UF"]),
        ],
        151 * SEC,
        OFFSET,
        &t.flows,
    );
    assert_eq!(
        out,
        [
            Outcome::Approximate(key(2, 1)),
            Outcome::Unmatched(Unmatched::NoFlow)
        ]
    );
    let kept = &r.of(&key(2, 1)).unwrap().kept[0];
    assert!(!kept.exact);
    assert_eq!(r.approximate, 1);
    assert_eq!(
        r.failures,
        BTreeMap::from([(("UF", "refused"), 1), (("UF", "unmatched"), 1)])
    );
}

#[test]
fn unmatched_requests_say_why() {
    let mut t = Table::new(2);
    t.open(1, 7, PROXY, UPSTREAM, 100);
    let mut r = Requests::new(JoinSettings {
        netns: Some(1),
        ..settings()
    });
    let out = r.join(
        &[
            // The tuple lives in namespace 7, not the proxy's.
            req(101, 1, Some((PROXY, UPSTREAM)), None, &[]),
            // Nothing with this tuple, ever.
            req(101, 1, Some(("10.0.0.1:1", UPSTREAM)), None, &[]),
            // Older than closed flows are kept.
            req(10, 1, Some(("10.0.0.1:1", UPSTREAM)), None, &[]),
            // No addresses at all.
            req(101, 1, None, None, &["DC"]),
        ],
        102 * SEC,
        OFFSET,
        &t.flows,
    );
    assert_eq!(
        out,
        [
            Outcome::Unmatched(Unmatched::OtherNetns),
            Outcome::Unmatched(Unmatched::NoFlow),
            Outcome::Unmatched(Unmatched::Expired),
            Outcome::Unmatched(Unmatched::NoAddress),
        ]
    );
    // The table (2 flows) evicts: a request whose flow is gone says so.
    t.open(2, 1, "10.0.0.1:2", UPSTREAM, 103);
    t.open(3, 1, "10.0.0.1:3", UPSTREAM, 104);
    t.open(4, 1, "10.0.0.1:4", UPSTREAM, 105);
    let out = r.join(
        &[req(103, 1, Some(("10.0.0.1:2", UPSTREAM)), None, &[])],
        106 * SEC,
        OFFSET,
        &t.flows,
    );
    assert_eq!(out, [Outcome::Unmatched(Unmatched::Evicted)]);
    let stats = r.unmatched;
    assert_eq!(stats.get(&Unmatched::Evicted), Some(&1));
    assert_eq!(stats.values().sum::<u64>(), 5);
}

#[test]
fn requests_per_flow_are_bounded_and_leave_with_the_flow() {
    let mut t = Table::new(100);
    t.open(1, 1, PROXY, UPSTREAM, 100);
    let mut r = Requests::new(JoinSettings {
        per_flow: 2,
        ..settings()
    });
    let reqs: Vec<Request> = (0..5)
        .map(|i| req(101 + i, 1, Some((PROXY, UPSTREAM)), None, &["XYZ"]))
        .collect();
    r.join(&reqs, 110 * SEC, OFFSET, &t.flows);
    let kept = r.of(&key(1, 1)).unwrap();
    assert_eq!((kept.kept.len(), kept.more), (2, 3));
    assert_eq!(kept.kept[0].request_id.as_deref(), Some("r101"));
    // An unknown flag is `other`, counted once per request.
    assert_eq!(r.failures, BTreeMap::from([(("other", "open"), 5)]));
    // The flow closes and leaves the table: its requests go too.
    t.close(1, PROXY, UPSTREAM, 100, 111, false);
    t.flows.expire(1000 * SEC);
    r.tick(1000 * SEC, &t.flows);
    assert!(r.of(&key(1, 1)).is_none());
    assert_eq!(r.kept.total(), 0);
}

#[test]
fn downstream_only_requests_match_the_accepted_socket() {
    let mut t = Table::new(100);
    t.open(5, 1, "10.0.0.1:15001", "10.0.0.9:5555", 100);
    let mut r = Requests::new(settings());
    let out = r.join(
        &[req(
            101,
            0,
            None,
            Some(("10.0.0.1:15001", "10.0.0.9:5555")),
            &["UH"],
        )],
        102 * SEC,
        OFFSET,
        &t.flows,
    );
    assert_eq!(out, [Outcome::Matched(key(5, 1))]);
    assert_eq!(r.failures, BTreeMap::from([(("UH", "open"), 1)]));
    assert_eq!(labels::flag("urx"), "URX");
    assert_eq!(labels::flag("BOGUS"), "other");
}
