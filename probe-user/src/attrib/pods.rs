//! The pods of this node: filled by one pod source (the Kubernetes API watch, or the
//! kubelet's `/var/log/pods` directories), read by the event loop. Bounded: a node runs at
//! most a few hundred pods; past `max_pods` new pods are counted, not kept.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

/// One pod of this node, as its source reported it. Only what attribution needs is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    /// `metadata.uid`, lowercase with dashes (`0b6c…-…`), as in cgroup paths after `_`→`-`.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// `status.podIPs`; empty when the source does not know them (pod log directories) and
    /// for `hostNetwork` pods (their IPs are the node's, not theirs).
    pub ips: Vec<IpAddr>,
}

/// What the pod source is and how it is doing, for `linkprobe status` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// `kubernetes-api`, `pod-log-dirs` or `none`.
    pub source: &'static str,
    /// A short state: `synced`, `listing`, `relisting (410 Gone)`, `reconnecting: <error>`.
    pub state: String,
    /// Errors seen since start (failed lists/watches, unreadable directories).
    pub errors: u64,
    /// The latest error, kept after the source recovers (the state then says `synced`).
    pub last_error: Option<String>,
    /// Pods not kept because the directory was full.
    pub over_cap: u64,
}

/// The shared store of this node's pods. Cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct PodDirectory {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    max_pods: usize,
    by_uid: HashMap<String, Arc<PodMeta>>,
    by_ip: HashMap<IpAddr, Arc<PodMeta>>,
    status: SourceStatus,
}

impl PodDirectory {
    pub fn new(max_pods: usize) -> Self {
        let status = SourceStatus {
            source: "none",
            state: "off".into(),
            ..SourceStatus::default()
        };
        Self {
            inner: Arc::new(RwLock::new(Inner {
                max_pods,
                status,
                ..Inner::default()
            })),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        // A panic while holding the lock leaves maps that are still consistent (each update
        // is a whole insert or remove), so a poisoned lock is used as it is.
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything the source listed, replacing what was there (after a list or relist).
    pub fn replace_all(&self, pods: impl IntoIterator<Item = PodMeta>) {
        let mut inner = self.write();
        inner.by_uid.clear();
        inner.by_ip.clear();
        for pod in pods {
            inner.insert(pod);
        }
    }

    /// A pod added or changed.
    pub fn upsert(&self, pod: PodMeta) {
        self.write().insert(pod);
    }

    /// A pod deleted.
    pub fn remove(&self, uid: &str) {
        let mut inner = self.write();
        if let Some(old) = inner.by_uid.remove(uid) {
            inner.forget_ips(&old);
        }
    }

    pub fn by_uid(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.read().by_uid.get(uid).cloned()
    }

    pub fn by_ip(&self, ip: IpAddr) -> Option<Arc<PodMeta>> {
        self.read().by_ip.get(&ip).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().by_uid.len()
    }

    pub fn status(&self) -> SourceStatus {
        self.read().status.clone()
    }

    /// The source names itself and says how it is doing.
    pub fn set_status(&self, source: &'static str, state: impl Into<String>) {
        let mut inner = self.write();
        inner.status.source = source;
        inner.status.state = state.into();
    }

    /// One more source error (kept as a count; the state says the latest).
    pub fn count_error(&self) {
        self.write().status.errors += 1;
    }

    /// What the latest error said (already escaped and bounded by the source).
    pub fn set_last_error(&self, text: impl Into<String>) {
        self.write().status.last_error = Some(text.into());
    }
}

impl Inner {
    fn insert(&mut self, pod: PodMeta) {
        if !self.by_uid.contains_key(&pod.uid) && self.by_uid.len() >= self.max_pods {
            self.status.over_cap += 1;
            return;
        }
        let pod = Arc::new(pod);
        if let Some(old) = self.by_uid.insert(pod.uid.clone(), Arc::clone(&pod)) {
            self.forget_ips(&old);
        }
        for ip in &pod.ips {
            self.by_ip.insert(*ip, Arc::clone(&pod));
        }
    }

    /// Drops `old`'s IPs that still point at it (an IP reused by a newer pod stays).
    fn forget_ips(&mut self, old: &PodMeta) {
        for ip in &old.ips {
            if self.by_ip.get(ip).is_some_and(|p| p.uid == old.uid) {
                self.by_ip.remove(ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, name: &str, ips: &[&str]) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            namespace: "default".into(),
            name: name.into(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn ips_follow_their_pod_and_survive_reuse() {
        let dir = PodDirectory::new(8);
        dir.upsert(pod("a", "web-1", &["10.0.0.5"]));
        dir.upsert(pod("b", "web-2", &["10.0.0.6"]));
        // The IP moves to a new pod before the old one's deletion arrives.
        dir.upsert(pod("c", "web-3", &["10.0.0.5"]));
        dir.remove("a");
        assert_eq!(
            dir.by_ip("10.0.0.5".parse().unwrap()).unwrap().name,
            "web-3"
        );
        dir.replace_all([pod("b", "web-2", &["10.0.0.6"])]);
        assert!(dir.by_ip("10.0.0.5".parse().unwrap()).is_none());
        assert_eq!(dir.by_uid("b").unwrap().name, "web-2");
    }

    #[test]
    fn pods_past_the_cap_are_counted_not_kept() {
        let dir = PodDirectory::new(2);
        for (i, uid) in ["a", "b", "c", "d"].into_iter().enumerate() {
            dir.upsert(pod(uid, &format!("p{i}"), &[]));
        }
        assert_eq!(dir.len(), 2);
        assert_eq!(dir.status().over_cap, 2);
        // Updating a kept pod is not over the cap.
        dir.upsert(pod("a", "p0-renamed", &[]));
        assert_eq!(dir.status().over_cap, 2);
    }
}
