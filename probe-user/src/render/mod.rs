//! Renders events, the probe table and counters for humans (text) and programs (JSON lines).
//! The JSON field names are a contract: tests and users' scripts read them.
pub mod anomaly;
pub mod flow;
use std::{io::Write, net::SocketAddr};

use serde::Serialize;

use crate::{
    event::rst_reason::ReasonNames,
    event::{kind_name, Detail, Event, FlowSnapshot, RepeatScope, Role, SockStats, TcpState},
    kernel::counters::KernelCounters,
    kernel::probes::ProbeStatus,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One aligned line per event.
    Text,
    /// One JSON object per line (`type` = ready | event | counters).
    Json,
    /// Nothing per event (counters still print at exit).
    None,
}

/// Flat JSON view of an [`Event`]; absent details are omitted.
#[derive(Debug, Serialize)]
pub struct EventView<'a> {
    #[serde(rename = "type")]
    pub record: &'static str,
    pub ts_ns: u64,
    pub kind: &'static str,
    pub cookie: Option<u64>,
    pub netns_cookie: Option<u64>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_socket: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sk_err: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_scope: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowStateView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<&'a SockStats>,
}

/// The kernel's flow state a record carries (JSON field names are a contract).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FlowStateView {
    pub start_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub syn_retrans: u32,
    pub data_retrans: u32,
    pub retrans_failed: u32,
    pub rtos: u32,
    pub rst_sent: u32,
    pub rst_received: u32,
    #[serde(default)]
    pub late: bool,
}

impl FlowStateView {
    pub fn new(f: &FlowSnapshot) -> Self {
        let c = &f.counts;
        FlowStateView {
            start_ns: f.start_ns,
            established_ns: f.established_ns,
            role: f.role.map(|r| role_name(r).to_owned()),
            syn_retrans: c.syn_retrans,
            data_retrans: c.data_retrans,
            retrans_failed: c.retrans_failed,
            rtos: c.rtos,
            rst_sent: c.rst_sent,
            rst_received: c.rst_received,
            late: f.late,
        }
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Client => "client",
        Role::Server => "server",
    }
}

impl<'a> EventView<'a> {
    pub fn new(ev: &'a Event, reasons: &ReasonNames) -> Self {
        let mut v = EventView {
            record: "event",
            ts_ns: ev.ts_ns,
            kind: kind_name(ev.detail.kind()),
            cookie: ev.cookie,
            netns_cookie: ev.netns_cookie,
            local: ev.local,
            remote: ev.remote,
            state: None,
            old_state: None,
            new_state: None,
            reason: None,
            no_socket: None,
            pid: None,
            comm: None,
            err: None,
            sk_err: ev.sk_err,
            cgroup_id: ev.cgroup_id,
            repeat_scope: None,
            repeat_count: None,
            flow: ev.flow.as_ref().map(FlowStateView::new),
            stats: ev.stats.as_ref(),
        };
        match &ev.detail {
            Detail::Connect | Detail::Established { .. } | Detail::RetransmitSynack => {}
            Detail::FlowEnd { from } => {
                v.old_state = Some(from.name());
                v.new_state = Some(TcpState::CLOSE.name());
            }
            Detail::StateChange { from, to } => {
                v.old_state = Some(from.name());
                v.new_state = Some(to.name());
            }
            Detail::RstReceived { state } | Detail::Rto { state } | Detail::Open { state } => {
                v.state = Some(state.name());
            }
            Detail::RstSent {
                state,
                reason,
                no_socket,
            } => {
                v.state = Some(state.name());
                v.reason = reason.map(|r| reasons.name(r));
                v.no_socket = Some(*no_socket);
            }
            Detail::Retransmit { state, err } => {
                v.state = Some(state.name());
                v.err = *err;
            }
            Detail::RepeatRst { scope, count } => {
                v.repeat_scope = Some(repeat_scope_name(*scope));
                v.repeat_count = Some(*count);
            }
        }
        if let Some(p) = &ev.process {
            v.pid = Some(p.pid);
            v.comm = Some(p.comm.as_str());
        }
        v
    }
}

fn repeat_scope_name(scope: RepeatScope) -> &'static str {
    match scope {
        RepeatScope::Socket => "socket",
        RepeatScope::Peer => "peer",
        RepeatScope::LocalPort => "local_port",
    }
}

/// One human-readable line.
pub fn text_line(ev: &Event, reasons: &ReasonNames) -> String {
    let cookie = ev
        .cookie
        .map_or_else(|| "-".to_owned(), |c| format!("{c:#x}"));
    let detail = match &ev.detail {
        Detail::Connect | Detail::RetransmitSynack => String::new(),
        Detail::Established { role } => role_name(*role).to_owned(),
        Detail::FlowEnd { from } => {
            let mut text = format!("{from}->CLOSE");
            if let Some(err) = ev.sk_err.filter(|e| *e != 0) {
                text.push_str(&format!(" sk_err={err}"));
            }
            if let Some(f) = &ev.flow {
                let c = &f.counts;
                text.push_str(&format!(
                    " retrans={}/{} rtos={} rst={}/{}",
                    c.syn_retrans, c.data_retrans, c.rtos, c.rst_sent, c.rst_received
                ));
            }
            if let Some(s) = &ev.stats {
                text.push_str(&format!(
                    " srtt={}us segs_out={} bytes_acked={}",
                    s.srtt_us, s.segs_out, s.bytes_acked
                ));
            }
            text
        }
        Detail::RstReceived { state } | Detail::Rto { state } | Detail::Open { state } => {
            format!("state={state}")
        }
        Detail::RstSent {
            state,
            reason,
            no_socket,
        } => format!(
            "state={state} reason={}{}",
            reason.map_or_else(|| "-".to_owned(), |r| reasons.name(r)),
            if *no_socket { " no_socket" } else { "" }
        ),
        Detail::Retransmit { state, err } => match err {
            Some(e) => format!("state={state} err={e}"),
            None => format!("state={state}"),
        },
        Detail::StateChange { from, to } => format!("{from}->{to}"),
        Detail::RepeatRst { scope, count } => {
            format!("scope={} count={count}", repeat_scope_name(*scope))
        }
    };
    let owner = ev
        .process
        .as_ref()
        .map_or_else(String::new, |p| format!(" pid={} comm={}", p.pid, p.comm));
    format!(
        "{:>14.6} {:<20} cookie={:<18} {} -> {} {detail}{owner}",
        ev.ts_ns as f64 / 1e9,
        kind_name(ev.detail.kind()),
        cookie,
        ev.local,
        ev.remote,
    )
}

#[derive(Serialize)]
struct ProbeView<'a> {
    name: &'static str,
    hook: &'a str,
    how: &'a str,
    program: &'static str,
    attached: bool,
    /// Not attached because this kernel does not need it.
    skipped: bool,
    reason: Option<&'a str>,
}

/// JSON line announcing that probes are attached, which flows get every hook hit as a record
/// (`detail`: off, all or match), and the backup programs (`backups`: mode, attached, probes).
pub fn ready_json(
    probes: &[ProbeStatus],
    detail: &str,
    backups: &crate::kernel::backups::Backups,
) -> String {
    let probes: Vec<ProbeView<'_>> = probes
        .iter()
        .map(|p| ProbeView {
            name: p.spec.program,
            hook: &p.target,
            how: &p.how,
            program: p.program,
            attached: p.state.is_attached(),
            skipped: p.state.is_skipped(),
            reason: p.state.why(),
        })
        .collect();
    let backups = serde_json::json!({
        "mode": format!("{:?}", backups.mode).to_lowercase(),
        "attached": backups.attached(),
        "probes": backups.probes().collect::<Vec<_>>(),
        "unavailable": backups.refused.iter()
            .map(|(program, why)| serde_json::json!({"program": program, "why": why}))
            .collect::<Vec<_>>(),
    });
    json_line(&serde_json::json!({
        "type": "ready",
        "probes": probes,
        "detail": detail,
        "backups": backups,
    }))
}

#[derive(Serialize)]
struct CountersView<'a> {
    #[serde(rename = "type")]
    record: &'static str,
    /// Records decoded by this process, per kind.
    records: &'a std::collections::BTreeMap<&'static str, u64>,
    decode_errors: u64,
    /// Runs of each probe the kernel skipped (already running on that CPU): hits never seen.
    recursion_misses: &'a std::collections::BTreeMap<&'static str, u64>,
    flows: FlowsView,
    anomalies: AnomaliesView,
    #[serde(flatten)]
    kernel: &'a KernelCounters,
}

#[derive(Serialize)]
struct FlowsView {
    tracked: usize,
    evicted: u64,
    expired: u64,
}

#[derive(Serialize)]
struct AnomaliesView {
    active: usize,
    raised: std::collections::BTreeMap<&'static str, u64>,
    scopes_tracked: usize,
    scopes_evicted: u64,
}

/// JSON line with the kernel counters, what this process received, and the flow table and
/// detector totals.
pub fn counters_json(
    kernel: &KernelCounters,
    records: &std::collections::BTreeMap<&'static str, u64>,
    decode_errors: u64,
    recursion_misses: &std::collections::BTreeMap<&'static str, u64>,
    flows: &crate::pipeline::flowtable::FlowTableStats,
    detect: &crate::pipeline::detect::DetectStats,
) -> String {
    json_line(&CountersView {
        record: "counters",
        records,
        decode_errors,
        recursion_misses,
        flows: FlowsView {
            tracked: flows.tracked,
            evicted: flows.evicted,
            expired: flows.expired,
        },
        anomalies: AnomaliesView {
            active: detect.active,
            raised: crate::pipeline::detect::AnomalyKind::ALL
                .iter()
                .map(|k| (k.name(), detect.raised(*k)))
                .collect(),
            scopes_tracked: detect.scopes_tracked,
            scopes_evicted: detect.scopes_evicted,
        },
        kernel,
    })
}

fn json_line<T: Serialize>(value: &T) -> String {
    // Serialising our own plain structs cannot fail; fall back to an error object regardless.
    serde_json::to_string(value)
        .unwrap_or_else(|e| format!("{{\"type\":\"error\",\"error\":\"{e}\"}}"))
}

/// Writes one line to stdout, flushing so pipes see events as they happen.
pub fn emit_line(out: &mut impl Write, line: &str) -> std::io::Result<()> {
    writeln!(out, "{line}")?;
    out.flush()
}
