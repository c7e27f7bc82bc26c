//! One measurement: a fresh tracer, one worker run in the bench namespace, the tracer's own
//! cost (CPU, peak memory) and, for linkprobe, its records and its counts against nstat once
//! it has drained everything the workload caused.
use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use testkit::netns::{Netns, Nstat};

use super::{
    exposition,
    nstat::{self, Check},
    plan::{TracerKind, Workload},
    session::check_interrupted,
    tracers::{Daemon, Running},
    workload::{run_worker, WorkerResult},
};
use crate::procstat;

/// Records the daemon drained from the ring, per kind (summed: kinds may change).
pub const RECORDS: &str = "linkprobe_records_received_total";
/// Records the ring could not take, counted in the kernel per kind.
pub const LOST: &str = "linkprobe_events_lost_total";
const POLL: Duration = Duration::from_millis(200);
/// Records unchanged this long: a snapshot (published once a second) came after the ring was
/// empty.
const DRAINED: Duration = Duration::from_millis(1200);
/// Counts still off after this long without a new record: they stay off.
const GIVE_UP_UNCHANGED: Duration = Duration::from_secs(3);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// tcplife reads its perf buffer every 100 ms: give it time to print the last sessions.
const EXTERNAL_DRAIN: Duration = Duration::from_millis(300);
/// The tracer's idle CPU is measured over this long before the workload (linkprobe's daemon
/// wakes every 50 ms to drain and once a second to publish, whatever the load)…
const IDLE_WINDOW: Duration = Duration::from_secs(1);
/// …after this long: a tracer just started is still settling in (page faults, first
/// snapshot, the sockets earlier runs left in TIME_WAIT).
const IDLE_WARMUP: Duration = Duration::from_secs(1);

/// A tracer's CPU time at one instant.
#[derive(Clone, Copy, Debug)]
pub struct CpuMark {
    at: Instant,
    ms: f64,
}

impl CpuMark {
    pub fn now(pid: Option<u32>) -> Option<CpuMark> {
        let ms = procstat::cpu_ms(pid?)?;
        Some(CpuMark {
            at: Instant::now(),
            ms,
        })
    }
}

/// A tracer's CPU over one measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuUse {
    /// From the worker's start until the tracer had processed everything, ms.
    pub gross_ms: f64,
    /// Seconds between those two readings.
    pub secs: f64,
    /// Its CPU rate while idle, measured just before, ms per second.
    pub idle_ms_per_s: f64,
}

impl CpuUse {
    pub fn between(start: CpuMark, end: CpuMark, idle_ms_per_s: f64) -> CpuUse {
        CpuUse {
            gross_ms: end.ms - start.ms,
            secs: end.at.duration_since(start.at).as_secs_f64(),
            idle_ms_per_s,
        }
    }

    /// What the workload cost: the gross time less what the tracer spends idle anyway.
    pub fn net_ms(&self) -> f64 {
        (self.gross_ms - self.idle_ms_per_s * self.secs).max(0.0)
    }
}

/// The tracer's CPU rate over [`IDLE_WINDOW`] with nothing happening, ms per second.
fn idle_rate(pid: Option<u32>) -> Result<f64> {
    if pid.is_none() {
        return Ok(0.0);
    }
    thread::sleep(IDLE_WARMUP);
    let Some(start) = CpuMark::now(pid) else {
        return Ok(0.0);
    };
    thread::sleep(IDLE_WINDOW);
    check_interrupted()?;
    Ok(CpuMark::now(pid).map_or(0.0, |end| {
        CpuUse::between(start, end, 0.0).gross_ms / end.at.duration_since(start.at).as_secs_f64()
    }))
}

/// linkprobe's view of one measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkprobeFigures {
    /// Ring records the daemon received during the workload.
    pub records: u64,
    pub lost: u64,
    pub checks: Vec<Check>,
    /// From the worker's end until the counts were final.
    pub settle_secs: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub round: usize,
    pub workload: Workload,
    pub tracer: TracerKind,
    pub worker: WorkerResult,
    /// The tracer's CPU from the worker's start until it had processed everything; None for
    /// the baseline.
    pub cpu: Option<CpuUse>,
    pub peak_rss_kb: Option<u64>,
    pub linkprobe: Option<LinkprobeFigures>,
}

impl Measurement {
    pub fn rate(&self) -> f64 {
        self.worker.rate()
    }

    pub fn cpu_us_per_conn(&self) -> Option<f64> {
        let done = f64::from(self.worker.done.max(1));
        self.cpu.map(|c| c.net_ms() * 1000.0 / done)
    }

    pub fn records_per_conn(&self) -> Option<f64> {
        let done = self.worker.done.max(1) as f64;
        self.linkprobe.as_ref().map(|l| l.records as f64 / done)
    }

    pub fn counts_off(&self) -> Option<u64> {
        self.linkprobe
            .as_ref()
            .map(|l| nstat::counts_off(&l.checks))
    }
}

pub fn measure(
    ns: &Netns,
    round: usize,
    workload: Workload,
    tracer: TracerKind,
    count: u32,
    out_dir: &Path,
) -> Result<Measurement> {
    let running = Running::start(tracer, ns, out_dir)?;
    let pid = running.pid();
    let idle = idle_rate(pid)?;
    let metrics_before = running.daemon().map(Daemon::metrics).transpose()?;
    let nstat_before = ns.nstat()?;
    let cpu_before = CpuMark::now(pid);
    let worker = run_worker(ns, workload, count)?;
    let (linkprobe, cpu_after) = match (running.daemon(), &metrics_before) {
        (Some(d), Some(before)) => {
            let s = settle(d, ns, before, &nstat_before)?;
            (Some(s.figures), s.cpu_at_drained)
        }
        _ => {
            if tracer != TracerKind::None {
                thread::sleep(EXTERNAL_DRAIN);
            }
            (None, CpuMark::now(pid))
        }
    };
    let cpu = cpu_before
        .zip(cpu_after)
        .map(|(a, b)| CpuUse::between(a, b, idle));
    let peak_rss_kb = running.peak_rss_kb();
    running.stop()?;
    Ok(Measurement {
        round,
        workload,
        tracer,
        worker,
        cpu,
        peak_rss_kb,
        linkprobe,
    })
}

/// The growth of a family between two /metrics bodies.
pub fn family_delta(before: &str, after: &str, family: &str) -> u64 {
    let d = exposition::sum(after, family, &[]) - exposition::sum(before, family, &[]);
    d.max(0.0).round() as u64
}

/// What [`settle`] found.
pub struct Settled {
    pub figures: LinkprobeFigures,
    /// The daemon's CPU at the first poll that saw the final record count (the snapshot is
    /// published once a second, so at most about a second after the drain ended).
    pub cpu_at_drained: Option<CpuMark>,
}

/// Waits until the daemon has drained what the workload caused (records stopped growing over
/// a published snapshot) and its counts equal nstat's, or until they stop changing while
/// still off; then returns the figures.
pub fn settle(
    d: &Daemon,
    ns: &Netns,
    metrics_before: &str,
    nstat_before: &Nstat,
) -> Result<Settled> {
    let start = Instant::now();
    let mut last_records = None;
    let mut unchanged_since = Instant::now();
    let mut cpu_at_drained = None;
    loop {
        let cpu = CpuMark::now(d.pid());
        let body = d.metrics()?;
        let nstat_after = ns.nstat()?;
        let checks = nstat::checks(metrics_before, &body, nstat_before, &nstat_after);
        let records = family_delta(metrics_before, &body, RECORDS);
        if last_records != Some(records) {
            last_records = Some(records);
            unchanged_since = Instant::now();
            cpu_at_drained = cpu;
        }
        let unchanged = unchanged_since.elapsed();
        let exact = nstat::counts_off(&checks) == 0;
        if (exact && unchanged >= DRAINED)
            || unchanged >= GIVE_UP_UNCHANGED
            || start.elapsed() >= SETTLE_TIMEOUT
        {
            return Ok(Settled {
                figures: LinkprobeFigures {
                    records,
                    lost: family_delta(metrics_before, &body, LOST),
                    checks,
                    settle_secs: start.elapsed().as_secs_f64(),
                },
                cpu_at_drained,
            });
        }
        check_interrupted()?;
        thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(done: u32, cpu_ms: Option<f64>, records: Option<u64>) -> Measurement {
        Measurement {
            round: 1,
            workload: Workload::Conn,
            tracer: TracerKind::Linkprobe,
            worker: WorkerResult {
                done,
                secs: 2.0,
                unexpected: 0,
                first_unexpected: None,
            },
            cpu: cpu_ms.map(|gross_ms| CpuUse {
                gross_ms: gross_ms + 5.0,
                secs: 2.5,
                idle_ms_per_s: 2.0,
            }),
            peak_rss_kb: Some(1000),
            linkprobe: records.map(|records| LinkprobeFigures {
                records,
                lost: 0,
                checks: vec![Check {
                    name: "x",
                    linkprobe: 9,
                    nstat: 10,
                }],
                settle_secs: 1.0,
            }),
        }
    }

    #[test]
    fn per_connection_figures() {
        let x = m(1000, Some(20.0), Some(22_000));
        assert_eq!(x.rate(), 500.0);
        assert_eq!(x.cpu_us_per_conn(), Some(20.0));
        assert_eq!(x.records_per_conn(), Some(22.0));
        assert_eq!(x.counts_off(), Some(1));
        let none = m(1000, None, None);
        assert_eq!(none.cpu_us_per_conn(), None);
        assert_eq!(none.counts_off(), None);
    }

    #[test]
    fn idle_cpu_is_taken_off() {
        let c = CpuUse {
            gross_ms: 10.0,
            secs: 2.0,
            idle_ms_per_s: 3.0,
        };
        assert_eq!(c.net_ms(), 4.0);
        let busy_idle = CpuUse {
            idle_ms_per_s: 10.0,
            ..c
        };
        assert_eq!(busy_idle.net_ms(), 0.0);
    }

    #[test]
    fn family_delta_never_negative() {
        let a = "linkprobe_records_received_total{kind=\"a\"} 10\n";
        let b = "linkprobe_records_received_total{kind=\"a\"} 15\n\
                 linkprobe_records_received_total{kind=\"b\"} 5\n";
        assert_eq!(family_delta(a, b, RECORDS), 10);
        assert_eq!(family_delta(b, a, RECORDS), 0);
    }
}
