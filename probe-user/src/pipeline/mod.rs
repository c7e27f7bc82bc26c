//! The userspace event path after decoding: events → flow table → signals → detectors and
//! metrics → anomaly changes. Owned by the daemon loop; no I/O here.
pub mod coverage;
pub mod detect;
pub mod flowtable;
mod lru;
pub mod metrics;
pub mod requests;
pub mod signal;
pub mod top;
use std::{ops::RangeInclusive, time::Duration};

use crate::{
    attrib::{listeners::ListenerOwners, Attributor},
    config::Config,
    event::rst_reason::ReasonNames,
    event::Event,
    pipeline::detect::{AnomalyChange, Detectors},
    pipeline::flowtable::{FlowConfig, FlowKey, FlowTable},
    pipeline::metrics::Metrics,
    pipeline::signal::Signal,
    pipeline::top::Top,
};

/// Scopes `top` keeps rates for.
const TOP_SCOPES: usize = 4096;

pub struct Pipeline {
    pub flows: FlowTable,
    pub detectors: Detectors,
    pub metrics: Metrics,
    /// Rolling per-peer / per-port rates for `linkprobe top`.
    pub top: Top,
    /// Who owns each socket (pods of this node); off until the daemon starts a pod source.
    pub attrib: Attributor,
    /// Owners of listeners that predate the daemon, for their accepted sockets.
    pub listeners: ListenerOwners,
    /// Proxy access-log requests joined to flows; off until the daemon starts the reader.
    pub requests: requests::Requests,
    signals: Vec<Signal>,
}

impl Pipeline {
    /// `ephemeral`: this host's `ip_local_port_range` (such ports never become metric labels).
    pub fn new(cfg: &Config, ephemeral: RangeInclusive<u16>) -> Pipeline {
        Pipeline {
            flows: FlowTable::new(FlowConfig {
                max_flows: cfg.flows.max_flows,
                retain_closed: Duration::from_secs(cfg.flows.retain_closed_secs),
                timeline_len: cfg.flows.timeline_len,
                idle_open: Duration::from_secs(cfg.flows.idle_open_secs),
                idle_transient: Duration::from_secs(cfg.flows.idle_transient_secs),
            }),
            detectors: Detectors::new(cfg.detect.clone()),
            metrics: Metrics::new(cfg.metrics.clone(), ephemeral),
            top: Top::new(TOP_SCOPES),
            attrib: Attributor::off(),
            listeners: ListenerOwners::default(),
            requests: requests::Requests::default(),
            signals: Vec::new(),
        }
    }

    /// Feeds one event through the flow table and the detectors. With attribution on, the
    /// signals of the event (all of one socket) also count for the pod that owns the socket:
    /// one owner lookup per event that produced signals.
    pub fn on_event(&mut self, ev: &Event, reasons: &ReasonNames) {
        self.signals.clear();
        self.flows.apply(ev, reasons, &mut self.signals);
        // An accepted socket of a listener that predates us: its listener's owner.
        if let Some((key, port)) = self.flows.needs_listener_owner(ev) {
            if let Some(process) = self.listeners.owner(key.netns, port) {
                self.flows.adopt_owner(&key, process);
            }
        }
        let owner = (self.attrib.enabled() && !self.signals.is_empty())
            .then(|| self.attrib.owner(ev.cgroup_id));
        let process = if self.signals.is_empty() {
            None
        } else {
            self.flows.process_of(ev).cloned()
        };
        for s in &self.signals {
            self.detectors.observe(s);
            self.metrics.observe(s);
            self.top.observe(s);
            if let Some(p) = &process {
                self.top.observe_process(s, p);
            }
            if let Some(owner) = &owner {
                self.metrics.observe_owner(s, owner);
                self.top.observe_owner(s, owner);
            }
        }
    }

    /// Once a second: closes detector windows, expires old closed flows and idle open ones
    /// (`kernel_pass`: see [`FlowTable::expire_idle`]) and revisits the metrics' label budget.
    pub fn tick(&mut self, now_ns: u64, kernel_pass: Option<u64>) -> Vec<AnomalyChange> {
        self.flows.expire(now_ns);
        self.flows.expire_idle(now_ns, kernel_pass);
        let changes = self.detectors.tick(now_ns);
        for c in &changes {
            self.metrics.on_anomaly(c);
        }
        self.metrics.tick(now_ns);
        self.requests.tick(now_ns, &self.flows);
        changes
    }

    /// Sockets that existed before we started (from sock_diag).
    pub fn seed_existing(
        &mut self,
        netns: u64,
        sockets: &[crate::host::diag::ExistingSocket],
        now_ns: u64,
    ) {
        for s in sockets {
            self.flows.insert_existing(
                FlowKey {
                    netns,
                    cookie: s.cookie,
                },
                s.local,
                s.remote,
                crate::event::TcpState(s.state),
                now_ns,
            );
        }
    }
}
