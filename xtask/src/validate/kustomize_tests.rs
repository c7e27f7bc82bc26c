use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::cmd::workspace_root;

/// A directory of files for one test, removed when dropped.
struct Tree(PathBuf);

impl Tree {
    fn new(files: &[(&str, &str)]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "xtask-kustomize-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        Self(root)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ids(objects: &[Object]) -> Vec<String> {
    objects.iter().map(Object::id).collect()
}

fn labels(o: &Object, path: &[&str]) -> Mapping {
    let mut v = &Value::Mapping(o.0.clone());
    for k in path {
        v = v
            .get(k)
            .unwrap_or_else(|| panic!("{} has no {path:?}", o.id()));
    }
    v.as_mapping().unwrap().clone()
}

const SA_AND_BINDING: &str = "\
apiVersion: v1
kind: ServiceAccount
metadata: {name: app, namespace: old}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: app}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: app}
subjects:
  - {kind: ServiceAccount, name: app, namespace: old}
  - {kind: ServiceAccount, name: someone-else, namespace: kube-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: old}
";

#[test]
fn namespace_moves_namespaced_objects_renames_the_namespace_and_follows_accounts() {
    let t = Tree::new(&[
        (
            "kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             namespace: new\nresources: [all.yaml]\n",
        ),
        ("all.yaml", SA_AND_BINDING),
    ]);
    let objects = render(&t.0).unwrap();
    // Legacy order: Namespace, ServiceAccount, ClusterRoleBinding.
    assert_eq!(
        ids(&objects),
        [
            "Namespace new",
            "ServiceAccount new/app",
            "ClusterRoleBinding app"
        ]
    );
    let subjects = objects[2].0.get("subjects").unwrap().as_sequence().unwrap();
    assert_eq!(subjects[0].get("namespace").unwrap().as_str(), Some("new"));
    // An account that is not part of the set keeps its namespace.
    assert_eq!(
        subjects[1].get("namespace").unwrap().as_str(),
        Some("kube-system")
    );
    // Cluster-scoped: no namespace added.
    assert_eq!(objects[2].namespace(), "");
}

#[test]
fn labels_reach_metadata_and_pod_templates_but_not_selectors() {
    let ds = "\
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: d, namespace: n}
spec:
  selector: {matchLabels: {app: d}}
  template:
    metadata: {labels: {app: d}}
    spec: {containers: [{name: c, image: i}]}
";
    for (templates, expect_in_template) in [("true", true), ("false", false)] {
        let kustomization = format!(
            "kind: Kustomization\nlabels:\n  - pairs: {{team: net}}\n    includeSelectors: \
             false\n    includeTemplates: {templates}\nresources: [ds.yaml]\n"
        );
        let t = Tree::new(&[("kustomization.yaml", &kustomization), ("ds.yaml", ds)]);
        let o = &render(&t.0).unwrap()[0];
        assert_eq!(
            labels(o, &["metadata", "labels"])
                .get("team")
                .and_then(Value::as_str),
            Some("net")
        );
        let template = labels(o, &["spec", "template", "metadata", "labels"]);
        assert_eq!(template.contains_key("team"), expect_in_template);
        assert_eq!(template.get("app").and_then(Value::as_str), Some("d"));
        let selector = labels(o, &["spec", "selector", "matchLabels"]);
        assert!(!selector.contains_key("team"), "{selector:?}");
    }
}

#[test]
fn directories_and_components_nest_and_transform_what_they_include() {
    let t = Tree::new(&[
        (
            "base/kustomization.yaml",
            "kind: Kustomization\nnamespace: inner\nresources: [sa.yaml]\n",
        ),
        (
            "base/sa.yaml",
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n",
        ),
        (
            "comp/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources: [cm.yaml]\n",
        ),
        (
            "comp/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
        ),
        (
            "overlay/kustomization.yaml",
            "kind: Kustomization\nnamespace: outer\nresources: [../base]\ncomponents: [../comp]\n",
        ),
    ]);
    assert_eq!(
        ids(&render(&t.0.join("base")).unwrap()),
        ["ServiceAccount inner/a"]
    );
    assert_eq!(
        ids(&render(&t.0.join("overlay")).unwrap()),
        ["ServiceAccount outer/a", "ConfigMap outer/c"]
    );
}

#[test]
fn what_the_subset_does_not_implement_or_kustomize_refuses_is_an_error() {
    let sa = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n";
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("kustomization.yaml", "kind: Kustomization\npatches: []\n")],
            "field `patches` is not implemented",
        ),
        (
            &[(
                "kustomization.yaml",
                "kind: Kustomization\nlabels: [{pairs: {a: b}, includeSelectors: true}]\n",
            )],
            "includeSelectors: true` is not implemented",
        ),
        (
            &[
                (
                    "kustomization.yaml",
                    "kind: Kustomization\nnamespace: n\nresources: [x.yaml]\n",
                ),
                (
                    "x.yaml",
                    "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
                ),
            ],
            "does not know whether kind Widget is namespaced",
        ),
        (
            &[
                (
                    "k/kustomization.yaml",
                    "kind: Kustomization\nresources: [../sa.yaml]\n",
                ),
                ("sa.yaml", sa),
            ],
            "leaves its directory",
        ),
        (
            &[(
                "kustomization.yaml",
                "kind: Kustomization\nresources: [.]\n",
            )],
            "includes itself",
        ),
        (
            &[
                (
                    "kustomization.yaml",
                    "kind: Kustomization\nresources: [a.yaml, b.yaml]\n",
                ),
                ("a.yaml", sa),
                ("b.yaml", sa),
            ],
            "ServiceAccount a is defined twice",
        ),
        (
            &[
                (
                    "kustomization.yaml",
                    "kind: Kustomization\nresources: [a.yaml]\n",
                ),
                ("a.yaml", "apiVersion: v1\nkind: ServiceAccount\n"),
            ],
            "lacks kind, apiVersion or metadata.name",
        ),
        (
            &[
                (
                    "kustomization.yaml",
                    "kind: Kustomization\ncomponents: [c]\n",
                ),
                ("c/kustomization.yaml", "kind: Kustomization\n"),
            ],
            "a Kustomization listed under `components`",
        ),
        (
            &[(
                "kustomization.yaml",
                "kind: Kustomization\nresources: [missing.yaml]\n",
            )],
            "cannot read",
        ),
    ];
    for (files, expected) in cases {
        let t = Tree::new(files);
        let dir = if files[0].0.starts_with("k/") {
            t.0.join("k")
        } else {
            t.0.clone()
        };
        let err = format!("{:#}", render(&dir).expect_err(expected));
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
}

#[test]
fn legacy_order_puts_namespaces_and_rbac_first_and_sorts_by_name_within_a_kind() {
    let docs = [
        ("apps/v1", "DaemonSet", "d"),
        ("monitoring.coreos.com/v1", "PodMonitor", "p"),
        ("v1", "Service", "s"),
        ("scheduling.k8s.io/v1", "PriorityClass", "pc"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole", "z"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole", "a"),
        ("v1", "ServiceAccount", "sa"),
        ("v1", "Namespace", "n"),
    ];
    let mut objects: Vec<Object> = docs
        .iter()
        .map(|(api, kind, name)| {
            parse_objects(
                &format!("apiVersion: {api}\nkind: {kind}\nmetadata: {{name: {name}}}\n"),
                "t",
            )
            .unwrap()
            .remove(0)
        })
        .collect();
    legacy_sort(&mut objects);
    assert_eq!(
        ids(&objects),
        [
            "Namespace n",
            "ServiceAccount sa",
            "ClusterRole a",
            "ClusterRole z",
            "Service s",
            "PriorityClass pc",
            // Neither listed: by group, apps before monitoring.coreos.com.
            "DaemonSet d",
            "PodMonitor p",
        ]
    );
}

#[test]
fn the_shipped_base_renders_into_its_namespace_with_its_labels() {
    let objects = render(&workspace_root().join("deploy/kubernetes")).unwrap();
    assert_eq!(objects[0].id(), "Namespace linkprobe");
    for o in &objects {
        let namespaced = NAMESPACED_KINDS.contains(&o.kind());
        assert_eq!(o.namespace() == "linkprobe", namespaced, "{}", o.id());
        assert_eq!(
            labels(o, &["metadata", "labels"])
                .get("app.kubernetes.io/part-of")
                .and_then(Value::as_str),
            Some("linkprobe"),
            "{}",
            o.id()
        );
    }
    let kinds: Vec<&str> = objects.iter().map(Object::kind).collect();
    for kind in [
        "ServiceAccount",
        "ClusterRoleBinding",
        "PriorityClass",
        "DaemonSet",
        "Service",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    // The monitors need the operator's CRDs: components, not in the base.
    assert!(!kinds.contains(&"PodMonitor") && !kinds.contains(&"ServiceMonitor"));
    let ds = objects.iter().find(|o| o.kind() == "DaemonSet").unwrap();
    assert!(labels(ds, &["spec", "template", "metadata", "labels"])
        .contains_key("app.kubernetes.io/part-of"));
    // The YAML stream parses back into the same objects.
    let text = to_yaml(&objects).unwrap();
    assert_eq!(parse_objects(&text, "rendered").unwrap(), objects);
}
