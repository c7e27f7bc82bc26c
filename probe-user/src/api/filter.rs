//! A request's [`Filter`], parsed once and applied to flows (`flows`) and to live events
//! (`watch`).
use std::net::{IpAddr, SocketAddr};

use crate::{
    api::proto::Filter,
    attrib::{netns_names, Owner},
    event::{
        parse::{self, ParseError},
        Detail, Event, Process, TcpState,
    },
    pipeline::flowtable::{CloseCause, Flow},
    pipeline::requests::kept::JoinedRequest,
};

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(transparent)]
    Peer(#[from] ParseError),
    #[error("{0:?} is not a TCP state (ESTABLISHED, SYN_SENT, CLOSE, … or open/closed)")]
    State(String),
    #[error(
        "namespace and pod filters apply to flows only (`linkprobe flows --namespace/--pod`); \
         watch a pod's events with --cgroup"
    )]
    OwnerOnEvents,
    #[error(transparent)]
    Netns(#[from] netns_names::NetnsNameError),
    #[error(
        "--envoy-flag and --status apply to flows only (`linkprobe flows`): events carry no \
         requests"
    )]
    RequestsOnEvents,
    #[error("{0:?} is not an Envoy response flag (letters, at most 16: UF, UC, URX, …)")]
    Flag(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StateMatch {
    Is(u8),
    Open,
    Closed,
}

#[derive(Clone, Debug, Default)]
pub struct Matcher {
    peer: Option<(IpAddr, Option<u16>)>,
    port: Option<u16>,
    state: Option<StateMatch>,
    pid: Option<u32>,
    comm: Option<String>,
    cgroup: Option<u64>,
    /// The network namespace's cookie (`--netns` resolved once, when the query arrives).
    netns: Option<u64>,
    namespace: Option<String>,
    pod: Option<String>,
    with_rst: bool,
    with_retrans: bool,
    failed: bool,
    since_ms: Option<u64>,
    envoy_flag: Option<String>,
    status: Option<u16>,
}

fn parse_state(s: &str) -> Option<StateMatch> {
    let up = s.to_ascii_uppercase();
    match up.as_str() {
        "OPEN" => return Some(StateMatch::Open),
        "CLOSED" => return Some(StateMatch::Closed),
        _ => {}
    }
    (1..=13u8)
        .find(|n| TcpState(*n).name() == up)
        .map(StateMatch::Is)
}

/// For the command line: the `--envoy-flag` value, checked (uppercased).
pub fn check_flag(s: &str) -> Result<String, FilterError> {
    let ok = !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_alphabetic());
    if ok {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(FilterError::Flag(
            crate::untrusted::escape_str(s).into_owned(),
        ))
    }
}

/// For the command line: the `--state` value, checked.
pub fn check_state(s: &str) -> Result<String, FilterError> {
    parse_state(s)
        .map(|_| s.to_owned())
        .ok_or_else(|| FilterError::State(s.to_owned()))
}

impl Matcher {
    pub fn new(f: &Filter) -> Result<Matcher, FilterError> {
        let peer = f.peer.as_deref().map(parse::peer).transpose()?;
        let state = match &f.state {
            None => None,
            Some(s) => Some(parse_state(s).ok_or_else(|| FilterError::State(s.clone()))?),
        };
        Ok(Matcher {
            peer,
            port: f.port,
            state,
            pid: f.pid,
            comm: f.comm.clone(),
            cgroup: f.cgroup,
            netns: f.netns.as_deref().map(netns_names::resolve).transpose()?,
            namespace: f.namespace.clone(),
            pod: f.pod.clone(),
            with_rst: f.with_rst,
            with_retrans: f.with_retrans,
            failed: f.failed,
            since_ms: f.since_ms,
            envoy_flag: f.envoy_flag.as_deref().map(check_flag).transpose()?,
            status: f.status,
        })
    }

    /// The matcher for live events, where no owner is resolved: owner filters are refused.
    pub fn for_events(self) -> Result<Matcher, FilterError> {
        if self.wants_owner() {
            return Err(FilterError::OwnerOnEvents);
        }
        if self.wants_requests() {
            return Err(FilterError::RequestsOnEvents);
        }
        Ok(self)
    }

    /// `--envoy-flag` or `--status` was given: [`Matcher::request`] must accept one of the
    /// flow's requests.
    pub fn wants_requests(&self) -> bool {
        self.envoy_flag.is_some() || self.status.is_some()
    }

    /// `--envoy-flag` / `--status` against one request joined to the flow.
    pub fn request(&self, r: &JoinedRequest) -> bool {
        self.envoy_flag.as_deref().is_none_or(|f| r.has_flag(f))
            && self.status.is_none_or(|s| r.status == Some(s))
    }

    /// `--namespace` or `--pod` was given: [`Matcher::owner`] must be asked too.
    pub fn wants_owner(&self) -> bool {
        self.namespace.is_some() || self.pod.is_some()
    }

    /// `--namespace` / `--pod` against the flow's owner (a named pod of this node).
    pub fn owner(&self, owner: &Owner) -> bool {
        let names = owner.names();
        let is = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        is(&self.namespace, names.map(|n| n.0)) && is(&self.pod, names.map(|n| n.1))
    }

    fn endpoint(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        if let Some((ip, port)) = self.peer {
            if remote.ip() != ip || port.is_some_and(|p| p != remote.port()) {
                return false;
            }
        }
        self.port
            .is_none_or(|p| local.port() == p || remote.port() == p)
    }

    /// `--comm` matches the name as shown (escaped).
    fn process(&self, process: Option<&Process>) -> bool {
        self.pid.is_none_or(|p| process.map(|p| p.pid) == Some(p))
            && self
                .comm
                .as_deref()
                .is_none_or(|c| process.is_some_and(|p| p.comm.as_str() == c))
    }

    pub fn flow(&self, f: &Flow, now_ns: u64) -> bool {
        let proc = f.process.as_ref();
        self.endpoint(f.local, f.remote)
            && self.process(proc)
            && self.cgroup.is_none_or(|c| f.cgroup_id == Some(c))
            && self.netns.is_none_or(|n| f.key.netns == n)
            && self.state.is_none_or(|s| match s {
                StateMatch::Is(n) => f.state.0 == n,
                StateMatch::Open => f.close.is_none(),
                StateMatch::Closed => f.close.is_some(),
            })
            && (!self.with_rst || f.rst_sent + f.rst_received > 0)
            && (!self.with_retrans || f.syn_retransmits + f.data_retransmits + f.rtos > 0)
            && (!self.failed || f.close.and_then(CloseCause::failure).is_some())
            && self.since_ms.is_none_or(|ms| {
                f.last_seen_ns >= now_ns.saturating_sub(ms.saturating_mul(1_000_000))
            })
    }

    /// Event filter for `watch`: flow-level conditions become per-event ones (`--with-rst`:
    /// RST events, `--with-retrans`: retransmit events, `--failed`: the end of a flow that
    /// `connect_failures_total` counts, classified from the record's own flow state,
    /// `--state`: the state the event reports). `--since` does not apply.
    pub fn event(&self, ev: &Event) -> bool {
        let proc = ev.process.as_ref();
        let state = match &ev.detail {
            Detail::StateChange { to, .. } => Some(*to),
            Detail::FlowEnd { .. } => Some(TcpState::CLOSE),
            Detail::RstReceived { state }
            | Detail::RstSent { state, .. }
            | Detail::Retransmit { state, .. }
            | Detail::Rto { state }
            | Detail::Open { state } => Some(*state),
            _ => None,
        };
        self.endpoint(ev.local, ev.remote)
            && self.process(proc)
            && self.cgroup.is_none_or(|c| ev.cgroup_id == Some(c))
            && self.netns.is_none_or(|n| ev.netns_cookie == Some(n))
            && self.state.is_none_or(|s| match s {
                StateMatch::Is(n) => state.is_some_and(|st| st.0 == n),
                StateMatch::Open => state.is_some_and(|st| st != TcpState::CLOSE),
                StateMatch::Closed => state == Some(TcpState::CLOSE),
            })
            && (!self.with_rst
                || matches!(
                    ev.detail,
                    Detail::RstReceived { .. } | Detail::RstSent { .. } | Detail::RepeatRst { .. }
                ))
            && (!self.with_retrans
                || matches!(
                    ev.detail,
                    Detail::Retransmit { .. } | Detail::Rto { .. } | Detail::RetransmitSynack
                ))
            && (!self.failed
                || CloseCause::of_end(ev)
                    .and_then(CloseCause::failure)
                    .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let m = Matcher::new(&Filter {
            peer: Some("10.0.0.5:80".into()),
            state: Some("established".into()),
            ..Filter::default()
        })
        .unwrap();
        assert_eq!(m.peer, Some(("10.0.0.5".parse().unwrap(), Some(80))));
        assert_eq!(m.state, Some(StateMatch::Is(1)));
        assert!(Matcher::new(&Filter {
            peer: Some("nope".into()),
            ..Filter::default()
        })
        .is_err());
        assert!(Matcher::new(&Filter {
            state: Some("FLYING".into()),
            ..Filter::default()
        })
        .is_err());
    }
}
