//! Anomalies: the one record (`-o json`, the API's `anomalies` and its stream, `flow`'s
//! evidence) and its text renderers (one line per change on the daemon's stdout, in its log and
//! in `linkprobe anomalies --watch`; the table of `linkprobe anomalies`). Field names are a
//! contract.
use serde::{Deserialize, Serialize};

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use crate::{
    attrib::Attributor,
    pipeline::detect::{Anomaly, AnomalyChange, Scope},
    pipeline::flowtable::FlowTable,
    render::table::{human_ns, plain, Paint, Table, Tone},
    untrusted::escape_str,
};

/// One anomaly, as raised / updated / cleared (a change) or active / cleared (a snapshot).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyRecord {
    #[serde(rename = "type")]
    pub record: String,
    /// raised | updated | cleared, or in snapshots active | cleared.
    pub change: String,
    pub id: u64,
    /// When the daemon reported this (CLOCK_MONOTONIC ns, like event `ts_ns`).
    pub at_ns: u64,
    pub kind: String,
    /// Human form, e.g. `peer 10.0.0.7:5432` or `local port 8080`.
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<u64>,
    pub start_ns: u64,
    pub last_ns: u64,
    pub end_ns: Option<u64>,
    pub peak_rate: f64,
    pub evidence: Vec<u64>,
    pub hint: String,
    pub detail: String,
    /// The pods involved (pod attribution on): `namespace/pod` of the evidence flows' owners
    /// and of their remote ends that are pods of this node, and of a peer scope's address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
}

impl AnomalyRecord {
    /// `change` names what happened to it (or what it is, in a snapshot).
    pub fn new(a: &Anomaly, change: &str, at_ns: u64) -> Self {
        let (peer, local_port, cookie) = match &a.scope {
            Scope::Peer(p) => (Some(p.to_string()), None, None),
            Scope::LocalPort(port) => (None, Some(*port), None),
            Scope::Socket(c) => (None, None, Some(*c)),
        };
        AnomalyRecord {
            record: "anomaly".to_owned(),
            change: change.to_owned(),
            id: a.id,
            at_ns,
            kind: a.kind.name().to_owned(),
            scope: a.scope.to_string(),
            peer,
            local_port,
            cookie,
            start_ns: a.start_ns,
            last_ns: a.last_ns,
            end_ns: a.end_ns,
            peak_rate: a.peak_rate,
            evidence: a.evidence.clone(),
            hint: a.hint.to_owned(),
            detail: a.detail.clone(),
            pods: Vec::new(),
        }
    }

    /// A change the detectors reported.
    pub fn of_change(change: &AnomalyChange, at_ns: u64) -> Self {
        let (name, a) = match change {
            AnomalyChange::Raised(a) => ("raised", a),
            AnomalyChange::Updated(a) => ("updated", a),
            AnomalyChange::Cleared(a) => ("cleared", a),
        };
        AnomalyRecord::new(a, name, at_ns)
    }
}

/// Most pods one anomaly names (its evidence is bounded too; this keeps a line readable).
const MAX_PODS_NAMED: usize = 16;

/// Names the pods involved in each of `records`: one pass over the flow table for all of
/// them (evidence cookies → flows → owners and peer pods). Nothing when attribution is off.
pub fn name_pods(records: &mut [AnomalyRecord], flows: &FlowTable, attrib: &Attributor) {
    if !attrib.enabled() || records.is_empty() {
        return;
    }
    let wanted: HashSet<u64> = records
        .iter()
        .flat_map(|r| r.evidence.iter().copied())
        .collect();
    let mut by_cookie: HashMap<u64, Vec<String>> = HashMap::new();
    if !wanted.is_empty() {
        for f in flows.iter().filter(|f| wanted.contains(&f.key.cookie)) {
            let mut names = Vec::new();
            if let Some((ns, pod)) = attrib.owner(f.cgroup_id).names() {
                names.push(format!("{ns}/{pod}"));
            }
            if let Some(p) = attrib.peer_pod(f.remote.ip()) {
                names.push(format!("{}/{}", p.namespace, p.name));
            }
            by_cookie.insert(f.key.cookie, names);
        }
    }
    for r in records.iter_mut() {
        let mut pods: BTreeSet<String> = r
            .evidence
            .iter()
            .filter_map(|c| by_cookie.get(c))
            .flatten()
            .cloned()
            .collect();
        let peer_ip = r.peer.as_deref().and_then(|p| {
            p.parse::<SocketAddr>()
                .map(|a| a.ip())
                .or_else(|_| p.parse::<IpAddr>())
                .ok()
        });
        if let Some(p) = peer_ip.and_then(|ip| attrib.peer_pod(ip)) {
            pods.insert(format!("{}/{}", p.namespace, p.name));
        }
        r.pods = pods
            .into_iter()
            .take(MAX_PODS_NAMED)
            .map(|p| escape_str(&p).into_owned())
            .collect();
    }
}

pub fn table(
    active: &[AnomalyRecord],
    recent: &[AnomalyRecord],
    now_ns: u64,
    wide: bool,
    paint: Paint,
) -> String {
    let mut header = vec![
        "ID", "KIND", "SCOPE", "STATUS", "STARTED", "ENDED", "PEAK", "EVIDENCE", "HINT",
    ];
    if wide {
        header.push("DETAIL");
    }
    let pods = active.iter().chain(recent).any(|a| !a.pods.is_empty());
    if pods {
        header.push("PODS");
    }
    let mut t = Table::new(header);
    for a in active.iter().chain(recent) {
        let evidence = if wide || a.evidence.len() <= 3 {
            a.evidence
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        } else {
            format!(
                "{},… ({})",
                a.evidence[..3]
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                a.evidence.len()
            )
        };
        let mut row = vec![
            plain(a.id.to_string()),
            plain(a.kind.clone()),
            plain(a.scope.clone()),
            (
                a.change.clone(),
                if a.end_ns.is_none() {
                    Tone::Bad
                } else {
                    Tone::Plain
                },
            ),
            plain(format!(
                "{} ago",
                human_ns(now_ns.saturating_sub(a.start_ns))
            )),
            plain(a.end_ns.map_or("-".to_owned(), |e| {
                format!("{} ago", human_ns(now_ns.saturating_sub(e)))
            })),
            plain(format!("{:.1}", a.peak_rate)),
            plain(if evidence.is_empty() {
                "-".to_owned()
            } else {
                evidence
            }),
            plain(a.hint.clone()),
        ];
        if wide {
            row.push(plain(a.detail.clone()));
        }
        if pods {
            row.push(plain(if a.pods.is_empty() {
                "-".to_owned()
            } else {
                a.pods.join(",")
            }));
        }
        t.row(row);
    }
    if active.is_empty() && recent.is_empty() {
        return "no anomalies (active or recently cleared)\n".to_owned();
    }
    t.render(paint)
}

/// One anomaly change, one line.
pub fn line(a: &AnomalyRecord, paint: Paint) -> String {
    let change = match a.change.as_str() {
        "raised" => paint.red("raised"),
        "cleared" => paint.green("cleared"),
        other => paint.yellow(other),
    };
    let pods = if a.pods.is_empty() {
        String::new()
    } else {
        format!(" [pods {}]", a.pods.join(", "))
    };
    format!(
        "anomaly #{} {} {} on {}{pods}: {} (peak {:.2}) — {}",
        a.id, change, a.kind, a.scope, a.detail, a.peak_rate, a.hint
    )
}
