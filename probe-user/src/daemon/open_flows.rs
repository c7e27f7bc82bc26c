//! Open flows as the kernel holds them now (the event path only reports flows that end or
//! misbehave): the open-flow iterator's records fed through the pipeline like ring records, at
//! most once per [`MIN_GAP`] for queries and once per [`EXPIRY_GAP`] before idle open flows
//! are expired (each flow the kernel still has is re-touched, so only those it no longer has
//! leave the table).
use std::time::{Duration, Instant};

use crate::{
    clock::monotonic_ns,
    event::{decode::decode_record, totals::Totals},
    kernel::loader::{Loaded, OpenFlowsError},
    pipeline::Pipeline,
};

/// How often a query may rerun the iterator (a pass over every TCP socket of the host);
/// queries in between answer from the last pass.
const MIN_GAP: Duration = Duration::from_secs(1);
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

#[derive(Debug, Default)]
pub struct OpenFlows {
    /// When the iterator last ran.
    at: Option<Instant>,
    view: KernelView,
}

impl OpenFlows {
    /// For a query: a fresh pass unless one ran within [`MIN_GAP`].
    pub fn refresh(&mut self, loaded: &Loaded, pipeline: &mut Pipeline, totals: &mut Totals) {
        if self.at.is_some_and(|at| at.elapsed() < MIN_GAP) {
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
