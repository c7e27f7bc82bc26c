//! `linkprobe anomalies`: incidents first, then their anomalies, with the on-call filters
//! (`--since`, `--kind`, `--peer`, `--netns`, `--active`) applied to both; `--watch` follows the
//! changes that pass `--kind`, `--peer` and `--netns`.
use std::{net::IpAddr, net::SocketAddr, path::Path};

use crate::{
    api::proto::{Filter, Query, Reply, SortKey},
    cli::{AnomaliesArgs, View},
    clock::monotonic_ns,
    ctl::{
        conn::Conn,
        output::{check, json, out, overflow, reply_name, CtlError},
    },
    render::{
        anomaly::{self, AnomalyRecord},
        incident::{self, IncidentRecord},
        table::Paint,
    },
};

/// The filters of one `anomalies` command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pick {
    pub since_ms: Option<u64>,
    pub kind: Option<String>,
    pub peer: Option<String>,
    pub active: bool,
    pub netns: Option<String>,
}

impl Pick {
    pub fn of(a: &AnomaliesArgs) -> Pick {
        Pick {
            since_ms: a.since,
            kind: a.kind.clone(),
            peer: a.peer.clone(),
            active: a.active,
            netns: a.netns.clone(),
        }
    }

    /// `--kind`, `--peer` and `--netns` (what a change in the stream is judged by too).
    pub fn about(&self, a: &AnomalyRecord) -> bool {
        self.kind.as_ref().is_none_or(|k| &a.kind == k)
            && self.netns.as_deref().is_none_or(|n| {
                a.netns.as_deref() == Some(n) || a.netns_cookie.is_some_and(|c| c.to_string() == n)
            })
            && self
                .peer
                .as_deref()
                .is_none_or(|p| peer_matches(p, a.peer.as_deref()))
    }

    fn recent(&self, end_ns: Option<u64>, now_ns: u64) -> bool {
        let since = self
            .since_ms
            .map(|ms| now_ns.saturating_sub(ms.saturating_mul(1_000_000)));
        match end_ns {
            None => true,
            Some(end) => !self.active && since.is_none_or(|s| end >= s),
        }
    }

    pub fn anomaly(&self, a: &AnomalyRecord, now_ns: u64) -> bool {
        self.about(a) && self.recent(a.end_ns, now_ns)
    }

    /// An incident passes when it is recent enough and one of its anomalies is about what was
    /// asked.
    pub fn incident(&self, i: &IncidentRecord, all: &[&AnomalyRecord], now_ns: u64) -> bool {
        let mine = |a: &&&AnomalyRecord| a.id == i.primary || i.symptoms.contains(&a.id);
        self.recent(i.end_ns, now_ns) && all.iter().filter(mine).any(|a| self.about(a))
    }

    fn is_empty(&self) -> bool {
        *self == Pick::default()
    }
}

/// `--peer IP` matches that address on any port; `--peer IP:PORT` that endpoint.
fn peer_matches(wanted: &str, peer: Option<&str>) -> bool {
    let Some(peer) = peer else {
        return false;
    };
    let ip_of = |s: &str| {
        s.parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| s.parse::<IpAddr>())
            .ok()
    };
    match wanted.parse::<SocketAddr>() {
        Ok(w) => peer.parse::<SocketAddr>().is_ok_and(|p| p == w),
        Err(_) => ip_of(wanted).is_some_and(|w| ip_of(peer) == Some(w)),
    }
}

/// A `--netns` the daemon cannot resolve is an error, not an empty answer: asked as a flow
/// filter (no flows returned), whose answer says what is wrong. A name shown by the daemon
/// (`pid N (comm)`) is not one it resolves, and is taken as given.
fn check_netns(socket: &Path, netns: &str) -> Result<(), CtlError> {
    if netns.starts_with("pid ") {
        return Ok(());
    }
    let q = Query::Flows {
        filter: Filter {
            netns: Some(netns.to_owned()),
            ..Filter::default()
        },
        sort: SortKey::default(),
        limit: 0,
    };
    check(Conn::ask(socket, q)?).map(|_| ())
}

pub fn run(socket: &Path, a: &AnomaliesArgs, paint: Paint) -> Result<(), CtlError> {
    let pick = Pick::of(a);
    if let Some(n) = &pick.netns {
        check_netns(socket, n)?;
    }
    let (follow, view) = (a.watch, a.output);
    let mut conn = Conn::open(socket)?;
    conn.send(Query::Anomalies { watch: follow })?;
    let r = check(conn.reply()?)?;
    let Reply::Anomalies {
        active,
        recent,
        incidents,
    } = r
    else {
        return Err(CtlError::Unexpected(reply_name(&r)));
    };
    let now = monotonic_ns();
    let total = active.len() + recent.len();
    let all: Vec<&AnomalyRecord> = active.iter().chain(&recent).collect();
    let incidents: Vec<IncidentRecord> = incidents
        .into_iter()
        .filter(|i| pick.incident(i, &all, now))
        .collect();
    let keep = |v: Vec<AnomalyRecord>| -> Vec<AnomalyRecord> {
        v.into_iter().filter(|x| pick.anomaly(x, now)).collect()
    };
    let (active, recent) = (keep(active), keep(recent));
    match view {
        View::Json if follow => {
            // A stream: one object per line.
            for i in &incidents {
                out(&format!(
                    "{}\n",
                    serde_json::to_string(i).unwrap_or_default()
                ))?;
            }
            for x in active.iter().chain(&recent) {
                out(&format!(
                    "{}\n",
                    serde_json::to_string(x).unwrap_or_default()
                ))?;
            }
        }
        View::Json => json(&serde_json::json!({
            "incidents": incidents, "active": active, "recent": recent
        }))?,
        v => out(&text(
            &incidents,
            &active,
            &recent,
            total,
            &pick,
            v == View::Wide,
            paint,
        ))?,
    }
    if !follow {
        return Ok(());
    }
    loop {
        let (r, raw) = conn.next_raw()?;
        match check(r)? {
            Reply::Anomaly { anomaly: x } if pick.about(&x) => match view {
                View::Json => out(&format!(
                    "{}\n",
                    serde_json::to_string(&x).unwrap_or_default()
                ))?,
                _ => out(&format!("{}\n", anomaly::line(&x, paint)))?,
            },
            Reply::Anomaly { .. } => {}
            Reply::Overflow { lost } => overflow(lost, view)?,
            Reply::Subscribed => eprintln!("linkprobe: watching anomaly changes (Ctrl-C to stop)"),
            other => {
                log::debug!("ignoring {} in the stream: {raw}", reply_name(&other));
            }
        }
    }
}

/// Incidents, then the anomalies; `(0 of N)` when the filters leave nothing.
fn text(
    incidents: &[IncidentRecord],
    active: &[AnomalyRecord],
    recent: &[AnomalyRecord],
    total: usize,
    pick: &Pick,
    wide: bool,
    paint: Paint,
) -> String {
    let now = monotonic_ns();
    if active.is_empty() && recent.is_empty() {
        return if pick.is_empty() {
            "no anomalies (active or recently cleared)\n".to_owned()
        } else {
            format!("no incident or anomaly matches (0 of {total} anomalies)\n")
        };
    }
    let mut s = incident::table(incidents, now, paint);
    s.push_str(&incident::requests_text(incidents));
    s.push('\n');
    s.push_str(&anomaly::table(active, recent, now, wide, paint));
    if !pick.is_empty() {
        s.push_str(&format!(
            "({} of {total} anomalies)\n",
            active.len() + recent.len()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_match_by_address_or_endpoint() {
        assert!(peer_matches("127.0.0.1", Some("127.0.0.1:9999")));
        assert!(peer_matches("127.0.0.1", Some("127.0.0.1")));
        assert!(peer_matches("127.0.0.1:9999", Some("127.0.0.1:9999")));
        assert!(!peer_matches("127.0.0.1:9999", Some("127.0.0.1")));
        assert!(!peer_matches("127.0.0.1:9999", Some("127.0.0.1:80")));
        assert!(peer_matches("[fd00::1]:443", Some("[fd00::1]:443")));
        assert!(!peer_matches("10.0.0.1", None));
    }
}
