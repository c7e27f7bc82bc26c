//! Open flows as the kernel holds them now (the event path only reports flows that end or
//! misbehave): the open-flow iterator's records fed through the pipeline like ring records.
//! A query gets a fresh pass whenever the kernel counted a state change since the last one (a
//! connect() a moment ago is listed, SYN_SENT, with its owner: no ring record is spent on it),
//! else at most once per [`MIN_GAP`] (socket counters); passes for queries are budgeted
//! ([`PassBudget`]) so a flood of queries cannot keep the loop iterating. Before idle open
//! flows expire, a pass runs at most once per [`EXPIRY_GAP`] (each flow the kernel still has
//! is re-touched, so only those it no longer has leave the table).
use std::time::{Duration, Instant};

use crate::{
    clock::monotonic_ns,
    event::{decode::decode_record, totals::Totals},
    kernel::{
        counters,
        loader::{Loaded, OpenFlowsError},
    },
    pipeline::Pipeline,
};

/// How often a query reruns the iterator (a pass over every flow the kernel holds) when no
/// state changed since the last pass: only the socket counters could be newer.
const MIN_GAP: Duration = Duration::from_secs(1);
/// Passes for queries that may run back to back (a script asking `flows` several times)...
const PASS_BURST: f64 = 8.0;
/// ...and how many a second after that; beyond it queries answer from the last pass.
const PASS_RATE: f64 = 4.0;
/// How often idle flows may ask for a pass: flows past their idle timeout wait at most this
/// long for the kernel's word.
const EXPIRY_GAP: Duration = Duration::from_secs(10);

/// What the kernel last said about its open flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum KernelView {
    /// No pass yet.
    #[default]
    None,
    /// The iterator is missing on this kernel (or failed): idle timeouts alone decide.
    Unavailable,
    /// A pass started at this CLOCK_MONOTONIC time.
    Pass(u64),
}

/// A token bucket of iterator passes for queries.
#[derive(Debug)]
struct PassBudget {
    tokens: f64,
    at: Instant,
}

impl Default for PassBudget {
    fn default() -> Self {
        PassBudget {
            tokens: PASS_BURST,
            at: Instant::now(),
        }
    }
}

impl PassBudget {
    /// Takes one pass if the budget has one.
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * PASS_RATE;
        self.tokens = (self.tokens + refill).min(PASS_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
pub struct OpenFlows {
    /// When the iterator last ran.
    at: Option<Instant>,
    view: KernelView,
    /// The kernel's state-change count when the last pass started (`None`: unreadable).
    moves_at_pass: Option<u64>,
    budget: PassBudget,
}

impl OpenFlows {
    /// For a query: a fresh pass when the kernel changed a flow's state since the last one,
    /// or when that one is older than [`MIN_GAP`], within the [`PassBudget`].
    pub fn refresh(&mut self, loaded: &Loaded, pipeline: &mut Pipeline, totals: &mut Totals) {
        let moves = counters::state_moves(&loaded.ebpf).ok();
        let exact = moves.is_some() && moves == self.moves_at_pass;
        if exact && self.at.is_some_and(|at| at.elapsed() < MIN_GAP) {
            return;
        }
        if !self.budget.take(Instant::now()) {
            log::debug!("open-flow pass skipped: query budget spent, answering from the last");
            return;
        }
        self.run(loaded, pipeline, totals);
    }

    /// Before idle open flows expire: a fresh pass when some are due and none ran within
    /// [`EXPIRY_GAP`]. Returns the `kernel_pass` for [`Pipeline::tick`].
    pub fn before_expiry(
        &mut self,
        loaded: &Loaded,
        pipeline: &mut Pipeline,
        totals: &mut Totals,
        now_ns: u64,
    ) -> Option<u64> {
        let stale = self.at.is_none_or(|at| at.elapsed() >= EXPIRY_GAP);
        if stale && pipeline.flows.idle_due(now_ns) {
            self.run(loaded, pipeline, totals);
        }
        match self.view {
            // No pass yet: nothing was confirmed gone.
            KernelView::None => Some(0),
            KernelView::Unavailable => None,
            KernelView::Pass(ns) => Some(ns),
        }
    }

    fn run(&mut self, loaded: &Loaded, pipeline: &mut Pipeline, totals: &mut Totals) {
        self.at = Some(Instant::now());
        // Taken before the pass: a change during it makes the next query pass again.
        self.moves_at_pass = counters::state_moves(&loaded.ebpf).ok();
        let started = monotonic_ns();
        match loaded.open_flows() {
            Ok(records) => {
                log::debug!("open-flow iterator: {} flows", records.len());
                for raw in &records {
                    match decode_record(raw) {
                        Ok(ev) => pipeline.on_event(&ev, &loaded.reason_names),
                        Err(e) => {
                            totals.undecodable();
                            log::error!("open flow: {e}");
                        }
                    }
                }
                self.view = KernelView::Pass(started);
            }
            Err(OpenFlowsError::Unavailable) => {
                log::debug!("open flows unavailable");
                self.view = KernelView::Unavailable;
            }
            Err(e) => {
                log::warn!("{e}");
                self.view = KernelView::Unavailable;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pass_budget_allows_a_burst_then_its_rate() {
        let start = Instant::now();
        let mut b = PassBudget {
            tokens: PASS_BURST,
            at: start,
        };
        let burst = (0..20).filter(|_| b.take(start)).count();
        assert_eq!(burst, PASS_BURST as usize);
        assert!(!b.take(start));
        // A second later: PASS_RATE more.
        let later = start + Duration::from_secs(1);
        let refilled = (0..20).filter(|_| b.take(later)).count();
        assert_eq!(refilled, PASS_RATE as usize);
    }
}
