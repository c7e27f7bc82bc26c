//! Kernel filesystems the probes need: tracefs (tracepoint ids and formats), bpffs, and the
//! cgroup2 hierarchy that `sock_ops` attaches to.
use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(
        "{fs} is not mounted at {path} and mounting it failed ({source}); mount it yourself with \
         `mount -t {fs} {fs} {path}` or run linkprobe as root with CAP_SYS_ADMIN"
    )]
    Mount {
        fs: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("cannot read /proc/mounts: {0}")]
    ProcMounts(io::Error),
    #[error(
        "no cgroup2 filesystem is mounted (looked in /proc/mounts); mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup/unified` or pass --cgroup-root"
    )]
    NoCgroup2,
}

/// Where tracefs lives once [`ensure_tracefs`] succeeded.
pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const BPFFS: &str = "/sys/fs/bpf";

/// One line of /proc/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
}

/// Parses /proc/mounts text, undoing its octal escapes (`\040` for a space).
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let source = unescape(it.next()?);
            let target = PathBuf::from(unescape(it.next()?));
            let fstype = it.next()?.to_owned();
            Some(MountEntry {
                source,
                target,
                fstype,
            })
        })
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_mounts() -> Result<Vec<MountEntry>, MountError> {
    fs::read_to_string("/proc/mounts")
        .map(|t| parse_mounts(&t))
        .map_err(MountError::ProcMounts)
}

fn is_mounted(entries: &[MountEntry], fstype: &str, target: &Path) -> bool {
    entries
        .iter()
        .any(|m| m.fstype == fstype && m.target == target)
}

fn mount(fstype: &'static str, target: &str) -> Result<(), MountError> {
    let err = |source| MountError::Mount {
        fs: fstype,
        path: target.to_owned(),
        source,
    };
    fs::create_dir_all(target).map_err(err)?;
    let c = |s: &str| CString::new(s).map_err(|e| err(io::Error::other(e)));
    let (src, tgt, ty) = (c(fstype)?, c(target)?, c(fstype)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(err(io::Error::last_os_error()))
    }
}

/// What [`ensure_kernel_fs`] did, for the start-up log.
#[derive(Debug, Default)]
pub struct MountReport {
    pub mounted_tracefs: bool,
    pub mounted_bpffs: bool,
}

/// Mounts tracefs and bpffs where missing.
pub fn ensure_kernel_fs() -> Result<MountReport, MountError> {
    let entries = read_mounts()?;
    Ok(MountReport {
        mounted_tracefs: ensure_mounted(&entries, "tracefs", TRACEFS)?,
        mounted_bpffs: ensure_mounted(&entries, "bpf", BPFFS)?,
    })
}

/// Mounts `fstype` at `target` unless it is there; true when this call mounted it. Another
/// process (a second linkprobe starting, a node's other agent) may mount it at the same moment:
/// the kernel then answers EBUSY, so a failed mount that /proc/mounts now shows is success.
fn ensure_mounted(
    entries: &[MountEntry],
    fstype: &'static str,
    target: &str,
) -> Result<bool, MountError> {
    if is_mounted(entries, fstype, Path::new(target)) {
        return Ok(false);
    }
    match mount(fstype, target) {
        Ok(()) => Ok(true),
        Err(e) if is_mounted(&read_mounts()?, fstype, Path::new(target)) => {
            log::debug!("{fstype} was mounted concurrently at {target} ({e})");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The first cgroup2 mount in /proc/mounts (on hybrid hosts `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> Result<PathBuf, MountError> {
    find_cgroup2(&read_mounts()?).ok_or(MountError::NoCgroup2)
}

pub fn find_cgroup2(entries: &[MountEntry]) -> Option<PathBuf> {
    entries
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.target.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
sysfs /sys sysfs rw,nosuid 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
tracefs /sys/kernel/tracing tracefs rw 0 0
none /mnt/with\\040space ext4 rw 0 0
";

    #[test]
    fn finds_cgroup2_on_hybrid_host() {
        let m = parse_mounts(HYBRID);
        assert_eq!(
            find_cgroup2(&m),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert!(is_mounted(&m, "tracefs", Path::new(TRACEFS)));
        assert!(!is_mounted(&m, "bpf", Path::new(BPFFS)));
    }

    #[test]
    fn unescapes_octal() {
        let m = parse_mounts(HYBRID);
        assert_eq!(m[5].target, PathBuf::from("/mnt/with space"));
    }

    #[test]
    fn no_cgroup2() {
        assert_eq!(
            find_cgroup2(&parse_mounts("sysfs /sys sysfs rw 0 0\n")),
            None
        );
    }
}
