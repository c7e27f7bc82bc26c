//! The tracers the bench compares, each started ready (probes attached) under a guard that
//! stops it on every path: linkprobe's daemon (a [`testkit::process::Background`]) and the
//! external tools, bpftrace and libbpf-tools' tcplife.
use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use testkit::{
    linkprobe::{free_loopback_addr, RunDir, READY},
    netns::Netns,
    process::{interrupt_and_wait, Background, Pipe},
};

use super::{exposition, plan::TracerKind, session::check_interrupted};
use crate::{cargo_cmds::linkprobe_bin, cmd::shown, procstat};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// linkprobe's own exit: a final drain, its counters, the probes detached.
const DAEMON_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The daemon publishes its metrics snapshot once a second.
const FIRST_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);
/// Always in a published snapshot (README: `linkprobe_build_info`, always 1).
const SNAPSHOT_MARKER: &str = "linkprobe_build_info";

/// `linkprobe daemon --netns NS -o none` with its exporter on a free loopback port, its own
/// run directory (lock, API socket), metrics and detectors as deployed.
pub struct Daemon {
    process: Background,
    pub addr: SocketAddr,
    /// After `process`: removed once the daemon is gone.
    _run_dir: RunDir,
}

impl Daemon {
    /// Starts it, waits for `ready` (its probes attached) and for the first published metrics
    /// snapshot. `extra`: more daemon flags (e.g. `--set metrics.max_peers=470`).
    pub fn start(ns: &Netns, extra: &[&str]) -> Result<Daemon> {
        let run_dir = RunDir::create("lpbench-run")?;
        let addr = free_loopback_addr()?;
        let mut cmd = Command::new(linkprobe_bin(true));
        cmd.args([
            "daemon",
            "--netns",
            ns.name(),
            "--run-dir",
            run_dir.as_str(),
        ])
        .arg("--metrics-addr")
        .arg(addr.to_string())
        .args(["-o", "none"])
        .args(extra);
        let mut process = Background::start(&mut cmd, None)?;
        process.wait_for(Pipe::Stderr, READY_TIMEOUT, |l| l.contains(READY))?;
        let d = Daemon {
            process,
            addr,
            _run_dir: run_dir,
        };
        d.wait_first_snapshot()?;
        Ok(d)
    }

    fn wait_first_snapshot(&self) -> Result<()> {
        let deadline = Instant::now() + FIRST_SNAPSHOT_TIMEOUT;
        loop {
            if let Ok(body) = self.metrics() {
                if exposition::has(&body, SNAPSHOT_MARKER) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the daemon's http://{}/metrics had no `{SNAPSHOT_MARKER}` after {} s",
                    self.addr,
                    FIRST_SNAPSHOT_TIMEOUT.as_secs()
                );
            }
            check_interrupted()?;
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The body of `GET /metrics`.
    pub fn metrics(&self) -> Result<String> {
        Ok(exposition::fetch(self.addr)?.1)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// SIGINT and a clean exit 0 (an error otherwise, with what it printed).
    pub fn stop(self) -> Result<()> {
        let command = self.process.command().to_owned();
        let exited = self.process.stop(DAEMON_EXIT_TIMEOUT)?;
        if !exited.status.success() {
            bail!(
                "`{command}` exited with {} after SIGINT; stderr:\n{}\nstdout:\n{}",
                exited.status,
                exited.stderr.join("\n"),
                exited.stdout.join("\n"),
            );
        }
        Ok(())
    }
}

/// A tool started in the host namespace whose stdout goes to a file; it is ready once a
/// marker line is in that file and it holds its attached probes.
pub struct External {
    /// None once stopped; Drop stops a child still running (error paths).
    child: Option<Child>,
    command: String,
    stderr_path: PathBuf,
}

/// How to start one external tracer and tell that it is ready.
struct ExternalSpec {
    program: &'static [&'static str],
    args: Vec<String>,
    /// Run under `stdbuf -oL`, so the ready marker reaches the file at once.
    line_buffered: bool,
    ready_line: fn(&str) -> bool,
    /// Attached probes it holds once ready (perf-event or BPF-link descriptors).
    min_links: usize,
}

/// bpftrace counts every firing of the tracepoints linkprobe hooks, in a kernel map it prints
/// at exit. BEGIN runs after every probe is attached: its line is the ready marker.
const BPFTRACE_READY: &str = "linkprobe-bench: ready";
const BPFTRACE_SCRIPT: &str = "BEGIN { printf(\"linkprobe-bench: ready\\n\"); } \
    tracepoint:tcp:tcp_receive_reset, tracepoint:tcp:tcp_send_reset, \
    tracepoint:tcp:tcp_retransmit_skb, tracepoint:sock:inet_sock_set_state \
    { @[probe] = count(); }";

fn spec(kind: TracerKind) -> Option<ExternalSpec> {
    match kind {
        TracerKind::Bpftrace => Some(ExternalSpec {
            program: &["bpftrace"],
            args: vec!["-e".into(), BPFTRACE_SCRIPT.into()],
            line_buffered: false,
            ready_line: |l| l.contains(BPFTRACE_READY),
            min_links: 4,
        }),
        // tcplife prints its header once its probe is attached.
        TracerKind::Tcplife => Some(ExternalSpec {
            program: &["tcplife", "/usr/sbin/tcplife"],
            args: Vec::new(),
            line_buffered: true,
            ready_line: |l| l.starts_with("PID"),
            min_links: 1,
        }),
        TracerKind::None | TracerKind::Linkprobe => None,
    }
}

/// The first of `names` found: a path as is, a bare name on PATH or in the sbin/bin dirs
/// (root's PATH may lack /usr/sbin).
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    names.iter().find_map(|name| {
        let p = Path::new(name);
        if p.is_absolute() {
            return p.is_file().then(|| p.to_path_buf());
        }
        dirs.iter().map(|d| d.join(name)).find(|c| c.is_file())
    })
}

/// Fails with what to do when a tracer's program is missing (set-up installs them).
pub fn check_available(kinds: &[TracerKind]) -> Result<()> {
    for kind in kinds {
        if let Some(s) = spec(*kind) {
            if find_program(s.program).is_none() {
                bail!(
                    "{} is not installed (looked for {}): run `cargo xtask setup`, or leave it \
                     out with --tracers",
                    kind.name(),
                    s.program.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// Descriptors of attached probes a process holds.
fn attached_links(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| {
            let t = t.to_string_lossy();
            t == "anon_inode:[perf_event]" || t == "anon_inode:bpf_link"
        })
        .count()
}

impl External {
    fn start(kind: TracerKind, s: &ExternalSpec, out_dir: &Path) -> Result<External> {
        let program =
            find_program(s.program).with_context(|| format!("{} is not installed", kind.name()))?;
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        let stdout_path = out_dir.join(format!("{}.out", kind.name()));
        let stderr_path = out_dir.join(format!("{}.err", kind.name()));
        let mut cmd = if s.line_buffered {
            let mut c = Command::new("stdbuf");
            c.arg("-oL").arg(&program);
            c
        } else {
            Command::new(&program)
        };
        cmd.args(&s.args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?);
        let command = shown(&cmd);
        println!("$ {command} > {} &", stdout_path.display());
        let child = testkit::process::stoppable(&mut cmd)
            .spawn()
            .with_context(|| format!("cannot start `{command}`"))?;
        let mut t = External {
            child: Some(child),
            command,
            stderr_path,
        };
        t.wait_ready(s, &stdout_path)?;
        Ok(t)
    }

    fn wait_ready(&mut self, s: &ExternalSpec, stdout_path: &Path) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().context("tracer already stopped")?;
            if let Some(status) = child.try_wait()? {
                bail!(
                    "`{}` exited ({status}) before it was ready:\n{}",
                    self.command,
                    self.stderr_tail()
                );
            }
            let marked = std::fs::read_to_string(stdout_path)
                .unwrap_or_default()
                .lines()
                .any(s.ready_line);
            if marked && attached_links(child.id()) >= s.min_links {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` was not ready within {} s; its stderr:\n{}",
                    self.command,
                    READY_TIMEOUT.as_secs(),
                    self.stderr_tail()
                );
            }
            check_interrupted()?;
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGINT (both tools detach and exit on it), bounded wait, SIGKILL past it.
    fn stop(mut self) -> Result<()> {
        let mut child = self.child.take().context("tracer already stopped")?;
        // Its figures are taken; a tool that hangs at exit is killed and reported, not fatal.
        let status = match interrupt_and_wait(&mut child, EXIT_TIMEOUT) {
            Ok(status) => status,
            Err(e) => {
                println!("[bench] WARNING: `{}`: {e:#}", self.command);
                return Ok(());
            }
        };
        // Ctrl-C reaches the tool first (same process group); the bench stops anyway.
        if !status.success() && status.code() != Some(130) {
            println!(
                "[bench] WARNING: `{}` exited with {status}:\n{}",
                self.command,
                self.stderr_tail()
            );
        }
        Ok(())
    }
}

impl Drop for External {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = interrupt_and_wait(&mut child, Duration::from_secs(5)) {
                eprintln!("warning: stopping `{}`: {e:#}", self.command);
            }
        }
    }
}

/// One tracer running for one measurement (nothing for the baseline).
pub enum Running {
    None,
    Linkprobe(Daemon),
    External(External),
}

impl Running {
    /// Starts `kind` scoped to the bench namespace where the tool can be (linkprobe); the
    /// others trace the whole host, as a user runs them (only the bench makes connections).
    pub fn start(kind: TracerKind, ns: &Netns, out_dir: &Path) -> Result<Running> {
        match kind {
            TracerKind::None => Ok(Running::None),
            TracerKind::Linkprobe => Ok(Running::Linkprobe(Daemon::start(ns, &[])?)),
            TracerKind::Bpftrace | TracerKind::Tcplife => {
                let s = spec(kind).context("external tracer without a spec")?;
                Ok(Running::External(External::start(kind, &s, out_dir)?))
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            Running::None => None,
            Running::Linkprobe(d) => d.pid(),
            Running::External(e) => e.pid(),
        }
    }

    pub fn peak_rss_kb(&self) -> Option<u64> {
        procstat::peak_rss_kb(self.pid()?)
    }

    pub fn daemon(&self) -> Option<&Daemon> {
        match self {
            Running::Linkprobe(d) => Some(d),
            _ => None,
        }
    }

    pub fn stop(self) -> Result<()> {
        match self {
            Running::None => Ok(()),
            Running::Linkprobe(d) => d.stop(),
            Running::External(e) => e.stop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_by_path_and_name() {
        assert_eq!(find_program(&["/bin/sh"]), Some(PathBuf::from("/bin/sh")));
        assert!(find_program(&["sh"]).is_some());
        assert_eq!(find_program(&["/no/such/tool", "no-such-tool-xyz"]), None);
    }

    #[test]
    fn ready_markers() {
        let bt = spec(TracerKind::Bpftrace).unwrap();
        assert!((bt.ready_line)("linkprobe-bench: ready"));
        assert!(!(bt.ready_line)("Attaching 5 probes..."));
        let tl = spec(TracerKind::Tcplife).unwrap();
        assert!((tl.ready_line)("PID     COMM             LADDR"));
        assert!(spec(TracerKind::Linkprobe).is_none());
    }
}
