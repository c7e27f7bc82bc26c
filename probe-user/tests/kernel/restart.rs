//! SIGKILL, then restart, ten times: what a killed daemon held in the kernel (programs, links,
//! cgroup attachments, pins in bpffs) goes with its descriptors, and the next daemon starts on
//! the same run directory (the dead one's lock file and API socket still there) and answers.
//!
//! Other tests (and other processes on the host) may load `lp_*` programs at the same time, so
//! "ours" is what `bpftool prog show` lists with the killed daemon's pid among its holders; the
//! baseline of what nobody holds (`lp_*` programs without a holder pid: a program only a
//! legacy cgroup attachment or a pinned link keeps alive) and of linkprobe's bpffs pins must
//! not grow.
use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use serde_json::Value;
use testkit::linkprobe::RunDir;

use crate::{
    cgroup2_root,
    common::{api::cli_at, can_run_kernel_tests, netns::TestNetns, tracer::Tracer},
    KERNEL,
};

const CYCLES: usize = 10;
/// A killed process's links are released with its descriptors; the kernel frees the programs
/// of raw tracepoint links after an RCU grace period (see the clean-detach test).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the kernel holds of linkprobe at one moment, as bpftool shows it (also the
/// clean-detach test's view).
pub(crate) struct KernelView {
    /// `lp_*` program ids.
    programs: BTreeSet<u64>,
    /// Every BPF link id.
    links: BTreeSet<u64>,
    /// `lp_*` program ids attached to a cgroup.
    cgroup_attached: BTreeSet<u64>,
    /// Program ids some process holds a descriptor of (a program's or its link's).
    held: BTreeSet<u64>,
    /// Files in bpffs that linkprobe pins (`linkprobe-*`).
    pins: usize,
}

impl KernelView {
    pub(crate) fn now() -> KernelView {
        // Holders first: a program loaded after this scan is not "unheld" by mistake, only one
        // whose holder exits in between (which the callers' retries absorb).
        let held = fd_ids(None, "prog_id:");
        let lp_ids = |v: Value| -> BTreeSet<u64> {
            v.as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("lp_")))
                .filter_map(|p| p["id"].as_u64())
                .collect()
        };
        let programs = lp_ids(bpftool_json(&["prog", "show"]));
        let links = bpftool_json(&["link", "show"])
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l["id"].as_u64())
            .collect();
        let tree = bpftool_json(&["cgroup", "tree", &cgroup2_root()]);
        let cgroup_attached = tree
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .flat_map(|cg| lp_ids(cg["programs"].clone()))
            .collect();
        KernelView {
            programs,
            links,
            cgroup_attached,
            held,
            pins: linkprobe_pins(Path::new("/sys/fs/bpf")),
        }
    }

    /// `lp_*` programs no process holds a descriptor of.
    fn unheld(&self) -> usize {
        self.programs.difference(&self.held).count()
    }
}

/// The ids after `key` (`prog_id:`, `link_id:`) in the fdinfo of `pid`'s descriptors, or of
/// every process's. Debian's bpftool is built without the `pids` column, so /proc is the
/// record of who holds what.
fn fd_ids(pid: Option<u32>, key: &str) -> BTreeSet<u64> {
    let procs: Vec<std::path::PathBuf> = match pid {
        Some(p) => vec![format!("/proc/{p}").into()],
        None => std::fs::read_dir("/proc")
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default(),
    };
    let mut ids = BTreeSet::new();
    for proc_dir in procs {
        let Ok(fds) = std::fs::read_dir(proc_dir.join("fdinfo")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Ok(text) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            ids.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix(key))
                    .filter_map(|v| v.trim().parse::<u64>().ok()),
            );
        }
    }
    ids
}

/// What one daemon holds: its programs (their descriptors and its links') and its links.
pub(crate) struct Held {
    pub(crate) programs: BTreeSet<u64>,
    links: BTreeSet<u64>,
}

impl Held {
    pub(crate) fn of(pid: u32) -> Held {
        Held {
            programs: fd_ids(Some(pid), "prog_id:"),
            links: fd_ids(Some(pid), "link_id:"),
        }
    }

    /// Of these, how many `view` still shows: (programs, links, cgroup attachments).
    pub(crate) fn left_in(&self, view: &KernelView) -> (usize, usize, usize) {
        (
            self.programs.intersection(&view.programs).count(),
            self.links.intersection(&view.links).count(),
            self.programs.intersection(&view.cgroup_attached).count(),
        )
    }
}

fn bpftool_json(args: &[&str]) -> Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    assert!(out.status.success(), "bpftool {args:?}: {out:?}");
    // An empty listing is `[]`, or nothing at all on some versions.
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Array(Vec::new());
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bpftool {args:?} JSON: {e}"))
}

/// `linkprobe-*` entries anywhere under the bpffs mount.
fn linkprobe_pins(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let ours = usize::from(e.file_name().to_string_lossy().starts_with("linkprobe-"));
            let below = if e.file_type().is_ok_and(|t| t.is_dir()) {
                linkprobe_pins(&e.path())
            } else {
                0
            };
            ours + below
        })
        .sum()
}

#[test]
fn sigkilled_daemon_leaves_nothing_and_the_next_starts_cleanly() {
    if !can_run_kernel_tests("sigkill_restart") {
        return;
    }
    // Alone, like the detach test: it reads host-wide bpftool state and restarts a daemon ten
    // times, which other tests' traffic must not race.
    let _exclusive = KERNEL.write().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::new("sigkill");
    let run_dir = RunDir::create("lpt-sigkill").expect("run dir");
    let socket = run_dir.path().join("api.sock");
    let baseline = KernelView::now();
    let (base_unheld, base_pins) = (baseline.unheld(), baseline.pins);
    eprintln!(
        "== SIGKILL cycles: baseline {} lp_* programs on the host ({base_unheld} held by no \
         process), {} lp_* cgroup attachments, {base_pins} linkprobe pins in bpffs",
        baseline.programs.len(),
        baseline.cgroup_attached.len()
    );
    let sock_ops_attached = |t: &Tracer| {
        t.ready["probes"]
            .as_array()
            .expect("probes")
            .iter()
            .any(|p| p["name"] == "lp_sock_ops" && p["attached"] == true)
    };
    for cycle in 1..=CYCLES {
        // From the second cycle on, the killed daemon's lock file and socket are still there.
        let daemon = Tracer::start_daemon(&ns.name, run_dir.as_str());
        let pid = daemon.pid();
        let status = cli_at(&socket, &["status", "-o", "json"]);
        assert!(
            status.status.success(),
            "cycle {cycle}: the daemon does not answer on {}: {status:?}",
            socket.display()
        );
        let ours = Held::of(pid);
        let running = KernelView::now();
        let (programs, links, attached) = ours.left_in(&running);
        assert!(
            programs > 0 && links > 0,
            "cycle {cycle}: bpftool shows no lp_* program or link of pid {pid}"
        );
        // lp_sock_ops is "not needed" where the kernel counts RTOs per socket itself.
        assert_eq!(
            attached > 0,
            sock_ops_attached(&daemon),
            "cycle {cycle}: lp_sock_ops of pid {pid} in the cgroup tree vs its ready line"
        );
        let killed = daemon.kill();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&killed),
            Some(libc::SIGKILL),
            "cycle {cycle}: {killed}"
        );
        let deadline = std::time::Instant::now() + RELEASE_TIMEOUT;
        let after = loop {
            let view = KernelView::now();
            let clean = ours.left_in(&view) == (0, 0, 0)
                && view.unheld() <= base_unheld
                && view.pins <= base_pins;
            if clean || std::time::Instant::now() >= deadline {
                break view;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let left = ours.left_in(&after);
        eprintln!(
            "   cycle {cycle:>2}: pid {pid} held {programs} lp_* programs, {links} links, \
             {attached} cgroup attachments; after SIGKILL {left:?} of them remain; lp_* held \
             by no process {} (baseline {base_unheld}), pins {} (baseline {base_pins}); all \
             lp_* programs on the host {}",
            after.unheld(),
            after.pins,
            after.programs.len()
        );
        assert_eq!(
            left,
            (0, 0, 0),
            "cycle {cycle}: programs / links / cgroup attachments of the killed daemon remain"
        );
        assert!(
            after.unheld() <= base_unheld,
            "cycle {cycle}: lp_* programs nobody holds grew from {base_unheld} to {}",
            after.unheld()
        );
        assert!(
            after.pins <= base_pins,
            "cycle {cycle}: linkprobe pins in bpffs grew from {base_pins} to {}",
            after.pins
        );
    }
    // The last restart: a clean stop after all those kills, which removes the socket.
    let last = Tracer::start_daemon(&ns.name, run_dir.as_str());
    last.stop().assert_nothing_lost();
    assert!(!socket.exists(), "the daemon left its socket behind");
}
