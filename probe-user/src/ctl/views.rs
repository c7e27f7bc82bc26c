//! Text views of `status`, `anomalies`, `top` and `watch` events.
use std::fmt::Write as _;

use crate::{
    api::proto::{AnomalyRecord, EventRecord, StatusReport, TopReport},
    ctl::table::{human_ns, percent, plain, Paint, Table, Tone},
};

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
    let _ = writeln!(
        out,
        "events: {kernel} counted in the kernel, {decoded} decoded, {} lost (ring full), {} decode errors",
        if lost > 0 { paint.red(&lost.to_string()) } else { "0".to_owned() },
        s.decode_errors
    );
    let kinds: Vec<String> = s
        .records
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if !kinds.is_empty() {
        let _ = writeln!(out, "  by kind: {}", kinds.join(", "));
    }
    let fill = if s.flows.max == 0 {
        0.0
    } else {
        s.flows.tracked as f64 / s.flows.max as f64
    };
    let _ = writeln!(
        out,
        "flows: {} of {} tracked ({}), {} evicted, {} expired",
        s.flows.tracked,
        s.flows.max,
        percent(fill),
        s.flows.evicted,
        s.flows.expired
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
        "api: {} connections, {} now, {} rejected, {} bad requests, {} busy, {} items lost by slow watchers",
        a.connections, a.clients_now, a.rejected_connections, a.bad_requests, a.busy, a.watch_lost
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

pub fn anomalies_table(
    active: &[AnomalyRecord],
    recent: &[AnomalyRecord],
    now_ns: u64,
    wide: bool,
    paint: Paint,
) -> String {
    let mut header = vec![
        "ID", "KIND", "SCOPE", "STATUS", "STARTED", "ENDED", "PEAK", "EVIDENCE", "HINT",
    ];
    if wide {
        header.push("DETAIL");
    }
    let mut t = Table::new(header);
    for a in active.iter().chain(recent) {
        let evidence = if wide || a.evidence.len() <= 3 {
            a.evidence
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        } else {
            format!(
                "{},… ({})",
                a.evidence[..3]
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                a.evidence.len()
            )
        };
        let mut row = vec![
            plain(a.id.to_string()),
            plain(a.kind.clone()),
            plain(a.scope.clone()),
            (
                a.change.clone(),
                if a.end_ns.is_none() {
                    Tone::Bad
                } else {
                    Tone::Plain
                },
            ),
            plain(format!(
                "{} ago",
                human_ns(now_ns.saturating_sub(a.start_ns))
            )),
            plain(a.end_ns.map_or("-".to_owned(), |e| {
                format!("{} ago", human_ns(now_ns.saturating_sub(e)))
            })),
            plain(format!("{:.1}", a.peak_rate)),
            plain(if evidence.is_empty() {
                "-".to_owned()
            } else {
                evidence
            }),
            plain(a.hint.clone()),
        ];
        if wide {
            row.push(plain(a.detail.clone()));
        }
        t.row(row);
    }
    if active.is_empty() && recent.is_empty() {
        return "no anomalies (active or recently cleared)\n".to_owned();
    }
    t.render(paint)
}

/// One anomaly change for `anomalies --watch`.
pub fn anomaly_line(a: &AnomalyRecord, paint: Paint) -> String {
    let change = match a.change.as_str() {
        "raised" => paint.red("raised"),
        "cleared" => paint.green("cleared"),
        other => paint.yellow(other),
    };
    format!(
        "anomaly #{} {} {} on {}: {} (peak {:.2}) — {}",
        a.id, change, a.kind, a.scope, a.detail, a.peak_rate, a.hint
    )
}

pub fn top_table(r: &TopReport, wide: bool, paint: Paint) -> String {
    let mut header = vec!["SCOPE", "CONN", "RST/S", "FAIL%", "RETRANS%"];
    if wide {
        header.extend(["RSTS", "FAILURES", "DATA_SEGS", "RETRANSMITS"]);
    }
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
        t.row(cells);
    }
    format!(
        "last {} s, {} scopes tracked ({} evicted)\n{}",
        r.window_secs,
        r.scopes_tracked,
        r.scopes_evicted,
        t.render(paint)
    )
}

/// One live event, one line.
pub fn event_line(e: &EventRecord, paint: Paint) -> String {
    let mut extra = Vec::new();
    match (&e.old_state, &e.new_state) {
        (Some(a), Some(b)) => extra.push(format!("{a}->{b}")),
        _ => {
            if let Some(s) = &e.state {
                extra.push(format!("state={s}"));
            }
        }
    }
    if let Some(r) = &e.reason {
        extra.push(format!("reason={r}"));
    }
    if e.no_socket == Some(true) {
        extra.push("no_socket".to_owned());
    }
    if let Some(v) = e.sk_err.filter(|v| *v != 0) {
        extra.push(format!("sk_err={v}"));
    }
    if let Some(f) = &e.flow {
        let retrans = f.syn_retrans + f.data_retrans;
        if retrans + f.rtos > 0 {
            extra.push(format!("retrans={retrans} rtos={}", f.rtos));
        }
        if f.rst_sent + f.rst_received > 0 {
            extra.push(format!("rst={}↑{}↓", f.rst_sent, f.rst_received));
        }
    }
    if let Some(v) = e.stats.as_ref().map(|s| s.srtt_us).filter(|v| *v > 0) {
        extra.push(format!("srtt={v}us"));
    }
    if let (Some(s), Some(c)) = (&e.repeat_scope, e.repeat_count) {
        extra.push(format!("repeat={s} count={c}"));
    }
    if let (Some(p), Some(c)) = (e.pid, &e.comm) {
        extra.push(format!("{c}/{p}"));
    }
    let kind = format!("{:<20}", e.kind);
    let kind = if e.kind.starts_with("rst") || e.kind == "repeat_rst" {
        paint.red(&kind)
    } else if e.kind.contains("retrans") || e.kind == "rto" {
        paint.yellow(&kind)
    } else {
        kind
    };
    format!(
        "{:>14.6} {} cookie={:<8} {} -> {} {}",
        e.ts_ns as f64 / 1e9,
        kind,
        e.cookie.map_or("-".to_owned(), |c| c.to_string()),
        e.local,
        e.remote,
        extra.join(" ")
    )
    .trim_end()
    .to_owned()
}
