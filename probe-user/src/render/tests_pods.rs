//! Pod attribution in the records: a flow's owner and its peer's pod, the pods an anomaly
//! names, from a real directory tree shaped like a kubelet node.
use crate::{
    attrib::{
        pods::{PodDirectory, PodMeta},
        tests::{kubelet_tree, settings, CONTAINER, UID},
        Attributor, PodsMode,
    },
    event::{rst_reason::ReasonNames, Detail, Event, FlowCounts, FlowSnapshot, Role},
    pipeline::{
        detect::{Anomaly, AnomalyKind, Scope},
        flowtable::{FlowConfig, FlowTable},
        signal::Peer,
    },
    render::{
        anomaly::{name_pods, AnomalyRecord},
        flow::{table, FlowRecord},
        table::Paint,
    },
};

fn event(cookie: u64, cgroup_id: u64, remote: &str) -> Event {
    Event {
        ts_ns: 5,
        cookie: Some(cookie),
        netns_cookie: Some(7),
        local: "10.1.0.5:40000".parse().unwrap(),
        remote: remote.parse().unwrap(),
        process: None,
        sk_err: None,
        cgroup_id: Some(cgroup_id),
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

fn anomaly(scope: Scope, evidence: Vec<u64>) -> AnomalyRecord {
    AnomalyRecord::new(
        &Anomaly {
            id: 1,
            kind: AnomalyKind::ConnectRefused,
            scope,
            start_ns: 1,
            end_ns: None,
            last_ns: 2,
            peak_rate: 1.0,
            evidence,
            hint: AnomalyKind::ConnectRefused.hint(),
            detail: "connection refused".into(),
        },
        "active",
        9,
    )
}

#[test]
fn flows_and_anomalies_name_their_pods_and_pod_peers() {
    let (root, pod_id, host_id) = kubelet_tree("render");
    let dir = PodDirectory::new(8);
    dir.upsert(PodMeta {
        uid: UID.into(),
        namespace: "shop".into(),
        name: "cart".into(),
        ips: vec!["10.1.0.5".parse().unwrap()],
    });
    dir.upsert(PodMeta {
        uid: "11111111-2222-3333-4444-555555555555".into(),
        namespace: "db".into(),
        name: "pg-0".into(),
        ips: vec!["10.1.0.9".parse().unwrap()],
    });
    let attrib =
        Attributor::start(&settings(&root, PodsMode::Logs, &root.join("none"))).with_directory(dir);
    let mut flows = FlowTable::new(FlowConfig::default());
    let reasons = ReasonNames::default();
    let mut signals = Vec::new();
    // The pod's client to a pod of this node, and a host process to an outside address.
    flows.apply(&event(1, pod_id, "10.1.0.9:5432"), &reasons, &mut signals);
    flows.apply(&event(2, host_id, "192.0.2.1:443"), &reasons, &mut signals);

    let records: Vec<FlowRecord> = flows
        .iter()
        .map(|f| FlowRecord::new(f, &reasons).attributed(f, &attrib))
        .collect();
    let pod = records.iter().find(|r| r.cookie == 1).unwrap();
    assert_eq!(pod.owner.owner.as_deref(), Some("shop/cart"));
    assert_eq!(pod.owner.container_id.as_deref(), Some(CONTAINER));
    assert_eq!(pod.owner.qos.as_deref(), Some("besteffort"));
    assert_eq!(pod.owner.peer_pod.as_deref(), Some("db/pg-0"));
    let host = records.iter().find(|r| r.cookie == 2).unwrap();
    assert_eq!(host.owner.owner.as_deref(), Some("host"));
    assert_eq!(host.owner.peer_pod, None);
    let json = serde_json::to_value(pod).unwrap();
    assert_eq!(json["namespace"], "shop");
    assert_eq!(json["pod"], "cart");
    assert_eq!(json["peer_pod"], "db/pg-0");
    let back: FlowRecord = serde_json::from_value(json).unwrap();
    assert_eq!(&back, pod, "the CLI reads the record back whole");
    let text = table(&records, 10, false, Paint::OFF);
    assert!(text.lines().next().unwrap().ends_with("POD"), "{text}");
    assert!(text.contains("10.1.0.9:5432 (db/pg-0)"), "{text}");
    assert!(
        text.contains(&format!("shop/cart/{}", &CONTAINER[..12])),
        "{text}"
    );

    // Evidence flows name their owners and pod peers; a peer scope names the peer's pod.
    let mut anomalies = vec![
        anomaly(Scope::LocalPort(0, 80), vec![1, 2, 99]),
        anomaly(
            Scope::Peer(Peer {
                addr: "10.1.0.9".parse().unwrap(),
                port: Some(5432),
                netns: 0,
            }),
            vec![],
        ),
        anomaly(Scope::LocalPort(0, 81), vec![2]),
    ];
    name_pods(&mut anomalies, &flows, &attrib);
    assert_eq!(anomalies[0].pods, ["db/pg-0", "shop/cart"]);
    assert_eq!(anomalies[1].pods, ["db/pg-0"]);
    assert!(
        anomalies[2].pods.is_empty(),
        "a host flow to an outside peer"
    );
    std::fs::remove_dir_all(root).unwrap();
}
