//! Where the time goes, for a missed target: the kernel's run-time statistics of each BPF
//! program (`run_time_ns`, `run_cnt` in `bpftool prog show -j`), turned on only for this
//! phase because they cost two clock reads per program run, per connection of each workload,
//! for linkprobe and for bpftrace side by side. Also says whether `perf` can count
//! instructions here (virtual machines often have no PMU).
use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{FromRawFd as _, OwnedFd},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use super::{
    plan::{TracerKind, Workload},
    session::fresh_netns,
    tracers::Running,
    workload::run_worker,
};
use crate::cmd::{capture, stdout_of};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// `BPF_ENABLE_STATS` command of bpf(2) and its `BPF_STATS_RUN_TIME` type (since 5.8).
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Keeps the kernel's BPF run-time statistics on while alive. Preferably through a
/// `BPF_ENABLE_STATS` descriptor, which the kernel drops with the process whatever happens to
/// it; else through the sysctl, put back to its previous value on drop.
enum StatsOn {
    Fd(#[expect(dead_code, reason = "held only to keep the statistics on")] OwnedFd),
    Sysctl { previous: String },
}

impl StatsOn {
    fn enable() -> Result<StatsOn> {
        // bpf_attr is a union; enable_stats is its first u32. The kernel wants the rest zeroed.
        let mut attr = [0u8; 16];
        attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
        // SAFETY: bpf(2) reads `attr.len()` bytes from a live buffer; it returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                attr.len() as libc::c_uint,
            )
        };
        if fd >= 0 {
            let fd = i32::try_from(fd).context("bpf() returned a huge fd")?;
            // SAFETY: a descriptor the kernel just gave us, owned by nothing else.
            return Ok(StatsOn::Fd(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        let previous = std::fs::read_to_string(SYSCTL)
            .with_context(|| format!("BPF_ENABLE_STATS failed and {SYSCTL} is unreadable"))?;
        std::fs::write(SYSCTL, "1").with_context(|| format!("writing 1 to {SYSCTL}"))?;
        Ok(StatsOn::Sysctl {
            previous: previous.trim().to_owned(),
        })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let StatsOn::Sysctl { previous } = self {
            if let Err(e) = std::fs::write(SYSCTL, previous.as_bytes()) {
                eprintln!("warning: could not restore {SYSCTL} to {previous}: {e}");
            }
        }
    }
}

/// One program's run-time statistics.
#[derive(Clone, Debug, PartialEq)]
struct ProgStats {
    name: String,
    run_time_ns: u64,
    run_cnt: u64,
}

/// The ids of the BPF programs a process holds: program and link descriptors name theirs in
/// `/proc/PID/fdinfo` (`prog_id:`). Debian's bpftool prints no `pids` field, so this is how
/// the bench tells linkprobe's programs from everyone else's.
fn owned_prog_ids(pid: u32) -> BTreeSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| fdinfo_prog_id(&info))
        .collect()
}

fn fdinfo_prog_id(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix("prog_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The programs with these ids, from `bpftool prog show -j`.
fn parse_prog_show(json_text: &str, ids: &BTreeSet<u64>) -> Result<BTreeMap<u64, ProgStats>> {
    let v: serde_json::Value =
        serde_json::from_str(json_text).context("bpftool prog show -j printed no JSON")?;
    let progs = v.as_array().context("bpftool prog show -j: not an array")?;
    Ok(progs
        .iter()
        .filter_map(|p| {
            let id = p["id"].as_u64().filter(|id| ids.contains(id))?;
            Some((
                id,
                ProgStats {
                    name: p["name"].as_str().unwrap_or("?").to_owned(),
                    run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                    run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
                },
            ))
        })
        .collect())
}

fn prog_stats(ids: &BTreeSet<u64>) -> Result<BTreeMap<u64, ProgStats>> {
    parse_prog_show(
        &stdout_of(Command::new("bpftool").args(["prog", "show", "-j"]))?,
        ids,
    )
}

/// One program's cost per connection over one workload run.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgCost {
    pub program: String,
    pub runs_per_conn: f64,
    pub ns_per_run: f64,
    pub ns_per_conn: f64,
}

/// Per-program differences, most expensive first.
fn costs(
    before: &BTreeMap<u64, ProgStats>,
    after: &BTreeMap<u64, ProgStats>,
    conns: u32,
) -> Vec<ProgCost> {
    let conns = f64::from(conns.max(1));
    let mut out: Vec<ProgCost> = after
        .iter()
        .map(|(id, a)| {
            let b = before.get(id);
            let ns = a.run_time_ns - b.map_or(0, |b| b.run_time_ns.min(a.run_time_ns));
            let runs = a.run_cnt - b.map_or(0, |b| b.run_cnt.min(a.run_cnt));
            ProgCost {
                program: a.name.clone(),
                runs_per_conn: runs as f64 / conns,
                ns_per_run: if runs == 0 {
                    0.0
                } else {
                    ns as f64 / runs as f64
                },
                ns_per_conn: ns as f64 / conns,
            }
        })
        .collect();
    out.sort_by(|x, y| y.ns_per_conn.total_cmp(&x.ns_per_conn));
    out
}

#[derive(Clone, Debug)]
pub struct ProfileRun {
    pub tracer: TracerKind,
    pub workload: Workload,
    pub conns: u32,
    pub programs: Vec<ProgCost>,
}

impl ProfileRun {
    pub fn total_ns_per_conn(&self) -> f64 {
        self.programs.iter().map(|p| p.ns_per_conn).sum()
    }
}

pub struct Profile {
    pub runs: Vec<ProfileRun>,
    /// What `perf stat -e instructions true` said.
    pub perf: String,
}

impl Profile {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "perf_instructions": self.perf,
            "runs": self.runs.iter().map(|r| json!({
                "tracer": r.tracer.name(),
                "workload": r.workload.name(),
                "conns": r.conns,
                "bpf_ns_per_conn": r.total_ns_per_conn(),
                "programs": r.programs.iter().map(|p| json!({
                    "program": p.program,
                    "runs_per_conn": p.runs_per_conn,
                    "ns_per_run": p.ns_per_run,
                    "ns_per_conn": p.ns_per_conn,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for r in &self.runs {
            out += &format!(
                "{} on {}: {:.0} ns of BPF programs per connection ({} connections)\n",
                r.tracer.name(),
                r.workload.name(),
                r.total_ns_per_conn(),
                r.conns
            );
            for p in r.programs.iter().filter(|p| p.runs_per_conn > 0.0) {
                out += &format!(
                    "    {:<18} {:>6.2} runs/conn {:>7.0} ns/run {:>7.0} ns/conn\n",
                    p.program, p.runs_per_conn, p.ns_per_run, p.ns_per_conn
                );
            }
        }
        out += &format!("perf stat -e instructions: {}\n", self.perf);
        out
    }
}

/// Whether hardware instruction counting works here, in one sentence.
fn perf_instructions() -> String {
    let Ok(out) = capture(Command::new("perf").args(["stat", "-x,", "-e", "instructions", "true"]))
    else {
        return "perf is not installed".into();
    };
    let text = String::from_utf8_lossy(&out.stderr);
    perf_verdict(out.status.success(), &text)
}

fn perf_verdict(success: bool, stderr: &str) -> String {
    let line = stderr.lines().find(|l| l.contains("instructions"));
    match line {
        Some(l) if l.contains("<not supported>") || l.contains("<not counted>") => {
            "not available here (no hardware PMU: instructions <not supported>); \
             software events and bpf run-time statistics only"
                .into()
        }
        Some(l)
            if success
                && l.split(',')
                    .next()
                    .is_some_and(|v| v.parse::<u64>().is_ok()) =>
        {
            format!(
                "works ({} instructions for `true`)",
                l.split(',').next().unwrap_or("?")
            )
        }
        _ => format!(
            "did not work: {}",
            stderr.lines().last().unwrap_or("no output").trim()
        ),
    }
}

/// For each workload, a fresh run of each tracer (in a fresh namespace) with the statistics on.
pub fn run(
    workloads: &[Workload],
    tracers: &[TracerKind],
    count: u32,
    out_dir: &std::path::Path,
) -> Result<Profile> {
    let _stats = StatsOn::enable()?;
    let mut runs = Vec::new();
    for &workload in workloads {
        for &tracer in tracers {
            println!("[bench] profile: {} on {}", tracer.name(), workload.name());
            let ns = fresh_netns(&format!("profile-{}-{}", workload.name(), tracer.name()))?;
            let running = Running::start(tracer, &ns, out_dir)?;
            let Some(pid) = running.pid() else {
                bail!("profile: {} has no process", tracer.name());
            };
            let ids = owned_prog_ids(pid);
            if ids.is_empty() {
                bail!(
                    "profile: {} (pid {pid}) holds no BPF program",
                    tracer.name()
                );
            }
            let before = prog_stats(&ids)?;
            let worker = run_worker(&ns, workload, count)?;
            let after = prog_stats(&ids)?;
            running.stop()?;
            runs.push(ProfileRun {
                tracer,
                workload,
                conns: worker.done,
                programs: costs(&before, &after, worker.done),
            });
        }
    }
    Ok(Profile {
        runs,
        perf: perf_instructions(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = r#"[{"id":7,"type":"tracepoint","name":"lp_rst_sent","run_time_ns":5000,"run_cnt":10},
        {"id":8,"type":"sock_ops","name":"lp_sock_ops","run_time_ns":90000,"run_cnt":300},
        {"id":9,"type":"tracepoint","name":"other","run_time_ns":1,"run_cnt":1},
        {"id":10,"type":"kprobe","name":"nostats"}]"#;

    fn ids(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    #[test]
    fn programs_by_id() {
        let p = parse_prog_show(SHOW, &ids(&[7, 8, 99])).unwrap();
        assert_eq!(p.keys().copied().collect::<Vec<_>>(), [7, 8]);
        assert_eq!(p[&8].run_cnt, 300);
        assert_eq!(
            parse_prog_show(SHOW, &ids(&[10])).unwrap()[&10].run_time_ns,
            0
        );
        assert!(parse_prog_show(SHOW, &ids(&[])).unwrap().is_empty());
        assert!(parse_prog_show("nope", &ids(&[7])).is_err());
    }

    #[test]
    fn fdinfo_names_the_program() {
        let link = "pos:\t0\nflags:\t02000002\nlink_type:\traw_tracepoint\nlink_id:\t12\nprog_tag:\tc173bad4f397d97b\nprog_id:\t562\n";
        assert_eq!(fdinfo_prog_id(link), Some(562));
        assert_eq!(fdinfo_prog_id("pos:\t0\nflags:\t02\n"), None);
        assert!(!owned_prog_ids(std::process::id()).contains(&u64::MAX));
    }

    #[test]
    fn costs_per_connection_most_expensive_first() {
        let before = parse_prog_show(SHOW, &ids(&[7, 8])).unwrap();
        let mut after = before.clone();
        after.get_mut(&7).unwrap().run_time_ns += 10_000;
        after.get_mut(&7).unwrap().run_cnt += 100;
        after.get_mut(&8).unwrap().run_time_ns += 200_000;
        after.get_mut(&8).unwrap().run_cnt += 1000;
        let c = costs(&before, &after, 100);
        assert_eq!(c[0].program, "lp_sock_ops");
        assert_eq!(c[0].runs_per_conn, 10.0);
        assert_eq!(c[0].ns_per_run, 200.0);
        assert_eq!(c[0].ns_per_conn, 2000.0);
        assert_eq!(c[1].ns_per_conn, 100.0);
        let run = ProfileRun {
            tracer: TracerKind::Linkprobe,
            workload: Workload::Conn,
            conns: 100,
            programs: c,
        };
        assert_eq!(run.total_ns_per_conn(), 2100.0);
    }

    #[test]
    fn perf_verdicts() {
        assert!(
            perf_verdict(true, "<not supported>,,instructions,0,100.00,,\n")
                .starts_with("not available")
        );
        assert!(perf_verdict(true, "123456,,instructions,1000,100.00,,\n").starts_with("works"));
        assert!(perf_verdict(false, "perf_event_open failed\n").starts_with("did not work"));
    }
}
