//! A background linkprobe for the bench: any linkprobe command line ([`Tracer::start_with`]),
//! e.g. a daemon with its exporter, under a guard that stops it on every path.
//!
//! Contract with linkprobe: it prints the attach table on stderr, then a line containing
//! `linkprobe: ready`, and exits 0 on SIGINT.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::shown;

const READY: &str = "linkprobe: ready";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Tracer {
    /// None once waited for; Drop stops a child still running (error paths).
    child: Option<Child>,
    command: String,
    stderr: Receiver<String>,
    /// Every stderr line read so far, for error messages.
    stderr_seen: Vec<String>,
    stdout: Option<JoinHandle<String>>,
}

impl Tracer {
    /// Starts `linkprobe ARGS...` (a subcommand and its flags) and waits until it is ready.
    /// Dropping the guard stops it (SIGINT, then SIGKILL), also on error paths.
    pub fn start_with(bin: &Path, args: &[&str]) -> Result<Tracer> {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let command = shown(&cmd);
        println!("$ {command} &");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{command}`"))?;
        let stderr = child.stderr.take().context("linkprobe stderr")?;
        let mut stdout = child.stdout.take().context("linkprobe stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdout = thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let mut t = Tracer {
            child: Some(child),
            command,
            stderr: rx,
            stderr_seen: Vec::new(),
            stdout: Some(stdout),
        };
        t.wait_ready()?;
        Ok(t)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains(READY);
                    self.stderr_seen.push(line);
                    if ready {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "`{}` did not print `{READY}` within {} s; its stderr so far:\n{}",
                    self.command,
                    READY_TIMEOUT.as_secs(),
                    self.stderr_seen.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = match self.child.take() {
                        Some(mut c) => c.wait()?.to_string(),
                        None => "unknown status".into(),
                    };
                    let stdout = self.stdout_text();
                    bail!(
                        "`{}` exited ({status}) before printing `{READY}`:\n{}{stdout}",
                        self.command,
                        self.stderr_seen.join("\n"),
                    );
                }
            }
        }
    }

    /// The running linkprobe's pid (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `linkprobe stdout:` block for error messages (its final output).
    fn stdout_text(&mut self) -> String {
        let out = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if out.trim().is_empty() {
            "\n(linkprobe stdout: empty)".into()
        } else {
            format!("\nlinkprobe stdout:\n{}", out.trim_end())
        }
    }

    /// SIGINT, then wait (bounded) for a clean exit 0.
    pub fn stop(mut self) -> Result<()> {
        let mut child = self.child.take().context("linkprobe already stopped")?;
        let status = interrupt_and_wait(&mut child, EXIT_TIMEOUT)?;
        // The pipe closes when linkprobe exits; collect what it printed after `ready`.
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.stderr_seen.push(line);
        }
        if !status.success() {
            let stdout = self.stdout_text();
            bail!(
                "`{}` exited with {status} after SIGINT; stderr:\n{}{stdout}",
                self.command,
                self.stderr_seen.join("\n"),
            );
        }
        Ok(())
    }
}

/// SIGINT, wait up to `timeout`, then SIGKILL (and an error saying so).
pub fn interrupt_and_wait(
    child: &mut Child,
    timeout: Duration,
) -> Result<std::process::ExitStatus> {
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    // SAFETY: signalling our own child, which has not been waited for (so the pid is ours).
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait()?;
            bail!(
                "pid {pid} did not exit within {} s of SIGINT; killed ({status})",
                timeout.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = interrupt_and_wait(&mut child, Duration::from_secs(5)) {
                eprintln!("warning: stopping linkprobe: {e:#}");
            }
        }
    }
}
