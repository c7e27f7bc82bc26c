//! The part of Kustomize that deploy/kubernetes uses, so `cargo xtask test` renders it without
//! kubectl or kustomize (Debian 12's apt has neither): `resources` (files and directories, in
//! order), `components`, `namespace` and `labels`, then kustomize's default ("legacy") order of
//! kinds. Anything else in a kustomization is an error naming the field, never ignored: a
//! rendering that silently differed from `kubectl kustomize` would validate the wrong thing.
//! (Checked against `kubectl kustomize` v5.5 on the shipped base and overlays: same objects.)
use std::path::{Component as PathPart, Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize as _;
use serde_norway::{Mapping, Value};

/// Largest manifest or kustomization file read (the shipped ones are a few KiB).
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Deepest chain of directories including each other.
const MAX_DEPTH: usize = 8;

/// Kinds without a namespace. Every kind rendered must be here or in [`NAMESPACED_KINDS`]:
/// `namespace:` must know which objects it applies to.
const CLUSTER_SCOPED_KINDS: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PriorityClass",
    "CustomResourceDefinition",
    "StorageClass",
    "PersistentVolume",
    "RuntimeClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
];
const NAMESPACED_KINDS: &[&str] = &[
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "Secret",
    "Service",
    "DaemonSet",
    "Deployment",
    "StatefulSet",
    "Job",
    "CronJob",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "PodMonitor",
    "ServiceMonitor",
    "PrometheusRule",
];
/// Kinds whose pod template gets the labels when `includeTemplates` is set.
const POD_TEMPLATE_KINDS: &[&str] = &[
    "DaemonSet",
    "Deployment",
    "StatefulSet",
    "ReplicaSet",
    "Job",
];

/// Kustomize's legacy sort (its default): these kinds first in this order, then every other
/// kind, then `ORDER_LAST`; within a kind by name.
const ORDER_FIRST: &[&str] = &[
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
];
const ORDER_LAST: &[&str] = &["ValidatingWebhookConfiguration"];

/// One rendered object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object(pub Mapping);

impl Object {
    pub fn str_at(&self, key: &str) -> &str {
        self.0.get(key).and_then(Value::as_str).unwrap_or("")
    }

    pub fn kind(&self) -> &str {
        self.str_at("kind")
    }

    pub fn api_version(&self) -> &str {
        self.str_at("apiVersion")
    }

    fn metadata_str(&self, key: &str) -> &str {
        self.0
            .get("metadata")
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.metadata_str("name")
    }

    pub fn namespace(&self) -> &str {
        self.metadata_str("namespace")
    }

    /// `Kind namespace/name` for messages.
    pub fn id(&self) -> String {
        match self.namespace() {
            "" => format!("{} {}", self.kind(), self.name()),
            ns => format!("{} {ns}/{}", self.kind(), self.name()),
        }
    }

    /// The API group (empty for the core group).
    fn group(&self) -> &str {
        self.api_version()
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }
}

/// The objects `kubectl kustomize DIR` would print, in its order.
pub fn render(dir: &Path) -> Result<Vec<Object>> {
    let mut objects = build(dir, &mut Vec::new(), false)?;
    legacy_sort(&mut objects);
    Ok(objects)
}

/// The rendered objects as one YAML stream (`---` between documents).
pub fn to_yaml(objects: &[Object]) -> Result<String> {
    let mut out = String::new();
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_norway::to_string(&o.0).context("serialize a rendered object")?);
    }
    Ok(out)
}

/// A kustomization's fields that this renderer implements.
#[derive(Debug, Default)]
struct Kustomization {
    component: bool,
    namespace: Option<String>,
    labels: Vec<LabelSet>,
    resources: Vec<String>,
    components: Vec<String>,
}

#[derive(Debug, PartialEq)]
struct LabelSet {
    pairs: Vec<(String, String)>,
    include_templates: bool,
}

fn read_bounded(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > MAX_FILE_BYTES {
        bail!(
            "{} is {len} bytes, more than the {MAX_FILE_BYTES} a manifest may have",
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn kustomization_file(dir: &Path) -> Result<PathBuf> {
    ["kustomization.yaml", "kustomization.yml", "Kustomization"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .with_context(|| format!("{} has no kustomization.yaml", dir.display()))
}

fn strings(v: &Value, field: &str) -> Result<Vec<String>> {
    let Some(seq) = v.as_sequence() else {
        bail!("`{field}` must be a list");
    };
    seq.iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .with_context(|| format!("`{field}` holds a non-string: {s:?}"))
        })
        .collect()
}

fn parse_kustomization(text: &str) -> Result<Kustomization> {
    let doc: Mapping = serde_norway::from_str(text).context("not a YAML mapping")?;
    let mut k = Kustomization::default();
    for (key, value) in &doc {
        let key = key.as_str().context("a non-string key")?;
        match key {
            "apiVersion" => {
                let v = value.as_str().unwrap_or("");
                if !v.starts_with("kustomize.config.k8s.io/") {
                    bail!("apiVersion {v:?} is not kustomize.config.k8s.io/…");
                }
            }
            "kind" => match value.as_str() {
                Some("Kustomization") => {}
                Some("Component") => k.component = true,
                other => bail!("kind {other:?}: expected Kustomization or Component"),
            },
            "namespace" => {
                k.namespace = Some(
                    value
                        .as_str()
                        .context("`namespace` must be a string")?
                        .to_owned(),
                );
            }
            "resources" => k.resources = strings(value, key)?,
            "components" => k.components = strings(value, key)?,
            "labels" => k.labels = parse_labels(value)?,
            other => bail!(
                "field `{other}` is not implemented by xtask's kustomize subset \
                 (xtask/src/validate/kustomize.rs: resources, components, namespace, labels); \
                 implement it there or do without it"
            ),
        }
    }
    Ok(k)
}

fn parse_labels(v: &Value) -> Result<Vec<LabelSet>> {
    let seq = v.as_sequence().context("`labels` must be a list")?;
    let mut sets = Vec::new();
    for entry in seq {
        let m = entry
            .as_mapping()
            .context("a `labels` entry must be a mapping")?;
        let mut set = LabelSet {
            pairs: Vec::new(),
            include_templates: false,
        };
        for (key, value) in m {
            match key.as_str() {
                Some("pairs") => {
                    let pairs = value
                        .as_mapping()
                        .context("`labels[].pairs` must be a mapping")?;
                    for (k, v) in pairs {
                        let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                            bail!("`labels[].pairs` must map strings to strings: {k:?}: {v:?}");
                        };
                        set.pairs.push((k.to_owned(), v.to_owned()));
                    }
                }
                Some("includeSelectors") => {
                    if value.as_bool() != Some(false) {
                        bail!(
                            "`labels[].includeSelectors: true` is not implemented (it rewrites \
                             selectors); xtask's subset renders only `false`"
                        );
                    }
                }
                Some("includeTemplates") => {
                    set.include_templates = value
                        .as_bool()
                        .context("`labels[].includeTemplates` must be a boolean")?;
                }
                other => {
                    bail!("`labels[].{other:?}` is not implemented by xtask's kustomize subset")
                }
            }
        }
        sets.push(set);
    }
    Ok(sets)
}

/// A file resource must stay inside its kustomization's directory (kustomize's default load
/// restriction); directories may be anywhere.
fn confined_file(dir: &Path, entry: &str) -> Result<PathBuf> {
    let rel = Path::new(entry);
    if rel
        .components()
        .any(|c| !matches!(c, PathPart::Normal(_) | PathPart::CurDir))
    {
        bail!(
            "resource file {entry:?} of {} leaves its directory (kustomize refuses that too)",
            dir.display()
        );
    }
    Ok(dir.join(rel))
}

/// The objects of one YAML file; empty documents are skipped.
pub fn parse_objects(text: &str, origin: &str) -> Result<Vec<Object>> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc)
            .with_context(|| format!("{origin}: document {} is not valid YAML", i + 1))?;
        match value {
            Value::Null => {}
            Value::Mapping(m) => {
                let o = Object(m);
                if o.kind().is_empty() || o.api_version().is_empty() || o.name().is_empty() {
                    bail!(
                        "{origin}: document {} lacks kind, apiVersion or metadata.name",
                        i + 1
                    );
                }
                out.push(o);
            }
            other => bail!("{origin}: document {} is not a mapping: {other:?}", i + 1),
        }
    }
    Ok(out)
}

fn build(dir: &Path, stack: &mut Vec<PathBuf>, as_component: bool) -> Result<Vec<Object>> {
    let canonical = dir
        .canonicalize()
        .with_context(|| format!("kustomization directory {} does not exist", dir.display()))?;
    if stack.contains(&canonical) {
        bail!("{} includes itself (through {stack:?})", dir.display());
    }
    if stack.len() >= MAX_DEPTH {
        bail!(
            "kustomizations nest deeper than {MAX_DEPTH} at {}",
            dir.display()
        );
    }
    let file = kustomization_file(dir)?;
    let k = parse_kustomization(&read_bounded(&file)?)
        .with_context(|| format!("in {}", file.display()))?;
    if k.component != as_component {
        bail!(
            "{}: a {} listed under `{}`",
            file.display(),
            if k.component {
                "Component"
            } else {
                "Kustomization"
            },
            if as_component {
                "components"
            } else {
                "resources"
            }
        );
    }
    stack.push(canonical);
    let mut objects = Vec::new();
    for entry in &k.resources {
        let path = dir.join(entry);
        if path.is_dir() {
            objects.extend(build(&path, stack, false)?);
        } else {
            let path = confined_file(dir, entry)?;
            let origin = path.display().to_string();
            objects.extend(parse_objects(&read_bounded(&path)?, &origin)?);
        }
    }
    for entry in &k.components {
        objects.extend(build(&dir.join(entry), stack, true)?);
    }
    stack.pop();
    if let Some(ns) = &k.namespace {
        set_namespace(&mut objects, ns)?;
    }
    for set in &k.labels {
        add_labels(&mut objects, set);
    }
    reject_duplicates(&objects)?;
    Ok(objects)
}

fn mapping_at<'a>(m: &'a mut Mapping, path: &[&str]) -> &'a mut Mapping {
    let mut cur = m;
    for key in path {
        let entry = cur
            .entry(Value::from(*key))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if !entry.is_mapping() {
            *entry = Value::Mapping(Mapping::new());
        }
        cur = entry.as_mapping_mut().expect("made a mapping above");
    }
    cur
}

/// kustomize's `namespace:`: namespaced objects move into it, a Namespace object is renamed to
/// it, and ServiceAccount subjects of (Cluster)RoleBindings that name an account of this set
/// follow their account.
fn set_namespace(objects: &mut [Object], ns: &str) -> Result<()> {
    let accounts: Vec<(String, String)> = objects
        .iter()
        .filter(|o| o.kind() == "ServiceAccount")
        .map(|o| (o.namespace().to_owned(), o.name().to_owned()))
        .collect();
    for o in objects.iter_mut() {
        let kind = o.kind().to_owned();
        if kind == "Namespace" {
            mapping_at(&mut o.0, &["metadata"]).insert("name".into(), ns.into());
        } else if NAMESPACED_KINDS.contains(&kind.as_str()) {
            mapping_at(&mut o.0, &["metadata"]).insert("namespace".into(), ns.into());
        } else if !CLUSTER_SCOPED_KINDS.contains(&kind.as_str()) {
            bail!(
                "{}: xtask's kustomize subset does not know whether kind {kind} is namespaced; \
                 add it to NAMESPACED_KINDS or CLUSTER_SCOPED_KINDS in xtask/src/validate/kustomize.rs",
                o.id()
            );
        }
        if kind == "RoleBinding" || kind == "ClusterRoleBinding" {
            let Some(Value::Sequence(subjects)) = o.0.get_mut("subjects") else {
                continue;
            };
            for s in subjects.iter_mut().filter_map(Value::as_mapping_mut) {
                let is_account = s.get("kind").and_then(Value::as_str) == Some("ServiceAccount");
                let key = (
                    s.get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    s.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                );
                if is_account && accounts.contains(&key) {
                    s.insert("namespace".into(), ns.into());
                }
            }
        }
    }
    Ok(())
}

fn add_labels(objects: &mut [Object], set: &LabelSet) {
    for o in objects.iter_mut() {
        let template = set.include_templates && POD_TEMPLATE_KINDS.contains(&o.kind());
        let mut paths: Vec<&[&str]> = vec![&["metadata", "labels"]];
        if template {
            paths.push(&["spec", "template", "metadata", "labels"]);
        }
        for path in paths {
            let labels = mapping_at(&mut o.0, path);
            for (k, v) in &set.pairs {
                labels.insert(k.as_str().into(), v.as_str().into());
            }
        }
    }
}

fn reject_duplicates(objects: &[Object]) -> Result<()> {
    for (i, a) in objects.iter().enumerate() {
        if let Some(b) = objects[..i].iter().find(|b| {
            b.kind() == a.kind()
                && b.group() == a.group()
                && b.namespace() == a.namespace()
                && b.name() == a.name()
        }) {
            bail!("{} is defined twice (kustomize refuses that too)", b.id());
        }
    }
    Ok(())
}

fn kind_rank(kind: &str) -> usize {
    if let Some(i) = ORDER_FIRST.iter().position(|k| *k == kind) {
        i
    } else if let Some(i) = ORDER_LAST.iter().position(|k| *k == kind) {
        ORDER_FIRST.len() + 1 + i
    } else {
        ORDER_FIRST.len()
    }
}

/// Kustomize's legacy order: by kind rank, then (for kinds ranked alike) group, version, kind,
/// then name and namespace.
fn legacy_sort(objects: &mut [Object]) {
    objects.sort_by(|a, b| {
        let key = |o: &Object| {
            let version = o.api_version().rsplit('/').next().unwrap_or("").to_owned();
            (
                kind_rank(o.kind()),
                o.group().to_owned(),
                version,
                o.kind().to_owned(),
                o.name().to_owned(),
                o.namespace().to_owned(),
            )
        };
        key(a).cmp(&key(b))
    });
}

#[cfg(test)]
#[path = "kustomize_tests.rs"]
mod tests;
