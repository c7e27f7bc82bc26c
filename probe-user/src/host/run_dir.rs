//! The daemon's run directory (`--run-dir`): its lock and API socket live there, so nobody but
//! us may be able to add, replace or redirect entries in it. It is created 0700 (0750 with its
//! group set to `--api-group`, so that group can reach the socket), an existing one is refused
//! unless it is ours and not writable by group or others, and it is held open: every later
//! operation goes through this descriptor, never through the path again.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

/// Created with this mode: only root enters.
pub const MODE: u32 = 0o700;
/// Created with this mode when an API group is given: the group may enter (and list), so it can
/// reach the socket; the socket's own mode decides who may connect.
pub const MODE_WITH_GROUP: u32 = 0o750;

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("--run-dir {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error(
        "--run-dir {path} is a symbolic link; the run directory must be a real directory \
         (remove the link, or pass the directory it points to)"
    )]
    Symlink { path: PathBuf },
    #[error("--run-dir {path} is not a directory")]
    NotDir { path: PathBuf },
    #[error(
        "--run-dir {path} is owned by uid {owner}, not by this daemon's uid {ours}: another user \
         could replace the lock or the socket; remove it (the daemon recreates it) or \
         `chown {ours} {path}`"
    )]
    ForeignOwner {
        path: PathBuf,
        owner: u32,
        ours: u32,
    },
    #[error(
        "--run-dir {path} has mode {mode:04o}, writable by group or others: they could replace \
         the lock or the socket; `chmod go-w {path}` (or remove it: the daemon recreates it 0700)"
    )]
    Writable { path: PathBuf, mode: u32 },
}

/// The checked run directory, held open.
#[derive(Debug)]
pub struct RunDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl RunDir {
    /// Creates `path` (and missing parents) or checks the existing one; `api_gid` is the group
    /// that must reach the API socket.
    pub fn prepare(path: &Path, api_gid: Option<u32>) -> Result<RunDir, RunDirError> {
        let io_err = |what| {
            move |source| RunDirError::Io {
                path: path.to_owned(),
                what,
                source,
            }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err("creating its parent"))?;
        }
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io_err("path")(io::ErrorKind::InvalidInput.into()))?;
        let mode = if api_gid.is_some() {
            MODE_WITH_GROUP
        } else {
            MODE
        };
        // SAFETY: mkdir reads a NUL-terminated path.
        let created = unsafe { libc::mkdir(c.as_ptr(), mode) } == 0;
        if !created {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(io_err("creating it")(e));
            }
        }
        // SAFETY: open reads a NUL-terminated path; the descriptor is owned below.
        let raw = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            let symlink = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            return Err(match e.raw_os_error() {
                // With O_DIRECTORY a symlink fails as "not a directory".
                Some(libc::ELOOP | libc::ENOTDIR) if symlink => RunDirError::Symlink {
                    path: path.to_owned(),
                },
                Some(libc::ENOTDIR) => RunDirError::NotDir {
                    path: path.to_owned(),
                },
                _ => io_err("opening it")(e),
            });
        }
        // SAFETY: a descriptor open() just returned, owned by nothing else.
        let dir = RunDir {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            path: path.to_owned(),
        };
        let st = dir.stat().map_err(io_err("reading its owner and mode"))?;
        // SAFETY: geteuid cannot fail.
        let ours = unsafe { libc::geteuid() };
        if st.st_uid != ours {
            return Err(RunDirError::ForeignOwner {
                path: path.to_owned(),
                owner: st.st_uid,
                ours,
            });
        }
        let found = st.st_mode & 0o7777;
        if found & 0o022 != 0 {
            return Err(RunDirError::Writable {
                path: path.to_owned(),
                mode: found,
            });
        }
        if let Some(gid) = api_gid {
            dir.let_group_enter(&st, gid, created)
                .map_err(io_err("letting --api-group enter it"))?;
        } else if created {
            // mkdir's mode was cut by the umask; set exactly what we mean.
            dir.fchmod(MODE).map_err(io_err("setting its mode"))?;
        }
        Ok(dir)
    }

    /// With `--api-group` the group must be able to search the directory: a new one becomes
    /// 0750 with that group; an existing one that neither the group nor others may enter gets
    /// that group and group search (it is ours: checked above).
    fn let_group_enter(&self, st: &libc::stat, gid: u32, created: bool) -> io::Result<()> {
        let mode = st.st_mode & 0o7777;
        let group_enters = st.st_gid == gid && mode & 0o010 != 0;
        let others_enter = mode & 0o001 != 0;
        if !created && (group_enters || others_enter) {
            return Ok(());
        }
        // SAFETY: fchown on our own descriptor; -1 keeps the owner.
        if unsafe { libc::fchown(self.fd.as_raw_fd(), u32::MAX, gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let new = if created {
            MODE_WITH_GROUP
        } else {
            // Keep what was there (never anything writable: checked), add group read+search.
            mode | 0o050
        };
        if !created {
            log::warn!(
                "--run-dir {}: group {gid} could not enter it (mode {mode:04o}); now group {gid}, \
                 mode {new:04o}",
                self.path.display()
            );
        }
        self.fchmod(new)
    }

    fn fchmod(&self, mode: u32) -> io::Result<()> {
        // SAFETY: fchmod on our own descriptor.
        if unsafe { libc::fchmod(self.fd.as_raw_fd(), mode) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn stat(&self) -> io::Result<libc::stat> {
        fstat(&self.fd)
    }

    /// The directory, for `openat`-style calls.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> io::Result<RunDir> {
        Ok(RunDir {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// Removes the entry `name` of this directory (not of whatever `path` names now).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: unlinkat reads a NUL-terminated name relative to our descriptor.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The path given on the command line (for messages and clients).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path that names this very directory whatever happens to `path` later (for calls that
    /// take no directory descriptor, like `bind`).
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// `fstat` on a descriptor.
pub fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`, which outlives the call.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

#[cfg(test)]
pub(crate) mod tests;
