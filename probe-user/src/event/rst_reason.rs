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

/// Who an RST this host sent was about: whose action made the kernel reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetCause {
    /// The local application aborted the connection (closed it with unread data, with
    /// SO_LINGER 0, or disconnected it).
    LocalApp,
    /// This host's kernel gave up on the connection (keepalive, memory, an error).
    LocalKernel,
    /// The kernel answered a segment from the peer it could not accept (no socket, a bad ACK or
    /// sequence, a stray SYN): the peer's state is out of step with ours.
    PeerSegment,
    /// An MPTCP subflow was reset by the MPTCP layer.
    Mptcp,
    /// The kernel did not say (`NOT_SPECIFIED`, or a reason this table does not know).
    Unspecified,
}

/// One reason the kernel reports for an RST it sends: whose doing it was and what it means
/// (for the local app's reasons: how it aborted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReasonMeaning {
    pub name: &'static str,
    pub cause: ResetCause,
    /// One line, for people.
    pub meaning: &'static str,
}

/// Every reason of `enum sk_rst_reason` (include/net/rstreason.h, 6.10 on) with what it means.
/// Numbers change between kernels, names do not: the table is keyed by name.
pub const REASONS: &[ReasonMeaning] = &[
    ReasonMeaning {
        name: "NOT_SPECIFIED",
        cause: ResetCause::Unspecified,
        meaning: "the kernel gave no reason",
    },
    ReasonMeaning {
        name: "NO_SOCKET",
        cause: ResetCause::PeerSegment,
        meaning: "a segment for a port or connection with no socket here (closed port, or a \
                  connection this host already forgot)",
    },
    ReasonMeaning {
        name: "TCP_INVALID_ACK_SEQUENCE",
        cause: ResetCause::PeerSegment,
        meaning: "the peer acknowledged data this host never sent (ACK outside the window)",
    },
    ReasonMeaning {
        name: "TCP_RFC7323_PAWS",
        cause: ResetCause::PeerSegment,
        meaning: "the peer's segment failed the timestamp check (PAWS, RFC 7323)",
    },
    ReasonMeaning {
        name: "TCP_TOO_OLD_ACK",
        cause: ResetCause::PeerSegment,
        meaning: "the peer's ACK is older than anything still unacknowledged",
    },
    ReasonMeaning {
        name: "TCP_ACK_UNSENT_DATA",
        cause: ResetCause::PeerSegment,
        meaning: "the peer acknowledged data this host has not sent yet",
    },
    ReasonMeaning {
        name: "TCP_FLAGS",
        cause: ResetCause::PeerSegment,
        meaning: "the peer's segment had flags invalid in this state (e.g. a SYN-ACK to a \
                  listener)",
    },
    ReasonMeaning {
        name: "TCP_OLD_ACK",
        cause: ResetCause::PeerSegment,
        meaning: "the peer's ACK acknowledges nothing new in a state that needs it",
    },
    ReasonMeaning {
        name: "TCP_ABORT_ON_DATA",
        cause: ResetCause::LocalApp,
        meaning: "data arrived after it closed the socket (it will never read it)",
    },
    ReasonMeaning {
        name: "TCP_TIMEWAIT_SOCKET",
        cause: ResetCause::PeerSegment,
        meaning: "the peer sent to a connection already closed here (in TIME_WAIT)",
    },
    ReasonMeaning {
        name: "INVALID_SYN",
        cause: ResetCause::PeerSegment,
        meaning: "the peer sent a SYN on a connection already synchronised",
    },
    ReasonMeaning {
        name: "TCP_ABORT_ON_CLOSE",
        cause: ResetCause::LocalApp,
        meaning: "closed with unread data in its receive queue",
    },
    ReasonMeaning {
        name: "TCP_ABORT_ON_LINGER",
        cause: ResetCause::LocalApp,
        meaning: "the closed connection outlived its FIN_WAIT2 time (TCP_LINGER2 / \
                  tcp_fin_timeout)",
    },
    ReasonMeaning {
        name: "TCP_ABORT_ON_MEMORY",
        cause: ResetCause::LocalKernel,
        meaning: "this host ran short of TCP memory or had too many orphaned sockets \
                  (tcp_max_orphans, tcp_mem)",
    },
    ReasonMeaning {
        name: "TCP_STATE",
        cause: ResetCause::LocalApp,
        meaning: "close with SO_LINGER 0, or disconnect",
    },
    ReasonMeaning {
        name: "TCP_KEEPALIVE_TIMEOUT",
        cause: ResetCause::LocalKernel,
        meaning: "keepalive probes went unanswered: the peer is gone or unreachable",
    },
    ReasonMeaning {
        name: "TCP_DISCONNECT_WITH_DATA",
        cause: ResetCause::LocalApp,
        meaning: "disconnected with data still queued to send or read",
    },
    ReasonMeaning {
        name: "MPTCP_RST_EUNSPEC",
        cause: ResetCause::Mptcp,
        meaning: "MPTCP reset a subflow: unspecified error",
    },
    ReasonMeaning {
        name: "MPTCP_RST_EMPTCP",
        cause: ResetCause::Mptcp,
        meaning: "MPTCP reset a subflow: MPTCP-specific error",
    },
    ReasonMeaning {
        name: "MPTCP_RST_ERESOURCE",
        cause: ResetCause::Mptcp,
        meaning: "MPTCP reset a subflow: out of resources",
    },
    ReasonMeaning {
        name: "MPTCP_RST_EPROHIBIT",
        cause: ResetCause::Mptcp,
        meaning: "MPTCP reset a subflow: administratively prohibited",
    },
    ReasonMeaning {
        name: "MPTCP_RST_EWQ2BIG",
        cause: ResetCause::Mptcp,
        meaning: "MPTCP reset a subflow: too much unacknowledged data queued",
    },
    ReasonMeaning {
        name: "MPTCP_RST_EBADPERF",
        cause: ResetCause::Mptcp,
        meaning: "MPTCP reset a subflow: it performed too badly",
    },
    ReasonMeaning {
        name: "MPTCP_RST_EMIDDLEBOX",
        cause: ResetCause::Mptcp,
        meaning: "MPTCP reset a subflow: a middlebox interfered",
    },
    ReasonMeaning {
        name: "ERROR",
        cause: ResetCause::LocalKernel,
        meaning: "the kernel hit an unexpected error",
    },
];

/// What a reason name means; `None` for a name this table does not know (a newer kernel).
pub fn meaning(name: &str) -> Option<&'static ReasonMeaning> {
    REASONS.iter().find(|r| r.name == name)
}

/// Who reset whom, in words, for an RST this host sent with kernel reason `name` to `peer`.
pub fn explain_sent(name: Option<&str>, peer: &str) -> String {
    let Some(name) = name else {
        return format!("this host reset the connection to {peer} (the kernel gave no reason)");
    };
    match meaning(name) {
        Some(m) => {
            let who = match m.cause {
                ResetCause::LocalApp => "the local application aborted the connection to",
                ResetCause::LocalKernel => "this host's kernel aborted the connection to",
                ResetCause::PeerSegment => {
                    "this host reset the connection, answering a segment from"
                }
                ResetCause::Mptcp => "MPTCP on this host reset a subflow to",
                ResetCause::Unspecified => "this host reset the connection to",
            };
            format!("{who} {peer} (kernel reason {name}: {})", m.meaning)
        }
        None => format!("this host reset the connection to {peer} (kernel reason {name})"),
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

    /// This kernel's names (6.18's `tcp_send_reset` print fmt, every reason it reports) all
    /// have a meaning; the local-abort ones say the local application did it.
    #[test]
    fn every_reason_of_the_kernel_has_a_meaning() {
        for (kernel, fmt, count) in [
            (
                "6.12",
                include_str!("../../tests/fixtures/tracefs/6.12/tcp/tcp_send_reset/format"),
                26,
            ),
            (
                "6.18",
                include_str!("../../tests/fixtures/tracefs/6.18/tcp/tcp_send_reset/format"),
                26,
            ),
        ] {
            let names = ReasonNames::parse(fmt);
            assert!(names.0.len() == count, "{kernel}: {names:?}");
            for name in names.0.values().filter(|n| &***n != "MAX") {
                let m = meaning(name).unwrap_or_else(|| panic!("{kernel}: {name} has no meaning"));
                assert!(!m.meaning.is_empty());
            }
        }
        for name in [
            "TCP_STATE",
            "TCP_ABORT_ON_DATA",
            "TCP_ABORT_ON_CLOSE",
            "TCP_ABORT_ON_LINGER",
        ] {
            assert_eq!(
                meaning(name).map(|m| m.cause),
                Some(ResetCause::LocalApp),
                "{name}"
            );
            let said = explain_sent(Some(name), "10.0.0.2:8080");
            assert!(
                said.starts_with("the local application aborted the connection to 10.0.0.2:8080"),
                "{said}"
            );
        }
        assert_eq!(
            meaning("NO_SOCKET").map(|m| m.cause),
            Some(ResetCause::PeerSegment)
        );
        assert_eq!(
            meaning("TCP_KEEPALIVE_TIMEOUT").map(|m| m.cause),
            Some(ResetCause::LocalKernel)
        );
        // Names are unique; an unknown one is said as it is.
        let mut seen = std::collections::BTreeSet::new();
        assert!(REASONS.iter().all(|r| seen.insert(r.name)));
        assert_eq!(
            explain_sent(Some("TCP_NEW_THING"), "p"),
            "this host reset the connection to p (kernel reason TCP_NEW_THING)"
        );
    }

    #[test]
    fn no_reason_in_old_kernels() {
        assert!(ReasonNames::parse("print fmt: \"sport=%hu\", REC->sport").is_empty());
    }
}
