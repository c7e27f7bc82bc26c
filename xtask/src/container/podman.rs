//! podman as the image build and the container suite run it: root (CAP_BPF in a rootless user
//! namespace cannot load programs into the host kernel), and a `CONTAINERS_CONF` of our own,
//! never /etc/containers: runc (crun refuses this machine's hybrid cgroup hierarchy), cgroupfs
//! (no systemd to ask), and rlimits the VM's hard limits allow.
use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{capture, is_root, stdout_of, target_dir};

/// Written to `target/container/containers.conf` and named by `CONTAINERS_CONF`.
pub const CONTAINERS_CONF: &str = "\
# Written by `cargo xtask image` / the container suite (xtask/src/container/podman.rs).
[containers]
# podman's defaults (nofile 1048576) exceed the hard limits some VMs give root.
default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]

[engine]
# crun 1.8 refuses hybrid cgroup hierarchies; runc runs on v1, v2 and hybrid.
runtime = \"runc\"
# No systemd D-Bus to create scopes through in every environment.
cgroup_manager = \"cgroupfs\"
# The journal may be absent (containers, minimal VMs).
events_logger = \"file\"
";

/// podman with the project's containers.conf.
pub struct Podman {
    conf: PathBuf,
}

impl Podman {
    /// Checks root and that podman and runc are installed, and writes the containers.conf.
    pub fn new() -> Result<Podman> {
        if !is_root() {
            bail!(
                "podman must run as root here: the containerised daemon loads eBPF programs into \
                 the host kernel, which a rootless user namespace cannot; run as root"
            );
        }
        for tool in ["podman", "runc"] {
            let found =
                capture(Command::new(tool).arg("--version")).is_ok_and(|o| o.status.success());
            if !found {
                bail!(
                    "`{tool}` is not installed: `cargo xtask setup` installs podman, runc, \
                     buildah and uidmap from apt"
                );
            }
        }
        let dir = target_dir().join("container");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let conf = dir.join("containers.conf");
        if fs::read_to_string(&conf).ok().as_deref() != Some(CONTAINERS_CONF) {
            fs::write(&conf, CONTAINERS_CONF)
                .with_context(|| format!("writing {}", conf.display()))?;
        }
        Ok(Podman { conf })
    }

    /// `podman` with `CONTAINERS_CONF` set.
    pub fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf);
        c
    }

    /// `podman version`'s first lines, for the record.
    pub fn version(&self) -> String {
        stdout_of(
            self.command()
                .args(["version", "--format", "{{.Client.Version}}"]),
        )
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// Removes the container `name` if it exists (any state), quietly.
    pub fn remove(&self, name: &str) {
        let _ = self
            .command()
            .args(["rm", "--force", "--time", "0", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Removes the containers whose names start with `prefix` (left by a run that was killed
    /// before its guards could act).
    pub fn remove_stale(&self, prefix: &str) -> Result<()> {
        let names = stdout_of(self.command().args([
            "ps",
            "--all",
            "--filter",
            &format!("name=^{prefix}"),
            "--format",
            "{{.Names}}",
        ]))?;
        for name in names
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with(prefix))
        {
            println!("[container] removing {name}, left by an earlier run");
            self.remove(name);
        }
        Ok(())
    }

    /// A container name removed again when the guard drops, and before use (a killed run's).
    pub fn guard<'a>(&'a self, name: &str) -> ContainerGuard<'a> {
        self.remove(name);
        ContainerGuard {
            podman: self,
            name: name.to_owned(),
        }
    }
}

/// Removes its container on every path (success, error, panic).
pub struct ContainerGuard<'a> {
    podman: &'a Podman,
    name: String,
}

impl ContainerGuard<'_> {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ContainerGuard<'_> {
    fn drop(&mut self) {
        self.podman.remove(&self.name);
    }
}
