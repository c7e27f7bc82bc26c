//! Proxy requests joined to a flow (`pipeline::requests`): the record in a flow's JSON
//! (`requests`) and their text in `linkprobe flow` and the `flows` table. Field names are a
//! contract.
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{
    pipeline::requests::kept::{FlowRequests, JoinedRequest},
    render::table::{plain, Paint, Table, Tone},
    untrusted::escape_str,
};

/// One request as a flow shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// `start_time` in local wall-clock time, RFC 3339.
    pub time: String,
    pub duration_ms: u64,
    /// The response code; absent when none was sent (Envoy's 0).
    pub status: Option<u16>,
    /// Envoy's response flags as logged (`UC,URX`), `-` for none.
    pub flags: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
    /// `upstream` or `downstream`: what this flow was for the request.
    pub side: String,
    /// `exact` (by tuple) or `approximate` (by upstream host and time only).
    #[serde(rename = "match")]
    pub matched: String,
    /// The flow of the request's other side (socket cookie), where it matched too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_flow: Option<u64>,
}

impl RequestRecord {
    pub fn of(r: &JoinedRequest) -> RequestRecord {
        // Text from the log is an outsider's: escaped for terminals.
        let esc = |t: &str| escape_str(t).into_owned();
        let secs = i64::try_from(r.start_unix_ns.div_euclid(1_000_000_000)).unwrap_or(0);
        let wall = i128::from(secs) * 1_000_000_000 + r.start_unix_ns.rem_euclid(1_000_000_000);
        RequestRecord {
            time: crate::clock::rfc3339_local(wall),
            duration_ms: r.duration_ms,
            status: r.status,
            flags: esc(&r.flags),
            details: r.details.as_deref().map(esc),
            request_id: r.request_id.as_deref().map(esc),
            upstream_host: r.upstream_host.map(|h| h.to_string()),
            side: r.side.name().to_owned(),
            matched: if r.exact { "exact" } else { "approximate" }.to_owned(),
            other_flow: r.other_flow,
        }
    }

    /// All of a flow's requests, optionally only those `keep` accepts.
    pub fn all_of(f: &FlowRequests, keep: impl Fn(&JoinedRequest) -> bool) -> Vec<RequestRecord> {
        f.kept
            .iter()
            .filter(|r| keep(r))
            .map(RequestRecord::of)
            .collect()
    }

    fn failed(&self) -> bool {
        self.flags != "-" || self.status.is_some_and(|s| s >= 500)
    }

    fn status_text(&self) -> String {
        self.status.map_or("-".to_owned(), |s| s.to_string())
    }
}

/// `503 UC ×2, 200` for a table cell: distinct (status, flags) pairs, most frequent first.
pub fn summary(requests: &[RequestRecord], more: u64) -> String {
    if requests.is_empty() {
        return "-".to_owned();
    }
    let mut groups: Vec<(String, usize)> = Vec::new();
    for r in requests {
        let key = if r.flags == "-" {
            r.status_text()
        } else {
            format!("{} {}", r.status_text(), r.flags)
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some(g) => g.1 += 1,
            None => groups.push((key, 1)),
        }
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.1));
    let mut text: Vec<String> = groups
        .into_iter()
        .map(|(k, n)| if n > 1 { format!("{k} ×{n}") } else { k })
        .collect();
    if more > 0 {
        text.push(format!("+{more} more"));
    }
    text.join(", ")
}

/// The `requests` section of `linkprobe flow`.
pub fn section(requests: &[RequestRecord], more: u64, paint: Paint) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}",
        paint.bold(&format!(
            "requests ({} joined{})",
            requests.len() as u64 + more,
            if more > 0 {
                format!(", the last {} kept", requests.len())
            } else {
                String::new()
            }
        ))
    );
    let mut t = Table::new(vec![
        "TIME",
        "STATUS",
        "FLAGS",
        "DURATION",
        "SIDE",
        "MATCH",
        "REQUEST ID",
        "OTHER FLOW",
        "DETAILS",
    ]);
    for r in requests {
        let tone = if r.failed() { Tone::Bad } else { Tone::Plain };
        t.row(vec![
            plain(crate::clock::time_of_day(&r.time).to_owned()),
            (r.status_text(), tone),
            (r.flags.clone(), tone),
            plain(format!("{} ms", r.duration_ms)),
            plain(r.side.clone()),
            (
                r.matched.clone(),
                if r.matched == "exact" {
                    Tone::Plain
                } else {
                    Tone::Warn
                },
            ),
            plain(r.request_id.clone().unwrap_or_else(|| "-".to_owned())),
            plain(r.other_flow.map_or("-".to_owned(), |c| c.to_string())),
            plain(r.details.clone().unwrap_or_else(|| "-".to_owned())),
        ]);
    }
    for l in t.render(paint).lines() {
        let _ = writeln!(s, "  {}", l.trim_end());
    }
    s
}
