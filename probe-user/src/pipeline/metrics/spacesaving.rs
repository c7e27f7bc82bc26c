//! A bounded space-saving table (Metwally et al.'s stream-summary): each value's estimated
//! count, O(1) per observation. Entries with the same count share a list; counts only grow by
//! one, so the minimum is found without a search: a new value at the bound replaces one of
//! the minimum and inherits its count plus one.
use std::{collections::HashMap, hash::Hash};

const NIL: u32 = u32::MAX;

struct Entry<T> {
    value: T,
    count: u64,
    prev: u32,
    next: u32,
}

pub struct SpaceSaving<T> {
    capacity: usize,
    index: HashMap<T, u32>,
    entries: Vec<Entry<T>>,
    /// Count → (first, last) entry with that count.
    by_count: HashMap<u64, (u32, u32)>,
    /// The smallest count held (0 when empty).
    min: u64,
}

impl<T: Copy + Eq + Hash + Ord> SpaceSaving<T> {
    pub fn new(capacity: usize) -> Self {
        SpaceSaving {
            capacity: capacity.clamp(1, NIL as usize - 1),
            index: HashMap::new(),
            entries: Vec::new(),
            by_count: HashMap::new(),
            min: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    #[cfg(test)]
    pub fn contains(&self, value: &T) -> bool {
        self.index.contains_key(value)
    }

    /// Counts one for `value`; `true` when it entered the table now.
    pub fn observe(&mut self, value: T) -> bool {
        if let Some(&i) = self.index.get(&value) {
            let count = self.entries[i as usize].count;
            self.detach(i);
            self.entries[i as usize].count = count + 1;
            self.attach(i);
            if !self.by_count.contains_key(&count) && self.min == count {
                self.min = count + 1;
            }
            return false;
        }
        let i = if self.index.len() < self.capacity {
            self.entries.push(Entry {
                value,
                count: 1,
                prev: NIL,
                next: NIL,
            });
            self.min = 1;
            (self.entries.len() - 1) as u32
        } else {
            // The minimum's list is never empty while the table is full.
            let Some(&(victim, _)) = self.by_count.get(&self.min) else {
                return false;
            };
            self.detach(victim);
            let old = std::mem::replace(&mut self.entries[victim as usize].value, value);
            self.index.remove(&old);
            let inherited = self.entries[victim as usize].count;
            self.entries[victim as usize].count = inherited + 1;
            if !self.by_count.contains_key(&inherited) {
                self.min = inherited + 1;
            }
            victim
        };
        self.attach(i);
        self.index.insert(value, i);
        true
    }

    /// Values counted at least `floor`, busiest first (ties by value), at most `n`. Once per
    /// period, not per observation.
    pub fn busiest(&self, floor: u64, n: usize) -> Vec<T> {
        let mut v: Vec<(u64, T)> = self
            .entries
            .iter()
            .filter(|e| e.count >= floor)
            .map(|e| (e.count, e.value))
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.into_iter().take(n).map(|(_, value)| value).collect()
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.entries.clear();
        self.by_count.clear();
        self.min = 0;
    }

    fn attach(&mut self, i: u32) {
        let count = self.entries[i as usize].count;
        let list = self.by_count.entry(count).or_insert((NIL, NIL));
        let last = list.1;
        if last == NIL {
            list.0 = i;
        }
        list.1 = i;
        let e = &mut self.entries[i as usize];
        e.prev = last;
        e.next = NIL;
        if last != NIL {
            self.entries[last as usize].next = i;
        }
    }

    fn detach(&mut self, i: u32) {
        let Entry {
            count, prev, next, ..
        } = self.entries[i as usize];
        if prev != NIL {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        match (prev, next) {
            (NIL, NIL) => {
                self.by_count.remove(&count);
            }
            _ => {
                if let Some(list) = self.by_count.get_mut(&count) {
                    if prev == NIL {
                        list.0 = next;
                    }
                    if next == NIL {
                        list.1 = prev;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exactly_below_the_bound() {
        let mut s = SpaceSaving::new(8);
        for v in [1u32, 2, 2, 3, 3, 3] {
            s.observe(v);
        }
        assert_eq!(s.busiest(1, 10), vec![3, 2, 1]);
        assert_eq!(s.busiest(2, 10), vec![3, 2]);
        assert_eq!(s.min, 1);
    }

    #[test]
    fn a_new_value_at_the_bound_replaces_a_minimum_and_inherits_its_count() {
        let mut s = SpaceSaving::new(2);
        for v in [1u32, 1, 1, 2] {
            s.observe(v);
        }
        assert!(s.observe(3), "enters, replacing 2 (count 1)");
        assert!(!s.contains(&2));
        assert_eq!(s.busiest(1, 10), vec![1, 3]);
        assert_eq!(s.busiest(2, 10), vec![1, 3], "3 inherited 1 and counts 2");
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn the_minimum_stays_right_through_many_replacements() {
        let mut s = SpaceSaving::new(16);
        for v in 0..100_000u32 {
            s.observe(v % 1000);
            s.observe(7);
            let true_min = s.entries.iter().map(|e| e.count).min().unwrap_or(0);
            assert_eq!(s.min, true_min, "after {v}");
        }
        assert_eq!(s.len(), 16);
        assert_eq!(s.busiest(1, 1), vec![7]);
    }
}
