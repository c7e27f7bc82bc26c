//! Which label values (peers, local ports) get series of their own: a bounded top-K by
//! activity.
//!
//! A value is admitted on first sight while there is room. Once full, other values are
//! folded into `other` and tracked as candidates (space-saving: a bounded table whose new
//! entries inherit the evicted minimum, so heavy hitters survive; O(1) per observation, so
//! spoofed sources cost no more than real ones). Every `rebalance` period,
//! admitted values that saw no activity during the whole period give their place to the
//! busiest candidates. Only idle values are retired: an active series never disappears, and
//! the counts a retired series carried move into `other` (the caller merges them), so sums
//! stay exact and counters monotonic.
use std::{collections::HashMap, hash::Hash};

use super::spacesaving::SpaceSaving;

/// At most this share of the admitted values is replaced per period (at least one).
const MAX_SWAP_FRACTION: usize = 10;
/// A candidate needs at least this much activity in a period to be promoted.
const MIN_PROMOTE_ACTIVITY: u64 = 2;

pub struct TopK<T> {
    capacity: usize,
    /// Admitted values and their activity in the current period.
    admitted: HashMap<T, u64>,
    /// Folded values seen this period and their estimated activity.
    candidates: SpaceSaving<T>,
    /// Values that entered the candidate table (were refused a series of their own).
    folded: u64,
    /// Admitted values retired to make room for busier ones.
    retired: u64,
}

impl<T: Copy + Eq + Hash + Ord> TopK<T> {
    pub fn new(capacity: usize) -> Self {
        TopK {
            capacity,
            admitted: HashMap::new(),
            candidates: SpaceSaving::new(capacity.saturating_mul(4).clamp(64, 65_536)),
            folded: 0,
            retired: 0,
        }
    }

    /// Counts one unit of activity for `value`; `true` when it has a series of its own.
    pub fn observe(&mut self, value: T) -> bool {
        if let Some(activity) = self.admitted.get_mut(&value) {
            *activity += 1;
            return true;
        }
        if self.admitted.len() < self.capacity {
            self.admitted.insert(value, 1);
            return true;
        }
        self.candidate(value);
        false
    }

    pub fn is_admitted(&self, value: &T) -> bool {
        self.admitted.contains_key(value)
    }

    /// Takes `value` out of the admitted set (it keeps no series).
    pub fn remove(&mut self, value: &T) -> bool {
        self.admitted.remove(value).is_some()
    }

    fn candidate(&mut self, value: T) {
        if self.candidates.observe(value) {
            self.folded += 1;
        }
    }

    /// Ends a period: idle admitted values give their place to the busiest candidates.
    /// Returns the retired values (their series must be folded into `other`).
    pub fn rebalance(&mut self) -> Vec<T> {
        let mut idle: Vec<T> = self
            .admitted
            .iter()
            .filter(|(_, a)| **a == 0)
            .map(|(v, _)| *v)
            .collect();
        idle.sort_unstable();
        let max_swaps = (self.capacity / MAX_SWAP_FRACTION).max(1);
        let busiest = self
            .candidates
            .busiest(MIN_PROMOTE_ACTIVITY, max_swaps)
            .into_iter();
        let mut retired = Vec::new();
        let mut promoted = Vec::new();
        for (candidate, victim) in busiest.zip(idle).take(max_swaps) {
            retired.push(victim);
            promoted.push(candidate);
        }
        for v in &retired {
            self.admitted.remove(v);
        }
        for a in self.admitted.values_mut() {
            *a = 0;
        }
        for v in promoted {
            self.admitted.insert(v, 0);
        }
        self.retired += retired.len() as u64;
        self.candidates.clear();
        retired
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.admitted.len()
    }

    /// Values refused a series of their own (counted when they enter the candidate table;
    /// a value that falls out of it and returns is counted again).
    pub fn folded(&self) -> u64 {
        self.folded
    }

    pub fn retired(&self) -> u64 {
        self.retired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_until_full_then_folds_and_counts_each_refused_value_once() {
        let mut t = TopK::new(3);
        for v in 0..3u32 {
            assert!(t.observe(v));
        }
        for _ in 0..5 {
            assert!(!t.observe(10));
        }
        assert!(!t.observe(11));
        assert!(t.observe(1));
        assert_eq!(t.len(), 3);
        assert_eq!(t.folded(), 2);
    }

    #[test]
    fn rebalance_retires_only_idle_values_for_busy_candidates() {
        let mut t = TopK::new(3);
        for v in 0..3u32 {
            t.observe(v);
        }
        assert!(t.rebalance().is_empty(), "no candidates yet");
        // Period 2: 0 and 1 stay active, 2 is idle, 10 is busy, 11 seen once.
        t.observe(0);
        t.observe(1);
        for _ in 0..5 {
            t.observe(10);
        }
        t.observe(11);
        assert_eq!(t.rebalance(), vec![2]);
        assert!(t.is_admitted(&10));
        assert!(!t.is_admitted(&2));
        assert!(!t.is_admitted(&11), "below the promotion floor");
        assert_eq!(t.retired(), 1);
        // Period 3: nothing is idle-and-replaceable when nobody is folded.
        t.observe(0);
        assert!(t.rebalance().is_empty());
    }

    #[test]
    fn active_values_are_never_retired() {
        let mut t = TopK::new(2);
        t.observe(1u32);
        t.observe(2);
        t.rebalance();
        t.observe(1);
        t.observe(2);
        for _ in 0..100 {
            t.observe(3);
        }
        assert!(t.rebalance().is_empty());
        assert!(t.is_admitted(&1) && t.is_admitted(&2));
    }

    #[test]
    fn candidate_table_is_bounded_and_keeps_heavy_hitters() {
        let mut t = TopK::new(1);
        t.observe(0u32);
        // Space-saving keeps any value seen more than N / capacity times (10,000 / 64 here).
        for _ in 0..500 {
            t.observe(1);
        }
        for v in 100..10_100u32 {
            t.observe(v);
        }
        assert!(t.candidates.len() <= 64);
        assert!(t.candidates.contains(&1), "the heavy hitter survives");
        assert_eq!(t.folded(), 10_001);
    }
}
