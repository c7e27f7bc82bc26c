//! Metric families for the exporter: the traffic families from [`Metrics`] and the daemon's
//! self-health. Names and labels are a contract (see README "Metrics").
use std::collections::BTreeMap;

use prometheus::proto::{MetricFamily, MetricType};

use super::{
    fam::{counter, gauge, s, single, Fam},
    AnomalyKey, Metrics, PeerLabel, PortLabel,
};
use crate::{
    event::totals::Totals,
    kernel::counters::KernelCounters,
    kernel::probes::ProbeStatus,
    pipeline::detect::{Anomaly, AnomalyKind, DetectStats},
    pipeline::flowtable::FlowTableStats,
};

/// What the daemon knows about itself at the moment of a snapshot.
pub struct Health<'a> {
    pub kernel: &'a KernelCounters,
    /// Records that reached userspace, per kind, and those that could not be decoded.
    pub totals: &'a Totals,
    pub flows: FlowTableStats,
    pub max_flows: usize,
    pub detect: &'a DetectStats,
    pub probes: &'a [ProbeStatus],
    /// Times the kernel skipped each probe (`progstats`).
    pub recursion_misses: &'a BTreeMap<&'static str, u64>,
    pub version: &'a str,
    /// Proxy access logs, when `[envoy] paths` names any.
    pub envoy: Option<&'a crate::pipeline::requests::EnvoyStats>,
}

/// Facts whose only record the ring could not take (the kernel counted them), summed.
fn lost(h: &Health<'_>, facts: &[&str]) -> u64 {
    facts.iter().map(|f| h.kernel.lost_fact(f)).sum()
}

impl Metrics {
    /// Every family, traffic and self-health. `active`: the detectors' active anomalies.
    pub fn families<'a>(
        &self,
        h: &Health<'_>,
        active: impl Iterator<Item = &'a Anomaly>,
    ) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        self.traffic(h, &mut out);
        if let Some(pods) = &self.pods {
            let mut f = counter(
                "linkprobe_pod_tcp_events_total",
                "TCP events by the pod of this node that owns the socket: connections, RSTs \
                 sent and received, retransmits, failed connects by cause.",
            );
            for (namespace, pod, event, v) in pods.rows() {
                f.value(
                    &[("namespace", namespace), ("pod", pod), ("event", s(event))],
                    v as f64,
                );
            }
            f.done(&mut out);
        }
        self.anomalies(h, active, &mut out);
        health(h, self, &mut out);
        if let Some(e) = h.envoy {
            super::envoy::families(e, &mut out);
        }
        out
    }

    fn traffic(&self, h: &Health<'_>, out: &mut Vec<MetricFamily>) {
        let lost_label = || PeerLabel::Lost.to_string();
        let mut f = counter(
            "linkprobe_tcp_resets_total",
            "TCP RSTs sent and received, by kernel reason (sent), peer and local service port.",
        );
        for (k, v) in self.resets.iter() {
            f.value(
                &[
                    ("direction", s(k.direction)),
                    ("reason", self.reasons[k.reason].clone()),
                    ("peer", s(k.peer)),
                    ("local_port", s(k.local_port)),
                ],
                *v as f64,
            );
        }
        for (direction, kind) in [("sent", "resets_sent"), ("received", "resets_received")] {
            let n = lost(h, &[kind]);
            if n > 0 {
                f.value(
                    &[
                        ("direction", s(direction)),
                        ("reason", lost_label()),
                        ("peer", lost_label()),
                        ("local_port", s(PortLabel::Lost)),
                    ],
                    n as f64,
                );
            }
        }
        f.done(out);

        let mut f = counter(
            "linkprobe_tcp_retransmits_total",
            "TCP retransmits: SYN, SYN-ACK and data segments sent again, RTO timer firings, \
             and retransmits the kernel could not send (failed).",
        );
        for ((kind, peer), v) in self.retransmits.iter() {
            f.value(&[("type", s(kind)), ("peer", s(peer))], *v as f64);
        }
        for (kind, fact) in [
            ("syn", "retransmits_syn"),
            ("synack", "retransmits_synack"),
            ("data", "retransmits_data"),
            ("rto", "retransmits_rto"),
            ("failed", "retransmits_failed"),
        ] {
            let n = lost(h, &[fact]);
            if n > 0 {
                f.value(&[("type", s(kind)), ("peer", lost_label())], n as f64);
            }
        }
        f.done(out);

        let mut f = counter(
            "linkprobe_tcp_connections_total",
            "TCP connections: connect() attempts (client) and completed passive opens (server).",
        );
        for ((role, peer), v) in self.connections.iter() {
            f.value(&[("role", s(role)), ("peer", s(peer))], *v as f64);
        }
        for (role, kind) in [
            ("client", "connections_client"),
            ("server", "connections_server"),
        ] {
            let n = lost(h, &[kind]);
            if n > 0 {
                f.value(&[("role", s(role)), ("peer", lost_label())], n as f64);
            }
        }
        f.done(out);

        let mut f = counter(
            "linkprobe_tcp_connect_failures_total",
            "Failed connections, once per flow at its close: attempts refused, timed out or \
             unreachable, and connections ended by an RST (reset).",
        );
        for ((cause, role, peer), v) in self.failures.iter() {
            f.value(
                &[("cause", s(cause)), ("role", s(role)), ("peer", s(peer))],
                *v as f64,
            );
        }
        // Failed connects and resets whose closing record was lost: the kernel counted them.
        let n = lost(h, &["failures_reset"]);
        if n > 0 {
            f.value(
                &[
                    ("cause", s("reset")),
                    ("role", lost_label()),
                    ("peer", lost_label()),
                ],
                n as f64,
            );
        }
        for (cause, n) in &h.kernel.connect_failed_lost {
            if *n > 0 {
                f.value(
                    &[
                        ("cause", s(cause)),
                        ("role", s("client")),
                        ("peer", lost_label()),
                    ],
                    *n as f64,
                );
            }
        }
        f.done(out);

        let mut f = Fam::new(
            "linkprobe_tcp_handshake_duration_seconds",
            "Client handshake time: first SYN to ESTABLISHED.",
            MetricType::HISTOGRAM,
        );
        for (peer, hist) in self.handshakes.iter() {
            f.hist(&[("peer", s(peer))], hist);
        }
        f.done(out);

        let mut f = Fam::new(
            "linkprobe_tcp_rtt_seconds",
            "TCP RTT samples (at most one per flow per --rtt-sample-ms).",
            MetricType::HISTOGRAM,
        );
        for (peer, hist) in self.rtts.iter() {
            f.hist(&[("peer", s(peer))], hist);
        }
        f.done(out);
    }

    fn anomalies<'a>(
        &self,
        h: &Health<'_>,
        active: impl Iterator<Item = &'a Anomaly>,
        out: &mut Vec<MetricFamily>,
    ) {
        let mut counts: BTreeMap<AnomalyKey, u64> =
            self.anomaly_keys.iter().map(|k| (*k, 0)).collect();
        for a in active {
            *counts
                .entry(self.anomaly_series(a.kind, &a.scope))
                .or_default() += 1;
        }
        let mut f = gauge(
            "linkprobe_anomalies_active",
            "Active anomalies (1 while active, 0 once cleared; a folded label set counts all \
             of its active anomalies).",
        );
        for (k, v) in &counts {
            f.value(
                &[
                    ("kind", s(k.kind)),
                    ("scope", s(k.scope)),
                    ("peer", k.peer.map(s).unwrap_or_default()),
                    ("local_port", k.local_port.map(s).unwrap_or_default()),
                ],
                *v as f64,
            );
        }
        f.done(out);
        let mut f = counter("linkprobe_anomalies_total", "Anomalies raised since start.");
        for kind in AnomalyKind::ALL {
            f.value(&[("kind", s(kind))], h.detect.raised(kind) as f64);
        }
        f.done(out);
    }
}

fn per_kind(name: &str, help: &str, values: &BTreeMap<&'static str, u64>) -> Fam {
    let mut f = counter(name, help);
    for (kind, v) in values {
        f.value(&[("kind", s(kind))], *v as f64);
    }
    f
}

fn health(h: &Health<'_>, m: &Metrics, out: &mut Vec<MetricFamily>) {
    per_kind(
        "linkprobe_kernel_events_total",
        "Events counted by the kernel programs (per-CPU counters, before any ring-buffer reserve).",
        &h.kernel.events,
    )
    .done(out);
    per_kind(
        "linkprobe_events_lost_total",
        "Records the ring buffer could not take (counted in the kernel, per kind).",
        &h.kernel.lost,
    )
    .done(out);
    per_kind(
        "linkprobe_events_no_cookie_total",
        "Events whose socket cookie could not be resolved (still counted and exported).",
        &h.kernel.no_cookie,
    )
    .done(out);
    per_kind(
        "linkprobe_records_received_total",
        "Records drained from the ring buffer by the daemon.",
        &h.totals.records,
    )
    .done(out);
    single(
        out,
        counter(
            "linkprobe_kernel_connect_failures_total",
            "SYN_SENT to CLOSE transitions counted by the kernel programs.",
        ),
        h.kernel.connect_failed as f64,
    );
    let mut f = counter(
        "linkprobe_kernel_lost_facts_total",
        "Facts whose only record the ring could not take, counted by the kernel: the traffic \
         families show them under peer=\"lost\".",
    );
    for (fact, v) in &h.kernel.lost_facts {
        f.value(&[("fact", s(fact))], *v as f64);
    }
    f.done(out);
    let mut f = counter(
        "linkprobe_kernel_flow_state_total",
        "Kernel flow-state bookkeeping: hits held back by the per-flow report interval (sent \
         with the flow's next record), flows first seen after their start, state that could \
         not be created, state changes with detail on that no record could name.",
    );
    for (what, v) in [
        ("held_back", h.kernel.held_back),
        ("late", h.kernel.state_late),
        ("create_failed", h.kernel.state_create_failed),
        ("unnamed", h.kernel.unnamed_state_changes),
    ] {
        f.value(&[("what", s(what))], v as f64);
    }
    f.done(out);
    single(
        out,
        counter(
            "linkprobe_decode_errors_total",
            "Ring-buffer records that could not be decoded.",
        ),
        h.totals.decode_errors as f64,
    );
    single(
        out,
        counter(
            "linkprobe_output_dropped_lines_total",
            "Lines (events, anomalies) the daemon's stdout did not take in time: dropped, never \
             blocking the event loop.",
        ),
        h.totals.output_dropped_lines as f64,
    );

    single(
        out,
        gauge("linkprobe_flows_tracked", "Flows in the flow table."),
        h.flows.tracked as f64,
    );
    single(
        out,
        gauge(
            "linkprobe_flows_max",
            "The flow table's bound (flows.max_flows).",
        ),
        h.max_flows as f64,
    );
    single(
        out,
        counter(
            "linkprobe_flows_evicted_total",
            "Flows evicted at the table's bound (closed flows first, then least recently active).",
        ),
        h.flows.evicted as f64,
    );
    single(
        out,
        counter(
            "linkprobe_flows_expired_total",
            "Closed flows dropped after flows.retain_closed_secs.",
        ),
        h.flows.expired as f64,
    );
    single(
        out,
        counter(
            "linkprobe_flows_expired_open_total",
            "Open flows dropped idle past flows.idle_open_secs / idle_transient_secs and no \
             longer listed by the kernel: their close was never seen.",
        ),
        h.flows.expired_open as f64,
    );
    single(
        out,
        gauge(
            "linkprobe_detector_scopes",
            "Scopes (peers, ports, sockets) with detector state.",
        ),
        h.detect.scopes_tracked as f64,
    );
    single(
        out,
        counter(
            "linkprobe_detector_scopes_evicted_total",
            "Detector scopes evicted at detect.max_scopes.",
        ),
        h.detect.scopes_evicted as f64,
    );

    let mut f = gauge(
        "linkprobe_probe_attached",
        "1 when the probe is attached or not needed on this kernel (how says which), 0 when it \
         is off (see linkprobe status).",
    );
    for p in h.probes {
        let up = p.state.is_serving();
        f.value(
            &[
                ("probe", s(p.spec.program)),
                ("hook", p.target.clone()),
                ("how", p.how.clone()),
            ],
            if up { 1.0 } else { 0.0 },
        );
    }
    f.done(out);

    let mut f = counter(
        "linkprobe_probe_recursion_misses_total",
        "Hits the kernel skipped the probe for (it already ran on that CPU: preempted or \
         interrupted) and its backup program did not handle: neither counted nor sent.",
    );
    for (probe, n) in h.recursion_misses {
        f.value(&[("probe", s(probe))], *n as f64);
    }
    f.done(out);

    let mut f = counter(
        "linkprobe_probe_backup_runs_total",
        "Hits the kernel skipped the probe for that its backup program handled (counted and \
         sent as usual).",
    );
    for (probe, n) in &h.kernel.backup_runs {
        f.value(&[("probe", s(probe))], *n as f64);
    }
    f.done(out);

    let mut f = counter(
        "linkprobe_series_dropped_total",
        "Label values refused a series of their own and folded into \"other\" (top-K full).",
    );
    f.value(&[("label", s("peer"))], m.peers.folded() as f64);
    f.value(&[("label", s("local_port"))], m.ports.folded() as f64);
    f.value(
        &[("label", s("histogram_peer"))],
        m.hist_peers.folded() as f64,
    );
    f.done(out);
    let mut f = counter(
        "linkprobe_series_retired_total",
        "Idle label values whose series were merged into \"other\" for busier ones.",
    );
    f.value(&[("label", s("peer"))], m.peers.retired() as f64);
    f.value(&[("label", s("local_port"))], m.ports.retired() as f64);
    f.done(out);
    single(
        out,
        counter(
            "linkprobe_series_capped_total",
            "Observations folded into \"other\" because a new series would pass \
             metrics.max_series.",
        ),
        m.budget.capped as f64,
    );
    single(
        out,
        gauge(
            "linkprobe_series",
            "Traffic and anomaly series exported (each histogram bucket counts as one).",
        ),
        m.budget.used as f64,
    );
    single(
        out,
        gauge(
            "linkprobe_series_max",
            "The traffic series cap (metrics.max_series).",
        ),
        m.budget.max as f64,
    );

    let mut f = gauge(
        "linkprobe_build_info",
        "Always 1: the linkprobe version and the kernel it runs on.",
    );
    f.value(
        &[
            ("version", s(h.version)),
            ("kernel", s(&h.totals.kernel_release)),
        ],
        1.0,
    );
    f.done(out);
}
