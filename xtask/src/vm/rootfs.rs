//! The VM's root filesystem: Debian bookworm `minbase` plus what the daemon and the kernel
//! tests run, built once with mmdebstrap from the host's mirror and cached as a cpio archive
//! named by a hash of everything that shapes it (a changed package list builds a new one).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result};
use sha2::{Digest as _, Sha256};

use super::initramfs;
use crate::cmd::run;

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// Packages on top of minbase (which has bash, coreutils' `timeout`, util-linux's `setpriv`,
/// bsdutils' `script`), each with the reason the VM needs it.
pub const PACKAGES: &[(&str, &str)] = &[
    (
        "iproute2",
        "tests create namespaces with `ip netns` and read `nstat`",
    ),
    ("nftables", "tests drop SYNs and data with `nft` rules"),
    (
        "bpftool",
        "the detach test and the BTF offset tests run bpftool",
    ),
    ("kmod", "/init loads modules (veth, nftables) with modprobe"),
    (
        "procps",
        "ps/pgrep for debugging a stuck run from the console",
    ),
    (
        "prometheus",
        "exporter tests scrape with a real Prometheus; promtool checks rules",
    ),
    (
        "bpftrace",
        "the exactness test runs bpftrace on the same tracepoints as linkprobe",
    ),
    (
        "python3",
        "the pods test serves HTTP from a kubelet-like cgroup (python3 -m http.server)",
    ),
    (
        "curl",
        "the pods test's client, in that cgroup; the incidents tests' client",
    ),
    (
        "haproxy",
        "the incidents tests put a real proxy in front of a refused and an aborting upstream",
    ),
];

/// Leaves out what no test reads: documentation, manuals, translations.
const PATH_EXCLUDES: &[&str] = &[
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
];

/// Bumped when the way the archive is made changes (not captured by the inputs below).
const FORMAT: u32 = 1;

/// `target/vm/rootfs-<hash>.cpio`.
pub fn path(vm_dir: &Path) -> PathBuf {
    let mut h = Sha256::new();
    h.update(format!("{FORMAT} {SUITE} {MIRROR} "));
    for (p, _) in PACKAGES {
        h.update(p);
        h.update(",");
    }
    for e in PATH_EXCLUDES {
        h.update(e);
    }
    let hex: String = h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    vm_dir.join(format!("rootfs-{hex}.cpio"))
}

/// Builds the archive unless it is cached; returns its path.
pub fn ensure(vm_dir: &Path) -> Result<PathBuf> {
    let out = path(vm_dir);
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_default();
    if out.exists() {
        println!("[vm] root filesystem {name}: already ok");
        return Ok(out);
    }
    let start = Instant::now();
    println!(
        "[vm] root filesystem {name}: building… mmdebstrap --variant=minbase {SUITE} + {}",
        PACKAGES
            .iter()
            .map(|(p, _)| *p)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let dir = vm_dir.join("rootfs.tmp");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    let include = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=minbase", "--mode=root", "--quiet"])
        .arg(format!("--include={include}"))
        .arg("--aptopt=APT::Install-Recommends \"false\"");
    for e in PATH_EXCLUDES {
        cmd.arg(format!("--dpkgopt=path-exclude={e}"));
    }
    cmd.arg(SUITE).arg(&dir).arg(MIRROR);
    run(&mut cmd)?;
    initramfs::cpio(&dir, &out, false)?;
    fs::remove_dir_all(&dir)?;
    let size = fs::metadata(&out)?.len();
    println!(
        "[vm] root filesystem {name}: done in {:.1}s ({} MB)",
        start.elapsed().as_secs_f64(),
        size / 1_000_000
    );
    Ok(out)
}
