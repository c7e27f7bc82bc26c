//! Command-line interface (clap). `main.rs` dispatches on [`Command`].
use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{
    api::{
        proto::{SortKey, TopKey},
        DEFAULT_SOCKET,
    },
    render::Format,
};

#[derive(Debug, Parser)]
#[command(
    name = "linkprobe",
    version,
    about = "eBPF TCP link tracer: connects, retransmits and resets of every flow, tagged by socket cookie",
    after_help = "On call (asks the running daemon; root, or the daemon's --api-group):\n  \
                  linkprobe status                       is it healthy, what is attached\n  \
                  linkprobe anomalies                    what is wrong right now\n  \
                  linkprobe flows --failed               which connections failed\n  \
                  linkprobe flow 8193                    why this one died\n  \
                  linkprobe top                          who resets, fails, retransmits most\n  \
                  linkprobe watch --peer 10.0.0.5        live events\n\n\
                  Exit codes: 0 ok, 1 error, 2 usage.\n\
                  Kubernetes: kubectl exec -n linkprobe <pod-on-node> -- linkprobe flows"
)]
pub struct Cli {
    /// The daemon's API socket (for status, flows, flow, anomalies, watch, top).
    #[arg(long, global = true, env = "LINKPROBE_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host daemon: attach the probes and stream events (one per host).
    #[command(
        after_help = "Examples:\n  linkprobe daemon\n  linkprobe daemon -o json --netns blue"
    )]
    Daemon(DaemonArgs),
    /// Private live view of TCP events (no host lock); same probes and filters as the daemon.
    #[command(
        after_help = "Examples:\n  linkprobe trace --netns blue\n  linkprobe trace -o json --cgroup /sys/fs/cgroup/unified/system.slice"
    )]
    Trace(ProbeArgs),
    /// Daemon health: version, kernel, probes, counters, flow table fill, anomalies, config.
    #[command(
        after_help = "Examples:\n  linkprobe status\n  linkprobe status -o json | jq .probes"
    )]
    Status(StatusArgs),
    /// List flows (one per socket) with filters, sorted.
    #[command(
        after_help = "Examples:\n  linkprobe flows --failed\n  linkprobe flows --peer 10.0.0.5:80 --with-rst -o wide\n  linkprobe flows --sort retrans --limit 10\n  linkprobe flows --since 5m -o json | jq ."
    )]
    Flows(FlowsArgs),
    /// One flow's whole story: tuple, process, timeline, RTT, retransmits, RSTs, close cause,
    /// anomalies and the root-cause hint.
    #[command(after_help = "Examples:\n  linkprobe flow 8193\n  linkprobe flow 0x2001 -o json")]
    Flow(FlowArgs),
    /// Active and recently cleared anomalies.
    #[command(
        after_help = "Examples:\n  linkprobe anomalies\n  linkprobe anomalies --watch\n  linkprobe anomalies --active --since 10m\n  linkprobe anomalies --kind rst_storm --peer 10.0.0.7\n  linkprobe anomalies -o json"
    )]
    Anomalies(AnomaliesArgs),
    /// Live event stream with the same filters as `flows`.
    #[command(
        after_help = "Examples:\n  linkprobe watch --with-rst\n  linkprobe watch --peer 10.0.0.5 -o json | jq .kind"
    )]
    Watch(WatchArgs),
    /// Refreshing view of peers and local ports ranked by RST rate, failure rate or
    /// retransmit rate (last 10 s).
    #[command(after_help = "Examples:\n  linkprobe top\n  linkprobe top --by failure --once")]
    Top(TopArgs),
    /// Can linkprobe run on this kernel? Load and attach every probe, print how each hooks in
    /// (or why it is off), the tracepoint fields and BTF notes, detach and exit (0: it can run,
    /// 1: it cannot; with --strict, 1 unless every probe attaches).
    #[command(
        after_help = "Examples:\n  linkprobe probes\n  linkprobe probes -o json | jq .probes"
    )]
    Probes(ProbesArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  linkprobe completions bash > /etc/bash_completion.d/linkprobe\n  linkprobe completions zsh > \"${fpath[1]}/_linkprobe\""
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// How CLI commands print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// Aligned columns with human units.
    #[default]
    Table,
    /// Table with more columns.
    Wide,
    /// JSON (stable field names; one object per line for streams).
    Json,
}

#[derive(Debug, Args)]
pub struct ProbesArgs {
    #[arg(short, long, value_enum, default_value_t = ProbesView::Table)]
    pub output: ProbesView,
    /// cgroup2 mount that sock_ops attaches to [default: first cgroup2 mount in /proc/mounts].
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// Exit 1 unless every probe attaches.
    #[arg(long)]
    pub strict: bool,
    /// Which flow-state store's programs to check: `auto` (the one the daemon would use here)
    /// or `lru` (the fallback map's, which also attach sock_ops for RTOs).
    #[arg(long, value_enum, default_value_t = FlowStore::Auto)]
    pub flow_store: FlowStore,
    /// Attach without first checking the capabilities (root, or CAP_BPF + CAP_PERFMON +
    /// CAP_NET_ADMIN, or CAP_SYS_ADMIN): the container suite measures what the kernel itself
    /// refuses with fewer.
    #[arg(long, hide = true)]
    pub no_preflight: bool,
}

/// How `linkprobe probes` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbesView {
    /// Probe table, tracepoint fields, BTF notes.
    #[default]
    Table,
    /// One JSON object (`type`: `probes`).
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(short, long, value_enum, default_value_t = View::Table)]
    pub output: View,
}

/// Flow filters shared by `flows` and `watch`.
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Remote address, optionally with port: 10.0.0.5 or 10.0.0.5:80.
    #[arg(long, value_name = "IP[:PORT]", value_parser = check_peer)]
    pub peer: Option<String>,
    /// Local or remote port.
    #[arg(long)]
    pub port: Option<u16>,
    /// TCP state (ESTABLISHED, SYN_SENT, CLOSE, …) or open / closed.
    #[arg(long, value_parser = check_state)]
    pub state: Option<String>,
    /// Process id that opened the connection.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Process name (comm) that opened the connection.
    #[arg(long)]
    pub comm: Option<String>,
    /// cgroup v2 id, or a cgroup directory (its id is taken from it).
    #[arg(long, value_name = "ID|PATH")]
    pub cgroup: Option<String>,
    /// Network namespace: an `ip netns` name, `host`, or a netns cookie (as `-o wide` shows).
    #[arg(long, value_name = "NAME|COOKIE")]
    pub netns: Option<String>,
    /// Only flows with an RST sent or received (watch: RST events).
    #[arg(long)]
    pub with_rst: bool,
    /// Only flows with retransmits (watch: retransmit events).
    #[arg(long)]
    pub with_retrans: bool,
    /// Only failed connections, as connect_failures_total counts them: connects refused, timed
    /// out by the kernel, unreachable or abandoned by the app, and connections ended by an
    /// RST (reset); not those closed with a FIN.
    #[arg(long)]
    pub failed: bool,
    /// Only flows active within this long, e.g. 30s, 5m, 1h (flows only).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub since: Option<u64>,
}

#[derive(Debug, Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only flows owned by pods of this Kubernetes namespace (pod attribution, see `status`).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only flows owned by this pod (its name; add --namespace to pick one namespace).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only flows behind proxy requests with this Envoy response flag (UF, UC, URX, UH, …;
    /// `[envoy]` access logs, see `status`).
    #[arg(long, value_name = "FLAG", value_parser = check_envoy_flag)]
    pub envoy_flag: Option<String>,
    /// Only flows behind proxy requests answered with this status code (e.g. 503).
    #[arg(long, value_name = "CODE")]
    pub status: Option<u16>,
    #[arg(long, value_enum, default_value_t = SortKey::Age)]
    pub sort: SortKey,
    /// Most flows to list (the daemon returns at most 2000 per query).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(short, long, value_enum, default_value_t = View::Table)]
    pub output: View,
}

#[derive(Debug, Args)]
pub struct FlowArgs {
    /// Socket cookie, decimal or 0x-hex (as `flows` and the event stream print it).
    #[arg(value_parser = parse_cookie)]
    pub cookie: u64,
    #[arg(short, long, value_enum, default_value_t = View::Table)]
    pub output: View,
}

#[derive(Debug, Args)]
pub struct AnomaliesArgs {
    /// Keep printing anomaly changes as they happen.
    #[arg(long)]
    pub watch: bool,
    /// Only incidents and anomalies active within this long, e.g. 30s, 5m, 1h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub since: Option<u64>,
    /// Only anomalies of this kind (rst_storm, connect_refused, …), and the incidents with one.
    #[arg(long, value_parser = check_kind)]
    pub kind: Option<String>,
    /// Only anomalies about this peer (IP or IP:PORT; an IP matches every port), and the
    /// incidents with one.
    #[arg(long, value_parser = check_peer)]
    pub peer: Option<String>,
    /// Only what is still active.
    #[arg(long)]
    pub active: bool,
    /// Only anomalies whose peer or local port is in this network namespace (an `ip netns`
    /// name, `host`, a `pid N (comm)` name as shown, or a cookie), and the incidents with one.
    #[arg(long, value_name = "NAME|COOKIE")]
    pub netns: Option<String>,
    #[arg(short, long, value_enum, default_value_t = View::Table)]
    pub output: View,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Stop after this many events (default: until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
    #[arg(short, long, value_enum, default_value_t = View::Table)]
    pub output: View,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Rank by RST rate, connect failure rate or retransmit rate.
    #[arg(long, value_enum, default_value_t = TopKey::Rst)]
    pub by: TopKey,
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Rank the pods of this node that own sockets instead of peers and local ports.
    #[arg(long)]
    pub pods: bool,
    /// Only peers and local ports of this network namespace: an `ip netns` name, `host`, or a
    /// netns cookie (as `-o wide` shows).
    #[arg(long, value_name = "NAME|COOKIE", conflicts_with = "pods")]
    pub netns: Option<String>,
    /// Refresh interval in seconds.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// Print once and exit.
    #[arg(long)]
    pub once: bool,
    #[arg(short, long, value_enum, default_value_t = View::Table)]
    pub output: View,
}

fn check_peer(s: &str) -> Result<String, String> {
    crate::event::parse::peer(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

fn check_kind(s: &str) -> Result<String, String> {
    let kinds = crate::pipeline::detect::AnomalyKind::ALL;
    if kinds.iter().any(|k| k.name() == s) {
        return Ok(s.to_owned());
    }
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    Err(format!(
        "{s:?} is not an anomaly kind: one of {}",
        names.join(", ")
    ))
}

fn check_envoy_flag(s: &str) -> Result<String, String> {
    crate::api::filter::check_flag(s).map_err(|e| e.to_string())
}

fn check_state(s: &str) -> Result<String, String> {
    crate::api::filter::check_state(s).map_err(|e| e.to_string())
}

/// `30s`, `5m`, `1h`, `500ms` or plain seconds → milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 1h"))?;
    let scale = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: unit must be ms, s, m, h or d")),
    };
    Ok(n.saturating_mul(scale))
}

/// A socket cookie in decimal or `0x` hex.
fn parse_cookie(s: &str) -> Result<u64, String> {
    crate::event::parse::cookie(s).map_err(|e| e.to_string())
}

/// Where `/metrics`, `/healthz` and `/readyz` are served unless `--metrics-addr` says otherwise:
/// the node's loopback only, since the metrics name every tenant's peers. To scrape from
/// elsewhere, put an authenticating proxy in front (deploy/kubernetes/daemonset.yaml: kube-rbac-proxy) or
/// pass an address you have firewalled yourself.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9476";

#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Directory for the daemon's lock and its API socket (`api.sock`).
    #[arg(long, default_value = "/run/linkprobe")]
    pub run_dir: PathBuf,
    /// Serve /metrics, /healthz and /readyz on HOST:PORT (Prometheus scrapes it); `off` for none.
    /// Loopback by default: the metrics name every tenant's peers, so expose them through an
    /// authenticating proxy (see deploy/kubernetes/daemonset.yaml), not on 0.0.0.0.
    #[arg(
        long,
        value_name = "HOST:PORT|off",
        default_value = DEFAULT_METRICS_ADDR,
        value_parser = parse_metrics_addr
    )]
    pub metrics_addr: MetricsAddr,
    /// Let this group use the API: the socket becomes mode 0660 with this group (default:
    /// 0600, root only).
    #[arg(long, value_name = "GROUP")]
    pub api_group: Option<String>,
    /// Do not serve the local API.
    #[arg(long)]
    pub no_api: bool,
}

/// Where the exporter listens, if anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s == "off" {
        return Ok(MetricsAddr(None));
    }
    s.parse().map(|a| MetricsAddr(Some(a))).map_err(|_| {
        format!("{s:?} is not HOST:PORT with an IP address (e.g. 127.0.0.1:9476), nor `off`")
    })
}

#[derive(Debug, Args, Clone)]
pub struct ProbeArgs {
    /// Event output on stdout.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Only sockets of this network namespace: an `ip netns` name or a path like /proc/PID/ns/net.
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// Only sockets in this cgroup v2 directory or below it.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// cgroup2 mount that sock_ops attaches to [default: first cgroup2 mount in /proc/mounts].
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// Ring buffer size in bytes: a power of two, at least 4096.
    #[arg(long, default_value_t = 4 * 1024 * 1024, value_parser = parse_ring_bytes)]
    pub ring_bytes: u32,
    /// Wake the daemon once this many bytes of records are waiting (batching).
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub wakeup_bytes: u64,
    /// Drain the ring at least this often, in milliseconds (1-1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub drain_interval_ms: u64,
    /// Do not print events (anomalies, flows and counters still print).
    #[arg(long)]
    pub no_events: bool,
    /// At exit, print every flow still in the table (with `-o json`: one `flow` line each).
    #[arg(long)]
    pub dump_flows: bool,
    /// TOML configuration file (thresholds, table bounds; see deploy/linkprobe.toml).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Override one configuration key, e.g. `--set detect.rst_storm_min_rate=50` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Exit with an error unless every probe attaches (default: run with what this kernel has).
    #[arg(long)]
    pub strict: bool,
    /// Minimum gap between two data-retransmit or RTO records of one flow, in milliseconds
    /// (every one is counted in the flow and reaches the metrics with its next record).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub report_interval_ms: u64,
    /// A record for every hook hit of these flows, not only summaries and exceptions: `all`,
    /// `off`, or filters like `peer=10.0.0.5:443`, `port=8080`, `cookie=0x1f`,
    /// `cgroup=/sys/fs/cgroup/…` (comma-separated, all must match)
    /// [default: `all` for trace, `off` for the daemon].
    #[arg(long, value_name = "all|off|KEY=VALUE,…", value_parser = parse_detail)]
    pub detail: Option<crate::kernel::detail::DetailSpec>,
    /// Where the kernel keeps per-flow state: `auto` (socket storage where the kernel allows
    /// it, else an LRU map) or `lru` (the map even where socket storage works: to compare, or
    /// to work around a kernel problem).
    #[arg(long, value_enum, default_value_t = FlowStore::Auto)]
    pub flow_store: FlowStore,
    /// Backup programs for the hits the kernel skips a probe for (the probe was already running
    /// on that CPU, preempted or interrupted): `auto` attaches them when the kernel first skips
    /// one, `always` at start, `never` not at all.
    #[arg(long, value_enum, default_value_t = crate::kernel::backups::BackupMode::Auto)]
    pub backup_probes: crate::kernel::backups::BackupMode,
}

/// `--flow-store`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowStore {
    Auto,
    Lru,
}

fn parse_detail(s: &str) -> Result<crate::kernel::detail::DetailSpec, String> {
    crate::kernel::detail::DetailSpec::parse(s)
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of bytes"))?;
    if v < 4096 || !v.is_power_of_two() {
        return Err(format!(
            "{v} is not a power of two of at least 4096 (the kernel requires it); try 4194304"
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ring_bytes_must_be_power_of_two() {
        assert_eq!(parse_ring_bytes("8192"), Ok(8192));
        assert!(parse_ring_bytes("5000")
            .unwrap_err()
            .contains("power of two"));
        assert!(parse_ring_bytes("1024").is_err());
        assert!(parse_ring_bytes("lots")
            .unwrap_err()
            .contains("not a whole number"));
    }

    #[test]
    fn metrics_addr_is_an_address_or_off() {
        assert_eq!(parse_metrics_addr("off"), Ok(MetricsAddr(None)));
        assert_eq!(
            parse_metrics_addr("127.0.0.1:9476"),
            Ok(MetricsAddr(Some("127.0.0.1:9476".parse().unwrap())))
        );
        assert!(parse_metrics_addr("localhost:9476")
            .unwrap_err()
            .contains("HOST:PORT"));
        let cli = Cli::try_parse_from(["linkprobe", "daemon"]).unwrap();
        let Command::Daemon(args) = cli.command else {
            panic!("expected daemon");
        };
        assert_eq!(
            args.metrics_addr,
            MetricsAddr(Some(DEFAULT_METRICS_ADDR.parse().unwrap()))
        );
    }

    /// The exporter names every tenant's peers: loopback by default, and deploy/ reaches it
    /// only through the authenticating proxy, the kubelet's probes on the loopback.
    #[test]
    fn metrics_default_to_loopback_and_deploy_exposes_them_only_through_the_proxy() {
        let default: SocketAddr = DEFAULT_METRICS_ADDR.parse().unwrap();
        assert!(default.ip().is_loopback(), "{default}");
        let deploy = |f: &str| {
            std::fs::read_to_string(format!(
                "{}/../deploy/kubernetes/{f}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let ds = deploy("daemonset.yaml");
        for needed in [
            format!("\"--metrics-addr\", \"{DEFAULT_METRICS_ADDR}\""),
            format!("--upstream=http://{DEFAULT_METRICS_ADDR}/"),
            format!(
                "httpGet: {{host: {}, path: /healthz, port: {}}}",
                default.ip(),
                default.port()
            ),
            format!(
                "httpGet: {{host: {}, path: /readyz, port: {}}}",
                default.ip(),
                default.port()
            ),
            "name: https-metrics".to_owned(),
            "serviceAccountName: linkprobe".to_owned(),
        ] {
            assert!(
                ds.contains(&needed),
                "deploy/kubernetes/daemonset.yaml lacks {needed}"
            );
        }
        assert!(!ds.contains("0.0.0.0") && !ds.contains("prometheus.io/scrape"));
        let pm = deploy("podmonitor/podmonitor.yaml");
        for needed in [
            "port: https-metrics",
            "scheme: https",
            "type: Bearer",
            "linkprobe-scraper-token",
        ] {
            assert!(
                pm.contains(needed),
                "deploy/kubernetes/podmonitor/podmonitor.yaml lacks {needed}"
            );
        }
        let rbac = deploy("rbac.yaml");
        for needed in [
            "tokenreviews",
            "subjectaccessreviews",
            "nonResourceURLs: [/metrics]",
            "name: linkprobe-scraper-token",
        ] {
            assert!(rbac.contains(needed), "deploy/rbac.yaml lacks {needed}");
        }
    }

    #[test]
    fn parses_probes_flags() {
        let cli = Cli::try_parse_from(["linkprobe", "probes", "-o", "json", "--strict"]).unwrap();
        let Command::Probes(args) = cli.command else {
            panic!("expected probes");
        };
        assert_eq!(args.output, ProbesView::Json);
        assert!(args.strict);
    }

    #[test]
    fn parses_trace_flags() {
        let cli =
            Cli::try_parse_from(["linkprobe", "trace", "-o", "json", "--netns", "blue"]).unwrap();
        let Command::Trace(args) = cli.command else {
            panic!("expected trace");
        };
        assert_eq!(args.output, Format::Json);
        assert_eq!(args.netns.as_deref(), Some("blue"));
    }

    #[test]
    fn parses_cli_commands() {
        let cli = Cli::try_parse_from([
            "linkprobe",
            "flows",
            "--peer",
            "10.0.0.5:80",
            "--failed",
            "--since",
            "5m",
            "--sort",
            "retrans",
            "-o",
            "wide",
            "--socket",
            "/tmp/x.sock",
        ])
        .unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
        let Command::Flows(f) = cli.command else {
            panic!("expected flows");
        };
        assert_eq!(f.filter.since, Some(300_000));
        assert!(f.filter.failed);
        assert_eq!(f.sort, SortKey::Retrans);
        assert_eq!(f.output, View::Wide);
        assert_eq!(parse_cookie("0x10"), Ok(16));
        assert_eq!(parse_cookie("16"), Ok(16));
        assert!(parse_cookie("x").is_err());
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert!(parse_duration_ms("5 parsecs").is_err());
        // Usage errors are clap errors (exit code 2).
        let e = Cli::try_parse_from(["linkprobe", "flows", "--sort", "bogus"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = Cli::try_parse_from(["linkprobe", "flows", "--peer", "nope"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = Cli::try_parse_from(["linkprobe", "watch", "--state", "FLYING"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(Cli::try_parse_from(["linkprobe", "watch", "--state", "syn_sent"]).is_ok());
    }
}
