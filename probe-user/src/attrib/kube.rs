//! Pod names and IPs of this node from the Kubernetes API (kube-rs), into a [`PodDirectory`].
//! Placeholder: the watch is being written; `start` says so.
use super::pods::PodDirectory;

/// How to reach the API and which node's pods to watch.
#[derive(Clone, Debug, Default)]
pub struct KubeSettings {
    /// `spec.nodeName` of the pods to watch (`NODE_NAME` from the downward API).
    pub node_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("the Kubernetes API source is not built in yet")]
    NotBuilt,
}

/// The running watch; dropping it stops the watch.
#[derive(Debug)]
pub struct KubeWatch {}

/// Starts watching this node's pods on a thread of its own, filling `pods`.
pub fn start(_settings: &KubeSettings, _pods: PodDirectory) -> Result<KubeWatch, KubeError> {
    Err(KubeError::NotBuilt)
}
