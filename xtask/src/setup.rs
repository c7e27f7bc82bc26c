//! `cargo xtask setup`: everything a fresh Debian machine needs to build and test linkprobe.
//! Idempotent: each step checks first and says `already ok`; a second run takes seconds.
use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{capture, is_root, run, stdout_of};

/// The dated nightly for the eBPF build. Its LLVM major must equal bpf-linker's.
/// probe-user/build.rs names the same toolchain.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";
/// LLVM major that bpf-linker is built against (the apt packages below provide it).
const LLVM_MAJOR: u32 = 22;

/// Debian packages, each with why it is needed.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    ("libpolly-22-dev", "LLVM 22's cmake config references Polly"),
    ("libzstd-dev", "LLVM 22 links zstd"),
    ("zlib1g-dev", "LLVM 22 links zlib"),
    (
        "nftables",
        "tests drop and reject packets in their namespaces",
    ),
    (
        "iproute2",
        "tests create network namespaces (ip) and read counters (nstat)",
    ),
    (
        "bpftool",
        "the clean-detach test lists loaded programs and cgroup attachments",
    ),
];

fn step(name: &str, f: impl FnOnce() -> Result<StepOutcome>) -> Result<()> {
    let start = Instant::now();
    match f().with_context(|| format!("set-up step `{name}` failed"))? {
        StepOutcome::AlreadyOk(detail) => println!("[setup] {name}: already ok{detail}"),
        StepOutcome::Done => println!(
            "[setup] {name}: done in {:.1}s",
            start.elapsed().as_secs_f64()
        ),
    }
    Ok(())
}

enum StepOutcome {
    AlreadyOk(String),
    Done,
}

pub fn setup() -> Result<()> {
    let start = Instant::now();
    if !is_root() {
        println!(
            "[setup] warning: not root; apt packages cannot be installed and the real-kernel \
             tests will skip"
        );
    }
    step("host rustfmt + clippy", host_components)?;
    step(
        &format!("eBPF toolchain {EBPF_TOOLCHAIN} + rust-src + clippy"),
        ebpf_toolchain,
    )?;
    step("apt packages", apt_packages)?;
    step(&format!("bpf-linker (LLVM {LLVM_MAJOR})"), bpf_linker)?;
    step("LLVM majors agree", llvm_majors_agree)?;
    kernel_report();
    println!("[setup] complete in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn installed_components(toolchain: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "list", "--installed"]);
    if let Some(t) = toolchain {
        cmd.args(["--toolchain", t]);
    }
    stdout_of(&mut cmd)
}

fn host_components() -> Result<StepOutcome> {
    let have = installed_components(None)?;
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !have.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok(StepOutcome::AlreadyOk(String::new()));
    }
    run(Command::new("rustup")
        .args(["component", "add"])
        .args(&missing))?;
    Ok(StepOutcome::Done)
}

fn ebpf_toolchain() -> Result<StepOutcome> {
    let toolchains = stdout_of(Command::new("rustup").args(["toolchain", "list"]))?;
    if toolchains.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN)) {
        let have = installed_components(Some(EBPF_TOOLCHAIN))?;
        let missing: Vec<&str> = ["rust-src", "clippy"]
            .into_iter()
            .filter(|c| !have.lines().any(|l| l.starts_with(c)))
            .collect();
        if missing.is_empty() {
            return Ok(StepOutcome::AlreadyOk(String::new()));
        }
        run(Command::new("rustup")
            .args(["component", "add", "--toolchain", EBPF_TOOLCHAIN])
            .args(&missing))?;
        return Ok(StepOutcome::Done);
    }
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
        "--component",
        "clippy",
    ]))?;
    Ok(StepOutcome::Done)
}

fn apt_installed(pkg: &str) -> bool {
    capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_packages() -> Result<StepOutcome> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !apt_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(StepOutcome::AlreadyOk(String::new()));
    }
    for (pkg, why) in APT_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        println!("[setup]   missing {pkg}: {why}");
    }
    if !is_root() {
        bail!(
            "installing {} needs root: run `cargo xtask setup` as root",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing))?;
    Ok(StepOutcome::Done)
}

/// LLVM major of the libLLVM an installed bpf-linker is linked against (built with
/// `LLVM_PREFIX`, it links the shared library dynamically).
fn bpf_linker_llvm_major() -> Option<u32> {
    let path = stdout_of(Command::new("sh").args(["-c", "command -v bpf-linker"])).ok()?;
    let ldd = stdout_of(Command::new("ldd").arg(path.trim())).ok()?;
    ldd.lines()
        .find_map(|l| l.trim().strip_prefix("libLLVM.so."))
        .or_else(|| ldd.lines().find_map(|l| l.trim().strip_prefix("libLLVM-")))
        .and_then(|rest| rest.split(['.', ' ']).next()?.parse().ok())
}

fn bpf_linker() -> Result<StepOutcome> {
    if let Some(major) = bpf_linker_llvm_major() {
        if major == LLVM_MAJOR {
            return Ok(StepOutcome::AlreadyOk(format!(
                " (linked against libLLVM {major})"
            )));
        }
        println!(
            "[setup]   bpf-linker is linked against LLVM {major}; rebuilding for {LLVM_MAJOR}"
        );
    }
    let prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    if !Path::new(&prefix).exists() {
        bail!("{prefix} is missing: the apt step should have installed llvm-{LLVM_MAJOR}-dev");
    }
    let path = format!("{prefix}/bin:{}", std::env::var("PATH").unwrap_or_default());
    run(Command::new("cargo")
        .env("LLVM_PREFIX", &prefix)
        .env("PATH", path)
        .args([
            "install",
            "bpf-linker",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
        ]))?;
    Ok(StepOutcome::Done)
}

fn llvm_majors_agree() -> Result<StepOutcome> {
    let vv = stdout_of(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "-vV"]))?;
    let rustc_major: u32 = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next()?.parse().ok())
        .context("`rustc -vV` of the eBPF toolchain printed no LLVM version")?;
    let linker_major = bpf_linker_llvm_major()
        .context("cannot tell which LLVM bpf-linker uses (ldd shows no libLLVM)")?;
    if rustc_major != linker_major {
        bail!(
            "{EBPF_TOOLCHAIN} uses LLVM {rustc_major} but bpf-linker uses LLVM {linker_major}; \
             pick a nightly whose LLVM major is {linker_major} (EBPF_TOOLCHAIN in xtask and \
             probe-user/build.rs) or rebuild bpf-linker for LLVM {rustc_major}"
        );
    }
    Ok(StepOutcome::AlreadyOk(format!(
        " (both LLVM {rustc_major})"
    )))
}

/// What the kernel offers; informational, since only the tests and the daemon need it.
fn kernel_report() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let cgroup2 = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned));
    println!(
        "[setup] kernel {} | BTF: {} | cgroup2: {}",
        release.trim(),
        if btf {
            "yes"
        } else {
            "MISSING (linkprobe needs CONFIG_DEBUG_INFO_BTF)"
        },
        cgroup2.as_deref().unwrap_or("not mounted")
    );
}
