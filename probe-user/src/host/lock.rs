//! One daemon per host: an exclusive `flock` on a file in the run directory, held for the
//! process lifetime (the kernel drops it if the process dies).
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, Write},
    os::fd::AsRawFd,
    path::Path,
};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another linkprobe daemon is already running on this host (pid {pid}, lock {path}); \
         stop it first, or use `linkprobe trace` for a private live view"
    )]
    Held { pid: String, path: String },
    #[error("cannot create the lock file {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Held for as long as the daemon runs.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

pub fn acquire(run_dir: &Path) -> Result<InstanceLock, LockError> {
    let path = run_dir.join("daemon.lock");
    let io_err = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    fs::create_dir_all(run_dir).map_err(io_err)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(LockError::Held {
                pid: pid.trim().to_owned(),
                path: path.display().to_string(),
            });
        }
        return Err(io_err(err));
    }
    file.set_len(0).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    writeln!(file, "{}", std::process::id()).map_err(io_err)?;
    Ok(InstanceLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_pid() {
        let dir = std::env::temp_dir().join(format!("linkprobe-lock-{}", std::process::id()));
        let first = acquire(&dir).unwrap();
        let err = acquire(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("already running"), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        drop(first);
        let again = acquire(&dir).unwrap();
        drop(again);
        let _ = fs::remove_dir_all(&dir);
    }
}
