use super::*;
use crate::{cmd::workspace_root, validate::kustomize::render};

fn base() -> Vec<Object> {
    render(&workspace_root().join("deploy/kubernetes")).unwrap()
}

fn overlay(name: &str) -> Vec<Object> {
    render(&workspace_root().join("xtask/fixtures/kustomize").join(name)).unwrap()
}

/// The base with `change` applied to the DaemonSet (as JSON).
fn with_daemonset(change: impl Fn(&mut Value)) -> Vec<Object> {
    let mut objects = base();
    let ds = objects
        .iter_mut()
        .find(|o| o.kind() == "DaemonSet")
        .unwrap();
    let mut v = serde_json::to_value(&ds.0).unwrap();
    change(&mut v);
    ds.0 = serde_norway::to_value(v)
        .unwrap()
        .as_mapping()
        .unwrap()
        .clone();
    objects
}

fn daemon(v: &mut Value) -> &mut Value {
    v["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == json!(DAEMON_CONTAINER))
        .unwrap()
}

#[test]
fn the_rendered_daemonset_is_least_privilege() {
    let shown = daemonset_security(&base()).unwrap();
    let v: Value = serde_norway::from_str(&shown).unwrap();
    assert_eq!(v["hostNetwork"], json!(true));
    assert_eq!(v["hostPID"], json!("(not set)"));
    let sc = &v["containers"][0]["securityContext"];
    assert!(sc.get("privileged").is_none(), "{shown}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let mut added: Vec<&str> = str_list(&sc["capabilities"]["add"]);
    added.sort_unstable();
    assert_eq!(added, CAPABILITIES);
    assert_eq!(sc["readOnlyRootFilesystem"], json!(true));
    assert_eq!(sc["allowPrivilegeEscalation"], json!(false));
    assert_eq!(sc["seccompProfile"]["type"], json!("Localhost"));
}

#[test]
fn privilege_beyond_the_measured_set_is_refused() {
    type Change = fn(&mut Value);
    let cases: &[(Change, &str)] = &[
        (
            |v| daemon(v)["securityContext"]["privileged"] = json!(true),
            "is privileged",
        ),
        (
            |v| v["spec"]["template"]["spec"]["hostPID"] = json!(true),
            "hostPID is set",
        ),
        (
            |v| {
                daemon(v)["securityContext"]["capabilities"]["add"] =
                    json!(["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"])
            },
            "measured set",
        ),
        (
            |v| daemon(v)["securityContext"]["capabilities"]["add"] = json!(["BPF", "PERFMON"]),
            "measured set",
        ),
        (
            |v| daemon(v)["securityContext"]["readOnlyRootFilesystem"] = json!(false),
            "readOnlyRootFilesystem must be true",
        ),
        (
            |v| daemon(v)["securityContext"]["seccompProfile"] = json!({"type": "Unconfined"}),
            "seccompProfile must be Localhost",
        ),
        (
            |v| daemon(v)["volumeMounts"][0]["readOnly"] = json!(false),
            "must be read-only",
        ),
        (|v| daemon(v)["env"] = json!([]), "NODE_NAME"),
        (
            |v| daemon(v)["resources"] = json!({}),
            "resources.requests.cpu is missing",
        ),
    ];
    for (change, expected) in cases {
        let err = daemonset_security(&with_daemonset(change))
            .expect_err(expected)
            .to_string();
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
}

#[test]
fn the_daemon_may_read_pods_and_review_tokens_and_nothing_else() {
    let rights = daemon_rbac(&base()).unwrap();
    assert_eq!(
        rights,
        [
            "pods: get",
            "pods: list",
            "pods: watch",
            "authentication.k8s.io/tokenreviews: create",
            "authorization.k8s.io/subjectaccessreviews: create",
        ]
    );
    // A wider grant to the daemon's account is refused.
    let mut objects = base();
    let role = objects
        .iter_mut()
        .find(|o| o.kind() == "ClusterRole" && o.name() == "linkprobe-pod-reader")
        .unwrap();
    let mut v = serde_json::to_value(&role.0).unwrap();
    v["rules"][0]["resources"] = json!(["pods", "secrets"]);
    role.0 = serde_norway::to_value(v)
        .unwrap()
        .as_mapping()
        .unwrap()
        .clone();
    let err = daemon_rbac(&objects).unwrap_err().to_string();
    assert!(err.contains("on /secrets"), "{err}");
}

#[test]
fn service_monitors_and_scrape_config_point_at_the_metrics_port() {
    assert_eq!(scrape_targets_match(&base()).unwrap().len(), 1);
    for (name, kind) in [
        ("podmonitor", "PodMonitor"),
        ("servicemonitor", "ServiceMonitor"),
    ] {
        let objects = overlay(name);
        let done = scrape_targets_match(&objects).unwrap();
        assert!(done.iter().any(|l| l.starts_with(kind)), "{done:?}");
        assert!(!objects
            .iter()
            .any(|o| o.kind() != kind && o.kind().ends_with("Monitor")));
    }
    let config = std::fs::read_to_string(
        workspace_root().join("deploy/kubernetes/prometheus-scrape-config.yaml"),
    )
    .unwrap();
    scrape_config_matches(&base(), &config).unwrap();
    let wrong_port = config.replace("regex: https-metrics", "regex: metrics");
    assert!(scrape_config_matches(&base(), &wrong_port).is_err());
    // A DaemonSet whose port was renamed is caught by the monitors' check.
    let renamed = with_daemonset(|v| {
        v["spec"]["template"]["spec"]["containers"][1]["ports"][0]["name"] = json!("metrics")
    });
    assert!(scrape_targets_match(&renamed).is_err());
}
