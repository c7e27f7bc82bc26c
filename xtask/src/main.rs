//! Developer tasks: `cargo xtask setup | build | run | test | clippy | bench | vm`.
//! Everything but `setup` does the (idempotent) set-up first, so a fresh clone on a Debian 12
//! machine needs nothing else.
mod bench;
mod bench_scrape;
mod cargo_cmds;
mod cmd;
mod linker;
mod netns;
mod setup;
mod tracer;
mod vm;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::cmd::CommandFailed;

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
    /// Set-up, then every test: unit tests and the real-kernel tests (these need root), then
    /// the kernel matrix on Debian 12's 6.1 and the newest Debian kernel (`vm`, as root, when
    /// no test arguments are given).
    Test {
        /// Skip the kernel matrix.
        #[arg(long)]
        no_vm: bool,
        /// Arguments for `cargo test` (e.g. `-- --test kernel -- --nocapture`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set-up, then clippy with -D warnings for the host crates and for the eBPF crate.
    Clippy,
    /// Probe overhead on connection churn, as ratios against a baseline measured in the same
    /// run, then /metrics scrape latency idle and under churn (needs root).
    Bench {
        /// Connections per measurement.
        #[arg(
            long,
            default_value_t = bench::DEFAULT_COUNT,
            value_parser = clap::value_parser!(u32).range(1..=i64::from(bench::MAX_COUNT))
        )]
        count: u32,
        /// GET /metrics requests per scrape-latency measurement (idle, then under load).
        #[arg(
            long,
            default_value_t = bench_scrape::DEFAULT_SCRAPES,
            value_parser = clap::value_parser!(u32).range(10..=10_000)
        )]
        scrapes: u32,
    },
    /// Kernel matrix: boot Debian cloud kernels under qemu/KVM and run `linkprobe probes`, the
    /// real-kernel tests and the unit tests inside each (needs root and /dev/kvm); results in
    /// target/vm/results, the README's kernel table regenerated from them.
    Vm(vm::VmArgs),
    /// (internal) The connection-churn loop `bench` runs inside its namespace.
    #[command(hide = true)]
    BenchWorker {
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
        Task::Test { args, no_vm } => cargo_cmds::test(&args, no_vm),
        Task::Clippy => cargo_cmds::clippy(),
        Task::Vm(args) => {
            setup::setup()?;
            vm::vm(&args)
        }
        Task::Bench { count, scrapes } => bench::bench(count, scrapes),
        Task::BenchWorker { count } => bench::worker(count),
        Task::BenchRefused { peers } => bench_scrape::refused(peers),
    }
}
