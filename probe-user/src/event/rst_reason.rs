//! Names of the kernel's RST reasons (`enum sk_rst_reason`), read from the `print fmt` of
//! `tcp:tcp_send_reset` because the numbering changes between kernels.
use std::{collections::BTreeMap, path::Path, sync::Arc};

/// Reason number → name (e.g. 12 → `TCP_ABORT_ON_LINGER`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReasonNames(BTreeMap<u32, Arc<str>>);

impl ReasonNames {
    /// Reads tracefs; an unreadable or reason-less format gives an empty table (numbers are
    /// then shown as `reason_<n>`).
    pub fn from_tracefs(root: &Path) -> ReasonNames {
        let path = root.join("events/tcp/tcp_send_reset/format");
        std::fs::read_to_string(path)
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    /// Parses `__print_symbolic(REC->reason, { 0, "NOT_SPECIFIED" }, ...)`.
    pub fn parse(format: &str) -> ReasonNames {
        let mut names = BTreeMap::new();
        let Some(start) = format.find("__print_symbolic(REC->reason") else {
            return ReasonNames(names);
        };
        let rest = &format[start..];
        let end = rest.find(')').unwrap_or(rest.len());
        for entry in rest[..end].split('{').skip(1) {
            let entry = entry.split('}').next().unwrap_or("");
            let mut parts = entry.splitn(2, ',');
            let (Some(num), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            if let Ok(n) = num.trim().parse::<u32>() {
                let name = name.trim().trim_matches('"');
                names.insert(n, Arc::from(crate::untrusted::escape_str(name)));
            }
        }
        ReasonNames(names)
    }

    pub fn name(&self, reason: u32) -> String {
        self.shared(reason).to_string()
    }

    /// The name as a shared string: no allocation for the reasons this kernel names (one per
    /// RST on the event path).
    pub fn shared(&self, reason: u32) -> Arc<str> {
        self.0
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("reason_{reason}").into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_print_fmt() {
        let fmt = r#"print fmt: "skbaddr=%p reason=%s", REC->skbaddr, REC->state ? __print_symbolic(REC->state, { TCP_ESTABLISHED, "TCP_ESTABLISHED" }) : "UNKNOWN", __print_symbolic(REC->reason, { 0, "NOT_SPECIFIED" }, { 1, "NO_SOCKET" }, { 12, "TCP_ABORT_ON_LINGER" })"#;
        let names = ReasonNames::parse(fmt);
        assert_eq!(names.name(0), "NOT_SPECIFIED");
        assert_eq!(names.name(1), "NO_SOCKET");
        assert_eq!(names.name(12), "TCP_ABORT_ON_LINGER");
        assert_eq!(names.name(5), "reason_5");
    }

    #[test]
    fn reason_names_are_escaped() {
        let fmt = "__print_symbolic(REC->reason, { 2, \"EVIL\x1b[2J\" })";
        assert_eq!(ReasonNames::parse(fmt).name(2), "EVIL\\x1b[2J");
    }

    #[test]
    fn no_reason_in_old_kernels() {
        assert!(ReasonNames::parse("print fmt: \"sport=%hu\", REC->sport").is_empty());
    }
}
