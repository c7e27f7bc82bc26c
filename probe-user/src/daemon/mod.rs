//! Runs the probes: preflight, mounts, load/attach, then the event loop until SIGINT/SIGTERM,
//! after which everything is detached (dropping the `Ebpf` closes every link) and the final
//! kernel counters are printed.
pub mod exporter;
pub mod sink;
use std::{io, ops::RangeInclusive, path::PathBuf, time::Duration};

use aya_log::EbpfLogger;
use probe_common::{RepeatRstConfig, Tuning};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    api::ApiLoop,
    cli::ProbeArgs,
    clock::monotonic_ns,
    config::{Config, ConfigError},
    daemon::exporter::Exporter,
    daemon::sink::Sink,
    host::diag,
    host::mounts::{self, MountError},
    host::preflight::{self, PreflightError},
    host::scope::{self, ScopeError},
    kernel::counters::{self, CounterError},
    kernel::loader::{self, LoadError, LoadOptions, Loaded},
    kernel::progstats,
    kernel::reader::{EventReader, ReaderError},
    pipeline::Pipeline,
    render::{self, Format},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Reader(#[from] ReaderError),
    #[error(transparent)]
    Counters(#[from] CounterError),
    #[error(
        "--strict: {off} of {total} probes are off on this kernel (see the table above); run \
         without --strict to use the others"
    )]
    Strict { off: usize, total: usize },
    #[error("installing the signal handler: {0}")]
    Signal(io::Error),
    #[error("waiting for ring-buffer data: {0}")]
    Poll(io::Error),
}

/// The configuration file (or defaults) with `--set` overrides applied, validated.
pub fn config(args: &ProbeArgs) -> Result<Config, RunError> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    for o in &args.overrides {
        cfg.set_override(o)?;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The `--netns` namespace: its path and cookie.
fn scoped_netns(args: &ProbeArgs) -> Result<Option<(PathBuf, u64)>, RunError> {
    let Some(name) = &args.netns else {
        return Ok(None);
    };
    let path = scope::netns_path(name)?;
    let cookie = scope::netns_cookie(&path)?;
    Ok(Some((path, cookie)))
}

fn load_options(
    args: &ProbeArgs,
    cfg: &Config,
    netns: Option<u64>,
) -> Result<LoadOptions, RunError> {
    let root = match &args.cgroup_root {
        Some(p) => p.clone(),
        None => mounts::cgroup2_root()?,
    };
    let fallback_flows = cfg.kernel.fallback_flows;
    let detail = detail_filter(args, &root)?;
    let cgroup = match &args.cgroup {
        Some(path) => Some(scope::cgroup_scope(&root, path)?),
        None => None,
    };
    Ok(LoadOptions {
        // With a cgroup filter sock_ops attaches to that cgroup: the kernel then only runs it
        // for sockets below it.
        sock_ops_cgroup: args.cgroup.clone().unwrap_or(root),
        scope: scope::filter(netns, cgroup),
        tuning: Tuning {
            wakeup_bytes: args.wakeup_bytes,
            report_interval_ns: args.report_interval_ms.saturating_mul(1_000_000),
        },
        detail,
        repeat: repeat_config(cfg, &ephemeral_ports()),
        ring_bytes: args.ring_bytes,
        fallback_flows,
        force_lru: args.flow_store == crate::cli::FlowStore::Lru,
        backups: args.backup_probes,
    })
}

/// The kernel's detail filter; a `cgroup=` criterion is resolved to its id.
fn detail_filter(
    args: &ProbeArgs,
    root: &std::path::Path,
) -> Result<probe_common::DetailFilter, RunError> {
    let spec = args.detail.clone().unwrap_or_default();
    let cgroup = match spec.cgroup() {
        Some(path) => Some(scope::cgroup_scope(root, path)?.0),
        None => None,
    };
    Ok(spec.filter(cgroup))
}

/// This host's `ip_local_port_range` (the kernel's default when unreadable): ports the kernel
/// hands to clients, never a service.
fn ephemeral_ports() -> RangeInclusive<u16> {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut ports = range
        .split_whitespace()
        .filter_map(|p| p.parse::<u16>().ok());
    match (ports.next(), ports.next()) {
        (Some(low), Some(high)) => low..=high,
        _ => 32768..=60999,
    }
}

/// Repeat-RST check settings; ephemeral ports are never one of its scopes.
fn repeat_config(config: &Config, ephemeral: &RangeInclusive<u16>) -> RepeatRstConfig {
    let mut cfg = RepeatRstConfig::DEFAULT;
    config.kernel.apply(&mut cfg);
    cfg.ephemeral_low = *ephemeral.start();
    cfg.ephemeral_high = *ephemeral.end();
    cfg
}

/// What [`start`] hands to [`run`].
pub struct Started {
    pub loaded: Loaded,
    pub config: Config,
    pub existing: Option<(u64, Vec<diag::ExistingSocket>)>,
    /// The daemon's HTTP exporter (none for `trace`, or with `--metrics-addr off`).
    pub exporter: Option<Exporter>,
}

/// Everything up to attached probes; prints the table and the ready line.
pub fn start(args: &ProbeArgs) -> Result<Started, RunError> {
    // Bad configuration is the user's to fix first, whatever the privileges.
    let cfg = config(args)?;
    preflight::check()?;
    let report = mounts::ensure_kernel_fs()?;
    if report.mounted_tracefs {
        log::info!("mounted tracefs at {}", mounts::TRACEFS);
    }
    if report.mounted_bpffs {
        log::info!("mounted bpffs at {}", mounts::BPFFS);
    }
    let netns = scoped_netns(args)?;
    let existing = existing_sockets(netns.as_ref());
    let opts = load_options(args, &cfg, netns.map(|(_, cookie)| cookie))?;
    let loaded = loader::load(&opts)?;
    for note in &loaded.btf_notes {
        log::warn!("{note}");
    }
    eprint!("{}", crate::kernel::probes::table(&loaded.probes));
    let off = loaded
        .probes
        .iter()
        .filter(|p| !p.state.is_serving())
        .count();
    if args.strict && off > 0 {
        return Err(RunError::Strict {
            off,
            total: loaded.probes.len(),
        });
    }
    eprintln!(
        "linkprobe: ready ({} of {} probes attached{})",
        loaded.attached_count(),
        loaded.probes.len(),
        if loaded.backups.attached() {
            ", with backups"
        } else {
            ""
        }
    );
    if args.output == Format::Json {
        let detail = args.detail.clone().unwrap_or_default();
        println!(
            "{}",
            render::ready_json(&loaded.probes, detail.mode_name(), &loaded.backups)
        );
    }
    Ok(Started {
        loaded,
        config: cfg,
        existing,
        exporter: None,
    })
}

/// The event loop. Returns after SIGINT/SIGTERM once the ring is drained and counters printed.
/// With `api` (the daemon), it also answers API queries and feeds live watchers.
pub async fn run(
    args: &ProbeArgs,
    started: Started,
    mut api: Option<ApiLoop>,
) -> Result<(), RunError> {
    let Started {
        mut loaded,
        config: cfg,
        existing,
        exporter,
    } = started;
    let mut reader = EventReader::new(&mut loaded.ebpf)?;
    let mut logger = match EbpfLogger::init(&mut loaded.ebpf) {
        // SAFETY: the logger owns its ring fd for its whole lifetime inside the AsyncFd.
        Ok(l) => unsafe { AsyncFd::register(l) }.ok(),
        Err(e) => {
            log::warn!("eBPF log forwarding is off: {e}");
            None
        }
    };
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut tick = tokio::time::interval(Duration::from_millis(args.drain_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut pipeline = Pipeline::new(&cfg, ephemeral_ports());
    if let Some((netns, sockets)) = &existing {
        pipeline.seed_existing(*netns, sockets, monotonic_ns());
    }
    let mut queries = api.as_mut().and_then(ApiLoop::take_queries);
    let ring_records = args.ring_bytes as usize / probe_common::FLOW_RECORD_SIZE;
    let mut sink = Sink::new(args, &loaded, pipeline, cfg.clone(), api);
    sink.exporter = exporter;
    sink.publish();
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A full batch means the ring holds more: come straight back, after whatever else is due.
    let mut backlog = false;
    loop {
        tokio::select! {
            r = reader.readable(), if !backlog => r.map_err(RunError::Poll)?,
            () = std::future::ready(()), if backlog => {}
            // Every drain tick: `--backup-probes auto` reacts to the first skipped run at once.
            _ = tick.tick() => sink.ensure_backups(),
            _ = second.tick() => {
                reader.drain(DRAIN_BATCH, |bytes| sink.record(bytes));
                sink.tick();
                sink.publish();
            }
            Some(guard) = async {
                match logger.as_mut() {
                    Some(l) => l.readable_mut().await.ok(),
                    None => std::future::pending().await,
                }
            } => {
                let mut guard = guard;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Some(q) = async {
                match queries.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                // Answer from fresh state: take what the ring holds first.
                reader.drain(DRAIN_BATCH, |bytes| sink.record(bytes));
                sink.answer(q);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        backlog = reader.drain(DRAIN_BATCH, |bytes| sink.record(bytes)) == DRAIN_BATCH;
    }
    // Records submitted before the signal are still in the ring: take them (at most two
    // rings' worth, so a storm that keeps filling it cannot hold the exit).
    reader.drain(2 * ring_records.max(DRAIN_BATCH), |bytes| {
        sink.record(bytes)
    });
    sink.tick();
    if args.dump_flows {
        sink.refresh_open_flows();
        sink.dump_flows();
    }
    let kernel = counters::read(&sink.loaded.ebpf, &sink.loaded.reason_names)?;
    let misses = progstats::unrecovered(
        &progstats::recursion_misses(&sink.loaded.ebpf, &sink.loaded.probes),
        &kernel.backup_runs,
    );
    let line = render::counters_json(
        &kernel,
        &sink.records,
        sink.decode_errors,
        &misses,
        &sink.pipeline.flows.stats(),
        &sink.pipeline.detectors.stats(),
    );
    if args.output == Format::Json {
        println!("{line}");
    } else {
        eprintln!("linkprobe: final counters {line}");
    }
    drop(sink);
    drop(reader);
    drop(loaded);
    eprintln!("linkprobe: probes detached");
    Ok(())
}

/// Records taken from the ring per loop turn: signals, ticks and API queries get their turn
/// between batches, even under a storm.
const DRAIN_BATCH: usize = 8192;

/// TCP sockets open before we attach (netns cookie, sockets), from sock_diag, so their flows
/// are known (marked pre-existing). Listed before the probes attach: reading the netns cookie
/// opens a socket of our own, which must not show up as an event. Best effort: a failure is
/// logged and the daemon runs on.
fn existing_sockets(netns: Option<&(PathBuf, u64)>) -> Option<(u64, Vec<diag::ExistingSocket>)> {
    let listed = match netns {
        Some((path, cookie)) => diag::tcp_sockets_in(path, false)
            .map(|sockets| (*cookie, sockets))
            .map_err(|e| e.to_string()),
        None => scope::socket_netns_cookie()
            .map_err(|e| e.to_string())
            .and_then(|c| Ok((c, diag::tcp_sockets(false).map_err(|e| e.to_string())?))),
    };
    match listed {
        Ok(found) => {
            log::info!("{} TCP sockets existed before start", found.1.len());
            Some(found)
        }
        Err(e) => {
            log::warn!("cannot list existing TCP sockets (sock_diag): {e}");
            None
        }
    }
}
