//! JSON and text rendering of flow-table entries (field names are a contract).
use std::{net::SocketAddr, num::NonZeroU64};

use serde::Serialize;

use crate::{
    event::rst_reason::ReasonNames,
    event::{Role, SockStats},
    pipeline::flowtable::{CloseCause, Flow, TimelineEntry},
};

#[derive(Debug, Serialize)]
pub struct TimelineView {
    pub offset_ns: u64,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct FlowView<'a> {
    #[serde(rename = "type")]
    pub record: &'static str,
    pub cookie: u64,
    pub netns_cookie: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub role: Option<&'static str>,
    pub pid: Option<u32>,
    pub comm: Option<&'a str>,
    pub cgroup_id: Option<u64>,
    pub preexisting: bool,
    pub start_ns: u64,
    pub handshake_us: Option<u64>,
    pub syn_retransmits: u32,
    pub syn_retransmit_intervals_ms: &'a [u32],
    pub srtt_us: u32,
    pub min_rtt_us: Option<u32>,
    pub data_retransmits: u32,
    pub rtos: u32,
    /// sock_ops counters: segments, data segments, bytes, total retransmits.
    pub counters: &'a SockStats,
    pub rst_sent: u32,
    pub rst_received: u32,
    pub state: &'static str,
    pub close: Option<&'static str>,
    pub closed_ns: Option<u64>,
    pub timeline: Vec<TimelineView>,
}

pub fn close_name(c: CloseCause) -> &'static str {
    match c {
        CloseCause::Fin => "fin",
        CloseCause::RstReceived => "rst_received",
        CloseCause::RstSent => "rst_sent",
        CloseCause::Timeout => "timeout",
        CloseCause::Refused => "refused",
        CloseCause::Unreachable => "unreachable",
    }
}

fn timeline_view(e: &TimelineEntry, reasons: &ReasonNames) -> TimelineView {
    TimelineView {
        offset_ns: e.offset_ns,
        kind: e.kind_name(),
        state: e.state.map(|s| s.name()),
        detail: e.detail(reasons),
    }
}

impl<'a> FlowView<'a> {
    pub fn new(f: &'a Flow, reasons: &ReasonNames) -> Self {
        FlowView {
            record: "flow",
            cookie: f.key.cookie,
            netns_cookie: f.key.netns,
            local: f.local,
            remote: f.remote,
            role: f.role.map(|r| match r {
                Role::Client => "client",
                Role::Server => "server",
            }),
            pid: f.process.as_ref().map(|p| p.pid),
            comm: f.process.as_ref().map(|p| p.comm.as_str()),
            cgroup_id: f.cgroup_id,
            preexisting: f.preexisting,
            start_ns: f.start_ns,
            handshake_us: f.handshake_ns.map(|ns| ns.get() / 1000),
            syn_retransmits: f.syn_retransmits,
            syn_retransmit_intervals_ms: f.syn_retransmit_intervals_ms(),
            srtt_us: f.srtt_us,
            min_rtt_us: f.min_rtt_us,
            data_retransmits: f.data_retransmits,
            rtos: f.rtos,
            counters: &f.counters,
            rst_sent: f.rst_sent,
            rst_received: f.rst_received,
            state: f.state.name(),
            close: f.close.map(close_name),
            closed_ns: f.closed_ns.map(NonZeroU64::get),
            timeline: f
                .timeline
                .iter()
                .map(|e| timeline_view(e, reasons))
                .collect(),
        }
    }
}

/// One line per flow for text output.
pub fn flow_text(f: &Flow, reasons: &ReasonNames) -> String {
    let v = FlowView::new(f, reasons);
    format!(
        "flow cookie={:#x} {} -> {} role={} state={} close={} syn_retrans={} retrans={} rst_sent={} rst_received={} events={}",
        v.cookie,
        v.local,
        v.remote,
        v.role.unwrap_or("-"),
        v.state,
        v.close.unwrap_or("-"),
        v.syn_retransmits,
        v.data_retransmits,
        v.rst_sent,
        v.rst_received,
        v.timeline.len()
    )
}
