//! Capability sets as a process has them (`CapEff:` etc. in /proc/<pid>/status): hex masks to
//! names, so the suite can state which capabilities the containerised daemon really holds.
use std::collections::BTreeSet;

use anyhow::{bail, Context as _, Result};

/// `capability(7)` names by number (linux/capability.h, 0 to CAP_LAST_CAP = 40 in 6.x).
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The names in a mask; bits past the table show as `cap_<n>`.
pub fn names(mask: u64) -> BTreeSet<String> {
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| {
            NAMES
                .get(bit)
                .map_or_else(|| format!("cap_{bit}"), |n| (*n).to_owned())
        })
        .collect()
}

/// `CAP_BPF` for `BPF`, `bpf` or `CAP_BPF` (Kubernetes writes them without the prefix).
pub fn canonical(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// The capability lines of a /proc/<pid>/status: (`CapEff`, mask) for each `Cap*:` line, and
/// the other lines the suite reports (`NoNewPrivs`, `Seccomp`).
pub struct ProcessSecurity {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: Option<bool>,
    /// 0 off, 1 strict, 2 filter.
    pub seccomp: Option<u32>,
}

impl ProcessSecurity {
    pub fn parse(status: &str) -> Result<ProcessSecurity> {
        let field = |key: &str| -> Option<&str> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
        };
        let mask = |key: &str| -> Result<u64> {
            let hex = field(key).with_context(|| format!("no `{key}:` line in the status"))?;
            u64::from_str_radix(hex, 16).with_context(|| format!("`{key}: {hex}` is not hex"))
        };
        let number = |key: &str| field(key).and_then(|v| v.parse::<u32>().ok());
        let security = ProcessSecurity {
            inheritable: mask("CapInh")?,
            permitted: mask("CapPrm")?,
            effective: mask("CapEff")?,
            bounding: mask("CapBnd")?,
            ambient: mask("CapAmb").unwrap_or(0),
            no_new_privs: number("NoNewPrivs").map(|n| n == 1),
            seccomp: number("Seccomp"),
        };
        if security.effective & !security.permitted != 0 {
            bail!("effective capabilities outside the permitted set: not a real status");
        }
        Ok(security)
    }

    /// One line per set, e.g. `CapEff 0000008000001000 = CAP_BPF, CAP_NET_ADMIN`.
    pub fn lines(&self) -> Vec<String> {
        [
            ("CapInh", self.inheritable),
            ("CapPrm", self.permitted),
            ("CapEff", self.effective),
            ("CapBnd", self.bounding),
            ("CapAmb", self.ambient),
        ]
        .into_iter()
        .map(|(key, mask)| {
            let set: Vec<String> = names(mask).into_iter().collect();
            let set = if set.is_empty() {
                "(none)".to_owned()
            } else {
                set.join(", ")
            };
            format!("{key} {mask:016x} = {set}")
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_name_their_bits() {
        // BPF (39), PERFMON (38), NET_ADMIN (12).
        let mask = (1 << 39) | (1 << 38) | (1 << 12);
        let got: Vec<String> = names(mask).into_iter().collect();
        assert_eq!(got, ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        assert!(names(0).is_empty());
        assert_eq!(names(1 << 41).into_iter().collect::<Vec<_>>(), ["cap_41"]);
        assert_eq!(names(0x1ff_ffff_ffff).len(), 41);
    }

    #[test]
    fn kubernetes_names_get_the_prefix() {
        assert_eq!(canonical("BPF"), "CAP_BPF");
        assert_eq!(canonical("net_admin"), "CAP_NET_ADMIN");
        assert_eq!(canonical("CAP_PERFMON"), "CAP_PERFMON");
    }

    #[test]
    fn a_status_file_parses() {
        let status = "Name:\tlinkprobe\nCapInh:\t0000000000000000\nCapPrm:\t000000c000001000\n\
                      CapEff:\t000000c000001000\nCapBnd:\t000000c000001000\n\
                      CapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n";
        let s = ProcessSecurity::parse(status).unwrap();
        assert_eq!(s.effective, 0xc0_0000_1000);
        assert_eq!(s.no_new_privs, Some(true));
        assert_eq!(s.seccomp, Some(2));
        assert_eq!(
            s.lines()[2],
            "CapEff 000000c000001000 = CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"
        );
        assert_eq!(s.lines()[0], "CapInh 0000000000000000 = (none)");
        assert!(ProcessSecurity::parse("Name:\tx\n").is_err());
        let bad = status.replace("CapPrm:\t000000c000001000", "CapPrm:\t0000000000000000");
        assert!(ProcessSecurity::parse(&bad).is_err());
    }
}
