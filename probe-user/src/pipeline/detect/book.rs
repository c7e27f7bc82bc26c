//! The anomaly book: active anomalies by id, the bounded list of cleared ones, the changes
//! waiting for the next `tick`, ids and per-kind totals.
use std::collections::{BTreeMap, VecDeque};

use super::anomaly::{Anomaly, AnomalyChange, AnomalyKind, Scope};

/// Changes kept between two `tick`s at most; beyond that they are counted and dropped (the
/// anomalies themselves stay queryable through `active` / `recent`).
const MAX_PENDING: usize = 65_536;

pub(super) struct Book {
    active: BTreeMap<u64, Anomaly>,
    recent: VecDeque<Anomaly>,
    pending: Vec<AnomalyChange>,
    next_id: u64,
    raised_total: [u64; AnomalyKind::COUNT],
    changes_dropped: u64,
    evidence_len: usize,
    recent_len: usize,
}

/// What a new anomaly starts with.
pub(super) struct NewAnomaly {
    pub kind: AnomalyKind,
    pub scope: Scope,
    pub start_ns: u64,
    pub last_ns: u64,
    pub rate: f64,
    pub evidence: Vec<u64>,
    pub detail: String,
    /// The kind's hint, or one the occurrence chose (who reset whom).
    pub hint: &'static str,
}

impl Book {
    pub fn new(evidence_len: usize, recent_len: usize) -> Book {
        Book {
            active: BTreeMap::new(),
            recent: VecDeque::new(),
            pending: Vec::new(),
            next_id: 1,
            raised_total: [0; AnomalyKind::COUNT],
            changes_dropped: 0,
            evidence_len,
            recent_len,
        }
    }

    pub fn evidence_len(&self) -> usize {
        self.evidence_len
    }

    /// Raises an anomaly and returns its id.
    pub fn raise(&mut self, new: NewAnomaly) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.raised_total[new.kind.index()] += 1;
        let mut evidence = new.evidence;
        evidence.truncate(self.evidence_len);
        let anomaly = Anomaly {
            id,
            kind: new.kind,
            scope: new.scope,
            start_ns: new.start_ns,
            end_ns: None,
            last_ns: new.last_ns,
            peak_rate: new.rate,
            evidence,
            hint: new.hint,
            detail: new.detail,
        };
        self.push(AnomalyChange::Raised(anomaly.clone()));
        self.active.insert(id, anomaly);
        id
    }

    /// Adds a cookie to an active anomaly's evidence (bounded, no duplicates).
    pub fn add_evidence(&mut self, id: u64, cookie: u64) {
        if let Some(a) = self.active.get_mut(&id) {
            if a.evidence.len() < self.evidence_len && !a.evidence.contains(&cookie) {
                a.evidence.push(cookie);
            }
        }
    }

    /// Records that the condition still held at `last_ns`.
    pub fn touch(&mut self, id: u64, last_ns: u64) {
        if let Some(a) = self.active.get_mut(&id) {
            a.last_ns = a.last_ns.max(last_ns);
        }
    }

    /// Raises the peak when `rate` is above it; true when it did.
    pub fn peak(&mut self, id: u64, rate: f64, detail: impl FnOnce() -> String) -> bool {
        match self.active.get_mut(&id) {
            Some(a) if rate > a.peak_rate => {
                a.peak_rate = rate;
                a.detail = detail();
                true
            }
            _ => false,
        }
    }

    pub fn peak_of(&self, id: u64) -> f64 {
        self.active.get(&id).map_or(0.0, |a| a.peak_rate)
    }

    /// Reports the anomaly's current state as `Updated`.
    pub fn announce(&mut self, id: u64) {
        if let Some(a) = self.active.get(&id) {
            let change = AnomalyChange::Updated(a.clone());
            self.push(change);
        }
    }

    /// Clears an active anomaly at `end_ns`.
    pub fn clear(&mut self, id: u64, end_ns: u64) {
        let Some(mut a) = self.active.remove(&id) else {
            return;
        };
        a.end_ns = Some(end_ns);
        self.push(AnomalyChange::Cleared(a.clone()));
        if self.recent_len > 0 {
            if self.recent.len() >= self.recent_len {
                self.recent.pop_front();
            }
            self.recent.push_back(a);
        }
    }

    fn push(&mut self, change: AnomalyChange) {
        if self.pending.len() < MAX_PENDING {
            self.pending.push(change);
        } else {
            self.changes_dropped += 1;
        }
    }

    pub fn drain(&mut self) -> Vec<AnomalyChange> {
        std::mem::take(&mut self.pending)
    }

    pub fn active(&self) -> impl Iterator<Item = &Anomaly> {
        self.active.values()
    }

    pub fn recent(&self) -> impl Iterator<Item = &Anomaly> {
        self.recent.iter()
    }

    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    pub fn raised_total(&self) -> [u64; AnomalyKind::COUNT] {
        self.raised_total
    }

    pub fn changes_dropped(&self) -> u64 {
        self.changes_dropped
    }
}
