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
    clock::{rfc3339_of_monotonic, time_of_day},
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
    /// `at_ns` in local wall-clock time, RFC 3339 (as are `start_time`, `last_time`,
    /// `end_time`): the monotonic values order exactly, these line up with other logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    pub kind: String,
    /// Human form, e.g. `peer 10.0.0.7:5432` or `local port 8080`.
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<u64>,
    /// The network namespace (cookie) of a peer or local port scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_cookie: Option<u64>,
    /// Its name: `host`, an `ip netns` name, or `pid N (comm)` of a process in it. A scope
    /// outside the host's namespace names it in `scope` too (`local port 8080 in netns ux1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    pub start_ns: u64,
    pub last_ns: u64,
    pub end_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// The highest value while active, in `peak_unit`.
    pub peak_rate: f64,
    /// What `peak_rate` counts: `RST/s`, `ratio` (a fraction, shown as %) or `count` (per
    /// window, or the kernel's count).
    #[serde(default)]
    pub peak_unit: String,
    pub evidence: Vec<u64>,
    /// Flows of the flow table it covers (its scope and span, the fact its kind counts), in a
    /// snapshot; `evidence` is a bounded sample of them. Absent in changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<u64>,
    pub hint: String,
    pub detail: String,
    /// The pods involved (pod attribution on): `namespace/pod` of the evidence flows' owners
    /// and of their remote ends that are pods of this node, and of a peer scope's address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// The processes (`comm/pid`) owning the evidence flows still in the flow table: the
    /// client that failed, the server whose listener reset (at most a few, distinct).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

impl AnomalyRecord {
    /// `change` names what happened to it (or what it is, in a snapshot).
    pub fn new(a: &Anomaly, change: &str, at_ns: u64) -> Self {
        let (peer, local_port, cookie) = match &a.scope {
            Scope::Peer(p) => (Some(p.to_string()), None, None),
            Scope::LocalPort(_, port) => (None, Some(*port), None),
            Scope::Socket(c) => (None, None, Some(*c)),
        };
        AnomalyRecord {
            record: "anomaly".to_owned(),
            change: change.to_owned(),
            id: a.id,
            at_ns,
            time: Some(rfc3339_of_monotonic(at_ns)),
            kind: a.kind.name().to_owned(),
            scope: a.scope.to_string(),
            peer,
            local_port,
            cookie,
            netns_cookie: a.scope.netns().filter(|c| *c != 0),
            netns: None,
            start_ns: a.start_ns,
            last_ns: a.last_ns,
            end_ns: a.end_ns,
            start_time: Some(rfc3339_of_monotonic(a.start_ns)),
            last_time: Some(rfc3339_of_monotonic(a.last_ns)),
            end_time: a.end_ns.map(rfc3339_of_monotonic),
            peak_rate: a.peak_rate,
            peak_unit: a.kind.peak_unit().to_owned(),
            evidence: a.evidence.clone(),
            flows: None,
            hint: a.hint.to_owned(),
            detail: a.detail.clone(),
            pods: Vec::new(),
            processes: Vec::new(),
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

/// Most processes named per anomaly.
const MAX_PROCESSES_NAMED: usize = 4;

/// Names the processes of each record's evidence flows still in the table (one pass over the
/// table for all records, only when some record has evidence).
pub fn name_processes(records: &mut [AnomalyRecord], flows: &FlowTable) {
    let wanted: HashSet<u64> = records
        .iter()
        .flat_map(|r| r.evidence.iter().copied())
        .collect();
    if wanted.is_empty() {
        return;
    }
    let by_cookie: HashMap<u64, String> = flows
        .iter()
        .filter(|f| wanted.contains(&f.key.cookie))
        .filter_map(|f| {
            let p = f.process.as_ref()?;
            Some((f.key.cookie, format!("{}/{}", p.comm.as_str(), p.pid)))
        })
        .collect();
    for r in records.iter_mut() {
        let mut seen: BTreeSet<&String> = BTreeSet::new();
        for c in &r.evidence {
            if let Some(p) = by_cookie.get(c) {
                if seen.len() < MAX_PROCESSES_NAMED {
                    seen.insert(p);
                }
            }
        }
        r.processes = seen.into_iter().cloned().collect();
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
        "ID", "KIND", "SCOPE", "STATUS", "STARTED", "ENDED", "PEAK", "FLOWS", "EVIDENCE", "HINT",
    ];
    if wide {
        header.push("DETAIL");
    }
    let pods = active.iter().chain(recent).any(|a| !a.pods.is_empty());
    if pods {
        header.push("PODS");
    }
    let processes = active.iter().chain(recent).any(|a| !a.processes.is_empty());
    if processes {
        header.push("PROCESSES");
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
            plain(when(a.start_time.as_deref(), a.start_ns, now_ns)),
            plain(
                a.end_ns
                    .map_or("-".to_owned(), |e| when(a.end_time.as_deref(), e, now_ns)),
            ),
            plain(peak(a)),
            plain(a.flows.map_or("-".to_owned(), |n| n.to_string())),
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
        if processes {
            row.push(plain(if a.processes.is_empty() {
                "-".to_owned()
            } else {
                a.processes.join(",")
            }));
        }
        t.row(row);
    }
    if active.is_empty() && recent.is_empty() {
        return "no anomalies (active or recently cleared)\n".to_owned();
    }
    t.render(paint)
}

/// `01:40:03 (2m10s ago)`: the local time of day and how long ago (the time alone where the
/// record has no wall-clock time).
fn when(time: Option<&str>, at_ns: u64, now_ns: u64) -> String {
    let ago = human_ns(now_ns.saturating_sub(at_ns));
    match time {
        Some(t) => format!("{} ({ago} ago)", time_of_day(t).get(..8).unwrap_or(t)),
        None => format!("{ago} ago"),
    }
}

/// The peak with its unit: `98 RST/s`, `12.5 %`, `3 in 1 s` (a count per 1 s window: the
/// detectors' and the kernel's repeat check's).
pub fn peak(a: &AnomalyRecord) -> String {
    match a.peak_unit.as_str() {
        "ratio" => format!("{:.1} %", a.peak_rate * 100.0),
        "RST/s" => format!("{:.0} RST/s", a.peak_rate),
        "count" => format!("{:.0} in 1 s", a.peak_rate),
        "" => format!("{:.1}", a.peak_rate),
        unit => format!("{:.0} {unit}", a.peak_rate),
    }
}

/// One anomaly change, one line, starting with the local time it was reported at. A cleared
/// one says when it was active and that its figures were its peak, not a current rate.
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
    let at = a.time.as_deref().map_or_else(
        || format!("{:.6}", a.at_ns as f64 / 1e9),
        |t| time_of_day(t).to_owned(),
    );
    let head = format!(
        "{at} anomaly #{} {change} {} on {}{pods}",
        a.id, a.kind, a.scope
    );
    match (a.change.as_str(), a.end_ns) {
        ("cleared", Some(end)) => {
            let span = |t: &Option<String>, ns: u64| {
                t.as_deref().map_or_else(
                    || format!("{:.3}", ns as f64 / 1e9),
                    |t| time_of_day(t).to_owned(),
                )
            };
            format!(
                "{head}: active {} – {} ({}); peak {} was: {}",
                span(&a.start_time, a.start_ns),
                span(&a.end_time, end),
                human_ns(end.saturating_sub(a.start_ns)),
                peak(a),
                a.detail
            )
        }
        ("updated", _) => format!("{head}: new peak {}: {}", peak(a), a.detail),
        _ => format!("{head}: {} (peak {}) — {}", a.detail, peak(a), a.hint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::detect::AnomalyKind;

    fn storm(end_ns: Option<u64>) -> Anomaly {
        Anomaly {
            id: 7,
            kind: AnomalyKind::RstStorm,
            scope: Scope::LocalPort(0, 9999),
            start_ns: 1_000_000_000,
            end_ns,
            last_ns: 9_000_000_000,
            peak_rate: 98.0,
            evidence: vec![1],
            hint: AnomalyKind::RstStorm.hint(),
            detail: "98 RST/s (raise at 20/s, baseline 0.0/s)".into(),
        }
    }

    /// A cleared anomaly's line says when it was active and that its rate was the peak; times
    /// are local wall-clock times (RFC 3339 in the record, the time of day in the line).
    #[test]
    fn a_cleared_anomaly_reads_as_past_with_its_peak_and_local_times() {
        let mut r = AnomalyRecord::new(&storm(Some(12_000_000_000)), "cleared", 12_500_000_000);
        let start = r.start_time.clone().expect("start_time");
        let end = r.end_time.clone().expect("end_time");
        assert_eq!(
            start.len(),
            "2026-11-30T01:40:03.123456+01:00".len(),
            "{start}"
        );
        assert_eq!(r.peak_unit, "RST/s");
        let text = line(&r, Paint::OFF);
        assert!(
            text.starts_with(&format!(
                "{} anomaly #7 cleared rst_storm on local port 9999: active {} – {} (11.0s); \
                 peak 98 RST/s was: 98 RST/s",
                time_of_day(r.time.as_deref().expect("time")),
                time_of_day(&start),
                time_of_day(&end)
            )),
            "{text}"
        );
        // An older daemon's record (no wall-clock times) still renders.
        (r.time, r.start_time, r.end_time) = (None, None, None);
        assert!(line(&r, Paint::OFF).starts_with("12.500000 anomaly #7 cleared"));
    }

    #[test]
    fn peaks_have_units() {
        let mut r = AnomalyRecord::new(&storm(None), "active", 2);
        assert_eq!(peak(&r), "98 RST/s");
        r.peak_unit = "ratio".into();
        r.peak_rate = 0.125;
        assert_eq!(peak(&r), "12.5 %");
        r.peak_unit = "count".into();
        r.peak_rate = 3.0;
        assert_eq!(peak(&r), "3 in 1 s");
        let t = table(&[r], &[], 5_000_000_000, false, Paint::OFF);
        assert!(t.contains("3 in 1 s"), "{t}");
    }
}
