//! How often the kernel skipped one of our programs. A BTF tracepoint program is not run while
//! the same program already runs on that CPU (preempted inside it, or interrupted), and the
//! kernel only counts it in the program's `recursion_misses` (`bpf_prog_info`, Linux 5.12).
//! Such hits were neither counted by our counters nor sent unless the probe's backup program
//! handled them (`backups`), so the skipped runs less the backup's runs are the hits nobody saw:
//! the exporter reports them per probe.
use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::Ebpf;
use aya_obj::generated::{bpf_cmd, bpf_prog_info};

use crate::kernel::probes::{ProbeState, ProbeStatus};

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
    crate::kernel::bpfsys::call(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
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

/// Hits no program saw, per probe: its skipped runs less those its backup handled.
pub fn unrecovered(
    misses: &BTreeMap<&'static str, u64>,
    backup_runs: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    misses
        .iter()
        .map(|(probe, n)| {
            let recovered = backup_runs.get(probe).copied().unwrap_or(0);
            (*probe, n.saturating_sub(recovered))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_a_backup_handled_are_not_lost() {
        let misses = BTreeMap::from([("lp_state", 10), ("lp_rst_sent", 3), ("lp_sock_ops", 0)]);
        let runs = BTreeMap::from([("lp_state", 10), ("lp_rst_sent", 1)]);
        assert_eq!(
            unrecovered(&misses, &runs),
            BTreeMap::from([("lp_state", 0), ("lp_rst_sent", 2), ("lp_sock_ops", 0)])
        );
    }
}
