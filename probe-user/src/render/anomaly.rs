//! JSON and text rendering of anomaly changes (field names are a contract).
use serde::Serialize;

use crate::{
    pipeline::detect::{Anomaly, AnomalyChange, Scope},
    pipeline::signal::Peer,
};

#[derive(Debug, Serialize)]
pub struct AnomalyView<'a> {
    #[serde(rename = "type")]
    pub record: &'static str,
    /// raised | updated | cleared
    pub change: &'static str,
    pub id: u64,
    /// When the daemon reported this change (CLOCK_MONOTONIC ns, like event `ts_ns`).
    pub at_ns: u64,
    pub kind: &'static str,
    /// Human form, e.g. `peer 10.0.0.7:5432` or `local port 8080`.
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<u64>,
    pub start_ns: u64,
    pub last_ns: u64,
    pub end_ns: Option<u64>,
    pub peak_rate: f64,
    pub evidence: &'a [u64],
    pub hint: &'static str,
    pub detail: &'a str,
}

fn peer_text(p: &Peer) -> String {
    match p.port {
        Some(port) => std::net::SocketAddr::new(p.addr, port).to_string(),
        None => p.addr.to_string(),
    }
}

impl<'a> AnomalyView<'a> {
    pub fn new(change: &'a AnomalyChange, at_ns: u64) -> Self {
        let (name, a): (&'static str, &'a Anomaly) = match change {
            AnomalyChange::Raised(a) => ("raised", a),
            AnomalyChange::Updated(a) => ("updated", a),
            AnomalyChange::Cleared(a) => ("cleared", a),
        };
        let (peer, local_port, cookie) = match &a.scope {
            Scope::Peer(p) => (Some(peer_text(p)), None, None),
            Scope::LocalPort(port) => (None, Some(*port), None),
            Scope::Socket(c) => (None, None, Some(*c)),
        };
        AnomalyView {
            record: "anomaly",
            change: name,
            id: a.id,
            at_ns,
            kind: a.kind.name(),
            scope: a.scope.to_string(),
            peer,
            local_port,
            cookie,
            start_ns: a.start_ns,
            last_ns: a.last_ns,
            end_ns: a.end_ns,
            peak_rate: a.peak_rate,
            evidence: &a.evidence,
            hint: a.hint,
            detail: &a.detail,
        }
    }
}

/// One human-readable line for the log and text output.
pub fn anomaly_text(change: &AnomalyChange) -> String {
    let v = AnomalyView::new(change, 0);
    format!(
        "anomaly #{} {} {} on {}: {} (peak {:.2}) — {}",
        v.id, v.change, v.kind, v.scope, v.detail, v.peak_rate, v.hint
    )
}
