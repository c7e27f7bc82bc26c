//! Who owns a flow: cgroup id → cgroup path → Kubernetes pod and container, and which pods
//! of this node own an IP. Sits between `event` and `pipeline`: the pipeline and renderers
//! ask it; it reads the host (cgroupfs, the kubelet's pod log directories) and, where it may,
//! the Kubernetes API.
pub mod kube;
pub mod pods;
