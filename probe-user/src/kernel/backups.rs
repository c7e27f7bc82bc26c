//! Backup programs (see the eBPF crate's `backup`): the kernel skips a BTF tracepoint program
//! while that program already runs on the CPU (preempted inside it, or interrupted), and each
//! skipped run is a hit linkprobe never saw. Each hook has a second program that handles exactly
//! those hits. They are loaded with their primaries and attached by [`Backups::attach`]: at once
//! (`--backup-probes always`), when the kernel first skips a primary (`auto`), or never.
//!
//! Attaching happens while the daemon runs and only shares the loaded object, so it goes
//! through the `bpf()` calls directly (program and map descriptors are all it needs).
use std::{
    ffi::CString,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    programs::{BtfTracePoint, ProgramError},
    Btf, Ebpf,
};
use aya_obj::generated::bpf_cmd;

use crate::{
    kernel::bpfsys,
    kernel::probes::{Hook, ProbeState, ProbeStatus},
};

/// `--backup-probes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackupMode {
    /// Attach at start where the kernel preempts tasks anywhere (`PREEMPT_RT` in `uname -v`,
    /// or `(full)`/`(lazy)` in debugfs' `sched/preempt` when mounted), else when it first skips
    /// one of the primaries: the cheap default, since most kernels never do.
    Auto,
    /// Attach at start: no hit is lost even before the first skip, at the cost of a second
    /// program run per hit.
    Always,
    /// Never load or attach them.
    Never,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("setting BACKUP_ON: {0}")]
    Switch(std::io::Error),
    #[error("attaching {program}: {source}")]
    Attach {
        program: String,
        source: std::io::Error,
    },
}

/// Before 5.11 the kernel has no task storage, so `HIT_MARKS` cannot be created and the object
/// would not load at all. In its place the loader is handed this pinned one-entry array (aya
/// opens a map pinned at the path it is given instead of creating it): the programs load, the
/// load-time constant `task_storage = 0` makes the verifier prune every use of it, and backups
/// are off. The pin is removed when this is dropped (after loading).
pub struct MarksStandIn {
    path: PathBuf,
    _map: OwnedFd,
}

/// `union bpf_attr` for `BPF_MAP_CREATE` (the fields up to `map_flags`).
#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// `union bpf_attr` for `BPF_OBJ_PIN`.
#[repr(C)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

impl MarksStandIn {
    /// Creates and pins the stand-in in a directory of this process's own in `bpffs` (bpffs is
    /// often world-writable: a name others can make first or replace would let them hand the
    /// loader a map of theirs).
    pub fn create(bpffs: &Path) -> std::io::Result<MarksStandIn> {
        let mut create = MapCreate {
            map_type: aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
            map_flags: 0,
        };
        let map = bpfsys::new_fd(bpf_cmd::BPF_MAP_CREATE, &mut create)?;
        let dir = private_dir(&bpffs.join(format!("linkprobe-{}", std::process::id())))?;
        let path = dir.join("HIT_MARKS");
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("bpffs path has a NUL byte"))?;
        let mut pin = ObjPin {
            pathname: c_path.as_ptr() as u64,
            bpf_fd: bpfsys::raw(map.as_fd()),
            file_flags: 0,
        };
        bpfsys::call(bpf_cmd::BPF_OBJ_PIN, &mut pin)?;
        Ok(MarksStandIn { path, _map: map })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for MarksStandIn {
    fn drop(&mut self) {
        let removed = std::fs::remove_file(&self.path)
            .and_then(|()| self.path.parent().map_or(Ok(()), std::fs::remove_dir));
        if let Err(e) = removed {
            log::warn!("removing {}: {e}", self.path.display());
        }
    }
}

/// `dir`, made now with mode 0700: only root enters, so nobody else can put, swap or redirect
/// anything in it. A leftover of a crashed run with the same pid is ours (checked with lstat,
/// never following a link) and removed first; anything else there is refused.
fn private_dir(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    let make = || std::fs::DirBuilder::new().mode(0o700).create(dir);
    if let Err(e) = make() {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
        let meta = std::fs::symlink_metadata(dir)?;
        // SAFETY: geteuid cannot fail.
        let ours = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != ours {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a directory of uid {ours} (owner uid {}): refusing to \
                 pin there; remove it",
                dir.display(),
                meta.uid()
            )));
        }
        std::fs::remove_dir_all(dir)?;
        make()?;
    }
    Ok(dir.to_owned())
}

/// What a backup needs that this kernel lacks, when it lacks it.
pub const NEEDS_TASK_STORAGE: &str = "this kernel has no task storage (Linux 5.11+) for the \
     marks backups need: skipped runs stay counted as misses";

/// One loaded backup: the probe it stands in for and its program.
#[derive(Debug)]
struct Backup {
    probe: &'static str,
    program: String,
}

/// The backups of this run.
#[derive(Debug)]
pub struct Backups {
    pub mode: BackupMode,
    loaded: Vec<Backup>,
    /// Backups the verifier refused, with why (their primaries run alone).
    pub refused: Vec<(String, String)>,
    /// Links of the attached backups (empty until attached; detached when dropped).
    links: Mutex<Vec<OwnedFd>>,
}

/// What says how this kernel preempts: its version string (`/proc/sys/kernel/version`, as
/// `uname -v`) and the dynamic preemption mode (`/sys/kernel/debug/sched/preempt`, e.g.
/// `none voluntary full (lazy)`, when debugfs is mounted).
#[derive(Clone, Debug, Default)]
pub struct Preemption {
    pub version: String,
    pub mode: Option<String>,
}

impl Preemption {
    pub fn of_this_kernel() -> Preemption {
        Preemption {
            version: std::fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default(),
            mode: std::fs::read_to_string("/sys/kernel/debug/sched/preempt").ok(),
        }
    }

    /// Whether tasks may be preempted anywhere, inside BPF programs on preemptible tracepoints
    /// too.
    pub fn anywhere(&self) -> bool {
        self.version.contains("PREEMPT_RT")
            || self
                .mode
                .as_deref()
                .is_some_and(|m| m.contains("(full)") || m.contains("(lazy)"))
    }
}

impl BackupMode {
    /// Whether to attach the backups at start.
    pub fn at_start(self, kernel: &Preemption) -> bool {
        match self {
            BackupMode::Always => true,
            BackupMode::Auto => kernel.anywhere(),
            BackupMode::Never => false,
        }
    }
}

/// The backup program of `program`.
pub fn backup_of(program: &str) -> String {
    format!("{program}_b")
}

impl Backups {
    /// Loads the backup of every attached tracepoint probe (not attached yet).
    /// Without `task_storage` none loads: each is refused with [`NEEDS_TASK_STORAGE`].
    pub fn load(
        ebpf: &mut Ebpf,
        probes: &[ProbeStatus],
        btf: &Btf,
        mode: BackupMode,
        task_storage: bool,
    ) -> Backups {
        let mut backups = Backups {
            mode,
            loaded: Vec::new(),
            refused: Vec::new(),
            links: Mutex::new(Vec::new()),
        };
        if mode == BackupMode::Never {
            return backups;
        }
        for p in probes {
            let Hook::BtfTracepoint(tp) = p.spec.hook else {
                continue;
            };
            if p.state != ProbeState::Attached {
                continue;
            }
            let program = backup_of(p.program);
            if !task_storage {
                backups
                    .refused
                    .push((program, NEEDS_TASK_STORAGE.to_owned()));
                continue;
            }
            let loaded = ebpf
                .program_mut(&program)
                .ok_or_else(|| "missing from the object".to_owned())
                .and_then(|prog| {
                    let prog: &mut BtfTracePoint =
                        prog.try_into().map_err(|e: ProgramError| e.to_string())?;
                    prog.load(tp.name(), btf)
                        .map_err(|e| crate::kernel::probes::verifier_summary(&e))
                });
            match loaded {
                Ok(()) => backups.loaded.push(Backup {
                    probe: p.spec.program,
                    program,
                }),
                Err(why) => {
                    log::warn!("{program} (backup of {}) not loaded: {why}", p.spec.program);
                    backups.refused.push((program, why));
                }
            }
        }
        backups
    }

    pub fn attached(&self) -> bool {
        !self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Probes that have a backup loaded.
    pub fn probes(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.loaded.iter().map(|b| b.probe)
    }

    /// Turns primaries' marks on, then attaches every loaded backup (after its primary, so it
    /// runs second for each hit). Idempotent.
    pub fn attach(&self, ebpf: &Ebpf) -> Result<(), BackupError> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if !links.is_empty() || self.loaded.is_empty() {
            return Ok(());
        }
        switch_on(ebpf).map_err(BackupError::Switch)?;
        for b in &self.loaded {
            let link = attach_raw(ebpf, &b.program).map_err(|source| BackupError::Attach {
                program: b.program.clone(),
                source,
            })?;
            links.push(link);
        }
        Ok(())
    }
}

/// `union bpf_attr` for `BPF_MAP_UPDATE_ELEM`.
#[repr(C)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for `BPF_RAW_TRACEPOINT_OPEN`: a BTF tracepoint program names its
/// tracepoint at load time, so no name.
#[repr(C)]
struct RawTracepointOpen {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

fn switch_on(ebpf: &Ebpf) -> std::io::Result<()> {
    let Some(aya::maps::Map::Array(data)) = ebpf.map("BACKUP_ON") else {
        return Err(std::io::Error::other(
            "map BACKUP_ON missing from the object",
        ));
    };
    let (key, value) = (0u32, 1u32);
    let mut attr = MapUpdate {
        map_fd: bpfsys::raw(data.fd().as_fd()),
        _pad: 0,
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_ref(&value) as u64,
        flags: 0,
    };
    bpfsys::call(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

fn attach_raw(ebpf: &Ebpf, program: &str) -> std::io::Result<OwnedFd> {
    let fd = ebpf
        .program(program)
        .and_then(|p| p.fd().ok())
        .ok_or_else(|| std::io::Error::other("not loaded"))?;
    let mut attr = RawTracepointOpen {
        name: 0,
        prog_fd: bpfsys::raw(fd.as_fd()),
        _pad: 0,
    };
    bpfsys::new_fd(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn the_stand_in_is_pinned_in_a_private_dir_and_removed_with_it() {
        if !is_root() || !Path::new("/sys/fs/bpf").is_dir() {
            return;
        }
        let s = MarksStandIn::create(Path::new("/sys/fs/bpf")).unwrap();
        let dir = s.path().parent().unwrap().to_owned();
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert!(meta.is_dir());
        assert_eq!((meta.permissions().mode() & 0o7777, meta.uid()), (0o700, 0));
        assert!(s.path().exists());
        drop(s);
        assert!(!dir.exists());
    }

    #[test]
    fn a_foreign_or_linked_entry_where_the_pin_dir_goes_is_refused() {
        if !is_root() {
            return;
        }
        let tmp = std::env::temp_dir().join(format!("linkprobe-pindir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).unwrap();
        // A stale dir of ours (a crashed run) is replaced, emptied.
        let stale = tmp.join("stale");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("HIT_MARKS"), "").unwrap();
        private_dir(&stale).unwrap();
        assert_eq!(std::fs::read_dir(&stale).unwrap().count(), 0);
        // Another user's dir, or a link to ours, is not used.
        let foreign = tmp.join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
        let msg = private_dir(&foreign).unwrap_err().to_string();
        assert!(
            msg.contains("owner uid 65534") && msg.contains("remove it"),
            "{msg}"
        );
        let link = tmp.join("link");
        std::os::unix::fs::symlink(&stale, &link).unwrap();
        assert!(private_dir(&link).is_err());
        assert!(stale.is_dir(), "the link's target was left alone");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn auto_attaches_at_start_where_the_kernel_preempts() {
        let kernel = |version: &str, mode: Option<&str>| Preemption {
            version: version.to_owned(),
            mode: mode.map(str::to_owned),
        };
        let dynamic = "#1 SMP PREEMPT_DYNAMIC Debian 7.2.13-1 (2026-10-01)";
        let lazy = kernel(dynamic, Some("none voluntary full (lazy)\n"));
        let voluntary = kernel(dynamic, Some("none (voluntary) full lazy\n"));
        let unknown = kernel(dynamic, None);
        assert!(BackupMode::Auto.at_start(&lazy));
        assert!(BackupMode::Auto.at_start(&kernel("#1 SMP PREEMPT_RT Debian 6.12", None)));
        assert!(!BackupMode::Auto.at_start(&voluntary));
        assert!(!BackupMode::Auto.at_start(&unknown));
        assert!(BackupMode::Always.at_start(&unknown));
        assert!(!BackupMode::Never.at_start(&lazy));
        assert_eq!(backup_of("lp_state"), "lp_state_b");
    }
}
