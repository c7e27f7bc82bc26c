//! bpf-linker: which LLVM an installed binary uses, and building it against LLVM 22.
//!
//! rustc emits LLVM bitcode for the eBPF target and bpf-linker reads it with its own LLVM, so
//! both LLVM majors must be equal. How the installed bpf-linker's LLVM major is known, first
//! match wins (an unknown major means: rebuild):
//! 1. `bpf-linker --version` must run at all (a missing shared libLLVM fails here).
//! 2. Its `--version` text, if it names an LLVM version (0.13.0 prints only its own version).
//! 3. The `libLLVM.so.N` it is dynamically linked against (`ldd`): the library that is really
//!    loaded. Built with `LLVM_PREFIX` as below, bpf-linker links libLLVM dynamically.
//! 4. The stamp `$CARGO_HOME/bpf-linker.llvm-major`, written by this set-up right after it
//!    built bpf-linker with `--features llvm-N`, and trusted only while it is not older than the
//!    binary (a later manual `cargo install` makes it stale). This covers static builds.
//!
//! The stamp is never written from a guess about a binary this set-up did not build.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{capture, cargo, run, stdout_of};

/// What is known about the installed bpf-linker.
pub enum Linker {
    Missing,
    /// Found but `--version` fails.
    Broken {
        path: PathBuf,
        why: String,
    },
    /// Runs, but nothing tells its LLVM major.
    Unknown {
        path: PathBuf,
    },
    Known {
        path: PathBuf,
        major: u32,
        /// How the major is known, for the set-up line.
        evidence: String,
    },
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

fn stamp_path() -> PathBuf {
    cargo_home().join("bpf-linker.llvm-major")
}

/// bpf-linker on PATH (where rustc looks for it), else in `$CARGO_HOME/bin`.
fn find() -> Option<(PathBuf, bool)> {
    let on_path = env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|dir| dir.join("bpf-linker"))
            .find(|p| p.is_file())
    });
    if let Some(p) = on_path {
        return Some((p, true));
    }
    let p = cargo_home().join("bin/bpf-linker");
    p.is_file().then_some((p, false))
}

/// The first number after "LLVM" in `text` ("LLVM version: 22.1.4", "LLVM 22").
fn llvm_major_in(text: &str) -> Option<u32> {
    let rest = &text[text.find("LLVM")? + 4..];
    let digits: String = rest
        .trim_start_matches(|c: char| !c.is_ascii_digit() && c != '\n')
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Major of the `libLLVM.so.N` / `libLLVM-N.so` the binary is linked against.
fn ldd_major(path: &Path) -> Option<u32> {
    let ldd = stdout_of(Command::new("ldd").arg(path)).ok()?;
    ldd.lines().find_map(|l| {
        let l = l.trim();
        let rest = l
            .strip_prefix("libLLVM.so.")
            .or_else(|| l.strip_prefix("libLLVM-"))?;
        rest.split(['.', ' ', '-']).next()?.parse().ok()
    })
}

fn stamp_major(binary: &Path) -> Option<u32> {
    let stamp = stamp_path();
    let stamp_time = fs::metadata(&stamp).and_then(|m| m.modified()).ok()?;
    let binary_time = fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    if stamp_time < binary_time {
        return None;
    }
    fs::read_to_string(stamp).ok()?.trim().parse().ok()
}

pub fn detect() -> Linker {
    let Some((path, on_path)) = find() else {
        return Linker::Missing;
    };
    if !on_path {
        println!(
            "[setup]   warning: {} is not on PATH; rustc will not find it (add {} to PATH)",
            path.display(),
            cargo_home().join("bin").display()
        );
    }
    let version = match capture(Command::new(&path).arg("--version")) {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => {
            let why = format!(
                "`--version` failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Linker::Broken { path, why };
        }
        Err(e) => {
            let why = format!("{e:#}");
            return Linker::Broken { path, why };
        }
    };
    let version_line = version.lines().next().unwrap_or("").trim().to_owned();
    if let Some(major) = llvm_major_in(&version) {
        let evidence = format!("`{version_line}` reports LLVM {major}");
        return Linker::Known {
            path,
            major,
            evidence,
        };
    }
    if let Some(major) = ldd_major(&path) {
        let evidence = format!("{version_line}, linked against libLLVM {major}");
        return Linker::Known {
            path,
            major,
            evidence,
        };
    }
    if let Some(major) = stamp_major(&path) {
        let evidence = format!(
            "{version_line}, LLVM {major} per {}",
            stamp_path().display()
        );
        return Linker::Known {
            path,
            major,
            evidence,
        };
    }
    Linker::Unknown { path }
}

/// `cargo install bpf-linker` against `/usr/lib/llvm-<major>`, then the stamp.
pub fn install(major: u32, replace: bool) -> Result<()> {
    let prefix = format!("/usr/lib/llvm-{major}");
    if !Path::new(&prefix).join("bin/llvm-config").exists() {
        bail!(
            "{prefix}/bin/llvm-config is missing: bpf-linker needs llvm-{major}-dev (the apt \
             step installs it; as non-root, install it first or run `cargo xtask setup` as root)"
        );
    }
    let path = format!("{prefix}/bin:{}", env::var("PATH").unwrap_or_default());
    let mut c = cargo();
    c.env("LLVM_PREFIX", &prefix)
        .env("PATH", path)
        .args(["install", "bpf-linker", "--no-default-features"])
        .args(["--features", &format!("llvm-{major}")]);
    if replace {
        c.arg("--force");
    }
    run(&mut c)?;
    let stamp = stamp_path();
    fs::write(&stamp, format!("{major}\n"))
        .with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

/// LLVM major of the eBPF toolchain's rustc (`LLVM version: 22.1.4` in `rustc -vV`).
pub fn rustc_llvm_major(toolchain: &str) -> Result<u32> {
    let vv = stdout_of(Command::new("rustup").args(["run", toolchain, "rustc", "-vV"]))?;
    vv.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.trim().split('.').next()?.parse().ok())
        .with_context(|| format!("`rustc -vV` of {toolchain} printed no LLVM version:\n{vv}"))
}

#[cfg(test)]
mod tests {
    use super::llvm_major_in;

    #[test]
    fn finds_llvm_major() {
        assert_eq!(llvm_major_in("LLVM version: 22.1.4"), Some(22));
        assert_eq!(llvm_major_in("bpf-linker 0.14.0 (LLVM 21.1.0)"), Some(21));
        assert_eq!(llvm_major_in("bpf-linker 0.13.0"), None);
    }
}
