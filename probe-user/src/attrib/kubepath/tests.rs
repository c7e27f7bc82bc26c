use super::*;

const UID: &str = "0b6cf0c3-8f4e-4d2a-9a57-1c2d3e4f5a6b";
const UID_: &str = "0b6cf0c3_8f4e_4d2a_9a57_1c2d3e4f5a6b";
const ID: &str = "5f1e0a9c8b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f";

fn pod(qos: Qos, container: bool, runtime: Option<Runtime>) -> Option<PodRef> {
    Some(PodRef {
        uid: UID.into(),
        qos,
        container_id: container.then(|| ID.to_string()),
        runtime,
    })
}

#[test]
fn systemd_driver_three_runtimes() {
    for (prefix, rt) in [
        ("cri-containerd", Runtime::Containerd),
        ("crio", Runtime::Crio),
        ("docker", Runtime::Docker),
    ] {
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/{prefix}-{ID}.scope"
        );
        assert_eq!(parse(&path), pod(Qos::BestEffort, true, Some(rt)), "{path}");
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/{prefix}-{ID}.scope"
        );
        assert_eq!(parse(&path), pod(Qos::Burstable, true, Some(rt)), "{path}");
    }
}

#[test]
fn cgroupfs_driver_three_runtimes() {
    // containerd and docker: the bare id; CRI-O: `crio-<id>`.
    let bare = format!("/kubepods/burstable/pod{UID}/{ID}");
    assert_eq!(parse(&bare), pod(Qos::Burstable, true, None));
    let crio = format!("/kubepods/besteffort/pod{UID}/crio-{ID}");
    assert_eq!(
        parse(&crio),
        pod(Qos::BestEffort, true, Some(Runtime::Crio))
    );
    let docker = format!("/kubepods/besteffort/pod{UID}/docker-{ID}");
    assert_eq!(
        parse(&docker),
        pod(Qos::BestEffort, true, Some(Runtime::Docker))
    );
}

#[test]
fn guaranteed_pods_have_no_qos_level() {
    let systemd = format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope");
    assert_eq!(
        parse(&systemd),
        pod(Qos::Guaranteed, true, Some(Runtime::Containerd))
    );
    let cgroupfs = format!("/kubepods/pod{UID}/{ID}");
    assert_eq!(parse(&cgroupfs), pod(Qos::Guaranteed, true, None));
}

#[test]
fn pod_level_cgroups_and_conmon_have_no_container() {
    let systemd =
        format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice");
    assert_eq!(parse(&systemd), pod(Qos::BestEffort, false, None));
    let cgroupfs = format!("/kubepods/besteffort/pod{UID}");
    assert_eq!(parse(&cgroupfs), pod(Qos::BestEffort, false, None));
    let conmon = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"
    );
    assert_eq!(
        parse(&conmon),
        pod(Qos::Burstable, false, Some(Runtime::Crio))
    );
}

#[test]
fn nested_and_prefixed_nodes() {
    // kind: kubelet's cgroup root is /kubelet, so every slice carries the prefix; the node
    // itself runs in a docker scope on the host.
    let kind = format!(
        "/system.slice/docker-{ID}.scope/kubelet.slice/kubelet-kubepods.slice/\
         kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/\
         cri-containerd-{ID}.scope"
    );
    assert_eq!(
        parse(&kind),
        pod(Qos::BestEffort, true, Some(Runtime::Containerd))
    );
    // k3s-style cgroupfs under a prefix, and a container's own sub-cgroups.
    let k3s = format!("/k3s/kubepods/besteffort/pod{UID}/{ID}/init.scope");
    assert_eq!(parse(&k3s), pod(Qos::BestEffort, true, None));
    // Upper-case UIDs normalise to the API's lowercase form.
    let upper = format!("/kubepods/pod{}/{ID}", UID.to_uppercase());
    assert_eq!(parse(&upper), pod(Qos::Guaranteed, true, None));
}

#[test]
fn host_processes_are_not_pods() {
    for path in [
        "/",
        "/system.slice/sshd.service",
        "/user.slice/user-0.slice/session-3.scope",
        "/kubepods.slice",
        "/kubepods.slice/kubepods-besteffort.slice",
        "/kubepods/besteffort",
        &format!("/system.slice/docker-{ID}.scope"),
    ] {
        assert_eq!(parse(path), None, "{path}");
    }
}

#[test]
fn hostile_strings_are_not_pods() {
    let long = "a".repeat(100_000);
    for path in [
        // A pod level outside any kubepods level.
        format!("/evil/pod{UID}/{ID}"),
        format!("/user.slice/kubepods-pod{UID_}.slice"),
        // Malformed UIDs.
        format!("/kubepods/besteffort/pod{}/{ID}", &UID[1..]),
        format!("/kubepods/besteffort/pod{UID}x/{ID}"),
        format!("/kubepods/besteffort/pod{}/{ID}", UID.replace('-', "_")),
        format!("/kubepods.slice/kubepods-pod{UID}.slice"),
        "/kubepods/besteffort/pod/x".to_string(),
        "/kubepods/besteffort/pod\u{0}../../etc".to_string(),
        format!("/kubepods.slice/kubepods-weird-pod{UID_}.slice"),
        format!("/kubepods/{long}/pod{UID}"),
        format!("/kubepods/besteffort/pod{UID}\n/{ID}"),
        "//////".to_string(),
        String::new(),
    ] {
        assert_eq!(parse(&path), None, "{}", path.escape_debug());
    }
    // A well-formed pod with a malformed container level is the pod without a container.
    for bad in [
        format!("cri-containerd-{}.scope", &ID[1..]),
        format!("cri-containerd-{}.scope", ID.to_uppercase()),
        format!("{ID}.scope"),
        format!("crio-{ID}g"),
        "..".to_string(),
    ] {
        let path = format!("/kubepods/besteffort/pod{UID}/{bad}");
        assert_eq!(parse(&path), pod(Qos::BestEffort, false, None), "{path}");
    }
}
