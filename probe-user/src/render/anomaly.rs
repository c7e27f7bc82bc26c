//! Anomalies: the one record (`-o json`, the API's `anomalies` and its stream, `flow`'s
//! evidence) and its text renderers (one line per change on the daemon's stdout, in its log and
//! in `linkprobe anomalies --watch`; the table of `linkprobe anomalies`). Field names are a
//! contract.
use serde::{Deserialize, Serialize};

use crate::{
    pipeline::detect::{Anomaly, AnomalyChange, Scope},
    render::table::{human_ns, plain, Paint, Table, Tone},
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
    format!(
        "anomaly #{} {} {} on {}: {} (peak {:.2}) — {}",
        a.id, change, a.kind, a.scope, a.detail, a.peak_rate, a.hint
    )
}
