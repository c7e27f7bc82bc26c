//! Resolves the user's scope flags (`--netns`, `--cgroup`) into the identifiers the kernel
//! programs compare against: the netns cookie and the cgroup v2 id and depth.
use std::{
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use probe_common::ScopeFilter;

/// `SO_NETNS_COOKIE` from include/uapi/asm-generic/socket.h (Linux 5.14+).
const SO_NETNS_COOKIE: libc::c_int = 71;

#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error(
        "network namespace {0:?} not found: give a name from `ip netns list` or a path such as \
         /proc/<pid>/ns/net"
    )]
    NetnsMissing(String),
    #[error("cannot open network namespace {path}: {source}")]
    NetnsOpen { path: String, source: io::Error },
    #[error(
        "cannot read the cookie of network namespace {path} ({source}); the kernel needs \
         SO_NETNS_COOKIE (Linux 5.14+)"
    )]
    NetnsCookie { path: String, source: io::Error },
    #[error(
        "cgroup {path} (resolved: {real}) is not a directory below the cgroup2 root {root}: \
         pass a path such as {root}/system.slice"
    )]
    CgroupOutside {
        path: String,
        real: String,
        root: String,
    },
    #[error("cannot stat cgroup {path}: {source}")]
    CgroupStat { path: String, source: io::Error },
}

/// A network namespace as the user named it: `ip netns` name or a path.
pub fn netns_path(arg: &str) -> Result<PathBuf, ScopeError> {
    let candidate = if arg.contains('/') {
        PathBuf::from(arg)
    } else {
        Path::new("/run/netns").join(arg)
    };
    if candidate.exists() {
        Ok(candidate)
    } else {
        Err(ScopeError::NetnsMissing(arg.to_owned()))
    }
}

/// The cookie of a network namespace: entered from a short-lived thread, since `setns` only
/// moves the calling thread.
pub fn netns_cookie(path: &Path) -> Result<u64, ScopeError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| ScopeError::NetnsOpen {
        path: shown.clone(),
        source,
    })?;
    let shown_in_thread = shown.clone();
    std::thread::spawn(move || -> Result<u64, ScopeError> {
        let err = |source| ScopeError::NetnsCookie {
            path: shown_in_thread.clone(),
            source,
        };
        // SAFETY: plain syscalls on owned descriptors; the thread ends right after.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(err(io::Error::last_os_error()));
        }
        socket_netns_cookie().map_err(err)
    })
    .join()
    .map_err(|_| ScopeError::NetnsCookie {
        path: shown,
        source: io::Error::other("helper thread panicked"),
    })?
}

/// Netns cookie of the calling thread's namespace.
pub fn socket_netns_cookie() -> io::Result<u64> {
    // SAFETY: socket/getsockopt/close with valid arguments; the fd is closed on every path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &mut len,
        );
        let result = if rc == 0 {
            Ok(cookie)
        } else {
            Err(io::Error::last_os_error())
        };
        libc::close(fd);
        result
    }
}

/// Cgroup v2 id (the directory's inode number) and depth below the root. Both paths are
/// resolved first (symlinks, `.` and `..`): a lexical check would accept a symlink below the
/// root that leads elsewhere, and would count `..` as a level.
pub fn cgroup_scope(root: &Path, path: &Path) -> Result<(u64, u32), ScopeError> {
    let resolve = |p: &Path| {
        p.canonicalize().map_err(|source| ScopeError::CgroupStat {
            path: p.display().to_string(),
            source,
        })
    };
    let real_root = resolve(root)?;
    let real = resolve(path)?;
    let outside = || ScopeError::CgroupOutside {
        path: path.display().to_string(),
        real: real.display().to_string(),
        root: real_root.display().to_string(),
    };
    let rel = real.strip_prefix(&real_root).map_err(|_| outside())?;
    let stat = |p: &Path| {
        std::fs::metadata(p).map_err(|source| ScopeError::CgroupStat {
            path: p.display().to_string(),
            source,
        })
    };
    let meta = stat(&real)?;
    // Another file system mounted below the root is not a cgroup.
    if !meta.is_dir() || meta.dev() != stat(&real_root)?.dev() {
        return Err(outside());
    }
    let level = rel.components().count() as u32;
    Ok((meta.ino(), level))
}

/// Builds the kernel filter from the resolved parts.
pub fn filter(netns_cookie: Option<u64>, cgroup: Option<(u64, u32)>) -> ScopeFilter {
    let (cgroup_id, cgroup_level) = cgroup.unwrap_or((0, 0));
    ScopeFilter {
        netns_cookie: netns_cookie.unwrap_or(0),
        cgroup_id,
        cgroup_level,
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_name_not_found_names_it() {
        let err = netns_path("no-such-ns-for-linkprobe").unwrap_err();
        assert!(err.to_string().contains("no-such-ns-for-linkprobe"));
        assert!(err.to_string().contains("ip netns list"));
    }

    #[test]
    fn cgroup_outside_root_is_rejected() {
        let err = cgroup_scope(Path::new("/sys/fs/cgroup"), Path::new("/tmp")).unwrap_err();
        assert!(matches!(err, ScopeError::CgroupOutside { .. }), "{err}");
    }

    /// A directory tree removed on drop: `root/a/b` and `outside/`.
    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str) -> Tree {
            let base = std::env::temp_dir().join(format!("lp-scope-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&base);
            std::fs::create_dir_all(base.join("root/a/b")).unwrap();
            std::fs::create_dir_all(base.join("outside")).unwrap();
            Tree(base)
        }
        fn root(&self) -> PathBuf {
            self.0.join("root")
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn cgroup_dot_dot_is_resolved_before_counting_levels() {
        let tree = Tree::new("dotdot");
        let root = tree.root();
        let b = std::fs::metadata(root.join("a/b")).unwrap().ino();
        // Lexically four components below the root; really two.
        assert_eq!(cgroup_scope(&root, &root.join("a/../a/b")).unwrap(), (b, 2));
        // Lexically below the root; really its sibling.
        let err = cgroup_scope(&root, &root.join("a/../../outside")).unwrap_err();
        assert!(matches!(err, ScopeError::CgroupOutside { .. }), "{err}");
        assert!(err.to_string().contains("outside"), "{err}");
    }

    #[test]
    fn cgroup_symlink_is_resolved() {
        let tree = Tree::new("symlink");
        let root = tree.root();
        std::os::unix::fs::symlink(tree.0.join("outside"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink(root.join("a/b"), root.join("alias")).unwrap();
        let err = cgroup_scope(&root, &root.join("escape")).unwrap_err();
        assert!(matches!(err, ScopeError::CgroupOutside { .. }), "{err}");
        let b = std::fs::metadata(root.join("a/b")).unwrap().ino();
        // One component lexically, two levels in fact.
        assert_eq!(cgroup_scope(&root, &root.join("alias")).unwrap(), (b, 2));
    }

    #[test]
    fn own_netns_cookie_matches_proc_self() {
        let Ok(own) = socket_netns_cookie() else {
            eprintln!("skip: SO_NETNS_COOKIE unsupported here");
            return;
        };
        match netns_cookie(Path::new("/proc/self/ns/net")) {
            Ok(c) => assert_eq!(c, own),
            Err(e) => eprintln!("skip: cannot enter own netns ({e}); needs CAP_SYS_ADMIN"),
        }
    }
}
