//! Command-line interface (clap). `main.rs` dispatches on [`Command`].
use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "linkprobe",
    version,
    about = "eBPF TCP link tracer: connects, retransmits and resets of every flow, tagged by socket cookie"
)]
pub struct Cli {
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
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Directory for the daemon's lock (and later its API socket).
    #[arg(long, default_value = "/run/linkprobe")]
    pub run_dir: PathBuf,
    /// Serve /metrics, /healthz and /readyz on HOST:PORT (Prometheus scrapes it); `off` for none.
    #[arg(
        long,
        value_name = "HOST:PORT|off",
        default_value = crate::exporter::DEFAULT_ADDR,
        value_parser = parse_metrics_addr
    )]
    pub metrics_addr: MetricsAddr,
}

/// Where the exporter listens, if anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s == "off" {
        return Ok(MetricsAddr(None));
    }
    s.parse().map(|a| MetricsAddr(Some(a))).map_err(|_| {
        format!("{s:?} is not HOST:PORT with an IP address (e.g. 0.0.0.0:9476 or 127.0.0.1:9476), nor `off`")
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
    /// Minimum gap between two RTT records of one flow, in milliseconds (all RTT callbacks are counted).
    #[arg(long, default_value_t = 1000)]
    pub rtt_sample_ms: u64,
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
            MetricsAddr(Some(crate::exporter::DEFAULT_ADDR.parse().unwrap()))
        );
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
}
