//! Loads the eBPF object and attaches each probe on its own: a probe whose hook is missing on
//! this kernel stays off with a reason, and the rest run. Flow state lives in socket storage
//! where this kernel's BTF tracepoints may use it, else in the fallback LRU map: every hook
//! comes in both variants, and the store is chosen once, by the verifier's answer for the
//! state-change hook.
use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    programs::{links::CgroupAttachMode, BtfTracePoint, Iter, Program, ProgramError, SockOps},
    Btf as AyaBtf, Ebpf, EbpfLoader,
};
use probe_common::{
    DetailFilter, FlowRecord, HookArgs, KernelOffsets, RepeatRstConfig, ScopeFilter, TpLayout,
    Tuning, ABSENT,
};

use crate::{
    event::rst_reason::ReasonNames,
    host::mounts,
    kernel::backups::{BackupMode, Backups, MarksStandIn},
    kernel::btf::{self, Btf},
    kernel::openflows,
    kernel::probes::{self, verifier_summary, Hook, ProbeState, ProbeStatus, PROBES},
    kernel::tracefs::{self, Tracepoint},
};

/// The eBPF object built by build.rs (aya-build).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// Socket local storage (`FLOWS`): per socket, freed with it, no bound.
    SkStorage,
    /// The fallback LRU map (`FLOWS_LRU`), keyed by socket address, bounded and evicting.
    Lru,
}

impl Store {
    pub fn describe(self) -> &'static str {
        match self {
            Store::SkStorage => "socket storage",
            Store::Lru => "LRU map",
        }
    }
}

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
    #[error(
        "this kernel has no task storage (before 5.11) and the map standing in for it could \
         not be pinned in /sys/fs/bpf: {0}; check that bpffs is mounted there and writable"
    )]
    MarksStandIn(std::io::Error),
    #[error("none of linkprobe's probes could be attached:\n{0}")]
    NothingAttached(String),
}

/// Options that shape loading.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// cgroup v2 directory `sock_ops` attaches to (the root, or the `--cgroup` filter).
    pub sock_ops_cgroup: PathBuf,
    pub scope: ScopeFilter,
    pub tuning: Tuning,
    pub repeat: RepeatRstConfig,
    pub detail: DetailFilter,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Entries of the fallback flow-state map.
    pub fallback_flows: u32,
    /// Use the fallback map even where socket storage works.
    pub force_lru: bool,
    /// When backup programs attach.
    pub backups: BackupMode,
}

/// The loaded object plus what each probe became.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub probes: Vec<ProbeStatus>,
    pub store: Store,
    /// Why the fallback store is in use (the verifier's answer for socket storage).
    pub store_note: Option<String>,
    pub reason_names: ReasonNames,
    /// BTF members missing on this kernel and what that costs.
    pub btf_notes: Vec<String>,
    /// Second programs for the hits the kernel skips a primary for.
    pub backups: Backups,
}

impl Loaded {
    pub fn attached_count(&self) -> usize {
        self.probes
            .iter()
            .filter(|p| p.state == ProbeState::Attached)
            .count()
    }

    /// Every open flow in scope with its kernel state, by running the open-flow iterator once.
    pub fn open_flows(&self) -> Result<Vec<FlowRecord>, OpenFlowsError> {
        let attached = self
            .probes
            .iter()
            .any(|p| p.spec.hook == Hook::IterFlows && p.state == ProbeState::Attached);
        if self.store != Store::SkStorage || !attached {
            return Err(OpenFlowsError::Unavailable);
        }
        let prog = self
            .ebpf
            .program("lp_open_flows")
            .and_then(|p| p.fd().ok())
            .ok_or(OpenFlowsError::Unavailable)?;
        let map = match self.ebpf.map("FLOWS") {
            Some(aya::maps::Map::SkStorage(data)) => data.fd(),
            _ => return Err(OpenFlowsError::Unavailable),
        };
        openflows::read(prog.as_fd(), map.as_fd()).map_err(|e| OpenFlowsError::Run(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenFlowsError {
    #[error("open flows cannot be read from the kernel here (needs the open-flow iterator and socket storage)")]
    Unavailable,
    #[error("reading open flows from the kernel: {0}")]
    Run(String),
}

/// Each tracepoint's layout from its tracefs format: which optional arguments it passes.
fn layouts() -> BTreeMap<&'static str, Result<TpLayout, String>> {
    let root = PathBuf::from(mounts::TRACEFS);
    let mut layouts = BTreeMap::new();
    for tp in Tracepoint::ALL {
        let format = tracefs::read_format(&root, tp).map_err(|e| e.to_string());
        let layout =
            format.and_then(|f| tracefs::resolve_layout(tp, &f).map_err(|e| e.to_string()));
        layouts.insert(tp.name(), layout);
    }
    layouts
}

/// Optional TP_PROTO arguments, from the tracepoints' formats (a field the record has is an
/// argument the tracepoint passes).
fn hook_args(layouts: &BTreeMap<&str, Result<TpLayout, String>>) -> HookArgs {
    let has = |tp: Tracepoint, field: fn(&TpLayout) -> u16| {
        layouts
            .get(tp.name())
            .and_then(|l| l.as_ref().ok())
            .is_some_and(|l| field(l) != ABSENT)
    };
    HookArgs {
        rst_reason: u32::from(has(Tracepoint::RstSent, |l| l.reason)),
        retransmit_err: u32::from(has(Tracepoint::RetransmitSkb, |l| l.err)),
        // Assumed; `load` retries with 0 when the kernel cannot create task storage.
        task_storage: 1,
    }
}

/// Loads the object with this kernel's offsets, then attaches every probe it can.
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    if EBPF_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let btf = Btf::from_sys_fs()?;
    let (offsets, btf_notes) = btf::offsets::kernel_offsets(&btf);
    if offsets.valid == 0 {
        return Err(LoadError::Offsets(btf_notes.join("; ")));
    }
    let layouts = layouts();
    let args = hook_args(&layouts);
    let args_without_task_storage = HookArgs {
        task_storage: 0,
        ..args
    };
    let reason_names = ReasonNames::from_tracefs(&PathBuf::from(mounts::TRACEFS));
    let kernel_btf = AyaBtf::from_sys_fs().map_err(|e| LoadError::Ebpf(e.into()))?;

    let mut loader = EbpfLoader::new();
    let (scope, tuning, repeat, detail) = (opts.scope, opts.tuning, opts.repeat, opts.detail);
    let offsets: KernelOffsets = offsets;
    loader
        .btf(Some(&kernel_btf))
        // HIT_MARKS is task storage, which aya 0.14 has no type for: the kernel creates it,
        // the programs use it, userspace never touches it.
        .allow_unsupported_maps()
        .override_global("SCOPE", &scope, true)
        .override_global("OFFSETS", &offsets, true)
        .override_global("TUNING", &tuning, true)
        .override_global("REPEAT", &repeat, true)
        .override_global("HOOK_ARGS", &args, true)
        .override_global("DETAIL", &detail, true)
        .map_max_entries("EVENTS", opts.ring_bytes)
        .map_max_entries("FLOWS_LRU", opts.fallback_flows);
    let (mut ebpf, task_storage) = match loader.load(EBPF_OBJECT) {
        Ok(ebpf) => (ebpf, true),
        Err(aya::EbpfError::MapError(aya::maps::MapError::CreateError {
            name, io_error, ..
        })) if name == "HIT_MARKS" => {
            log::info!("no task storage for backup marks ({io_error}): loading without backups");
            let stand_in =
                MarksStandIn::create(Path::new(mounts::BPFFS)).map_err(LoadError::MarksStandIn)?;
            loader
                .override_global("HOOK_ARGS", &args_without_task_storage, true)
                .map_pin_path("HIT_MARKS", stand_in.path().to_owned());
            (loader.load(EBPF_OBJECT)?, false)
        }
        Err(e) => return Err(e.into()),
    };

    let (store, store_note) = if opts.force_lru {
        (Store::Lru, Some("--flow-store lru".to_owned()))
    } else {
        choose_store(&mut ebpf, &kernel_btf)
    };
    let mut probes = Vec::with_capacity(PROBES.len());
    for spec in PROBES {
        let program = match (store, spec.fallback) {
            (Store::Lru, Some(fallback)) => fallback,
            _ => spec.program,
        };
        let (target, how, state) = match spec.hook {
            Hook::SockOps => (
                format!("cgroup {}", opts.sock_ops_cgroup.display()),
                format!("sock_ops, {}", store.describe()),
                if offsets.tp_total_rto == KernelOffsets::ABSENT || store == Store::Lru {
                    attach_sock_ops(&mut ebpf, program, &opts.sock_ops_cgroup)?
                } else {
                    ProbeState::Skipped(
                        "not needed: the kernel counts RTOs per socket (tcp_sock.total_rto, 6.7+)"
                            .into(),
                    )
                },
            ),
            Hook::BtfTracepoint(tp) => (
                format!("tp_btf {}", tp.name()),
                match spec.fallback {
                    Some(_) => format!("tp_btf, {}", store.describe()),
                    None => "tp_btf".to_owned(),
                },
                attach_btf_tracepoint(&mut ebpf, program, tp, &kernel_btf),
            ),
            Hook::IterFlows => (
                "iter/bpf_sk_storage_map".to_owned(),
                "iterator, on demand".to_owned(),
                match store {
                    Store::SkStorage => load_iterator(&mut ebpf, program, &kernel_btf),
                    Store::Lru => ProbeState::Off(
                        "needs socket storage; open flows come from the fallback map".into(),
                    ),
                },
            ),
        };
        probes.push(ProbeStatus {
            spec,
            program,
            target,
            how,
            state,
        });
    }
    let backups = Backups::load(&mut ebpf, &probes, &kernel_btf, opts.backups, task_storage);
    if opts
        .backups
        .at_start(&crate::kernel::backups::Preemption::of_this_kernel())
    {
        if let Err(e) = backups.attach(&ebpf) {
            log::warn!("backup programs not attached: {e}");
        }
    }
    let loaded = Loaded {
        ebpf,
        probes,
        store,
        store_note,
        reason_names,
        btf_notes,
        backups,
    };
    if loaded.attached_count() == 0 {
        return Err(LoadError::NothingAttached(probes::table(&loaded.probes)));
    }
    Ok(loaded)
}

/// Socket storage when this kernel's verifier takes the state-change hook with it, else the
/// fallback map, with the verifier's reason.
fn choose_store(ebpf: &mut Ebpf, btf: &AyaBtf) -> (Store, Option<String>) {
    let tp = Tracepoint::SetState;
    let loaded = ebpf
        .program_mut("lp_state")
        .ok_or_else(|| "program lp_state missing from the object".to_owned())
        .and_then(|p| {
            let p: &mut BtfTracePoint = p.try_into().map_err(|e: ProgramError| e.to_string())?;
            p.load(tp.name(), btf).map_err(|e| verifier_summary(&e))
        });
    match loaded {
        Ok(()) => (Store::SkStorage, None),
        Err(why) => {
            log::warn!("flow state in the fallback LRU map: socket storage refused ({why})");
            (Store::Lru, Some(why))
        }
    }
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
    program: &'static str,
    load: impl FnOnce(&mut P) -> Result<(), ProgramError>,
    attach: impl FnOnce(&mut P) -> Result<(), ProgramError>,
) -> ProbeState
where
    for<'a> &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let Some(prog) = ebpf.program_mut(program) else {
        return ProbeState::Off(format!("program {program} missing from the object"));
    };
    let prog: &mut P = match prog.try_into() {
        Ok(p) => p,
        Err(e) => return program_error("wrong program type", e),
    };
    if let Err(e) = load(prog) {
        return ProbeState::Off(probes::load_refusal(&e));
    }
    let state = match attach(prog) {
        Ok(()) => ProbeState::Attached,
        Err(e) => program_error("attach failed", e),
    };
    log_verifier_work(ebpf, program);
    state
}

/// How much of the verifier's 1M-instruction budget a program took (debug log): the margin
/// older kernels, whose verifiers prune less, have left.
fn log_verifier_work(ebpf: &Ebpf, program: &str) {
    let count = ebpf
        .program(program)
        .and_then(|p| p.info().ok())
        .and_then(|i| i.verified_instruction_count());
    if let Some(n) = count {
        log::debug!("{program}: the verifier walked {n} instructions");
    }
}

fn attach_btf_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    tp: Tracepoint,
    btf: &AyaBtf,
) -> ProbeState {
    load_and_attach(
        ebpf,
        program,
        |p: &mut BtfTracePoint| {
            // `choose_store` may have loaded it already.
            if p.fd().is_ok() {
                return Ok(());
            }
            p.load(tp.name(), btf)
        },
        |p| p.attach().map(drop),
    )
}

fn load_iterator(ebpf: &mut Ebpf, program: &'static str, btf: &AyaBtf) -> ProbeState {
    // Loaded now (so the table says whether this kernel takes it); attached per request.
    load_and_attach(
        ebpf,
        program,
        |p: &mut Iter| p.load("bpf_sk_storage_map", btf),
        |_| Ok(()),
    )
}

fn attach_sock_ops(
    ebpf: &mut Ebpf,
    program: &'static str,
    cgroup: &std::path::Path,
) -> Result<ProbeState, LoadError> {
    let Some(prog) = ebpf.program_mut(program) else {
        return Ok(ProbeState::Off(format!(
            "program {program} missing from the object"
        )));
    };
    let prog: &mut SockOps = match prog.try_into() {
        Ok(p) => p,
        Err(e) => return Ok(program_error("wrong program type", e)),
    };
    if let Err(e) = prog.load() {
        return Ok(ProbeState::Off(probes::load_refusal(&e)));
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
