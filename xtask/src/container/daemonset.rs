//! What the DaemonSet gives the `linkprobe` container, read from
//! deploy/kubernetes/daemonset.yaml, and the `podman run` options that give a container the
//! same: capabilities, read-only root, mounts (read-only where the YAML says so), host network
//! (and host PID only if the YAML asks for it), seccomp profile, no privilege escalation,
//! environment and arguments. The suite runs exactly this, so the YAML is what is proven.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

use crate::{cmd::workspace_root, container::caps::canonical};

/// The manifest, relative to the workspace root.
pub const MANIFEST: &str = "deploy/kubernetes/daemonset.yaml";
/// The container the suite runs (the pod also has kube-rbac-proxy).
pub const CONTAINER: &str = "linkprobe";

// The subset of the Kubernetes objects the suite reads; other fields are ignored.
#[derive(Deserialize)]
struct Kind {
    #[serde(default)]
    kind: String,
}

#[derive(Deserialize)]
struct DaemonSet {
    spec: DaemonSetSpec,
}

#[derive(Deserialize)]
struct DaemonSetSpec {
    template: PodTemplate,
}

#[derive(Deserialize)]
struct PodTemplate {
    spec: PodSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    host_network: bool,
    #[serde(default, rename = "hostPID")]
    host_pid: bool,
    #[serde(default)]
    security_context: Option<SecurityContext>,
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<Volume>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    security_context: Option<SecurityContext>,
    #[serde(default)]
    volume_mounts: Vec<VolumeMount>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvVar {
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_from: Option<EnvSource>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvSource {
    #[serde(default)]
    field_ref: Option<FieldRef>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FieldRef {
    field_path: String,
}

#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecurityContext {
    #[serde(default)]
    capabilities: Option<Capabilities>,
    #[serde(default)]
    read_only_root_filesystem: Option<bool>,
    #[serde(default)]
    privileged: Option<bool>,
    #[serde(default)]
    allow_privilege_escalation: Option<bool>,
    #[serde(default)]
    seccomp_profile: Option<SeccompProfile>,
    #[serde(default)]
    run_as_user: Option<u32>,
}

#[derive(Clone, Default, Deserialize)]
struct Capabilities {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    drop: Vec<String>,
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeccompProfile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    localhost_profile: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeMount {
    name: String,
    mount_path: String,
    #[serde(default)]
    read_only: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    name: String,
    #[serde(default)]
    host_path: Option<HostPath>,
    #[serde(default)]
    empty_dir: Option<serde_norway::Value>,
}

#[derive(Deserialize)]
struct HostPath {
    path: String,
}

/// The seccomp profile the container runs under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seccomp {
    /// The runtime's default (podman: /usr/share/containers/seccomp.json).
    RuntimeDefault,
    Unconfined,
    /// A file under the kubelet's seccomp directory (`profiles/linkprobe.json`).
    Localhost(String),
}

/// Where a mount's content comes from on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    HostPath(PathBuf),
    EmptyDir,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub volume: String,
    pub source: Source,
    pub target: String,
    pub read_only: bool,
}

/// An environment variable: a literal, or a downward-API field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Env {
    Value(String),
    Field(String),
}

/// Everything the DaemonSet says about running the `linkprobe` container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSpec {
    pub host_network: bool,
    pub host_pid: bool,
    pub privileged: bool,
    /// Capability names with the `CAP_` prefix, in the YAML's order.
    pub cap_add: Vec<String>,
    /// `ALL` stays `ALL`.
    pub cap_drop: Vec<String>,
    pub read_only_root: bool,
    pub no_new_privileges: bool,
    pub seccomp: Seccomp,
    pub mounts: Vec<Mount>,
    pub env: Vec<(String, Env)>,
    pub args: Vec<String>,
    pub run_as_user: Option<u32>,
}

/// Reads [`MANIFEST`].
pub fn load() -> Result<RunSpec> {
    let path = workspace_root().join(MANIFEST);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("in {}", path.display()))
}

/// The first DaemonSet among the YAML documents in `text`, its [`CONTAINER`] container.
pub fn parse(text: &str) -> Result<RunSpec> {
    for doc in serde_norway::Deserializer::from_str(text) {
        let value = serde_norway::Value::deserialize(doc).context("not YAML")?;
        if value.is_null() {
            continue;
        }
        let kind: Kind =
            serde_norway::from_value(value.clone()).context("not a Kubernetes object")?;
        if kind.kind != "DaemonSet" {
            continue;
        }
        let daemonset: DaemonSet = serde_norway::from_value(value)
            .context("the DaemonSet is not one the suite can read")?;
        return run_spec(daemonset.spec.template.spec);
    }
    bail!("no DaemonSet in the manifest")
}

fn run_spec(pod: PodSpec) -> Result<RunSpec> {
    let container = pod
        .containers
        .into_iter()
        .find(|c| c.name == CONTAINER)
        .with_context(|| format!("the DaemonSet has no container named `{CONTAINER}`"))?;
    // The container's security context overrides the pod's field by field (seccomp, user).
    let pod_sc = pod.security_context.unwrap_or_default();
    let sc = container.security_context.unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let seccomp = match sc.seccomp_profile.or(pod_sc.seccomp_profile) {
        None => Seccomp::RuntimeDefault,
        Some(p) => match p.kind.as_str() {
            "RuntimeDefault" => Seccomp::RuntimeDefault,
            "Unconfined" => Seccomp::Unconfined,
            "Localhost" => Seccomp::Localhost(
                p.localhost_profile
                    .context("seccompProfile Localhost without localhostProfile")?,
            ),
            other => bail!("seccompProfile type `{other}` is not one Kubernetes knows"),
        },
    };
    let volumes: BTreeMap<&str, &Volume> =
        pod.volumes.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut mounts = Vec::new();
    for m in &container.volume_mounts {
        let volume = volumes
            .get(m.name.as_str())
            .with_context(|| format!("volumeMount `{}` names no volume of the pod", m.name))?;
        let source = match (&volume.host_path, &volume.empty_dir) {
            (Some(h), _) => Source::HostPath(PathBuf::from(&h.path)),
            (None, Some(_)) => Source::EmptyDir,
            (None, None) => bail!(
                "volume `{}` is neither hostPath nor emptyDir: the container suite cannot give \
                 a container the same (teach xtask/src/container/daemonset.rs its kind)",
                m.name
            ),
        };
        mounts.push(Mount {
            volume: m.name.clone(),
            source,
            target: m.mount_path.clone(),
            read_only: m.read_only,
        });
    }
    let mut env = Vec::new();
    for e in container.env {
        let source = match (e.value, e.value_from.and_then(|f| f.field_ref)) {
            (Some(v), _) => Env::Value(v),
            (None, Some(f)) => Env::Field(f.field_path),
            (None, None) => bail!(
                "env `{}`: only literal values and fieldRef are supported by the container suite",
                e.name
            ),
        };
        env.push((e.name, source));
    }
    Ok(RunSpec {
        host_network: pod.host_network,
        host_pid: pod.host_pid,
        privileged: sc.privileged.unwrap_or(false),
        cap_add: caps.add.iter().map(|c| canonical(c)).collect(),
        cap_drop: caps
            .drop
            .iter()
            .map(|c| {
                if c.eq_ignore_ascii_case("ALL") {
                    "ALL".to_owned()
                } else {
                    canonical(c)
                }
            })
            .collect(),
        read_only_root: sc.read_only_root_filesystem.unwrap_or(false),
        no_new_privileges: sc.allow_privilege_escalation == Some(false),
        seccomp,
        mounts,
        env,
        args: container.args,
        run_as_user: sc.run_as_user.or(pod_sc.run_as_user),
    })
}

/// What a run on this machine puts in place of the node's.
pub struct Placement<'a> {
    /// `--name`.
    pub name: &'a str,
    /// The seccomp file for [`Seccomp::Localhost`] (the kubelet's `<root>/seccomp/<profile>`).
    pub seccomp_file: &'a Path,
    /// Host directories in place of these volumes (by volume name): the run directory and
    /// what the node has but this machine does not.
    pub volume_dirs: &'a BTreeMap<String, PathBuf>,
    /// The downward API's values: `spec.nodeName` etc. by field path.
    pub fields: &'a BTreeMap<String, String>,
    /// Capabilities to add instead of the YAML's (the negative measurements).
    pub cap_add: Option<&'a [&'a str]>,
}

/// The `podman run` options (everything before the image) for `spec` placed by `at`.
pub fn podman_options(spec: &RunSpec, at: &Placement<'_>) -> Result<Vec<String>> {
    let mut o = vec![format!("--name={}", at.name)];
    if spec.host_network {
        o.push("--network=host".to_owned());
    }
    if spec.host_pid {
        o.push("--pid=host".to_owned());
    }
    if spec.privileged {
        o.push("--privileged".to_owned());
    }
    if let Some(user) = spec.run_as_user {
        o.push(format!("--user={user}"));
    }
    for drop in &spec.cap_drop {
        o.push(format!("--cap-drop={}", drop.to_ascii_lowercase()));
    }
    let add: Vec<String> = match at.cap_add {
        Some(caps) => caps.iter().map(|c| canonical(c)).collect(),
        None => spec.cap_add.clone(),
    };
    if !add.is_empty() {
        o.push(format!("--cap-add={}", add.join(",")));
    }
    if spec.read_only_root {
        // Kubernetes mounts nothing writable over a read-only root; podman would put tmpfs on
        // /tmp, /var/tmp and /run unless told not to.
        o.push("--read-only".to_owned());
        o.push("--read-only-tmpfs=false".to_owned());
    }
    if spec.no_new_privileges {
        o.push("--security-opt=no-new-privileges".to_owned());
    }
    match &spec.seccomp {
        Seccomp::RuntimeDefault => {}
        Seccomp::Unconfined => o.push("--security-opt=seccomp=unconfined".to_owned()),
        Seccomp::Localhost(_) => o.push(format!(
            "--security-opt=seccomp={}",
            at.seccomp_file.display()
        )),
    }
    for m in &spec.mounts {
        let host = match (at.volume_dirs.get(&m.volume), &m.source) {
            (Some(dir), _) => dir.clone(),
            (None, Source::HostPath(p)) => p.clone(),
            (None, Source::EmptyDir) => bail!(
                "volume `{}` is an emptyDir: give it a directory of the test's own",
                m.volume
            ),
        };
        let host = host
            .to_str()
            .with_context(|| format!("{} is not UTF-8", host.display()))?;
        if host.contains(':') || m.target.contains(':') {
            bail!(
                "mount {host} → {}: podman's -v cannot take a ':' in a path",
                m.target
            );
        }
        let ro = if m.read_only { ":ro" } else { "" };
        o.push(format!("--volume={host}:{}{ro}", m.target));
    }
    for (name, env) in &spec.env {
        let value = match env {
            Env::Value(v) => v.clone(),
            Env::Field(path) => at
                .fields
                .get(path)
                .with_context(|| {
                    format!("env `{name}`: no value for the downward-API field `{path}`")
                })?
                .clone(),
        };
        o.push(format!("--env={name}={value}"));
    }
    Ok(o)
}

/// The YAML's `--metrics-addr` (either `--metrics-addr A` or `--metrics-addr=A`).
pub fn metrics_addr(args: &[String]) -> Result<SocketAddr> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = if a == "--metrics-addr" {
            it.next().map(String::as_str)
        } else {
            a.strip_prefix("--metrics-addr=")
        };
        if let Some(v) = value {
            return v
                .parse()
                .with_context(|| format!("--metrics-addr `{v}` is not IP:PORT"));
        }
    }
    bail!("the container's args have no --metrics-addr: the suite checks /readyz on it")
}

/// `args` with `--metrics-addr`'s value replaced by `addr`.
pub fn with_metrics_addr(args: &[String], addr: SocketAddr) -> Result<Vec<String>> {
    metrics_addr(args)?;
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--metrics-addr" {
            out.push(a.clone());
            it.next();
            out.push(addr.to_string());
        } else if a.starts_with("--metrics-addr=") {
            out.push(format!("--metrics-addr={addr}"));
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
