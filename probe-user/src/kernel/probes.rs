//! The probe table: every probe linkprobe knows, where it hooks in and what it needs, and what
//! each ended up as on this kernel (attached, not needed, or off with why). Loading, the
//! backups, program statistics, counters and `linkprobe probes` all read it.
use crate::kernel::tracefs::Tracepoint;

/// Where a probe hooks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// cgroup `sock_ops`.
    SockOps,
    /// A BTF-typed tracepoint (`tp_btf`): TP_PROTO arguments, typed for the helpers.
    BtfTracepoint(Tracepoint),
    /// A BPF iterator over the flow-state map (every namespace), run when userspace asks.
    IterFlows,
}

/// One row of the probe table.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    /// Program name in the eBPF object (the socket-storage variant); also the probe's name.
    pub program: &'static str,
    /// The variant for the fallback LRU store, where there is one.
    pub fallback: Option<&'static str>,
    pub hook: Hook,
    /// Kernel requirement, for the status table.
    pub requires: &'static str,
    /// What the probe gives users.
    pub provides: &'static str,
    /// Its backup program's slot (`probe_common::backup`), for BTF tracepoint probes.
    pub backup: Option<u32>,
}

/// Every probe linkprobe knows. Each degrades alone.
pub const PROBES: [ProbeSpec; 7] = [
    ProbeSpec {
        program: "lp_state",
        fallback: Some("lp_state_lru"),
        hook: Hook::BtfTracepoint(Tracepoint::SetState),
        requires: "5.5 (tp_btf); socket storage 5.11",
        provides: "flows: connect, accept, established, and one summary when each ends",
        backup: Some(probe_common::backup::STATE),
    },
    ProbeSpec {
        program: "lp_rst_received",
        fallback: Some("lp_rst_received_lru"),
        hook: Hook::BtfTracepoint(Tracepoint::RstReceived),
        requires: "5.5",
        provides: "RSTs received, counted in their flow",
        backup: Some(probe_common::backup::RST_RECEIVED),
    },
    ProbeSpec {
        program: "lp_rst_sent",
        fallback: Some("lp_rst_sent_lru"),
        hook: Hook::BtfTracepoint(Tracepoint::RstSent),
        requires: "5.5 (reason: 6.10)",
        provides: "RSTs sent, with the kernel's reason where it has one",
        backup: Some(probe_common::backup::RST_SENT),
    },
    ProbeSpec {
        program: "lp_retransmit",
        fallback: Some("lp_retransmit_lru"),
        hook: Hook::BtfTracepoint(Tracepoint::RetransmitSkb),
        requires: "5.5 (err: 6.13)",
        provides: "SYN retransmits at once; data retransmits counted, reported per interval",
        backup: Some(probe_common::backup::RETRANSMIT),
    },
    ProbeSpec {
        program: "lp_retrans_synack",
        fallback: None,
        hook: Hook::BtfTracepoint(Tracepoint::RetransmitSynack),
        requires: "5.5",
        provides: "SYN-ACK retransmits of listening sockets",
        backup: Some(probe_common::backup::RETRANS_SYNACK),
    },
    ProbeSpec {
        program: "lp_sock_ops",
        fallback: Some("lp_sock_ops_lru"),
        hook: Hook::SockOps,
        requires: "4.13; RTOs per flow: socket storage",
        provides: "RTOs (retransmission timer firings)",
        backup: None,
    },
    ProbeSpec {
        program: "lp_open_flows",
        fallback: None,
        hook: Hook::IterFlows,
        requires: "5.9 (iter/bpf_sk_storage_map)",
        provides: "open flows with their state, read when asked (`linkprobe flows`)",
        backup: None,
    },
];

/// Where the flows' state lives on this kernel.
/// What a probe ended up as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeState {
    Attached,
    /// Not needed on this kernel: what it gives comes from elsewhere (the reason says where).
    Skipped(String),
    Off(String),
}

impl ProbeState {
    /// Attached, or not needed: the probe's part of the picture is there.
    pub fn is_serving(&self) -> bool {
        !matches!(self, ProbeState::Off(_))
    }

    pub fn is_attached(&self) -> bool {
        *self == ProbeState::Attached
    }

    pub fn is_skipped(&self) -> bool {
        matches!(self, ProbeState::Skipped(_))
    }

    /// Why it is off or not needed (`None` when attached).
    pub fn why(&self) -> Option<&str> {
        match self {
            ProbeState::Attached => None,
            ProbeState::Skipped(why) | ProbeState::Off(why) => Some(why),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProbeStatus {
    pub spec: ProbeSpec,
    /// The program that runs: the spec's, or its fallback variant.
    pub program: &'static str,
    /// Where it is attached, e.g. `cgroup /sys/fs/cgroup/unified` or `tp_btf tcp_send_reset`.
    pub target: String,
    /// How it runs: `tp_btf, socket storage`, `sock_ops, LRU map`, `iter/tcp`.
    pub how: String,
    pub state: ProbeState,
}

/// The per-probe attach table, one row per probe; each column as wide as its widest cell (a
/// long hook path or kernel requirement does not push the columns after it out of line).
pub fn table(probes: &[ProbeStatus]) -> String {
    let mut rows: Vec<[String; 6]> =
        vec![["PROBE", "HOOK", "HOW", "STATE", "NEEDS KERNEL", "DETAIL"].map(str::to_owned)];
    for p in probes {
        let (state, detail) = match &p.state {
            ProbeState::Attached => ("attached", p.spec.provides.to_owned()),
            ProbeState::Skipped(why) => ("skipped", why.clone()),
            ProbeState::Off(why) => ("OFF", why.clone()),
        };
        rows.push([
            p.spec.program.to_owned(),
            p.target.clone(),
            p.how.clone(),
            state.to_owned(),
            p.spec.requires.to_owned(),
            detail,
        ]);
    }
    let mut width = [0usize; 6];
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 < r.len() {
                line.push_str(&format!("{cell:<w$}  ", w = width[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The verifier log is long; keep its last lines, which say why.
/// Why the kernel did not load a program, as one phrase: a verifier rejection with the lines
/// that say why, or (EPERM/EACCES with an empty verifier log) a refusal before verification,
/// which is a missing capability, not a program fault.
pub fn load_refusal(err: &aya::programs::ProgramError) -> String {
    if let aya::programs::ProgramError::LoadError {
        io_error,
        verifier_log,
    } = err
    {
        let denied = matches!(io_error.raw_os_error(), Some(libc::EPERM | libc::EACCES));
        if denied && verifier_log.to_string().trim().is_empty() {
            return format!(
                "the kernel refused to load it ({io_error}) before verifying it: a capability \
                 is missing (every program needs CAP_BPF, tracing programs CAP_PERFMON, \
                 sock_ops CAP_NET_ADMIN)"
            );
        }
    }
    format!("the verifier rejected it: {}", verifier_summary(err))
}

pub fn verifier_summary(err: &aya::programs::ProgramError) -> String {
    match err {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            log::debug!("verifier log:\n{log}");
            // The statistics lines at the end say nothing about the cause; the line before them does.
            let lines: Vec<&str> = log
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("verification time")
                        && !l.starts_with("stack depth")
                        && !l.starts_with("processed ")
                })
                .collect();
            let tail = lines.len().saturating_sub(3);
            format!("{io_error}; verifier: {}", lines[tail..].join(" | "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use aya::programs::ProgramError;
    use aya_obj::VerifierLog;

    use super::{load_refusal, table, ProbeState, ProbeStatus, PROBES};

    /// A long hook path and a long kernel requirement widen their columns; the columns after
    /// them stay in line (the DETAIL column starts at the same place on every row).
    #[test]
    fn the_probe_table_keeps_its_columns_in_line() {
        let probes: Vec<ProbeStatus> = PROBES
            .iter()
            .enumerate()
            .map(|(i, spec)| ProbeStatus {
                spec: *spec,
                program: spec.program,
                target: if i == 0 {
                    "cgroup /sys/fs/cgroup/kubepods.slice/a-very-long-unified-path".to_owned()
                } else {
                    format!("tp_btf {}", spec.program)
                },
                how: "tp_btf, socket storage".to_owned(),
                state: if i == 1 {
                    ProbeState::Off("not on this kernel".to_owned())
                } else {
                    ProbeState::Attached
                },
            })
            .collect();
        let text = table(&probes);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), PROBES.len() + 1);
        let starts = |l: &str, word: &str| l.find(word).unwrap_or_else(|| panic!("{word} in {l}"));
        let detail = starts(lines[0], "DETAIL");
        let state = starts(lines[0], "STATE");
        assert_eq!(starts(lines[2], "OFF"), state, "{text}");
        for (l, p) in lines[1..].iter().zip(&probes) {
            let cell = match &p.state {
                ProbeState::Attached => p.spec.provides,
                _ => "not on this kernel",
            };
            assert_eq!(l.find(cell), Some(detail), "{text}");
        }
    }

    fn load_error(errno: i32, log: &str) -> ProgramError {
        ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(errno),
            verifier_log: VerifierLog::new(log.to_owned()),
        }
    }

    /// EPERM with no verifier output is a missing capability (measured in the container
    /// suite: sock_ops without CAP_NET_ADMIN, tracing without CAP_PERFMON), not a verifier
    /// verdict; a verifier log keeps its own last lines.
    #[test]
    fn a_refusal_before_verification_names_capabilities() {
        let denied = load_refusal(&load_error(libc::EPERM, ""));
        assert!(
            denied.starts_with("the kernel refused to load it") && denied.contains("CAP_PERFMON"),
            "{denied}"
        );
        let rejected = load_refusal(&load_error(
            libc::EACCES,
            "0: R1=ctx\ninvalid mem access 'scalar'\nprocessed 12 insns",
        ));
        assert!(
            rejected.starts_with("the verifier rejected it:")
                && rejected.contains("invalid mem access"),
            "{rejected}"
        );
    }
}
