//! What the suite puts in place of a Kubernetes node: tracefs and bpffs mounted on the host
//! (a node has them; the daemon in a read-only container cannot mount them), the volumes' host
//! directories (the run directory and what this machine lacks get directories of the test's
//! own), and the downward API's values.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{
    cmd::{run, target_dir},
    container::daemonset::{Mount, RunSpec, Source},
};

/// The kernel filesystems the probes need, where the daemon looks for them.
const KERNEL_FS: [(&str, &str, &str); 2] = [
    ("tracefs", "nodev", "/sys/kernel/tracing"),
    ("bpf", "bpf", "/sys/fs/bpf"),
];

/// Whether `mountinfo` has a mount of type `fstype` at `point`.
pub fn mounted(mountinfo: &str, fstype: &str, point: &str) -> bool {
    mountinfo.lines().any(|l| {
        let mut halves = l.split(" - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        left.split(' ').nth(4) == Some(point) && right.split(' ').next() == Some(fstype)
    })
}

/// Mounts tracefs and bpffs on the host where they are missing, as the daemon outside a
/// container does. They stay mounted (the state of any node that ran linkprobe once).
pub fn ensure_kernel_fs() -> Result<()> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for (fstype, source, point) in KERNEL_FS {
        if mounted(&info, fstype, point) {
            println!("[container] host {point}: {fstype} mounted");
            continue;
        }
        println!(
            "[container] host {point}: no {fstype}; mounting it (a node has it, and the daemon \
             cannot mount it from a read-only container)"
        );
        run(Command::new("mount").args(["-t", fstype, source, point]))
            .with_context(|| format!("mounting {fstype} on {point}"))?;
    }
    Ok(())
}

/// The test's own directories, removed on drop.
pub struct WorkDir {
    pub path: PathBuf,
}

impl WorkDir {
    /// `target/container/run-<pid>`; those of runs no longer alive (killed) are removed.
    pub fn create() -> Result<WorkDir> {
        let parent = target_dir().join("container");
        for entry in fs::read_dir(&parent).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix("run-"));
            if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let path = parent.join(format!("run-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Why a volume gets a directory of the test's own, or None when the node's path is used.
fn replaced(m: &Mount) -> Option<&'static str> {
    match &m.source {
        Source::EmptyDir => Some("emptyDir"),
        Source::HostPath(_) if !m.read_only => Some("writable: the test's own, not this machine's"),
        Source::HostPath(p) if !p.exists() => Some("absent on this machine"),
        Source::HostPath(_) => None,
    }
}

/// Directories for the volumes that do not bind the node's path, made under `work`; each
/// mount printed with its source.
pub fn volume_dirs(spec: &RunSpec, work: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut dirs = BTreeMap::new();
    for m in &spec.mounts {
        let mode = if m.read_only { "ro" } else { "rw" };
        match replaced(m) {
            Some(why) => {
                let dir = work.join(&m.volume);
                fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                println!(
                    "[container]   {} ({mode}) ← {} ({why})",
                    m.target,
                    dir.display()
                );
                dirs.insert(m.volume.clone(), dir);
            }
            None => {
                if let Source::HostPath(p) = &m.source {
                    println!("[container]   {} ({mode}) ← {}", m.target, p.display());
                }
            }
        }
    }
    Ok(dirs)
}

/// The downward API's values here: the node is this machine, the pod on its network.
pub fn fields() -> BTreeMap<String, String> {
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    BTreeMap::from([
        ("spec.nodeName".to_owned(), host),
        ("status.hostIP".to_owned(), "127.0.0.1".to_owned()),
        ("status.podIP".to_owned(), "127.0.0.1".to_owned()),
        ("metadata.name".to_owned(), "linkprobe-suite".to_owned()),
        ("metadata.namespace".to_owned(), "linkprobe".to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_matched_by_point_and_type() {
        let info = "36 25 0:31 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:9 - bpf bpf rw,mode=700\n\
                    40 25 0:12 / /sys/kernel/tracing rw,relatime shared:14 - tracefs nodev rw\n";
        assert!(mounted(info, "bpf", "/sys/fs/bpf"));
        assert!(mounted(info, "tracefs", "/sys/kernel/tracing"));
        assert!(!mounted(info, "tracefs", "/sys/fs/bpf"));
        assert!(!mounted(info, "bpf", "/sys/fs"));
        assert!(!mounted("garbage", "bpf", "/sys/fs/bpf"));
    }

    #[test]
    fn writable_and_missing_volumes_get_the_tests_own_directory() {
        let m = |source, read_only| Mount {
            volume: "v".into(),
            source,
            target: "/x".into(),
            read_only,
        };
        assert_eq!(replaced(&m(Source::HostPath("/sys".into()), true)), None);
        assert!(replaced(&m(Source::HostPath("/sys".into()), false)).is_some());
        assert!(replaced(&m(Source::HostPath("/nonexistent/linkprobe".into()), true)).is_some());
        assert!(replaced(&m(Source::EmptyDir, true)).is_some());
    }
}
