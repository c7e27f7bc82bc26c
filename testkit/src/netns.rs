//! A named network namespace (`ip netns`) deleted when dropped, also on errors and panics;
//! threads entered into it, nftables scripts loaded into it, its own `nstat` counters.
use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs::File,
    io::Write as _,
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
};

use crate::{
    cmd::{run, shown, stdout_of},
    error::Error,
};

pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME` (a leftover of that name from a killed run deleted first) and its
    /// loopback up.
    pub fn create(name: impl Into<String>) -> Result<Netns, Error> {
        let name = name.into();
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on, Drop removes it even if the next command fails.
        let ns = Netns { name };
        stdout_of(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`: a command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a thread that has entered this namespace; a panic in `f` goes on in the
    /// caller.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let name = self.name.clone();
        let joined = std::thread::spawn(move || enter_current_thread(&name).map(|()| f())).join();
        joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Loads an nftables script into the namespace.
    pub fn nft(&self, script: &str) -> Result<(), Error> {
        nft(&self.name, script)
    }

    /// Absolute SNMP/netstat counters of the namespace (`nstat -asz`: absolute, no history
    /// file, zeros included).
    pub fn nstat(&self) -> Result<Nstat, Error> {
        Ok(parse_nstat(&stdout_of(self.command("nstat").arg("-asz"))?))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut c = Command::new("ip");
        c.args(["netns", "del", &self.name]);
        if let Err(e) = run(&mut c) {
            eprintln!("warning: {e}");
        }
    }
}

/// Moves the calling thread (only) into the named namespace.
pub fn enter_current_thread(name: &str) -> Result<(), Error> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).map_err(|e| Error::io(format!("open {path}"), e))?;
    // SAFETY: setns on an fd we own; it affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(Error::io(
            format!("setns {path}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Loads an nftables script into namespace `ns` (usable from any thread).
pub fn nft(ns: &str, script: &str) -> Result<(), Error> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let command = shown(&cmd);
    let mut child = cmd.spawn().map_err(Error::spawn(&command))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::io(format!("writing the script to `{command}`"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("waiting for `{command}`"), e))?;
    if !out.status.success() {
        return Err(Error::Failed {
            command,
            status: out.status,
            stderr: format!("{}\n{script}", String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(())
}

/// Absolute SNMP/netstat counters by name.
pub type Nstat = BTreeMap<String, u64>;

/// `nstat -a` output: a `#kernel` header, then `Name value rate` lines.
pub fn parse_nstat(text: &str) -> Nstat {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// `after[key] - before[key]` (0 for a counter missing from both; never negative).
pub fn delta(before: &Nstat, after: &Nstat, key: &str) -> u64 {
    after
        .get(key)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(key).copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NSTAT: &str = "#kernel\nTcpActiveOpens                  120                0.0\n\
                         TcpPassiveOpens                 100                0.0\n\
                         TcpAttemptFails                 20                 0.0\n\
                         TcpOutRsts                      20                 0.0\n\
                         TcpEstabResets                  0                  0.0\n\
                         TcpExtTW                        100                0.0\n";

    #[test]
    fn parses_nstat_and_takes_deltas() {
        let after = parse_nstat(NSTAT);
        assert_eq!(after["TcpActiveOpens"], 120);
        assert_eq!(after.len(), 6);
        let before = parse_nstat("#kernel\nTcpActiveOpens 20 0.0\n");
        assert_eq!(delta(&before, &after, "TcpActiveOpens"), 100);
        assert_eq!(delta(&before, &after, "TcpOutRsts"), 20);
        assert_eq!(delta(&after, &before, "TcpOutRsts"), 0);
        assert_eq!(delta(&before, &after, "NoSuchCounter"), 0);
    }

    #[test]
    fn a_missing_namespace_cannot_be_entered() {
        let e = std::thread::spawn(|| enter_current_thread("testkit-no-such-netns"))
            .join()
            .unwrap()
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("open /run/netns/testkit-no-such-netns:"),
            "{e}"
        );
    }

    /// Needs root and iproute2 (as the real-kernel tests do); passes without doing anything
    /// otherwise.
    #[test]
    fn a_namespace_is_entered_and_deleted_on_drop() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || stdout_of(Command::new("ip").arg("-V")).is_err() {
            eprintln!("skip: needs root and ip");
            return;
        }
        let name = format!("testkit-{}", std::process::id());
        let ns = Netns::create(name.clone()).unwrap();
        let inside = ns
            .enter(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())
            .unwrap();
        let outside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(inside, outside);
        assert!(ns.nstat().is_ok());
        drop(ns);
        assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
    }
}
