//! Flows: the one record (`-o json` with `--dump-flows`, the API's `flows` and `flow`) and its
//! text renderers (`linkprobe flows` and the daemon's `--dump-flows` share the table; `linkprobe
//! flow` tells one flow's story). Field names are a contract.
use std::{fmt::Write as _, net::SocketAddr, num::NonZeroU64};

use serde::{Deserialize, Serialize};

use crate::{
    event::rst_reason::ReasonNames,
    event::SockStats,
    pipeline::flowtable::{Flow, TimelineEntry},
    render::anomaly::AnomalyRecord,
    render::table::{human_bytes, human_ns, human_us, plain, Paint, Table, Tone},
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
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub role: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup_id: Option<u64>,
    pub preexisting: bool,
    pub start_ns: u64,
    pub handshake_us: Option<u64>,
    pub syn_retransmits: u32,
    pub syn_retransmit_intervals_ms: Vec<u32>,
    pub srtt_us: u32,
    pub min_rtt_us: Option<u32>,
    pub data_retransmits: u32,
    pub rtos: u32,
    /// sock_ops counters: segments, data segments, bytes, total retransmits.
    pub counters: SockStats,
    pub rst_sent: u32,
    pub rst_received: u32,
    pub state: String,
    pub close: Option<String>,
    pub closed_ns: Option<u64>,
    pub timeline: Vec<TimelineRecord>,
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
}

impl FlowRecord {
    /// `reasons` names the kernel's RST reason numbers in the timeline.
    pub fn new(f: &Flow, reasons: &ReasonNames) -> Self {
        FlowRecord {
            record: "flow".to_owned(),
            cookie: f.key.cookie,
            netns_cookie: f.key.netns,
            local: f.local,
            remote: f.remote,
            role: f.role.map(|r| r.name().to_owned()),
            pid: f.process.as_ref().map(|p| p.pid),
            comm: f.process.as_ref().map(|p| p.comm.as_str().into_owned()),
            cgroup_id: f.cgroup_id,
            preexisting: f.preexisting,
            start_ns: f.start_ns,
            handshake_us: f.handshake_ns.map(|ns| ns.get() / 1000),
            syn_retransmits: f.syn_retransmits,
            syn_retransmit_intervals_ms: f.syn_retransmit_intervals_ms().to_vec(),
            srtt_us: f.srtt_us,
            min_rtt_us: f.min_rtt_us,
            data_retransmits: f.data_retransmits,
            rtos: f.rtos,
            counters: f.counters,
            rst_sent: f.rst_sent,
            rst_received: f.rst_received,
            state: f.state.name().to_owned(),
            close: f.close.map(|c| c.name().to_owned()),
            closed_ns: f.closed_ns.map(NonZeroU64::get),
            timeline: f
                .timeline
                .iter()
                .map(|e| TimelineRecord::new(e, reasons))
                .collect(),
        }
    }
}

fn close_tone(close: Option<&str>) -> Tone {
    match close {
        Some("fin") | None => Tone::Plain,
        Some("refused" | "timeout" | "unreachable" | "rst_received" | "rst_sent") => Tone::Bad,
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

/// The flows table; `wide` adds namespace, cgroup, handshake, SYN retransmits, traffic.
pub fn table(flows: &[FlowRecord], now_ns: u64, wide: bool, paint: Paint) -> String {
    let mut header = vec![
        "COOKIE", "LOCAL", "REMOTE", "ROLE", "STATE", "PROCESS", "AGE", "RTT", "RETRANS", "RST",
        "CLOSE",
    ];
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
            plain(f.local.to_string()),
            plain(f.remote.to_string()),
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
        if wide {
            row.extend([
                plain(f.netns_cookie.to_string()),
                plain(f.cgroup_id.map_or("-".to_owned(), |c| c.to_string())),
                plain(f.handshake_us.map_or("-".to_owned(), human_us)),
                count(f.syn_retransmits),
                count(f.rtos),
                plain(f.counters.segs_out.to_string()),
                plain(human_bytes(f.counters.bytes_acked)),
                plain(human_bytes(f.counters.bytes_received)),
                plain(f.timeline.len().to_string()),
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
        f.local,
        f.remote,
        role
    );
    let _ = writeln!(
        s,
        "  process  {}    cgroup {}    netns {}{}",
        process(f),
        f.cgroup_id.map_or("-".to_owned(), |c| c.to_string()),
        f.netns_cookie,
        if f.preexisting {
            "    (open before the daemon started)"
        } else {
            ""
        }
    );
    let close = match (&f.close, f.closed_ns) {
        (Some(c), Some(at)) => format!(
            "closed: {} {} ago",
            paint.red(c),
            human_ns(now_ns.saturating_sub(at))
        ),
        _ => "open".to_owned(),
    };
    let _ = writeln!(
        s,
        "  state    {}    {}    started {} ago",
        f.state,
        close,
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
        human_bytes(f.counters.bytes_acked),
        human_bytes(f.counters.bytes_received)
    );
    let _ = writeln!(s, "{}", paint.bold("timeline"));
    for e in &f.timeline {
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
