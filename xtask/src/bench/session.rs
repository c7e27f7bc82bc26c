//! What every phase of one bench run shares: Ctrl-C (noted, so the guards still clean up),
//! the output directory and a fresh network namespace per measurement. Kept apart from
//! `bench/mod.rs`, which only runs the phases, so that the phases need nothing from it.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Result};
use testkit::netns::Netns;

use crate::cmd::target_dir;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// On Ctrl-C the children (same process group) get SIGINT and stop; xtask itself only notes
/// it, so that the namespace guard and the tracer guards still clean up on the way out.
pub fn catch_sigint() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe. A handler (not
    // SIG_IGN) is reset to the default in exec'd children, so they still die on Ctrl-C.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// `target/bench`: the JSON, the chart and the external tools' output.
pub fn out_dir() -> PathBuf {
    target_dir().join("bench")
}

/// A new private network namespace for one measurement or phase, deleted when dropped.
pub fn fresh_netns(tag: &str) -> Result<Netns> {
    Ok(Netns::create(format!(
        "lpbench-{}-{tag}",
        std::process::id()
    ))?)
}
