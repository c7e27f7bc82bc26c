//! The `[envoy]` families: the access-log reader and the join (`pipeline::requests`).
use prometheus::proto::MetricFamily;

use super::fam::{counter, gauge, s, single};

/// `[envoy]`: the access-log reader and the join. Labels are bounded: `path` by the config
/// (at most 64), `result` and `reason` by fixed sets.
pub(super) fn families(e: &crate::pipeline::requests::EnvoyStats, out: &mut Vec<MetricFamily>) {
    let mut up = gauge(
        "linkprobe_envoy_log_source_up",
        "1 while an [envoy] path exists and every file under it could be read, else 0 \
         (missing or unreadable: see linkprobe status).",
    );
    let mut lines = counter(
        "linkprobe_envoy_log_lines_total",
        "Access-log lines read per [envoy] path: request (parsed), malformed (skipped), \
         overlong (past envoy.max_line_bytes, skipped), other (a container's other output).",
    );
    for src in &e.reader.sources {
        up.value(&[("path", src.path.clone())], f64::from(u8::from(src.ok)));
        for (result, v) in [
            ("request", src.requests),
            ("malformed", src.malformed),
            ("overlong", src.overlong),
            ("other", src.other),
        ] {
            lines.value(
                &[("path", src.path.clone()), ("result", s(result))],
                v as f64,
            );
        }
    }
    up.done(out);
    lines.done(out);
    single(
        out,
        counter(
            "linkprobe_envoy_requests_dropped_total",
            "Parsed requests the reader's full queue did not take (envoy.queue_len).",
        ),
        e.reader.queue_full as f64,
    );
    let mut f = counter(
        "linkprobe_envoy_requests_total",
        "Access-log requests joined to flows: matched (by the upstream 4-tuple, or the \
         downstream pair when there is no upstream), approximate (by upstream_host and time \
         only: UF lines without a local address), unmatched.",
    );
    for (result, v) in &e.results {
        f.value(&[("result", s(result))], *v as f64);
    }
    f.done(out);
    let mut f = counter(
        "linkprobe_envoy_unmatched_requests_total",
        "Requests that matched no flow, by reason (no_address, no_flow, outside_window, \
         evicted, expired, other_netns).",
    );
    for (reason, v) in &e.unmatched {
        f.value(&[("reason", s(reason))], *v as f64);
    }
    f.done(out);
    let mut f = counter(
        "linkprobe_envoy_failures_total",
        "Requests with Envoy response flags, by flag (documented flags, else other) and how \
         the flow behind the request ended (close cause, open, or unmatched).",
    );
    for ((flag, cause), v) in &e.failures {
        f.value(&[("flag", s(flag)), ("close_cause", s(cause))], *v as f64);
    }
    f.done(out);
    single(
        out,
        counter(
            "linkprobe_envoy_requests_received_total",
            "Parsed requests the event loop took from the reader.",
        ),
        e.received as f64,
    );
}
