//! The `bpf()` system call for the few commands aya 0.14 does not wrap, or wraps only behind
//! `&mut Ebpf`: iterator links made with a map (`openflows`), program info (`progstats`), and
//! for the backups a map update, a raw tracepoint attach and the pinned stand-in map (`backups`).
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use aya_obj::generated::bpf_cmd;

/// Runs `cmd` with `attr`, a live, fully initialised prefix of the command's `union bpf_attr`.
pub fn call<T>(cmd: bpf_cmd, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is valid for its size; the kernel reads (and for some commands writes)
    // only that many bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Runs a command that returns a new file descriptor.
pub fn new_fd<T>(cmd: bpf_cmd, attr: &mut T) -> io::Result<OwnedFd> {
    let rc = call(cmd, attr)?;
    let fd = i32::try_from(rc).map_err(|_| io::Error::other("bpf() returned a bad fd"))?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A descriptor as the kernel's `u32` attribute.
pub fn raw(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd() as u32
}
