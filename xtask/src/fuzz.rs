//! `cargo xtask fuzz`: the decoders of hostile input (ring records, API requests, tracefs
//! format files, BTF, sock_diag datagrams, proxy access logs) under libFuzzer, through cargo-fuzz on the nightly
//! toolchain (`fuzz/`, targets over `probe_user::fuzzing`). Each target starts from its seeds
//! in `fuzz/seeds/<target>` and grows a corpus of its own in `target/fuzz/corpus/<target>`;
//! a crash leaves its input in `target/fuzz/artifacts/<target>/` and fails the run.
use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{run, target_dir, workspace_root},
    setup::{self, FUZZ_TOOLCHAIN},
};

/// Seconds per target of the short run in `cargo xtask test`.
pub const SHORT_RUN_SECONDS: u32 = 15;

/// Each target and the largest input worth trying (libFuzzer's `-max_len`): a ring record is
/// 272 bytes, an API request line at most 64 KiB, a format file a few KiB, BTF seeds 64 KiB, a
/// sock_diag datagram at most the daemon's 32 KiB receive buffer, access-log text a few lines.
pub const TARGETS: &[(&str, u32)] = &[
    ("ring_record", 1024),
    ("api_request", 4096),
    ("tracefs_format", 16 * 1024),
    ("btf", 128 * 1024),
    ("sock_diag_datagram", 32 * 1024),
    ("access_log", 16 * 1024),
];

/// What one target's run did.
pub struct FuzzRun {
    pub target: &'static str,
    pub executions: u64,
    pub crashes: usize,
    pub seconds: f64,
}

/// Builds every target once, then runs `targets` (all when empty) for `seconds` each; prints
/// executions and crashes per target; fails when any target crashed.
pub fn fuzz(seconds: u32, targets: &[String]) -> Result<Vec<FuzzRun>> {
    setup::fuzz_tools()?;
    let chosen: Vec<(&'static str, u32)> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets
            .iter()
            .map(|t| {
                TARGETS
                    .iter()
                    .copied()
                    .find(|(name, _)| name == t)
                    .with_context(|| {
                        format!(
                            "no fuzz target {t:?}; the targets are {}",
                            TARGETS
                                .iter()
                                .map(|(n, _)| *n)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
            })
            .collect::<Result<_>>()?
    };
    run(cargo_fuzz().args(["build", "--sanitizer", "none"]))?;
    let mut runs = Vec::new();
    for (target, max_len) in chosen {
        runs.push(run_target(target, max_len, seconds)?);
    }
    println!(
        "[fuzz] {:<20} {:>12} {:>8} {:>6}",
        "target", "executions", "crashes", "secs"
    );
    for r in &runs {
        println!(
            "[fuzz] {:<20} {:>12} {:>8} {:>6.0}",
            r.target, r.executions, r.crashes, r.seconds
        );
    }
    let crashed: Vec<&str> = runs
        .iter()
        .filter(|r| r.crashes > 0)
        .map(|r| r.target)
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz targets crashed: {} (inputs in {})",
            crashed.join(", "),
            fuzz_dir().join("artifacts").display()
        );
    }
    Ok(runs)
}

/// `target/fuzz`: corpora and crash inputs.
fn fuzz_dir() -> PathBuf {
    target_dir().join("fuzz")
}

/// `rustup run nightly cargo fuzz …` in the workspace root.
fn cargo_fuzz() -> Command {
    let mut c = Command::new("rustup");
    c.current_dir(workspace_root())
        .args(["run", FUZZ_TOOLCHAIN, "cargo", "fuzz"]);
    c
}

fn run_target(target: &'static str, max_len: u32, seconds: u32) -> Result<FuzzRun> {
    let corpus = fuzz_dir().join("corpus").join(target);
    let artifacts = fuzz_dir().join("artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let crashes_before = count_files(&artifacts);
    let seeds = workspace_root().join("fuzz/seeds").join(target);
    let mut cmd = cargo_fuzz();
    cmd.args(["run", "--sanitizer", "none", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={max_len}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1");
    println!("[fuzz] {target}: {seconds} s");
    let start = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot start cargo fuzz run {target}"))?;
    let seconds = start.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    let executions = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let crashes = count_files(&artifacts) - crashes_before;
    if !out.status.success() || crashes > 0 {
        // libFuzzer's report (the panic, the input's path) is at the end of its log.
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        for line in tail.into_iter().rev() {
            eprintln!("[fuzz {target}] {line}");
        }
        if crashes == 0 {
            bail!(
                "cargo fuzz run {target} failed with {} and left no input",
                out.status
            );
        }
    }
    Ok(FuzzRun {
        target,
        executions,
        crashes,
        seconds,
    })
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.filter_map(Result::ok).count())
}
