//! The requests joined to each flow, bounded twice: at most `per_flow` per flow (more are
//! counted on the flow) and at most [`MAX_KEPT`] over the table (more are counted on their
//! flow too). A flow's requests leave with the flow.
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use super::join::Side;
use crate::{accesslog::Request, pipeline::flowtable::FlowKey};

/// Requests kept over all flows (about 200 bytes each).
pub const MAX_KEPT: usize = 65_536;

/// One request as a flow keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinedRequest {
    pub start_unix_ns: i128,
    pub duration_ms: u64,
    pub status: Option<u16>,
    /// `UF,URX`, `-` for none.
    pub flags: Box<str>,
    pub details: Option<Box<str>>,
    pub request_id: Option<Box<str>>,
    pub upstream_host: Option<SocketAddr>,
    /// What this flow was for the request.
    pub side: Side,
    /// Matched by its full tuple (`false`: by `upstream_host` and time only).
    pub exact: bool,
    /// The flow of the request's other side, where it matched too (socket cookie).
    pub other_flow: Option<u64>,
}

impl JoinedRequest {
    pub fn new(r: &Request, side: Side, exact: bool, other_flow: Option<u64>) -> JoinedRequest {
        JoinedRequest {
            start_unix_ns: r.start_unix_ns,
            duration_ms: r.duration_ms,
            status: r.status,
            flags: r.flags_text().into(),
            details: r.details.as_deref().map(Into::into),
            request_id: r.request_id.as_deref().map(Into::into),
            upstream_host: r.upstream_host,
            side,
            exact,
            other_flow,
        }
    }

    /// Carries Envoy response flag `flag` (`UC`), case-insensitive.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.split(',').any(|f| f.eq_ignore_ascii_case(flag))
    }
}

/// One flow's requests, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowRequests {
    pub kept: VecDeque<JoinedRequest>,
    /// Joined but not kept (past `per_flow` or [`MAX_KEPT`]).
    pub more: u64,
}

#[derive(Debug, Default)]
pub struct Kept {
    by_flow: HashMap<FlowKey, FlowRequests>,
    total: usize,
}

impl Kept {
    pub fn add(&mut self, key: FlowKey, r: JoinedRequest, per_flow: usize) {
        let room = self.total < MAX_KEPT;
        let e = self.by_flow.entry(key).or_default();
        if e.kept.len() >= per_flow.max(1) || !room {
            e.more += 1;
        } else {
            e.kept.push_back(r);
            self.total += 1;
        }
    }

    pub fn of(&self, key: &FlowKey) -> Option<&FlowRequests> {
        self.by_flow.get(key)
    }

    /// Drops the requests of flows the table no longer holds.
    pub fn retain(&mut self, mut alive: impl FnMut(&FlowKey) -> bool) {
        let mut total = 0;
        self.by_flow.retain(|k, v| {
            let keep = alive(k);
            if keep {
                total += v.kept.len();
            }
            keep
        });
        self.total = total;
    }

    /// Every flow with requests.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &FlowRequests)> {
        self.by_flow.iter()
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn flows(&self) -> usize {
        self.by_flow.len()
    }
}
