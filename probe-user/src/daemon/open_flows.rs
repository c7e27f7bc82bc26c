//! Open flows as the kernel holds them now (the event path only reports flows that end or
//! misbehave): the open-flow iterator's records fed through the pipeline like ring records, at
//! most once per [`MIN_GAP`].
use std::time::{Duration, Instant};

use crate::{
    event::{decode::decode_record, totals::Totals},
    kernel::loader::{Loaded, OpenFlowsError},
    pipeline::Pipeline,
};

/// How often a query may rerun the iterator (a pass over every TCP socket of the host);
/// queries in between answer from the last pass.
const MIN_GAP: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct OpenFlows {
    /// When the iterator last ran.
    at: Option<Instant>,
}

impl OpenFlows {
    pub fn refresh(&mut self, loaded: &Loaded, pipeline: &mut Pipeline, totals: &mut Totals) {
        if self.at.is_some_and(|at| at.elapsed() < MIN_GAP) {
            return;
        }
        self.at = Some(Instant::now());
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
            }
            Err(OpenFlowsError::Unavailable) => log::debug!("open flows unavailable"),
            Err(e) => log::warn!("{e}"),
        }
    }
}
