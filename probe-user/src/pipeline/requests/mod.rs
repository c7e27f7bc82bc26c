//! Proxy requests (`accesslog`) joined to the flows that carried them. The reader's thread
//! parses; once a second the loop joins the requests it took at the previous tick (so the
//! ring records of their connections are in the table by then) against the flow table, open
//! and retained closed flows alike, then takes what the reader queued since (bounded).
//!
//! Times: a request's `start_time` is wall-clock; flows are on CLOCK_MONOTONIC. The offset
//! between the two is read by the reader for each batch of lines it reads (moments after the
//! proxy wrote them), so a step of the wall clock (NTP, an operator) is followed from the next
//! lines on, and lines read before a step still land where they happened.
pub mod join;
pub mod kept;
pub mod labels;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::{
    accesslog::{self, AccessLogs, ReaderStatus, Request},
    config::EnvoyConfig,
    pipeline::flowtable::{FlowKey, FlowTable},
};
use join::{Context, Found, Index, Side, Unmatched, Window};
use kept::{FlowRequests, JoinedRequest, Kept};

/// How one request joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// By its full tuple (upstream, or downstream when it has no upstream).
    Matched(FlowKey),
    /// By `upstream_host` and its time window only.
    Approximate(FlowKey),
    Unmatched(Unmatched),
}

/// The join's settings (`[envoy]`, `[flows] retain_closed_secs`).
#[derive(Clone, Copy, Debug, Default)]
pub struct JoinSettings {
    pub slack_ns: u64,
    pub per_flow: usize,
    /// `envoy.netns` resolved.
    pub netns: Option<u64>,
    pub retain_closed_ns: u64,
    pub queue_len: usize,
}

impl JoinSettings {
    pub fn of(cfg: &EnvoyConfig, retain_closed_secs: u64) -> JoinSettings {
        JoinSettings {
            slack_ns: cfg.join_slack_ms.saturating_mul(1_000_000),
            per_flow: cfg.requests_per_flow,
            netns: None,
            retain_closed_ns: retain_closed_secs.saturating_mul(1_000_000_000),
            queue_len: cfg.queue_len,
        }
    }
}

/// The reader's and the join's counts, for the exporter and `status`.
#[derive(Clone, Debug, Default)]
pub struct EnvoyStats {
    pub reader: ReaderStatus,
    pub received: u64,
    /// `matched`, `approximate`, `unmatched`: every key present.
    pub results: BTreeMap<&'static str, u64>,
    /// Unmatched requests by reason: every reason present.
    pub unmatched: BTreeMap<&'static str, u64>,
    /// Requests with response flags: (flag, close cause of the flow behind it) → count.
    pub failures: BTreeMap<(&'static str, &'static str), u64>,
    /// Requests kept on flows now, and on how many flows.
    pub kept: usize,
    pub kept_flows: usize,
}

/// The join's state, owned by the pipeline.
#[derive(Default)]
pub struct Requests {
    logs: Option<AccessLogs>,
    settings: JoinSettings,
    /// Requests drained from the reader, joined at the next tick.
    pending: Vec<Request>,
    kept: Kept,
    received: u64,
    matched: u64,
    approximate: u64,
    unmatched: BTreeMap<Unmatched, u64>,
    failures: BTreeMap<(&'static str, &'static str), u64>,
    /// The table's eviction count at the last tick, and when it last grew.
    evicted_seen: u64,
    last_eviction_ns: u64,
}

impl Requests {
    /// Starts the access-log reader when `[envoy] paths` names any path; a reader that
    /// cannot start, or an `envoy.netns` that names no namespace, is logged, never fatal.
    pub fn start(cfg: &EnvoyConfig, retain_closed_secs: u64) -> Requests {
        let mut settings = JoinSettings::of(cfg, retain_closed_secs);
        if !cfg.netns.is_empty() {
            match crate::attrib::netns_names::resolve(&cfg.netns) {
                Ok(c) => settings.netns = Some(c),
                Err(e) => log::warn!("envoy: envoy.netns: {e}; requests join in any namespace"),
            }
        }
        let mut r = Requests::new(settings);
        if let Some(reader) = accesslog::Settings::of(cfg) {
            match AccessLogs::start(reader) {
                Ok(logs) => r.logs = Some(logs),
                Err(e) => log::warn!("envoy: the access-log reader did not start: {e}"),
            }
        }
        r
    }

    pub fn new(settings: JoinSettings) -> Requests {
        Requests {
            settings,
            ..Requests::default()
        }
    }

    /// Once a second: joins the requests taken at the previous tick, takes what the reader
    /// queued since (at most one queue's worth), forgets the requests of flows gone.
    pub fn tick(&mut self, now: u64, flows: &FlowTable) {
        if self.logs.is_none() && self.pending.is_empty() && self.kept.flows() == 0 {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        self.join(
            &pending,
            now,
            crate::clock::wall_minus_monotonic_ns(),
            flows,
        );
        if let Some(logs) = &self.logs {
            logs.drain(self.settings.queue_len.max(1), &mut self.pending);
            self.received += self.pending.len() as u64;
        }
        self.kept.retain(|k| flows.contains(k));
    }

    /// Joins `requests` against `flows` at monotonic time `now`; a request's times map to
    /// the monotonic clock with the offset the reader saw when it read the line, else
    /// `wall_minus_mono` (the offset now). Returns each request's outcome (in order).
    pub fn join(
        &mut self,
        requests: &[Request],
        now: u64,
        wall_minus_mono: i128,
        flows: &FlowTable,
    ) -> Vec<Outcome> {
        let evicted = flows.stats().evicted;
        if evicted > self.evicted_seen {
            self.evicted_seen = evicted;
            self.last_eviction_ns = now;
        }
        if requests.is_empty() {
            return Vec::new();
        }
        let mut tuples = std::collections::HashSet::new();
        let mut remotes = std::collections::HashSet::new();
        for r in requests {
            match (r.upstream_local, r.upstream_host) {
                (Some(l), Some(h)) => {
                    tuples.insert((l, h));
                }
                (None, Some(h)) => {
                    remotes.insert(h);
                }
                _ => {}
            }
            if let (Some(l), Some(rem)) = (r.downstream_local, r.downstream_remote) {
                tuples.insert((l, rem));
            }
        }
        let index = Index::build(flows.iter(), &tuples, &remotes);
        let cx = Context {
            netns: self.settings.netns,
            now,
            retain_closed: self.settings.retain_closed_ns,
            last_eviction: self.last_eviction_ns,
        };
        let mut outcomes = Vec::with_capacity(requests.len());
        for r in requests {
            let w = Window::of(
                r.start_unix_ns,
                r.duration_ms,
                r.wall_minus_mono.unwrap_or(wall_minus_mono),
                self.settings.slack_ns,
            );
            let up = match (r.upstream_local, r.upstream_host) {
                (Some(l), Some(h)) => Some(index.exact(l, h, &w, &cx)),
                (None, Some(h)) => Some(index.approximate(h, &w, &cx)),
                _ => None,
            };
            let down = match (r.downstream_local, r.downstream_remote) {
                (Some(l), Some(rem)) => Some(index.exact(l, rem, &w, &cx)),
                _ => None,
            };
            let outcome = match (up, down) {
                (Some(Ok(f)), _) if f.exact => Outcome::Matched(f.key),
                (Some(Ok(f)), _) => Outcome::Approximate(f.key),
                (Some(Err(why)), _) => Outcome::Unmatched(why),
                (None, Some(Ok(f))) => Outcome::Matched(f.key),
                (None, Some(Err(why))) => Outcome::Unmatched(why),
                (None, None) => Outcome::Unmatched(Unmatched::NoAddress),
            };
            self.count(r, outcome, up, down, flows);
            self.keep(r, up, down);
            outcomes.push(outcome);
        }
        outcomes
    }

    fn count(
        &mut self,
        r: &Request,
        outcome: Outcome,
        up: Option<Result<Found, Unmatched>>,
        down: Option<Result<Found, Unmatched>>,
        flows: &FlowTable,
    ) {
        match outcome {
            Outcome::Matched(_) => self.matched += 1,
            Outcome::Approximate(_) => self.approximate += 1,
            Outcome::Unmatched(why) => *self.unmatched.entry(why).or_default() += 1,
        }
        if r.flags.is_empty() {
            return;
        }
        // The connection the flags are about: the upstream one, else the downstream one.
        let behind = up
            .and_then(Result::ok)
            .or_else(|| down.and_then(Result::ok))
            .and_then(|f| flows.get(&f.key));
        let cause = labels::close_cause(behind);
        let mut seen: Vec<&'static str> = Vec::new();
        for f in &r.flags {
            let flag = labels::flag(f);
            if !seen.contains(&flag) {
                seen.push(flag);
                *self.failures.entry((flag, cause)).or_default() += 1;
            }
        }
    }

    fn keep(
        &mut self,
        r: &Request,
        up: Option<Result<Found, Unmatched>>,
        down: Option<Result<Found, Unmatched>>,
    ) {
        let (up, down) = (up.and_then(Result::ok), down.and_then(Result::ok));
        let per_flow = self.settings.per_flow;
        if let Some(u) = up {
            let other = down.map(|d| d.key.cookie);
            self.kept.add(
                u.key,
                JoinedRequest::new(r, Side::Upstream, u.exact, other),
                per_flow,
            );
        }
        if let Some(d) = down {
            let other = up.map(|u| u.key.cookie);
            self.kept.add(
                d.key,
                JoinedRequest::new(r, Side::Downstream, true, other),
                per_flow,
            );
        }
    }

    /// Requests wait for the next tick's join: the loop refreshes the open flows from the
    /// kernel first (a quiet open connection sends no record until it ends).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Every flow with joined requests.
    pub fn flows(&self) -> impl Iterator<Item = (&FlowKey, &FlowRequests)> {
        self.kept.iter()
    }

    /// The requests joined to flow `key`.
    pub fn of(&self, key: &FlowKey) -> Option<&FlowRequests> {
        self.kept.of(key)
    }

    /// What the exporter and `status` show, `None` when no access log is configured.
    pub fn stats(&self) -> Option<EnvoyStats> {
        let reader = self.reader_status()?;
        Some(EnvoyStats {
            reader,
            received: self.received,
            results: BTreeMap::from([
                ("matched", self.matched),
                ("approximate", self.approximate),
                ("unmatched", self.unmatched.values().sum()),
            ]),
            unmatched: Unmatched::ALL
                .iter()
                .map(|u| (u.name(), self.unmatched.get(u).copied().unwrap_or(0)))
                .collect(),
            failures: self.failures.clone(),
            kept: self.kept.total(),
            kept_flows: self.kept.flows(),
        })
    }

    /// The reader's sources and counts, `None` when no access log is configured.
    pub fn reader_status(&self) -> Option<ReaderStatus> {
        self.logs.as_ref().map(AccessLogs::status)
    }
}
