//! Matching one request against the flow table: the upstream 4-tuple
//! (`upstream_local_address` → `upstream_host`) or the downstream pair
//! (`downstream_local_address` ← `downstream_remote_address`) as the proxy's own sockets
//! show them (local, remote), within the request's time window; or, for a request without
//! a local address (`UF`: the connection never came up), by `upstream_host` and the window
//! alone (approximate). When nothing matches, the reason.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use crate::{
    accesslog::parse::canonical,
    pipeline::flowtable::{Flow, FlowKey},
};

/// Which of the proxy's connections a flow was for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Upstream,
    Downstream,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Upstream => "upstream",
            Side::Downstream => "downstream",
        }
    }
}

/// Why a request matched no flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unmatched {
    /// The line names neither an upstream nor a downstream address pair.
    NoAddress,
    /// No flow with that tuple was seen (linkprobe was not watching that namespace, or its
    /// records were lost).
    NoFlow,
    /// Flows with that tuple exist, none in the request's time window (port reuse, or the
    /// log's clock is off).
    OutsideWindow,
    /// No flow with that tuple, and the table evicted flows since the request started
    /// (`flows.max_flows` too small for the load).
    Evicted,
    /// The request ended longer ago than closed flows are kept (`flows.retain_closed_secs`).
    Expired,
    /// The tuple exists only in another network namespace than `envoy.netns`.
    OtherNetns,
}

impl Unmatched {
    pub const ALL: [Unmatched; 6] = [
        Unmatched::NoAddress,
        Unmatched::NoFlow,
        Unmatched::OutsideWindow,
        Unmatched::Evicted,
        Unmatched::Expired,
        Unmatched::OtherNetns,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Unmatched::NoAddress => "no_address",
            Unmatched::NoFlow => "no_flow",
            Unmatched::OutsideWindow => "outside_window",
            Unmatched::Evicted => "evicted",
            Unmatched::Expired => "expired",
            Unmatched::OtherNetns => "other_netns",
        }
    }
}

/// A request's time window on CLOCK_MONOTONIC, slack included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Start and end as logged.
    pub start: u64,
    pub end: u64,
    pub slack: u64,
}

impl Window {
    /// The window of a request logged at wall-clock `start_unix_ns` for `duration_ms`;
    /// `wall_minus_mono`: REALTIME − MONOTONIC now (see `clock::wall_minus_monotonic_ns`).
    pub fn of(start_unix_ns: i128, duration_ms: u64, wall_minus_mono: i128, slack: u64) -> Window {
        let mono = |t: i128| u64::try_from((t - wall_minus_mono).max(0)).unwrap_or(u64::MAX);
        let start = mono(start_unix_ns);
        Window {
            start,
            end: start.saturating_add(duration_ms.saturating_mul(1_000_000)),
            slack,
        }
    }

    /// The flow's life `[start, close]` overlaps the window: `strict` without the slack.
    fn overlaps(&self, f: &Flow, strict: bool) -> bool {
        let slack = if strict { 0 } else { self.slack };
        // A flow open before the daemon started: its real start is unknown.
        let lo = if f.preexisting { 0 } else { f.start_ns };
        let hi = f.closed_ns.map_or(u64::MAX, |c| c.get());
        lo <= self.end.saturating_add(slack) && hi >= self.start.saturating_sub(slack)
    }
}

/// A match: the flow and whether the tuple said it exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub key: FlowKey,
    pub exact: bool,
}

/// The flows a batch of requests names, by tuple and by remote endpoint: one pass over the
/// table that keeps only the flows whose tuple (or remote end) some request asks for, so a
/// batch costs one hash lookup per flow and no allocation for the others.
pub struct Index<'a> {
    by_tuple: HashMap<(SocketAddr, SocketAddr), Vec<&'a Flow>>,
    by_remote: HashMap<SocketAddr, Vec<&'a Flow>>,
}

/// What the join needs beside the index.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    /// `envoy.netns` resolved: only flows of that namespace match.
    pub netns: Option<u64>,
    pub now: u64,
    pub retain_closed: u64,
    /// When the table last evicted a flow (0: never).
    pub last_eviction: u64,
}

impl<'a> Index<'a> {
    /// `tuples`: the (local, remote) pairs asked for; `remotes`: the remote ends asked for
    /// without a local one. Both come from log lines: std's keyed hash, not a fast one.
    pub fn build(
        flows: impl Iterator<Item = &'a Flow>,
        tuples: &HashSet<(SocketAddr, SocketAddr)>,
        remotes: &HashSet<SocketAddr>,
    ) -> Index<'a> {
        let mut by_tuple: HashMap<_, Vec<&Flow>> = HashMap::new();
        let mut by_remote: HashMap<_, Vec<&Flow>> = HashMap::new();
        for f in flows {
            let (l, r) = (canonical(f.local), canonical(f.remote));
            if tuples.contains(&(l, r)) {
                by_tuple.entry((l, r)).or_default().push(f);
            }
            if !remotes.is_empty() && remotes.contains(&r) {
                by_remote.entry(r).or_default().push(f);
            }
        }
        Index {
            by_tuple,
            by_remote,
        }
    }

    /// The flow whose socket is `local` → `remote` in the window.
    pub fn exact(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        w: &Window,
        cx: &Context,
    ) -> Result<Found, Unmatched> {
        let all = self
            .by_tuple
            .get(&(local, remote))
            .map_or(&[][..], Vec::as_slice);
        pick(all, w, cx, false).map(|key| Found { key, exact: true })
    }

    /// A flow to `remote` in the window (no local address to tell connections apart): a
    /// failed connect first (what a `UF` request's connection was), then the latest.
    pub fn approximate(
        &self,
        remote: SocketAddr,
        w: &Window,
        cx: &Context,
    ) -> Result<Found, Unmatched> {
        let all = self.by_remote.get(&remote).map_or(&[][..], Vec::as_slice);
        pick(all, w, cx, true).map(|key| Found { key, exact: false })
    }
}

fn pick(
    all: &[&Flow],
    w: &Window,
    cx: &Context,
    prefer_failed: bool,
) -> Result<FlowKey, Unmatched> {
    if all.is_empty() {
        let oldest_kept = cx.now.saturating_sub(cx.retain_closed);
        return Err(if w.end.saturating_add(w.slack) < oldest_kept {
            Unmatched::Expired
        } else if cx.last_eviction != 0 && cx.last_eviction >= w.start.saturating_sub(w.slack) {
            Unmatched::Evicted
        } else {
            Unmatched::NoFlow
        });
    }
    let here: Vec<&&Flow> = all
        .iter()
        .filter(|f| cx.netns.is_none_or(|n| f.key.netns == n))
        .collect();
    if here.is_empty() {
        return Err(Unmatched::OtherNetns);
    }
    here.into_iter()
        .filter(|f| w.overlaps(f, false))
        .max_by_key(|f| {
            let failed = prefer_failed
                && f.close
                    .and_then(crate::pipeline::flowtable::CloseCause::failure)
                    .is_some();
            // Inside the window without slack first, then the latest to start; the key
            // breaks ties so the choice does not depend on the table's order.
            (failed, w.overlaps(f, true), f.start_ns, f.key.cookie)
        })
        .map(|f| f.key)
        .ok_or(Unmatched::OutsideWindow)
}
