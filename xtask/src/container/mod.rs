//! linkprobe in a container: the runtime image (`cargo xtask image`), the seccomp profile the
//! DaemonSet names (`cargo xtask seccomp`), and the suite that runs the image the way
//! deploy/kubernetes/daemonset.yaml does (`cargo xtask container-test`, a step of `test`).
pub mod caps;
pub mod daemonset;
pub mod image;
pub mod podman;
pub mod seccomp;
pub mod suite;
