//! Checks made before loading anything, so the common failures get one clear sentence each.
use std::{fs, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "linkprobe needs root (or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN, or CAP_SYS_ADMIN) to load \
         eBPF programs; run it with sudo or grant those capabilities"
    )]
    NotPrivileged,
    #[error("this kernel has no BPF support (the bpf() syscall is missing: CONFIG_BPF_SYSCALL)")]
    NoBpf,
    #[error(
        "this kernel has no BTF at /sys/kernel/btf/vmlinux; linkprobe needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF (most distribution kernels since 5.4 have it)"
    )]
    NoBtf,
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability mask from /proc/self/status.
fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

pub fn privileged(caps: u64) -> bool {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON) && has(CAP_NET_ADMIN))
}

fn bpf_syscall_exists() -> bool {
    // An invalid command: EINVAL/EPERM/EFAULT mean the syscall exists, ENOSYS that it does not.
    // SAFETY: bpf() with a null attribute pointer and size 0 only validates its arguments.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, -1i64, std::ptr::null::<u8>(), 0u32) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

pub fn check() -> Result<(), PreflightError> {
    let caps = fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(effective_caps)
        .unwrap_or(0);
    if !privileged(caps) {
        return Err(PreflightError::NotPrivileged);
    }
    if !bpf_syscall_exists() {
        return Err(PreflightError::NoBpf);
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_capeff() {
        let status = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert!(privileged(0x1ff_ffff_ffff));
    }

    #[test]
    fn unprivileged_masks() {
        assert!(!privileged(0));
        // CAP_BPF + CAP_PERFMON without CAP_NET_ADMIN cannot attach sock_ops.
        assert!(!privileged((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(privileged(
            (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN)
        ));
    }
}
