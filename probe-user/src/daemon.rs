//! Runs the probes: preflight, mounts, load/attach, then the event loop until SIGINT/SIGTERM,
//! after which everything is detached (dropping the `Ebpf` closes every link) and the final
//! kernel counters are printed.
use std::{collections::BTreeMap, io, time::Duration};

use aya_log::EbpfLogger;
use probe_common::{RepeatRstConfig, Tuning};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    cli::ProbeArgs,
    counters::{self, CounterError},
    decode::decode,
    event::kind_name,
    loader::{self, LoadError, LoadOptions, Loaded},
    mounts::{self, MountError},
    output::{self, EventView, Format},
    preflight::{self, PreflightError},
    reader::{EventReader, ReaderError},
    scope::{self, ScopeError},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
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

fn load_options(args: &ProbeArgs) -> Result<LoadOptions, RunError> {
    let root = match &args.cgroup_root {
        Some(p) => p.clone(),
        None => mounts::cgroup2_root()?,
    };
    let netns = match &args.netns {
        Some(n) => Some(scope::netns_cookie(&scope::netns_path(n)?)?),
        None => None,
    };
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
            rtt_sample_ns: args.rtt_sample_ms.saturating_mul(1_000_000),
        },
        repeat: repeat_config(),
        ring_bytes: args.ring_bytes,
    })
}

/// Repeat-RST check settings; ephemeral ports come from this host's `ip_local_port_range`.
fn repeat_config() -> RepeatRstConfig {
    let mut cfg = RepeatRstConfig::DEFAULT;
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut ports = range
        .split_whitespace()
        .filter_map(|p| p.parse::<u16>().ok());
    if let (Some(low), Some(high)) = (ports.next(), ports.next()) {
        cfg.ephemeral_low = low;
        cfg.ephemeral_high = high;
    }
    cfg
}

/// Everything up to attached probes; prints the table and the ready line.
pub fn start(args: &ProbeArgs) -> Result<Loaded, RunError> {
    preflight::check()?;
    let report = mounts::ensure_kernel_fs()?;
    if report.mounted_tracefs {
        log::info!("mounted tracefs at {}", mounts::TRACEFS);
    }
    if report.mounted_bpffs {
        log::info!("mounted bpffs at {}", mounts::BPFFS);
    }
    let opts = load_options(args)?;
    let loaded = loader::load(&opts)?;
    for note in &loaded.btf_notes {
        log::warn!("{note}");
    }
    eprint!("{}", output::probe_table(&loaded.probes));
    let off = loaded.probes.len() - loaded.attached_count();
    if args.strict && off > 0 {
        return Err(RunError::Strict {
            off,
            total: loaded.probes.len(),
        });
    }
    eprintln!(
        "linkprobe: ready ({} of {} probes attached)",
        loaded.attached_count(),
        loaded.probes.len()
    );
    if args.output == Format::Json {
        println!("{}", output::ready_json(&loaded.probes));
    }
    Ok(loaded)
}

/// The event loop. Returns after SIGINT/SIGTERM once the ring is drained and counters printed.
pub async fn run(args: &ProbeArgs, mut loaded: Loaded) -> Result<(), RunError> {
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

    let mut sink = Sink::new(args.output, &loaded);
    loop {
        tokio::select! {
            r = reader.readable() => r.map_err(RunError::Poll)?,
            _ = tick.tick() => {}
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
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        reader.drain(|bytes| sink.record(bytes));
    }
    // Records submitted before the signal are still in the ring: take them all.
    reader.drain(|bytes| sink.record(bytes));
    let kernel = counters::read(&loaded.ebpf, &loaded.reason_names)?;
    let line = output::counters_json(&kernel, &sink.records, sink.decode_errors);
    if args.output == Format::Json {
        println!("{line}");
    } else {
        eprintln!("linkprobe: final counters {line}");
    }
    drop(reader);
    drop(loaded);
    eprintln!("linkprobe: probes detached");
    Ok(())
}

/// Decodes records and writes them out; keeps per-kind record counts for the summary.
struct Sink<'a> {
    format: Format,
    loaded: &'a Loaded,
    records: BTreeMap<&'static str, u64>,
    decode_errors: u64,
    stdout: io::Stdout,
}

impl<'a> Sink<'a> {
    fn new(format: Format, loaded: &'a Loaded) -> Self {
        Sink {
            format,
            loaded,
            records: BTreeMap::new(),
            decode_errors: 0,
            stdout: io::stdout(),
        }
    }

    fn record(&mut self, bytes: &[u8]) {
        let ev = match decode(bytes) {
            Ok(ev) => ev,
            Err(e) => {
                self.decode_errors += 1;
                log::error!("{e}");
                return;
            }
        };
        *self.records.entry(kind_name(ev.detail.kind())).or_default() += 1;
        let line = match self.format {
            Format::None => return,
            Format::Text => output::text_line(&ev, &self.loaded.reason_names),
            Format::Json => {
                match serde_json::to_string(&EventView::new(&ev, &self.loaded.reason_names)) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("encoding event: {e}");
                        return;
                    }
                }
            }
        };
        let mut out = self.stdout.lock();
        if output::emit_line(&mut out, &line).is_err() {
            // stdout closed (e.g. `| head`): keep counting, stop printing.
            self.format = Format::None;
        }
    }
}
