//! `linkprobe probes`: can linkprobe run on this kernel? Loads and attaches every probe the way
//! the daemon does, prints the probe table (how each probe hooks in, or why it is off), the
//! fields each tracepoint has here and the BTF notes, then detaches and exits. Data-driven from
//! [`loader::load`]'s [`Loaded`](crate::kernel::loader::Loaded): nothing here decides what attaches.
use std::path::{Path, PathBuf};

use probe_common::{DetailFilter, RepeatRstConfig, Tuning};
use serde::Serialize;

use crate::{
    host::mounts,
    host::preflight,
    host::scope,
    kernel::backups::BackupMode,
    kernel::btf::{self, Btf},
    kernel::loader::{self, LoadOptions},
    kernel::probes::{Hook, ProbeStatus},
    kernel::tracefs::{self, Tracepoint},
};

/// The smallest ring the kernel accepts: nothing is read from it.
const RING_BYTES: u32 = 4096;
/// The smallest fallback flow-state map (nothing is tracked).
const FALLBACK_FLOWS: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProbesError {
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
}

/// How a probe hooks in, as the kernel sees it.
pub fn hook_kind(hook: Hook) -> &'static str {
    match hook {
        Hook::SockOps => "sock_ops",
        Hook::BtfTracepoint(_) => "tp_btf",
        Hook::IterFlows => "iter",
    }
}

#[derive(Debug, Serialize)]
pub struct ProbeRow {
    pub name: &'static str,
    /// `tp_btf`, `sock_ops`, `iter`.
    pub hook: &'static str,
    /// Where it attaches: `cgroup /sys/fs/cgroup`, `tp_btf tcp_send_reset`, …
    pub target: String,
    /// How it runs here: `tp_btf, socket storage`, `tp_btf, LRU map`, `sock_ops, …`.
    pub how: String,
    pub attached: bool,
    /// Not attached because this kernel does not need it (`reason` says why).
    pub skipped: bool,
    /// Why it is off or not needed (None when attached).
    pub reason: Option<String>,
    pub requires: &'static str,
}

#[derive(Debug, Serialize)]
pub struct TracepointRow {
    /// `tcp:tcp_send_reset`.
    pub tracepoint: String,
    pub present: bool,
    /// Record fields after the common header, in record order.
    pub fields: Vec<String>,
    /// Why the format could not be read, or why its layout is unusable.
    pub error: Option<String>,
}

/// Everything `linkprobe probes` reports.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(rename = "type")]
    pub record: &'static str,
    pub kernel: String,
    /// Whether linkprobe can run here (at least one probe attached).
    pub ok: bool,
    pub attached: usize,
    pub total: usize,
    pub probes: Vec<ProbeRow>,
    pub tracepoints: Vec<TracepointRow>,
    pub btf_notes: Vec<String>,
    /// Where flow state lives here (`socket storage`, `LRU map`), and why not socket storage.
    pub flow_store: Option<String>,
    pub flow_store_note: Option<String>,
    /// What this kernel's tracepoints cannot show, although their probes attach.
    pub degraded: Vec<String>,
    /// The backup programs: which probes have one, or why none can.
    pub backups: Option<String>,
    /// Why loading failed as a whole (no probe rows then).
    pub error: Option<String>,
}

fn probe_row(p: &ProbeStatus) -> ProbeRow {
    ProbeRow {
        name: p.spec.program,
        hook: hook_kind(p.spec.hook),
        target: p.target.clone(),
        how: p.how.clone(),
        attached: p.state.is_attached(),
        skipped: p.state.is_skipped(),
        reason: p.state.why().map(str::to_owned),
        requires: p.spec.requires,
    }
}

fn tracepoint_row(root: &Path, tp: Tracepoint) -> TracepointRow {
    let tracepoint = tp.to_string();
    match tracefs::read_format(root, tp) {
        Ok(format) => TracepointRow {
            tracepoint,
            present: true,
            fields: format
                .fields
                .iter()
                .filter(|f| !f.name.starts_with("common_"))
                .map(|f| f.name.clone())
                .collect(),
            error: tracefs::resolve_layout(tp, &format)
                .err()
                .map(|e| e.to_string()),
        },
        Err(e) => TracepointRow {
            tracepoint,
            present: !matches!(e, tracefs::FormatError::MissingTracepoint { .. }),
            fields: Vec::new(),
            error: Some(e.to_string()),
        },
    }
}

/// Gaps the tracepoint formats reveal. Before 6.10 `tcp_send_reset` has no `reason` field,
/// and the kernel only fires it for RSTs sent on behalf of a socket (6.10 made it fire for
/// every RST, with a reason): seen in the kernel matrix, where refused connects on 6.1 give
/// TcpOutRsts but no `rst_sent` record.
fn degradations(tracepoints: &[TracepointRow]) -> Vec<String> {
    let send_reset = Tracepoint::RstSent.to_string();
    tracepoints
        .iter()
        .filter(|t| t.tracepoint == send_reset && t.present && !t.fields.is_empty())
        .filter(|t| !t.fields.iter().any(|f| f == "reason"))
        .map(|_| {
            "lp_rst_sent: this kernel (< 6.10) traces only RSTs sent from a socket: RSTs \
             answering a closed port (refused connects) are not seen, and sent RSTs carry no \
             reason"
                .to_owned()
        })
        .collect()
}

/// BTF notes without a loaded object, for when loading failed as a whole.
fn btf_notes_alone() -> Vec<String> {
    match Btf::from_sys_fs() {
        Ok(b) => btf::offsets::kernel_offsets(&b).1,
        Err(e) => vec![e.to_string()],
    }
}

/// Loads, attaches, records what happened and detaches (the object is dropped on return).
/// With `force_lru`, the fallback store's programs (`--flow-store lru`). Without `preflight`,
/// no capability check first: the kernel's own refusals show per probe.
pub fn check(
    cgroup_root: Option<PathBuf>,
    force_lru: bool,
    preflight: bool,
) -> Result<Report, ProbesError> {
    if preflight {
        preflight::check()?;
    }
    mounts::ensure_kernel_fs()?;
    let root = match cgroup_root {
        Some(p) => p,
        None => mounts::cgroup2_root()?,
    };
    let opts = LoadOptions {
        sock_ops_cgroup: root,
        scope: scope::filter(None, None),
        tuning: Tuning::DEFAULT,
        repeat: RepeatRstConfig::DEFAULT,
        detail: DetailFilter::default(),
        ring_bytes: RING_BYTES,
        fallback_flows: FALLBACK_FLOWS,
        force_lru,
        // Attached too: the check is whether this kernel takes them.
        backups: BackupMode::Always,
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let tracefs_root = PathBuf::from(mounts::TRACEFS);
    let tracepoints: Vec<TracepointRow> = Tracepoint::ALL
        .iter()
        .map(|tp| tracepoint_row(&tracefs_root, *tp))
        .collect();
    let degraded = degradations(&tracepoints);
    let report = match loader::load(&opts) {
        Ok(loaded) => Report {
            record: "probes",
            kernel,
            ok: true,
            attached: loaded.attached_count(),
            total: loaded.probes.len(),
            probes: loaded.probes.iter().map(probe_row).collect(),
            tracepoints,
            btf_notes: loaded.btf_notes.clone(),
            flow_store: Some(loaded.store.describe().to_owned()),
            flow_store_note: loaded.store_note.clone(),
            degraded,
            backups: Some(backups_line(&loaded.backups)),
            error: None,
        },
        Err(e) => Report {
            record: "probes",
            kernel,
            ok: false,
            attached: 0,
            total: crate::kernel::probes::PROBES.len(),
            probes: Vec::new(),
            tracepoints,
            btf_notes: btf_notes_alone(),
            flow_store: None,
            flow_store_note: None,
            degraded,
            backups: None,
            error: Some(e.to_string()),
        },
    };
    Ok(report)
}

/// `backups: ...` of the report.
fn backups_line(b: &crate::kernel::backups::Backups) -> String {
    let with: Vec<&str> = b.probes().collect();
    let mut line = if with.is_empty() {
        "none".to_owned()
    } else {
        format!(
            "{} ({})",
            with.join(", "),
            if b.attached() { "attached" } else { "loaded" }
        )
    };
    if let Some((_, why)) = b.refused.first() {
        let refused: Vec<&str> = b.refused.iter().map(|(p, _)| p.as_str()).collect();
        line.push_str(&format!("; not for {}: {why}", refused.join(", ")));
    }
    line
}

/// The human view: the probe table with how each probe hooks in, then fields and notes.
pub fn render_text(r: &Report) -> String {
    let mut out = format!("kernel {}\n\n", r.kernel);
    if let Some(e) = &r.error {
        out.push_str(&format!("linkprobe cannot run on this kernel: {e}\n"));
    } else {
        out.push_str(&format!(
            "{:<18} {:<26} {:<36} {:<10} {}\n",
            "PROBE", "HOW", "HOOK", "STATE", "NEEDS KERNEL / WHY"
        ));
        for p in &r.probes {
            let (state, detail) = match &p.reason {
                None => ("attached", p.requires),
                Some(why) if p.skipped => ("not needed", why.as_str()),
                Some(why) => ("OFF", why.as_str()),
            };
            out.push_str(&format!(
                "{:<18} {:<26} {:<36} {:<10} {}\n",
                p.name, p.how, p.target, state, detail
            ));
        }
        if let Some(store) = &r.flow_store {
            out.push_str(&format!("\nflow state: {store}"));
            if let Some(why) = &r.flow_store_note {
                out.push_str(&format!(" (socket storage refused: {why})"));
            }
            out.push('\n');
        }
        if let Some(b) = &r.backups {
            out.push_str(&format!("backup programs: {b}\n"));
        }
        out.push_str(&format!(
            "\n{} of {} probes attached\n",
            r.attached, r.total
        ));
    }
    out.push_str("\ntracepoint fields:\n");
    for t in &r.tracepoints {
        let fields = if t.present && !t.fields.is_empty() {
            t.fields.join(" ")
        } else {
            "-".to_owned()
        };
        out.push_str(&format!("  {:<28} {fields}\n", t.tracepoint));
        if let Some(e) = &t.error {
            out.push_str(&format!("  {:<28} ! {e}\n", ""));
        }
    }
    if !r.degraded.is_empty() {
        out.push_str("\ndegraded:\n");
        for d in &r.degraded {
            out.push_str(&format!("  {d}\n"));
        }
    }
    if !r.btf_notes.is_empty() {
        out.push_str("\nBTF notes:\n");
        for n in &r.btf_notes {
            out.push_str(&format!("  {n}\n"));
        }
    }
    out
}

/// One JSON object (the same field names as [`Report`]).
pub fn render_json(r: &Report) -> String {
    serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"type\":\"error\",\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            record: "probes",
            kernel: "6.1.0-50-cloud-amd64".into(),
            ok: true,
            attached: 1,
            total: 2,
            probes: vec![
                ProbeRow {
                    name: "lp_sock_ops",
                    hook: "sock_ops",
                    target: "cgroup /sys/fs/cgroup".into(),
                    how: "sock_ops, socket storage".into(),
                    attached: true,
                    skipped: false,
                    reason: None,
                    requires: "5.15",
                },
                ProbeRow {
                    name: "lp_rst_sent",
                    hook: "tp_btf",
                    target: "tp_btf tcp_send_reset".into(),
                    how: "tp_btf, socket storage".into(),
                    attached: false,
                    skipped: false,
                    reason: Some("this kernel has no tcp:tcp_send_reset tracepoint".into()),
                    requires: "4.16",
                },
            ],
            tracepoints: vec![TracepointRow {
                tracepoint: "tcp:tcp_send_reset".into(),
                present: false,
                fields: vec![],
                error: Some("missing".into()),
            }],
            btf_notes: vec!["no sk_cgrp_data".into()],
            flow_store: Some("socket storage".into()),
            flow_store_note: None,
            degraded: vec!["lp_rst_sent: no reason".into()],
            backups: Some("none; not for lp_rst_sent_b: no task storage".into()),
            error: None,
        }
    }

    fn send_reset(fields: &[&str]) -> TracepointRow {
        TracepointRow {
            tracepoint: "tcp:tcp_send_reset".into(),
            present: true,
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            error: None,
        }
    }

    #[test]
    fn send_reset_without_reason_is_a_degradation() {
        assert_eq!(
            degradations(&[send_reset(&["skbaddr", "skaddr", "state"])]).len(),
            1
        );
        assert!(degradations(&[send_reset(&["skbaddr", "skaddr", "reason"])]).is_empty());
    }

    #[test]
    fn text_names_how_each_probe_hooks_in_and_why_it_is_off() {
        let text = render_text(&report());
        assert!(
            text.contains("backup programs: none; not for lp_rst_sent_b: no task storage"),
            "{text}"
        );
        assert!(
            text.contains("lp_sock_ops        sock_ops, socket storage"),
            "{text}"
        );
        assert!(text.contains("OFF        this kernel has no"), "{text}");
        assert!(text.contains("flow state: socket storage"), "{text}");
        assert!(text.contains("1 of 2 probes attached"), "{text}");
        assert!(text.contains("! missing"), "{text}");
        assert!(text.contains("BTF notes:\n  no sk_cgrp_data"), "{text}");
        assert!(
            text.contains("degraded:\n  lp_rst_sent: no reason"),
            "{text}"
        );
    }

    #[test]
    fn json_field_names_are_stable() {
        let v: serde_json::Value = serde_json::from_str(&render_json(&report())).unwrap();
        assert_eq!(v["type"], "probes");
        assert_eq!(v["probes"][0]["hook"], "sock_ops");
        assert_eq!(v["probes"][1]["attached"], false);
        assert_eq!(v["tracepoints"][0]["present"], false);
        assert_eq!(v["btf_notes"][0], "no sk_cgrp_data");
        assert!(v["error"].is_null());
    }
}
