//! How long the watch waits after an error before it asks the apiserver again: doubling
//! from `first` up to `max`, each wait jittered down by up to a half so that the DaemonSet's
//! pods, all cut off by the same apiserver restart, do not come back in step. Any success
//! resets it (kube's `StreamBackoff` calls `reset` on every `Ok`).
use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    time::Duration,
};

use kube::runtime::utils::Backoff;

pub struct RetryBackoff {
    first: Duration,
    max: Duration,
    next: Duration,
    /// Seeded per process; drawing hashes a counter, which is all the jitter needs.
    seed: RandomState,
    draws: u64,
}

impl RetryBackoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        let first = first.max(Duration::from_millis(1));
        Self {
            first,
            max: max.max(first),
            next: first,
            seed: RandomState::new(),
            draws: 0,
        }
    }

    /// A fraction in [0.5, 1.0].
    fn jitter(&mut self) -> f64 {
        self.draws += 1;
        let mut h = self.seed.build_hasher();
        h.write_u64(self.draws);
        0.5 + (h.finish() % 1024) as f64 / 2046.0
    }
}

impl Iterator for RetryBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next.mul_f64(self.jitter());
        self.next = (self.next * 2).min(self.max);
        Some(wait)
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_jittered_and_resets() {
        let mut b = RetryBackoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let waits: Vec<Duration> = b.by_ref().take(6).collect();
        let caps = [100, 200, 400, 700, 700, 700].map(Duration::from_millis);
        for (wait, cap) in waits.iter().zip(caps) {
            assert!(
                *wait <= cap && *wait >= cap / 2,
                "{wait:?} within [{:?}, {cap:?}]",
                cap / 2
            );
        }
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(100));
    }
}
