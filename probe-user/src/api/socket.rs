//! The API socket file: bound under a temporary name, given its mode and group, then renamed
//! into place, so no client ever sees it with looser permissions than intended.
use std::{
    ffi::CString,
    io,
    os::unix::{
        fs::{chown, PermissionsExt},
        net::UnixListener,
    },
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("--api-group {0:?}: no such group (check /etc/group)")]
    NoGroup(String),
    #[error("creating the API socket directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("binding the API socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("setting owner/mode of the API socket {path}: {source}")]
    Perm { path: PathBuf, source: io::Error },
}

/// The group id of `name` (a name from the group database, or a number).
pub fn group_id(name: &str) -> Result<u32, SocketError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c = CString::new(name).map_err(|_| SocketError::NoGroup(name.to_owned()))?;
    // SAFETY: getgrnam reads a NUL-terminated name and returns a pointer to static storage or
    // NULL; we read gr_gid at once, before any other call could overwrite it (start-up runs on
    // one thread).
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Err(SocketError::NoGroup(name.to_owned()));
    }
    // SAFETY: non-null pointer from getgrnam.
    Ok(unsafe { (*gr).gr_gid })
}

/// Binds `path`: mode 0600 owned by us (root), or 0660 with group `gid`. A stale socket from a
/// previous run is replaced (the run-dir lock guarantees no other daemon owns it).
pub fn bind(path: &Path, gid: Option<u32>) -> Result<UnixListener, SocketError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| SocketError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|source| SocketError::Bind {
        path: tmp.clone(),
        source,
    })?;
    let perm = |source| SocketError::Perm {
        path: path.to_owned(),
        source,
    };
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(perm)?;
    if let Some(gid) = gid {
        chown(&tmp, None, Some(gid)).map_err(perm)?;
    }
    std::fs::rename(&tmp, path).map_err(|source| SocketError::Bind {
        path: path.to_owned(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| SocketError::Bind {
            path: path.to_owned(),
            source,
        })?;
    Ok(listener)
}
