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
        }),
        Err(_) => Scope::Peer(Peer {
            addr: s.parse().expect("an address"),
            port: None,
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
        record(4, KernelRepeatRst, Scope::LocalPort(9999), 101, &[]),
        record(5, RstStorm, peer(up), 101, &[50, 51, 52]),
        record(6, RstStorm, peer("127.0.0.1"), 101, &[]),
        record(7, RstStorm, Scope::LocalPort(9999), 101, &[]),
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
    let incidents = group(&all, &HashSet::new(), 805 * S);
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
        record(1, RstStorm, Scope::LocalPort(443), 10, &[]),
        record(2, RstStorm, peer("10.0.0.7:443"), 10, &[]),
    ];
    assert_eq!(group(&all, &HashSet::new(), 11 * S).len(), 2);
    let ours: HashSet<IpAddr> = [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))].into();
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
