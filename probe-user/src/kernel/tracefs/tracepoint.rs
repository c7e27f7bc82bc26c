//! The tracepoints linkprobe attaches to, and where tracefs keeps each one's format.
use std::{fmt, path::Path, path::PathBuf};

/// The tracepoints linkprobe attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tracepoint {
    /// `tcp:tcp_receive_reset`
    RstReceived,
    /// `tcp:tcp_send_reset`
    RstSent,
    /// `tcp:tcp_retransmit_skb`
    RetransmitSkb,
    /// `tcp:tcp_retransmit_synack`
    RetransmitSynack,
    /// `tcp:tcp_destroy_sock`
    DestroySock,
    /// `sock:inet_sock_set_state`
    SetState,
}

impl Tracepoint {
    pub const ALL: [Tracepoint; 6] = [
        Tracepoint::RstReceived,
        Tracepoint::RstSent,
        Tracepoint::RetransmitSkb,
        Tracepoint::RetransmitSynack,
        Tracepoint::DestroySock,
        Tracepoint::SetState,
    ];

    /// tracefs category (`tcp`, `sock`).
    pub fn category(self) -> &'static str {
        match self {
            Tracepoint::SetState => "sock",
            _ => "tcp",
        }
    }

    /// Event name within the category.
    pub fn name(self) -> &'static str {
        match self {
            Tracepoint::RstReceived => "tcp_receive_reset",
            Tracepoint::RstSent => "tcp_send_reset",
            Tracepoint::RetransmitSkb => "tcp_retransmit_skb",
            Tracepoint::RetransmitSynack => "tcp_retransmit_synack",
            Tracepoint::DestroySock => "tcp_destroy_sock",
            Tracepoint::SetState => "inet_sock_set_state",
        }
    }

    /// `<tracefs_root>/events/<category>/<name>`.
    pub fn event_dir(self, tracefs_root: &Path) -> PathBuf {
        tracefs_root
            .join("events")
            .join(self.category())
            .join(self.name())
    }

    /// `<tracefs_root>/events/<category>/<name>/format`.
    pub fn format_path(self, tracefs_root: &Path) -> PathBuf {
        self.event_dir(tracefs_root).join("format")
    }
}

/// `tcp:tcp_send_reset`.
impl fmt::Display for Tracepoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.category(), self.name())
    }
}
