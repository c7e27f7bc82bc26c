//! Everything before the event loop: configuration, preflight, mounts, the `--netns` /
//! `--cgroup` scope, the sockets open before start, loading and attaching the probes, then the
//! probe table and the ready line; pod attribution (`attribution`) for the loop.
use std::{ops::RangeInclusive, path::PathBuf, time::Duration};

use probe_common::{RepeatRstConfig, Tuning};

use crate::{
    attrib::{self, Attributor},
    cli::ProbeArgs,
    config::{Config, PodsMode},
    daemon::{error::RunError, exporter::Exporter},
    host::diag,
    host::mounts,
    host::preflight,
    host::scope,
    kernel::loader::{self, LoadOptions, Loaded},
    render::{self, Format},
};

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
pub fn ephemeral_ports() -> RangeInclusive<u16> {
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

/// Pod attribution as `[kubernetes]` configures it: the pod source started (or the reason it
/// fell back, logged), the cgroup tree read from the cgroup2 mount.
pub fn attribution(args: &ProbeArgs, cfg: &Config) -> Attributor {
    let k = &cfg.kubernetes;
    if k.pods == PodsMode::Off {
        return Attributor::off();
    }
    let cgroup_root = match &args.cgroup_root {
        Some(p) => p.clone(),
        None => match mounts::cgroup2_root() {
            Ok(root) => root,
            Err(e) => {
                log::warn!("pods: attribution off: {e}");
                return Attributor::off();
            }
        },
    };
    let node_name = if k.node_name.is_empty() {
        std::env::var("NODE_NAME").unwrap_or_default()
    } else {
        k.node_name.clone()
    };
    let attrib = Attributor::start(&attrib::Settings {
        mode: k.pods,
        node_name,
        api_url: (!k.api_url.is_empty()).then(|| k.api_url.clone()),
        pod_log_dir: PathBuf::from(&k.pod_log_dir),
        pod_log_rescan: Duration::from_secs(k.pod_log_rescan_secs),
        max_pods: k.max_pods,
        max_cgroups: k.max_cgroups,
        cgroup_rescan: Duration::from_millis(k.cgroup_rescan_ms),
        cgroup_root,
        in_cluster: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
    });
    let st = attrib.status();
    if attrib.enabled() {
        log::info!(
            "pods: attribution on (mode {}), source {}: {}",
            st.mode,
            st.source.source,
            st.source.state
        );
    }
    attrib
}

/// What [`start`] hands to [`run`].
pub struct Started {
    pub loaded: Loaded,
    pub config: Config,
    pub existing: Option<(u64, Vec<diag::ExistingSocket>)>,
    /// The `--netns` namespace's cookie: the one the daemon sees only.
    pub scoped_netns: Option<u64>,
    /// The daemon's HTTP exporter (none for `trace`, or with `--metrics-addr off`).
    pub exporter: Option<Exporter>,
}

/// Everything up to attached probes; prints the probe table. The caller prints the ready line
/// ([`announce_ready`]) once it serves: the daemon after its API socket listens, so a client
/// that waits for the line never meets the socket of a killed predecessor.
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
    let scoped_netns = netns.map(|(_, cookie)| cookie);
    let opts = load_options(args, &cfg, scoped_netns)?;
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
    Ok(Started {
        loaded,
        config: cfg,
        existing,
        scoped_netns,
        exporter: None,
    })
}

/// The ready line: on stderr, and first on stdout with `-o json`.
pub fn announce_ready(args: &ProbeArgs, started: &Started) {
    eprintln!(
        "linkprobe: ready ({} of {} probes attached{})",
        started.loaded.attached_count(),
        started.loaded.probes.len(),
        if started.loaded.backups.attached() {
            ", with backups"
        } else {
            ""
        }
    );
    if args.output == Format::Json {
        let detail = args.detail.clone().unwrap_or_default();
        println!(
            "{}",
            render::ready_json(
                &started.loaded.probes,
                detail.mode_name(),
                &started.loaded.backups
            )
        );
    }
}

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
