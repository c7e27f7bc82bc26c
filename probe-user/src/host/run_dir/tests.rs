//! Real directories under the temp dir (the tests run as root, like the daemon): what is
//! created, what is refused and what the refusal says.
use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::*;

/// A 0700 directory of this test's own, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("linkprobe-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_new_run_dir_is_0700_or_0750_with_the_api_group() {
    let tmp = TempDir::new("rundir-new");
    let plain = tmp.path().join("a/run");
    let d = RunDir::prepare(&plain, None).unwrap();
    assert_eq!(mode_of(&plain), 0o700);
    assert_eq!(d.path(), plain);
    if !is_root() {
        return;
    }
    let grouped = tmp.path().join("grouped");
    RunDir::prepare(&grouped, Some(65534)).unwrap();
    assert_eq!(mode_of(&grouped), 0o750);
    assert_eq!(std::fs::metadata(&grouped).unwrap().gid(), 65534);
}

#[test]
fn an_existing_run_dir_the_group_cannot_enter_is_opened_to_it() {
    if !is_root() {
        return;
    }
    let tmp = TempDir::new("rundir-group");
    let run = tmp.path().join("run");
    RunDir::prepare(&run, None).unwrap();
    assert_eq!(mode_of(&run), 0o700);
    RunDir::prepare(&run, Some(65534)).unwrap();
    assert_eq!(mode_of(&run), 0o750);
    assert_eq!(std::fs::metadata(&run).unwrap().gid(), 65534);
    // Already enterable by everyone (0755): left as it is.
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    RunDir::prepare(&open, Some(65534)).unwrap();
    assert_eq!(mode_of(&open), 0o755);
}

#[test]
fn a_run_dir_writable_by_group_or_others_is_refused() {
    let tmp = TempDir::new("rundir-writable");
    for mode in [0o777, 0o1777, 0o770, 0o702] {
        let run = tmp.path().join(format!("run-{mode:o}"));
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(mode)).unwrap();
        let msg = RunDir::prepare(&run, None).unwrap_err().to_string();
        assert!(
            msg.contains(&run.display().to_string())
                && msg.contains(&format!("{mode:04o}"))
                && msg.contains("chmod go-w"),
            "{msg}"
        );
        // Nothing was changed or created in it.
        assert_eq!(mode_of(&run), mode);
        assert_eq!(std::fs::read_dir(&run).unwrap().count(), 0);
    }
}

#[test]
fn a_run_dir_owned_by_another_user_is_refused() {
    if !is_root() {
        return;
    }
    let tmp = TempDir::new("rundir-foreign");
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let msg = RunDir::prepare(&run, None).unwrap_err().to_string();
    assert!(
        msg.contains(&run.display().to_string())
            && msg.contains("owned by uid 65534")
            && msg.contains("uid 0")
            && msg.contains("chown"),
        "{msg}"
    );
}

#[test]
fn a_symlinked_run_dir_is_refused() {
    let tmp = TempDir::new("rundir-symlink");
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let msg = RunDir::prepare(&link, None).unwrap_err().to_string();
    assert!(
        msg.contains("symbolic link") && msg.contains("link"),
        "{msg}"
    );
    let file = tmp.path().join("file");
    std::fs::write(&file, "").unwrap();
    let msg = RunDir::prepare(&file, None).unwrap_err().to_string();
    assert!(msg.contains("not a directory"), "{msg}");
}
