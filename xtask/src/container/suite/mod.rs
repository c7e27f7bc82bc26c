//! The container suite (`cargo xtask container-test`, and a step of `cargo xtask test`): the
//! runtime image run exactly as deploy/kubernetes/daemonset.yaml runs it (capabilities, read-only
//! root, mounts, host network, no host PID, the shipped seccomp profile), proving that
//! least privilege is enough:
//! 1. `linkprobe probes` in that container: no probe off; sock_ops (not needed on 6.7+ with
//!    socket storage) attaches with the fallback store's programs; the same under the seccomp
//!    profile as containerd reads it;
//! 2. the daemon with the DaemonSet's arguments: ready, only the three capabilities in its
//!    status, the root and /sys mounts read-only, `/readyz` 200, curl's flows (one served, one
//!    refused) listed by `podman exec … linkprobe flows -o json`, the `kubectl exec` path;
//! 3. with fewer capabilities (the kernel's own refusals, preflight skipped): BPF + PERFMON
//!    cannot attach sock_ops, BPF + NET_ADMIN no tracing probe (sock_ops alone, no events).
//!
//! It fails (never skips) when it cannot run: podman missing, not root, no image.
mod checks;
mod node;

use std::{
    collections::BTreeMap,
    fs,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;
use testkit::{
    linkprobe::READY,
    process::{Background, Pipe},
};

use crate::{
    cmd::{capture, stdout_of},
    container::{
        caps::{self, ProcessSecurity},
        daemonset::{self, podman_options, with_metrics_addr, Placement, RunSpec, Seccomp},
        image,
        podman::Podman,
        seccomp,
    },
};
use checks::{find_flow, flow_line, read_only_at, ProbeCount};

/// Every container of the suite is named `<prefix><pid>-<phase>`.
const CONTAINER_PREFIX: &str = "linkprobe-suite-";
/// How long the daemon may take to print its ready line (loading BTF and attaching).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `/readyz` and the flows may take to show.
const SHOW_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to stop after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// What every run of the suite shares.
struct Suite<'a> {
    podman: &'a Podman,
    tag: String,
    spec: RunSpec,
    seccomp_file: PathBuf,
    volume_dirs: BTreeMap<String, PathBuf>,
    fields: BTreeMap<String, String>,
}

impl Suite<'_> {
    /// `podman run` with the DaemonSet's options (or `caps` instead of its capabilities, or
    /// the profile `seccomp` instead of its own).
    fn run_command(
        &self,
        name: &str,
        caps: Option<&[&str]>,
        seccomp: Option<&Path>,
        args: &[String],
    ) -> Result<Command> {
        let options = podman_options(
            &self.spec,
            &Placement {
                name,
                seccomp_file: seccomp.unwrap_or(&self.seccomp_file),
                volume_dirs: &self.volume_dirs,
                fields: &self.fields,
                cap_add: caps,
            },
        )?;
        let mut c = self.podman.command();
        c.args(["run", "--rm"])
            .args(options)
            .arg(&self.tag)
            .args(args);
        Ok(c)
    }

    /// `linkprobe probes ARGS` in a container of its own; its stdout (any exit status: a
    /// report that says probes are off exits 1) and the exit status.
    fn probes(&self, phase: &str, caps: Option<&[&str]>, args: &[&str]) -> Result<(String, i32)> {
        self.probes_under(phase, caps, None, args)
    }

    /// [`Self::probes`] under another seccomp profile.
    fn probes_under(
        &self,
        phase: &str,
        caps: Option<&[&str]>,
        seccomp: Option<&Path>,
        args: &[&str],
    ) -> Result<(String, i32)> {
        let guard = self
            .podman
            .guard(&format!("{CONTAINER_PREFIX}{}-{phase}", std::process::id()));
        let mut argv = vec!["probes".to_owned()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let mut c = self.run_command(guard.name(), caps, seccomp, &argv)?;
        println!("$ {}", crate::cmd::shown(&c));
        let out = capture(&mut c)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stderr.trim().is_empty() {
            for l in stderr.lines() {
                println!("[container]   stderr: {l}");
            }
        }
        Ok((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code().unwrap_or(-1),
        ))
    }
}

pub fn run() -> Result<()> {
    let start = Instant::now();
    let podman = Podman::new()?;
    let runc = stdout_of(Command::new("runc").arg("--version"))
        .map(|v| v.lines().next().unwrap_or("").to_owned())
        .unwrap_or_default();
    println!("[container] podman {}, {runc}", podman.version());
    report_seccomp_base();
    podman.remove_stale(CONTAINER_PREFIX)?;
    let tag = image::build(&podman)?;
    let spec = daemonset::load()?;
    ensure!(
        !spec.privileged && !spec.host_pid,
        "{} runs linkprobe privileged or with hostPID: the suite proves least privilege only",
        daemonset::MANIFEST
    );
    node::ensure_kernel_fs()?;
    let work = node::WorkDir::create()?;
    println!("[container] mounts as {} gives them:", daemonset::MANIFEST);
    let volume_dirs = node::volume_dirs(&spec, &work.path)?;
    let seccomp_file = match &spec.seccomp {
        Seccomp::Localhost(profile) => {
            let file = std::path::Path::new(profile)
                .file_name()
                .context("localhostProfile has no file name")?;
            let path = seccomp::shipped_path().with_file_name(file);
            ensure!(
                path.is_file(),
                "the DaemonSet's seccomp profile `{profile}` is not shipped as {}",
                path.display()
            );
            path
        }
        _ => PathBuf::new(),
    };
    let suite = Suite {
        podman: &podman,
        tag,
        spec,
        seccomp_file,
        volume_dirs,
        fields: node::fields(),
    };

    let phase = Instant::now();
    let reference = probes_with_daemonset_caps(&suite)?;
    if let Seccomp::Localhost(_) = suite.spec.seccomp {
        probes_under_oci_reading(&suite, &work.path, &reference)?;
    }
    println!("[container] probes: {:.1}s", phase.elapsed().as_secs_f64());
    let phase = Instant::now();
    daemon(&suite)?;
    println!("[container] daemon: {:.1}s", phase.elapsed().as_secs_f64());
    let phase = Instant::now();
    fewer_capabilities(&suite, &reference)?;
    println!(
        "[container] fewer capabilities: {:.1}s",
        phase.elapsed().as_secs_f64()
    );
    drop(work);
    println!(
        "[container] passed in {:.1}s: least privilege ({}) attaches every probe",
        start.elapsed().as_secs_f64(),
        suite.spec.cap_add.join(" + ")
    );
    Ok(())
}

/// Whether this machine's podman default profile is still the one the shipped profile derives
/// from (informational: the shipped profile is pinned).
fn report_seccomp_base() {
    match fs::read_to_string(seccomp::INSTALLED_DEFAULT) {
        Ok(text) if text == seccomp::PODMAN_DEFAULT => println!(
            "[container] {}: the pinned base of deploy/seccomp/linkprobe.json",
            seccomp::INSTALLED_DEFAULT
        ),
        Ok(_) => println!(
            "[container] {} differs from the pinned base (containers-common 0.50.1); `cargo \
             xtask seccomp --from {}` shows what a profile derived from it would be",
            seccomp::INSTALLED_DEFAULT,
            seccomp::INSTALLED_DEFAULT
        ),
        Err(e) => println!("[container] {}: {e}", seccomp::INSTALLED_DEFAULT),
    }
}

/// Phase 1: `linkprobe probes` with the DaemonSet's capabilities. As the daemon runs (socket
/// storage) no probe is off; sock_ops is `not needed` on 6.7+ (the kernel counts RTOs), so it
/// is checked with the fallback store's programs, which attach it (and go without the
/// open-flow iterator, which needs socket storage). Every probe attaches in one or the other.
/// Returns the fallback run's report, the reference for the other runs.
fn probes_with_daemonset_caps(suite: &Suite<'_>) -> Result<ProbeCount> {
    println!(
        "[container] probes with the DaemonSet's capabilities ({})",
        suite.spec.cap_add.join(", ")
    );
    let (table, status) = suite.probes("table", None, &[])?;
    print!("{table}");
    ensure!(
        status == 0,
        "`linkprobe probes` exited {status} in the container"
    );
    let (json, _) = suite.probes("auto", None, &["-o", "json"])?;
    let auto = ProbeCount::parse(&json)?;
    println!(
        "[container] probes (as the daemon runs them): {}",
        auto.summary()
    );
    ensure!(
        auto.total > 0 && auto.off.is_empty() && auto.error.is_none(),
        "a probe is off with the DaemonSet's capabilities: {}",
        auto.summary()
    );
    let (json, _) = suite.probes("lru", None, &["-o", "json", "--flow-store", "lru"])?;
    let lru = ProbeCount::parse(&json)?;
    println!("[container] probes --flow-store lru: {}", lru.summary());
    ensure!(
        lru.sock_ops_attached() && lru.error.is_none(),
        "sock_ops did not attach with the DaemonSet's capabilities: {}",
        lru.summary()
    );
    let all = auto.all();
    let unattached: Vec<&String> = all
        .iter()
        .filter(|p| !auto.on.contains(p) && !lru.on.contains(p))
        .collect();
    ensure!(
        unattached.is_empty(),
        "probes that attach in neither configuration: {unattached:?}"
    );
    println!(
        "[container] every probe attaches with {}: {} of {} as the daemon runs them, {} with \
         --flow-store lru",
        suite.spec.cap_add.join(" + "),
        auto.attached,
        auto.total,
        lru.on
            .iter()
            .filter(|p| !auto.on.contains(p))
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(lru)
}

/// Phase 1b: the profile as containerd reads a Localhost profile (OCI: no capability
/// conditions, the first of several rules for a syscall wins) lets the same probes attach.
fn probes_under_oci_reading(suite: &Suite<'_>, work: &Path, reference: &ProbeCount) -> Result<()> {
    let text = fs::read_to_string(&suite.seccomp_file)
        .with_context(|| format!("reading {}", suite.seccomp_file.display()))?;
    let oci = work.join("seccomp-as-oci.json");
    fs::write(&oci, seccomp::as_oci(&text)?)
        .with_context(|| format!("writing {}", oci.display()))?;
    let args = ["-o", "json", "--flow-store", "lru"];
    let (json, _) = suite.probes_under("oci", None, Some(&oci), &args)?;
    let count = ProbeCount::parse(&json)?;
    println!(
        "[container] probes --flow-store lru under the profile as containerd reads it: {}",
        count.summary()
    );
    ensure!(
        count.on == reference.on,
        "under the OCI reading of the seccomp profile {:?} attached, not {:?}",
        count.on,
        reference.on
    );
    Ok(())
}

/// Phase 3: the kernel's answer to fewer capabilities, measured with the preflight check off
/// (and for BPF + PERFMON the fallback store, so that sock_ops is tried).
fn fewer_capabilities(suite: &Suite<'_>, reference: &ProbeCount) -> Result<()> {
    let args = ["-o", "json", "--flow-store", "lru", "--no-preflight"];
    let bpf_perfmon: &[&str] = &["BPF", "PERFMON"];
    let (json, _) = suite.probes("bpf-perfmon", Some(bpf_perfmon), &args)?;
    let count = ProbeCount::parse(&json)?;
    println!("[container] CAP_BPF + CAP_PERFMON: {}", count.summary());
    let but_sock_ops: Vec<String> = reference
        .on
        .iter()
        .filter(|p| !checks::is_sock_ops(p))
        .cloned()
        .collect();
    ensure!(
        !count.sock_ops_attached() && count.on == but_sock_ops,
        "expected {but_sock_ops:?} (all but sock_ops) to attach without CAP_NET_ADMIN: {}",
        count.summary()
    );
    // Without CAP_PERFMON no tracing program loads (nor does the socket-storage probe of the
    // flow store, so the fallback is chosen, which attaches sock_ops: CAP_BPF + CAP_NET_ADMIN
    // are its whole need). The daemon would hear of no connection, close or RST.
    let bpf_net_admin: &[&str] = &["BPF", "NET_ADMIN"];
    let (json, _) = suite.probes(
        "bpf-netadmin",
        Some(bpf_net_admin),
        &["-o", "json", "--no-preflight"],
    )?;
    let count = ProbeCount::parse(&json)?;
    println!("[container] CAP_BPF + CAP_NET_ADMIN: {}", count.summary());
    ensure!(
        count.on.iter().all(|p| checks::is_sock_ops(p)),
        "a tracing probe attached without CAP_PERFMON: {}",
        count.summary()
    );
    Ok(())
}

/// Phase 2: the daemon as the DaemonSet starts it.
fn daemon(suite: &Suite<'_>) -> Result<()> {
    let yaml_addr = daemonset::metrics_addr(&suite.spec.args)?;
    // The host network is shared with whatever else runs here: same IP, a free port.
    let addr = free_port_on(yaml_addr)?;
    println!(
        "[container] daemon: args from the DaemonSet, --metrics-addr {yaml_addr} → {addr} (a free \
         port: the host network is shared)"
    );
    let args = with_metrics_addr(&suite.spec.args, addr)?;
    let guard = suite
        .podman
        .guard(&format!("{CONTAINER_PREFIX}{}-daemon", std::process::id()));
    let mut daemon = Background::start(
        &mut suite.run_command(guard.name(), None, None, &args)?,
        Some("[daemon] "),
    )?;
    let ready = daemon
        .wait_for(Pipe::Stderr, READY_TIMEOUT, |l| l.contains(READY))
        .context("the containerised daemon did not get ready")?;
    println!("[container] daemon: {ready}");

    security(suite, guard.name())?;
    readyz(addr)?;
    workload_flows(suite, guard.name(), addr)?;
    let status =
        stdout_of(
            suite
                .podman
                .command()
                .args(["exec", guard.name(), "linkprobe", "status"]),
        )?;
    println!("[container] podman exec {} linkprobe status:", guard.name());
    print!("{status}");

    let exited = daemon.stop(STOP_TIMEOUT)?;
    println!("[container] daemon stopped: {}", exited.status);
    ensure!(
        exited.status.success(),
        "the containerised daemon exited with {} on SIGINT",
        exited.status
    );
    drop(guard);
    Ok(())
}

/// `addr`'s IP with a port free now.
fn free_port_on(addr: SocketAddr) -> Result<SocketAddr> {
    TcpListener::bind(SocketAddr::new(addr.ip(), 0))
        .and_then(|l| l.local_addr())
        .with_context(|| format!("finding a free port on {}", addr.ip()))
}

/// The container's capabilities, seccomp mode, no-new-privileges and mounts as the kernel
/// shows them for its process, against the DaemonSet.
fn security(suite: &Suite<'_>, name: &str) -> Result<()> {
    let inspect = stdout_of(suite.podman.command().args([
        "inspect",
        "--format",
        "{{.State.Pid}}\t{{json .EffectiveCaps}}\t{{json .HostConfig.CapAdd}}\t{{json .HostConfig.CapDrop}}\t{{.HostConfig.ReadonlyRootfs}}\t{{json .HostConfig.SecurityOpt}}\t{{.HostConfig.PidMode}}\t{{.HostConfig.NetworkMode}}",
        name,
    ]))?;
    let fields: Vec<&str> = inspect.trim().split('\t').collect();
    ensure!(
        fields.len() == 8,
        "unexpected podman inspect output: {inspect}"
    );
    println!("[container] podman inspect {name}:");
    for (key, value) in [
        "State.Pid",
        "EffectiveCaps",
        "HostConfig.CapAdd",
        "HostConfig.CapDrop",
        "HostConfig.ReadonlyRootfs",
        "HostConfig.SecurityOpt",
        "HostConfig.PidMode",
        "HostConfig.NetworkMode",
    ]
    .iter()
    .zip(&fields)
    {
        println!("[container]   {key}: {value}");
    }
    let pid: u32 = fields[0].parse().context("podman inspect gave no pid")?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let sec = ProcessSecurity::parse(&status)?;
    println!("[container] /proc/{pid}/status (the daemon, pid 1 in the container):");
    for l in sec.lines() {
        println!("[container]   {l}");
    }
    println!(
        "[container]   NoNewPrivs {:?}, Seccomp {:?} (2: filter)",
        sec.no_new_privs, sec.seccomp
    );
    let wanted: std::collections::BTreeSet<String> = suite.spec.cap_add.iter().cloned().collect();
    ensure!(
        caps::names(sec.effective) == wanted && caps::names(sec.bounding) == wanted,
        "the daemon holds {:?} (bounding {:?}), not exactly the DaemonSet's {wanted:?}",
        caps::names(sec.effective),
        caps::names(sec.bounding)
    );
    ensure!(
        sec.seccomp == Some(2),
        "the daemon runs without a seccomp filter"
    );
    if suite.spec.no_new_privileges {
        ensure!(sec.no_new_privs == Some(true), "no_new_privs is not set");
    }
    let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .with_context(|| format!("reading /proc/{pid}/mountinfo"))?;
    let root_ro = read_only_at(&mountinfo, "/");
    println!("[container]   / read-only: {root_ro:?}");
    ensure!(
        root_ro == Some(suite.spec.read_only_root),
        "the root filesystem is {root_ro:?} read-only; the DaemonSet says {}",
        suite.spec.read_only_root
    );
    for m in &suite.spec.mounts {
        let ro = read_only_at(&mountinfo, &m.target);
        println!("[container]   {} read-only: {ro:?}", m.target);
        ensure!(
            ro == Some(m.read_only),
            "{} is mounted {ro:?} read-only in the container; the DaemonSet says {}",
            m.target,
            m.read_only
        );
    }
    Ok(())
}

/// `/readyz` on the exporter answers 200 (the kubelet's readiness probe).
fn readyz(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + SHOW_TIMEOUT;
    loop {
        let answer = testkit::http::get(addr, "/readyz");
        match &answer {
            Ok(r) if r.status == 200 => {
                println!(
                    "[container] GET http://{addr}/readyz: 200 {}",
                    r.text().trim()
                );
                return Ok(());
            }
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(250)),
            Ok(r) => bail!("/readyz answered {} {}", r.status, r.text().trim()),
            Err(e) => bail!("/readyz: {e}"),
        }
    }
}

/// curl fetches /healthz from the exporter and is refused by a closed port; `podman exec …
/// linkprobe flows -o json` (as `kubectl exec` would) must list both flows under curl.
fn workload_flows(suite: &Suite<'_>, name: &str, exporter: SocketAddr) -> Result<()> {
    let closed = free_port_on(exporter)?;
    let served = stdout_of(Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{exporter}/healthz"),
    ]))?;
    println!("[container] workload: curl http://{exporter}/healthz → {served}");
    ensure!(served.trim() == "200", "curl got {served} from /healthz");
    let refused = capture(Command::new("curl").args(["-sS", &format!("http://{closed}/")]))?;
    println!(
        "[container] workload: curl http://{closed}/ → exit {:?} ({})",
        refused.status.code(),
        String::from_utf8_lossy(&refused.stderr).trim()
    );
    // curl's exit 7: could not connect.
    ensure!(
        refused.status.code() == Some(7),
        "curl to a closed port did not fail to connect"
    );

    let deadline = Instant::now() + SHOW_TIMEOUT;
    // One query per peer: other processes on this host may have many loopback flows.
    let exec = |peer: SocketAddr| -> Result<Vec<Value>> {
        let text = stdout_of(suite.podman.command().args([
            "exec",
            name,
            "linkprobe",
            "flows",
            "--comm",
            "curl",
            "--peer",
            &peer.to_string(),
            "-o",
            "json",
        ]))?;
        serde_json::from_str(&text)
            .with_context(|| format!("`linkprobe flows -o json` printed: {text}"))
    };
    loop {
        let (served_flows, refused_flows) = (exec(exporter)?, exec(closed)?);
        let ok = find_flow(&served_flows, exporter, "curl");
        let failed = find_flow(&refused_flows, closed, "curl");
        if let (Some(ok), Some(failed)) = (ok, failed) {
            println!(
                "[container] podman exec {name} linkprobe flows --comm curl --peer … -o json:"
            );
            println!("[container]   {}", flow_line(ok));
            println!("[container]   {}", flow_line(failed));
            ensure!(
                failed["close"].as_str() == Some("refused"),
                "the refused connect's flow closed as {}",
                failed["close"]
            );
            let table = stdout_of(suite.podman.command().args([
                "exec",
                name,
                "linkprobe",
                "flows",
                "--peer",
                &closed.to_string(),
            ]))?;
            println!("[container] podman exec {name} linkprobe flows --peer {closed}:");
            print!("{table}");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "curl's flows did not show in `linkprobe flows --comm curl --peer …` within {}s \
                 (served: {}, refused: {})",
                SHOW_TIMEOUT.as_secs(),
                ok.is_some(),
                failed.is_some()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
