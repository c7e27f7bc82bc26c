//! A named network namespace (`ip netns`) that is deleted when dropped, also on errors.
use std::process::Command;

use anyhow::Result;

use crate::cmd::{run, shown};

pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME` and bring its loopback up.
    pub fn create(name: String) -> Result<Netns> {
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on, Drop removes it even if the next command fails.
        let ns = Netns { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`: a command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut c = Command::new("ip");
        c.args(["netns", "del", &self.name]);
        println!("$ {}", shown(&c));
        match c.status() {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("warning: `{}` failed with {s}", shown(&c)),
            Err(e) => eprintln!("warning: cannot run `{}`: {e}", shown(&c)),
        }
    }
}
