//! How often the kernel skipped one of our programs. A tracepoint program is not run while
//! another tracing program runs on the same CPU (a raw tracepoint: while the same program does),
//! and the kernel only counts it in the program's `recursion_misses` (`bpf_prog_info`, Linux
//! 5.12). Such events were neither counted by our per-CPU counters nor sent, so this is the only
//! place they show up: the exporter reports them per probe.
use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::Ebpf;
use aya_obj::generated::{bpf_cmd, bpf_prog_info};

use crate::loader::{ProbeState, ProbeStatus};

/// The `info` part of `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn prog_info(fd: i32) -> io::Result<bpf_prog_info> {
    // SAFETY: bpf_prog_info is plain old data; all zeroes is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: u32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        info_len: std::mem::size_of::<bpf_prog_info>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    // SAFETY: the attr and the info buffer it points to live across the call; the kernel
    // writes at most `info_len` bytes into `info`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            std::ptr::from_mut(&mut attr),
            std::mem::size_of::<InfoByFd>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// `recursion_misses` of every attached probe (0 on kernels before 5.12, which do not count
/// them). A probe whose info cannot be read is left out, with a debug log.
pub fn recursion_misses(ebpf: &Ebpf, probes: &[ProbeStatus]) -> BTreeMap<&'static str, u64> {
    probes
        .iter()
        .filter(|p| p.state == ProbeState::Attached)
        .filter_map(|p| {
            let fd = ebpf.program(p.program)?.fd().ok()?.as_fd().as_raw_fd();
            let name = p.spec.program;
            match prog_info(fd) {
                Ok(info) => Some((name, info.recursion_misses)),
                Err(e) => {
                    log::debug!("reading {name}'s program info: {e}");
                    None
                }
            }
        })
        .collect()
}
