//! `deploy/seccomp/linkprobe.json`: podman's default seccomp profile (containers-common, the
//! Docker/OCI JSON format) with two grants more: `bpf` under CAP_BPF and `perf_event_open`
//! under CAP_PERFMON. The default allows both only under CAP_SYS_ADMIN, which linkprobe does
//! not get.
//!
//! The profile has to mean the same to two readers:
//! - podman and CRI-O (containers/common) keep a rule only when the container has its
//!   `includes.caps` and none of its `excludes.caps`;
//! - containerd reads a Kubernetes `Localhost` profile as the OCI runtime spec's
//!   `LinuxSeccomp`, which has no `includes`/`excludes`: every rule applies, and for a syscall
//!   named by several argument-less rules libseccomp keeps the first (measured here with runc:
//!   swapping podman's allow/deny pair for `bpf` turns EINVAL into EPERM).
//!
//! So each grant is an allow rule placed before the first deny rule naming its syscall, and the
//! deny moves to a rule of its own that also excludes the granted capability: under podman the
//! two never both apply, under containerd the allow comes first.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::cmd::workspace_root;

/// Podman's default profile as Debian 12 ships it (golang-github-containers-common
/// 0.50.1+ds1-4, /usr/share/containers/seccomp.json): the pinned base, so the derived profile
/// is the same on every machine.
pub const PODMAN_DEFAULT: &str = include_str!("containers-common-0.50.1-seccomp.json");
/// Where that package installs it; the container suite says whether it still equals the pin.
pub const INSTALLED_DEFAULT: &str = "/usr/share/containers/seccomp.json";

/// A syscall linkprobe needs and the capability that now allows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub syscall: &'static str,
    pub cap: &'static str,
}

/// The daemon loads and attaches eBPF programs (`bpf`) and opens tracepoint perf events
/// (`perf_event_open`); the kernel itself checks CAP_BPF and CAP_PERFMON for them.
pub const GRANTS: [Grant; 2] = [
    Grant {
        syscall: "bpf",
        cap: "CAP_BPF",
    },
    Grant {
        syscall: "perf_event_open",
        cap: "CAP_PERFMON",
    },
];

/// The shipped profile, relative to the workspace root.
pub fn shipped_path() -> PathBuf {
    workspace_root().join("deploy/seccomp/linkprobe.json")
}

/// The profile text: `base` plus [`GRANTS`], pretty-printed with a final newline.
pub fn derive_text(base: &str) -> Result<String> {
    let base: Value = serde_json::from_str(base).context("the base profile is not JSON")?;
    let derived = derive(&base)?;
    let mut text = serde_json::to_string_pretty(&derived)?;
    text.push('\n');
    Ok(text)
}

/// `base` with each grant: an allow rule under the capability, inserted before the first deny
/// rule naming the syscall; the syscall taken out of that deny rule's names and denied by a
/// rule of its own that excludes the capability too.
pub fn derive(base: &Value) -> Result<Value> {
    let mut profile = base.clone();
    let rules = profile
        .get_mut("syscalls")
        .and_then(Value::as_array_mut)
        .context("the base profile has no `syscalls` array")?;
    for grant in GRANTS {
        let deny_at = rules
            .iter()
            .position(|r| names(r).contains(&grant.syscall) && !is_allow(r))
            .with_context(|| {
                format!(
                    "the base profile has no deny rule for `{}`: it is not podman's default \
                     shape (an allow under CAP_SYS_ADMIN, then a deny excluding it)",
                    grant.syscall
                )
            })?;
        let deny = &mut rules[deny_at];
        if deny
            .get("args")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            bail!(
                "the base profile's deny rule for `{}` has argument filters: not the shape this \
                 derivation knows",
                grant.syscall
            );
        }
        let mut own_deny = deny.clone();
        if let Some(list) = deny.get_mut("names").and_then(Value::as_array_mut) {
            list.retain(|n| n.as_str() != Some(grant.syscall));
        }
        let deny_emptied = names(deny).is_empty();
        own_deny["names"] = json!([grant.syscall]);
        let mut excluded = own_deny
            .pointer("/excludes/caps")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        excluded.push(json!(grant.cap));
        match own_deny.get_mut("excludes").and_then(Value::as_object_mut) {
            Some(excludes) => {
                excludes.insert("caps".to_owned(), Value::Array(excluded));
            }
            None => own_deny["excludes"] = json!({ "caps": excluded }),
        }
        let allow = json!({
            "names": [grant.syscall],
            "action": "SCMP_ACT_ALLOW",
            "args": [],
            "comment": format!("linkprobe: {} under {}", grant.syscall, grant.cap),
            "includes": { "caps": [grant.cap] },
            "excludes": {},
        });
        if deny_emptied {
            rules[deny_at] = own_deny;
        } else {
            rules.insert(deny_at + 1, own_deny);
        }
        rules.insert(deny_at, allow);
    }
    Ok(profile)
}

/// `profile` as containerd reads it (the OCI `LinuxSeccomp`): without the capability and
/// architecture conditions, which it ignores. The suite runs the image under this too.
pub fn as_oci(profile: &str) -> Result<String> {
    let mut v: Value = serde_json::from_str(profile).context("the profile is not JSON")?;
    let rules = v
        .get_mut("syscalls")
        .and_then(Value::as_array_mut)
        .context("the profile has no `syscalls` array")?;
    for rule in rules.iter_mut().filter_map(Value::as_object_mut) {
        rule.remove("includes");
        rule.remove("excludes");
    }
    Ok(serde_json::to_string_pretty(&v)?)
}

fn names(rule: &Value) -> Vec<&str> {
    rule.get("names")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn is_allow(rule: &Value) -> bool {
    rule.get("action").and_then(Value::as_str) == Some("SCMP_ACT_ALLOW")
}

/// `cargo xtask seccomp`: writes the profile derived from `from` (default: the pinned podman
/// profile) to deploy/seccomp/linkprobe.json, or with `check` fails when the file differs.
pub fn regenerate(from: Option<&Path>, check: bool) -> Result<()> {
    let base = match from {
        Some(p) => fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        None => PODMAN_DEFAULT.to_owned(),
    };
    let text = derive_text(&base)?;
    let path = shipped_path();
    let current = fs::read_to_string(&path).unwrap_or_default();
    if check {
        if current != text {
            bail!(
                "{} is not the derived profile: run `cargo xtask seccomp` to regenerate it",
                path.display()
            );
        }
        println!("[seccomp] {}: up to date", path.display());
        return Ok(());
    }
    if current == text {
        println!("[seccomp] {}: already up to date", path.display());
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "[seccomp] wrote {} ({} bytes): {} + bpf under CAP_BPF, perf_event_open under CAP_PERFMON",
        path.display(),
        text.len(),
        from.map_or_else(
            || "podman's default (containers-common 0.50.1)".to_owned(),
            |p| p.display().to_string()
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests;
