//! The API socket file. `bind` creates the file with a mode cut only by the umask, and a
//! listening socket accepts at once; so it is bound inside a private 0700 directory of the run
//! directory, given its mode and group there, and only then renamed into place: no client ever
//! sees it with looser permissions than intended, whatever the umask.
use std::{
    ffi::{CStr, CString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::net::UnixListener,
    },
    path::PathBuf,
};

use crate::host::run_dir::RunDir;

/// The socket's file name inside the daemon's run directory.
pub const SOCKET_NAME: &str = "api.sock";

/// The private directory the socket is bound in, inside the run directory.
const PRIVATE_DIR: &CStr = c".api-bind";

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("--api-group {0:?}: no such group (check /etc/group)")]
    NoGroup(String),
    #[error("--api-group {name:?}: reading the group database: {source}")]
    GroupLookup { name: String, source: io::Error },
    #[error("preparing the API socket's directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("binding the API socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("setting owner/mode of the API socket {path}: {source}")]
    Perm { path: PathBuf, source: io::Error },
}

/// The group id of `name` (a name from the group database, or a number), with the re-entrant
/// `getgrnam_r` (no shared static buffer).
pub fn group_id(name: &str) -> Result<u32, SocketError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c = CString::new(name).map_err(|_| SocketError::NoGroup(name.to_owned()))?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: zeroed `group` is a valid value for getgrnam_r to fill.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer refers to live storage of the stated size; the strings it
        // stores point into `buf`, which we do not read.
        let rc = unsafe {
            libc::getgrnam_r(
                c.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Err(SocketError::NoGroup(name.to_owned())),
            0 => return Ok(grp.gr_gid),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            // "Not found" may come as one of these from some NSS modules.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => {
                return Err(SocketError::NoGroup(name.to_owned()))
            }
            e => {
                return Err(SocketError::GroupLookup {
                    name: name.to_owned(),
                    source: io::Error::from_raw_os_error(e),
                })
            }
        }
    }
}

/// The socket's mode: root only, or root and the API group.
pub fn mode_for(gid: Option<u32>) -> u32 {
    if gid.is_some() {
        0o660
    } else {
        0o600
    }
}

/// A socket bound and listening in the private directory, not yet where clients look.
pub struct Staged {
    listener: UnixListener,
    private: OwnedFd,
    name: CString,
}

/// Binds `name` in a fresh private 0700 directory of `run_dir` (a stale one from a killed run
/// is removed: the run-dir lock says no other daemon uses it).
pub fn stage(run_dir: &RunDir, name: &str) -> Result<Staged, SocketError> {
    let dir_err = |source| SocketError::Dir {
        path: run_dir.path().join(".api-bind"),
        source,
    };
    let private_path = run_dir.fd_path().join(".api-bind");
    if let Err(e) = std::fs::remove_dir_all(&private_path) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(dir_err(e));
        }
    }
    let dirfd = run_dir.fd().as_raw_fd();
    // SAFETY: mkdirat reads a NUL-terminated name; the umask can only narrow 0700.
    if unsafe { libc::mkdirat(dirfd, PRIVATE_DIR.as_ptr(), 0o700) } != 0 {
        return Err(dir_err(io::Error::last_os_error()));
    }
    // SAFETY: openat reads a NUL-terminated name; the descriptor is owned below.
    let raw = unsafe {
        libc::openat(
            dirfd,
            PRIVATE_DIR.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(dir_err(io::Error::last_os_error()));
    }
    // SAFETY: a descriptor openat just returned.
    let private = unsafe { OwnedFd::from_raw_fd(raw) };
    let path = private_path.join(name);
    let listener = UnixListener::bind(&path).map_err(|source| SocketError::Bind {
        path: run_dir.path().join(".api-bind").join(name),
        source,
    })?;
    Ok(Staged {
        listener,
        private,
        name: CString::new(name).map_err(|_| dir_err(io::ErrorKind::InvalidInput.into()))?,
    })
}

impl Staged {
    /// Sets the mode and group (inside the private directory, so by name is safe) and renames
    /// the socket to `<run dir>/<name>`, replacing a stale one atomically.
    pub fn publish(self, run_dir: &RunDir, gid: Option<u32>) -> Result<UnixListener, SocketError> {
        let final_path = run_dir.path().join(self.name.to_str().unwrap_or_default());
        let perm = |source| SocketError::Perm {
            path: final_path.clone(),
            source,
        };
        let pfd = self.private.as_raw_fd();
        if let Some(gid) = gid {
            // SAFETY: fchownat on a name in our private directory; -1 keeps the owner.
            let rc = unsafe {
                libc::fchownat(
                    pfd,
                    self.name.as_ptr(),
                    u32::MAX,
                    gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if rc != 0 {
                return Err(perm(io::Error::last_os_error()));
            }
        }
        // A socket's descriptor is not its file (fchmod on it would not change the file's
        // mode): chmod by name, in the directory only we can enter.
        // SAFETY: fchmodat on a name in our private directory.
        if unsafe { libc::fchmodat(pfd, self.name.as_ptr(), mode_for(gid), 0) } != 0 {
            return Err(perm(io::Error::last_os_error()));
        }
        // SAFETY: renameat between two directories we hold open, names NUL-terminated.
        let rc = unsafe {
            libc::renameat(
                pfd,
                self.name.as_ptr(),
                run_dir.fd().as_raw_fd(),
                self.name.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(SocketError::Bind {
                path: final_path,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: unlinkat of our (now empty) private directory.
        unsafe {
            libc::unlinkat(
                run_dir.fd().as_raw_fd(),
                PRIVATE_DIR.as_ptr(),
                libc::AT_REMOVEDIR,
            )
        };
        self.listener
            .set_nonblocking(true)
            .map_err(|source| SocketError::Bind {
                path: final_path,
                source,
            })?;
        Ok(self.listener)
    }
}

/// Binds `<run dir>/<name>`: mode 0600 owned by us (root), or 0660 with group `gid`.
pub fn bind(run_dir: &RunDir, name: &str, gid: Option<u32>) -> Result<UnixListener, SocketError> {
    stage(run_dir, name)?.publish(run_dir, gid)
}

#[cfg(test)]
pub(crate) mod tests;
