//! The host the daemon runs on: what it needs before any probe loads (privileges, mounts, one
//! daemon per host, the `--netns`/`--cgroup` scope) and the sockets that existed before it.
pub mod diag;
pub mod lock;
pub mod mounts;
pub mod preflight;
pub mod run_dir;
pub mod scope;
