//! A background process under a guard that stops it on every path (SIGINT, then SIGKILL past
//! a bound): linkprobe's daemon or tracer, a streaming CLI command. Its stdout and stderr are
//! line channels fed by reader threads, so the caller waits for a ready line with a timeout,
//! reads lines as they come, and gets every line once the process has exited.
use std::{
    io::{BufRead as _, BufReader, Read},
    mem,
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use crate::{cmd::shown, error::Error};

/// How long Drop waits after SIGINT before SIGKILL.
const DROP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pipe may stay open after its process exited (a grandchild holding it).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Which output a ready line is looked for on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipe {
    Stdout,
    Stderr,
}

pub struct Background {
    /// None once waited for; Drop stops a child still running (error paths, panics).
    child: Option<Child>,
    command: String,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Lines read while waiting for a ready line (not the ready line itself).
    stdout_seen: Vec<String>,
    stderr_seen: Vec<String>,
}

/// What a stopped process left: its status and every line it printed (but ready lines).
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Background {
    /// Prints `$ command &` and starts it (stdin empty, stdout and stderr piped). With
    /// `echo_stderr`, each stderr line is also printed on this process's stderr as it comes,
    /// after that prefix (`[linkprobe] …`), so a hang shows what the process said.
    pub fn start(cmd: &mut Command, echo_stderr: Option<&str>) -> Result<Background, Error> {
        let command = shown(cmd);
        println!("$ {command} &");
        stoppable(cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(Error::spawn(&command))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            unreachable!("both pipes were asked for");
        };
        let echo = echo_stderr.map(str::to_owned);
        Ok(Background {
            child: Some(child),
            command,
            stdout: line_channel(stdout, None),
            stderr: line_channel(stderr, echo),
            stdout_seen: Vec::new(),
            stderr_seen: Vec::new(),
        })
    }

    /// The command line, as shown when it started.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The running process's pid (None once it was waited for).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stdout lines as they come (those no [`Self::wait_for`] read).
    pub fn stdout(&self) -> &Receiver<String> {
        &self.stdout
    }

    /// Reads `pipe` until a line that `ready` accepts and returns it; the lines before it are
    /// kept for [`Self::stop`]. Fails when `timeout` passes first or the process closes the
    /// pipe (exits), with what it printed so far.
    pub fn wait_for(
        &mut self,
        pipe: Pipe,
        timeout: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let (rx, seen) = match pipe {
                Pipe::Stdout => (&self.stdout, &mut self.stdout_seen),
                Pipe::Stderr => (&self.stderr, &mut self.stderr_seen),
            };
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if ready(&line) => return Ok(line),
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    self.drain(Duration::ZERO);
                    return Err(Error::NotReady {
                        command: self.command.clone(),
                        secs: timeout.as_secs(),
                        output: self.output_so_far(),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = match self.child.take().map(|mut c| c.wait()) {
                        Some(Ok(status)) => status.to_string(),
                        Some(Err(e)) => format!("status unknown: {e}"),
                        None => "already waited for".to_owned(),
                    };
                    self.drain(DRAIN_TIMEOUT);
                    return Err(Error::ExitedEarly {
                        command: self.command.clone(),
                        status,
                        output: self.output_so_far(),
                    });
                }
            }
        }
    }

    /// SIGINT, a wait of at most `timeout` (then SIGKILL and [`Error::Killed`]), and every
    /// line it printed.
    pub fn stop(mut self, timeout: Duration) -> Result<Exited, Error> {
        let Some(mut child) = self.child.take() else {
            return Err(Error::io(
                format!("stopping `{}`", self.command),
                std::io::Error::other("already waited for"),
            ));
        };
        let status = interrupt_and_wait(&mut child, timeout)?;
        self.drain(DRAIN_TIMEOUT);
        Ok(Exited {
            status,
            stdout: mem::take(&mut self.stdout_seen),
            stderr: mem::take(&mut self.stderr_seen),
        })
    }

    /// SIGKILL (no chance to clean up, as when the OOM killer or a node failure ends it), the
    /// wait, and every line it printed.
    pub fn kill(mut self) -> Result<Exited, Error> {
        let Some(mut child) = self.child.take() else {
            return Err(Error::io(
                format!("killing `{}`", self.command),
                std::io::Error::other("already waited for"),
            ));
        };
        let pid = child.id();
        child
            .kill()
            .map_err(|e| Error::io(format!("SIGKILL to pid {pid}"), e))?;
        let status = child
            .wait()
            .map_err(|e| Error::io(format!("waiting for pid {pid}"), e))?;
        self.drain(DRAIN_TIMEOUT);
        Ok(Exited {
            status,
            stdout: mem::take(&mut self.stdout_seen),
            stderr: mem::take(&mut self.stderr_seen),
        })
    }

    /// Moves the lines that arrive within `timeout` (until both pipes close) into the seen ones.
    fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for (rx, seen) in [
            (&self.stdout, &mut self.stdout_seen),
            (&self.stderr, &mut self.stderr_seen),
        ] {
            while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                seen.push(line);
            }
        }
    }

    /// What the process printed so far, for an error message.
    fn output_so_far(&self) -> String {
        let mut out = String::new();
        for (name, lines) in [("stderr", &self.stderr_seen), ("stdout", &self.stdout_seen)] {
            if !lines.is_empty() {
                out += &format!("\nits {name}:\n{}", lines.join("\n"));
            }
        }
        if out.is_empty() {
            out = " (it printed nothing)".to_owned();
        }
        out
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = interrupt_and_wait(&mut child, DROP_TIMEOUT) {
                eprintln!("warning: stopping `{}`: {e}", self.command);
            }
        }
    }
}

/// Makes `cmd`'s child stoppable by SIGINT/SIGTERM: it must not inherit them ignored (as every
/// command started from a non-interactive shell's background job does), or it would wait out
/// the stop bound and be killed instead of stopping cleanly.
pub fn stoppable(cmd: &mut Command) -> &mut Command {
    // SAFETY: between fork and exec only async-signal-safe calls: signal(2).
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        })
    }
}

/// SIGINT, wait up to `timeout`, then SIGKILL ([`Error::Killed`] says so). For a child not
/// waited for yet (so its pid is still ours).
pub fn interrupt_and_wait(child: &mut Child, timeout: Duration) -> Result<ExitStatus, Error> {
    let pid = child.id();
    let waiting = |e| Error::io(format!("waiting for pid {pid}"), e);
    if let Some(status) = child.try_wait().map_err(waiting)? {
        return Ok(status);
    }
    match libc::pid_t::try_from(pid) {
        // SAFETY: signalling our own child, which has not been waited for.
        Ok(p) => unsafe {
            libc::kill(p, libc::SIGINT);
        },
        Err(_) => {
            let _ = child.kill();
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(waiting)? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait().map_err(waiting)?;
            return Err(Error::Killed {
                pid,
                secs: timeout.as_secs(),
                status,
            });
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Every line read from `out`, as a channel fed by a reader thread (which also prints each
/// line on stderr after `echo`, when given).
pub fn line_channel(out: impl Read + Send + 'static, echo: Option<String>) -> Receiver<String> {
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(prefix) = &echo {
                eprintln!("{prefix} {line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn ready_line_then_every_other_line_after_stop() {
        let mut p = Background::start(
            &mut sh(
                "trap 'echo bye; exit 0' INT; echo starting >&2; echo first; echo ready >&2; \
                     while :; do sleep 0.01; done",
            ),
            Some("[sh]"),
        )
        .unwrap();
        assert!(p.pid().is_some());
        let line = p
            .wait_for(Pipe::Stderr, Duration::from_secs(10), |l| l == "ready")
            .unwrap();
        assert_eq!(line, "ready");
        let exited = p.stop(Duration::from_secs(10)).unwrap();
        assert!(exited.status.success(), "{exited:?}");
        assert_eq!(exited.stdout, ["first", "bye"]);
        assert_eq!(exited.stderr, ["starting"]);
    }

    #[test]
    fn an_exit_before_the_ready_line_is_an_error_with_the_output() {
        let mut p = Background::start(&mut sh("echo oops >&2; exit 4"), None).unwrap();
        let e = p
            .wait_for(Pipe::Stdout, Duration::from_secs(10), |_| true)
            .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::ExitedEarly { .. }), "{text}");
        assert!(text.contains("exit status: 4"), "{text}");
        assert!(text.ends_with("its stderr:\noops"), "{text}");
        assert_eq!(p.pid(), None);
    }

    #[test]
    fn no_ready_line_in_time_is_an_error() {
        let mut p = Background::start(&mut sh("echo waiting; exec sleep 30"), None).unwrap();
        let e = p
            .wait_for(Pipe::Stdout, Duration::from_millis(300), |l| l == "ready")
            .unwrap_err();
        assert!(matches!(e, Error::NotReady { .. }), "{e}");
        assert!(e.to_string().ends_with("its stdout:\nwaiting"), "{e}");
        // Drop stops it (sh dies of SIGINT).
        let pid = p.pid().unwrap();
        drop(p);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_process_that_ignores_sigint_is_killed_past_the_bound() {
        let mut p = Background::start(
            &mut sh("trap '' INT; echo armed; while :; do sleep 0.01; done"),
            None,
        )
        .unwrap();
        p.wait_for(Pipe::Stdout, Duration::from_secs(10), |l| l == "armed")
            .unwrap();
        let e = p.stop(Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, Error::Killed { .. }), "{e}");
    }
}
