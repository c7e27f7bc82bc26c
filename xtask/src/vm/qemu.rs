//! Boots one kernel under qemu/KVM and follows the results stream on its second serial port,
//! with a hard timeout (qemu is killed on it).
use std::{
    fs::{self, File},
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::initramfs::MARK;

/// How qemu runs the guest's CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM where it boots a kernel, else TCG (the answer is remembered per host kernel).
    Auto,
    /// Hardware virtualisation (`-enable-kvm -cpu host`).
    Kvm,
    /// Software emulation (`-accel tcg`): slower, but runs where /dev/kvm cannot boot a stock
    /// kernel (e.g. inside a paravirtualised VM whose KVM only runs adapted guests).
    Tcg,
}

/// What qemu is given.
pub struct Machine {
    /// Kvm or Tcg (Auto is decided before).
    pub accel: Accel,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    /// ttyS0: kernel messages and /init's progress.
    pub console_log: PathBuf,
    /// ttyS1: the results stream (markers and test output).
    pub results_log: PathBuf,
    pub memory: String,
    pub cpus: u32,
    pub timeout: Duration,
    /// qemu is killed when /init has not started by then (None: only `timeout`).
    pub boot_deadline: Option<Duration>,
}

/// How the run went, as seen from the host.
#[derive(Debug)]
pub struct Run {
    /// qemu start → `/init` running (its first marker).
    pub boot: Option<Duration>,
    /// qemu start → qemu exit (or kill).
    pub total: Duration,
    pub timed_out: bool,
    /// The results stream, whole.
    pub results: String,
    /// qemu's complaint when it ended before the guest's /init ran.
    pub qemu_error: Option<String>,
}

/// Kills qemu when the run is abandoned (an error, a panic), so no VM outlives xtask.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn command(m: &Machine) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    match m.accel {
        Accel::Tcg => c.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
        Accel::Kvm | Accel::Auto => c.args(["-enable-kvm", "-cpu", "host"]),
    };
    c.args(["-nographic", "-nodefaults", "-no-user-config"])
        .args(["-monitor", "none", "-no-reboot"])
        .args(["-m", &m.memory, "-smp", &m.cpus.to_string()])
        .arg("-kernel")
        .arg(&m.vmlinuz)
        .arg("-initrd")
        .arg(&m.initrd)
        // panic=-1: a dying /init reboots, which -no-reboot turns into qemu exiting.
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init"])
        .arg("-serial")
        .arg(format!("file:{}", m.console_log.display()))
        .arg("-serial")
        .arg(format!("file:{}", m.results_log.display()));
    c
}

/// Runs the machine; `on_line` sees each complete line of the results stream as it arrives.
pub fn run(m: &Machine, mut on_line: impl FnMut(&str)) -> Result<Run> {
    for log in [&m.console_log, &m.results_log] {
        let _ = fs::remove_file(log);
    }
    let qemu_log = m.console_log.with_extension("qemu.log");
    let mut cmd = command(m);
    cmd.stdin(Stdio::null())
        .stdout(File::create(&qemu_log)?)
        .stderr(File::create(qemu_log.with_extension("err"))?);
    let start = Instant::now();
    let mut child = KillOnDrop(cmd.spawn().context("starting qemu-system-x86_64")?);
    let mut boot = None;
    let mut timed_out = false;
    let mut results = String::new();
    let mut offset = 0u64;
    // Bytes, not text: a read may end inside a multi-byte character.
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let exited = child.0.try_wait()?.is_some();
        partial.extend(read_from(&m.results_log, &mut offset)?);
        while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
            let bytes: Vec<u8> = partial.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&bytes);
            let line = text.trim_end_matches(['\n', '\r']);
            if boot.is_none() && line.starts_with(&format!("{MARK} init")) {
                boot = Some(start.elapsed());
            }
            on_line(line);
            results.push_str(line);
            results.push('\n');
        }
        if exited {
            break;
        }
        let boot_late = boot.is_none() && m.boot_deadline.is_some_and(|d| start.elapsed() > d);
        if start.elapsed() > m.timeout || boot_late {
            timed_out = true;
            let _ = child.0.kill();
            let _ = child.0.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    results.push_str(&String::from_utf8_lossy(&partial));
    let status = child.0.wait()?;
    let qemu_error = (boot.is_none() && !timed_out).then(|| {
        let err = fs::read_to_string(qemu_log.with_extension("err")).unwrap_or_default();
        format!("qemu exited with {status} before /init ran: {}", err.trim())
    });
    Ok(Run {
        boot,
        total: start.elapsed(),
        timed_out,
        results,
        qemu_error,
    })
}

/// What was appended to `path` since `offset` (nothing when it does not exist yet).
fn read_from(path: &Path, offset: &mut u64) -> Result<Vec<u8>> {
    let Ok(mut f) = File::open(path) else {
        return Ok(Vec::new());
    };
    f.seek(SeekFrom::Start(*offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    *offset += buf.len() as u64;
    Ok(buf)
}
