//! Which flows an anomaly covers, decided from what both keep for as long as they are shown
//! (the anomaly's kind, scope and active span; the flow's scope, lifetime and counts), not from
//! the anomaly's bounded evidence list: a refused flow names its `connect_refused` however
//! many flows came before it, and an anomaly counts every flow of the table it covers.
use std::collections::HashMap;

use crate::pipeline::{
    detect::{Anomaly, AnomalyKind, Scope, WINDOW_NS},
    flowtable::{scope, CloseCause, Flow},
};

/// Whether `f` is one of the flows `a` is about: in its scope, alive while it was active (a
/// rate kind's span starts at a window start: one window of slack), and showing the fact the
/// kind counts.
pub fn covers(a: &Anomaly, f: &Flow, now_ns: u64) -> bool {
    let (peer, local_port) = scope(f);
    let in_scope = match a.scope {
        Scope::Peer(p) => p == peer,
        Scope::LocalPort(netns, p) => netns == peer.netns && local_port == Some(p),
        Scope::Socket(c) => c == f.key.cookie,
    };
    let until = a.end_ns.unwrap_or(now_ns.max(a.last_ns));
    let flow_end = f.closed_ns.map_or(f.last_seen_ns, |c| c.get());
    let alive = f.start_ns <= until && flow_end.saturating_add(WINDOW_NS) >= a.start_ns;
    in_scope && alive && did(a.kind, f)
}

/// The flow shows the fact `kind` counts.
fn did(kind: AnomalyKind, f: &Flow) -> bool {
    match kind {
        AnomalyKind::ConnectRefused => f.close == Some(CloseCause::Refused),
        AnomalyKind::ConnectTimeout => f.close == Some(CloseCause::Timeout),
        AnomalyKind::ConnectUnreachable => f.close == Some(CloseCause::Unreachable),
        AnomalyKind::ConnectAbandoned => f.close == Some(CloseCause::Abandoned),
        AnomalyKind::SynRetry => f.syn_retransmits > 0,
        AnomalyKind::RetransmitRate => f.data_retransmits > 0,
        AnomalyKind::ResetAfterEstablished => f.established && f.rst_received > 0,
        AnomalyKind::LocalResetEstablished => f.established && f.rst_sent > 0,
        AnomalyKind::RstStorm | AnomalyKind::RstRatio | AnomalyKind::KernelRepeatRst => {
            f.rst_sent > 0 || f.rst_received > 0
        }
    }
}

/// Anomalies by scope and by evidence cookie: which of them cover or name a flow, checked
/// against the anomalies of the flow's own scopes and those naming it only.
pub struct CoverIndex<'a> {
    by_scope: HashMap<Scope, Vec<&'a Anomaly>>,
    by_evidence: HashMap<u64, Vec<u64>>,
}

impl<'a> CoverIndex<'a> {
    pub fn new(anomalies: &[&'a Anomaly]) -> CoverIndex<'a> {
        let mut by_scope: HashMap<Scope, Vec<&Anomaly>> = HashMap::new();
        let mut by_evidence: HashMap<u64, Vec<u64>> = HashMap::new();
        for a in anomalies {
            by_scope.entry(a.scope).or_default().push(a);
            for c in &a.evidence {
                by_evidence.entry(*c).or_default().push(a.id);
            }
        }
        CoverIndex {
            by_scope,
            by_evidence,
        }
    }

    /// The ids of the anomalies that cover or name `f`, sorted, each once, into `out`.
    pub fn ids_of(&self, f: &Flow, now_ns: u64, out: &mut Vec<u64>) {
        out.clear();
        let (peer, local_port) = scope(f);
        let scopes = [
            Some(Scope::Peer(peer)),
            local_port.map(|p| Scope::LocalPort(peer.netns, p)),
            Some(Scope::Socket(f.key.cookie)),
        ];
        for s in scopes.iter().flatten() {
            let covering = self.by_scope.get(s).into_iter().flatten();
            out.extend(covering.filter(|a| covers(a, f, now_ns)).map(|a| a.id));
        }
        out.extend(self.by_evidence.get(&f.key.cookie).into_iter().flatten());
        out.sort_unstable();
        out.dedup();
    }
}

/// How many flows of `flows` each of `anomalies` covers or names as evidence, by anomaly id:
/// one pass over the flows.
pub fn count_covered<'a>(
    anomalies: &[&Anomaly],
    flows: impl Iterator<Item = &'a Flow>,
    now_ns: u64,
) -> HashMap<u64, u64> {
    let mut counts: HashMap<u64, u64> = anomalies.iter().map(|a| (a.id, 0)).collect();
    if anomalies.is_empty() {
        return counts;
    }
    let index = CoverIndex::new(anomalies);
    let mut mine: Vec<u64> = Vec::new();
    for f in flows {
        index.ids_of(f, now_ns, &mut mine);
        for id in &mine {
            *counts.entry(*id).or_default() += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;
    use crate::{
        event::Role,
        pipeline::{flowtable::FlowKey, signal::Peer},
    };

    const S: u64 = 1_000_000_000;

    fn refused(cookie: u64, at_s: u64) -> Flow {
        let mut f = Flow::new(
            FlowKey { netns: 1, cookie },
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:9999".parse().unwrap(),
            at_s * S,
        );
        f.role = Some(Role::Client);
        f.close = Some(CloseCause::Refused);
        f.closed_ns = NonZeroU64::new(at_s * S + 1000);
        f.rst_received = 1;
        f
    }

    fn anomaly(kind: AnomalyKind, start_s: u64, end_s: Option<u64>) -> Anomaly {
        Anomaly {
            id: 1,
            kind,
            scope: Scope::Peer(Peer {
                addr: "127.0.0.1".parse().unwrap(),
                port: Some(9999),
                netns: 1,
            }),
            start_ns: start_s * S,
            end_ns: end_s.map(|e| e * S),
            last_ns: start_s * S,
            peak_rate: 1.0,
            evidence: vec![1],
            hint: kind.hint(),
            detail: String::new(),
        }
    }

    /// Far more flows than the evidence list holds are linked, both ways, while both are
    /// there; a flow of another time, peer or fact is not.
    #[test]
    fn an_anomaly_covers_every_flow_of_its_scope_span_and_fact() {
        let a = anomaly(AnomalyKind::ConnectRefused, 100, Some(140));
        let flows: Vec<Flow> = (0..100).map(|i| refused(i, 100 + i % 30)).collect();
        assert!(flows.iter().all(|f| covers(&a, f, 200 * S)));
        let later = refused(500, 150);
        assert!(!covers(&a, &later, 200 * S));
        let mut other_peer = refused(501, 110);
        other_peer.remote = "127.0.0.1:9998".parse().unwrap();
        assert!(!covers(&a, &other_peer, 200 * S));
        // The same peer seen from another network namespace is another peer.
        let mut other_netns = refused(503, 110);
        other_netns.key.netns = 2;
        assert!(!covers(&a, &other_netns, 200 * S));
        let mut fine = refused(502, 110);
        (fine.close, fine.rst_received) = (Some(CloseCause::Fin), 0);
        assert!(!covers(&a, &fine, 200 * S));
        // Still active: the later refused flow is the storm's too.
        let storm = Anomaly {
            id: 2,
            ..anomaly(AnomalyKind::RstStorm, 100, None)
        };
        let counts = count_covered(
            &[&a, &storm],
            flows.iter().chain([&later, &other_peer, &fine]),
            200 * S,
        );
        assert_eq!((counts[&1], counts[&2]), (100, 101));
        // A flow named as evidence counts once, covered or not.
        let named = Anomaly {
            id: 3,
            evidence: vec![501, 0],
            ..anomaly(AnomalyKind::KernelRepeatRst, 100, None)
        };
        let counts = count_covered(&[&named], flows.iter().chain([&other_peer]), 200 * S);
        assert_eq!(
            counts[&3], 101,
            "100 covered (flow 0 named too: once), 501 named"
        );
    }
}
