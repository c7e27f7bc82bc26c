//! Rolling per-scope rates for `linkprobe top`: connections, RSTs, failed connects, data
//! segments and retransmits per remote peer and per local port over the last
//! [`WINDOW_SECS`] seconds, from the flow table's [`Signal`]s. Bounded: at most `max_scopes`
//! scopes in a slab with an intrusive recency list; a new one evicts the least recently
//! active (counted). O(1) per signal: a hash lookup, a move to the list's end, an eviction
//! from its head; spoofed sources cost no scan. Time comes only from the signals and from
//! the query's `now`, like the detectors.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{
    attrib::{Owner, PodKey},
    event::Process,
    pipeline::detect::Scope,
    pipeline::lru::{self, Links, List, Slots, NIL},
    pipeline::signal::{ConnectFailure, Signal},
    untrusted::escape_str,
};

/// What `linkprobe top` ranks by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TopKey {
    #[default]
    Rst,
    Failure,
    Retrans,
}

/// `linkprobe top`: rates over the last `window_secs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopReport {
    pub window_secs: u64,
    pub scopes_tracked: usize,
    pub scopes_evicted: u64,
    pub rows: Vec<TopRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopRow {
    /// `peer 10.0.0.5:80` or `local port 8080`.
    pub scope: String,
    pub connections: u64,
    pub rsts: u64,
    pub failures: u64,
    pub data_segments: u64,
    pub retransmits: u64,
    pub rst_per_sec: f64,
    pub failure_rate: f64,
    pub retransmit_rate: f64,
    /// The last process seen on the scope's flows (`comm/pid`): a local port's is its
    /// listener's owner, a peer's the last that talked to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// The network namespace (cookie) of a peer or local port scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_cookie: Option<u64>,
    /// Its name (`host`, an `ip netns` name, `pid N (comm)`), named by the API's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

/// Length of the rolling window, in one-second buckets.
pub const WINDOW_SECS: u64 = 10;
const NS: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// The second this bucket counts (`ts / 1 s`); stale buckets are reset on use.
    sec: u64,
    connections: u64,
    rsts: u64,
    failures: u64,
    segments: u64,
    retransmits: u64,
}

#[derive(Debug)]
struct Rates {
    buckets: [Bucket; WINDOW_SECS as usize],
}

impl Rates {
    const EMPTY: Rates = Rates {
        buckets: [Bucket {
            sec: 0,
            connections: 0,
            rsts: 0,
            failures: 0,
            segments: 0,
            retransmits: 0,
        }; WINDOW_SECS as usize],
    };

    fn bucket(&mut self, sec: u64) -> &mut Bucket {
        let b = &mut self.buckets[(sec % WINDOW_SECS) as usize];
        if b.sec != sec {
            *b = Bucket {
                sec,
                ..Bucket::default()
            };
        }
        b
    }

    /// Sums of the buckets inside the window ending at `now_sec`.
    fn sum(&self, now_sec: u64) -> Bucket {
        let from = now_sec.saturating_sub(WINDOW_SECS - 1);
        self.buckets
            .iter()
            .filter(|b| b.sec >= from && b.sec <= now_sec)
            .fold(Bucket::default(), |mut acc, b| {
                acc.connections += b.connections;
                acc.rsts += b.rsts;
                acc.failures += b.failures;
                acc.segments += b.segments;
                acc.retransmits += b.retransmits;
                acc
            })
    }
}

/// What `top` keeps rates for: the detectors' scopes, and the pods of this node that own
/// sockets (attribution on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum TopScope {
    Scope(Scope),
    Pod(PodKey),
}

struct Slot {
    scope: TopScope,
    rates: Rates,
    /// The last process seen on the scope's flows.
    process: Option<Process>,
    links: Links<()>,
}

/// The slab as the recency list sees it.
struct SlabLinks<'a>(&'a mut [Slot]);

impl Slots for SlabLinks<'_> {
    type Tag = ();
    fn links(&mut self, slot: u32) -> &mut Links<()> {
        &mut self.0[slot as usize].links
    }
}

pub struct Top {
    max_scopes: usize,
    /// Scope → slot. Peers are chosen by whoever sends packets: SipHash with a random key,
    /// so spoofed sources cannot aim at one bucket.
    index: HashMap<TopScope, u32>,
    slots: Vec<Slot>,
    /// `namespace/name` of the pods that have a slot.
    pod_names: HashMap<PodKey, String>,
    /// Scopes by last activity, least recent first.
    recency: List,
    evicted: u64,
}

impl Top {
    pub fn new(max_scopes: usize) -> Top {
        Top {
            max_scopes: max_scopes.clamp(1, NIL as usize - 1),
            index: HashMap::new(),
            slots: Vec::new(),
            pod_names: HashMap::new(),
            recency: List::EMPTY,
            evicted: 0,
        }
    }

    fn rates(&mut self, scope: Scope, sec: u64) -> &mut Bucket {
        self.rates_of(TopScope::Scope(scope), sec)
    }

    fn rates_of(&mut self, scope: TopScope, sec: u64) -> &mut Bucket {
        let slot = match self.index.get(&scope) {
            Some(&slot) => {
                lru::unlink(&mut SlabLinks(&mut self.slots), &mut self.recency, slot);
                slot
            }
            None => self.admit(scope),
        };
        lru::push_back(&mut SlabLinks(&mut self.slots), &mut self.recency, (), slot);
        self.slots[slot as usize].rates.bucket(sec)
    }

    /// A slot for a new scope (off the list): a new one below the bound, else the least
    /// recently active scope's (evicted, counted).
    fn admit(&mut self, scope: TopScope) -> u32 {
        let fresh = Slot {
            scope,
            rates: Rates::EMPTY,
            process: None,
            links: Links::unlinked(()),
        };
        let slot = if self.slots.len() < self.max_scopes {
            self.slots.push(fresh);
            (self.slots.len() - 1) as u32
        } else {
            let victim = self.recency.head;
            lru::unlink(&mut SlabLinks(&mut self.slots), &mut self.recency, victim);
            let old = std::mem::replace(&mut self.slots[victim as usize], fresh);
            self.index.remove(&old.scope);
            if let TopScope::Pod(k) = old.scope {
                self.pod_names.remove(&k);
            }
            self.evicted += 1;
            victim
        };
        self.index.insert(scope, slot);
        slot
    }

    /// Counts one signal. Kinds `top` does not rank are ignored (the list of signals grows).
    pub fn observe(&mut self, s: &Signal) {
        let sec = s.ts_ns() / NS;
        match s {
            Signal::Connection {
                peer, local_port, ..
            } => {
                self.rates(Scope::Peer(*peer), sec).connections += 1;
                if let Some(p) = local_port {
                    self.rates(Scope::LocalPort(peer.netns, *p), sec)
                        .connections += 1;
                }
            }
            Signal::Rst {
                peer, local_port, ..
            } => {
                self.rates(Scope::Peer(*peer), sec).rsts += 1;
                if let Some(p) = local_port {
                    self.rates(Scope::LocalPort(peer.netns, *p), sec).rsts += 1;
                }
            }
            // Failed attempts; connections that ended in a reset rank by their RSTs.
            Signal::ConnectFailed { peer, cause, .. } if *cause != ConnectFailure::Reset => {
                self.rates(Scope::Peer(*peer), sec).failures += 1;
            }
            Signal::DataSegments {
                peer,
                sent,
                retransmitted,
                ..
            } => {
                let b = self.rates(Scope::Peer(*peer), sec);
                b.segments += sent;
                b.retransmits += retransmitted;
            }
            _ => {}
        }
    }

    /// The process owning the socket of `s` (after [`Top::observe`]): remembered for the
    /// signal's peer and local port scopes. No new scope: a hash lookup each.
    pub fn observe_process(&mut self, s: &Signal, process: &Process) {
        let (peer, local_port) = match s {
            Signal::Connection {
                peer, local_port, ..
            }
            | Signal::Rst {
                peer, local_port, ..
            } => (*peer, *local_port),
            Signal::ConnectFailed { peer, .. } | Signal::DataSegments { peer, .. } => (*peer, None),
            _ => return,
        };
        let scopes = [
            Some(Scope::Peer(peer)),
            local_port.map(|p| Scope::LocalPort(peer.netns, p)),
        ];
        for scope in scopes.into_iter().flatten() {
            if let Some(&slot) = self.index.get(&TopScope::Scope(scope)) {
                let held = &mut self.slots[slot as usize].process;
                if held.as_ref() != Some(process) {
                    *held = Some(process.clone());
                }
            }
        }
    }

    /// Counts `s` for the pod that owns its socket (named pods only: the rest have no scope).
    pub fn observe_owner(&mut self, s: &Signal, owner: &Owner) {
        let (Some(key), Some((ns, name))) = (owner.pod_key(), owner.names()) else {
            return;
        };
        let sec = s.ts_ns() / NS;
        let b = match s {
            Signal::Connection { .. }
            | Signal::Rst { .. }
            | Signal::ConnectFailed { .. }
            | Signal::DataSegments { .. } => self.rates_of(TopScope::Pod(key), sec),
            _ => return,
        };
        match s {
            Signal::Connection { .. } => b.connections += 1,
            Signal::Rst { .. } => b.rsts += 1,
            Signal::ConnectFailed { cause, .. } if *cause != ConnectFailure::Reset => {
                b.failures += 1;
            }
            Signal::DataSegments {
                sent,
                retransmitted,
                ..
            } => {
                b.segments += sent;
                b.retransmits += retransmitted;
            }
            _ => {}
        }
        self.pod_names
            .entry(key)
            .or_insert_with(|| escape_str(&format!("{ns}/{name}")).into_owned());
    }

    /// The `limit` busiest peers and local ports by `key` over the window ending at `now_ns`.
    #[cfg(test)]
    pub fn report(&self, now_ns: u64, key: TopKey, limit: usize) -> TopReport {
        self.report_of(now_ns, key, limit, false, None)
    }

    /// The same over peers and ports, or (`pods`) over the pods of this node.
    /// With `netns`, only the scopes of that network namespace (pods have none: no rows).
    pub fn report_of(
        &self,
        now_ns: u64,
        key: TopKey,
        limit: usize,
        pods: bool,
        netns: Option<u64>,
    ) -> TopReport {
        let now_sec = now_ns / NS;
        let mut rows: Vec<TopRow> = self
            .slots
            .iter()
            .filter(|s| matches!(s.scope, TopScope::Pod(_)) == pods)
            .filter(|s| {
                netns.is_none_or(
                    |n| matches!(&s.scope, TopScope::Scope(sc) if sc.netns() == Some(n)),
                )
            })
            .map(|s| (&s.scope, s.rates.sum(now_sec), &s.process))
            .filter(|(_, b, _)| b.connections + b.rsts + b.failures + b.segments > 0)
            .map(|(scope, b, process)| TopRow {
                scope: match scope {
                    TopScope::Scope(s) => s.to_string(),
                    TopScope::Pod(k) => {
                        format!("pod {}", self.pod_names.get(k).map_or("?", String::as_str))
                    }
                },
                connections: b.connections,
                rsts: b.rsts,
                failures: b.failures,
                data_segments: b.segments,
                retransmits: b.retransmits,
                rst_per_sec: b.rsts as f64 / WINDOW_SECS as f64,
                failure_rate: ratio(b.failures, b.connections),
                retransmit_rate: ratio(b.retransmits, b.segments),
                process: process
                    .as_ref()
                    .map(|p| format!("{}/{}", p.comm.as_str(), p.pid)),
                netns_cookie: match scope {
                    TopScope::Scope(s) => s.netns().filter(|c| *c != 0),
                    TopScope::Pod(_) => None,
                },
                netns: None,
            })
            .collect();
        let value = |r: &TopRow| match key {
            TopKey::Rst => r.rst_per_sec,
            TopKey::Failure => r.failure_rate,
            TopKey::Retrans => r.retransmit_rate,
        };
        // A row is about what it is ranked by: scopes with none of it (healthy traffic under
        // `--by rst`) are not rows of zeros.
        rows.retain(|r| value(r) > 0.0);
        rows.sort_by(|a, b| {
            value(b)
                .total_cmp(&value(a))
                .then_with(|| a.scope.cmp(&b.scope))
                .then_with(|| a.netns_cookie.cmp(&b.netns_cookie))
        });
        rows.truncate(limit);
        TopReport {
            window_secs: WINDOW_SECS,
            scopes_tracked: self.index.len(),
            scopes_evicted: self.evicted,
            rows,
        }
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        if part > 0 {
            1.0
        } else {
            0.0
        }
    } else {
        (part as f64 / whole as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::pipeline::signal::{Peer, RstDirection};

    fn peer(port: u16) -> Peer {
        Peer {
            addr: IpAddr::from([10, 0, 0, 1]),
            port: Some(port),
            netns: 0,
        }
    }

    fn rst(ts_ns: u64, port: u16) -> Signal {
        Signal::Rst {
            ts_ns,
            direction: RstDirection::Received,
            peer: peer(port),
            local_port: None,
            cookie: Some(1),
            reason: None,
            after_established: false,
            connection_ns: None,
        }
    }

    #[test]
    fn ranks_by_rst_rate_over_the_window() {
        let mut top = Top::new(16);
        for i in 0..50 {
            top.observe(&rst(5 * NS + i, 80));
        }
        top.observe(&rst(5 * NS, 443));
        top.observe(&Signal::ConnectFailed {
            ts_ns: 5 * NS,
            peer: peer(443),
            local_port: None,
            cookie: 2,
            role: None,
            cause: ConnectFailure::Refused,
        });
        let r = top.report(6 * NS, TopKey::Rst, 10);
        assert_eq!(r.rows[0].scope, "peer 10.0.0.1:80");
        assert_eq!(r.rows[0].rsts, 50);
        assert!((r.rows[0].rst_per_sec - 5.0).abs() < 1e-9);
        let r = top.report(6 * NS, TopKey::Failure, 1);
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0].scope, "peer 10.0.0.1:443");
        // Ten seconds later the window is empty.
        assert!(top.report(16 * NS, TopKey::Rst, 10).rows.is_empty());
        // Ranked by retransmits, nobody has any: no rows of zeros.
        assert!(top.report(6 * NS, TopKey::Retrans, 10).rows.is_empty());
    }

    /// Two listeners on one port in two network namespaces are two rows, each with its
    /// namespace's cookie (the API's answer names it).
    #[test]
    fn one_port_in_two_namespaces_is_two_rows() {
        let mut top = Top::new(16);
        for (netns, n) in [(11, 3), (22, 1)] {
            for i in 0..n {
                let mut s = rst(5 * NS + i, 80);
                if let Signal::Rst {
                    local_port, peer, ..
                } = &mut s
                {
                    *local_port = Some(8080);
                    peer.netns = netns;
                }
                top.observe(&s);
            }
        }
        let r = top.report(6 * NS, TopKey::Rst, 10);
        let ports: Vec<(u64, Option<u64>)> = r
            .rows
            .iter()
            .filter(|r| r.scope == "local port 8080")
            .map(|r| (r.rsts, r.netns_cookie))
            .collect();
        assert_eq!(ports, [(3, Some(11)), (1, Some(22))]);
    }

    #[test]
    fn a_local_port_row_names_its_owner() {
        let mut top = Top::new(16);
        let mut s = rst(5 * NS, 80);
        if let Signal::Rst { local_port, .. } = &mut s {
            *local_port = Some(8080);
        }
        top.observe(&s);
        let owner = Process {
            pid: 42,
            comm: "nginx".into(),
        };
        top.observe_process(&s, &owner);
        let r = top.report(6 * NS, TopKey::Rst, 10);
        let port = r
            .rows
            .iter()
            .find(|r| r.scope == "local port 8080")
            .expect("the port's row");
        assert_eq!(port.process.as_deref(), Some("nginx/42"));
        // No scope is made for a process alone.
        top.observe_process(&rst(5 * NS, 9), &owner);
        assert_eq!(top.report(6 * NS, TopKey::Rst, 10).rows.len(), 2);
    }

    #[test]
    fn bounded_scopes_evict_the_least_recent() {
        let mut top = Top::new(2);
        top.observe(&rst(NS, 1));
        top.observe(&rst(2 * NS, 2));
        top.observe(&rst(3 * NS, 3));
        let r = top.report(3 * NS, TopKey::Rst, 10);
        assert_eq!(r.scopes_tracked, 2);
        assert_eq!(r.scopes_evicted, 1);
        assert!(r.rows.iter().all(|row| row.scope != "peer 10.0.0.1:1"));
    }

    fn rst_from(ts_ns: u64, addr: u32) -> Signal {
        Signal::Rst {
            ts_ns,
            direction: RstDirection::Sent,
            peer: Peer {
                addr: IpAddr::from(addr.to_be_bytes()),
                port: Some(40_000),
                netns: 0,
            },
            local_port: Some(9),
            cookie: None,
            reason: None,
            after_established: false,
            connection_ns: None,
        }
    }

    #[test]
    fn a_hundred_thousand_spoofed_sources_stay_bounded_and_counted() {
        let mut top = Top::new(4096);
        let base = u32::from_be_bytes([10, 99, 0, 0]);
        for i in 0..100_000u32 {
            top.observe(&rst_from(5 * NS + u64::from(i), base + i));
        }
        let r = top.report(6 * NS, TopKey::Rst, 3);
        // Every source is a new peer scope; the local port is one scope, kept (always recent).
        assert_eq!(r.scopes_tracked, 4096);
        assert_eq!(r.scopes_evicted, 100_001 - 4096);
        assert_eq!(r.rows[0].scope, "local port 9");
        assert_eq!(r.rows[0].rsts, 100_000);
        // The scopes kept are the most recent sources.
        let newest = IpAddr::from((base + 99_999).to_be_bytes());
        assert!(top.index.contains_key(&TopScope::Scope(Scope::Peer(Peer {
            addr: newest,
            port: Some(40_000),
            netns: 0,
        }))));
        let evicted = IpAddr::from((base + 95_000).to_be_bytes());
        assert!(!top.index.contains_key(&TopScope::Scope(Scope::Peer(Peer {
            addr: evicted,
            port: Some(40_000),
            netns: 0,
        }))));
        assert_eq!(top.slots.len(), 4096);
        assert_eq!(top.recency.len, 4096);
    }
}
