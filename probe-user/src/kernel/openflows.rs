//! Reads open flows from the kernel on demand: the open-flow iterator program attached to the
//! flow-state map (`iter/bpf_sk_storage_map`) walks every socket that has flow state, in every
//! network namespace, and writes one record each. aya attaches iterators without a map, so the
//! link is made here (`BPF_LINK_CREATE` with the map's fd, then `BPF_ITER_CREATE`).
use std::{
    fs::File,
    io::{self, Read as _},
    os::fd::{AsFd as _, BorrowedFd},
};

use aya_obj::generated::{bpf_attach_type, bpf_cmd};
use probe_common::{FlowRecord, FLOW_RECORD_SIZE};

use crate::kernel::bpfsys::{new_fd, raw};

/// `union bpf_attr` for `BPF_LINK_CREATE` with iterator info (include/uapi/linux/bpf.h).
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// `union bpf_iter_link_info`: its `map.map_fd`, zero-padded to the union's size.
#[repr(C)]
struct IterLinkInfo {
    map_fd: u32,
    _rest: [u32; 3],
}

/// `union bpf_attr` for `BPF_ITER_CREATE`.
#[repr(C)]
struct IterCreate {
    link_fd: u32,
    flags: u32,
}

/// Runs the iterator `prog` over `map` once and returns the records it wrote.
pub fn read(prog: BorrowedFd<'_>, map: BorrowedFd<'_>) -> io::Result<Vec<FlowRecord>> {
    let info = IterLinkInfo {
        map_fd: raw(map),
        _rest: [0; 3],
    };
    let mut link = LinkCreate {
        prog_fd: raw(prog),
        target_fd: 0,
        attach_type: bpf_attach_type::BPF_TRACE_ITER as u32,
        flags: 0,
        iter_info: std::ptr::from_ref(&info) as u64,
        iter_info_len: std::mem::size_of::<IterLinkInfo>() as u32,
        _pad: 0,
    };
    let link = new_fd(bpf_cmd::BPF_LINK_CREATE, &mut link)?;
    let mut create = IterCreate {
        link_fd: raw(link.as_fd()),
        flags: 0,
    };
    let mut file = File::from(new_fd(bpf_cmd::BPF_ITER_CREATE, &mut create)?);
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes
        .chunks_exact(FLOW_RECORD_SIZE)
        // SAFETY: each chunk is one FlowRecord the iterator wrote; plain old data.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<FlowRecord>()) })
        .collect())
}
