//! Who owns a flow: cgroup id → cgroup path → Kubernetes pod and container, and which pods
//! of this node own an IP. Sits between `event` and `pipeline`: the pipeline and renderers
//! ask it; it reads the host (cgroupfs, the kubelet's pod log directories) and, where it may,
//! the Kubernetes API.
//!
//! The [`Attributor`] is owned by the event loop (inside the pipeline). Per lookup it costs one
//! hash lookup by cgroup id and, for pods, one read-locked lookup by UID in the shared
//! [`PodDirectory`] the pod source fills from its own thread. A cgroup id it has not seen
//! costs a walk of the cgroup tree, at most once per `cgroup_rescan_ms`.
pub mod cgroup_paths;
pub mod kube;
pub mod kubepath;
pub mod listeners;
pub mod netns_names;
pub mod podlogs;
pub mod pods;

use std::{
    cell::RefCell,
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use cgroup_paths::{CgroupPathStats, CgroupPaths};
use kubepath::PodRef;
use netns_names::NetnsNames;
use pods::{PodDirectory, PodMeta, SourceStatus};

/// `[kubernetes] pods` (declared with the configuration, which every stage reads).
pub use crate::config::PodsMode;

/// What the attributor needs from the configuration (`[kubernetes]`) and the host.
#[derive(Clone, Debug)]
pub struct Settings {
    pub mode: PodsMode,
    /// This node's name (`NODE_NAME` when the config leaves it empty).
    pub node_name: String,
    /// An API server URL instead of the in-cluster configuration (`kubectl proxy`, tests).
    pub api_url: Option<String>,
    pub pod_log_dir: PathBuf,
    pub pod_log_rescan: Duration,
    pub max_pods: usize,
    pub max_cgroups: usize,
    pub cgroup_rescan: Duration,
    /// The cgroup2 mount.
    pub cgroup_root: PathBuf,
    /// `KUBERNETES_SERVICE_HOST` is set (we run in a pod).
    pub in_cluster: bool,
}

/// Who owns a socket.
#[derive(Clone, Debug, PartialEq)]
pub enum Owner {
    /// No cgroup id, attribution off, or a cgroup not (yet) found in the tree.
    Unknown,
    /// A process outside any pod.
    Host,
    /// A pod of this node with its name.
    Pod { pod: Arc<PodMeta>, at: Arc<PodRef> },
    /// A pod by its cgroup whose name the pod source does not (yet) know.
    UnnamedPod(Arc<PodRef>),
}

impl Owner {
    /// `namespace/name`, `host`, `pod <uid>` or `None` when unknown.
    pub fn text(&self) -> Option<String> {
        match self {
            Owner::Unknown => None,
            Owner::Host => Some("host".into()),
            Owner::Pod { pod, .. } => Some(format!("{}/{}", pod.namespace, pod.name)),
            Owner::UnnamedPod(at) => Some(format!("pod {}", at.uid)),
        }
    }

    /// `(namespace, pod)` of a named pod.
    pub fn names(&self) -> Option<(&str, &str)> {
        match self {
            Owner::Pod { pod, .. } => Some((&pod.namespace, &pod.name)),
            _ => None,
        }
    }

    /// A named pod's key for bounded tables (`top`, metrics), by UID.
    pub fn pod_key(&self) -> Option<PodKey> {
        match self {
            Owner::Pod { pod, .. } => Some(PodKey::of(&pod.uid)),
            _ => None,
        }
    }

    /// The cgroup's pod reference (named or not).
    pub fn pod_ref(&self) -> Option<&PodRef> {
        match self {
            Owner::Pod { at, .. } | Owner::UnnamedPod(at) => Some(at),
            _ => None,
        }
    }
}

/// A pod by its UID in 8 bytes (`Copy`, for bounded tables keyed by value): a fixed-key hash
/// of the UID. UIDs are assigned by the API server, not chosen by a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey(u64);

impl PodKey {
    pub fn of(uid: &str) -> PodKey {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        uid.hash(&mut h);
        PodKey(h.finish())
    }
}

/// `linkprobe status`: the pod source and the cgroup cache.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttribStatus {
    /// `[kubernetes] pods` as configured.
    pub mode: &'static str,
    pub source: SourceStatus,
    pub pods: usize,
    pub cgroups: CgroupPathStats,
    /// cgroup ids whose paths are cached now.
    pub cgroups_cached: usize,
    /// Why the API source was not used, when `auto`/`api` fell back.
    pub fallback: Option<String>,
}

/// The pod source running for the attributor; dropping it stops it.
enum Source {
    None,
    Api(#[expect(dead_code, reason = "held to keep the watch running")] kube::KubeWatch),
    Logs(#[expect(dead_code, reason = "held to keep the scan running")] podlogs::PodLogWatch),
}

pub struct Attributor {
    mode: PodsMode,
    cache: RefCell<Cache>,
    pods: PodDirectory,
    _source: Source,
    fallback: Option<String>,
    /// Network namespace names, pods or not.
    netns: RefCell<NetnsNames>,
    /// The daemon's `--netns` namespace, if scoped.
    home_netns: Option<u64>,
}

/// How often a miss may rescan for namespace names (and, attribution off, cgroup paths).
const NAME_RESCAN: Duration = Duration::from_secs(1);
/// cgroup paths kept with attribution off (named for `flows`, not for pods).
const OFF_CGROUPS: usize = 4096;

struct Cache {
    paths: CgroupPaths,
    /// cgroup id → its pod (`None`: a host cgroup). Bounded like the path cache.
    owners: HashMap<u64, Option<Arc<PodRef>>>,
    cap: usize,
}

impl Attributor {
    /// Attribution off: every owner is [`Owner::Unknown`], no peer is a pod; cgroup paths
    /// (from the first cgroup2 mount) and namespace names are still shown.
    pub fn off() -> Attributor {
        let root = crate::host::mounts::cgroup2_root().unwrap_or_default();
        Attributor {
            mode: PodsMode::Off,
            cache: RefCell::new(Cache {
                paths: CgroupPaths::new(root, OFF_CGROUPS, NAME_RESCAN),
                owners: HashMap::new(),
                cap: 1,
            }),
            pods: PodDirectory::new(0),
            _source: Source::None,
            fallback: None,
            netns: RefCell::new(NetnsNames::new(NAME_RESCAN)),
            home_netns: None,
        }
    }

    /// Starts the configured pod source. Never fails: an API source that cannot start is
    /// logged and replaced by the pod log directories (or nothing), and `status` says why.
    pub fn start(s: &Settings) -> Attributor {
        let want_api = s.mode == PodsMode::Api
            || (s.mode == PodsMode::Auto && (s.in_cluster || s.api_url.is_some()));
        let logs_exist = is_dir(&s.pod_log_dir);
        // `auto` outside a cluster without the kubelet's directories: not a Kubernetes node.
        if s.mode == PodsMode::Off || (s.mode == PodsMode::Auto && !want_api && !logs_exist) {
            return Attributor::off();
        }
        let pods = PodDirectory::new(s.max_pods);
        let mut fallback = None;
        let mut source = Source::None;
        if want_api {
            let settings = kube::KubeSettings {
                node_name: s.node_name.clone(),
                api_url: s.api_url.clone(),
                ..kube::KubeSettings::default()
            };
            log::info!("pods: watching the pods of node {:?}", settings.node_name);
            match kube::start(&settings, pods.clone()) {
                Ok(watch) => source = Source::Api(watch),
                Err(e) => {
                    log::warn!(
                        "pods: the Kubernetes API source did not start ({e}); \
                         falling back to the pod log directories in {}",
                        s.pod_log_dir.display()
                    );
                    fallback = Some(e.to_string());
                }
            }
        }
        if matches!(source, Source::None) && (want_api || s.mode == PodsMode::Logs || logs_exist) {
            match podlogs::start(
                s.pod_log_dir.clone(),
                s.pod_log_rescan,
                s.max_pods.saturating_mul(4),
                pods.clone(),
            ) {
                Ok(watch) => source = Source::Logs(watch),
                Err(e) => log::warn!("pods: cannot start the pod log directory scan: {e}"),
            }
        }
        if matches!(source, Source::None) {
            pods.set_status("none", "no pod source: cgroups name pods by UID only");
        }
        Attributor {
            mode: s.mode,
            cache: RefCell::new(Cache {
                paths: CgroupPaths::new(s.cgroup_root.clone(), s.max_cgroups, s.cgroup_rescan),
                owners: HashMap::new(),
                cap: s.max_cgroups.max(1),
            }),
            pods,
            _source: source,
            fallback,
            netns: RefCell::new(NetnsNames::new(NAME_RESCAN)),
            home_netns: None,
        }
    }

    /// A pod directory filled by the test.
    #[cfg(test)]
    pub fn with_directory(mut self, pods: PodDirectory) -> Attributor {
        self.pods = pods;
        self
    }

    pub fn enabled(&self) -> bool {
        self.mode != PodsMode::Off
    }

    /// The owner of a socket in cgroup `cgroup_id`.
    pub fn owner(&self, cgroup_id: Option<u64>) -> Owner {
        let Some(id) = cgroup_id.filter(|_| self.enabled()) else {
            return Owner::Unknown;
        };
        let pod = {
            let mut cache = self.cache.borrow_mut();
            match cache.resolve(id) {
                Some(pod) => pod,
                None => return Owner::Unknown,
            }
        };
        let Some(at) = pod else {
            return Owner::Host;
        };
        match self.pods.by_uid(&at.uid) {
            Some(pod) => Owner::Pod { pod, at },
            None => Owner::UnnamedPod(at),
        }
    }

    /// The path of cgroup `id` below the cgroup2 root (`/system.slice/nginx.service`), where
    /// the tree has it.
    pub fn cgroup_path(&self, id: Option<u64>) -> Option<Arc<str>> {
        self.cache.borrow_mut().paths.lookup(id?)
    }

    /// The name of the network namespace with `cookie`: `host`, an `ip netns` name or
    /// `pid N (comm)` of a process in it.
    pub fn netns_name(&self, cookie: u64) -> Option<Arc<str>> {
        self.netns.borrow_mut().name(cookie)
    }

    /// The namespace a scope's text need not name: the `--netns` one when the daemon sees
    /// only it, else the host's.
    pub fn set_home_netns(&mut self, cookie: Option<u64>) {
        self.home_netns = cookie;
    }

    /// Whether scopes in namespace `cookie` go without naming it (see `set_home_netns`).
    pub fn is_home_netns(&self, cookie: u64) -> bool {
        match self.home_netns {
            Some(home) => home == cookie,
            None => self.netns_name(cookie).as_deref() == Some("host"),
        }
    }

    /// A remote address that is a pod IP of this node (known from the API source only).
    pub fn peer_pod(&self, ip: IpAddr) -> Option<Arc<PodMeta>> {
        if !self.enabled() {
            return None;
        }
        self.pods.by_ip(ip)
    }

    pub fn status(&self) -> AttribStatus {
        AttribStatus {
            mode: self.mode.name(),
            source: self.pods.status(),
            pods: self.pods.len(),
            cgroups: self.cache.borrow().paths.stats(),
            cgroups_cached: self.cache.borrow().paths.len(),
            fallback: self.fallback.clone(),
        }
    }
}

impl Drop for Attributor {
    /// Stops the pod source on a thread of its own: the loop drops the attributor inside its
    /// async runtime, where a source holding a runtime of its own (the API watch) could not be
    /// dropped (tokio refuses to block there).
    fn drop(&mut self) {
        let source = std::mem::replace(&mut self._source, Source::None);
        if matches!(source, Source::None) {
            return;
        }
        let stopped = std::thread::Builder::new()
            .name("pod-source-stop".into())
            .spawn(move || drop(source));
        if let Ok(t) = stopped {
            let _ = t.join();
        }
    }
}

impl Cache {
    /// `Some(None)`: a host cgroup; `None`: not found (yet).
    fn resolve(&mut self, id: u64) -> Option<Option<Arc<PodRef>>> {
        if let Some(known) = self.owners.get(&id) {
            return Some(known.clone());
        }
        let path = self.paths.lookup(id)?;
        let pod = kubepath::parse(&path).map(Arc::new);
        if self.owners.len() >= self.cap {
            // Ids are never reused, so a full map holds mostly cgroups long gone: start over.
            self.owners.clear();
        }
        self.owners.insert(id, pod.clone());
        Some(pod)
    }
}

fn is_dir(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_dir())
}

/// Test trees shaped like kubelet nodes, shared with the renderers' tests.
#[cfg(test)]
pub mod tests;
