//! What the schemas cannot say about the rendered manifests: the DaemonSet's least privilege
//! (no `privileged`, no `hostPID`, exactly the measured capabilities, read-only root), the
//! daemon's RBAC (pods get/list/watch and the proxy's reviews, nothing else), and that the
//! Service, monitors and the plain scrape config point at what the DaemonSet serves.
use std::collections::BTreeSet;

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::{json, Value};

use super::kustomize::Object;

/// The container that runs the daemon (the image/container test reads the same spec).
pub const DAEMON_CONTAINER: &str = "linkprobe";
/// Measured in a real container: BPF + PERFMON + NET_ADMIN attach every probe.
pub const CAPABILITIES: &[&str] = &["BPF", "NET_ADMIN", "PERFMON"];
/// The seccomp profile the kubelet loads from `/var/lib/kubelet/seccomp/`.
pub const SECCOMP_PROFILE: &str = "profiles/linkprobe.json";
/// The kube-rbac-proxy port every scraper uses.
pub const METRICS_PORT: &str = "https-metrics";
/// The `job` label deploy/prometheus-rules.yaml and deploy/dashboard.json select on.
pub const JOB: &str = "linkprobe";
/// The only rights the daemon's service account may hold: (API group, resource, verb).
const DAEMON_RIGHTS: &[(&str, &str, &str)] = &[
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
];

fn json(o: &Object) -> Value {
    serde_json::to_value(&o.0).unwrap_or(Value::Null)
}

fn find<'a>(objects: &'a [Object], kind: &str) -> Result<&'a Object> {
    let mut it = objects.iter().filter(|o| o.kind() == kind);
    let first = it
        .next()
        .with_context(|| format!("no {kind} in the rendered manifests"))?;
    ensure!(
        it.next().is_none(),
        "more than one {kind} in the rendered manifests"
    );
    Ok(first)
}

fn str_list(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn truthy(v: &Value) -> bool {
    v.as_bool() == Some(true)
}

/// Checks the DaemonSet's privileges; returns what the closing note shows: the pod's host
/// namespaces and the daemon container's securityContext, as YAML.
pub fn daemonset_security(objects: &[Object]) -> Result<String> {
    let ds = find(objects, "DaemonSet")?;
    let ds_json = json(ds);
    let pod = &ds_json["spec"]["template"]["spec"];
    ensure!(!truthy(&pod["hostPID"]), "{}: hostPID is set", ds.id());
    ensure!(!truthy(&pod["hostIPC"]), "{}: hostIPC is set", ds.id());
    ensure!(
        truthy(&pod["hostNetwork"]),
        "{}: hostNetwork must be set (the exporter and probes are the node's)",
        ds.id()
    );
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .collect();
    for c in &containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        ensure!(!truthy(&sc["privileged"]), "container {name} is privileged");
        ensure!(
            sc["allowPrivilegeEscalation"] == json!(false),
            "container {name}: allowPrivilegeEscalation must be false"
        );
        ensure!(
            sc["readOnlyRootFilesystem"] == json!(true),
            "container {name}: readOnlyRootFilesystem must be true"
        );
        ensure!(
            str_list(&sc["capabilities"]["drop"]) == ["ALL"],
            "container {name}: capabilities.drop must be [ALL]"
        );
    }
    let daemon = containers
        .iter()
        .find(|c| c["name"] == json!(DAEMON_CONTAINER))
        .with_context(|| format!("{}: no container {DAEMON_CONTAINER}", ds.id()))?;
    let sc = &daemon["securityContext"];
    let added: BTreeSet<&str> = str_list(&sc["capabilities"]["add"]).into_iter().collect();
    ensure!(
        added == CAPABILITIES.iter().copied().collect(),
        "container {DAEMON_CONTAINER}: capabilities.add is {added:?}, measured set is {CAPABILITIES:?}"
    );
    ensure!(
        sc["seccompProfile"] == json!({"type": "Localhost", "localhostProfile": SECCOMP_PROFILE}),
        "container {DAEMON_CONTAINER}: seccompProfile must be Localhost {SECCOMP_PROFILE}"
    );
    let node_name = daemon["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == json!("NODE_NAME"));
    ensure!(
        node_name
            .is_some_and(|e| e["valueFrom"]["fieldRef"]["fieldPath"] == json!("spec.nodeName")),
        "container {DAEMON_CONTAINER}: NODE_NAME must come from the downward API (spec.nodeName)"
    );
    for mount in daemon["volumeMounts"].as_array().into_iter().flatten() {
        let name = mount["name"].as_str().unwrap_or("?");
        ensure!(
            name == "run" || truthy(&mount["readOnly"]),
            "container {DAEMON_CONTAINER}: mount {name} must be read-only (only the run \
             directory is written)"
        );
    }
    let res = &daemon["resources"];
    for (kind, what) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        ensure!(
            res[kind][what].is_string(),
            "container {DAEMON_CONTAINER}: resources.{kind}.{what} is missing"
        );
    }
    let class = pod["priorityClassName"].as_str().unwrap_or("");
    ensure!(
        class.starts_with("system-")
            || objects
                .iter()
                .any(|o| o.kind() == "PriorityClass" && o.name() == class),
        "{}: priorityClassName {class:?} is neither a system class nor rendered",
        ds.id()
    );
    ensure!(
        pod["tolerations"].as_array().is_some_and(|t| !t.is_empty()),
        "{}: no tolerations (tainted nodes would go untraced)",
        ds.id()
    );
    let shown = json!({
        "hostNetwork": pod["hostNetwork"],
        "hostPID": pod.get("hostPID").cloned().unwrap_or(json!("(not set)")),
        "priorityClassName": class,
        "containers": [{
            "name": DAEMON_CONTAINER,
            "securityContext": sc,
            "resources": res,
        }],
    });
    serde_norway::to_string(&shown).context("print the securityContext")
}

/// The rights of the DaemonSet's service account, one `group/resource: verb` line each;
/// fails on any right beyond [`DAEMON_RIGHTS`] or a missing pod right.
pub fn daemon_rbac(objects: &[Object]) -> Result<Vec<String>> {
    let ds = find(objects, "DaemonSet")?;
    let account = json(ds)["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let namespace = ds.namespace().to_owned();
    ensure!(
        objects.iter().any(|o| o.kind() == "ServiceAccount"
            && o.name() == account
            && o.namespace() == namespace),
        "service account {namespace}/{account} is not rendered"
    );
    let mut granted = BTreeSet::new();
    for binding in objects
        .iter()
        .filter(|o| matches!(o.kind(), "ClusterRoleBinding" | "RoleBinding"))
    {
        let b = json(binding);
        let names_account = b["subjects"].as_array().into_iter().flatten().any(|s| {
            s["kind"] == json!("ServiceAccount")
                && s["name"] == json!(account)
                && s["namespace"] == json!(namespace)
        });
        if !names_account {
            continue;
        }
        let role_kind = b["roleRef"]["kind"].as_str().unwrap_or("");
        let role_name = b["roleRef"]["name"].as_str().unwrap_or("");
        let role = objects
            .iter()
            .find(|o| o.kind() == role_kind && o.name() == role_name)
            .with_context(|| {
                format!(
                    "{} binds {role_kind} {role_name}, which is not rendered",
                    binding.id()
                )
            })?;
        for rule in json(role)["rules"].as_array().into_iter().flatten() {
            ensure!(
                rule.get("nonResourceURLs").is_none(),
                "{}: the daemon may not hold non-resource URLs",
                role.id()
            );
            for group in str_list(&rule["apiGroups"]) {
                for resource in str_list(&rule["resources"]) {
                    for verb in str_list(&rule["verbs"]) {
                        if !DAEMON_RIGHTS.contains(&(group, resource, verb)) {
                            bail!(
                                "{} grants the daemon `{verb}` on {group}/{resource}: only pods \
                                 get/list/watch and the proxy's reviews are allowed",
                                role.id()
                            );
                        }
                        granted.insert((group.to_owned(), resource.to_owned(), verb.to_owned()));
                    }
                }
            }
        }
    }
    for verb in ["get", "list", "watch"] {
        ensure!(
            granted.contains(&(String::new(), "pods".to_owned(), verb.to_owned())),
            "the daemon's account {account} lacks `{verb}` on pods"
        );
    }
    Ok(granted
        .into_iter()
        .map(|(g, r, v)| {
            format!(
                "{}{r}: {v}",
                if g.is_empty() {
                    String::new()
                } else {
                    format!("{g}/")
                }
            )
        })
        .collect())
}

fn labels_of(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every `key: value` of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let have = labels_of(labels);
    let want = labels_of(selector);
    !want.is_empty() && want.iter().all(|w| have.contains(w))
}

fn secret_exists(objects: &[Object], namespace: &str, name: &str) -> bool {
    objects
        .iter()
        .any(|o| o.kind() == "Secret" && o.namespace() == namespace && o.name() == name)
}

/// The Service and whichever monitors are rendered point at the DaemonSet's metrics port, with
/// `job="linkprobe"` and a rendered token secret. Returns one line per check made.
pub fn scrape_targets_match(objects: &[Object]) -> Result<Vec<String>> {
    let ds = find(objects, "DaemonSet")?;
    let ds_json = json(ds);
    let pod_labels = &ds_json["spec"]["template"]["metadata"]["labels"];
    let container_ports: Vec<&str> = ds_json["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter_map(|p| p["name"].as_str())
        .collect();
    ensure!(
        container_ports.contains(&METRICS_PORT),
        "{}: no container port named {METRICS_PORT}",
        ds.id()
    );
    let mut done = Vec::new();
    let svc = find(objects, "Service")?;
    let svc_json = json(svc);
    ensure!(
        selects(&svc_json["spec"]["selector"], pod_labels),
        "{}: its selector does not select the DaemonSet's pods",
        svc.id()
    );
    ensure!(
        svc_json["spec"]["clusterIP"] == json!("None"),
        "{}: not headless",
        svc.id()
    );
    let svc_ports: Vec<&str> = svc_json["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["targetPort"] == json!(METRICS_PORT))
        .filter_map(|p| p["name"].as_str())
        .collect();
    ensure!(
        !svc_ports.is_empty(),
        "{}: no port targets {METRICS_PORT}",
        svc.id()
    );
    done.push(format!(
        "{} selects the DaemonSet's pods, port {METRICS_PORT}",
        svc.id()
    ));
    for monitor in objects
        .iter()
        .filter(|o| matches!(o.kind(), "PodMonitor" | "ServiceMonitor"))
    {
        let m = json(monitor);
        let (target_labels, endpoints, ports) = if monitor.kind() == "PodMonitor" {
            (
                pod_labels,
                &m["spec"]["podMetricsEndpoints"],
                &container_ports,
            )
        } else {
            (
                &svc_json["metadata"]["labels"],
                &m["spec"]["endpoints"],
                &svc_ports,
            )
        };
        ensure!(
            selects(&m["spec"]["selector"]["matchLabels"], target_labels),
            "{}: its selector does not match the {}",
            monitor.id(),
            if monitor.kind() == "PodMonitor" {
                "DaemonSet's pods"
            } else {
                "Service"
            }
        );
        let job_label = m["spec"]["jobLabel"].as_str().unwrap_or("");
        ensure!(
            target_labels[job_label] == json!(JOB),
            "{}: jobLabel {job_label:?} does not give job=\"{JOB}\", which the rules and the \
             dashboard select",
            monitor.id()
        );
        let endpoints = endpoints.as_array().filter(|e| !e.is_empty());
        for e in endpoints.with_context(|| format!("{}: no endpoints", monitor.id()))? {
            let port = e["port"].as_str().unwrap_or("");
            ensure!(
                ports.contains(&port),
                "{}: port {port:?} is not served",
                monitor.id()
            );
            ensure!(
                e["scheme"] == json!("https"),
                "{}: scheme must be https",
                monitor.id()
            );
            let secret = e["authorization"]["credentials"]["name"]
                .as_str()
                .unwrap_or("");
            ensure!(
                secret_exists(objects, monitor.namespace(), secret),
                "{}: token secret {secret:?} is not rendered in its namespace",
                monitor.id()
            );
        }
        done.push(format!(
            "{} scrapes port {METRICS_PORT} over https as job=\"{JOB}\"",
            monitor.id()
        ));
    }
    Ok(done)
}

/// deploy/kubernetes/prometheus-scrape-config.yaml finds the DaemonSet's pods and keeps the
/// metrics port.
pub fn scrape_config_matches(objects: &[Object], config_yaml: &str) -> Result<String> {
    let config: Value = serde_norway::from_str(config_yaml).context("scrape config: not YAML")?;
    let ds = find(objects, "DaemonSet")?;
    let pod_labels = labels_of(&json(ds)["spec"]["template"]["metadata"]["labels"]);
    let jobs = config["scrape_configs"]
        .as_array()
        .context("no scrape_configs")?;
    let [job] = jobs.as_slice() else {
        bail!("scrape config: expected one job, found {}", jobs.len());
    };
    ensure!(
        job["job_name"] == json!(JOB),
        "scrape config: job_name must be {JOB}"
    );
    ensure!(
        job["scheme"] == json!("https"),
        "scrape config: scheme must be https"
    );
    ensure!(
        job["authorization"]["credentials_file"].is_string(),
        "scrape config: no bearer token (authorization.credentials_file)"
    );
    let sd = job["kubernetes_sd_configs"]
        .as_array()
        .context("no kubernetes_sd_configs")?;
    let [sd] = sd.as_slice() else {
        bail!("scrape config: expected one kubernetes_sd_configs entry");
    };
    ensure!(
        sd["role"] == json!("pod"),
        "scrape config: role must be pod"
    );
    ensure!(
        str_list(&sd["namespaces"]["names"]).contains(&ds.namespace()),
        "scrape config: namespaces do not include {}",
        ds.namespace()
    );
    for selector in sd["selectors"].as_array().into_iter().flatten() {
        let label = selector["label"].as_str().unwrap_or("");
        let (k, v) = label
            .split_once('=')
            .context("selector label is not key=value")?;
        ensure!(
            pod_labels.contains(&(k.to_owned(), v.to_owned())),
            "scrape config: selector {label} does not match the DaemonSet's pods"
        );
    }
    let keeps_port = job["relabel_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| {
            r["action"] == json!("keep")
                && str_list(&r["source_labels"]) == ["__meta_kubernetes_pod_container_port_name"]
                && r["regex"] == json!(METRICS_PORT)
        });
    ensure!(
        keeps_port,
        "scrape config: no `keep` of container port {METRICS_PORT}"
    );
    Ok(format!(
        "scrape config: role pod in namespace {}, port {METRICS_PORT}, https with a bearer token, job=\"{JOB}\"",
        ds.namespace()
    ))
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
