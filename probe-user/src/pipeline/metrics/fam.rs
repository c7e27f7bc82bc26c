//! Building one metric family: its series, labels and values (shared by `families` and
//! `envoy`).
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use super::series::{Hist, BUCKETS};

/// One family under construction.
pub struct Fam(MetricFamily);

impl Fam {
    pub fn new(name: &str, help: &str, ty: MetricType) -> Fam {
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_string());
        mf.set_help(help.to_string());
        mf.set_field_type(ty);
        Fam(mf)
    }

    fn push(&mut self, labels: &[(&str, String)], fill: impl FnOnce(&mut Metric)) {
        let mut m = Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name((*k).to_string());
                    l.set_value(v.clone());
                    l
                })
                .collect(),
        );
        fill(&mut m);
        self.0.mut_metric().push(m);
    }

    pub fn value(&mut self, labels: &[(&str, String)], v: f64) {
        match self.0.get_field_type() {
            MetricType::GAUGE => self.push(labels, |m| {
                let mut g = Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }),
            _ => self.push(labels, |m| {
                let mut c = Counter::default();
                c.set_value(v);
                m.set_counter(c);
            }),
        }
    }

    pub fn hist(&mut self, labels: &[(&str, String)], h: &Hist) {
        self.push(labels, |m| {
            let mut out = Histogram::default();
            let mut cumulative = 0;
            let buckets = BUCKETS
                .iter()
                .zip(h.counts)
                .map(|(le, n)| {
                    cumulative += n;
                    let mut b = Bucket::default();
                    b.set_upper_bound(*le);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect();
            out.set_bucket(buckets);
            out.set_sample_count(h.count());
            out.set_sample_sum(h.sum);
            m.set_histogram(out);
        });
    }

    /// The family, or nothing when it has no series (the text format needs one).
    pub fn done(self, out: &mut Vec<MetricFamily>) {
        if !self.0.get_metric().is_empty() {
            out.push(self.0);
        }
    }
}

pub fn counter(name: &str, help: &str) -> Fam {
    Fam::new(name, help, MetricType::COUNTER)
}

pub fn gauge(name: &str, help: &str) -> Fam {
    Fam::new(name, help, MetricType::GAUGE)
}

pub fn s(v: impl ToString) -> String {
    v.to_string()
}

/// A family of one unlabelled series.
pub fn single(out: &mut Vec<MetricFamily>, mut f: Fam, v: f64) {
    f.value(&[], v);
    f.done(out);
}
