//! Loads the eBPF object and attaches each probe on its own: a probe whose hook or tracepoint
//! layout is missing on this kernel stays off with a reason, and the rest run.
use std::{collections::BTreeMap, fs::File, path::PathBuf};

use aya::{
    programs::{
        links::CgroupAttachMode, Program, ProgramError, RawTracePoint, SockOps, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use probe_common::{KernelOffsets, RepeatRstConfig, ScopeFilter, TpLayout, Tuning};

use crate::{
    btf::{self, Btf},
    mounts,
    rst_reason::ReasonNames,
    tracefs::{self, Tracepoint},
};

/// The eBPF object built by build.rs (aya-build).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

/// Where a probe hooks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// cgroup `sock_ops` (Linux 4.13; sock_ops links 5.7; `bpf_get_netns_cookie` 5.15).
    SockOps,
    Tracepoint(Tracepoint),
    /// The same tracepoint as a raw tracepoint (program gets `TP_PROTO` arguments). The
    /// tracefs layout still says which arguments the kernel passes.
    RawTracepoint(Tracepoint),
}

/// One row of the probe table.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    /// Program name in the eBPF object.
    pub program: &'static str,
    pub hook: Hook,
    /// Layout global the program reads (tracepoints only).
    pub layout_global: Option<&'static str>,
    /// Kernel requirement, for the status table.
    pub requires: &'static str,
    /// What the probe gives users.
    pub provides: &'static str,
}

/// Every probe linkprobe knows. Each degrades alone.
pub const PROBES: [ProbeSpec; 7] = [
    ProbeSpec {
        program: "lp_sock_ops",
        hook: Hook::SockOps,
        layout_global: None,
        requires: "5.15 (sock_ops + bpf_get_netns_cookie)",
        provides: "connect, handshake, state/retransmit/RTO/RTT callbacks with socket counters",
    },
    ProbeSpec {
        program: "lp_rst_received",
        hook: Hook::Tracepoint(Tracepoint::RstReceived),
        layout_global: Some("TP_RST_RECEIVED"),
        requires: "4.16",
        provides: "RSTs received",
    },
    ProbeSpec {
        program: "lp_rst_sent",
        hook: Hook::Tracepoint(Tracepoint::RstSent),
        layout_global: Some("TP_RST_SENT"),
        requires: "4.16 (reason: 6.10)",
        provides: "RSTs sent, with the kernel's reason where it has one",
    },
    ProbeSpec {
        program: "lp_retransmit",
        // Raw, like the SYN-ACK and state probes: a regular tracepoint program is skipped when
        // softirq interrupts another tracing program on the CPU (probe-ebpf `handle_raw`).
        hook: Hook::RawTracepoint(Tracepoint::RetransmitSkb),
        layout_global: Some("TP_RETRANSMIT_SKB"),
        requires: "4.15",
        provides: "every retransmitted segment (SYN and data)",
    },
    ProbeSpec {
        program: "lp_retrans_synack",
        hook: Hook::RawTracepoint(Tracepoint::RetransmitSynack),
        layout_global: Some("TP_RETRANSMIT_SYNACK"),
        requires: "4.16",
        provides: "SYN-ACK retransmits of listening sockets",
    },
    ProbeSpec {
        program: "lp_destroy_sock",
        hook: Hook::Tracepoint(Tracepoint::DestroySock),
        layout_global: Some("TP_DESTROY_SOCK"),
        requires: "4.16",
        provides: "socket destruction (end of a flow)",
    },
    ProbeSpec {
        program: "lp_set_state",
        hook: Hook::RawTracepoint(Tracepoint::SetState),
        layout_global: Some("TP_SET_STATE"),
        requires: "5.6 (sock.sk_protocol)",
        provides: "TCP state changes; the owning process at connect()",
    },
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this linkprobe binary has no eBPF object (built with AYA_BUILD_SKIP); rebuild with \
         `cargo xtask build`"
    )]
    NoObject,
    #[error("{0}")]
    Btf(#[from] btf::BtfError),
    #[error(
        "kernel BTF lacks what linkprobe needs to read sockets ({0}); linkprobe needs Linux 5.15+ \
         with CONFIG_DEBUG_INFO_BTF"
    )]
    Offsets(String),
    #[error("loading the eBPF object failed: {0}")]
    Ebpf(#[from] aya::EbpfError),
    #[error("cannot open cgroup {path} for sock_ops: {source}")]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
    #[error("none of linkprobe's probes could be attached:\n{0}")]
    NothingAttached(String),
}

/// What a probe ended up as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeState {
    Attached,
    Off(String),
}

#[derive(Clone, Debug)]
pub struct ProbeStatus {
    pub spec: ProbeSpec,
    /// Where it is attached, e.g. `cgroup /sys/fs/cgroup/unified` or `tcp:tcp_send_reset`.
    pub target: String,
    pub state: ProbeState,
}

/// Options that shape loading.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// cgroup v2 directory `sock_ops` attaches to (the root, or the `--cgroup` filter).
    pub sock_ops_cgroup: PathBuf,
    pub scope: ScopeFilter,
    pub tuning: Tuning,
    pub repeat: RepeatRstConfig,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
}

/// The loaded object plus what each probe became.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub probes: Vec<ProbeStatus>,
    pub reason_names: ReasonNames,
    /// BTF members missing on this kernel and what that costs.
    pub btf_notes: Vec<String>,
}

impl Loaded {
    pub fn attached_count(&self) -> usize {
        self.probes
            .iter()
            .filter(|p| p.state == ProbeState::Attached)
            .count()
    }
}

/// Tracepoint layouts read from tracefs; a layout that cannot be used turns its probe off.
fn layouts() -> BTreeMap<&'static str, Result<TpLayout, String>> {
    let root = PathBuf::from(mounts::TRACEFS);
    PROBES
        .iter()
        .filter_map(|p| match (p.hook, p.layout_global) {
            (Hook::Tracepoint(tp) | Hook::RawTracepoint(tp), Some(global)) => {
                let layout = tracefs::read_format(&root, tp)
                    .map_err(|e| e.to_string())
                    .and_then(|f| tracefs::resolve_layout(tp, &f).map_err(|e| e.to_string()));
                Some((global, layout))
            }
            _ => None,
        })
        .collect()
}

/// Loads the object with this kernel's layouts and offsets, then attaches every probe it can.
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    if EBPF_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let btf = Btf::from_sys_fs()?;
    let (offsets, btf_notes) = btf::kernel_offsets(&btf);
    if offsets.valid == 0 {
        return Err(LoadError::Offsets(btf_notes.join("; ")));
    }
    let layouts = layouts();
    let reason_names = ReasonNames::from_tracefs(&PathBuf::from(mounts::TRACEFS));

    let mut loader = EbpfLoader::new();
    let scope = opts.scope;
    let tuning = opts.tuning;
    let repeat = opts.repeat;
    let offsets: KernelOffsets = offsets;
    loader
        .override_global("SCOPE", &scope, true)
        .override_global("OFFSETS", &offsets, true)
        .override_global("TUNING", &tuning, true)
        .override_global("REPEAT", &repeat, true)
        .map_max_entries("EVENTS", opts.ring_bytes);
    let valid_layouts: Vec<(&'static str, TpLayout)> = layouts
        .iter()
        .filter_map(|(name, l)| l.as_ref().ok().map(|l| (*name, *l)))
        .collect();
    for (name, layout) in &valid_layouts {
        loader.override_global(name, layout, true);
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;

    let mut probes = Vec::with_capacity(PROBES.len());
    for spec in PROBES {
        let (target, state) = match spec.hook {
            Hook::SockOps => {
                let target = format!("cgroup {}", opts.sock_ops_cgroup.display());
                (
                    target,
                    attach_sock_ops(&mut ebpf, spec, &opts.sock_ops_cgroup)?,
                )
            }
            Hook::Tracepoint(tp) | Hook::RawTracepoint(tp) => {
                let raw = matches!(spec.hook, Hook::RawTracepoint(_));
                let target = if raw {
                    format!("raw_tp {}", tp.name())
                } else {
                    format!("{}:{}", tp.category(), tp.name())
                };
                let layout = spec.layout_global.and_then(|g| layouts.get(g));
                let state = match layout {
                    Some(Ok(_)) if raw => attach_raw_tracepoint(&mut ebpf, spec, tp),
                    Some(Ok(_)) => attach_tracepoint(&mut ebpf, spec, tp),
                    Some(Err(why)) => ProbeState::Off(why.clone()),
                    None => ProbeState::Off("no layout global".into()),
                };
                (target, state)
            }
        };
        probes.push(ProbeStatus {
            spec,
            target,
            state,
        });
    }
    let loaded = Loaded {
        ebpf,
        probes,
        reason_names,
        btf_notes,
    };
    if loaded.attached_count() == 0 {
        return Err(LoadError::NothingAttached(crate::output::probe_table(
            &loaded.probes,
        )));
    }
    Ok(loaded)
}

fn program_error(what: &str, err: impl std::error::Error) -> ProbeState {
    ProbeState::Off(format!("{what}: {}", error_chain(&err)))
}

/// An error and its sources on one line ("`bpf_link_create` failed: Invalid argument").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Loads one program of type `P` and attaches it; each failure becomes an OFF state that says
/// why.
fn load_and_attach<P>(
    ebpf: &mut Ebpf,
    spec: ProbeSpec,
    load: impl FnOnce(&mut P) -> Result<(), ProgramError>,
    attach: impl FnOnce(&mut P) -> Result<(), ProgramError>,
) -> ProbeState
where
    for<'a> &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let Some(prog) = ebpf.program_mut(spec.program) else {
        return ProbeState::Off(format!("program {} missing from the object", spec.program));
    };
    let prog: &mut P = match prog.try_into() {
        Ok(p) => p,
        Err(e) => return program_error("wrong program type", e),
    };
    if let Err(e) = load(prog) {
        return ProbeState::Off(format!(
            "the verifier rejected it: {}",
            verifier_summary(&e)
        ));
    }
    match attach(prog) {
        Ok(()) => ProbeState::Attached,
        Err(e) => program_error("attach failed", e),
    }
}

fn attach_tracepoint(ebpf: &mut Ebpf, spec: ProbeSpec, tp: Tracepoint) -> ProbeState {
    load_and_attach(
        ebpf,
        spec,
        |p: &mut TracePoint| p.load(),
        |p| p.attach(tp.category(), tp.name()).map(drop),
    )
}

fn attach_raw_tracepoint(ebpf: &mut Ebpf, spec: ProbeSpec, tp: Tracepoint) -> ProbeState {
    load_and_attach(
        ebpf,
        spec,
        |p: &mut RawTracePoint| p.load(),
        |p| p.attach(tp.name()).map(drop),
    )
}

fn attach_sock_ops(
    ebpf: &mut Ebpf,
    spec: ProbeSpec,
    cgroup: &std::path::Path,
) -> Result<ProbeState, LoadError> {
    let Some(prog) = ebpf.program_mut(spec.program) else {
        return Ok(ProbeState::Off(format!(
            "program {} missing from the object",
            spec.program
        )));
    };
    let prog: &mut SockOps = match prog.try_into() {
        Ok(p) => p,
        Err(e) => return Ok(program_error("wrong program type", e)),
    };
    if let Err(e) = prog.load() {
        return Ok(ProbeState::Off(format!(
            "the verifier rejected it: {}",
            verifier_summary(&e)
        )));
    }
    let file = File::open(cgroup).map_err(|source| LoadError::Cgroup {
        path: cgroup.display().to_string(),
        source,
    })?;
    // On 5.7+ aya attaches through a bpf_link, which always coexists with other sock_ops
    // programs (CNI plugins, other tracers) and takes no attach flags: `Single` means "no flags".
    Ok(match prog.attach(file, CgroupAttachMode::Single) {
        Ok(_) => ProbeState::Attached,
        Err(e) => program_error("attach failed", e),
    })
}

/// The verifier log is long; keep its last lines, which say why.
fn verifier_summary(err: &aya::programs::ProgramError) -> String {
    match err {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            log::debug!("verifier log:\n{log}");
            // The statistics lines at the end say nothing about the cause; the line before them does.
            let lines: Vec<&str> = log
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("verification time")
                        && !l.starts_with("stack depth")
                        && !l.starts_with("processed ")
                })
                .collect();
            let tail = lines.len().saturating_sub(3);
            format!("{io_error}; verifier: {}", lines[tail..].join(" | "))
        }
        other => other.to_string(),
    }
}
