//! The socket's permissions on real files, checked the way a client meets them: a thread that
//! drops to another uid (raw syscalls change only the calling thread's credentials) tries to
//! connect.
use std::{
    io,
    os::unix::{
        fs::{FileTypeExt, MetadataExt, PermissionsExt},
        net::UnixStream,
    },
    path::{Path, PathBuf},
};

use super::*;
use crate::host::run_dir::tests::TempDir;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Connects to `path` as `uid`/`gid` with no supplementary groups, from a thread of its own
/// (the connection outlives the thread: descriptors are the process's).
pub fn connect_as(uid: u32, gid: u32, path: &Path) -> io::Result<UnixStream> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        // SAFETY: raw syscalls (not libc's process-wide wrappers) change this thread only;
        // the thread ends right after.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        UnixStream::connect(&path)
    })
    .join()
    .unwrap()
}

/// A temp dir others may enter, so only the run dir and socket modes decide.
fn enterable(tag: &str) -> TempDir {
    let tmp = TempDir::new(tag);
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

fn meta(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid())
}

fn private_dir(run: &Path) -> PathBuf {
    run.join(".api-bind")
}

#[test]
fn the_socket_is_0600_by_default_and_others_cannot_connect() {
    if !is_root() {
        return;
    }
    let tmp = enterable("sock-default");
    // An existing 0755 run dir: everyone reaches the socket's directory, its mode decides.
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = RunDir::prepare(&run, None).unwrap();
    let _l = bind(&dir, "api.sock", None).unwrap();
    let sock = run.join("api.sock");
    let (mode, uid, _) = meta(&sock);
    assert_eq!((mode, uid), (0o600, 0));
    assert!(std::fs::symlink_metadata(&sock)
        .unwrap()
        .file_type()
        .is_socket());
    let err = connect_as(NOBODY, NOBODY, &sock).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    UnixStream::connect(&sock).unwrap();
    assert!(
        !private_dir(&run).exists(),
        "the private bind dir was removed"
    );
}

#[test]
fn with_a_group_the_socket_is_0660_and_never_reachable_before() {
    if !is_root() {
        return;
    }
    let tmp = enterable("sock-group");
    let run = tmp.path().join("run");
    let dir = RunDir::prepare(&run, Some(NOBODY)).unwrap();
    // A stale socket from a killed run, and a stale private dir: both replaced.
    drop(std::os::unix::net::UnixListener::bind(run.join("api.sock")).unwrap());
    std::fs::create_dir(private_dir(&run)).unwrap();
    // Right after bind, through the new code path: listening, but only in a 0700 root dir.
    let staged = stage(&dir, "api.sock").unwrap();
    assert_eq!(meta(&private_dir(&run)), (0o700, 0, 0));
    let staged_path = private_dir(&run).join("api.sock");
    UnixStream::connect(&staged_path).expect("root reaches the staged socket");
    let err = connect_as(NOBODY, NOBODY, &staged_path).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    // Where clients look there is only the stale file, which nobody answers.
    assert!(UnixStream::connect(run.join("api.sock")).is_err());
    let _l = staged.publish(&dir, Some(NOBODY)).unwrap();
    assert_eq!(meta(&run.join("api.sock")), (0o660, 0, NOBODY));
    connect_as(NOBODY, NOBODY, &run.join("api.sock")).expect("the api group connects");
    // Another non-root user does not.
    let err = connect_as(NOBODY - 1, NOBODY - 1, &run.join("api.sock")).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    assert!(!private_dir(&run).exists());
}

#[test]
fn group_names_resolve_with_the_reentrant_lookup() {
    assert_eq!(group_id("root").unwrap(), 0);
    assert_eq!(group_id("4242").unwrap(), 4242);
    let msg = group_id("no-such-group-linkprobe").unwrap_err().to_string();
    assert!(msg.contains("no such group"), "{msg}");
    assert!(group_id("bad\0name").is_err());
    // Many threads at once agree (getgrnam's shared buffer would not promise that).
    let threads: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let name = if i % 2 == 0 { "root" } else { "nogroup" };
                let want = if i % 2 == 0 { 0 } else { NOBODY };
                (0..50).all(|_| group_id(name).unwrap() == want)
            })
        })
        .collect();
    assert!(threads.into_iter().all(|t| t.join().unwrap()));
}

/// Set in the child process the umask test starts (the umask is process-wide: the test runs
/// itself again rather than change it under the other tests' feet).
const UMASK_CHILD: &str = "LINKPROBE_TEST_UMASK_000";

#[test]
fn modes_are_the_same_under_umask_000() {
    if !is_root() {
        return;
    }
    if std::env::var_os(UMASK_CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "api::socket::tests::modes_are_the_same_under_umask_000",
                "--exact",
                "--nocapture",
            ])
            .env(UMASK_CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "the child ran the test: {text}");
        return;
    }
    // SAFETY: umask cannot fail; this child process runs only this test.
    unsafe { libc::umask(0) };
    let tmp = enterable("sock-umask");
    let run = tmp.path().join("run");
    let dir = RunDir::prepare(&run, None).unwrap();
    assert_eq!(meta(&run).0, 0o700);
    let _lock = crate::host::lock::acquire(&dir).unwrap();
    assert_eq!(meta(&run.join("daemon.lock")).0, 0o600);
    let staged = stage(&dir, "api.sock").unwrap();
    assert_eq!(meta(&private_dir(&run)).0, 0o700);
    let _l = staged.publish(&dir, None).unwrap();
    assert_eq!(meta(&run.join("api.sock")).0, 0o600);
    let grouped = tmp.path().join("grouped");
    let dir = RunDir::prepare(&grouped, Some(NOBODY)).unwrap();
    assert_eq!(meta(&grouped), (0o750, 0, NOBODY));
    let _l = bind(&dir, "api.sock", Some(NOBODY)).unwrap();
    assert_eq!(meta(&grouped.join("api.sock")), (0o660, 0, NOBODY));
}
