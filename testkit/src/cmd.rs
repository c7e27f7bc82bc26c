//! Commands the harness runs to completion: shown as a shell user would type them, quiet
//! queries and echoed changes, failing with the command, its status and its stderr.
use std::process::{Command, Stdio};

use crate::error::Error;

/// The command line as a shell user would type it (environment overrides first).
pub fn shown(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` quietly (stdin empty); its stdout when it exits 0, else [`Error::Failed`] with
/// its stderr.
pub fn stdout_of(cmd: &mut Command) -> Result<String, Error> {
    let command = shown(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(Error::spawn(&command))?;
    if !out.status.success() {
        return Err(Error::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prints `$ command`, then runs it as [`stdout_of`] does: for commands that change the system.
pub fn run(cmd: &mut Command) -> Result<String, Error> {
    println!("$ {}", shown(cmd));
    stdout_of(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_puts_environment_overrides_first() {
        let mut c = Command::new("cargo");
        c.env("RUSTFLAGS", "-Dwarnings").args(["build", "-p", "x"]);
        assert_eq!(shown(&c), "RUSTFLAGS=-Dwarnings cargo build -p x");
    }

    #[test]
    fn a_failed_command_says_what_it_printed() {
        let e = stdout_of(Command::new("sh").args(["-c", "echo nope >&2; exit 3"])).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("`sh -c echo nope >&2; exit 3` failed with"),
            "{text}"
        );
        assert!(text.ends_with(": nope"), "{text}");
        assert_eq!(stdout_of(Command::new("echo").arg("hi")).unwrap(), "hi\n");
        let missing = stdout_of(&mut Command::new("/no/such/program")).unwrap_err();
        assert!(matches!(missing, Error::Spawn { .. }), "{missing}");
    }
}
