//! Prometheus metrics of TCP health, counted from the flow table's [`Signal`]s, with bounded
//! cardinality. Owned by the event loop (no locks); [`Metrics::families`] turns the state into
//! metric families that the exporter serves.
//!
//! Cardinality: `peer` and `local_port` values come from a top-K by activity
//! ([`topk::TopK`], `[metrics]` in the config); everything else is folded into `other`, and a
//! hard cap on series folds whatever would pass it. Counts are never dropped: a folded value
//! counts into `other`, a retired value's series is merged into `other`, and records the
//! kernel could not deliver are exported under `lost` from its per-kind loss counters, so each
//! family's sum equals the kernel's own count.
mod envoy;
mod fam;
pub mod families;
mod pods;
mod series;
mod spacesaving;
mod topk;

use std::{collections::BTreeSet, ops::RangeInclusive};

pub use series::{Hist, PeerLabel, PortLabel};

use crate::{
    attrib::Owner,
    config::MetricsConfig,
    event::Role,
    pipeline::detect::{AnomalyChange, AnomalyKind, Scope},
    pipeline::signal::{Peer, Signal},
};
use series::{Budget, Family};
use topk::TopK;

/// `linkprobe_tcp_resets_total` labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResetKey {
    pub direction: &'static str,
    /// Index into [`Metrics::reasons`].
    pub reason: usize,
    pub peer: PeerLabel,
    pub local_port: PortLabel,
}

/// `linkprobe_anomalies_active` labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnomalyKey {
    pub kind: AnomalyKind,
    pub scope: &'static str,
    pub peer: Option<PeerLabel>,
    pub local_port: Option<PortLabel>,
}

impl AnomalyKey {
    /// The same anomaly counted under `other` (past the series cap).
    fn folded(self) -> AnomalyKey {
        AnomalyKey {
            peer: self.peer.map(|_| PeerLabel::Other),
            local_port: self.local_port.map(|_| PortLabel::Other),
            ..self
        }
    }
}

pub struct Metrics {
    cfg: MetricsConfig,
    ephemeral: RangeInclusive<u16>,
    peers: TopK<Peer>,
    ports: TopK<u16>,
    hist_peers: TopK<Peer>,
    budget: Budget,
    /// RST reason names seen, interned (a handful per kernel).
    reasons: Vec<String>,
    resets: Family<ResetKey, u64>,
    retransmits: Family<(&'static str, PeerLabel), u64>,
    connections: Family<(&'static str, PeerLabel), u64>,
    failures: Family<(&'static str, &'static str, PeerLabel), u64>,
    handshakes: Family<PeerLabel, Hist>,
    rtts: Family<PeerLabel, Hist>,
    anomaly_keys: BTreeSet<AnomalyKey>,
    last_rebalance_ns: Option<u64>,
    /// Per-pod families, from the first signal with an owner (attribution on).
    pods: Option<pods::PodSeries>,
}

fn role_name(role: Option<Role>) -> &'static str {
    role.map_or("unknown", Role::name)
}

impl Metrics {
    /// `ephemeral`: this host's `ip_local_port_range`; such ports never get a label.
    pub fn new(cfg: MetricsConfig, ephemeral: RangeInclusive<u16>) -> Metrics {
        Metrics {
            peers: TopK::new(cfg.max_peers),
            ports: TopK::new(cfg.max_local_ports),
            hist_peers: TopK::new(cfg.max_histogram_peers),
            budget: Budget {
                max: cfg.max_series,
                used: 0,
                capped: 0,
            },
            cfg,
            ephemeral,
            reasons: Vec::new(),
            resets: Family::new(),
            retransmits: Family::new(),
            connections: Family::new(),
            failures: Family::new(),
            handshakes: Family::new(),
            rtts: Family::new(),
            anomaly_keys: BTreeSet::new(),
            last_rebalance_ns: None,
            pods: None,
        }
    }

    /// A peer's port is kept only when it is a service port: a port from the ephemeral range
    /// (a server bound to port 0, or a client port seen from a socketless event) is dropped.
    /// Labels do not name network namespaces: a peer's series sums its namespaces.
    fn normalise(&self, mut peer: Peer) -> Peer {
        peer.netns = 0;
        if peer.port.is_some_and(|p| self.ephemeral.contains(&p)) {
            peer.port = None;
        }
        peer
    }

    fn peer(&mut self, peer: Peer) -> PeerLabel {
        let peer = self.normalise(peer);
        if self.peers.observe(peer) {
            PeerLabel::Peer(peer)
        } else {
            PeerLabel::Other
        }
    }

    fn hist_peer(&mut self, peer: Peer) -> PeerLabel {
        let peer = self.normalise(peer);
        if self.peers.observe(peer) && self.hist_peers.observe(peer) {
            PeerLabel::Peer(peer)
        } else {
            PeerLabel::Other
        }
    }

    fn port(&mut self, port: Option<u16>) -> PortLabel {
        match port {
            Some(p) if !self.ephemeral.contains(&p) => {
                if self.ports.observe(p) {
                    PortLabel::Port(p)
                } else {
                    PortLabel::Other
                }
            }
            _ => PortLabel::Ephemeral,
        }
    }

    fn reason(&mut self, name: Option<&str>) -> usize {
        let name = name.unwrap_or("unknown");
        match self.reasons.iter().position(|r| r == name) {
            Some(i) => i,
            None => {
                self.reasons.push(name.to_string());
                self.reasons.len() - 1
            }
        }
    }

    /// Counts one signal.
    pub fn observe(&mut self, s: &Signal) {
        match s {
            Signal::Connection { role, peer, .. } => {
                let key = (role_name(Some(*role)), self.peer(*peer));
                *self
                    .connections
                    .entry(key, |(r, _)| (r, PeerLabel::Other), &mut self.budget) += 1;
            }
            Signal::Rst {
                direction,
                peer,
                local_port,
                reason,
                ..
            } => {
                let key = ResetKey {
                    direction: direction.name(),
                    reason: self.reason(reason.as_deref()),
                    peer: self.peer(*peer),
                    local_port: self.port(*local_port),
                };
                let folded = |k: ResetKey| ResetKey {
                    peer: PeerLabel::Other,
                    local_port: PortLabel::Other,
                    ..k
                };
                *self.resets.entry(key, folded, &mut self.budget) += 1;
            }
            Signal::Retransmit { peer, kind, .. } => {
                let key = (kind.name(), self.peer(*peer));
                *self
                    .retransmits
                    .entry(key, |(k, _)| (k, PeerLabel::Other), &mut self.budget) += 1;
            }
            Signal::ConnectFailed {
                peer, role, cause, ..
            } => {
                let key = (cause.name(), role_name(*role), self.peer(*peer));
                *self.failures.entry(
                    key,
                    |(c, r, _)| (c, r, PeerLabel::Other),
                    &mut self.budget,
                ) += 1;
            }
            Signal::Handshake { peer, duration, .. } => {
                let key = self.hist_peer(*peer);
                self.handshakes
                    .entry(key, |_| PeerLabel::Other, &mut self.budget)
                    .observe(duration.as_secs_f64());
            }
            Signal::Rtt { peer, rtt, .. } => {
                let key = self.hist_peer(*peer);
                self.rtts
                    .entry(key, |_| PeerLabel::Other, &mut self.budget)
                    .observe(rtt.as_secs_f64());
            }
            Signal::DataSegments { .. } | Signal::RepeatRst { .. } => {}
        }
    }

    /// Counts `s` for the pod that owns its socket (attribution on).
    pub fn observe_owner(&mut self, s: &Signal, owner: &Owner) {
        let max = self.cfg.max_pods;
        self.pods
            .get_or_insert_with(|| pods::PodSeries::new(max))
            .observe(s, owner, &mut self.budget);
    }

    /// The label set an anomaly's gauge uses (peers and ports as the top-K has them now).
    fn anomaly_key(&self, kind: AnomalyKind, scope: &Scope) -> AnomalyKey {
        let (scope_name, peer, local_port) = match scope {
            Scope::Peer(p) => {
                let p = self.normalise(*p);
                let label = if self.peers.is_admitted(&p) {
                    PeerLabel::Peer(p)
                } else {
                    PeerLabel::Other
                };
                ("peer", Some(label), None)
            }
            Scope::LocalPort(_, p) => {
                let label = if self.ephemeral.contains(p) {
                    PortLabel::Ephemeral
                } else if self.ports.is_admitted(p) {
                    PortLabel::Port(*p)
                } else {
                    PortLabel::Other
                };
                ("local_port", None, Some(label))
            }
            // Cookies are unbounded: a socket-scope anomaly is counted, not labelled.
            Scope::Socket(_) => ("socket", None, None),
        };
        AnomalyKey {
            kind,
            scope: scope_name,
            peer,
            local_port,
        }
    }

    /// Remembers the label set of each raised anomaly so its gauge reads 0 after it clears.
    /// Each set is a series under the same cap as the traffic families.
    pub fn on_anomaly(&mut self, change: &AnomalyChange) {
        if let AnomalyChange::Raised(a) = change {
            let key = self.anomaly_key(a.kind, &a.scope);
            if self.anomaly_keys.contains(&key) || self.budget.take(1) {
                self.anomaly_keys.insert(key);
            } else if self.anomaly_keys.insert(key.folded()) {
                self.budget.used += 1;
            }
        }
    }

    /// The series an active anomaly counts in: its own label set, or the folded one when the
    /// cap refused it a series.
    fn anomaly_series(&self, kind: AnomalyKind, scope: &Scope) -> AnomalyKey {
        let key = self.anomaly_key(kind, scope);
        if self.anomaly_keys.contains(&key) {
            key
        } else {
            key.folded()
        }
    }

    /// Once a second: every `rebalance_secs`, idle peers and ports give their series to busier
    /// ones; the retired series are merged into `other`.
    pub fn tick(&mut self, now_ns: u64) {
        let period = self.cfg.rebalance_secs.saturating_mul(1_000_000_000);
        let last = *self.last_rebalance_ns.get_or_insert(now_ns);
        if now_ns.saturating_sub(last) < period {
            return;
        }
        self.last_rebalance_ns = Some(now_ns);
        let retired_peers = self.peers.rebalance();
        let mut retired_hist = self.hist_peers.rebalance();
        for p in &retired_peers {
            if self.hist_peers.remove(p) {
                retired_hist.push(*p);
            }
        }
        let retired_ports = self.ports.rebalance();
        if let Some(pods) = &mut self.pods {
            pods.rebalance(&mut self.budget);
        }
        let is_retired = |label: &PeerLabel| match label {
            PeerLabel::Peer(p) => retired_peers.contains(p),
            _ => false,
        };
        let b = &mut self.budget;
        self.connections
            .fold(|(r, p)| is_retired(p).then_some((r, PeerLabel::Other)), b);
        self.retransmits
            .fold(|(k, p)| is_retired(p).then_some((k, PeerLabel::Other)), b);
        self.failures.fold(
            |(c, r, p)| is_retired(p).then_some((c, r, PeerLabel::Other)),
            b,
        );
        self.resets.fold(
            |k| {
                let port_retired =
                    matches!(k.local_port, PortLabel::Port(p) if retired_ports.contains(&p));
                (is_retired(&k.peer) || port_retired).then(|| ResetKey {
                    peer: if is_retired(&k.peer) {
                        PeerLabel::Other
                    } else {
                        k.peer
                    },
                    local_port: if port_retired {
                        PortLabel::Other
                    } else {
                        k.local_port
                    },
                    ..*k
                })
            },
            b,
        );
        let hist_retired = |p: &PeerLabel| {
            matches!(p, PeerLabel::Peer(p) if retired_hist.contains(p)).then_some(PeerLabel::Other)
        };
        self.handshakes.fold(hist_retired, b);
        self.rtts.fold(hist_retired, b);
        let kept = self.anomaly_keys.len();
        self.anomaly_keys.retain(|k| {
            !k.peer.is_some_and(|p| is_retired(&p))
                && !matches!(k.local_port, Some(PortLabel::Port(p)) if retired_ports.contains(&p))
        });
        let dropped = kept - self.anomaly_keys.len();
        self.budget.used = self.budget.used.saturating_sub(dropped);
    }
}

#[cfg(test)]
mod tests;
