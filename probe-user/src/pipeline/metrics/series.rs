//! Label values, series storage and the series budget of the traffic metric families.
use std::{collections::BTreeMap, fmt};

use crate::pipeline::signal::Peer;

/// The `peer` label: a remote address (with its service port where we are the client), or a
/// bucket for everything without a series of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerLabel {
    Peer(Peer),
    /// Folded: the peer has no series of its own (top-K or the series cap).
    Other,
    /// Records the kernel counted but could not deliver (ring buffer full).
    Lost,
}

impl fmt::Display for PeerLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerLabel::Peer(p) => write!(f, "{p}"),
            PeerLabel::Other => f.write_str("other"),
            PeerLabel::Lost => f.write_str("lost"),
        }
    }
}

/// The `local_port` label: one of our listening (service) ports, or a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortLabel {
    Port(u16),
    /// Client side of a flow, or a port inside `ip_local_port_range`.
    Ephemeral,
    Other,
    Lost,
}

impl fmt::Display for PortLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortLabel::Port(p) => write!(f, "{p}"),
            PortLabel::Ephemeral => f.write_str("ephemeral"),
            PortLabel::Other => f.write_str("other"),
            PortLabel::Lost => f.write_str("lost"),
        }
    }
}

/// Upper bounds of the duration histograms, seconds: 50 µs to 10 s.
pub const BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// A duration histogram: per-bucket (not cumulative) counts, the last one past 10 s.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hist {
    pub counts: [u64; BUCKETS.len() + 1],
    pub sum: f64,
}

impl Hist {
    pub fn observe(&mut self, secs: f64) {
        let i = BUCKETS.partition_point(|b| *b < secs);
        self.counts[i] += 1;
        self.sum += secs;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What a series holds, and what it costs against the series budget.
pub trait SeriesValue: Default {
    /// Exposition lines per series (a histogram has one per bucket, `+Inf`, sum and count).
    const COST: usize;
    fn merge(&mut self, other: &Self);
}

impl SeriesValue for u64 {
    const COST: usize = 1;
    fn merge(&mut self, other: &Self) {
        *self += other;
    }
}

impl SeriesValue for Hist {
    const COST: usize = BUCKETS.len() + 3;
    fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }
}

/// The hard cap on traffic series, shared by every family.
#[derive(Debug)]
pub struct Budget {
    pub max: usize,
    pub used: usize,
    /// Observations folded into `other` because a new series would have passed the cap.
    pub capped: u64,
}

impl Budget {
    /// Takes room for a new series of `cost` lines; `false` (counted) when it would pass the
    /// cap.
    pub fn take(&mut self, cost: usize) -> bool {
        if self.used + cost <= self.max {
            self.used += cost;
            true
        } else {
            self.capped += 1;
            false
        }
    }
}

/// One metric family's series by label key, in a stable order.
pub struct Family<K, V> {
    series: BTreeMap<K, V>,
}

impl<K: Ord + Copy, V: SeriesValue> Family<K, V> {
    pub fn new() -> Self {
        Family {
            series: BTreeMap::new(),
        }
    }

    /// The series for `key`; when creating it would pass the budget, the series for
    /// `folded(key)` instead (created even then: its labels are few and fixed, and counts are
    /// never dropped).
    pub fn entry(&mut self, key: K, folded: impl FnOnce(K) -> K, budget: &mut Budget) -> &mut V {
        let key = if self.series.contains_key(&key) || budget.take(V::COST) {
            key
        } else {
            let f = folded(key);
            if !self.series.contains_key(&f) {
                budget.used += V::COST;
            }
            f
        };
        self.series.entry(key).or_default()
    }

    /// Moves every series whose key `retarget` maps to a new key into that key's series.
    pub fn fold(&mut self, retarget: impl Fn(&K) -> Option<K>, budget: &mut Budget) {
        let moved: Vec<(K, K)> = self
            .series
            .keys()
            .filter_map(|k| retarget(k).map(|to| (*k, to)))
            .collect();
        for (from, to) in moved {
            let Some(value) = self.series.remove(&from) else {
                continue;
            };
            if self.series.contains_key(&to) {
                budget.used = budget.used.saturating_sub(V::COST);
            }
            self.series.entry(to).or_default().merge(&value);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.series.iter()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.series.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_bounds() {
        let mut h = Hist::default();
        h.observe(0.000_05);
        h.observe(0.000_051);
        h.observe(11.0);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[BUCKETS.len()], 1);
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn entry_folds_past_the_budget_and_fold_keeps_sums() {
        let mut budget = Budget {
            max: 2,
            used: 0,
            capped: 0,
        };
        let mut f: Family<u32, u64> = Family::new();
        *f.entry(1, |_| 0, &mut budget) += 5;
        *f.entry(2, |_| 0, &mut budget) += 7;
        *f.entry(3, |_| 0, &mut budget) += 1;
        *f.entry(4, |_| 0, &mut budget) += 1;
        assert_eq!(budget.capped, 2);
        assert_eq!(f.len(), 3, "1, 2 and the fold target 0");
        assert_eq!(budget.used, 3);
        f.fold(|k| (*k == 1).then_some(0), &mut budget);
        let total: u64 = f.iter().map(|(_, v)| v).sum();
        assert_eq!(total, 14);
        assert_eq!(f.len(), 2);
        assert_eq!(budget.used, 2);
    }

    #[test]
    fn labels_render_as_prometheus_values() {
        let p = Peer {
            addr: "10.0.0.5".parse().unwrap(),
            port: Some(443),
            netns: 0,
        };
        assert_eq!(PeerLabel::Peer(p).to_string(), "10.0.0.5:443");
        let v6 = Peer {
            addr: "fd00::1".parse().unwrap(),
            port: Some(80),
            netns: 0,
        };
        assert_eq!(PeerLabel::Peer(v6).to_string(), "[fd00::1]:80");
        assert_eq!(PeerLabel::Other.to_string(), "other");
        assert_eq!(PortLabel::Ephemeral.to_string(), "ephemeral");
    }
}
