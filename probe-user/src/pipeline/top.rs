//! Rolling per-scope rates for `linkprobe top`: connections, RSTs, failed connects, data
//! segments and retransmits per remote peer and per local port over the last
//! [`WINDOW_SECS`] seconds, from the flow table's [`Signal`]s. Bounded: at most `max_scopes`
//! scopes; a new one evicts the least recently active (counted). Time comes only from the
//! signals and from the query's `now`, like the detectors.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{
    pipeline::detect::Scope,
    pipeline::signal::{ConnectFailure, Signal},
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
    last_sec: u64,
}

impl Rates {
    fn bucket(&mut self, sec: u64) -> &mut Bucket {
        self.last_sec = self.last_sec.max(sec);
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

pub struct Top {
    max_scopes: usize,
    scopes: HashMap<Scope, Rates>,
    evicted: u64,
}

impl Top {
    pub fn new(max_scopes: usize) -> Top {
        Top {
            max_scopes: max_scopes.max(1),
            scopes: HashMap::new(),
            evicted: 0,
        }
    }

    fn rates(&mut self, scope: Scope, sec: u64) -> &mut Bucket {
        if !self.scopes.contains_key(&scope) && self.scopes.len() >= self.max_scopes {
            // O(scopes) only when a new scope arrives at the bound.
            let oldest = self
                .scopes
                .iter()
                .min_by_key(|(_, r)| r.last_sec)
                .map(|(s, _)| *s);
            if let Some(s) = oldest {
                self.scopes.remove(&s);
                self.evicted += 1;
            }
        }
        self.scopes
            .entry(scope)
            .or_insert_with(|| Rates {
                buckets: [Bucket::default(); WINDOW_SECS as usize],
                last_sec: sec,
            })
            .bucket(sec)
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
                    self.rates(Scope::LocalPort(*p), sec).connections += 1;
                }
            }
            Signal::Rst {
                peer, local_port, ..
            } => {
                self.rates(Scope::Peer(*peer), sec).rsts += 1;
                if let Some(p) = local_port {
                    self.rates(Scope::LocalPort(*p), sec).rsts += 1;
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

    /// The `limit` busiest scopes by `key` over the window ending at `now_ns`.
    pub fn report(&self, now_ns: u64, key: TopKey, limit: usize) -> TopReport {
        let now_sec = now_ns / NS;
        let mut rows: Vec<TopRow> = self
            .scopes
            .iter()
            .map(|(scope, r)| (scope, r.sum(now_sec)))
            .filter(|(_, b)| b.connections + b.rsts + b.failures + b.segments > 0)
            .map(|(scope, b)| TopRow {
                scope: scope.to_string(),
                connections: b.connections,
                rsts: b.rsts,
                failures: b.failures,
                data_segments: b.segments,
                retransmits: b.retransmits,
                rst_per_sec: b.rsts as f64 / WINDOW_SECS as f64,
                failure_rate: ratio(b.failures, b.connections),
                retransmit_rate: ratio(b.retransmits, b.segments),
            })
            .collect();
        let value = |r: &TopRow| match key {
            TopKey::Rst => r.rst_per_sec,
            TopKey::Failure => r.failure_rate,
            TopKey::Retrans => r.retransmit_rate,
        };
        rows.sort_by(|a, b| {
            value(b)
                .total_cmp(&value(a))
                .then_with(|| a.scope.cmp(&b.scope))
        });
        rows.truncate(limit);
        TopReport {
            window_secs: WINDOW_SECS,
            scopes_tracked: self.scopes.len(),
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
}
