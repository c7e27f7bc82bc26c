//! Incidents: anomalies that share evidence, grouped so that one outage reads as one incident
//! with a primary cause and its symptoms (a refused upstream raises `connect_refused`, RST
//! storms on both ends and a kernel repeat-RST; that is one incident). Built from the anomaly
//! records of a snapshot (the API's `anomalies` answer); the record and its table. Field names
//! are a contract.
//!
//! Two anomalies are linked when their active spans are within [`LINK_GAP_NS`] of each other
//! and they share a key: a flow (evidence cookie or socket scope), a peer endpoint, or a
//! service port of this host (a local port, a peer endpoint whose address is this host's, the
//! service an evidence flow was about). A bare peer anomaly (a client address) linked to
//! nothing then joins the most causal anomaly about the same address. An incident is a
//! connected group; its id is its first anomaly's.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use crate::{
    clock::time_of_day,
    render::{
        anomaly::{peak, AnomalyRecord},
        request::RequestRecord,
        table::{human_ns, plain, Paint, Table, Tone},
    },
};

/// Anomalies further apart in time than this are separate incidents, whatever they share.
pub const LINK_GAP_NS: u64 = 30_000_000_000;

/// Most anomalies grouped per answer (the snapshot is bounded by `recent_len` and the active
/// ones; this bounds the work whatever the configuration).
const MAX_GROUPED: usize = 4_096;

/// One incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncidentRecord {
    #[serde(rename = "type")]
    pub record: String,
    /// Its first anomaly's id.
    pub id: u64,
    /// `active` while any of its anomalies is, else `cleared`.
    pub status: String,
    /// `critical` (connections fail outright: refused, timed out, unreachable, or at least
    /// half of them reset), `warning` (resets, storms, ratios, loss), `info` (SYN retries, the
    /// kernel's repeat-RST check alone).
    pub severity: String,
    /// The anomaly that explains the others (the most causal kind, then the earliest).
    pub primary: u64,
    pub primary_kind: String,
    pub primary_scope: String,
    /// The other anomalies of the incident, by id.
    pub symptoms: Vec<u64>,
    /// Anomalies per kind (primary included).
    pub kinds: BTreeMap<String, u32>,
    /// Flows it covers, at least: the most any of its anomalies covers in the flow table, or
    /// the distinct flows its anomalies name as evidence if more.
    pub flows: u64,
    pub start_ns: u64,
    pub last_ns: u64,
    pub end_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// The primary anomaly's hint.
    pub hint: String,
    /// One line: primary cause and symptoms.
    pub summary: String,
    /// Proxy requests (`[envoy]` access logs) joined to the flows its anomalies cover or
    /// name, the latest [`MAX_REQUESTS`]; `requests_total` counts them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<AffectedRequest>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requests_total: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Requests listed per incident.
pub const MAX_REQUESTS: usize = 20;

/// A request an incident affected: the request and the flow that carried it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffectedRequest {
    /// The flow's socket cookie (`linkprobe flow <cookie>`).
    pub flow: u64,
    #[serde(flatten)]
    pub request: RequestRecord,
}

/// Adds to each incident the requests joined to the flows its anomalies cover or name:
/// `flows_of` gives, per anomaly id, those flows' cookies; `requests_of` a flow's requests.
pub fn add_requests(
    incidents: &mut [IncidentRecord],
    flows_of: &HashMap<u64, Vec<u64>>,
    requests_of: impl Fn(u64) -> Vec<RequestRecord>,
) {
    for i in incidents {
        let flows: BTreeSet<u64> = std::iter::once(&i.primary)
            .chain(&i.symptoms)
            .flat_map(|id| flows_of.get(id).into_iter().flatten().copied())
            .collect();
        let mut all: Vec<(u64, RequestRecord)> = flows
            .into_iter()
            .flat_map(|c| requests_of(c).into_iter().map(move |r| (c, r)))
            .collect();
        all.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        i.requests_total = all.len() as u64;
        let skip = all.len().saturating_sub(MAX_REQUESTS);
        i.requests = all
            .into_iter()
            .skip(skip)
            .map(|(flow, request)| AffectedRequest { flow, request })
            .collect();
    }
}

/// Under the incidents table: the requests each incident affected, summarised, with the
/// latest one as an example.
pub fn requests_text(incidents: &[IncidentRecord]) -> String {
    let mut s = String::new();
    for i in incidents.iter().filter(|i| i.requests_total > 0) {
        let records: Vec<RequestRecord> = i.requests.iter().map(|r| r.request.clone()).collect();
        let more = i.requests_total.saturating_sub(records.len() as u64);
        s.push_str(&format!(
            "#{} affected {} proxy requests: {}\n",
            i.id,
            i.requests_total,
            crate::render::request::summary(&records, more)
        ));
        if let Some(last) = i.requests.last() {
            let r = &last.request;
            s.push_str(&format!(
                "  latest: {} {} {} {} on flow {} ({}, {})\n",
                time_of_day(&r.time),
                r.status.map_or("-".to_owned(), |c| c.to_string()),
                r.flags,
                r.request_id.as_deref().unwrap_or("-"),
                last.flow,
                r.side,
                r.matched
            ));
        }
    }
    s
}

/// How causal a kind is: lower explains higher (a refused connect explains the RST storm it
/// causes, not the reverse).
fn cause_rank(kind: &str) -> u8 {
    match kind {
        "connect_refused" => 0,
        "connect_unreachable" => 1,
        // Connects the app gave up on before the kernel did: SYNs unanswered, like a timeout.
        "connect_timeout" | "connect_abandoned" => 2,
        "local_reset_established" => 3,
        "reset_after_established" => 4,
        "syn_retry" => 5,
        "retransmit_rate" => 6,
        "rst_ratio" => 7,
        "rst_storm" => 8,
        "kernel_repeat_rst" => 9,
        _ => 10,
    }
}

fn severity(members: &[&AnomalyRecord]) -> &'static str {
    let fails = |a: &&AnomalyRecord| {
        matches!(
            a.kind.as_str(),
            "connect_refused" | "connect_timeout" | "connect_unreachable" | "connect_abandoned"
        ) || (a.kind == "rst_ratio" && a.peak_rate >= 0.5)
    };
    if members.iter().any(fails) {
        "critical"
    } else if members
        .iter()
        .all(|a| matches!(a.kind.as_str(), "syn_retry" | "kernel_repeat_rst"))
    {
        "info"
    } else {
        "warning"
    }
}

/// What an anomaly can share with another. Endpoints and ports are in a network namespace
/// (its cookie, where the record has one): `:8080` in two namespaces is two services.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Flow(u64),
    Endpoint(Option<u64>, SocketAddr),
    ServicePort(Option<u64>, u16),
}

/// What this host knows about the flows anomalies name: for each evidence cookie still in the
/// flow table, the service port of this host it was about (a server flow's local port, a
/// client flow's remote port when the remote end is this host), and this host's addresses.
#[derive(Debug, Default)]
pub struct HostView {
    pub local_ips: HashSet<IpAddr>,
    pub service_port: HashMap<u64, u16>,
    /// Each such flow's network namespace (cookie).
    pub flow_netns: HashMap<u64, u64>,
    /// The namespaces each of this host's addresses is in (from its sockets): a peer endpoint
    /// at one of them is a service port of that namespace, maybe not the anomaly's own.
    pub ip_netns: HashMap<IpAddr, BTreeSet<u64>>,
}

impl HostView {
    /// The namespace of the service at this host's `ip`, seen from namespace `ns`: its own
    /// where it has the address (loopback always), else the one that has it.
    fn netns_of(&self, ip: IpAddr, ns: Option<u64>) -> Option<u64> {
        let have = self.ip_netns.get(&ip);
        if ip.is_loopback() || have.is_none_or(|s| ns.is_some_and(|n| s.contains(&n))) {
            return ns;
        }
        have.and_then(|s| s.first().copied())
    }
}

fn keys(a: &AnomalyRecord, host: &HostView) -> Vec<Key> {
    let mut keys: Vec<Key> = Vec::new();
    let ns = a.netns_cookie;
    for c in a.evidence.iter().chain(&a.cookie) {
        keys.push(Key::Flow(*c));
        let flow_ns = host.flow_netns.get(c).copied().or(ns);
        keys.extend(
            host.service_port
                .get(c)
                .map(|p| Key::ServicePort(flow_ns, *p)),
        );
    }
    keys.extend(a.local_port.map(|p| Key::ServicePort(ns, p)));
    if let Some(sa) = a.peer.as_deref().and_then(|p| p.parse::<SocketAddr>().ok()) {
        keys.push(Key::Endpoint(ns, sa));
        // A peer endpoint on this host is one of our service ports.
        if sa.ip().is_loopback() || host.local_ips.contains(&sa.ip()) {
            keys.push(Key::ServicePort(host.netns_of(sa.ip(), ns), sa.port()));
        }
    }
    keys
}

/// The address of a bare peer scope (`peer 10.0.0.7`: the client side of our services).
fn bare_peer(a: &AnomalyRecord) -> Option<IpAddr> {
    a.peer.as_deref().and_then(|p| p.parse::<IpAddr>().ok())
}

fn peer_ip(a: &AnomalyRecord) -> Option<IpAddr> {
    let p = a.peer.as_deref()?;
    p.parse::<SocketAddr>()
        .map(|sa| sa.ip())
        .or_else(|_| p.parse::<IpAddr>())
        .ok()
}

/// The span an anomaly was active in: start to its end, or to `now` while active.
fn span(a: &AnomalyRecord, now_ns: u64) -> (u64, u64) {
    (
        a.start_ns,
        a.end_ns.unwrap_or(now_ns.max(a.last_ns)).max(a.start_ns),
    )
}

struct Groups(Vec<usize>);

impl Groups {
    fn find(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }

    fn join(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[a.max(b)] = a.min(b);
        }
    }
}

/// Groups `anomalies` (active and recently cleared) into incidents, most recent activity
/// first. First by what they share for certain (a flow, an endpoint, a service port of this
/// host); then a bare peer anomaly still alone (RSTs to a client address, without flows that
/// say which service: a closed port's answers) joins the most causal anomaly about the same
/// address at the same time, so it does not tie two outages together.
pub fn group(anomalies: &[AnomalyRecord], host: &HostView, now_ns: u64) -> Vec<IncidentRecord> {
    let anomalies = &anomalies[..anomalies.len().min(MAX_GROUPED)];
    let mut groups = Groups((0..anomalies.len()).collect());
    // Each key's anomalies, linked pairwise when close enough in time. Sorted by start, a
    // new one is compared with the key's latest-ending one so far (O(n log n) overall).
    let mut order: Vec<usize> = (0..anomalies.len()).collect();
    order.sort_by_key(|&i| (anomalies[i].start_ns, anomalies[i].id));
    let mut last_of: HashMap<Key, (usize, u64)> = HashMap::new();
    for &i in &order {
        let (start, end) = span(&anomalies[i], now_ns);
        for key in keys(&anomalies[i], host) {
            match last_of.get_mut(&key) {
                Some((j, reach)) => {
                    if start <= reach.saturating_add(LINK_GAP_NS) {
                        groups.join(i, *j);
                    }
                    if end >= *reach {
                        (*j, *reach) = (i, end);
                    }
                }
                None => {
                    last_of.insert(key, (i, end));
                }
            }
        }
    }
    attach_bare_peers(anomalies, &mut groups, now_ns);
    let mut members: BTreeMap<usize, Vec<&AnomalyRecord>> = BTreeMap::new();
    for (i, a) in anomalies.iter().enumerate() {
        let root = groups.find(i);
        members.entry(root).or_default().push(a);
    }
    let mut incidents: Vec<IncidentRecord> = members
        .into_values()
        .map(|m| incident(&m, now_ns))
        .collect();
    // Active first, the most severe first, then the most recent.
    let rank = |severity: &str| match severity {
        "critical" => 0,
        "warning" => 1,
        _ => 2,
    };
    incidents.sort_by_key(|i| {
        (
            i.status != "active",
            rank(&i.severity),
            std::cmp::Reverse(i.end_ns.unwrap_or(u64::MAX)),
            std::cmp::Reverse(i.id),
        )
    });
    incidents
}

/// How good a partner is, lower first: not bare, most causal kind, earliest, lowest id.
type Partner = (bool, u8, u64, u64);

/// A group of bare peer anomalies only (linked to no endpoint, port or flow of a service)
/// joins the most causal anomaly outside it (then the earliest) about the same address whose
/// span is within [`LINK_GAP_NS`] of one of its members.
fn attach_bare_peers(anomalies: &[AnomalyRecord], groups: &mut Groups, now_ns: u64) {
    let before: Vec<usize> = (0..anomalies.len()).map(|i| groups.find(i)).collect();
    let mut all_bare: HashMap<usize, bool> = HashMap::new();
    for (i, a) in anomalies.iter().enumerate() {
        let bare = bare_peer(a).is_some();
        all_bare
            .entry(before[i])
            .and_modify(|b| *b &= bare)
            .or_insert(bare);
    }
    let mut by_ip: HashMap<(Option<u64>, IpAddr), Vec<usize>> = HashMap::new();
    for (i, a) in anomalies.iter().enumerate() {
        if let Some(ip) = peer_ip(a) {
            by_ip.entry((a.netns_cookie, ip)).or_default().push(i);
        }
    }
    let near = |i: usize, j: usize| {
        let ((s1, e1), (s2, e2)) = (span(&anomalies[i], now_ns), span(&anomalies[j], now_ns));
        s1 <= e2.saturating_add(LINK_GAP_NS) && s2 <= e1.saturating_add(LINK_GAP_NS)
    };
    // Each such group's best partner over all its members, by `Partner` rank.
    let mut best: HashMap<usize, (usize, Partner)> = HashMap::new();
    for (i, a) in anomalies.iter().enumerate() {
        let (Some(ip), Some(true)) = (bare_peer(a), all_bare.get(&before[i]).copied()) else {
            continue;
        };
        let candidates = by_ip
            .get(&(a.netns_cookie, ip))
            .into_iter()
            .flatten()
            .copied();
        for j in candidates.filter(|&j| before[j] != before[i] && near(i, j)) {
            let b = &anomalies[j];
            let rank = (
                bare_peer(b).is_some(),
                cause_rank(&b.kind),
                b.start_ns,
                b.id,
            );
            let entry = best.entry(before[i]).or_insert((j, rank));
            if rank < entry.1 {
                *entry = (j, rank);
            }
        }
    }
    for (root, (j, _)) in best {
        groups.join(root, j);
    }
}

fn incident(members: &[&AnomalyRecord], now_ns: u64) -> IncidentRecord {
    let primary = members
        .iter()
        .min_by_key(|a| (cause_rank(&a.kind), a.start_ns, a.id))
        .copied()
        .unwrap_or(members[0]);
    let active = members.iter().any(|a| a.end_ns.is_none());
    let first = members
        .iter()
        .min_by_key(|a| (a.start_ns, a.id))
        .copied()
        .unwrap_or(primary);
    let mut kinds: BTreeMap<String, u32> = BTreeMap::new();
    for a in members {
        *kinds.entry(a.kind.clone()).or_default() += 1;
    }
    let flows: BTreeSet<u64> = members
        .iter()
        .flat_map(|a| a.evidence.iter().chain(&a.cookie))
        .copied()
        .collect();
    let last = members.iter().map(|a| span(a, now_ns).1).max();
    let end = members.iter().filter_map(|a| a.end_ns).max();
    let end_time = members
        .iter()
        .filter(|a| a.end_ns == end)
        .find_map(|a| a.end_time.clone());
    let mut symptoms: Vec<&AnomalyRecord> = members
        .iter()
        .filter(|a| a.id != primary.id)
        .copied()
        .collect();
    symptoms.sort_by_key(|a| (cause_rank(&a.kind), a.id));
    let mut said: BTreeMap<&str, u32> = BTreeMap::new();
    for a in &symptoms {
        *said.entry(a.kind.as_str()).or_default() += 1;
    }
    let with = if said.is_empty() {
        String::new()
    } else {
        let mut parts: Vec<(&str, u32)> = said.into_iter().collect();
        parts.sort_by_key(|(k, _)| cause_rank(k));
        format!(
            "; symptoms: {}",
            parts
                .iter()
                .map(|(k, n)| if *n == 1 {
                    (*k).to_owned()
                } else {
                    format!("{n}× {k}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    IncidentRecord {
        record: "incident".to_owned(),
        id: members.iter().map(|a| a.id).min().unwrap_or(primary.id),
        status: if active { "active" } else { "cleared" }.to_owned(),
        severity: severity(members).to_owned(),
        primary: primary.id,
        primary_kind: primary.kind.clone(),
        primary_scope: primary.scope.clone(),
        symptoms: symptoms.iter().map(|a| a.id).collect(),
        kinds,
        flows: members
            .iter()
            .filter_map(|a| a.flows)
            .max()
            .unwrap_or(0)
            .max(flows.len() as u64),
        start_ns: first.start_ns,
        last_ns: last.unwrap_or(first.last_ns),
        end_ns: if active { None } else { end },
        start_time: first.start_time.clone(),
        end_time: if active { None } else { end_time },
        hint: primary.hint.clone(),
        summary: format!(
            "{} on {} (peak {}){with}",
            primary.kind,
            primary.scope,
            peak(primary)
        ),
        requests: Vec::new(),
        requests_total: 0,
    }
}

/// The incidents table `linkprobe anomalies` prints first.
pub fn table(incidents: &[IncidentRecord], now_ns: u64, paint: Paint) -> String {
    let mut t = Table::new(vec![
        "INCIDENT",
        "SEVERITY",
        "STATUS",
        "STARTED",
        "ENDED",
        "ANOMALIES",
        "FLOWS",
        "CAUSE",
        "HINT",
    ]);
    for i in incidents {
        let when = |time: Option<&str>, ns: u64| {
            let ago = human_ns(now_ns.saturating_sub(ns));
            time.map_or(format!("{ago} ago"), |t| {
                format!("{} ({ago} ago)", time_of_day(t).get(..8).unwrap_or(t))
            })
        };
        t.row(vec![
            plain(format!("#{}", i.id)),
            (
                i.severity.clone(),
                match i.severity.as_str() {
                    "critical" => Tone::Bad,
                    "warning" => Tone::Warn,
                    _ => Tone::Plain,
                },
            ),
            plain(i.status.clone()),
            plain(when(i.start_time.as_deref(), i.start_ns)),
            plain(
                i.end_ns
                    .map_or("-".to_owned(), |e| when(i.end_time.as_deref(), e)),
            ),
            plain((1 + i.symptoms.len()).to_string()),
            plain(i.flows.to_string()),
            plain(i.summary.clone()),
            plain(i.hint.clone()),
        ]);
    }
    t.render(paint)
}

#[cfg(test)]
mod tests;
