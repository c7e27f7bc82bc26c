//! From the rounds' measurements to one row per (workload, tracer): medians over rounds,
//! ratios against the baseline of the same round.
use super::{
    measure::Measurement,
    plan::{TracerKind, Workload},
};

/// Median; the mean of the two middle values for an even count; None when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub workload: Workload,
    pub tracer: TracerKind,
    pub rounds: usize,
    /// Median connections per second.
    pub rate: f64,
    /// Median over rounds of (rate / the baseline's rate in the same round).
    pub ratio: Option<f64>,
    /// Median tracer CPU per connection (less its idle CPU), µs.
    pub cpu_us_per_conn: Option<f64>,
    /// Median idle CPU of the tracer, ms per second.
    pub idle_ms_per_s: Option<f64>,
    /// Highest VmHWM of the tracer process over the rounds, kB.
    pub peak_rss_kb: Option<u64>,
    /// Median ring records per connection (linkprobe).
    pub records_per_conn: Option<f64>,
    /// Records lost over all rounds (linkprobe).
    pub lost: Option<u64>,
    /// linkprobe's total distance from nstat, one entry per round.
    pub counts_off: Vec<u64>,
}

/// One [`Summary`] per (workload, tracer) that has measurements, in the given orders.
pub fn summarize(
    all: &[Measurement],
    workloads: &[Workload],
    tracers: &[TracerKind],
) -> Vec<Summary> {
    let mut out = Vec::new();
    for &w in workloads {
        for &t in tracers {
            let ms: Vec<&Measurement> = all
                .iter()
                .filter(|m| m.workload == w && m.tracer == t)
                .collect();
            if ms.is_empty() {
                continue;
            }
            let ratios: Vec<f64> = ms
                .iter()
                .filter_map(|m| {
                    let base = all.iter().find(|b| {
                        b.round == m.round && b.workload == w && b.tracer == TracerKind::None
                    })?;
                    Some(m.rate() / base.rate())
                })
                .collect();
            let collect = |f: &dyn Fn(&Measurement) -> Option<f64>| -> Vec<f64> {
                ms.iter().filter_map(|m| f(m)).collect()
            };
            let lost: Vec<u64> = ms
                .iter()
                .filter_map(|m| m.linkprobe.as_ref().map(|l| l.lost))
                .collect();
            out.push(Summary {
                workload: w,
                tracer: t,
                rounds: ms.len(),
                rate: median(&collect(&|m| Some(m.rate()))).unwrap_or(0.0),
                ratio: median(&ratios),
                cpu_us_per_conn: median(&collect(&Measurement::cpu_us_per_conn)),
                idle_ms_per_s: median(&collect(&|m| m.cpu.map(|c| c.idle_ms_per_s))),
                peak_rss_kb: ms.iter().filter_map(|m| m.peak_rss_kb).max(),
                records_per_conn: median(&collect(&Measurement::records_per_conn)),
                lost: (!lost.is_empty()).then(|| lost.iter().sum()),
                counts_off: ms.iter().filter_map(|m| m.counts_off()).collect(),
            });
        }
    }
    out
}

/// The row of one (workload, tracer).
pub fn find(rows: &[Summary], w: Workload, t: TracerKind) -> Option<&Summary> {
    rows.iter().find(|r| r.workload == w && r.tracer == t)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::bench::{
        measure::{CpuUse, LinkprobeFigures},
        nstat::Check,
        workload::WorkerResult,
    };

    /// A measurement of `done` connections in one second.
    pub fn meas(
        round: usize,
        workload: Workload,
        tracer: TracerKind,
        rate: u32,
        off: u64,
    ) -> Measurement {
        let linkprobe = tracer == TracerKind::Linkprobe;
        Measurement {
            round,
            workload,
            tracer,
            worker: WorkerResult {
                done: rate,
                secs: 1.0,
                unexpected: 0,
                first_unexpected: None,
            },
            cpu: (tracer != TracerKind::None).then_some(CpuUse {
                gross_ms: f64::from(rate) / 100.0 + 1.0,
                secs: 1.0,
                idle_ms_per_s: 1.0,
            }),
            peak_rss_kb: (tracer != TracerKind::None).then_some(1024 * round as u64),
            linkprobe: linkprobe.then(|| LinkprobeFigures {
                records: u64::from(rate) * 22,
                lost: 1,
                checks: vec![Check {
                    name: "resets sent / TcpOutRsts",
                    linkprobe: 100 + off,
                    nstat: 100,
                }],
                settle_secs: 1.0,
            }),
        }
    }

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn ratios_are_per_round_then_median() {
        let w = Workload::Conn;
        let ms = vec![
            meas(1, w, TracerKind::None, 1000, 0),
            meas(1, w, TracerKind::Linkprobe, 900, 0),
            meas(2, w, TracerKind::None, 2000, 0),
            meas(2, w, TracerKind::Linkprobe, 1000, 3),
            meas(3, w, TracerKind::None, 1000, 0),
            meas(3, w, TracerKind::Linkprobe, 800, 0),
        ];
        let rows = summarize(&ms, &[w], &[TracerKind::None, TracerKind::Linkprobe]);
        assert_eq!(rows.len(), 2);
        let base = find(&rows, w, TracerKind::None).unwrap();
        assert_eq!(base.ratio, Some(1.0));
        assert_eq!(base.rate, 1000.0);
        assert_eq!(base.cpu_us_per_conn, None);
        let lp = find(&rows, w, TracerKind::Linkprobe).unwrap();
        // Per round 0.9, 0.5, 0.8: median 0.8 (not 900/1000 of the medians).
        assert_eq!(lp.ratio, Some(0.8));
        assert_eq!(lp.rate, 900.0);
        assert_eq!(lp.cpu_us_per_conn, Some(10.0));
        assert_eq!(lp.idle_ms_per_s, Some(1.0));
        assert_eq!(lp.peak_rss_kb, Some(3072));
        assert_eq!(lp.records_per_conn, Some(22.0));
        assert_eq!(lp.lost, Some(3));
        assert_eq!(lp.counts_off, vec![0, 3, 0]);
        assert!(find(&rows, Workload::Abort, TracerKind::None).is_none());
    }
}
