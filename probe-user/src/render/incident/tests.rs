use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use super::*;
use crate::{
    pipeline::{
        detect::{Anomaly, AnomalyKind, Scope},
        signal::Peer,
    },
    render::anomaly::AnomalyRecord,
};

const S: u64 = 1_000_000_000;

fn peer(s: &str) -> Scope {
    match s.parse::<SocketAddr>() {
        Ok(sa) => Scope::Peer(Peer {
            addr: sa.ip(),
            port: Some(sa.port()),
            netns: 0,
        }),
        Err(_) => Scope::Peer(Peer {
            addr: s.parse().expect("an address"),
            port: None,
            netns: 0,
        }),
    }
}

fn record(
    id: u64,
    kind: AnomalyKind,
    scope: Scope,
    start_s: u64,
    evidence: &[u64],
) -> AnomalyRecord {
    AnomalyRecord::new(
        &Anomaly {
            id,
            kind,
            scope,
            start_ns: start_s * S,
            end_ns: None,
            last_ns: start_s * S,
            peak_rate: if kind == AnomalyKind::RstRatio {
                1.0
            } else {
                30.0
            },
            evidence: evidence.to_vec(),
            hint: kind.hint(),
            detail: String::new(),
        },
        "active",
        start_s * S,
    )
}

/// The refused upstream: nine anomalies over the peer endpoint, the bare peer, the
/// local port nothing listens on and one socket, raised within a few seconds: one incident,
/// caused by `connect_refused`, critical. An unrelated peer and a later recurrence are not in it.
#[test]
fn a_refused_upstream_is_one_incident_with_its_symptoms() {
    use AnomalyKind::*;
    let up = "127.0.0.1:9999";
    let mut all = vec![
        record(1, KernelRepeatRst, Scope::Socket(50), 100, &[50]),
        record(2, ConnectRefused, peer(up), 100, &[50, 51]),
        record(3, KernelRepeatRst, peer(up), 100, &[51]),
        record(4, KernelRepeatRst, Scope::LocalPort(0, 9999), 101, &[]),
        record(5, RstStorm, peer(up), 101, &[50, 51, 52]),
        record(6, RstStorm, peer("127.0.0.1"), 101, &[]),
        record(7, RstStorm, Scope::LocalPort(0, 9999), 101, &[]),
        record(8, RstRatio, peer(up), 102, &[52]),
        record(9, RstRatio, peer("127.0.0.1"), 102, &[]),
        // Unrelated: another peer, same time.
        record(10, ConnectTimeout, peer("10.0.0.9:5432"), 101, &[90]),
        record(11, SynRetry, peer("10.0.0.9:5432"), 100, &[90]),
    ];
    // The same endpoint ten minutes after it all cleared: a new incident.
    for a in all.iter_mut() {
        a.end_ns = Some(130 * S);
        a.change = "cleared".into();
    }
    all.push(record(12, ConnectRefused, peer(up), 800, &[70]));
    let incidents = group(&all, &HostView::default(), 805 * S);
    assert_eq!(incidents.len(), 3, "{incidents:#?}");
    // Active first.
    assert_eq!(
        (incidents[0].id, incidents[0].status.as_str()),
        (12, "active")
    );
    let outage = incidents.iter().find(|i| i.id == 1).expect("the outage");
    assert_eq!(outage.primary, 2);
    assert_eq!(outage.primary_kind, "connect_refused");
    assert_eq!(outage.primary_scope, "peer 127.0.0.1:9999");
    assert_eq!(outage.symptoms.len(), 8);
    assert_eq!(outage.severity, "critical");
    assert_eq!(outage.status, "cleared");
    assert_eq!(outage.flows, 3);
    assert_eq!(outage.kinds["rst_storm"], 3);
    assert_eq!(
        outage.summary,
        "connect_refused on peer 127.0.0.1:9999 (peak 30 in 1 s); symptoms: 2× rst_ratio, \
         3× rst_storm, 3× kernel_repeat_rst"
    );
    let db = incidents.iter().find(|i| i.id == 10).expect("the db");
    assert_eq!(
        (db.primary_kind.as_str(), db.symptoms.as_slice()),
        ("connect_timeout", &[11][..])
    );
}

/// A local port and a peer endpoint link only when that peer is this host: the same port on
/// another machine is someone else's service.
#[test]
fn service_ports_link_only_to_this_hosts_own_endpoints() {
    use AnomalyKind::*;
    let all = vec![
        record(1, RstStorm, Scope::LocalPort(0, 443), 10, &[]),
        record(2, RstStorm, peer("10.0.0.7:443"), 10, &[]),
    ];
    assert_eq!(group(&all, &HostView::default(), 11 * S).len(), 2);
    let ours = HostView {
        local_ips: [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))].into(),
        ..HostView::default()
    };
    let one = group(&all, &ours, 11 * S);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].severity, "warning");
    let only_retries = group(
        &[record(3, SynRetry, peer("10.0.0.8:80"), 1, &[])],
        &ours,
        S,
    );
    assert_eq!(only_retries[0].severity, "info");
    assert!(table(&one, 11 * S, crate::render::table::Paint::OFF).starts_with("INCIDENT"));
}

/// Two outages on one host at once (the namespace: HAProxy in front of an upstream
/// that aborts and one that is down): the bare-peer anomalies (HAProxy's address, the client
/// side of both upstreams) join the outage their flows were about, or the most causal one when
/// they name no flow; two incidents with the right culprits, not one.
#[test]
fn two_outages_behind_one_proxy_stay_two_incidents() {
    use AnomalyKind::*;
    let all = vec![
        // The aborting upstream (7001): HAProxy's side and the upstream's own RSTs.
        record(1, ResetAfterEstablished, peer("127.0.0.1:7001"), 100, &[11]),
        record(2, LocalResetEstablished, peer("127.0.0.1"), 100, &[12]),
        record(3, RstRatio, peer("127.0.0.1"), 101, &[12]),
        // The refused upstream (7002).
        record(4, ConnectRefused, peer("127.0.0.1:7002"), 100, &[21]),
        record(5, RstStorm, peer("127.0.0.1:7002"), 100, &[21]),
        record(6, RstStorm, Scope::LocalPort(0, 7002), 100, &[]),
        // RSTs of the closed port to HAProxy: no flow to say which service; two bare
        // anomalies sharing a flow of no known service still go with the outage.
        record(7, RstStorm, peer("127.0.0.1"), 100, &[]),
        record(8, KernelRepeatRst, peer("127.0.0.1"), 100, &[30]),
        record(9, RstRatio, peer("127.0.0.1"), 101, &[30]),
    ];
    let host = HostView {
        local_ips: HashSet::new(),
        // Flow 12 is the upstream's accepted socket on 7001; 11 and 21 HAProxy's connects.
        service_port: [(11, 7001), (12, 7001), (21, 7002)].into(),
        ..HostView::default()
    };
    let incidents = group(&all, &host, 110 * S);
    assert_eq!(incidents.len(), 2, "{incidents:#?}");
    let by_primary = |kind: &str| {
        incidents
            .iter()
            .find(|i| i.primary_kind == kind)
            .unwrap_or_else(|| panic!("{kind}: {incidents:#?}"))
    };
    let abort = by_primary("local_reset_established");
    let mut ids: Vec<u64> = abort.symptoms.clone();
    ids.sort_unstable();
    assert_eq!((abort.primary, ids), (2, vec![1, 3]));
    let down = by_primary("connect_refused");
    let mut ids: Vec<u64> = down.symptoms.clone();
    ids.sort_unstable();
    assert_eq!((down.primary, ids), (4, vec![5, 6, 7, 8, 9]));
}
