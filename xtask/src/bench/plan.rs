//! What one `cargo xtask bench` run measures: the workloads, the tracers and the order in
//! which they alternate.
use std::path::PathBuf;

use clap::ValueEnum;

/// A connection pattern the worker runs inside the bench namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Workload {
    /// connect, accept, one byte each way, client closes first (FIN).
    Conn,
    /// Like `conn`, but the client closes with SO_LINGER 0: an RST instead of a FIN.
    Abort,
    /// connect() to a closed port: the kernel answers the SYN with an RST (refused).
    Refused,
    /// Two workers at once, one on each CPU: `conn` and `abort` side by side.
    Parallel,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::Conn,
        Workload::Abort,
        Workload::Refused,
        Workload::Parallel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Conn => "conn",
            Workload::Abort => "abort",
            Workload::Refused => "refused",
            Workload::Parallel => "parallel",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Workload::Conn => "connect, 1 byte each way, FIN close",
            Workload::Abort => "connect, 1 byte each way, SO_LINGER 0 close (RST)",
            Workload::Refused => "connect to a closed port (RST, ECONNREFUSED)",
            Workload::Parallel => "conn and abort at once, one worker per CPU",
        }
    }
}

/// What runs beside the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum TracerKind {
    /// Nothing: the baseline of each round.
    None,
    /// `linkprobe daemon --netns NS -o none` as deployed (metrics, API and detectors on).
    Linkprobe,
    /// bpftrace counting the tcp/sock tracepoints linkprobe uses (`@[probe] = count()`).
    Bpftrace,
    /// libbpf-tools `tcplife`: one line per closed TCP session, to a file.
    Tcplife,
}

impl TracerKind {
    pub const ALL: [TracerKind; 4] = [
        TracerKind::None,
        TracerKind::Linkprobe,
        TracerKind::Bpftrace,
        TracerKind::Tcplife,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TracerKind::None => "none",
            TracerKind::Linkprobe => "linkprobe",
            TracerKind::Bpftrace => "bpftrace",
            TracerKind::Tcplife => "tcplife",
        }
    }
}

/// Everything `cargo xtask bench` was asked for.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Connections per measurement.
    pub count: u32,
    pub rounds: usize,
    pub workloads: Vec<Workload>,
    /// Always starts with [`TracerKind::None`], the baseline the ratios divide by.
    pub tracers: Vec<TracerKind>,
    /// Connections of the flow-table fill phase (0: skipped).
    pub fill_connections: u32,
    pub scrapes: u32,
    pub skip_scrape: bool,
    pub skip_profile: bool,
    pub json: PathBuf,
    pub chart: PathBuf,
    /// Also copy the chart to `docs/bench.png` (the README shows it).
    pub update_docs: bool,
}

/// The tracers in the order given, duplicates dropped, with the baseline added first when it
/// was left out (every ratio is against the baseline of the same round).
pub fn tracers_with_baseline(asked: &[TracerKind]) -> Vec<TracerKind> {
    let mut out = vec![TracerKind::None];
    for t in asked {
        if !out.contains(t) {
            out.push(*t);
        }
    }
    out
}

/// Workloads in the order given, duplicates dropped.
pub fn unique_workloads(asked: &[Workload]) -> Vec<Workload> {
    let mut out = Vec::new();
    for w in asked {
        if !out.contains(w) {
            out.push(*w);
        }
    }
    out
}

/// The tracer order for one (round, workload) step: rotated so that no tracer always runs
/// first (a warm or cold machine, TIME_WAIT sockets of the previous run) or right after the
/// same other one.
pub fn rotated(tracers: &[TracerKind], round: usize, workload_index: usize) -> Vec<TracerKind> {
    if tracers.is_empty() {
        return Vec::new();
    }
    let shift = (round + workload_index) % tracers.len();
    tracers[shift..]
        .iter()
        .chain(&tracers[..shift])
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_is_always_first_and_unique() {
        assert_eq!(
            tracers_with_baseline(&[TracerKind::Bpftrace, TracerKind::None, TracerKind::Bpftrace]),
            vec![TracerKind::None, TracerKind::Bpftrace]
        );
        assert_eq!(tracers_with_baseline(&[]), vec![TracerKind::None]);
    }

    #[test]
    fn rotation_visits_every_position() {
        let t = TracerKind::ALL;
        let firsts: Vec<TracerKind> = (0..4).map(|r| rotated(&t, r, 0)[0]).collect();
        assert_eq!(firsts, t.to_vec());
        assert_eq!(rotated(&t, 1, 2), rotated(&t, 3, 0));
        assert_eq!(rotated(&t, 2, 0).len(), 4);
    }

    #[test]
    fn workloads_deduplicated_in_order() {
        assert_eq!(
            unique_workloads(&[Workload::Abort, Workload::Conn, Workload::Abort]),
            vec![Workload::Abort, Workload::Conn]
        );
    }
}
