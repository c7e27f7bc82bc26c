//! The checks of linkprobe's counts against the bench namespace's own TCP counters (`nstat`,
//! read by [`testkit::netns::Netns::nstat`]).
use testkit::netns::{delta, Nstat};

use super::exposition::{self, LabelIn};

/// One of linkprobe's counts next to the kernel's own.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub name: &'static str,
    pub linkprobe: u64,
    pub nstat: u64,
}

impl Check {
    pub fn off(&self) -> u64 {
        self.linkprobe.abs_diff(self.nstat)
    }
}

/// A linkprobe family (summed under label filters) and the nstat counter it must equal.
struct Pair {
    name: &'static str,
    family: &'static str,
    filters: &'static [LabelIn<'static>],
    nstat: &'static str,
}

/// The counts the exporter tests hold exact, as documented in the README's metrics table.
const PAIRS: &[Pair] = &[
    Pair {
        name: "resets sent / TcpOutRsts",
        family: "linkprobe_tcp_resets_total",
        filters: &[("direction", &["sent"])],
        nstat: "TcpOutRsts",
    },
    Pair {
        name: "client connections / TcpActiveOpens",
        family: "linkprobe_tcp_connections_total",
        filters: &[("role", &["client"])],
        nstat: "TcpActiveOpens",
    },
    Pair {
        name: "server connections / TcpPassiveOpens",
        family: "linkprobe_tcp_connections_total",
        filters: &[("role", &["server"])],
        nstat: "TcpPassiveOpens",
    },
    Pair {
        name: "connect failures / TcpAttemptFails",
        family: "linkprobe_tcp_connect_failures_total",
        filters: &[("cause", &["refused", "timeout"])],
        nstat: "TcpAttemptFails",
    },
    Pair {
        name: "reset connections / TcpEstabResets",
        family: "linkprobe_tcp_connect_failures_total",
        filters: &[("cause", &["reset"])],
        nstat: "TcpEstabResets",
    },
];

/// linkprobe's counts between two /metrics bodies against nstat's between two snapshots.
pub fn checks(
    metrics_before: &str,
    metrics_after: &str,
    nstat_before: &Nstat,
    nstat_after: &Nstat,
) -> Vec<Check> {
    PAIRS
        .iter()
        .map(|p| {
            let count = |body| exposition::sum(body, p.family, p.filters);
            let linkprobe = (count(metrics_after) - count(metrics_before)).max(0.0);
            Check {
                name: p.name,
                linkprobe: linkprobe.round() as u64,
                nstat: delta(nstat_before, nstat_after, p.nstat),
            }
        })
        .collect()
}

/// The total distance of linkprobe's counts from the kernel's.
pub fn counts_off(checks: &[Check]) -> u64 {
    checks.iter().map(Check::off).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The namespace's counters after the workload (nstat's parser is testkit's, tested there).
    fn nstat_after() -> Nstat {
        [
            ("TcpActiveOpens", 120),
            ("TcpPassiveOpens", 100),
            ("TcpAttemptFails", 20),
            ("TcpOutRsts", 20),
            ("TcpEstabResets", 0),
            ("TcpExtTW", 100),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into()
    }

    #[test]
    fn checks_compare_deltas_on_both_sides() {
        let before_metrics = "linkprobe_tcp_connections_total{role=\"client\",peer=\"a\"} 5\n";
        let after_metrics = "linkprobe_tcp_connections_total{role=\"client\",peer=\"a\"} 105\n\
             linkprobe_tcp_connections_total{role=\"client\",peer=\"lost\"} 20\n\
             linkprobe_tcp_connections_total{role=\"server\",peer=\"a\"} 100\n\
             linkprobe_tcp_resets_total{direction=\"sent\",peer=\"b\"} 19\n\
             linkprobe_tcp_resets_total{direction=\"received\",peer=\"b\"} 20\n\
             linkprobe_tcp_connect_failures_total{cause=\"refused\",role=\"client\",peer=\"b\"} 20\n";
        let c = checks(before_metrics, after_metrics, &Nstat::new(), &nstat_after());
        let by_name = |n: &str| c.iter().find(|c| c.name.starts_with(n)).unwrap().clone();
        assert_eq!(by_name("client").linkprobe, 120);
        assert_eq!(by_name("client").off(), 0);
        assert_eq!(by_name("server").off(), 0);
        assert_eq!(by_name("resets sent").off(), 1);
        assert_eq!(by_name("connect failures").off(), 0);
        assert_eq!(by_name("reset connections").off(), 0);
        assert_eq!(counts_off(&c), 1);
    }
}
