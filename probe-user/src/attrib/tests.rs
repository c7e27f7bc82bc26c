use super::*;
use std::os::unix::fs::MetadataExt;

pub const UID: &str = "0b6cf0c3-8f4e-4d2a-9a57-1c2d3e4f5a6b";
pub const CONTAINER: &str = "5f1e0a9c8b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f";

/// A temporary tree shaped like a systemd-driver node: `(root, pod container id, host id)`.
pub fn kubelet_tree(tag: &str) -> (PathBuf, u64, u64) {
    let root = std::env::temp_dir().join(format!("lp-attrib-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let scope = root.join(format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{CONTAINER}.scope",
        UID.replace('-', "_")
    ));
    std::fs::create_dir_all(&scope).unwrap();
    let host = root.join("system.slice/sshd.service");
    std::fs::create_dir_all(&host).unwrap();
    let id = |p: &Path| std::fs::metadata(p).unwrap().ino();
    (root.clone(), id(&scope), id(&host))
}

pub fn settings(root: &Path, mode: PodsMode, log_dir: &Path) -> Settings {
    Settings {
        mode,
        node_name: "node-1".into(),
        api_url: None,
        pod_log_dir: log_dir.to_path_buf(),
        pod_log_rescan: Duration::from_secs(3600),
        max_pods: 16,
        max_cgroups: 1024,
        cgroup_rescan: Duration::ZERO,
        cgroup_root: root.to_path_buf(),
        in_cluster: false,
    }
}

#[test]
fn cgroups_resolve_to_pods_host_and_unknown() {
    let (root, pod_id, host_id) = kubelet_tree("owner");
    let logs = root.join("logs");
    std::fs::create_dir_all(logs.join(format!("shop_cart-7d9f_{UID}"))).unwrap();
    let a = Attributor::start(&settings(&root, PodsMode::Logs, &logs));
    match a.owner(Some(pod_id)) {
        Owner::Pod { pod, at } => {
            assert_eq!(
                (pod.namespace.as_str(), pod.name.as_str()),
                ("shop", "cart-7d9f")
            );
            assert_eq!(at.container_id.as_deref(), Some(CONTAINER));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.owner(Some(host_id)), Owner::Host);
    assert_eq!(a.owner(Some(host_id)).text().as_deref(), Some("host"));
    assert_eq!(a.owner(Some(u64::MAX)), Owner::Unknown);
    assert_eq!(a.owner(None), Owner::Unknown);
    let st = a.status();
    assert_eq!(
        (st.mode, st.source.source, st.pods),
        ("logs", "pod-log-dirs", 1)
    );
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_pod_without_a_name_yet_is_named_by_uid() {
    let (root, pod_id, _) = kubelet_tree("unnamed");
    let a = Attributor::start(&settings(&root, PodsMode::Logs, &root.join("missing")));
    let owner = a.owner(Some(pod_id));
    assert!(matches!(owner, Owner::UnnamedPod(_)), "{owner:?}");
    assert_eq!(owner.text(), Some(format!("pod {UID}")));
    // The name arrives (the pod source caught up): the next lookup has it.
    let dir = PodDirectory::new(4);
    dir.upsert(PodMeta {
        uid: UID.into(),
        namespace: "shop".into(),
        name: "cart".into(),
        ips: vec!["10.1.0.7".parse().unwrap()],
    });
    let a = a.with_directory(dir);
    assert_eq!(a.owner(Some(pod_id)).names(), Some(("shop", "cart")));
    assert_eq!(
        a.peer_pod("10.1.0.7".parse().unwrap()).unwrap().name,
        "cart"
    );
    assert!(a.peer_pod("10.1.0.8".parse().unwrap()).is_none());
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn off_resolves_nothing_and_auto_outside_a_cluster_uses_existing_log_dirs() {
    let (root, pod_id, _) = kubelet_tree("modes");
    let off = Attributor::start(&settings(&root, PodsMode::Off, &root));
    assert_eq!(off.owner(Some(pod_id)), Owner::Unknown);
    assert_eq!(off.status().source.source, "none");
    let logs = root.join("logs");
    // auto on a host that is not a Kubernetes node: off.
    let none = Attributor::start(&settings(&root, PodsMode::Auto, &logs));
    assert!(!none.enabled());
    assert_eq!(none.owner(Some(pod_id)), Owner::Unknown);
    // logs without the directory: on, pods named by UID until it appears.
    let unnamed = Attributor::start(&settings(&root, PodsMode::Logs, &logs));
    assert!(matches!(unnamed.owner(Some(pod_id)), Owner::UnnamedPod(_)));
    std::fs::create_dir_all(&logs).unwrap();
    let auto = Attributor::start(&settings(&root, PodsMode::Auto, &logs));
    assert_eq!(auto.status().source.source, "pod-log-dirs");
    // In a cluster, an API source that cannot start falls back to the log directories.
    let mut s = settings(&root, PodsMode::Auto, &logs);
    s.in_cluster = true;
    let fell_back = Attributor::start(&s);
    let st = fell_back.status();
    // (Once the API source exists it may start and fail later, on its own thread.)
    assert!(
        (st.fallback.is_some() && st.source.source == "pod-log-dirs")
            || st.source.source == "kubernetes-api",
        "{st:?}"
    );
    std::fs::remove_dir_all(root).unwrap();
}
