//! Running child commands visibly: each action is printed (`$ cmd args`) before it runs, its
//! output streams through, and a failure names the command and its exit status.
//! Quiet probes of the machine's state (`capture`, `stdout_of`) are not printed, so a set-up
//! that has nothing to do stays at one line per step.
use std::{
    env, fmt,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
};

use anyhow::{Context as _, Result};

/// Root of the workspace (the parent of xtask's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The cargo that runs xtask (same toolchain), started in the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// The command line as a shell user would type it (environment overrides first).
pub use testkit::cmd::shown;

/// A child command that ran but did not exit 0. `main` exits with the child's code.
#[derive(Debug)]
pub struct CommandFailed {
    pub command: String,
    pub status: ExitStatus,
    /// What a quiet command printed on stderr (empty for streamed commands).
    pub stderr: String,
}

impl CommandFailed {
    /// The exit code to hand on: the child's own, or 128 + signal like a shell.
    pub fn exit_code(&self) -> u8 {
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => u8::try_from(code).unwrap_or(1).max(1),
            (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
            (None, None) => 1,
        }
    }
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed with {}", self.command, self.status)?;
        if !self.stderr.is_empty() {
            write!(f, ": {}", self.stderr)?;
        }
        Ok(())
    }
}

impl std::error::Error for CommandFailed {}

/// Prints the command, runs it with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let command = shown(cmd);
    println!("$ {command}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{command}`"))?;
    if !status.success() {
        return Err(CommandFailed {
            command,
            status,
            stderr: String::new(),
        }
        .into());
    }
    Ok(())
}

/// Prints the command and replaces this process with it; returns only on failure to start.
pub fn exec(cmd: &mut Command) -> anyhow::Error {
    let command = shown(cmd);
    println!("$ {command}");
    let err = cmd.exec();
    anyhow::Error::new(err).context(format!("cannot start `{command}`"))
}

/// Prints the command and runs it with stderr streaming through; returns its stdout.
pub fn run_stdout(cmd: &mut Command) -> Result<String> {
    let command = shown(cmd);
    println!("$ {command}");
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{command}`"))?;
    if !out.status.success() {
        return Err(CommandFailed {
            command,
            status: out.status,
            stderr: String::new(),
        }
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prints the command and runs it with its stdout shown line by line as it comes and kept:
/// returns the exit verdict and that stdout (stderr streams through).
pub fn run_tee(cmd: &mut Command) -> (Result<()>, String) {
    let command = shown(cmd);
    println!("$ {command}");
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let err = anyhow::Error::new(e).context(format!("cannot start `{command}`"));
            return (Err(err), String::new());
        }
    };
    let mut kept = String::new();
    if let Some(out) = child.stdout.take() {
        let mut out = std::io::BufReader::new(out);
        let mut line = Vec::new();
        // Lines, not UTF-8 strings: a test may print anything.
        while matches!(std::io::BufRead::read_until(&mut out, b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            print!("{text}");
            kept.push_str(&text);
            line.clear();
        }
    }
    let verdict = match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(CommandFailed {
            command,
            status,
            stderr: String::new(),
        }
        .into()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("waiting for `{command}`"))),
    };
    (verdict, kept)
}

/// Runs quietly and returns its output, for probing the machine's state.
pub fn capture(cmd: &mut Command) -> Result<Output> {
    let command = shown(cmd);
    cmd.output()
        .with_context(|| format!("cannot start `{command}`"))
}

/// stdout of a quiet command that must succeed; its stderr goes into the error.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let command = shown(cmd);
    let out = capture(cmd)?;
    if !out.status.success() {
        return Err(CommandFailed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
