//! Flows: the one record (`-o json` with `--dump-flows`, the API's `flows` and `flow`) and its
//! text renderers (`linkprobe flows` and the daemon's `--dump-flows` share the table; `linkprobe
//! flow` tells one flow's story). Field names are a contract.
use std::{fmt::Write as _, net::SocketAddr, num::NonZeroU64};

use serde::{Deserialize, Serialize};

use crate::{
    attrib::{pods::PodMeta, Attributor, Owner},
    clock::{rfc3339_of_monotonic, time_of_day},
    event::rst_reason::ReasonNames,
    event::SockStats,
    pipeline::flowtable::{Flow, Timeline, TimelineEntry},
    pipeline::requests::kept::{FlowRequests, JoinedRequest},
    render::anomaly::AnomalyRecord,
    render::event::endpoint,
    render::request::{self, RequestRecord},
    render::table::{human_bytes, human_ns, human_us, plain, Paint, Table, Tone},
    untrusted::escape_str,
};

/// One entry of a flow's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineRecord {
    pub offset_ns: u64,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    pub detail: String,
}

/// One flow-table entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    #[serde(rename = "type")]
    pub record: String,
    pub cookie: u64,
    pub netns_cookie: u64,
    /// The network namespace's name: `host`, an `ip netns` name, or `pid N (comm)` of a
    /// process in it; absent when none was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub role: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup_id: Option<u64>,
    /// The cgroup's path below the cgroup2 root (`/system.slice/nginx.service`), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    pub preexisting: bool,
    pub start_ns: u64,
    /// `start_ns` in local wall-clock time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    pub handshake_us: Option<u64>,
    pub syn_retransmits: u32,
    pub syn_retransmit_intervals_ms: Vec<u32>,
    pub srtt_us: u32,
    pub min_rtt_us: Option<u32>,
    pub data_retransmits: u32,
    pub rtos: u32,
    /// sock_ops counters: segments, data segments, bytes, total retransmits.
    pub counters: SockStats,
    /// Payload bytes sent (and acknowledged) and received: `counters.bytes_acked` and
    /// `bytes_received` without the SYN and FINs the kernel also counts there.
    #[serde(default)]
    pub payload_sent: u64,
    #[serde(default)]
    pub payload_received: u64,
    pub rst_sent: u32,
    pub rst_received: u32,
    pub state: String,
    pub close: Option<String>,
    pub closed_ns: Option<u64>,
    /// `closed_ns` in local wall-clock time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_time: Option<String>,
    pub timeline: Vec<TimelineRecord>,
    /// Who owns the socket (pod attribution on): absent when unknown.
    #[serde(flatten)]
    pub owner: OwnerFields,
    /// Proxy requests this flow carried (`[envoy]` access logs), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<RequestRecord>,
    /// Requests joined to the flow beyond those listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requests_more: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A flow's owner and its peer's pod, as `-o json` and the API show them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerFields {
    /// `host`, `namespace/pod`, or `pod <uid>` while the pod's name is not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The container's id (64 hex digits) where the cgroup is a container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The pod's QoS class by its cgroup: `guaranteed`, `burstable`, `besteffort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// `containerd`, `cri-o` or `docker`, where the cgroup path names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The remote end's `namespace/pod` when its address is a pod IP of this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_pod: Option<String>,
}

impl OwnerFields {
    pub fn of(owner: &Owner, peer: Option<&PodMeta>) -> OwnerFields {
        let at = owner.pod_ref();
        // Names come from the pod source (API or directory names): escaped for terminals.
        let esc = |t: &str| escape_str(t).into_owned();
        OwnerFields {
            owner: owner.text().map(|t| esc(&t)),
            namespace: owner.names().map(|n| esc(n.0)),
            pod: owner.names().map(|n| esc(n.1)),
            pod_uid: at.map(|p| p.uid.clone()),
            container_id: at.and_then(|p| p.container_id.clone()),
            qos: at.map(|p| p.qos.name().to_owned()),
            runtime: at.and_then(|p| p.runtime).map(|r| r.name().to_owned()),
            peer_pod: peer.map(|p| esc(&format!("{}/{}", p.namespace, p.name))),
        }
    }

    /// `ns/pod[/container-id-12]` for tables; `-` when unknown.
    fn short(&self) -> String {
        let Some(owner) = &self.owner else {
            return "-".to_owned();
        };
        match &self.container_id {
            Some(c) => format!("{owner}/{}", short_id(c)),
            None => owner.clone(),
        }
    }
}

impl TimelineRecord {
    fn new(e: &TimelineEntry, reasons: &ReasonNames) -> Self {
        TimelineRecord {
            offset_ns: e.offset_ns,
            kind: e.kind_name().to_owned(),
            state: e.state.map(|s| s.name().to_owned()),
            detail: e.detail(reasons),
        }
    }

    /// The flow's timeline as shown: its first entries, a `dropped` marker saying what was
    /// left out (if anything), then the later entries.
    fn all_of(t: &Timeline, reasons: &ReasonNames) -> Vec<TimelineRecord> {
        let mut out: Vec<TimelineRecord> =
            t.first_entries().map(|e| Self::new(e, reasons)).collect();
        if let Some(detail) = t.marker() {
            let at = t
                .later_entries()
                .next()
                .or(t.first_entries().last())
                .map_or(0, |e| e.offset_ns);
            out.push(TimelineRecord {
                offset_ns: at,
                kind: DROPPED_KIND.to_owned(),
                state: None,
                detail,
            });
        }
        out.extend(t.later_entries().map(|e| Self::new(e, reasons)));
        out
    }
}

/// The `kind` of a timeline's marker of dropped entries.
pub const DROPPED_KIND: &str = "dropped";

/// `at 01:40:03.123456, ` from an RFC 3339 time (nothing without one).
fn at_local(time: Option<&str>) -> String {
    time.map_or(String::new(), |t| format!("at {}, ", time_of_day(t)))
}

impl FlowRecord {
    /// `reasons` names the kernel's RST reason numbers in the timeline.
    pub fn new(f: &Flow, reasons: &ReasonNames) -> Self {
        FlowRecord {
            record: "flow".to_owned(),
            cookie: f.key.cookie,
            netns_cookie: f.key.netns,
            netns: None,
            local: f.local,
            remote: f.remote,
            role: f.role.map(|r| r.name().to_owned()),
            pid: f.process.as_ref().map(|p| p.pid),
            comm: f.process.as_ref().map(|p| p.comm.as_str().into_owned()),
            cgroup_id: f.cgroup_id,
            cgroup: None,
            preexisting: f.preexisting,
            start_ns: f.start_ns,
            start_time: Some(rfc3339_of_monotonic(f.start_ns)),
            handshake_us: f.handshake_ns.map(|ns| ns.get() / 1000),
            syn_retransmits: f.syn_retransmits,
            syn_retransmit_intervals_ms: f.syn_retransmit_intervals_ms().to_vec(),
            srtt_us: f.srtt_us,
            min_rtt_us: f.min_rtt_us,
            data_retransmits: f.data_retransmits,
            rtos: f.rtos,
            counters: f.counters,
            payload_sent: f.payload().0,
            payload_received: f.payload().1,
            rst_sent: f.rst_sent,
            rst_received: f.rst_received,
            state: f.state.name().to_owned(),
            close: f.close.map(|c| c.name().to_owned()),
            closed_ns: f.closed_ns.map(NonZeroU64::get),
            closed_time: f.closed_ns.map(|t| rfc3339_of_monotonic(t.get())),
            timeline: TimelineRecord::all_of(&f.timeline, reasons),
            owner: OwnerFields::default(),
            requests: Vec::new(),
            requests_more: 0,
        }
    }

    /// Adds the proxy requests joined to the flow (those `keep` accepts; `requests_more`
    /// counts the others joined, kept or not).
    pub fn with_requests(
        mut self,
        joined: Option<&FlowRequests>,
        keep: impl Fn(&JoinedRequest) -> bool,
    ) -> Self {
        if let Some(j) = joined {
            self.requests = RequestRecord::all_of(j, keep);
            self.requests_more = (j.kept.len() - self.requests.len()) as u64 + j.more;
        }
        self
    }

    /// Adds the names of the flow's network namespace and cgroup, and its owner and its
    /// peer's pod (attribution on).
    pub fn attributed(mut self, f: &Flow, attrib: &Attributor) -> Self {
        // Names come from the host (process names, directory names): escaped there.
        self.netns = attrib.netns_name(f.key.netns).map(|n| n.to_string());
        self.cgroup = attrib
            .cgroup_path(f.cgroup_id)
            .map(|p| escape_str(&p).into_owned());
        if attrib.enabled() {
            let peer = attrib.peer_pod(f.remote.ip());
            self.owner = OwnerFields::of(&attrib.owner(f.cgroup_id), peer.as_deref());
        }
        self
    }
}

fn close_tone(close: Option<&str>) -> Tone {
    match close {
        Some("fin") | None => Tone::Plain,
        Some("refused" | "timeout" | "unreachable" | "abandoned" | "rst_received" | "rst_sent") => {
            Tone::Bad
        }
        Some(_) => Tone::Warn,
    }
}

fn process(f: &FlowRecord) -> String {
    match (&f.comm, f.pid) {
        (Some(c), Some(p)) => format!("{c}/{p}"),
        (None, Some(p)) => p.to_string(),
        (Some(c), None) => c.clone(),
        (None, None) => "-".to_owned(),
    }
}

fn count(n: u32) -> (String, Tone) {
    (n.to_string(), if n > 0 { Tone::Warn } else { Tone::Plain })
}

/// The namespace's name, else its cookie.
fn netns_text(f: &FlowRecord) -> String {
    f.netns
        .clone()
        .unwrap_or_else(|| f.netns_cookie.to_string())
}

/// The cgroup's path, else its id.
fn cgroup_text(f: &FlowRecord) -> String {
    match (&f.cgroup, f.cgroup_id) {
        (Some(p), _) => p.clone(),
        (None, Some(id)) => id.to_string(),
        (None, None) => "-".to_owned(),
    }
}

/// A container id's first 12 characters, as `crictl` and `docker ps` show it.
fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// `addr (namespace/pod)` for a remote that is a pod of this node.
fn remote(f: &FlowRecord) -> String {
    match &f.owner.peer_pod {
        Some(p) => format!("{} ({p})", f.remote),
        None => f.remote.to_string(),
    }
}

/// The flows table; `wide` adds namespace, cgroup, handshake, SYN retransmits, traffic. A
/// POD column (owner `namespace/pod/container`) appears when any flow has an owner.
pub fn table(flows: &[FlowRecord], now_ns: u64, wide: bool, paint: Paint) -> String {
    let mut header = vec![
        "COOKIE", "LOCAL", "REMOTE", "ROLE", "STATE", "PROCESS", "AGE", "RTT", "RETRANS", "RST",
        "CLOSE",
    ];
    let pods = flows.iter().any(|f| f.owner.owner.is_some());
    if pods {
        header.push("POD");
    }
    let requests = flows.iter().any(|f| !f.requests.is_empty());
    if requests {
        header.push("REQUESTS");
    }
    if wide {
        header.extend([
            "NETNS",
            "CGROUP",
            "HANDSHAKE",
            "SYN_RETRANS",
            "RTOS",
            "SEGS_OUT",
            "SENT",
            "RECEIVED",
            "EVENTS",
        ]);
    }
    let mut t = Table::new(header);
    for f in flows {
        let rst = f.rst_sent + f.rst_received;
        let mut row = vec![
            plain(f.cookie.to_string()),
            plain(endpoint(f.local)),
            plain(remote(f)),
            plain(f.role.as_deref().unwrap_or("-")),
            plain(f.state.clone()),
            plain(process(f)),
            plain(human_ns(now_ns.saturating_sub(f.start_ns))),
            plain(human_us(u64::from(f.srtt_us))),
            count(f.data_retransmits + f.syn_retransmits),
            (
                if rst == 0 {
                    "0".to_owned()
                } else {
                    format!("{}↑{}↓", f.rst_sent, f.rst_received)
                },
                if rst > 0 { Tone::Bad } else { Tone::Plain },
            ),
            (
                f.close.clone().unwrap_or_else(|| "-".to_owned()),
                close_tone(f.close.as_deref()),
            ),
        ];
        if pods {
            row.push(plain(f.owner.short()));
        }
        if requests {
            row.push((
                request::summary(&f.requests, f.requests_more),
                if f.requests.is_empty() {
                    Tone::Plain
                } else {
                    Tone::Warn
                },
            ));
        }
        if wide {
            row.extend([
                plain(netns_text(f)),
                plain(cgroup_text(f)),
                plain(f.handshake_us.map_or("-".to_owned(), human_us)),
                count(f.syn_retransmits),
                count(f.rtos),
                plain(f.counters.segs_out.to_string()),
                plain(human_bytes(f.payload_sent)),
                plain(human_bytes(f.payload_received)),
                plain(
                    f.timeline
                        .iter()
                        .filter(|e| e.kind != DROPPED_KIND)
                        .count()
                        .to_string(),
                ),
            ]);
        }
        t.row(row);
    }
    t.render(paint)
}

fn rel(ns: u64) -> String {
    format!("+{:.6}s", ns as f64 / 1e9)
}

/// The whole story of one flow, for people.
pub fn story(
    f: &FlowRecord,
    anomalies: &[AnomalyRecord],
    hint: &str,
    now_ns: u64,
    paint: Paint,
) -> String {
    let mut s = String::new();
    let role = f.role.as_deref().unwrap_or("role unknown");
    let _ = writeln!(
        s,
        "{} {} (0x{:x})  {} -> {}  {}",
        paint.bold("flow"),
        f.cookie,
        f.cookie,
        endpoint(f.local),
        remote(f),
        role
    );
    if let Some(owner) = &f.owner.owner {
        let container = match (&f.owner.container_id, &f.owner.runtime) {
            (Some(c), Some(rt)) => format!("    container {} ({rt})", short_id(c)),
            (Some(c), None) => format!("    container {}", short_id(c)),
            _ => String::new(),
        };
        let uid = f
            .owner
            .pod_uid
            .as_deref()
            .filter(|_| f.owner.pod.is_some())
            .map_or(String::new(), |u| format!("    uid {u}"));
        let _ = writeln!(s, "  pod      {owner}{container}{uid}");
    }
    let _ = writeln!(
        s,
        "  process  {}    cgroup {}    netns {}{}",
        process(f),
        cgroup_text(f),
        netns_text(f),
        if f.preexisting {
            "    (open before the daemon started)"
        } else {
            ""
        }
    );
    let close = match (&f.close, f.closed_ns) {
        (Some(c), Some(at)) => format!(
            "closed: {} {}{} ago",
            paint.red(c),
            at_local(f.closed_time.as_deref()),
            human_ns(now_ns.saturating_sub(at))
        ),
        _ => "open".to_owned(),
    };
    let _ = writeln!(
        s,
        "  state    {}    {}    started {}{} ago",
        f.state,
        close,
        at_local(f.start_time.as_deref()),
        human_ns(now_ns.saturating_sub(f.start_ns))
    );
    let _ = writeln!(
        s,
        "  rtt      srtt {}  min {}  handshake {}",
        human_us(u64::from(f.srtt_us)),
        f.min_rtt_us
            .map_or("-".to_owned(), |v| human_us(u64::from(v))),
        f.handshake_us.map_or("-".to_owned(), human_us),
    );
    let intervals = if f.syn_retransmit_intervals_ms.is_empty() {
        String::new()
    } else {
        format!(
            " (intervals {} ms)",
            f.syn_retransmit_intervals_ms
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let _ = writeln!(
        s,
        "  retrans  SYN {}{}  data {}  RTOs {}  (kernel total {})",
        f.syn_retransmits, intervals, f.data_retransmits, f.rtos, f.counters.total_retrans
    );
    let reasons: Vec<&str> = f
        .timeline
        .iter()
        .filter(|e| e.kind == "rst_sent" && !e.detail.is_empty())
        .map(|e| e.detail.as_str())
        .collect();
    let _ = writeln!(
        s,
        "  rst      sent {}{}  received {}",
        f.rst_sent,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        },
        f.rst_received
    );
    let _ = writeln!(
        s,
        "  traffic  segs out {} in {}  sent {}  received {}",
        f.counters.segs_out,
        f.counters.segs_in,
        human_bytes(f.payload_sent),
        human_bytes(f.payload_received)
    );
    let _ = writeln!(s, "{}", paint.bold("timeline"));
    for e in &f.timeline {
        if e.kind == DROPPED_KIND {
            let _ = writeln!(s, "  {:>12}  … {} …", "", e.detail);
            continue;
        }
        let kind = if e.kind.starts_with("rst") {
            paint.red(&format!("{:<20}", e.kind))
        } else if e.kind.contains("retrans") || e.kind == "rto" {
            paint.yellow(&format!("{:<20}", e.kind))
        } else {
            format!("{:<20}", e.kind)
        };
        let _ = writeln!(
            s,
            "  {:>12}  {} {:<12} {}",
            rel(e.offset_ns),
            kind,
            e.state.as_deref().unwrap_or(""),
            e.detail
        )
        .map(|()| ());
    }
    if !f.requests.is_empty() || f.requests_more > 0 {
        s.push_str(&request::section(&f.requests, f.requests_more, paint));
    }
    let _ = writeln!(s, "{}", paint.bold("anomalies"));
    if anomalies.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for a in anomalies {
        let _ = writeln!(
            s,
            "  #{} {} on {} ({}): {} — {}",
            a.id, a.kind, a.scope, a.change, a.detail, a.hint
        );
    }
    let _ = writeln!(s, "{} {}", paint.bold("root cause:"), hint);
    // Trailing spaces from empty state columns help nobody.
    s.lines().map(str::trim_end).collect::<Vec<_>>().join("\n") + "\n"
}
