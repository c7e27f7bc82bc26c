//! Text views of the two reports only the CLI shows: `status` and `top`.
use std::fmt::Write as _;

use crate::{
    api::proto::{StatusReport, TopKey, TopReport},
    render::table::{human_ns, percent, plain, Paint, Table, Tone},
    untrusted::escape_str,
};

/// `[envoy]`: each access-log path with its counts, and what the join made of the requests.
fn envoy_text(out: &mut String, e: &crate::api::proto::EnvoyRow, paint: Paint) {
    let _ = writeln!(
        out,
        "envoy access logs: {} requests taken, {} dropped (queue full), {} files over the cap",
        e.received, e.queue_full, e.files_over_cap
    );
    let n = |k: &str| e.results.get(k).copied().unwrap_or(0);
    let reasons: Vec<String> = e
        .unmatched
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{} {v}", escape_str(k)))
        .collect();
    let _ = writeln!(
        out,
        "  joined: {} matched, {} approximate, {} unmatched{}; {} requests kept on {} flows",
        n("matched"),
        n("approximate"),
        n("unmatched"),
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        },
        e.kept,
        e.kept_flows
    );
    let mut t = Table::new(vec![
        "PATH",
        "STATE",
        "FILES",
        "LINES",
        "REQUESTS",
        "MALFORMED",
        "OVERLONG",
        "OTHER",
        "ROTATED",
        "TRUNCATED",
    ]);
    for src in &e.sources {
        t.row(vec![
            plain(escape_str(&src.path).into_owned()),
            (
                escape_str(&src.state).into_owned(),
                if src.ok { Tone::Good } else { Tone::Bad },
            ),
            plain(src.files.to_string()),
            plain(src.lines.to_string()),
            plain(src.requests.to_string()),
            (
                src.malformed.to_string(),
                if src.malformed > 0 {
                    Tone::Warn
                } else {
                    Tone::Plain
                },
            ),
            plain(src.overlong.to_string()),
            plain(src.other.to_string()),
            plain(src.rotations.to_string()),
            plain(src.truncations.to_string()),
        ]);
    }
    for l in t.render(paint).lines() {
        let _ = writeln!(out, "  {}", l.trim_end());
    }
    for src in e.sources.iter().filter(|s| s.last_error.is_some()) {
        let _ = writeln!(
            out,
            "  last error of {}: {}",
            escape_str(&src.path),
            escape_str(src.last_error.as_deref().unwrap_or_default())
        );
    }
}

pub fn status_text(s: &StatusReport, paint: Paint) -> String {
    let mut out = String::new();
    let attached = s.probes.iter().filter(|p| p.attached).count();
    let serving = s.probes.iter().filter(|p| p.attached || p.skipped).count();
    let _ = writeln!(
        out,
        "{} {} (pid {}), kernel {}, up {}",
        paint.bold("linkprobe"),
        s.version,
        s.pid,
        s.kernel,
        human_ns(s.uptime_secs.saturating_mul(1_000_000_000))
    );
    let skipped = serving - attached;
    let probes = if skipped > 0 {
        format!(
            "{attached} of {} attached, {skipped} not needed on this kernel",
            s.probes.len()
        )
    } else {
        format!("{attached} of {} attached", s.probes.len())
    };
    let _ = writeln!(
        out,
        "probes: {}",
        if serving == s.probes.len() {
            paint.green(&probes)
        } else {
            paint.yellow(&format!("{probes} (degraded)"))
        }
    );
    let mut t = Table::new(vec!["PROBE", "HOOK", "HOW", "STATE", "NEEDS KERNEL", "WHY"]);
    for p in &s.probes {
        t.row(vec![
            plain(p.name.clone()),
            plain(p.hook.clone()),
            plain(p.how.clone()),
            if p.attached {
                ("attached".to_owned(), Tone::Good)
            } else if p.skipped {
                ("not needed".to_owned(), Tone::Good)
            } else {
                ("degraded".to_owned(), Tone::Bad)
            },
            plain(p.requires.clone()),
            plain(p.reason.clone().unwrap_or_default()),
        ]);
    }
    for l in t.render(paint).lines() {
        let _ = writeln!(out, "  {}", l.trim_end());
    }
    let decoded: u64 = s.records.values().sum();
    let kernel: u64 = s.kernel_events.values().sum();
    let lost: u64 = s.kernel_lost.values().sum();
    // The kernel counts every hook hit; it sends records only for what matters (see README,
    // "What the kernel sends"): the gap is by design, not a loss.
    let unsent = kernel.saturating_sub(decoded + lost);
    let _ = writeln!(
        out,
        "events: {kernel} counted in the kernel, {decoded} decoded, {} lost (ring full), {} decode errors, {} output lines dropped (stdout slow)",
        if lost > 0 { paint.red(&lost.to_string()) } else { "0".to_owned() },
        s.decode_errors,
        s.output_dropped_lines
    );
    if unsent > 0 {
        let _ = writeln!(
            out,
            "  {unsent} counted but not sent as records by design: RTT samples and routine hook \
             hits (state changes, RTOs) of flows without --detail reach only the counters and \
             the flow's state (not a loss: lost records are counted above)"
        );
    }
    let kinds: Vec<String> = s
        .records
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if !kinds.is_empty() {
        let _ = writeln!(out, "  by kind: {}", kinds.join(", "));
    }
    let p = &s.pods;
    if p.mode == "off" || p.mode.is_empty() {
        let _ = writeln!(out, "pods: attribution off ([kubernetes] pods = \"off\")");
    } else {
        let source = match p.source.as_str() {
            "none" => paint.yellow("none"),
            other => paint.green(other),
        };
        let _ = writeln!(
            out,
            "pods: source {source} ({}), mode {}, {} pods known, {} source errors, {} over the cap",
            escape_str(&p.state),
            p.mode,
            p.pods,
            p.source_errors,
            p.pods_over_cap
        );
        if let Some(last) = &p.source_last_error {
            let _ = writeln!(out, "  last source error: {}", escape_str(last));
        }
        if let Some(why) = &p.fallback {
            let _ = writeln!(
                out,
                "  the Kubernetes API source did not start: {}",
                escape_str(why)
            );
        }
        let _ = writeln!(
            out,
            "  cgroups: {} paths cached, {} misses, {} tree scans ({} refused: too soon), {} lookups of removed cgroups, last scan {} µs, {} entries skipped",
            p.cgroups_cached,
            p.cgroup_misses,
            p.cgroup_rescans,
            p.cgroup_rescans_refused,
            p.cgroups_gone,
            p.cgroup_last_scan_us,
            p.cgroups_skipped
        );
    }
    if let Some(e) = &s.envoy {
        envoy_text(&mut out, e, paint);
    }
    let fill = if s.flows.max == 0 {
        0.0
    } else {
        s.flows.tracked as f64 / s.flows.max as f64
    };
    let _ = writeln!(
        out,
        "flows: {} of {} tracked ({}), {} evicted, {} expired, {} expired idle while open",
        s.flows.tracked,
        s.flows.max,
        percent(fill),
        s.flows.evicted,
        s.flows.expired,
        s.flows.expired_open
    );
    let raised: Vec<String> = s
        .anomalies
        .raised
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let active = s.anomalies.active.to_string();
    let _ = writeln!(
        out,
        "anomalies: {} active; raised since start: {}",
        if s.anomalies.active > 0 {
            paint.red(&active)
        } else {
            active
        },
        if raised.is_empty() {
            "none".to_owned()
        } else {
            raised.join(", ")
        }
    );
    let a = &s.api;
    let _ = writeln!(
        out,
        "api: {} connections, {} now, {} rejected ({} over the per-uid cap), {} bad requests, {} busy, {} items lost by slow watchers",
        a.connections,
        a.clients_now,
        a.rejected_connections,
        a.rejected_per_uid,
        a.bad_requests,
        a.busy,
        a.watch_lost
    );
    let _ = writeln!(out, "command line: {}", s.command_line.join(" "));
    let _ = writeln!(out, "config in effect:");
    match toml::to_string(&s.config) {
        Ok(text) => {
            for l in text.lines() {
                let _ = writeln!(out, "{}", format!("  {l}").trim_end());
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  (cannot render: {e})");
        }
    }
    out
}

pub fn top_table(r: &TopReport, by: TopKey, wide: bool, paint: Paint) -> String {
    let mut header = vec!["SCOPE", "CONN", "RST/S", "FAIL%", "RETRANS%"];
    if wide {
        header.extend(["RSTS", "FAILURES", "DATA_SEGS", "RETRANSMITS"]);
    }
    header.push("PROCESS");
    let mut t = Table::new(header);
    for row in &r.rows {
        let tone = |v: f64| if v > 0.0 { Tone::Bad } else { Tone::Plain };
        let mut cells = vec![
            plain(row.scope.clone()),
            plain(row.connections.to_string()),
            (format!("{:.1}", row.rst_per_sec), tone(row.rst_per_sec)),
            (percent(row.failure_rate), tone(row.failure_rate)),
            (percent(row.retransmit_rate), tone(row.retransmit_rate)),
        ];
        if wide {
            cells.extend([
                plain(row.rsts.to_string()),
                plain(row.failures.to_string()),
                plain(row.data_segments.to_string()),
                plain(row.retransmits.to_string()),
            ]);
        }
        cells.push(plain(row.process.as_deref().unwrap_or("-")));
        t.row(cells);
    }
    let mut text = format!(
        "last {} s, {} scopes tracked ({} evicted)\n{}",
        r.window_secs,
        r.scopes_tracked,
        r.scopes_evicted,
        t.render(paint)
    );
    if r.rows.is_empty() {
        // Rows are only scopes with some of what they are ranked by.
        let what = match by {
            TopKey::Rst => "RSTs",
            TopKey::Failure => "failed connects",
            TopKey::Retrans => "retransmits",
        };
        text.push_str(&format!(
            "(0 of {} scopes had {what} in the last {} s)\n",
            r.scopes_tracked, r.window_secs
        ));
    }
    text
}
