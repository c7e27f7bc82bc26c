//! Per-pod traffic: `linkprobe_pod_tcp_events_total{namespace,pod,event}`, counted by the pod
//! that owns each socket (its cgroup when the socket was created or accepted). Pods get series
//! of their own by activity under the same rules as peers: a top-K (`[metrics] max_pods`), the
//! rest under `namespace="other",pod="other"`, every series under the shared series cap, and a
//! retired pod's counts merged into `other`. Host processes count as `pod="host"`, pods whose
//! name is not known yet as `pod="unnamed"`, sockets without a known cgroup as `pod="unknown"`,
//! so the family's sum is every counted event. Only kept when attribution is on.
use std::{collections::HashMap, sync::Arc};

use super::{
    series::{Budget, Family},
    topk::TopK,
};
use crate::{
    attrib::{Owner, PodKey},
    pipeline::signal::{ConnectFailure, RstDirection, Signal},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PodLabel {
    Pod(PodKey),
    Other,
    Host,
    Unnamed,
    Unknown,
}

pub struct PodSeries {
    topk: TopK<PodKey>,
    /// `(namespace, name)` of the pods with series of their own.
    names: HashMap<PodKey, (Arc<str>, Arc<str>)>,
    events: Family<(PodLabel, &'static str), u64>,
}

/// The `event` label of a signal, for the kinds counted per pod.
fn event_name(s: &Signal) -> Option<&'static str> {
    Some(match s {
        Signal::Connection { .. } => "connection",
        Signal::Rst {
            direction: RstDirection::Sent,
            ..
        } => "rst_sent",
        Signal::Rst {
            direction: RstDirection::Received,
            ..
        } => "rst_received",
        Signal::Retransmit { .. } => "retransmit",
        Signal::ConnectFailed { cause, .. } => match cause {
            ConnectFailure::Refused => "connect_refused",
            ConnectFailure::Timeout => "connect_timeout",
            ConnectFailure::Unreachable => "connect_unreachable",
            ConnectFailure::Abandoned => "connect_abandoned",
            ConnectFailure::Reset => "connection_reset",
        },
        _ => return None,
    })
}

impl PodSeries {
    pub fn new(max_pods: usize) -> PodSeries {
        PodSeries {
            topk: TopK::new(max_pods),
            names: HashMap::new(),
            events: Family::new(),
        }
    }

    fn label(&mut self, owner: &Owner) -> PodLabel {
        match owner {
            Owner::Pod { pod, .. } => {
                let key = PodKey::of(&pod.uid);
                if !self.topk.observe(key) {
                    return PodLabel::Other;
                }
                self.names.entry(key).or_insert_with(|| {
                    (
                        Arc::from(pod.namespace.as_str()),
                        Arc::from(pod.name.as_str()),
                    )
                });
                PodLabel::Pod(key)
            }
            Owner::UnnamedPod(_) => PodLabel::Unnamed,
            Owner::Host => PodLabel::Host,
            Owner::Unknown => PodLabel::Unknown,
        }
    }

    /// Counts `s` for the pod that owns its socket.
    pub fn observe(&mut self, s: &Signal, owner: &Owner, budget: &mut Budget) {
        let Some(event) = event_name(s) else {
            return;
        };
        let key = (self.label(owner), event);
        *self
            .events
            .entry(key, |(_, e)| (PodLabel::Other, e), budget) += 1;
    }

    /// Idle pods give their series to busier ones; their counts move into `other`.
    pub fn rebalance(&mut self, budget: &mut Budget) {
        let retired = self.topk.rebalance();
        if retired.is_empty() {
            return;
        }
        for k in &retired {
            self.names.remove(k);
        }
        self.events.fold(
            |(l, e)| {
                matches!(l, PodLabel::Pod(k) if retired.contains(k))
                    .then_some((PodLabel::Other, *e))
            },
            budget,
        );
    }

    fn names_of(&self, label: PodLabel) -> (String, String) {
        let fixed = |ns: &str, pod: &str| (ns.to_string(), pod.to_string());
        match label {
            PodLabel::Pod(k) => match self.names.get(&k) {
                Some((ns, name)) => fixed(ns, name),
                // Not reachable: a pod's series exists only after its name was kept.
                None => fixed("other", "other"),
            },
            PodLabel::Other => fixed("other", "other"),
            PodLabel::Host => fixed("", "host"),
            PodLabel::Unnamed => fixed("", "unnamed"),
            PodLabel::Unknown => fixed("", "unknown"),
        }
    }

    /// Every series: `(namespace, pod, event, count)`.
    pub fn rows(&self) -> impl Iterator<Item = (String, String, &'static str, u64)> + '_ {
        self.events.iter().map(|((label, event), v)| {
            let (namespace, pod) = self.names_of(*label);
            (namespace, pod, *event, *v)
        })
    }

    #[cfg(test)]
    fn pods_with_series(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attrib::{
            kubepath::{PodRef, Qos},
            pods::PodMeta,
        },
        event::Role,
        pipeline::signal::Peer,
    };

    fn owner(name: &str) -> Owner {
        let uid = format!("{name:0>8}-0000-0000-0000-000000000000");
        Owner::Pod {
            pod: Arc::new(PodMeta {
                uid: uid.clone(),
                namespace: "shop".into(),
                name: name.into(),
                ips: vec![],
            }),
            at: Arc::new(PodRef {
                uid,
                qos: Qos::BestEffort,
                container_id: None,
                runtime: None,
            }),
        }
    }

    fn connection() -> Signal {
        Signal::Connection {
            ts_ns: 1,
            role: Role::Client,
            peer: Peer {
                addr: "10.0.0.1".parse().unwrap(),
                port: Some(80),
                netns: 0,
            },
            local_port: None,
            cookie: 1,
        }
    }

    fn series(p: &PodSeries) -> Vec<(String, String, String, f64)> {
        p.rows()
            .map(|(ns, pod, event, v)| (ns, pod, event.to_owned(), v as f64))
            .collect()
    }

    #[test]
    fn pods_past_the_top_k_count_as_other_and_sums_stay_exact() {
        let mut budget = Budget {
            max: 100,
            used: 0,
            capped: 0,
        };
        let mut p = PodSeries::new(2);
        for name in ["cart", "web", "db", "db", "cache"] {
            p.observe(&connection(), &owner(name), &mut budget);
        }
        p.observe(&connection(), &Owner::Host, &mut budget);
        p.observe(&connection(), &Owner::Unknown, &mut budget);
        assert_eq!(p.pods_with_series(), 2);
        let s = series(&p);
        let get = |ns: &str, pod: &str| {
            s.iter()
                .find(|(n, q, e, _)| n == ns && q == pod && e == "connection")
                .map(|x| x.3)
        };
        assert_eq!(get("shop", "cart"), Some(1.0));
        assert_eq!(get("shop", "web"), Some(1.0));
        assert_eq!(get("other", "other"), Some(3.0));
        assert_eq!(get("", "host"), Some(1.0));
        assert_eq!(get("", "unknown"), Some(1.0));
        assert_eq!(s.iter().map(|x| x.3).sum::<f64>(), 7.0);
        // An idle pod (a whole period without activity) gives its series to a busier one; its
        // count moves into `other`.
        p.rebalance(&mut budget);
        for _ in 0..3 {
            p.observe(&connection(), &owner("db"), &mut budget);
        }
        p.observe(&connection(), &owner("cart"), &mut budget);
        p.rebalance(&mut budget);
        let s = series(&p);
        assert_eq!(s.iter().map(|x| x.3).sum::<f64>(), 11.0);
        assert!(s.iter().all(|x| x.1 != "web"), "web retired: {s:?}");
    }

    #[test]
    fn the_series_cap_folds_new_pods_into_other() {
        let mut budget = Budget {
            max: 1,
            used: 0,
            capped: 0,
        };
        let mut p = PodSeries::new(10);
        p.observe(&connection(), &owner("cart"), &mut budget);
        p.observe(&connection(), &owner("web"), &mut budget);
        let s = series(&p);
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s.iter().any(|x| x.0 == "other" && x.3 == 1.0));
        assert_eq!(budget.capped, 1);
    }
}
