//! `cargo xtask vm`: the kernel matrix. Boots Debian cloud kernels under qemu/KVM with a small
//! Debian root filesystem and this tree's test binaries, runs `linkprobe probes`, the
//! real-kernel tests and the library's unit tests inside, and reports per kernel; the README's
//! kernel table is generated from the saved results.
mod debver;
mod initramfs;
mod kernel;
mod known;
mod matrix;
mod packages;
mod qemu;
mod results;
mod rootfs;
mod suites;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{cargo, is_root, run_stdout, stdout_of, target_dir, workspace_root};
use kernel::Kernel;
use packages::Want;
use qemu::Accel;
use results::KernelResult;
use suites::{KERNEL_TESTS, UNIT_TESTS};

/// With `--accel auto`, KVM must have the guest's /init running by then; a KVM boot of the
/// initramfs takes seconds, so a miss means this host's KVM cannot boot stock kernels.
const KVM_BOOT_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// Kernel to boot: a version prefix (`5.10`, `6.1`, `6.12`) or `newest`; the newest
    /// matching linux-image-*-cloud-amd64 of the Debian suites is fetched.
    #[arg(long, conflicts_with_all = ["kernels", "all"])]
    pub kernel: Option<String>,
    /// Several kernels, comma-separated: `--kernels 5.10,6.1,newest`.
    #[arg(long, value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Every kernel already in the cache (target/vm/kernels).
    #[arg(long)]
    pub all: bool,
    /// Seconds one VM may run before it is killed.
    #[arg(long, default_value_t = 1500)]
    pub timeout: u64,
    /// CPU virtualisation: kvm, tcg (software), or auto (KVM, falling back to TCG when KVM
    /// cannot boot the kernel; remembered per host kernel in target/vm/accel-<release>).
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Guest memory (qemu -m).
    #[arg(long, default_value = "4G")]
    pub memory: String,
    /// Guest CPUs (qemu -smp).
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Do not regenerate README.md's kernel table.
    #[arg(long, conflicts_with = "readme_only")]
    pub no_readme: bool,
    /// Boot nothing: print the saved results and regenerate README.md's kernel table from them
    /// (after a change to the known failures, say).
    #[arg(long, conflicts_with_all = ["kernel", "kernels", "all"])]
    pub readme_only: bool,
    /// Arguments for the kernel test binary (a name filter, `--test-threads=1`, …).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// The kernels `cargo xtask test` boots: Debian 12's kernel and the newest Debian has.
pub const TEST_KERNELS: &[&str] = &["6.1", "newest"];

impl VmArgs {
    /// What `cargo xtask test` runs: [`TEST_KERNELS`], the README left alone.
    pub fn for_test() -> VmArgs {
        VmArgs {
            kernel: None,
            kernels: TEST_KERNELS.iter().map(|k| (*k).to_owned()).collect(),
            all: false,
            timeout: 1500,
            accel: Accel::Auto,
            memory: "4G".into(),
            cpus: 2,
            no_readme: true,
            readme_only: false,
            test_args: Vec::new(),
        }
    }
}

/// `target/vm`.
fn vm_dir() -> PathBuf {
    target_dir().join("vm")
}

pub fn vm(args: &VmArgs) -> Result<()> {
    if args.readme_only {
        for r in saved_results(&vm_dir()) {
            print!("{}", r.render());
        }
        return update_readme(&vm_dir());
    }
    if !is_root() {
        bail!(
            "`cargo xtask vm` builds a root filesystem with mmdebstrap and boots qemu with KVM, \
             which need root: run `sudo -E cargo xtask vm …`"
        );
    }
    if args.accel == Accel::Kvm && !Path::new("/dev/kvm").exists() {
        bail!("/dev/kvm is missing: use --accel tcg (software emulation) or a host with KVM");
    }
    let dir = vm_dir();
    fs::create_dir_all(&dir)?;
    let kernels = kernels(&dir, args)?;
    let rootfs = rootfs::ensure(&dir)?;
    let tests = payload(
        &dir,
        "payload",
        &[
            (KERNEL_TESTS, vm_test_args(&args.test_args)),
            (UNIT_TESTS, Vec::new()),
        ],
        args.timeout,
    )?;
    let mut failed = Vec::new();
    for k in &kernels {
        let mut r = boot(&dir, k, &k.release, &rootfs, &tests, args)?;
        if r.died_under_tcg() {
            let line = panic_line(&dir.join("run").join(&k.release).join("console.log"));
            println!(
                "[vm] {}: the kernel died under software emulation before the tests finished \
                 ({line}); booting once more to run them all",
                k.release
            );
            let name = format!("{}-again", k.release);
            r = boot(&dir, k, &name, &rootfs, &tests, args)?;
            r.died_before = Some(line);
        }
        if let Some(retry) = retry_under_tcg(&r) {
            let names: Vec<&str> = retry
                .iter()
                .flat_map(|(_, t)| t)
                .map(String::as_str)
                .collect();
            println!(
                "[vm] {}: {} unexpected failure(s) under TCG; booting once more to run them \
                 alone: {}",
                k.release,
                names.len(),
                names.join(", ")
            );
            let sections: Vec<(&str, Vec<String>)> = retry
                .iter()
                .map(|(suite, tests)| {
                    let mut exact = vec!["--exact".to_owned()];
                    exact.extend(tests.iter().cloned());
                    (*suite, exact)
                })
                .collect();
            let retry_payload = payload(&dir, "payload-retry", &sections, args.timeout)?;
            let name = format!("{}-retry", k.release);
            let again = boot(&dir, k, &name, &rootfs, &retry_payload, args)?;
            let _ = fs::remove_file(&retry_payload);
            for s in &mut r.suites {
                if let Some(t) = again.suites.iter().find(|t| t.name == s.name) {
                    s.merge_retry(t);
                }
            }
        }
        save(&dir, &r)?;
        print!("{}", r.render());
        if !r.ok() {
            failed.push((k.release.clone(), r.why_failed()));
        }
    }
    if !args.no_readme {
        update_readme(&dir)?;
    }
    if !failed.is_empty() {
        println!("== kernel matrix: what failed");
        for (release, why) in &failed {
            println!("   {release}:");
            for line in why {
                println!("     {line}");
            }
        }
        let names: Vec<&str> = failed.iter().map(|(r, _)| r.as_str()).collect();
        bail!("kernel matrix: failures on {}", names.join(", "));
    }
    Ok(())
}

/// The kernels to boot, fetched when missing.
fn kernels(dir: &Path, args: &VmArgs) -> Result<Vec<Kernel>> {
    if args.all {
        let cached = kernel::cached(dir);
        if cached.is_empty() {
            bail!("no kernel is cached yet: run `cargo xtask vm --kernel 6.1` (or newest) first");
        }
        println!(
            "[vm] cached kernels: {}",
            cached
                .iter()
                .map(|k| k.release.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(cached);
    }
    let wants: Vec<Want> = args
        .kernel
        .iter()
        .chain(&args.kernels)
        .map(|s| Want::parse(s))
        .collect();
    if wants.is_empty() {
        bail!("say which kernels: --kernel 6.1, --kernels 5.10,6.1,newest or --all");
    }
    let mut out: Vec<Kernel> = Vec::new();
    for want in &wants {
        let choice = kernel::resolve(dir, want)?;
        let k = kernel::ensure(dir, &choice)?;
        if !out.iter().any(|o| o.release == k.release) {
            out.push(k);
        }
    }
    Ok(out)
}

/// Paths of the test binaries cargo built (`--message-format=json` artifacts).
struct TestBinaries {
    kernel_tests: PathBuf,
    unit_tests: PathBuf,
    linkprobe: PathBuf,
}

fn build_tests() -> Result<TestBinaries> {
    let out = run_stdout(cargo().args([
        "test",
        "-p",
        "probe-user",
        "--no-run",
        "--message-format=json",
    ]))?;
    let mut kernel_tests = None;
    let mut unit_tests = None;
    let mut linkprobe = None;
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = v["executable"].as_str().map(PathBuf::from) else {
            continue;
        };
        let kinds = v["target"]["kind"].as_array().cloned().unwrap_or_default();
        let is = |k: &str| kinds.iter().any(|x| x == k);
        let test = v["profile"]["test"] == true;
        match v["target"]["name"].as_str() {
            Some("kernel") if test && is("test") => kernel_tests = Some(exe),
            Some("probe_user") if test && is("lib") => unit_tests = Some(exe),
            Some("linkprobe") if !test && is("bin") => linkprobe = Some(exe),
            _ => {}
        }
    }
    Ok(TestBinaries {
        kernel_tests: kernel_tests.context("cargo built no `kernel` test binary")?,
        unit_tests: unit_tests.context("cargo built no probe-user unit test binary")?,
        linkprobe: linkprobe.context("cargo built no linkprobe binary")?,
    })
}

/// Under software emulation some tests miss their timing (a storm too slow, a daemon that
/// answers late, a program preempted twice): when a run's only unexpected failures are a few
/// tests, they get one more boot to run alone. Failures that pass there are listed as
/// flaky, never dropped; a test that fails again fails the kernel.
const RETRY_AT_MOST: usize = 4;

fn retry_under_tcg(r: &KernelResult) -> Option<Vec<(&'static str, Vec<String>)>> {
    if r.ok() || r.accel != "tcg" || !r.completed || r.timed_out {
        return None;
    }
    let mut retry = Vec::new();
    for suite in [KERNEL_TESTS, UNIT_TESTS] {
        let Some(s) = r.suites.iter().find(|s| s.name == suite) else {
            continue;
        };
        if !s.finished {
            return None;
        }
        let unexpected = s.unexpected();
        if !unexpected.is_empty() {
            retry.push((suite, unexpected.into_iter().map(str::to_owned).collect()));
        }
    }
    let count: usize = retry.iter().map(|(_, t): &(_, Vec<String>)| t.len()).sum();
    (count > 0 && count <= RETRY_AT_MOST).then_some(retry)
}

/// The kernel tests' arguments in a VM: what was asked, or by default every test but the
/// SIGKILL-restart cycles. Those attach and detach every probe ten times while the other tests'
/// RSTs run in softirq; under TCG (multi-threaded) that tore a text-poked tracepoint site in
/// `tcp_v4_send_reset` on 7.2 (kernel panic, RIP in the middle of a NOP). The host suite runs
/// them on real hardware.
fn vm_test_args(asked: &[String]) -> Vec<String> {
    if asked.is_empty() {
        vec!["--skip".to_owned(), "restart::".to_owned()]
    } else {
        asked.to_vec()
    }
}

/// Builds the test binaries and the initramfs part that runs them (`name`.cpio): each
/// section is a test binary (`KERNEL_TESTS`, `UNIT_TESTS`) with its arguments, in order.
fn payload(
    dir: &Path,
    name: &str,
    suites: &[(&str, Vec<String>)],
    timeout_s: u64,
) -> Result<PathBuf> {
    let bins = build_tests()?;
    let staging = dir.join(name);
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    for b in [&bins.kernel_tests, &bins.unit_tests, &bins.linkprobe] {
        initramfs::stage_binary(b, &staging)?;
    }
    let root = workspace_root();
    let package = root.join("probe-user");
    // The exporter test reads deploy/ (rules, dashboard); unit tests read tracefs fixtures.
    initramfs::stage_dir(&root.join("deploy"), &staging)?;
    initramfs::stage_dir(&package.join("tests/fixtures"), &staging)?;
    let sections: Vec<initramfs::Section> = suites
        .iter()
        .map(|(suite, args)| initramfs::Section {
            name: (*suite).into(),
            exe: if *suite == KERNEL_TESTS {
                bins.kernel_tests.clone()
            } else {
                bins.unit_tests.clone()
            },
            args: args.clone(),
            cwd: package.clone(),
        })
        .collect();
    // Each section gets most of the VM's budget; the VM's own timeout is the hard stop.
    let init = initramfs::init_script(&bins.linkprobe, &sections, timeout_s * 2 / 3);
    initramfs::stage_file(&staging, Path::new("/init"), &init, 0o755)?;
    let out = dir.join(format!("{name}.cpio"));
    initramfs::cpio(&staging, &out, true)?;
    fs::remove_dir_all(&staging)?;
    Ok(out)
}

/// `git describe` of the tree under test.
fn tree() -> String {
    stdout_of(
        std::process::Command::new("git")
            .current_dir(workspace_root())
            .args(["describe", "--always", "--dirty"]),
    )
    .map(|s| s.trim().to_owned())
    .unwrap_or_else(|_| "unknown".into())
}

/// Boots one kernel and returns its results (serial logs in `run/<run_name>/`).
fn boot(
    dir: &Path,
    k: &Kernel,
    run_name: &str,
    rootfs: &Path,
    payload: &Path,
    args: &VmArgs,
) -> Result<KernelResult> {
    let run_dir = dir.join("run").join(run_name);
    fs::create_dir_all(&run_dir)?;
    let initrd = dir.join("run").join("initrd.cpio");
    let modules = k.modules_cpio();
    let size = initramfs::concat(&[rootfs, &modules, payload], &initrd)?;
    println!(
        "[vm] {}: booting (initrd {} MB, {} CPUs, {}, timeout {}s)",
        k.release,
        size / 1_000_000,
        args.cpus,
        args.memory,
        args.timeout
    );
    let machine = |accel, boot_deadline| qemu::Machine {
        accel,
        vmlinuz: k.vmlinuz(),
        initrd: initrd.clone(),
        console_log: run_dir.join("console.log"),
        results_log: run_dir.join("results.log"),
        memory: args.memory.clone(),
        cpus: args.cpus,
        timeout: Duration::from_secs(args.timeout),
        boot_deadline,
    };
    let short = k.release.trim_end_matches("-cloud-amd64").to_owned();
    let print = |line: &str| println!("[vm {short}] {line}");
    let mut accel = match args.accel {
        Accel::Auto if !Path::new("/dev/kvm").exists() => Accel::Tcg,
        Accel::Auto => remembered_accel(dir).unwrap_or(Accel::Kvm),
        other => other,
    };
    let probing = args.accel == Accel::Auto && accel == Accel::Kvm;
    let mut vm_run = qemu::run(&machine(accel, probing.then_some(KVM_BOOT_DEADLINE)), print)?;
    if probing {
        if vm_run.boot.is_some() {
            remember_accel(dir, Accel::Kvm)?;
        } else {
            println!(
                "[vm] {}: KVM did not get /init running within {}s ({}); falling back to TCG \
                 software emulation for this host kernel (remembered; --accel kvm forces KVM)",
                k.release,
                KVM_BOOT_DEADLINE.as_secs(),
                vm_run.qemu_error.as_deref().unwrap_or("no error from qemu")
            );
            remember_accel(dir, Accel::Tcg)?;
            accel = Accel::Tcg;
            vm_run = qemu::run(&machine(accel, None), print)?;
        }
    }
    if vm_run.boot.is_none() {
        // A kernel that dies before /init (seen once under TCG: an oops patching a static key
        // at boot) says nothing about linkprobe: one more boot before calling it a failure.
        println!(
            "[vm] {}: /init never ran ({}); booting once more",
            k.release,
            vm_run
                .qemu_error
                .as_deref()
                .unwrap_or("see the console below")
        );
        vm_run = qemu::run(&machine(accel, None), print)?;
    }
    let machine = machine(accel, None);
    let _ = fs::remove_file(&initrd);
    let stream = results::parse_stream(&vm_run.results);
    let accel_name = format!("{accel:?}").to_lowercase();
    let run = known::Run {
        release: &k.release,
        accel: &accel_name,
    };
    let found = results::Findings::from_stream(&stream, &[KERNEL_TESTS, UNIT_TESTS], run);
    let boot_s = vm_run.boot.map(|b| b.as_secs_f64());
    let r = KernelResult {
        kernel: k.release.clone(),
        package: k.package.clone(),
        version: k.version.clone(),
        suite: k.suite.clone(),
        accel: accel_name.clone(),
        tree: tree(),
        when: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        boot_s,
        run_s: vm_run.total.as_secs_f64() - boot_s.unwrap_or(0.0),
        timed_out: vm_run.timed_out,
        completed: stream.done,
        probes: found.probes,
        probes_rc: found.probes_rc,
        probes_table: found.probes_table,
        suites: found.suites,
        died_before: None,
    };
    if let Some(e) = &vm_run.qemu_error {
        println!("[vm] {}: {e}", k.release);
    }
    if vm_run.boot.is_none() || !stream.done {
        let console = fs::read_to_string(&machine.console_log).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(30).collect();
        println!(
            "[vm] {}: console (last lines of {}):",
            k.release,
            machine.console_log.display()
        );
        for l in tail.iter().rev() {
            println!("[vm console] {l}");
        }
    }
    Ok(r)
}

/// The console's first panic/oops line, or a sentence saying there was none.
fn panic_line(console: &Path) -> String {
    let text = fs::read_to_string(console).unwrap_or_default();
    text.lines()
        .find(|l| {
            ["Kernel panic", "BUG:", "Oops", "general protection"]
                .iter()
                .any(|m| l.contains(m))
        })
        .map_or_else(
            || format!("no panic line in {}", console.display()),
            |l| l.trim().to_owned(),
        )
}

/// Saves a kernel's results as `results/<release>.json`.
fn save(dir: &Path, r: &KernelResult) -> Result<()> {
    let results_dir = dir.join("results");
    fs::create_dir_all(&results_dir)?;
    fs::write(
        results_dir.join(format!("{}.json", r.kernel)),
        serde_json::to_string_pretty(r)?,
    )?;
    Ok(())
}

/// Every saved result, oldest kernel first.
fn saved_results(dir: &Path) -> Vec<KernelResult> {
    let Ok(entries) = fs::read_dir(dir.join("results")) else {
        return Vec::new();
    };
    let mut out: Vec<KernelResult> = entries
        .filter_map(|e| serde_json::from_str(&fs::read_to_string(e.ok()?.path()).ok()?).ok())
        .collect();
    for r in &mut out {
        let run = known::Run {
            release: &r.kernel,
            accel: &r.accel,
        };
        for s in &mut r.suites {
            s.classify(run);
        }
    }
    out.sort_by(|a, b| debver::compare(&a.version, &b.version));
    out
}

fn update_readme(dir: &Path) -> Result<()> {
    let results = saved_results(dir);
    let path = workspace_root().join("README.md");
    let readme = fs::read_to_string(&path)?;
    let updated = matrix::splice(&readme, &matrix::render(&results))?;
    if updated != readme {
        fs::write(&path, updated)?;
        println!(
            "[vm] README.md kernel table: updated from {} result(s)",
            results.len()
        );
    }
    Ok(())
}

/// `target/vm/accel-<host kernel release>`: what `--accel auto` found on this host kernel.
fn accel_file(dir: &Path) -> PathBuf {
    let host = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    dir.join(format!("accel-{}", host.trim()))
}

fn remembered_accel(dir: &Path) -> Option<Accel> {
    match fs::read_to_string(accel_file(dir)).ok()?.trim() {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ => None,
    }
}

fn remember_accel(dir: &Path, accel: Accel) -> Result<()> {
    let text = if accel == Accel::Tcg {
        "tcg\n"
    } else {
        "kvm\n"
    };
    fs::write(accel_file(dir), text).context("remembering the accelerator")
}
