//! The API contract: exact JSON field names of every response type, the owned records
//! serialise exactly like the `-o json` views (the request decoder's tests: `tests_requests`).
use std::collections::BTreeSet;

use serde_json::Value;

use super::proto::*;
use crate::{
    event::rst_reason::ReasonNames,
    event::{Detail, Event, FlowCounts, FlowSnapshot, Process, Role, SockStats, TcpState},
    pipeline::detect::{Anomaly, AnomalyChange, AnomalyKind, Scope},
    pipeline::flowtable::{Flow, FlowKey},
    pipeline::top::TopRow,
};

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect::<BTreeSet<_>>()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn sample_flow() -> Flow {
    let mut f = Flow::new(
        FlowKey {
            netns: 7,
            cookie: 42,
        },
        "127.0.0.1:40000".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        1_000,
    );
    let ev = Event {
        ts_ns: 2_000,
        cookie: Some(42),
        netns_cookie: Some(7),
        local: f.local,
        remote: f.remote,
        process: Some(Process {
            pid: 9,
            comm: "curl".into(),
        }),
        sk_err: Some(111),
        cgroup_id: Some(5),
        flow: Some(FlowSnapshot {
            start_ns: 1_000,
            established_ns: None,
            role: Some(Role::Client),
            counts: FlowCounts {
                rst_received: 1,
                ..FlowCounts::default()
            },
            last_rst_reason: None,
            late: false,
        }),
        stats: Some(SockStats::default()),
        detail: Detail::FlowEnd {
            from: TcpState::SYN_SENT,
        },
    };
    f.apply(&ev, 8);
    f
}

fn sample_anomaly() -> Anomaly {
    Anomaly {
        id: 3,
        kind: AnomalyKind::ConnectRefused,
        scope: Scope::LocalPort(0, 80),
        start_ns: 1,
        end_ns: None,
        last_ns: 2,
        peak_rate: 1.0,
        evidence: vec![42],
        hint: AnomalyKind::ConnectRefused.hint(),
        detail: "connection refused".into(),
    }
}

fn sample_event() -> Event {
    Event {
        ts_ns: 5,
        cookie: Some(42),
        netns_cookie: Some(7),
        local: "127.0.0.1:40000".parse().unwrap(),
        remote: "127.0.0.1:9".parse().unwrap(),
        process: None,
        sk_err: None,
        cgroup_id: None,
        flow: Some(FlowSnapshot {
            start_ns: 1,
            established_ns: Some(5),
            role: Some(Role::Client),
            counts: FlowCounts::default(),
            last_rst_reason: None,
            late: false,
        }),
        stats: None,
        detail: Detail::Established { role: Role::Client },
    }
}

/// What the daemon writes, the CLI reads back whole: each record decodes to itself, and the
/// API's replies carry them unchanged.
#[test]
fn records_decode_to_what_was_encoded() {
    let reasons = ReasonNames::default();
    let flow = FlowRecord::new(&sample_flow(), &reasons);
    let back: FlowRecord = serde_json::from_str(&serde_json::to_string(&flow).unwrap()).unwrap();
    assert_eq!(back, flow);

    let anomaly = AnomalyRecord::of_change(&AnomalyChange::Raised(sample_anomaly()), 9);
    let back: AnomalyRecord =
        serde_json::from_str(&serde_json::to_string(&anomaly).unwrap()).unwrap();
    assert_eq!(back, anomaly);

    let event = EventRecord::new(&sample_event(), &reasons);
    let back: EventRecord = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
    assert_eq!(back, event);

    let reply = Response::new(Reply::Flows {
        total: 3,
        matched: 1,
        flows: vec![flow],
        truncated: false,
    });
    let line = encode_line(&reply);
    assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
    assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), reply);
}

/// Snapshot of the JSON field names: changing one breaks users' scripts, so it must be a
/// deliberate change of this test too.
#[test]
fn json_field_names_are_stable() {
    let reasons = ReasonNames::default();
    let flow = serde_json::to_value(FlowRecord::new(&sample_flow(), &reasons)).unwrap();
    assert_eq!(
        keys(&flow),
        set(&[
            "type",
            "cookie",
            "netns_cookie",
            "local",
            "remote",
            "role",
            "pid",
            "comm",
            "cgroup_id",
            "preexisting",
            "start_ns",
            "start_time",
            "handshake_us",
            "syn_retransmits",
            "syn_retransmit_intervals_ms",
            "srtt_us",
            "min_rtt_us",
            "data_retransmits",
            "rtos",
            "counters",
            "payload_sent",
            "payload_received",
            "rst_sent",
            "rst_received",
            "state",
            "close",
            "closed_ns",
            "closed_time",
            "timeline",
        ])
    );
    assert_eq!(
        keys(&flow["timeline"][0]),
        set(&["offset_ns", "kind", "detail"])
    );
    assert_eq!(
        keys(&flow["counters"]),
        set(&[
            "srtt_us",
            "min_rtt_us",
            "total_retrans",
            "segs_in",
            "segs_out",
            "data_segs_in",
            "data_segs_out",
            "bytes_received",
            "bytes_acked",
        ])
    );
    let change = AnomalyChange::Raised(sample_anomaly());
    let anomaly = serde_json::to_value(AnomalyRecord::of_change(&change, 9)).unwrap();
    assert_eq!(
        keys(&anomaly),
        set(&[
            "type",
            "change",
            "id",
            "at_ns",
            "time",
            "kind",
            "scope",
            "local_port",
            "start_ns",
            "last_ns",
            "end_ns",
            "start_time",
            "last_time",
            "peak_rate",
            "peak_unit",
            "evidence",
            "hint",
            "detail",
        ])
    );
    let event = serde_json::to_value(EventRecord::new(&sample_event(), &reasons)).unwrap();
    assert_eq!(
        keys(&event),
        set(&[
            "type",
            "ts_ns",
            "time",
            "kind",
            "cookie",
            "netns_cookie",
            "local",
            "remote",
            "flow"
        ])
    );
    assert_eq!(
        keys(&event["flow"]),
        set(&[
            "start_ns",
            "established_ns",
            "role",
            "syn_retrans",
            "data_retrans",
            "retrans_failed",
            "rtos",
            "rst_sent",
            "rst_received",
            "late"
        ])
    );

    let flows = serde_json::to_value(Response::new(Reply::Flows {
        total: 1,
        matched: 1,
        flows: vec![],
        truncated: true,
    }))
    .unwrap();
    assert_eq!(keys(&flows), set(&["v", "reply"]));
    assert_eq!(
        keys(&flows["reply"]),
        set(&["type", "total", "matched", "flows", "truncated"])
    );
    let flow = serde_json::to_value(Reply::Flow {
        flow: Box::new(serde_json::from_value(flow).unwrap()),
        anomalies: vec![],
        hint: String::new(),
    })
    .unwrap();
    assert_eq!(keys(&flow), set(&["type", "flow", "anomalies", "hint"]));
    let anomalies = serde_json::to_value(Reply::Anomalies {
        active: vec![],
        recent: vec![],
        incidents: vec![],
    })
    .unwrap();
    assert_eq!(
        keys(&anomalies),
        set(&["type", "active", "recent", "incidents"])
    );
    let err = serde_json::to_value(error(ErrorCode::Busy, "x")).unwrap();
    assert_eq!(keys(&err["reply"]), set(&["type", "code", "message"]));
    assert_eq!(err["reply"]["code"], "busy");
    let top = serde_json::to_value(Reply::Top(TopReport {
        window_secs: 10,
        scopes_tracked: 1,
        scopes_evicted: 0,
        rows: vec![TopRow {
            scope: "local port 80".into(),
            connections: 1,
            rsts: 1,
            failures: 0,
            data_segments: 0,
            retransmits: 0,
            rst_per_sec: 0.1,
            failure_rate: 0.0,
            retransmit_rate: 0.0,
            process: Some("nginx/42".into()),
            netns_cookie: None,
            netns: None,
        }],
    }))
    .unwrap();
    assert_eq!(
        keys(&top),
        set(&[
            "type",
            "window_secs",
            "scopes_tracked",
            "scopes_evicted",
            "rows"
        ])
    );
    assert_eq!(
        keys(&top["rows"][0]),
        set(&[
            "scope",
            "connections",
            "rsts",
            "failures",
            "data_segments",
            "retransmits",
            "rst_per_sec",
            "failure_rate",
            "retransmit_rate",
            "process",
        ])
    );
    let status = serde_json::to_value(StatusReport {
        version: "0".into(),
        kernel: "k".into(),
        pid: 1,
        uptime_secs: 0,
        probes: vec![],
        records: Default::default(),
        decode_errors: 0,
        output_dropped_lines: 0,
        kernel_events: Default::default(),
        kernel_lost: Default::default(),
        flows: FlowTableRow::default(),
        anomalies: AnomalyCounts::default(),
        api: ApiCounters::default(),
        command_line: vec!["linkprobe".into(), "daemon".into()],
        config: crate::config::Config::default(),
        pods: Default::default(),
        envoy: None,
    })
    .unwrap();
    assert_eq!(
        keys(&status),
        set(&[
            "version",
            "kernel",
            "pid",
            "uptime_secs",
            "probes",
            "records",
            "decode_errors",
            "output_dropped_lines",
            "kernel_events",
            "kernel_lost",
            "flows",
            "anomalies",
            "api",
            "command_line",
            "config",
            "pods",
            "envoy",
        ])
    );
    assert_eq!(
        keys(&status["api"]),
        set(&[
            "connections",
            "clients_now",
            "rejected_connections",
            "rejected_per_uid",
            "bad_requests",
            "busy",
            "watch_lost",
        ])
    );
    assert_eq!(
        keys(&status["flows"]),
        set(&["tracked", "max", "evicted", "expired", "expired_open"])
    );
}

#[test]
fn root_cause_follows_the_close_cause_and_the_matching_anomaly() {
    let reasons = ReasonNames::default();
    let mut f = sample_flow();
    f.role = Some(Role::Client);
    f.close = Some(crate::pipeline::flowtable::CloseCause::Refused);
    let change = AnomalyChange::Raised(sample_anomaly());
    let mut a: AnomalyRecord =
        serde_json::from_value(serde_json::to_value(AnomalyRecord::of_change(&change, 9)).unwrap())
            .unwrap();
    a.scope = "peer 127.0.0.1:9".into();
    let hint = super::answer::root_cause(&f, &reasons, &[a]);
    assert_eq!(
        hint,
        "nothing listening on 127.0.0.1:9 (RST to SYN): connection refused; evidence for \
         connect_refused on peer 127.0.0.1:9"
    );
    let mut open = sample_flow();
    open.close = None;
    open.closed_ns = None;
    open.syn_retransmits = 3;
    open.rtos = 3;
    assert_eq!(
        super::answer::root_cause(&open, &reasons, &[]),
        "still connecting to 127.0.0.1:9: 3 SYN retransmits so far"
    );
    // A healthy open flow says so (not just "open").
    let mut healthy = sample_flow();
    (healthy.close, healthy.closed_ns) = (None, None);
    (healthy.established, healthy.state) = (true, crate::event::TcpState::ESTABLISHED);
    (
        healthy.syn_retransmits,
        healthy.rtos,
        healthy.rst_sent,
        healthy.rst_received,
    ) = (0, 0, 0, 0);
    healthy.data_retransmits = 0;
    assert_eq!(
        super::answer::root_cause(&healthy, &reasons, &[]),
        "open and healthy: established with 127.0.0.1:9 (ESTABLISHED), no retransmits or \
         resets so far"
    );
    // The app's own connect timeout is not the kernel's.
    let mut abandoned = sample_flow();
    abandoned.close = Some(crate::pipeline::flowtable::CloseCause::Abandoned);
    abandoned.closed_ns = std::num::NonZeroU64::new(abandoned.start_ns + 3_000_000_000);
    abandoned.syn_retransmits = 2;
    assert!(
        super::answer::root_cause(&abandoned, &reasons, &[]).starts_with(
            "connect to 127.0.0.1:9 aborted by the app after 3.0 s (2 SYN retransmits"
        ),
        "{}",
        super::answer::root_cause(&abandoned, &reasons, &[])
    );
}

/// A flow's joined proxy requests: their JSON field names, the `flow` story's section, the
/// table's summary column, the `--envoy-flag` / `--status` filter and incidents' requests.
#[test]
fn joined_requests_show_in_flows_flow_and_incidents() {
    use crate::{
        pipeline::requests::{join::Side, kept::FlowRequests, kept::JoinedRequest},
        render::{flow, incident, request::RequestRecord, table::Paint},
    };
    let req = |status: u16, flags: &str, id: &str, side: Side| JoinedRequest {
        start_unix_ns: 1_704_067_200_123_000_000,
        duration_ms: 12,
        status: Some(status),
        flags: flags.into(),
        details: Some("upstream_reset_before_response_started{connection_termination}".into()),
        request_id: Some(id.into()),
        upstream_host: Some("127.0.0.1:9".parse().unwrap()),
        side,
        exact: side == Side::Downstream || flags != "UF",
        other_flow: Some(77),
    };
    let joined = FlowRequests {
        kept: [
            req(503, "UC", "a", Side::Upstream),
            req(503, "UC", "b", Side::Upstream),
            req(200, "-", "c", Side::Upstream),
        ]
        .into(),
        more: 2,
    };
    let f = sample_flow();
    let all = FlowRecord::new(&f, &ReasonNames::default()).with_requests(Some(&joined), |_| true);
    assert_eq!((all.requests.len(), all.requests_more), (3, 2));
    let v = serde_json::to_value(&all).unwrap();
    assert_eq!(
        keys(&v["requests"][0]),
        set(&[
            "time",
            "duration_ms",
            "status",
            "flags",
            "details",
            "request_id",
            "upstream_host",
            "side",
            "match",
            "other_flow"
        ])
    );
    assert_eq!(v["requests"][0]["match"], "exact");
    // A flow without requests keeps its old shape.
    let bare = serde_json::to_value(FlowRecord::new(&f, &ReasonNames::default())).unwrap();
    assert!(bare.get("requests").is_none() && bare.get("requests_more").is_none());
    let story = flow::story(&all, &[], "hint", 2_000, Paint::OFF);
    assert!(
        story.contains("requests (5 joined, the last 3 kept)"),
        "{story}"
    );
    assert!(
        story.contains("503     UC     12 ms     upstream  exact  a"),
        "{story}"
    );
    let table = flow::table(std::slice::from_ref(&all), 2_000, false, Paint::OFF);
    assert!(table.contains("REQUESTS"), "{table}");
    assert!(table.contains("503 UC ×2, 200, +2 more"), "{table}");

    // --envoy-flag uc --status 503: the flow matches through two of its requests.
    let m = crate::api::filter::Matcher::new(&Filter {
        envoy_flag: Some(crate::api::filter::check_flag("uc").unwrap()),
        status: Some(503),
        ..Filter::default()
    })
    .unwrap();
    assert!(m.wants_requests());
    assert_eq!(joined.kept.iter().filter(|r| m.request(r)).count(), 2);
    let only =
        FlowRecord::new(&f, &ReasonNames::default()).with_requests(Some(&joined), |r| m.request(r));
    assert_eq!((only.requests.len(), only.requests_more), (2, 3));
    assert!(m.clone().for_events().is_err());
    assert!(crate::api::filter::check_flag("U C").is_err());
    assert!(crate::api::filter::check_flag("").is_err());

    // Incidents list the requests of the flows their anomalies cover, each flow once.
    let change = AnomalyChange::Raised(sample_anomaly());
    let a: AnomalyRecord =
        serde_json::from_value(serde_json::to_value(AnomalyRecord::of_change(&change, 9)).unwrap())
            .unwrap();
    let mut incidents =
        incident::group(std::slice::from_ref(&a), &incident::HostView::default(), 10);
    assert_eq!(incidents.len(), 1);
    let flows_of = std::collections::HashMap::from([(a.id, vec![42, 42, 43])]);
    incident::add_requests(&mut incidents, &flows_of, |cookie| {
        if cookie == 42 {
            RequestRecord::all_of(&joined, |_| true)
        } else {
            Vec::new()
        }
    });
    assert_eq!(incidents[0].requests_total, 3);
    assert_eq!(incidents[0].requests[0].flow, 42);
    let text = incident::requests_text(&incidents);
    assert!(
        text.starts_with(&format!(
            "#{} affected 3 proxy requests: 503 UC ×2, 200\n",
            incidents[0].id
        )),
        "{text}"
    );
    let v = serde_json::to_value(&incidents[0]).unwrap();
    assert_eq!(v["requests"][0]["flow"], 42);
    assert_eq!(v["requests"][0]["status"], 503);
}
