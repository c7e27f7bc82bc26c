//! A cgroup path → the Kubernetes pod (and container) it belongs to, for both kubelet cgroup
//! drivers and the common runtimes:
//!
//! - systemd: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/
//!   {cri-containerd,crio,docker}-<64hex>.scope` (Guaranteed pods: `kubepods-pod<uid>.slice`
//!   right under `kubepods.slice`);
//! - cgroupfs: `kubepods/<qos>/pod<uid>/<64hex>` (Guaranteed: `kubepods/pod<uid>`), CRI-O's
//!   containers as `crio-<64hex>`;
//! - anywhere in the path: a hybrid host's unified mount, or a node nested under a prefix
//!   (kind's `/kubelet.slice/kubelet-kubepods.slice/…`, k3s or a container's own cgroup).
//!
//! Paths are hostile input: the pod level must sit below a `kubepods` level, the UID must be a
//! well-formed UUID and a container id exactly 64 lowercase hex digits; anything else is not a
//! pod (a host process).

/// The pod's QoS class, from the cgroup level it sits under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn name(self) -> &'static str {
        match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        }
    }
}

/// The container runtime, where the path names it (cgroupfs paths of containerd and docker are
/// bare ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    Crio,
    Docker,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::Crio => "cri-o",
            Runtime::Docker => "docker",
        }
    }
}

/// A pod, and within it perhaps a container, named by a cgroup path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodRef {
    /// `metadata.uid`, lowercase with dashes.
    pub uid: String,
    pub qos: Qos,
    /// 64 hex digits; `None` for the pod-level cgroup (or CRI-O's `conmon`).
    pub container_id: Option<String>,
    pub runtime: Option<Runtime>,
}

/// The pod that owns cgroup `path` (relative to the cgroup2 root), or `None` for a host
/// process.
pub fn parse(path: &str) -> Option<PodRef> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut under_kubepods = false;
    for (i, part) in parts.iter().enumerate() {
        if let Some((uid, qos)) = pod_level(part, under_kubepods, parts[..i].last().copied()) {
            let (container_id, runtime) = parts
                .get(i + 1)
                .and_then(|c| container_level(c))
                .map_or((None, None), |(id, rt)| (id, rt));
            return Some(PodRef {
                uid,
                qos,
                container_id,
                runtime,
            });
        }
        // systemd: `kubepods.slice`, `kubelet-kubepods.slice`; cgroupfs: `kubepods`.
        if *part == "kubepods" || is_kubepods_slice(part) {
            under_kubepods = true;
        }
    }
    None
}

fn is_kubepods_slice(part: &str) -> bool {
    part.strip_suffix(".slice").is_some_and(|stem| {
        stem == "kubepods" || stem.ends_with("-kubepods") || stem.contains("kubepods-")
    })
}

/// `(uid, qos)` when `part` is a pod's cgroup.
fn pod_level(part: &str, under_kubepods: bool, parent: Option<&str>) -> Option<(String, Qos)> {
    if !under_kubepods {
        return None;
    }
    if let Some(stem) = part.strip_suffix(".slice") {
        // `[<prefix>-]kubepods[-<qos>]-pod<uid_>`; the prefix is kind's `kubelet`.
        let (head, uid) = stem.rsplit_once("-pod")?;
        let words: Vec<&str> = head.split('-').collect();
        let k = words.iter().position(|w| *w == "kubepods")?;
        let qos = match &words[k + 1..] {
            [] => Qos::Guaranteed,
            ["burstable"] => Qos::Burstable,
            ["besteffort"] => Qos::BestEffort,
            _ => return None,
        };
        return uuid(uid, '_').map(|u| (u, qos));
    }
    let uid = part.strip_prefix("pod")?;
    let qos = match parent? {
        "burstable" => Qos::Burstable,
        "besteffort" => Qos::BestEffort,
        "kubepods" => Qos::Guaranteed,
        _ => return None,
    };
    uuid(uid, '-').map(|u| (u, qos))
}

/// A container's cgroup below its pod's: `(id, runtime)`; `(None, Some(crio))` for CRI-O's
/// `conmon` (the pod's monitor, no container).
fn container_level(part: &str) -> Option<(Option<String>, Option<Runtime>)> {
    let (stem, systemd) = match part.strip_suffix(".scope") {
        Some(stem) => (stem, true),
        None => (part, false),
    };
    let prefixed = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-conmon-", Runtime::Crio),
        ("crio-", Runtime::Crio),
        ("docker-", Runtime::Docker),
    ];
    for (prefix, runtime) in prefixed {
        if let Some(id) = stem.strip_prefix(prefix) {
            let id = hex64(id)?;
            if prefix == "crio-conmon-" {
                return Some((None, Some(runtime)));
            }
            return Some((Some(id), Some(runtime)));
        }
    }
    // cgroupfs driver, containerd or docker: the bare id.
    (!systemd)
        .then(|| hex64(stem))
        .flatten()
        .map(|id| (Some(id), None))
}

fn hex64(s: &str) -> Option<String> {
    (s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| s.to_string())
}

/// A UUID with `sep` between its groups (8-4-4-4-12 hex digits), lowercase with dashes (`-`
/// in pod log directory names, `_` in systemd slice names).
pub fn uuid(s: &str, sep: char) -> Option<String> {
    let groups: Vec<&str> = s.split(sep).collect();
    let lens = [8, 4, 4, 4, 12];
    if groups.len() != lens.len() {
        return None;
    }
    for (g, len) in groups.iter().zip(lens) {
        if g.len() != len || !g.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
    }
    Some(groups.join("-").to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
