//! The Python validators, from PyPI into a virtualenv of their own: kubernetes-validate (the
//! Kubernetes schemas 1.25–1.37 inside, so it works offline), python's jsonschema (which it
//! brings along) and yamllint. Every package is pinned, dependencies included, and installed
//! with `--no-deps`, so the set is exactly this one; a stamp file records it, so a second
//! set-up only compares. Debian's own python3 (with python3-venv) makes the venv.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{capture, run};

/// The full, pinned package set (the validators and every dependency).
pub const REQUIREMENTS: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "yamllint==1.38.0",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "attrs==26.1.0",
    "PyYAML==6.0.4",
    "packaging==26.4",
    "pathspec==1.1.1",
    "importlib_resources==7.1.0",
    "typing_extensions==4.16.0",
];
/// The interpreter the venv is made from: Debian's, whose `venv` module python3-venv provides.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";
const STAMP: &str = "linkprobe-requirements.txt";

/// `$XDG_CACHE_HOME/linkprobe/validate-venv` (else `~/.cache/…`): outside `target/`, so
/// `cargo clean` does not need the network again, and shared by the worktrees of one user.
pub fn venv_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    cache.join("linkprobe/validate-venv")
}

/// A program of the venv (`python`, `yamllint`, `kubernetes-validate`).
pub fn venv_bin(name: &str) -> PathBuf {
    venv_dir().join("bin").join(name)
}

fn stamp_text() -> String {
    REQUIREMENTS.join("\n") + "\n"
}

/// Whether the venv holds exactly [`REQUIREMENTS`].
pub fn installed() -> bool {
    let dir = venv_dir();
    std::fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == stamp_text())
        && venv_bin("python").is_file()
}

/// Creates or replaces the venv with [`REQUIREMENTS`] (needs PyPI once).
pub fn install() -> Result<()> {
    let dir = venv_dir();
    if dir.exists() {
        // Another pin set, or a half-made venv: start over rather than upgrade in place.
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove the old venv {}", dir.display()))?;
    }
    if !Path::new(SYSTEM_PYTHON).is_file() {
        bail!("{SYSTEM_PYTHON} is missing: install Debian's python3 and python3-venv");
    }
    run(Command::new(SYSTEM_PYTHON).args(["-m", "venv"]).arg(&dir))
        .context("making the venv failed: is python3-venv installed?")?;
    run(Command::new(venv_bin("pip"))
        .args([
            "install",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .args(REQUIREMENTS))?;
    // --no-deps installs exactly the pins; this says whether they are a consistent set.
    let check =
        capture(Command::new(venv_bin("pip")).args(["check", "--disable-pip-version-check"]))?;
    if !check.status.success() {
        bail!(
            "the pinned Python packages do not fit together (update REQUIREMENTS in \
             xtask/src/validate/tools.rs): {}",
            String::from_utf8_lossy(&check.stdout).trim()
        );
    }
    std::fs::write(dir.join(STAMP), stamp_text())
        .with_context(|| format!("cannot write {}", dir.join(STAMP).display()))?;
    Ok(())
}

/// The Kubernetes versions whose schemas the installed kubernetes-validate ships, oldest
/// first, as `major.minor.patch` (from its `kubernetes-json-schema/vX.Y.Z-local-strict` dirs).
pub fn kubernetes_versions() -> Result<Vec<String>> {
    let lib = venv_dir().join("lib");
    let site = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| {
            e.path()
                .join("site-packages/kubernetes_validate/kubernetes-json-schema")
        })
        .find(|p| p.is_dir())
        .context("kubernetes-validate's schemas are not in the venv: run `cargo xtask setup`")?;
    let names = std::fs::read_dir(&site)?.filter_map(|e| e.ok()?.file_name().into_string().ok());
    let versions = strict_schema_versions(names);
    if versions.is_empty() {
        bail!("no strict schemas in {}", site.display());
    }
    Ok(versions)
}

/// `v1.25.0-local-strict` → `1.25.0`, sorted by number (1.9 before 1.10); other names ignored.
fn strict_schema_versions(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut versions: Vec<(Vec<u32>, String)> = names
        .filter_map(|name| {
            let v = name
                .strip_prefix('v')?
                .strip_suffix("-local-strict")?
                .to_owned();
            let key = v
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((key, v))
        })
        .collect();
    versions.sort();
    versions.into_iter().map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_directories_give_versions_in_numeric_order() {
        let names = [
            "v1.37.0-local-strict",
            "v1.37.0-local",
            "v1.9.0-local-strict",
            "v1.25.0-local-strict",
            "README",
            "vX.0-local-strict",
        ];
        assert_eq!(
            strict_schema_versions(names.iter().map(|n| n.to_string())),
            ["1.9.0", "1.25.0", "1.37.0"]
        );
    }

    #[test]
    fn the_stamp_lists_every_pin() {
        assert!(REQUIREMENTS.iter().all(|r| r.contains("==")));
        assert_eq!(stamp_text().lines().count(), REQUIREMENTS.len());
    }
}
