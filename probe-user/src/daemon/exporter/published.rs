//! What the event loop hands the exporter once a second.
use prometheus::proto::MetricFamily;

/// What the event loop publishes for the server.
#[derive(Default)]
pub struct Snapshot {
    pub families: Vec<MetricFamily>,
    /// CLOCK_MONOTONIC time of publication (0: nothing published yet).
    pub published_ns: u64,
    pub probes_total: usize,
    /// `name: why` of each probe that is off.
    pub probes_down: Vec<String>,
}
