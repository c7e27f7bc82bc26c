//! `build`, `run`, `test` and `clippy`: cargo invocations, each after the set-up.
use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Result};

use crate::{
    cmd::{cargo, exec, is_root, run, run_tee, target_dir, workspace_root},
    container, fuzz, libtest,
    setup::{self, EBPF_TOOLCHAIN},
    validate, vm,
};

/// `target/<profile>/linkprobe`.
pub fn linkprobe_bin(release: bool) -> PathBuf {
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join("linkprobe")
}

/// `cargo build -p probe-user`; its build.rs builds the eBPF object with the pinned nightly.
pub fn build(release: bool) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "-p", "probe-user"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)
}

/// Set-up, build, then replace this process with `linkprobe daemon ARGS...`, so signals and
/// the exit status are the daemon's own.
pub fn run_daemon(release: bool, args: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "`linkprobe daemon` loads eBPF programs and attaches them to the kernel, which needs \
             root: run `sudo -E cargo xtask run` (or `cargo xtask build` to only build)"
        );
    }
    setup::setup()?;
    build(release)?;
    Err(exec(
        Command::new(linkprobe_bin(release))
            .arg("daemon")
            .args(args),
    ))
}

/// Set by `--unit-only` for the tests: a real-kernel test that cannot run then returns early
/// instead of failing (probe-user/tests/kernel/common reads it).
const UNIT_ONLY_ENV: &str = "LINKPROBE_UNIT_ONLY";

/// Set-up, then every test of the default members (probe-ebpf is not one: it only builds for
/// the eBPF target, through probe-user/build.rs), the deployment files' validation, the
/// container suite, a short fuzz run of every target, then (as
/// root, for the full suite) the kernel matrix on [`vm::TEST_KERNELS`]. A failing `cargo test` exit code is passed on. Not
/// root is an error unless `unit_only`: the real-kernel tests would not run, and a suite that
/// passes without them proves nothing.
pub fn test(args: &[String], no_vm: bool, unit_only: bool) -> Result<()> {
    if !is_root() && !unit_only {
        bail!(
            "not root: the real-kernel tests (eBPF loading, network namespaces) cannot run; run \
             `sudo -E cargo xtask test` for the full suite, or `cargo xtask test --unit-only` \
             for the unit tests alone"
        );
    }
    setup::setup()?;
    let mut cargo_test = cargo();
    cargo_test.args(["test", "--no-fail-fast"]).args(args);
    if unit_only {
        println!("[test] unit tests only: real-kernel tests return early where they cannot run");
        cargo_test.env(UNIT_ONLY_ENV, "1");
    }
    let (host, host_out) = run_tee(&mut cargo_test);
    // Never skipped: a missing validator is an error (set-up installs them).
    println!("[test] deployment files: cargo xtask validate");
    let started = Instant::now();
    let validated = validate::validate();
    println!(
        "[test] deployment files: {} in {:.1}s",
        if validated.is_ok() {
            "valid"
        } else {
            "INVALID"
        },
        started.elapsed().as_secs_f64()
    );
    let contained = if args.is_empty() && !unit_only {
        println!(
            "[test] container: the image run as the DaemonSet runs it (cargo xtask container-test)"
        );
        let start = Instant::now();
        let r = container::suite::run();
        println!(
            "[test] container: {} in {:.0}s",
            if r.is_ok() { "passed" } else { "FAILED" },
            start.elapsed().as_secs_f64()
        );
        Some(r)
    } else {
        println!("[test] container: skipped (--unit-only or test arguments given)");
        None
    };
    let fuzzed = if args.is_empty() && !unit_only {
        println!(
            "[test] fuzz: {} s per target (cargo xtask fuzz --seconds {})",
            fuzz::SHORT_RUN_SECONDS,
            fuzz::SHORT_RUN_SECONDS
        );
        Some(fuzz::fuzz(fuzz::SHORT_RUN_SECONDS, &[]).map(drop))
    } else {
        println!("[test] fuzz: skipped (--unit-only or test arguments given)");
        None
    };
    let matrix = if no_vm || unit_only || !args.is_empty() {
        println!("[test] kernel matrix: skipped (--no-vm, --unit-only or test arguments given)");
        None
    } else {
        println!(
            "[test] kernel matrix: {} (cargo xtask vm --kernels {})",
            vm::TEST_KERNELS.join(", "),
            vm::TEST_KERNELS.join(",")
        );
        let start = Instant::now();
        let r = vm::vm(&vm::VmArgs::for_test());
        println!(
            "[test] kernel matrix: {} in {:.0}s",
            if r.is_ok() { "passed" } else { "FAILED" },
            start.elapsed().as_secs_f64()
        );
        Some(r)
    };
    summary(&[
        ("host tests", Some(&host)),
        ("deployment files", Some(&validated)),
        ("container", contained.as_ref()),
        ("fuzz", fuzzed.as_ref()),
        ("kernel matrix", matrix.as_ref()),
    ]);
    if host.is_err() {
        print_host_failures(&host_out);
    }
    let ran = |step: Option<Result<()>>| step.unwrap_or(Ok(()));
    host.and(validated)
        .and(ran(contained))
        .and(ran(fuzzed))
        .and(ran(matrix))
}

/// One line per step at the very end (`None`: skipped): CI keeps only the tail of the output.
fn summary(steps: &[(&str, Option<&Result<()>>)]) {
    println!("[test] summary:");
    for (step, r) in steps {
        match r {
            None => println!("[test]   {step}: skipped"),
            Some(Ok(())) => println!("[test]   {step}: ok"),
            Some(Err(e)) => println!("[test]   {step}: FAILED: {e:#}"),
        }
    }
}

/// The host's failed tests again, with their panic messages, after everything else.
fn print_host_failures(out: &str) {
    let failed: Vec<String> = libtest::parse(out)
        .tests
        .into_iter()
        .filter(|t| t.outcome == libtest::Outcome::Failed)
        .map(|t| t.name)
        .collect();
    println!("[test] host tests that failed: {}", failed.len());
    let excerpts = libtest::failure_excerpts(out);
    for name in failed {
        println!("[test]   FAILED {name}");
        if let Some((_, text)) = excerpts.iter().find(|(n, _)| *n == name) {
            for line in text.lines() {
                println!("[test]       {line}");
            }
        }
    }
}

/// Clippy with `-D warnings`: the host crates, then the eBPF crate with the pinned nightly for
/// its own target (separate target dir, so the two builds do not invalidate each other).
pub fn clippy() -> Result<()> {
    setup::setup()?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    run(Command::new("rustup")
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", target_dir().join("ebpf-clippy"))
        .args(["run", EBPF_TOOLCHAIN, "cargo", "clippy", "-p", "probe-ebpf"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"]))
}
