use super::*;

const TWO_DOCS: &str = r#"
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: linkprobe}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: linkprobe}
spec:
  template:
    spec:
      hostNetwork: true
      securityContext:
        seccompProfile: {type: Localhost, localhostProfile: profiles/linkprobe.json}
      containers:
        - name: sidecar
          image: x
        - name: linkprobe
          image: linkprobe:latest
          args: ["daemon", "--metrics-addr=127.0.0.1:9476", "-o", "none"]
          env:
            - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
            - {name: RUST_LOG, value: info}
          securityContext:
            capabilities: {drop: [all], add: [bpf, PERFMON, CAP_NET_ADMIN]}
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
          volumeMounts:
            - {name: cgroup, mountPath: /sys/fs/cgroup, readOnly: true}
            - {name: run, mountPath: /run/linkprobe}
      volumes:
        - {name: cgroup, hostPath: {path: /sys/fs/cgroup}}
        - {name: run, emptyDir: {}}
"#;

fn placed<'a>(
    dirs: &'a BTreeMap<String, PathBuf>,
    fields: &'a BTreeMap<String, String>,
    cap_add: Option<&'a [&'a str]>,
) -> Placement<'a> {
    Placement {
        name: "lp-test",
        seccomp_file: Path::new("/repo/deploy/seccomp/linkprobe.json"),
        volume_dirs: dirs,
        fields,
        cap_add,
    }
}

#[test]
fn the_daemonset_of_a_multi_document_manifest_is_found() {
    let spec = parse(TWO_DOCS).unwrap();
    assert!(spec.host_network);
    assert!(!spec.host_pid);
    assert!(!spec.privileged);
    assert_eq!(spec.cap_add, ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
    assert_eq!(spec.cap_drop, ["ALL"]);
    assert!(spec.read_only_root);
    assert!(spec.no_new_privileges);
    // The pod-level profile applies: the container sets none.
    assert_eq!(
        spec.seccomp,
        Seccomp::Localhost("profiles/linkprobe.json".into())
    );
    assert_eq!(spec.mounts[1].source, Source::EmptyDir);
    assert!(!spec.mounts[1].read_only);
    assert_eq!(
        spec.env[0],
        ("NODE_NAME".into(), Env::Field("spec.nodeName".into()))
    );
}

#[test]
fn podman_gets_the_same_container() {
    let spec = parse(TWO_DOCS).unwrap();
    let dirs = BTreeMap::from([("run".to_owned(), PathBuf::from("/tmp/lp/run"))]);
    let fields = BTreeMap::from([("spec.nodeName".to_owned(), "node-1".to_owned())]);
    let options = podman_options(&spec, &placed(&dirs, &fields, None)).unwrap();
    assert_eq!(
        options,
        [
            "--name=lp-test",
            "--network=host",
            "--cap-drop=all",
            "--cap-add=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN",
            "--read-only",
            "--read-only-tmpfs=false",
            "--security-opt=no-new-privileges",
            "--security-opt=seccomp=/repo/deploy/seccomp/linkprobe.json",
            "--volume=/sys/fs/cgroup:/sys/fs/cgroup:ro",
            "--volume=/tmp/lp/run:/run/linkprobe",
            "--env=NODE_NAME=node-1",
            "--env=RUST_LOG=info",
        ]
    );
    let fewer = ["BPF", "PERFMON"];
    let options = podman_options(&spec, &placed(&dirs, &fields, Some(&fewer))).unwrap();
    assert!(options.contains(&"--cap-add=CAP_BPF,CAP_PERFMON".to_owned()));
    assert!(!options.iter().any(|o| o.contains("NET_ADMIN")));
}

#[test]
fn what_cannot_be_placed_is_an_error() {
    let spec = parse(TWO_DOCS).unwrap();
    let fields = BTreeMap::from([("spec.nodeName".to_owned(), "n".to_owned())]);
    let no_dirs = BTreeMap::new();
    let err = podman_options(&spec, &placed(&no_dirs, &fields, None)).unwrap_err();
    assert!(err.to_string().contains("emptyDir"), "{err}");
    let dirs = BTreeMap::from([("run".to_owned(), PathBuf::from("/tmp/run"))]);
    let no_fields = BTreeMap::new();
    let err = podman_options(&spec, &placed(&dirs, &no_fields, None)).unwrap_err();
    assert!(err.to_string().contains("spec.nodeName"), "{err}");
    let colon = BTreeMap::from([("run".to_owned(), PathBuf::from("/tmp/a:b"))]);
    assert!(podman_options(&spec, &placed(&colon, &fields, None)).is_err());
}

#[test]
fn manifests_the_suite_cannot_mirror_are_refused() {
    let err = parse("kind: Service\nspec: {}\n").unwrap_err();
    assert!(err.to_string().contains("no DaemonSet"), "{err}");
    let no_container = TWO_DOCS.replace(
        "name: linkprobe\n          image",
        "name: other\n          image",
    );
    let err = parse(&no_container).unwrap_err();
    assert!(
        err.to_string().contains("no container named `linkprobe`"),
        "{err}"
    );
    let config_map = TWO_DOCS.replace("emptyDir: {}", "configMap: {name: x}");
    let err = parse(&config_map).unwrap_err();
    assert!(
        err.to_string().contains("neither hostPath nor emptyDir"),
        "{err}"
    );
    let bad_mount = TWO_DOCS.replace("{name: run, mountPath", "{name: nope, mountPath");
    assert!(parse(&bad_mount).is_err());
}

#[test]
fn the_metrics_address_is_read_and_replaced() {
    let args: Vec<String> = ["daemon", "--metrics-addr", "127.0.0.1:9476", "-o", "none"]
        .map(String::from)
        .into();
    assert_eq!(
        metrics_addr(&args).unwrap(),
        "127.0.0.1:9476".parse().unwrap()
    );
    let moved = with_metrics_addr(&args, "127.0.0.1:40001".parse().unwrap()).unwrap();
    assert_eq!(
        moved,
        ["daemon", "--metrics-addr", "127.0.0.1:40001", "-o", "none"]
    );
    let eq: Vec<String> = ["daemon", "--metrics-addr=[::1]:9476"]
        .map(String::from)
        .into();
    assert_eq!(metrics_addr(&eq).unwrap(), "[::1]:9476".parse().unwrap());
    let moved = with_metrics_addr(&eq, "[::1]:1".parse().unwrap()).unwrap();
    assert_eq!(moved, ["daemon", "--metrics-addr=[::1]:1"]);
    assert!(metrics_addr(&["daemon".to_owned()]).is_err());
    assert!(metrics_addr(&["--metrics-addr".to_owned(), "off".to_owned()]).is_err());
}

/// The shipped manifest: what the suite proves is what the DaemonSet asks for.
#[test]
fn the_shipped_daemonset_is_least_privilege() {
    let spec = load().unwrap();
    assert!(
        spec.host_network,
        "the daemon sees the node's sockets from its network namespace"
    );
    assert!(!spec.host_pid, "no hostPID");
    assert!(!spec.privileged, "not privileged");
    assert_eq!(spec.cap_drop, ["ALL"]);
    let mut add = spec.cap_add.clone();
    add.sort();
    assert_eq!(add, ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
    assert!(spec.read_only_root);
    assert!(spec.no_new_privileges);
    let Seccomp::Localhost(profile) = &spec.seccomp else {
        panic!(
            "seccomp {:?}: expected the shipped Localhost profile",
            spec.seccomp
        );
    };
    assert_eq!(Path::new(profile).file_name().unwrap(), "linkprobe.json");
    for m in &spec.mounts {
        if m.target.starts_with("/sys") {
            assert!(m.read_only, "{} must be read-only", m.target);
        }
    }
    metrics_addr(&spec.args).unwrap();
}
