//! Running child commands visibly: each is printed before it runs, output streams through,
//! and a failure names the command and its exit status.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{bail, Context as _, Result};

/// Root of the workspace (the parent of xtask's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn shown(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let text = shown(cmd);
    println!("$ {text}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{text}`"))?;
    if !status.success() {
        bail!("`{text}` failed with {status}");
    }
    Ok(())
}

/// Runs quietly and returns its output, for probing the machine's state.
pub fn capture(cmd: &mut Command) -> Result<Output> {
    let text = shown(cmd);
    cmd.output()
        .with_context(|| format!("cannot start `{text}`"))
}

/// stdout of a command that must succeed.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let text = shown(cmd);
    let out = capture(cmd)?;
    if !out.status.success() {
        bail!(
            "`{text}` failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
