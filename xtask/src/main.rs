//! Developer tasks: `cargo xtask setup | build | run | test | validate | clippy | bench | vm |
//! image | seccomp | container-test`.
//! Everything but `setup` does the (idempotent) set-up first, so a fresh clone on a Debian 12
//! machine needs nothing else.
mod bench;
mod cargo_cmds;
mod cmd;
mod container;
mod fuzz;
mod libtest;
mod linker;
mod modgraph;
mod procstat;
mod setup;
mod validate;
mod vm;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::{
    bench::plan::{tracers_with_baseline, unique_workloads, BenchOptions, TracerKind, Workload},
    cmd::CommandFailed,
};

#[derive(Parser)]
#[command(name = "xtask", about = "linkprobe developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: rustup components, the pinned eBPF nightly, apt packages,
    /// bpf-linker on LLVM 22 (idempotent; a second run only checks).
    Setup,
    /// Set-up, then build linkprobe (the eBPF object is built by probe-user/build.rs).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set-up, build and start `linkprobe daemon ARGS...` (needs root).
    Run {
        /// Release build (the default).
        #[arg(long, conflicts_with = "debug")]
        release: bool,
        /// Debug build instead of release.
        #[arg(long)]
        debug: bool,
        /// Arguments for `linkprobe daemon`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set-up, then every test: unit tests and the real-kernel tests (these need root), the
    /// deployment files' validation (`validate`), the container suite (`container-test`) and a
    /// 15 s fuzz run per target (no test arguments
    /// given), then the kernel matrix on Debian 12's 6.1 and the newest Debian kernel (`vm`, as root, when
    /// no test arguments are given).
    Test {
        /// Skip the kernel matrix.
        #[arg(long)]
        no_vm: bool,
        /// Unit tests only: the real-kernel tests return early instead of failing where they
        /// cannot run (not root), and no kernel matrix.
        #[arg(long)]
        unit_only: bool,
        /// Arguments for `cargo test` (e.g. `-- --test kernel -- --nocapture`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set-up, then check the deployment files as `cargo xtask test` does: the rendered
    /// deploy/kubernetes (kubernetes-validate --strict on the oldest and newest Kubernetes it
    /// knows, the Prometheus Operator kinds against their CRD schemas, least privilege, RBAC),
    /// yamllint, promtool on the rules, the dashboard's metric names.
    Validate,
    /// Set-up, then clippy with -D warnings for the host crates and for the eBPF crate.
    Clippy,
    /// Tracing cost on connection churn, side by side in one run: no tracer (baseline),
    /// linkprobe's daemon, bpftrace and tcplife, in interleaved rounds on the same workloads;
    /// then memory at 65,536 flows, a BPF profile when a target is missed, and /metrics scrape
    /// latency (needs root). Writes a table, target/bench/bench.json and target/bench/bench.png.
    Bench(BenchArgs),
    /// The decoders of hostile input under libFuzzer (cargo-fuzz, nightly; installed on first
    /// use): ring records, API requests, tracefs format files, BTF, sock_diag datagrams, proxy
    /// access logs. Prints
    /// executions and crashes per target; fails on a crash (its input in target/fuzz/artifacts).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
        seconds: u32,
        /// Only these targets (repeatable); default: all.
        #[arg(long = "target")]
        targets: Vec<String>,
    },
    /// Kernel matrix: boot Debian cloud kernels under qemu (KVM where it boots them, else
    /// emulation) and run `linkprobe probes`, the real-kernel tests and the unit tests inside
    /// each (needs root); results in target/vm/results, the README's kernel table regenerated
    /// from them.
    Vm(vm::VmArgs),
    /// The import graph of each crate's modules: prints its circles (modules that name each
    /// other's items, directly or around a loop); fails when there is one. Default: probe-user,
    /// probe-common, testkit and xtask.
    Modgraph {
        /// Crate source directories (`…/src`).
        srcs: Vec<PathBuf>,
        /// Fold modules into their ancestors this many segments deep (1: top-level modules
        /// and folders) before looking for circles.
        #[arg(long)]
        depth: Option<usize>,
        /// Also print every edge.
        #[arg(long)]
        edges: bool,
    },
    /// Set-up, release build, then the runtime image without a registry: the binary, the
    /// shared libraries `ldd` lists and the loader in an otherwise empty image (`FROM
    /// scratch`), built with podman as `localhost/linkprobe:<version>` (needs root).
    Image {
        /// Only stage the image's root filesystem into this new or empty directory (what
        /// deploy/Containerfile's build stage runs); no podman.
        #[arg(long, value_name = "DIR")]
        rootfs_only: Option<PathBuf>,
    },
    /// Write deploy/seccomp/linkprobe.json: podman's default seccomp profile (the pinned
    /// containers-common 0.50.1 one) plus `bpf` under CAP_BPF and `perf_event_open` under
    /// CAP_PERFMON.
    Seccomp {
        /// Derive from this profile instead of the pinned one (e.g.
        /// /usr/share/containers/seccomp.json of a newer containers-common).
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        /// Fail if the file is not what would be written.
        #[arg(long)]
        check: bool,
    },
    /// The image (built first) run as deploy/kubernetes/daemonset.yaml runs it: every probe
    /// attaches, /readyz, a workload's flows through `podman exec … linkprobe flows`; and the
    /// kernel's refusals with fewer capabilities (needs root and podman).
    ContainerTest,
    /// (internal) One workload run inside the bench namespace; prints one JSON line.
    #[command(hide = true)]
    BenchWorker {
        #[arg(long, value_enum)]
        workload: Workload,
        #[arg(long)]
        count: u32,
    },
    /// (internal) Refused connects to port 9 of `peers` distinct loopback addresses, inside
    /// the bench namespace: distinct peers that fill the exporter's label budget.
    #[command(hide = true)]
    BenchRefused {
        #[arg(long)]
        peers: u32,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Connections per measurement (one workload, one tracer, one round).
    #[arg(
        long,
        default_value_t = bench::DEFAULT_COUNT,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(bench::MAX_COUNT))
    )]
    count: u32,
    /// Rounds; every figure is the median over them.
    #[arg(long, default_value_t = bench::DEFAULT_ROUNDS, value_parser = clap::value_parser!(u64).range(1..=50))]
    rounds: u64,
    /// Workloads, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Workload::ALL)]
    workloads: Vec<Workload>,
    /// Tracers, comma-separated (`none`, the baseline, is always measured).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = TracerKind::ALL)]
    tracers: Vec<TracerKind>,
    /// Connections of the flow-table phase (memory with the table full); 0 skips it.
    #[arg(long, default_value_t = bench::DEFAULT_FILL_CONNECTIONS)]
    fill_connections: u32,
    /// GET /metrics requests per scrape-latency measurement (idle, then under load).
    #[arg(
        long,
        default_value_t = bench::scrape::DEFAULT_SCRAPES,
        value_parser = clap::value_parser!(u32).range(10..=10_000)
    )]
    scrapes: u32,
    /// Skip the scrape-latency phase.
    #[arg(long)]
    skip_scrape: bool,
    /// Skip the BPF profile that runs when a target is missed.
    #[arg(long)]
    skip_profile: bool,
    /// Where to write the JSON results [default: target/bench/bench.json].
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where to write the PNG chart [default: target/bench/bench.png].
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Also copy the chart to docs/bench.png, the one the README shows.
    #[arg(long)]
    update_docs: bool,
    /// Only the soak: the daemon under mixed load for --minutes, its RSS, descriptors and
    /// threads sampled (flat after warm-up?) and its counts checked against nstat at the end.
    #[arg(long)]
    soak: bool,
    /// Length of the soak.
    #[arg(
        long,
        requires = "soak",
        default_value_t = bench::DEFAULT_SOAK_MINUTES,
        value_parser = clap::value_parser!(u32).range(1..=1440)
    )]
    minutes: u32,
}

impl BenchArgs {
    fn options(self) -> BenchOptions {
        BenchOptions {
            count: self.count,
            rounds: self.rounds as usize,
            workloads: unique_workloads(&self.workloads),
            tracers: tracers_with_baseline(&self.tracers),
            fill_connections: self.fill_connections,
            scrapes: self.scrapes,
            skip_scrape: self.skip_scrape,
            skip_profile: self.skip_profile,
            json: self
                .json
                .unwrap_or_else(|| bench::out_dir().join("bench.json")),
            chart: self
                .chart
                .unwrap_or_else(|| bench::out_dir().join("bench.png")),
            update_docs: self.update_docs,
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // Pass a failed child's exit code on (e.g. `cargo test`'s 101).
            let code = e
                .chain()
                .find_map(|c| c.downcast_ref::<CommandFailed>())
                .map_or(1, CommandFailed::exit_code);
            ExitCode::from(code)
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::setup(),
        Task::Build { release } => {
            setup::setup()?;
            cargo_cmds::build(release)
        }
        Task::Run { debug, args, .. } => cargo_cmds::run_daemon(!debug, &args),
        Task::Test {
            args,
            no_vm,
            unit_only,
        } => cargo_cmds::test(&args, no_vm, unit_only),
        Task::Validate => {
            setup::setup()?;
            validate::validate()
        }
        Task::Clippy => cargo_cmds::clippy(),
        Task::Fuzz { seconds, targets } => fuzz::fuzz(seconds, &targets).map(drop),
        Task::Vm(args) => {
            setup::setup()?;
            vm::vm(&args)
        }
        Task::Image { rootfs_only } => container::image::image(rootfs_only.as_deref()),
        Task::Seccomp { from, check } => container::seccomp::regenerate(from.as_deref(), check),
        Task::ContainerTest => {
            setup::setup()?;
            container::suite::run()
        }
        Task::Modgraph { srcs, depth, edges } => {
            let srcs = if srcs.is_empty() {
                modgraph::WORKSPACE_SRCS
                    .iter()
                    .map(|s| cmd::workspace_root().join(s))
                    .collect()
            } else {
                srcs
            };
            match modgraph::report(&srcs, depth, edges)? {
                0 => Ok(()),
                n => anyhow::bail!("{n} import circle(s): see above"),
            }
        }
        Task::Bench(args) if args.soak => bench::soak(args.minutes),
        Task::Bench(args) => bench::bench(&args.options()),
        Task::BenchWorker { workload, count } => bench::worker(workload, count),
        Task::BenchRefused { peers } => bench::scrape::refused(peers),
    }
}
