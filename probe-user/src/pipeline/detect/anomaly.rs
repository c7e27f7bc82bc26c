//! What the detectors report: the kinds of anomaly, the scope one is about, the anomaly itself
//! and its changes, and the window they are measured in.
use std::fmt;

use crate::{event::rst_reason::ResetCause, pipeline::signal::Peer};

/// Length of one detector window.
pub const WINDOW_NS: u64 = 1_000_000_000;

/// What kind of anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnomalyKind {
    RstStorm,
    RstRatio,
    SynRetry,
    ConnectRefused,
    ConnectTimeout,
    ConnectUnreachable,
    ResetAfterEstablished,
    RetransmitRate,
    KernelRepeatRst,
    ConnectAbandoned,
    LocalResetEstablished,
}

impl AnomalyKind {
    pub const COUNT: usize = 11;
    pub const ALL: [AnomalyKind; AnomalyKind::COUNT] = [
        AnomalyKind::RstStorm,
        AnomalyKind::RstRatio,
        AnomalyKind::SynRetry,
        AnomalyKind::ConnectRefused,
        AnomalyKind::ConnectTimeout,
        AnomalyKind::ConnectUnreachable,
        AnomalyKind::ResetAfterEstablished,
        AnomalyKind::RetransmitRate,
        AnomalyKind::KernelRepeatRst,
        AnomalyKind::ConnectAbandoned,
        AnomalyKind::LocalResetEstablished,
    ];

    /// Position in [`AnomalyKind::ALL`] (and in per-kind arrays).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case name for output and metrics.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::RstStorm => "rst_storm",
            AnomalyKind::RstRatio => "rst_ratio",
            AnomalyKind::SynRetry => "syn_retry",
            AnomalyKind::ConnectRefused => "connect_refused",
            AnomalyKind::ConnectTimeout => "connect_timeout",
            AnomalyKind::ConnectUnreachable => "connect_unreachable",
            AnomalyKind::ResetAfterEstablished => "reset_after_established",
            AnomalyKind::RetransmitRate => "retransmit_rate",
            AnomalyKind::KernelRepeatRst => "kernel_repeat_rst",
            AnomalyKind::ConnectAbandoned => "connect_abandoned",
            AnomalyKind::LocalResetEstablished => "local_reset_established",
        }
    }

    /// The likely causes, for people.
    pub fn hint(self) -> &'static str {
        match self {
            AnomalyKind::RstStorm => {
                "app refusing or resetting connections, pool exhausted, LB/proxy draining"
            }
            AnomalyKind::RstRatio => "app actively refusing or connection pool exhausted",
            AnomalyKind::SynRetry => "backend unreachable or firewall dropping SYNs",
            AnomalyKind::ConnectRefused => {
                "nothing listening or the service is refusing connections (RST to SYN)"
            }
            AnomalyKind::ConnectTimeout => {
                "SYNs unanswered: backend down or firewall dropping SYNs"
            }
            AnomalyKind::ConnectUnreachable => "no route to the backend (ICMP unreachable)",
            AnomalyKind::ConnectAbandoned => {
                "the app gave up connecting (its own timeout) while its SYNs went unanswered: \
                 backend down or firewall dropping SYNs"
            }
            AnomalyKind::ResetAfterEstablished => {
                "the peer reset established connections (RSTs received): its app aborted or \
                 crashed, an idle timeout, or an LB/proxy in between reset them"
            }
            AnomalyKind::RetransmitRate => "network loss or middlebox QoS",
            AnomalyKind::KernelRepeatRst => {
                "the kernel saw repeated resets on the same socket/endpoint/port within 1 s"
            }
            // The raise picks the hint of the kernel's reason (`local_reset_hint`).
            AnomalyKind::LocalResetEstablished => {
                "this host reset established connections (RSTs sent; the kernel gave no reason)"
            }
        }
    }

    /// The hint of a [`AnomalyKind::LocalResetEstablished`] whose RST had kernel reason `cause`:
    /// who reset whom.
    pub fn local_reset_hint(cause: ResetCause) -> &'static str {
        match cause {
            ResetCause::LocalApp => {
                "the local application aborted established connections (RSTs sent: close with \
                 SO_LINGER 0 or with unread data): look at this host's app, not at the peer"
            }
            ResetCause::LocalKernel => {
                "this host's kernel aborted established connections (RSTs sent: keepalive \
                 timeout, TCP memory or orphan limits)"
            }
            ResetCause::PeerSegment => {
                "this host reset established connections answering segments it could not \
                 accept: the peer's view of the connection is out of step (stale connection, \
                 NAT or middlebox timeout)"
            }
            ResetCause::Mptcp => "MPTCP on this host reset subflows (RSTs sent)",
            ResetCause::Unspecified => AnomalyKind::LocalResetEstablished.hint(),
        }
    }

    /// What `peak_rate` counts for this kind: `RST/s` (storms), `ratio` (a fraction of 1, shown
    /// as %), `count` (occurrences per window; the kernel's RST count for its repeat check).
    pub fn peak_unit(self) -> &'static str {
        match self {
            AnomalyKind::RstStorm => "RST/s",
            AnomalyKind::RstRatio | AnomalyKind::RetransmitRate => "ratio",
            _ => "count",
        }
    }

    /// Raised by a single occurrence (rather than by a rate or ratio over windows).
    pub fn is_event(self) -> bool {
        !matches!(
            self,
            AnomalyKind::RstStorm | AnomalyKind::RstRatio | AnomalyKind::RetransmitRate
        )
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an anomaly is about. (cgroup / pod scopes later.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// A remote endpoint (its port only when it is a service port).
    Peer(Peer),
    /// One of our listening ports, in a network namespace (its cookie; 0: unknown).
    LocalPort(u64, u16),
    /// One socket, by cookie.
    Socket(u64),
}

impl Scope {
    /// The network namespace (cookie) the scope is in; `None` for a socket (its cookie is
    /// unique across namespaces).
    pub fn netns(&self) -> Option<u64> {
        match self {
            Scope::Peer(p) => Some(p.netns),
            Scope::LocalPort(netns, _) => Some(*netns),
            Scope::Socket(_) => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Peer(p) => write!(f, "peer {p}"),
            Scope::LocalPort(_, p) => write!(f, "local port {p}"),
            Scope::Socket(c) => write!(f, "socket {c}"),
        }
    }
}

/// One anomaly, active or cleared.
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    /// Increases monotonically across all kinds and scopes, from 1.
    pub id: u64,
    pub kind: AnomalyKind,
    pub scope: Scope,
    /// Rate kinds: start of the first window of the raise streak; event kinds: the first
    /// occurrence.
    pub start_ns: u64,
    /// When it cleared (end of the window that completed the clear streak); `None` while active.
    pub end_ns: Option<u64>,
    /// Rate kinds: end of the last window not below the clear threshold; event kinds: the last
    /// occurrence.
    pub last_ns: u64,
    /// Highest value seen while active: RST/s (storm), a fraction (ratios), occurrences per
    /// window (event kinds), the kernel's RST count per its window (kernel repeat-RST).
    pub peak_rate: f64,
    /// Socket cookies involved (first ones, at most `evidence_len`, no duplicates).
    pub evidence: Vec<u64>,
    pub hint: &'static str,
    /// The measurement that raised it (refreshed with each new peak).
    pub detail: String,
}

/// What [`Detectors::tick`] reports.
#[derive(Clone, Debug, PartialEq)]
pub enum AnomalyChange {
    Raised(Anomaly),
    /// The peak grew by at least 10 % since the last report (at most once per anomaly and
    /// window; `peak_rate` itself is always current in `active()`).
    Updated(Anomaly),
    Cleared(Anomaly),
}

impl AnomalyChange {
    #[cfg(test)]
    pub fn anomaly(&self) -> &Anomaly {
        match self {
            AnomalyChange::Raised(a) | AnomalyChange::Updated(a) | AnomalyChange::Cleared(a) => a,
        }
    }
}
