//! Developer tasks: `cargo xtask setup | build | run | test | clippy | bench`.
//! `run` and `test` do all set-up first, so a fresh clone needs nothing else.
mod bench;
mod cmd;
mod setup;

use std::process::Command;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::cmd::{is_root, run, workspace_root};

#[derive(Parser)]
#[command(name = "xtask", about = "linkprobe developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: eBPF toolchain, apt packages, bpf-linker (idempotent).
    Setup,
    /// Set-up, then build linkprobe (the eBPF object is built by probe-user/build.rs).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set-up, build (release) and start `linkprobe daemon ARGS...` (needs root).
    Run {
        /// Arguments for `linkprobe daemon`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set-up, then every test: unit tests and the real-kernel tests (these need root).
    Test {
        /// Arguments for `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Clippy with -D warnings for the host crates and for the eBPF crate.
    Clippy,
    /// Probe overhead on connection churn, as ratios against a baseline measured in the same run.
    Bench {
        /// Connections per measurement (at most 100000).
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(100..=100_000))]
        count: u32,
    },
    /// (internal) The connection-churn loop `bench` runs inside its namespace.
    #[command(hide = true)]
    BenchWorker {
        #[arg(long)]
        count: u32,
    },
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn build(release: bool) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "-p", "probe-user"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Build { release } => {
            setup::setup()?;
            build(release)
        }
        Task::Run { args } => {
            setup::setup()?;
            build(true)?;
            if !is_root() {
                bail!("linkprobe loads eBPF programs: run `cargo xtask run` as root");
            }
            let bin = workspace_root().join("target/release/linkprobe");
            run(Command::new(bin).arg("daemon").args(args))
        }
        Task::Test { args } => {
            setup::setup()?;
            if !is_root() {
                println!("[test] warning: not root, the real-kernel tests will skip");
            }
            run(cargo().args(["test", "--no-fail-fast"]).args(args))
        }
        Task::Clippy => {
            run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
            run(Command::new("rustup")
                .current_dir(workspace_root())
                .env(
                    "CARGO_TARGET_DIR",
                    workspace_root().join("target/ebpf-clippy"),
                )
                .args([
                    "run",
                    setup::EBPF_TOOLCHAIN,
                    "cargo",
                    "clippy",
                    "-p",
                    "probe-ebpf",
                ])
                .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
                .args(["--", "-D", "warnings"]))
        }
        Task::Bench { count } => {
            setup::setup()?;
            build(true)?;
            bench::bench(count)
        }
        Task::BenchWorker { count } => bench::worker(count),
    }
}
