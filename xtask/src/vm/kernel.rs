//! Debian cloud kernels: the mirror's indexes (cached for a day), the chosen packages
//! downloaded and checked against the index's SHA256, extracted once into
//! `target/vm/kernels/<release>/` with their modules indexed (depmod) and archived as cpio.
use std::{
    fs::{self, File},
    io::{self, Read as _},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::packages::{self, Choice, Package, Suite, Want, SUITES};
use crate::cmd::{run, stdout_of};

/// An index younger than this is not fetched again.
const INDEX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Where a kernel's files are, once extracted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kernel {
    pub release: String,
    pub package: String,
    pub version: String,
    pub suite: String,
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    /// Its modules as a cpio archive at `usr/lib/modules/<release>` (the rootfs has merged /usr).
    pub fn modules_cpio(&self) -> PathBuf {
        self.dir.join("modules.cpio")
    }
}

const META: &str = "kernel.json";

/// Every kernel already extracted, oldest release first.
pub fn cached(vm_dir: &Path) -> Vec<Kernel> {
    let Ok(dir) = fs::read_dir(vm_dir.join("kernels")) else {
        return Vec::new();
    };
    let mut out: Vec<Kernel> = dir
        .filter_map(|e| {
            let path = e.ok()?.path();
            let mut k: Kernel =
                serde_json::from_str(&fs::read_to_string(path.join(META)).ok()?).ok()?;
            k.dir = path;
            Some(k)
        })
        .collect();
    out.sort_by(|a, b| super::debver::compare(&a.version, &b.version));
    out
}

/// curl, quietly, failing on HTTP errors; retried for a flaky mirror.
fn download(url: &str, to: &Path) -> Result<()> {
    let tmp = to.with_extension("part");
    let out = Command::new("curl")
        .args(["-fsSL", "--retry", "3", "--connect-timeout", "20", "-o"])
        .arg(&tmp)
        .arg(url)
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "downloading {url} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    fs::rename(&tmp, to)?;
    Ok(())
}

fn fresh(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < INDEX_MAX_AGE)
}

/// The `linux-*` packages of one suite (None when the mirror does not have the suite).
fn index(vm_dir: &Path, suite: Suite) -> Result<Option<Vec<Package>>> {
    let dir = vm_dir.join("index");
    fs::create_dir_all(&dir)?;
    let xz = dir.join(format!("{}.Packages.xz", suite.name));
    if !fresh(&xz) {
        if let Err(e) = download(&suite.index_url(), &xz) {
            if !xz.exists() {
                println!("[vm]   suite {}: skipped ({e:#})", suite.name);
                return Ok(None);
            }
            println!("[vm]   suite {}: using the older index ({e:#})", suite.name);
        }
    }
    let text = stdout_of(Command::new("xz").arg("-dc").arg(&xz))?;
    Ok(Some(packages::parse_index(&text, |n| {
        n.starts_with("linux-")
    })))
}

/// Reads every suite's index and picks the kernel.
pub fn resolve(vm_dir: &Path, want: &Want) -> Result<Choice> {
    let start = Instant::now();
    let mut indexes = Vec::new();
    for suite in SUITES {
        if let Some(p) = index(vm_dir, *suite)? {
            indexes.push((*suite, p));
        }
    }
    let choice = packages::choose(&indexes, want).with_context(|| {
        format!("no linux-image-*-cloud-amd64 package matches `{want}` in any suite")
    })?;
    println!(
        "[vm] kernel {want}: {} {} ({}) in {:.1}s",
        choice.image.name,
        choice.image.version,
        choice.suite.name,
        start.elapsed().as_secs_f64()
    );
    Ok(choice)
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The .deb in the download cache, fetched and checked when missing.
fn deb(vm_dir: &Path, suite: Suite, p: &Package) -> Result<PathBuf> {
    let dir = vm_dir.join("debs");
    fs::create_dir_all(&dir)?;
    let name = p.filename.rsplit('/').next().unwrap_or(&p.name);
    let path = dir.join(name);
    if path.exists() && sha256_of(&path)? == p.sha256 {
        return Ok(path);
    }
    println!(
        "[vm]   downloading {} ({} MB)",
        p.filename,
        p.size / 1_000_000
    );
    download(&format!("{}/{}", suite.archive, p.filename), &path)?;
    let got = sha256_of(&path)?;
    if got != p.sha256 {
        fs::remove_file(&path)?;
        bail!(
            "{name}: SHA256 {got} does not match the index's {} (removed; run again)",
            p.sha256
        );
    }
    Ok(path)
}

/// The kernel extracted and its modules archived; nothing is done when it already is.
pub fn ensure(vm_dir: &Path, choice: &Choice) -> Result<Kernel> {
    let dir = vm_dir.join("kernels").join(&choice.release);
    let kernel = Kernel {
        release: choice.release.clone(),
        package: choice.image.name.clone(),
        version: choice.image.version.clone(),
        suite: choice.suite.name.to_owned(),
        dir: dir.clone(),
    };
    if dir.join(META).exists() {
        println!("[vm] kernel {}: already ok", choice.release);
        return Ok(kernel);
    }
    let start = Instant::now();
    println!("[vm] kernel {}: fetching…", choice.release);
    // Not with_extension: releases have dots (`7.2.13+deb14-…` would become `7.2.tmp`).
    let tmp = vm_dir
        .join("kernels")
        .join(format!("{}.tmp", choice.release));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    for p in std::iter::once(&choice.image).chain(&choice.parts) {
        let deb = deb(vm_dir, choice.suite, p)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    }
    place_modules(&tmp, &choice.release)?;
    let staged = Kernel {
        dir: tmp.clone(),
        ..kernel.clone()
    };
    if !staged.vmlinuz().exists() {
        bail!(
            "{} has no boot/vmlinuz-{}",
            choice.image.name,
            choice.release
        );
    }
    // Debian's postinst runs depmod; dpkg-deb -x does not. `lib -> usr/lib` lets this host's
    // depmod (which looks in <base>/lib/modules) index the merged-/usr location.
    std::os::unix::fs::symlink("usr/lib", tmp.join("lib")).ok();
    run(Command::new("depmod")
        .arg("-b")
        .arg(&tmp)
        .arg(&choice.release))?;
    let modules = tmp.join("modules.tree");
    fs::create_dir_all(modules.join("usr/lib"))?;
    fs::rename(tmp.join("usr/lib/modules"), modules.join("usr/lib/modules"))?;
    super::initramfs::cpio(&modules, &staged.modules_cpio(), true)?;
    fs::remove_dir_all(&modules)?;
    fs::write(tmp.join(META), serde_json::to_string_pretty(&kernel)?)?;
    fs::rename(&tmp, &dir)?;
    println!(
        "[vm] kernel {}: done in {:.1}s",
        choice.release,
        start.elapsed().as_secs_f64()
    );
    Ok(kernel)
}

/// Older packages put modules in `lib/modules`, newer ones in `usr/lib/modules`: one place.
/// Newer ones (sid's 7.x) also keep vmlinuz there instead of in /boot: it goes to /boot, so
/// the modules archive holds modules only.
fn place_modules(root: &Path, release: &str) -> io::Result<()> {
    let old = root.join("lib/modules").join(release);
    let new = root.join("usr/lib/modules").join(release);
    if old.is_dir() && !new.exists() {
        fs::create_dir_all(root.join("usr/lib/modules"))?;
        fs::rename(&old, &new)?;
    }
    let boot = root.join("boot").join(format!("vmlinuz-{release}"));
    if !boot.exists() && new.join("vmlinuz").exists() {
        fs::create_dir_all(root.join("boot"))?;
        fs::rename(new.join("vmlinuz"), &boot)?;
    }
    if root.join("lib").is_dir() && !root.join("lib").is_symlink() {
        fs::remove_dir_all(root.join("lib"))?;
    }
    Ok(())
}
