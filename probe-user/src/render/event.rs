//! Events: the one record (`-o json` lines, the API's `watch` stream) and its one text line
//! (`-o text` on the daemon's stdout, `linkprobe watch`). Field names are a contract.
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{
    event::rst_reason::ReasonNames,
    event::{kind_name, Detail, Event, FlowSnapshot, SockStats, TcpState},
    render::table::Paint,
};

/// One event, flat; absent details are omitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    #[serde(rename = "type")]
    pub record: String,
    /// CLOCK_MONOTONIC ns (the kernel's `bpf_ktime_get_ns`): orders and subtracts exactly.
    pub ts_ns: u64,
    /// The same instant in local wall-clock time, RFC 3339 (lines up with other logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    pub kind: String,
    pub cookie: Option<u64>,
    pub netns_cookie: Option<u64>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_socket: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sk_err: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowStateRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<SockStats>,
}

/// The kernel's flow state a record carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStateRecord {
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

impl From<&FlowSnapshot> for FlowStateRecord {
    fn from(f: &FlowSnapshot) -> Self {
        let c = &f.counts;
        FlowStateRecord {
            start_ns: f.start_ns,
            established_ns: f.established_ns,
            role: f.role.map(|r| r.name().to_owned()),
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

fn name(s: &str) -> Option<String> {
    Some(s.to_owned())
}

impl EventRecord {
    /// `reasons` names the kernel's RST reason numbers.
    pub fn new(ev: &Event, reasons: &ReasonNames) -> Self {
        let mut r = EventRecord {
            record: "event".to_owned(),
            ts_ns: ev.ts_ns,
            time: Some(crate::clock::rfc3339_of_monotonic(ev.ts_ns)),
            kind: kind_name(ev.detail.kind()).to_owned(),
            cookie: ev.cookie,
            netns_cookie: ev.netns_cookie,
            local: ev.local,
            remote: ev.remote,
            state: None,
            old_state: None,
            new_state: None,
            reason: None,
            no_socket: None,
            pid: ev.process.as_ref().map(|p| p.pid),
            comm: ev.process.as_ref().map(|p| p.comm.as_str().into_owned()),
            err: None,
            sk_err: ev.sk_err,
            cgroup_id: ev.cgroup_id,
            repeat_scope: None,
            repeat_count: None,
            flow: ev.flow.as_ref().map(FlowStateRecord::from),
            stats: ev.stats,
        };
        match &ev.detail {
            Detail::Connect | Detail::Established { .. } | Detail::RetransmitSynack => {}
            Detail::FlowEnd { from } => {
                r.old_state = name(from.name());
                r.new_state = name(TcpState::CLOSE.name());
            }
            Detail::StateChange { from, to } => {
                r.old_state = name(from.name());
                r.new_state = name(to.name());
            }
            Detail::RstReceived { state } | Detail::Rto { state } | Detail::Open { state } => {
                r.state = name(state.name());
            }
            Detail::RstSent {
                state,
                reason,
                no_socket,
            } => {
                r.state = name(state.name());
                r.reason = reason.map(|n| reasons.name(n));
                r.no_socket = Some(*no_socket);
            }
            Detail::Retransmit { state, err } => {
                r.state = name(state.name());
                r.err = *err;
            }
            Detail::RepeatRst { scope, count } => {
                r.repeat_scope = name(scope.name());
                r.repeat_count = Some(*count);
            }
        }
        r
    }
}

/// An address as the text views show it: port 0 (not bound yet: connect() announces its
/// SYN_SENT before the kernel picks the local port) as `*`, the way `ss` shows it.
pub fn endpoint(a: SocketAddr) -> String {
    if a.port() != 0 {
        return a.to_string();
    }
    match a {
        SocketAddr::V4(v4) => format!("{}:*", v4.ip()),
        SocketAddr::V6(v6) => format!("[{}]:*", v6.ip()),
    }
}

/// One event, one line.
pub fn line(e: &EventRecord, paint: Paint) -> String {
    let mut extra = Vec::new();
    match (&e.old_state, &e.new_state) {
        (Some(a), Some(b)) => extra.push(format!("{a}->{b}")),
        _ => {
            if let Some(s) = &e.state {
                extra.push(format!("state={s}"));
            }
        }
    }
    if let Some(r) = &e.reason {
        extra.push(format!("reason={r}"));
    }
    if e.no_socket == Some(true) {
        extra.push("no_socket".to_owned());
    }
    if let Some(v) = e.err {
        extra.push(format!("err={v}"));
    }
    if let Some(v) = e.sk_err.filter(|v| *v != 0) {
        extra.push(format!("sk_err={v}"));
    }
    if let Some(f) = &e.flow {
        let retrans = f.syn_retrans + f.data_retrans;
        if retrans + f.rtos > 0 {
            extra.push(format!("retrans={retrans} rtos={}", f.rtos));
        }
        if f.rst_sent + f.rst_received > 0 {
            extra.push(format!("rst={}↑{}↓", f.rst_sent, f.rst_received));
        }
    }
    if let Some(s) = e.stats.as_ref().filter(|s| s.srtt_us > 0) {
        extra.push(format!(
            "srtt={}us segs_out={} bytes_acked={}",
            s.srtt_us, s.segs_out, s.bytes_acked
        ));
    }
    if let (Some(s), Some(c)) = (&e.repeat_scope, e.repeat_count) {
        extra.push(format!("repeat={s} count={c}"));
    }
    if let (Some(p), Some(c)) = (e.pid, &e.comm) {
        extra.push(format!("{c}/{p}"));
    }
    let kind = format!("{:<20}", e.kind);
    let kind = if e.kind.starts_with("rst") || e.kind == "repeat_rst" {
        paint.red(&kind)
    } else if e.kind.contains("retrans") || e.kind == "rto" {
        paint.yellow(&kind)
    } else {
        kind
    };
    // Local time of day (the JSON has the full RFC 3339 time and the monotonic ns); a record
    // without it (an older daemon) shows its monotonic seconds.
    let at = e.time.as_deref().map_or_else(
        || format!("{:>15.6}", e.ts_ns as f64 / 1e9),
        |t| crate::clock::time_of_day(t).to_owned(),
    );
    format!(
        "{at} {} cookie={:<8} {} -> {} {}",
        kind,
        e.cookie.map_or("-".to_owned(), |c| c.to_string()),
        endpoint(e.local),
        endpoint(e.remote),
        extra.join(" ")
    )
    .trim_end()
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unbound_port_shows_as_a_star() {
        assert_eq!(endpoint("127.0.0.1:0".parse().unwrap()), "127.0.0.1:*");
        assert_eq!(endpoint("[::1]:0".parse().unwrap()), "[::1]:*");
        assert_eq!(endpoint("10.0.0.1:80".parse().unwrap()), "10.0.0.1:80");
    }
}
