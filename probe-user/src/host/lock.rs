//! One daemon per host: an exclusive `flock` on a file in the run directory, held for the
//! process lifetime (the kernel drops it if the process dies). The file is opened through the
//! checked run directory's descriptor, never following a symlink, and emptied only once the
//! lock is ours.
use std::{
    ffi::CStr,
    fs::File,
    io::{self, Read, Seek, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use crate::host::run_dir::{fstat, RunDir};

const LOCK_NAME: &CStr = c"daemon.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another linkprobe daemon is already running on this host (pid {pid}, lock {path}); \
         stop it first, or use `linkprobe trace` for a private live view"
    )]
    Held { pid: String, path: String },
    #[error(
        "the lock file {path} is a symbolic link or not a regular file; refusing to use it \
         (someone may be trying to make the daemon overwrite another file): remove it"
    )]
    NotRegular { path: String },
    #[error("cannot create the lock file {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Held for as long as the daemon runs.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

pub fn acquire(run_dir: &RunDir) -> Result<InstanceLock, LockError> {
    let path = run_dir.path().join("daemon.lock");
    let shown = |p: &PathBuf| p.display().to_string();
    let io_err = |source| LockError::Io {
        path: shown(&path),
        source,
    };
    // No O_TRUNC: a running daemon's pid stays readable until we hold the lock.
    // SAFETY: openat reads a NUL-terminated name relative to our directory descriptor.
    let raw = unsafe {
        libc::openat(
            run_dir.fd().as_raw_fd(),
            LOCK_NAME.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY,
            0o600 as libc::c_uint,
        )
    };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ELOOP) => LockError::NotRegular { path: shown(&path) },
            _ => io_err(e),
        });
    }
    // SAFETY: a descriptor openat just returned, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let st = fstat(&fd).map_err(io_err)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(LockError::NotRegular { path: shown(&path) });
    }
    let mut file = File::from(fd);
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = Read::by_ref(&mut file).take(32).read_to_string(&mut pid);
            return Err(LockError::Held {
                pid: pid.trim().to_owned(),
                path: shown(&path),
            });
        }
        return Err(io_err(err));
    }
    // Ours now: drop any owner or group access an older file had, then write our pid.
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(file.as_raw_fd(), 0o600) } != 0 {
        return Err(io_err(io::Error::last_os_error()));
    }
    file.set_len(0).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    writeln!(file, "{}", std::process::id()).map_err(io_err)?;
    Ok(InstanceLock { _file: file })
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::*;
    use crate::host::run_dir::tests::TempDir;

    #[test]
    fn second_lock_is_refused_with_pid() {
        let tmp = TempDir::new("lock-second");
        let dir = RunDir::prepare(&tmp.path().join("run"), None).unwrap();
        let first = acquire(&dir).unwrap();
        let err = acquire(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("already running"), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        drop(first);
        let again = acquire(&dir).unwrap();
        drop(again);
    }

    #[test]
    fn a_symlinked_lock_file_is_refused_and_its_target_left_alone() {
        let tmp = TempDir::new("lock-symlink");
        let target = tmp.path().join("precious");
        std::fs::write(&target, "do not truncate me\n").unwrap();
        let run = tmp.path().join("run");
        let dir = RunDir::prepare(&run, None).unwrap();
        std::os::unix::fs::symlink(&target, run.join("daemon.lock")).unwrap();
        let msg = acquire(&dir).unwrap_err().to_string();
        assert!(
            msg.contains("symbolic link") && msg.contains("daemon.lock"),
            "{msg}"
        );
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "do not truncate me\n"
        );
        // A FIFO (or any non-file) is refused too, without blocking on it.
        std::fs::remove_file(run.join("daemon.lock")).unwrap();
        let fifo = CString::new(run.join("daemon.lock").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let msg = acquire(&dir).unwrap_err().to_string();
        assert!(msg.contains("not a regular file"), "{msg}");
    }

    #[test]
    fn the_lock_file_is_0600_and_holds_our_pid() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = TempDir::new("lock-mode");
        let run = tmp.path().join("run");
        let dir = RunDir::prepare(&run, None).unwrap();
        std::fs::write(run.join("daemon.lock"), "12345 stale pid and more\n").unwrap();
        std::fs::set_permissions(
            run.join("daemon.lock"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let _lock = acquire(&dir).unwrap();
        let meta = std::fs::metadata(run.join("daemon.lock")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(run.join("daemon.lock")).unwrap(),
            format!("{}\n", std::process::id())
        );
    }
}
