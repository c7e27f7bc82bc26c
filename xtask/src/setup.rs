//! `cargo xtask setup`: everything a fresh Debian 12 machine needs to build and test linkprobe.
//! Idempotent: each step checks first and prints `already ok`, so a second run takes seconds.
//! Steps print one line each: `[setup] <step>: already ok` or `installing…` then `done in Xs`.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{capture, is_root, run, stdout_of},
    linker::{self, Linker},
    validate,
};

/// The dated nightly that builds the eBPF crate (needs rust-src for `-Z build-std=core`).
/// Its LLVM major must equal bpf-linker's. probe-user/build.rs has the same constant: change
/// both together.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";
/// The toolchain cargo-fuzz builds the fuzz targets with (its `-Z` flags need a nightly): the
/// pinned one set-up already installs, so fuzzing never pulls a moving nightly.
pub const FUZZ_TOOLCHAIN: &str = EBPF_TOOLCHAIN;
/// LLVM major of [`EBPF_TOOLCHAIN`]'s rustc; bpf-linker is built against the same one.
const LLVM_MAJOR: u32 = 22;

/// Debian packages, each with why it is needed (printed when it is missing).
const APT_PACKAGES: &[(&str, &str)] = &[
    // bpf-linker's build (llvm-sys) runs llvm-config and links libLLVM from this package.
    ("llvm-22-dev", "bpf-linker is built against LLVM 22"),
    // LLVM 22's exported build configuration references Polly's files.
    (
        "libpolly-22-dev",
        "LLVM 22's build configuration references Polly",
    ),
    // `llvm-config --system-libs` lists -lzstd and -lz for the bpf-linker link.
    ("libzstd-dev", "LLVM 22 links against zstd"),
    ("zlib1g-dev", "LLVM 22 links against zlib"),
    // Real-kernel tests drop and reject packets with `nft` rules in their namespaces.
    ("nftables", "tests drop/reject packets with nft"),
    // `ip netns` for test and bench namespaces, `nstat` for the kernel's TCP counters.
    ("iproute2", "tests and bench use ip netns; tests read nstat"),
    // The clean-detach test lists loaded programs and cgroup attachments with bpftool.
    ("bpftool", "tests check programs are detached with bpftool"),
    // The bench measures linkprobe side by side with the tools users would pick instead.
    (
        "bpftrace",
        "the bench compares linkprobe with a bpftrace one-liner on the same tracepoints",
    ),
    (
        "libbpf-tools",
        "the bench compares linkprobe with libbpf-tools' tcplife",
    ),
    // plotters draws the bench chart's text with this face (no fontconfig lookup).
    (
        "fonts-dejavu-core",
        "the bench chart's labels use DejaVu Sans",
    ),
    // `/usr/bin/prometheus` scrapes the daemon's exporter in the tests, `/usr/bin/promtool`
    // lints its exposition text. Its postinst starts a service: see `NoServiceStarts`.
    (
        "prometheus",
        "tests scrape the exporter with a real Prometheus and check it with promtool",
    ),
    // `cargo xtask vm` (the kernel matrix): boots Debian kernels under KVM…
    (
        "qemu-system-x86",
        "the kernel matrix boots Debian kernels with qemu-system-x86_64",
    ),
    // …with a root filesystem built from the mirror…
    (
        "mmdebstrap",
        "the kernel matrix builds the VM's Debian root filesystem",
    ),
    // …packed as initramfs archives…
    ("cpio", "the kernel matrix packs the VM's initramfs"),
    // …from kernel packages and indexes fetched over HTTP (Packages.xz)…
    (
        "curl",
        "the kernel matrix downloads kernel packages and indexes; the container suite's workload",
    ),
    (
        "xz-utils",
        "the kernel matrix reads the mirror's Packages.xz",
    ),
    // …whose modules it indexes with depmod and whose test binaries it strips with objcopy.
    (
        "kmod",
        "the kernel matrix indexes kernel modules with depmod",
    ),
    (
        "binutils",
        "the kernel matrix strips debug info from the VM's test binaries",
    ),
    // The incidents tests put a real proxy in front of failing upstreams (run in the
    // foreground in the test's namespace; its package's service is not started: see
    // `NoServiceStarts`).
    (
        "haproxy",
        "the incidents tests run HAProxy in front of a refused and an aborting upstream",
    ),
    // Debian's python3 makes the validators' venv (kubernetes-validate, yamllint) with it.
    (
        "python3-venv",
        "the deployment files' validators run in a Python venv",
    ),
    // `cargo xtask image` builds the runtime image with podman (its build is buildah's library,
    // no buildah binary); the container suite runs it as the DaemonSet does, as root (no
    // uidmap: rootless podman cannot load eBPF programs into the host kernel).
    (
        "podman",
        "cargo xtask image builds the image; the container suite runs it",
    ),
    // podman's runtime here: crun 1.8 refuses hybrid cgroup hierarchies.
    (
        "runc",
        "podman runs containers with runc (crun refuses hybrid cgroups)",
    ),
];

/// Installed with `--no-install-recommends`: prometheus recommends the node exporter and its
/// collector timers, which the tests do not use; qemu recommends firmware and display
/// back-ends, mmdebstrap other bootstrap tools, none of which a headless -kernel boot uses.
/// podman recommends crun, buildah, slirp4netns, fuse-overlayfs and tini: rootful podman with
/// runc and host networking uses none of them.
const WITHOUT_RECOMMENDS: &[&str] = &["prometheus", "qemu-system-x86", "mmdebstrap", "podman"];

/// Debian's hook that `invoke-rc.d` and `deb-systemd-invoke` ask before a maintainer script
/// starts a service; exit 101 means "not allowed".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// One set-up step's progress line(s).
struct Step {
    name: String,
    start: Instant,
}

impl Step {
    fn ok(&self, detail: &str) {
        println!("[setup] {}: already ok{detail}", self.name);
    }

    fn installing(&self, what: &str) {
        println!("[setup] {}: installing… {what}", self.name);
    }

    fn done(&self) {
        println!(
            "[setup] {}: done in {:.1}s",
            self.name,
            self.start.elapsed().as_secs_f64()
        );
    }
}

fn step(name: &str, f: impl FnOnce(&Step) -> Result<()>) -> Result<()> {
    let s = Step {
        name: name.to_owned(),
        start: Instant::now(),
    };
    f(&s).with_context(|| format!("set-up step `{name}` failed"))
}

pub fn setup() -> Result<()> {
    let start = Instant::now();
    if is_root() {
        println!("[setup] root: ok");
    } else {
        println!(
            "[setup] root: NOT ROOT. Loading eBPF programs, the real-kernel tests and the bench \
             need root, and so does installing apt packages; continuing with the steps that \
             can run as this user"
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
    step("Python validators (venv)", python_validators)?;
    kernel_report();
    println!("[setup] complete in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

/// For `cargo xtask fuzz` only: the nightly toolchain cargo-fuzz builds with, and cargo-fuzz.
pub fn fuzz_tools() -> Result<()> {
    let toolchain = FUZZ_TOOLCHAIN;
    step(&format!("{toolchain} toolchain (fuzzing)"), |s| {
        let list = stdout_of(Command::new("rustup").args(["toolchain", "list"]))?;
        if list
            .lines()
            .any(|l| l.starts_with(&format!("{toolchain}-")) || l == toolchain)
        {
            s.ok("");
            return Ok(());
        }
        s.installing(toolchain);
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "--no-self-update",
            toolchain,
            "--profile",
            "minimal",
        ]))?;
        s.done();
        Ok(())
    })?;
    step("cargo-fuzz", |s| {
        let present =
            capture(Command::new("cargo-fuzz").arg("--version")).is_ok_and(|o| o.status.success());
        if present {
            s.ok("");
            return Ok(());
        }
        s.installing("cargo install cargo-fuzz --locked");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
        s.done();
        Ok(())
    })
}

/// Components missing from `toolchain` (None: the active one, i.e. the toolchain running
/// xtask, which is the default unless overridden, and the one that builds the host crates).
fn missing_components<'a>(toolchain: Option<&str>, wanted: &[&'a str]) -> Result<Vec<&'a str>> {
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "list", "--installed"]);
    if let Some(t) = toolchain {
        cmd.args(["--toolchain", t]);
    }
    let have = stdout_of(&mut cmd)?;
    // Lines are `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
    Ok(wanted
        .iter()
        .copied()
        .filter(|c| {
            !have
                .lines()
                .any(|l| l == *c || l.strip_prefix(c).is_some_and(|r| r.starts_with('-')))
        })
        .collect())
}

fn host_components(s: &Step) -> Result<()> {
    let missing = missing_components(None, &["rustfmt", "clippy"])?;
    if missing.is_empty() {
        s.ok("");
        return Ok(());
    }
    s.installing(&missing.join(" "));
    run(Command::new("rustup")
        .args(["component", "add"])
        .args(&missing))?;
    s.done();
    Ok(())
}

fn ebpf_toolchain(s: &Step) -> Result<()> {
    let toolchains = stdout_of(Command::new("rustup").args(["toolchain", "list"]))?;
    let installed = toolchains
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|t| t == EBPF_TOOLCHAIN || t.starts_with(&format!("{EBPF_TOOLCHAIN}-")));
    if installed {
        let missing = missing_components(Some(EBPF_TOOLCHAIN), &["rust-src", "clippy"])?;
        if missing.is_empty() {
            s.ok("");
            return Ok(());
        }
        s.installing(&missing.join(" "));
        run(Command::new("rustup")
            .args(["component", "add", "--toolchain", EBPF_TOOLCHAIN])
            .args(&missing))?;
        s.done();
        return Ok(());
    }
    // Only this dated toolchain is installed; `nightly` and `stable` are left alone.
    s.installing(EBPF_TOOLCHAIN);
    // --no-self-update: installing a toolchain must not replace rustup itself.
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        "--no-self-update",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
        "--component",
        "clippy",
    ]))?;
    s.done();
    Ok(())
}

fn apt_installed(pkg: &str) -> bool {
    capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim_end()
                .ends_with(" installed")
        })
        .unwrap_or(false)
}

fn apt_packages(s: &Step) -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !apt_installed(p))
        .collect();
    if missing.is_empty() {
        s.ok("");
        return Ok(());
    }
    for (pkg, why) in APT_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        println!("[setup]   missing {pkg}: {why}");
    }
    if !is_root() {
        bail!(
            "installing {} needs root: run `cargo xtask setup` as root (or install them with \
             apt-get yourself)",
            missing.join(" ")
        );
    }
    s.installing(&missing.join(" "));
    run(Command::new("apt-get").arg("update"))?;
    let (plain, lean): (Vec<&str>, Vec<&str>) = missing
        .iter()
        .copied()
        .partition(|p| !WITHOUT_RECOMMENDS.contains(p));
    let servers_before = prometheus_servers();
    {
        // Set-up installs tools, not services. prometheus's postinst starts its service
        // (`invoke-rc.d prometheus start || exit 1`, or systemd) wherever the init system
        // lets it: a stray server on :9090, or a failed install when the start fails. (In a
        // container without systemd and no runlevel, invoke-rc.d happens to skip the start.)
        // The unit stays enabled on systemd hosts; only the start during set-up is denied.
        let _guard = NoServiceStarts::new()?;
        for (pkgs, extra) in [(plain, None), (lean, Some("--no-install-recommends"))] {
            if pkgs.is_empty() {
                continue;
            }
            run(Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y"])
                .args(extra)
                .args(&pkgs))?;
        }
    }
    // Belt and braces: a server the installation started anyway is stopped.
    for pid in prometheus_servers() {
        if !servers_before.contains(&pid) {
            println!("[setup]   stopping prometheus (pid {pid}) started by its package");
            // SAFETY: kill(2) with a pid read from /proc; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    s.done();
    Ok(())
}

/// While alive, `/usr/sbin/policy-rc.d` denies every service start (exit 101). A policy that
/// already denies is left alone; another one is set aside and put back on drop.
struct NoServiceStarts {
    /// Where an existing policy that allowed starts was moved.
    saved: Option<PathBuf>,
    /// Whether the file is ours and must go on drop.
    created: bool,
}

impl NoServiceStarts {
    fn new() -> Result<Self> {
        let policy = Path::new(POLICY_RC_D);
        let mut saved = None;
        if policy.exists() {
            let denies = Command::new(policy)
                .args(["prometheus", "start"])
                .status()
                .is_ok_and(|st| st.code() == Some(101));
            if denies {
                return Ok(Self {
                    saved: None,
                    created: false,
                });
            }
            let aside = PathBuf::from(format!("{POLICY_RC_D}.linkprobe-setup"));
            std::fs::rename(policy, &aside).with_context(|| format!("set {POLICY_RC_D} aside"))?;
            saved = Some(aside);
        }
        let mut guard = Self {
            saved,
            created: false,
        };
        std::fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask setup: no service starts while it installs packages\nexit 101\n",
        )
        .with_context(|| format!("write {POLICY_RC_D}"))?;
        guard.created = true;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {POLICY_RC_D}"))?;
        Ok(guard)
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
        if let Some(aside) = &self.saved {
            if let Err(e) = std::fs::rename(aside, POLICY_RC_D) {
                eprintln!(
                    "[setup]   could not put {} back as {POLICY_RC_D}: {e}",
                    aside.display()
                );
            }
        }
    }
}

/// Pids of running `/usr/bin/prometheus` processes.
fn prometheus_servers() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        (exe == Path::new("/usr/bin/prometheus")).then_some(pid)
    })
    .collect()
}

fn bpf_linker(s: &Step) -> Result<()> {
    let replace = match linker::detect() {
        Linker::Known {
            major, evidence, ..
        } if major == LLVM_MAJOR => {
            s.ok(&format!(" ({evidence})"));
            return Ok(());
        }
        Linker::Known { path, evidence, .. } => {
            println!(
                "[setup]   {} uses another LLVM ({evidence}); rebuilding",
                path.display()
            );
            true
        }
        Linker::Broken { path, why } => {
            println!(
                "[setup]   {} does not run ({why}); rebuilding",
                path.display()
            );
            true
        }
        Linker::Unknown { path } => {
            println!(
                "[setup]   cannot tell which LLVM {} uses (see xtask/src/linker.rs); rebuilding",
                path.display()
            );
            true
        }
        Linker::Missing => false,
    };
    s.installing(&format!(
        "cargo install bpf-linker for LLVM {LLVM_MAJOR} (takes minutes)"
    ));
    linker::install(LLVM_MAJOR, replace)?;
    match linker::detect() {
        Linker::Known { major, .. } if major == LLVM_MAJOR => {}
        Linker::Known { path, evidence, .. } => bail!(
            "bpf-linker was built for LLVM {LLVM_MAJOR}, but the one found first on PATH, {}, \
             is another ({evidence}); remove it or put $CARGO_HOME/bin first on PATH",
            path.display()
        ),
        _ => bail!("bpf-linker was installed but its LLVM major cannot be told"),
    }
    s.done();
    Ok(())
}

fn llvm_majors_agree(s: &Step) -> Result<()> {
    let rustc_major = linker::rustc_llvm_major(EBPF_TOOLCHAIN)?;
    let linker_major = match linker::detect() {
        Linker::Known { major, .. } => major,
        _ => bail!("cannot tell which LLVM bpf-linker uses"),
    };
    if rustc_major != linker_major {
        bail!(
            "LLVM versions disagree: {EBPF_TOOLCHAIN}'s rustc uses LLVM {rustc_major} but \
             bpf-linker uses LLVM {linker_major}. Fix: pin a nightly whose `rustc -vV` says LLVM \
             {linker_major} (EBPF_TOOLCHAIN in xtask/src/setup.rs and probe-user/build.rs), or \
             build bpf-linker for LLVM {rustc_major} (LLVM_MAJOR and the llvm-N apt packages in \
             xtask/src/setup.rs)"
        );
    }
    s.ok(&format!(
        " (rustc and bpf-linker both on LLVM {rustc_major})"
    ));
    Ok(())
}

/// kubernetes-validate, jsonschema and yamllint, pinned, in their own venv (PyPI, once).
fn python_validators(s: &Step) -> Result<()> {
    if validate::tools::installed() {
        s.ok(&format!(" ({})", validate::tools::venv_dir().display()));
        return Ok(());
    }
    s.installing(&format!(
        "{} into {}",
        validate::tools::REQUIREMENTS.join(" "),
        validate::tools::venv_dir().display()
    ));
    validate::tools::install()?;
    s.done();
    Ok(())
}

/// What the kernel offers; informational only, since just the daemon and tests need it.
fn kernel_report() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let cgroup2 = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned));
    println!(
        "[setup] kernel: {} (linkprobe needs >= 5.15) | BTF /sys/kernel/btf/vmlinux: {} | \
         cgroup2: {}",
        release.trim(),
        if btf {
            "yes"
        } else {
            "MISSING (needs CONFIG_DEBUG_INFO_BTF)"
        },
        cgroup2
            .as_deref()
            .unwrap_or("NOT MOUNTED (sock_ops needs cgroup v2)")
    );
}
