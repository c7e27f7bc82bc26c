use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use prometheus::{proto::MetricFamily, Encoder as _, TextEncoder};
use testkit::linkprobe::CAPPED_FAMILIES;

use super::{families::Health, *};
use crate::event::totals::Totals;
use crate::pipeline::detect::Anomaly;
use crate::{
    kernel::counters::KernelCounters,
    kernel::probes::{ProbeState, ProbeStatus, PROBES},
    pipeline::detect::DetectStats,
    pipeline::flowtable::FlowTableStats,
    pipeline::signal::{ConnectFailure, RetransmitKind, RstDirection},
};

const S: u64 = 1_000_000_000;

fn ip(i: u32) -> IpAddr {
    IpAddr::from((0x0a00_0000 + i).to_be_bytes())
}

fn client_peer(i: u32) -> Peer {
    Peer {
        addr: ip(i),
        port: Some(443),
        netns: 0,
    }
}

fn rst(i: u32, reason: &str) -> Signal {
    Signal::Rst {
        ts_ns: 1,
        direction: RstDirection::Sent,
        peer: Peer {
            addr: ip(i),
            port: None,
            netns: 0,
        },
        local_port: Some(8080),
        cookie: None,
        reason: Some(reason.into()),
        after_established: false,
        connection_ns: None,
    }
}

fn conn(i: u32) -> Signal {
    Signal::Connection {
        ts_ns: 1,
        role: Role::Client,
        peer: client_peer(i),
        local_port: None,
        cookie: u64::from(i),
    }
}

fn metrics(cfg: MetricsConfig) -> Metrics {
    Metrics::new(cfg, 32768..=60999)
}

fn encode(m: &Metrics, kernel: &KernelCounters) -> (Vec<MetricFamily>, String) {
    let totals = Totals {
        records: BTreeMap::new(),
        decode_errors: 0,
        output_dropped_lines: 0,
        started: std::time::Instant::now(),
        kernel_release: "6.18.0".into(),
    };
    let detect = DetectStats::default();
    let probes: Vec<ProbeStatus> = PROBES
        .iter()
        .map(|spec| ProbeStatus {
            program: spec.program,
            how: "tp_btf".into(),
            spec: *spec,
            target: spec.program.to_string(),
            state: ProbeState::Attached,
        })
        .collect();
    let h = Health {
        kernel,
        totals: &totals,
        flows: FlowTableStats::default(),
        max_flows: 65_536,
        detect: &detect,
        probes: &probes,
        recursion_misses: &BTreeMap::from([("lp_rst_sent", 0)]),
        version: "0.1.0",
        envoy: None,
    };
    let families = m.families(&h, std::iter::empty());
    let mut buf = Vec::new();
    TextEncoder::new().encode(&families, &mut buf).unwrap();
    (families, String::from_utf8(buf).unwrap())
}

/// (label value of `label` → value) of one family.
fn by_label(families: &[MetricFamily], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for f in families.iter().filter(|f| f.name() == name) {
        for m in f.get_metric() {
            let key = m
                .get_label()
                .iter()
                .find(|l| l.name() == label)
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            *out.entry(key).or_default() += m.get_counter().get_value();
        }
    }
    out
}

/// Series of the capped families as a scraper sees them, counted in the exposition text (a
/// histogram's buckets, `+Inf`, sum and count are a line each): an oracle independent of the
/// budget's own count.
fn exposed_series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            CAPPED_FAMILIES.iter().any(|f| {
                l.strip_prefix(f).is_some_and(|rest| {
                    rest.starts_with(['{', ' '])
                        || ["_bucket{", "_sum{", "_count{"]
                            .iter()
                            .any(|suffix| rest.starts_with(suffix))
                })
            })
        })
        .count()
}

/// The value of an unlabelled counter in the exposition.
fn counter_value(families: &[MetricFamily], name: &str) -> f64 {
    let f = families.iter().find(|f| f.name() == name).unwrap();
    f.get_metric()[0].get_counter().get_value()
}

#[test]
fn ten_thousand_peers_stay_under_the_cap_and_sums_stay_exact() {
    let cfg = MetricsConfig::default();
    let mut m = metrics(cfg.clone());
    for i in 0..10_000 {
        m.observe(&conn(i));
        m.observe(&Signal::Rst {
            ts_ns: 1,
            direction: RstDirection::Received,
            peer: client_peer(i),
            local_port: None,
            cookie: Some(1),
            reason: None,
            after_established: false,
            connection_ns: None,
        });
        m.observe(&Signal::Retransmit {
            ts_ns: 1,
            peer: client_peer(i),
            cookie: Some(1),
            kind: RetransmitKind::Syn {
                since_first_syn: None,
            },
        });
        m.observe(&Signal::Handshake {
            ts_ns: 1,
            peer: client_peer(i),
            duration: Duration::from_micros(300),
        });
    }
    let (families, text) = encode(&m, &KernelCounters::default());
    let series = exposed_series(&text);
    assert!(series <= cfg.max_series, "{series} series exposed");
    let lines = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(lines < 2000, "{lines} exposition lines");

    for (family, label) in [
        ("linkprobe_tcp_connections_total", "peer"),
        ("linkprobe_tcp_resets_total", "peer"),
        ("linkprobe_tcp_retransmits_total", "peer"),
    ] {
        let values = by_label(&families, family, label);
        let total: f64 = values.values().sum();
        assert_eq!(total, 10_000.0, "{family}");
        // max_peers get their own series, "other" carries the rest.
        assert_eq!(values.len(), cfg.max_peers + 1, "{family}");
        assert_eq!(values["other"], (10_000 - cfg.max_peers) as f64, "{family}");
    }
    // The handshakes as exposed: every one the test observed, max_histogram_peers peers of
    // their own plus "other".
    let handshakes = families
        .iter()
        .find(|f| f.name() == "linkprobe_tcp_handshake_duration_seconds")
        .unwrap();
    let hist_count: u64 = handshakes
        .get_metric()
        .iter()
        .map(|x| x.get_histogram().get_sample_count())
        .sum();
    assert_eq!(hist_count, 10_000);
    assert_eq!(handshakes.get_metric().len(), cfg.max_histogram_peers + 1);
    let dropped = by_label(&families, "linkprobe_series_dropped_total", "label");
    assert_eq!(dropped["peer"], (10_000 - cfg.max_peers) as f64);
}

#[test]
fn the_series_cap_folds_new_label_sets_without_losing_counts() {
    let cfg = MetricsConfig {
        max_series: 100,
        max_peers: 1000,
        ..MetricsConfig::default()
    };
    let mut m = metrics(cfg);
    for i in 0..500 {
        m.observe(&conn(i));
    }
    let (families, text) = encode(&m, &KernelCounters::default());
    assert_eq!(exposed_series(&text), 101, "the cap, plus the fold target");
    let values = by_label(&families, "linkprobe_tcp_connections_total", "peer");
    assert_eq!(values.values().sum::<f64>(), 500.0);
    assert_eq!(values["other"], 400.0);
    // The 400 label sets the test sent past the cap, as exported.
    assert_eq!(
        counter_value(&families, "linkprobe_series_capped_total"),
        400.0
    );
}

#[test]
fn retiring_an_idle_peer_moves_its_counts_into_other() {
    let cfg = MetricsConfig {
        max_peers: 2,
        rebalance_secs: 10,
        ..MetricsConfig::default()
    };
    let mut m = metrics(cfg);
    m.tick(0);
    m.observe(&conn(1));
    m.observe(&conn(2));
    m.tick(10 * S);
    // Next period: 1 busy, 2 idle, 3 (folded) busier than the floor.
    m.observe(&conn(1));
    for _ in 0..5 {
        m.observe(&conn(3));
    }
    let (before, _) = encode(&m, &KernelCounters::default());
    m.tick(20 * S);
    let (after, _) = encode(&m, &KernelCounters::default());
    let b = by_label(&before, "linkprobe_tcp_connections_total", "peer");
    let a = by_label(&after, "linkprobe_tcp_connections_total", "peer");
    assert_eq!(b.values().sum::<f64>(), a.values().sum::<f64>());
    assert!(!a.contains_key("10.0.0.2:443"), "{a:?}");
    assert_eq!(a["other"], b["other"] + b["10.0.0.2:443"]);
    // 3 now has its own series for new counts; old ones stay in "other".
    m.observe(&conn(3));
    let (later, _) = encode(&m, &KernelCounters::default());
    assert_eq!(
        by_label(&later, "linkprobe_tcp_connections_total", "peer")["10.0.0.3:443"],
        1.0
    );
}

#[test]
fn lost_records_are_exported_so_rst_sums_match_the_kernel() {
    let mut m = metrics(MetricsConfig::default());
    for i in 0..7 {
        m.observe(&rst(i, "NO_SOCKET"));
    }
    // 3 RSTs sent for closed ports whose records the ring could not take: the kernel counted
    // them as lost facts.
    let mut kernel = KernelCounters::default();
    kernel.lost.insert("rst_sent", 3);
    kernel.lost_facts.insert("resets_sent", 3);
    kernel.events.insert("rst_sent", 10);
    let (families, text) = encode(&m, &kernel);
    let values = by_label(&families, "linkprobe_tcp_resets_total", "peer");
    assert_eq!(values.values().sum::<f64>(), 10.0);
    assert_eq!(values["lost"], 3.0);
    assert!(text.contains(
        "linkprobe_tcp_resets_total{direction=\"sent\",reason=\"NO_SOCKET\",peer=\"10.0.0.0\",\
         local_port=\"8080\"} 1"
    ));
}

#[test]
fn ephemeral_local_ports_are_never_labels() {
    let mut m = metrics(MetricsConfig::default());
    let mut s = rst(1, "NOT_SPECIFIED");
    if let Signal::Rst { local_port, .. } = &mut s {
        *local_port = Some(40000);
    }
    m.observe(&s);
    let (families, _) = encode(&m, &KernelCounters::default());
    let ports = by_label(&families, "linkprobe_tcp_resets_total", "local_port");
    assert_eq!(ports.keys().collect::<Vec<_>>(), vec!["ephemeral"]);
}

#[test]
fn ephemeral_peer_ports_are_dropped_from_the_peer_label() {
    let mut m = metrics(MetricsConfig::default());
    let mut s = conn(1);
    if let Signal::Connection { peer, .. } = &mut s {
        peer.port = Some(45000);
    }
    m.observe(&s);
    let (families, _) = encode(&m, &KernelCounters::default());
    let peers = by_label(&families, "linkprobe_tcp_connections_total", "peer");
    assert_eq!(peers.keys().collect::<Vec<_>>(), vec!["10.0.0.1"]);
}

#[test]
fn failures_are_typed_by_cause_and_role() {
    let mut m = metrics(MetricsConfig::default());
    for cause in [
        ConnectFailure::Refused,
        ConnectFailure::Timeout,
        ConnectFailure::Reset,
    ] {
        m.observe(&Signal::ConnectFailed {
            ts_ns: 1,
            peer: client_peer(1),
            local_port: None,
            cookie: 1,
            role: Some(Role::Client),
            cause,
        });
    }
    let (families, _) = encode(&m, &KernelCounters::default());
    let causes = by_label(&families, "linkprobe_tcp_connect_failures_total", "cause");
    assert_eq!(
        causes.keys().collect::<Vec<_>>(),
        vec!["refused", "reset", "timeout"]
    );
}

/// Every `linkprobe_*` / `process_*` name a deploy file uses must be one the exporter serves
/// (histograms with their `_bucket`/`_sum`/`_count` series).
#[test]
fn deploy_rules_and_dashboard_use_only_exported_names() {
    let mut m = metrics(MetricsConfig::default());
    m.observe(&conn(1));
    m.observe(&rst(1, "NO_SOCKET"));
    for kind in [RetransmitKind::Data, RetransmitKind::Rto] {
        m.observe(&Signal::Retransmit {
            ts_ns: 1,
            peer: client_peer(1),
            cookie: None,
            kind,
        });
    }
    for s in [
        Signal::Handshake {
            ts_ns: 1,
            peer: client_peer(1),
            duration: Duration::from_millis(1),
        },
        Signal::Rtt {
            ts_ns: 1,
            peer: client_peer(1),
            rtt: Duration::from_millis(1),
        },
        Signal::ConnectFailed {
            ts_ns: 1,
            peer: client_peer(1),
            local_port: None,
            cookie: 1,
            role: Some(Role::Client),
            cause: ConnectFailure::Reset,
        },
    ] {
        m.observe(&s);
    }
    // With pod attribution on: the per-pod family (host processes count as `host`).
    m.observe_owner(&rst(1, "NO_SOCKET"), &crate::attrib::Owner::Host);
    m.anomaly_keys.insert(AnomalyKey {
        kind: AnomalyKind::RstStorm,
        scope: "peer",
        peer: Some(PeerLabel::Other),
        local_port: None,
    });
    // As the kernel reports them: every kind present, at 0.
    let zeros: BTreeMap<&'static str, u64> = probe_common::EventKind::ALL
        .iter()
        .map(|k| (crate::event::kind_name(*k), 0))
        .collect();
    let kernel = KernelCounters {
        events: zeros.clone(),
        lost: zeros.clone(),
        no_cookie: zeros,
        ..KernelCounters::default()
    };
    let (families, _) = encode(&m, &kernel);
    let mut served: Vec<String> = Vec::new();
    for f in &families {
        served.push(f.name().to_string());
        for suffix in ["_bucket", "_sum", "_count"] {
            served.push(format!("{}{suffix}", f.name()));
        }
    }
    // Served by the exporter thread: its process collector and its connection counts.
    served.push("process_cpu_seconds_total".into());
    served.push("linkprobe_exporter_connections_total".into());
    for (file, text) in [
        (
            "deploy/prometheus-rules.yaml",
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/prometheus-rules.yaml"
            )),
        ),
        (
            "deploy/dashboard.json",
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/dashboard.json"
            )),
        ),
    ] {
        let mut used = 0;
        for (i, _) in text.match_indices("linkprobe_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Prose like `linkprobe_*` or a job label is not a metric.
            if name.len() <= "linkprobe_".len() {
                continue;
            }
            used += 1;
            assert!(
                served.contains(&name),
                "{file} uses {name}, which is not exported"
            );
        }
        assert!(used > 5, "{file}: {used} metric names found");
    }
}

#[test]
fn anomaly_series_count_against_the_cap_and_fold_past_it() {
    let cfg = MetricsConfig {
        max_series: 100,
        max_peers: 1000,
        ..MetricsConfig::default()
    };
    let mut m = metrics(cfg);
    let anomalies: Vec<Anomaly> = (0..300)
        .map(|i| Anomaly {
            id: u64::from(i) + 1,
            kind: AnomalyKind::ConnectRefused,
            scope: Scope::Peer(client_peer(i)),
            start_ns: 1,
            end_ns: None,
            last_ns: 1,
            peak_rate: 1.0,
            evidence: vec![],
            hint: "",
            detail: String::new(),
        })
        .collect();
    for a in &anomalies {
        m.observe(&conn(a.id as u32 - 1));
        m.on_anomaly(&AnomalyChange::Raised(a.clone()));
    }
    let totals = Totals {
        records: BTreeMap::new(),
        decode_errors: 0,
        output_dropped_lines: 0,
        started: std::time::Instant::now(),
        kernel_release: "0".into(),
    };
    let detect = DetectStats::default();
    let kernel = KernelCounters::default();
    let h = Health {
        kernel: &kernel,
        totals: &totals,
        flows: FlowTableStats::default(),
        max_flows: 1,
        detect: &detect,
        probes: &[],
        recursion_misses: &BTreeMap::new(),
        version: "0",
        envoy: None,
    };
    let families = m.families(&h, anomalies.iter());
    let active = families
        .iter()
        .find(|f| f.name() == "linkprobe_anomalies_active")
        .unwrap();
    let total: f64 = active
        .get_metric()
        .iter()
        .map(|x| x.get_gauge().get_value())
        .sum();
    assert_eq!(total, 300.0, "every active anomaly is counted");
    assert!(active.get_metric().len() <= 101);
    // The cap, plus the fold target of each family (connections, anomalies).
    let mut text = Vec::new();
    TextEncoder::new().encode(&families, &mut text).unwrap();
    let series = exposed_series(&String::from_utf8(text).unwrap());
    assert!(series <= 102, "{series} series exposed");
}
