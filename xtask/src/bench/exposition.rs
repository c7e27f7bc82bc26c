//! Reading the daemon's `/metrics` (Prometheus text format) from outside: the bench treats
//! linkprobe as a black box, so it only relies on family and label names documented in the
//! README, and sums over every label it does not filter on (kinds, peers, `peer="lost"`), so
//! its figures survive the kernel side renaming or merging record kinds.
use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Result};

/// `GET /metrics` from the daemon's exporter: the round trip (connect to the last byte) and
/// the body. Anything but a 200 is an error.
pub fn fetch(addr: SocketAddr) -> Result<(Duration, String)> {
    let (elapsed, r) = testkit::http::get_timed(addr, "/metrics")?;
    if r.status != 200 {
        bail!(
            "GET /metrics from {addr} answered {}: {:.500}",
            r.status,
            r.text()
        );
    }
    Ok((elapsed, r.text()))
}

/// One sample line: `name{label="value",…} value`.
#[derive(Debug, PartialEq)]
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

/// Parses one non-comment line; None for comments, blanks and lines it cannot read.
fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, rest) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (&line[..close + 1], &line[close + 1..])
        }
        None => line.split_once(' ')?,
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, body)) => (name, labels(body.strip_suffix('}')?)?),
        None => (series, Vec::new()),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `a="x",b="y\"z"` → pairs, with `\"`, `\\` and `\n` unescaped.
fn labels(body: &str) -> Option<Vec<(&str, String)>> {
    let mut out = Vec::new();
    let mut rest = body.trim_start_matches(',');
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.push((name.trim(), value));
        rest = after[end + 1..].trim_start_matches(',').trim_start();
    }
    Some(out)
}

/// A label filter: the label must have one of these values.
pub type LabelIn<'a> = (&'a str, &'a [&'a str]);

/// Sum of every series of `family` whose labels pass every filter (0 when there is none).
pub fn sum(body: &str, family: &str, filters: &[LabelIn<'_>]) -> f64 {
    body.lines()
        .filter_map(sample)
        .filter(|s| s.name == family)
        .filter(|s| {
            filters.iter().all(|(label, allowed)| {
                s.labels
                    .iter()
                    .any(|(k, v)| k == label && allowed.contains(&v.as_str()))
            })
        })
        .map(|s| s.value)
        .sum()
}

/// Whether the body has a series of `family` (e.g. the first snapshot was published).
pub fn has(body: &str, family: &str) -> bool {
    body.lines().filter_map(sample).any(|s| s.name == family)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"# HELP linkprobe_tcp_resets_total TCP RSTs
# TYPE linkprobe_tcp_resets_total counter
linkprobe_tcp_resets_total{direction="sent",reason="NO_SOCKET",peer="127.0.0.1",local_port="9"} 30
linkprobe_tcp_resets_total{direction="sent",reason="lost",peer="lost",local_port="lost"} 2
linkprobe_tcp_resets_total{direction="received",reason="unknown",peer="127.0.0.1:9",local_port="ephemeral"} 30
linkprobe_records_received_total{kind="connect"} 100
linkprobe_records_received_total{kind="flow_end"} 1.5e2
linkprobe_flows_tracked 65536
weird_label{a="x\"y,z",b="\\"} 7 1712345678000
"#;

    #[test]
    fn sums_a_family_over_unfiltered_labels() {
        assert_eq!(sum(BODY, "linkprobe_records_received_total", &[]), 250.0);
        assert_eq!(sum(BODY, "linkprobe_flows_tracked", &[]), 65536.0);
        assert_eq!(sum(BODY, "linkprobe_missing_total", &[]), 0.0);
    }

    #[test]
    fn filters_by_label_values_and_counts_lost() {
        let sent = sum(
            BODY,
            "linkprobe_tcp_resets_total",
            &[("direction", &["sent"])],
        );
        assert_eq!(sent, 32.0);
        let either = sum(
            BODY,
            "linkprobe_tcp_resets_total",
            &[("direction", &["sent", "received"]), ("peer", &["lost"])],
        );
        assert_eq!(either, 2.0);
    }

    #[test]
    fn prefix_of_another_family_does_not_match() {
        assert_eq!(sum(BODY, "linkprobe_tcp_resets", &[]), 0.0);
        assert!(has(BODY, "linkprobe_flows_tracked"));
        assert!(!has(BODY, "linkprobe_flows"));
    }

    #[test]
    fn escaped_label_values_and_timestamps() {
        assert_eq!(sum(BODY, "weird_label", &[("a", &["x\"y,z"])]), 7.0);
        assert_eq!(sum(BODY, "weird_label", &[("b", &["\\"])]), 7.0);
    }
}
