//! The Prometheus Operator's kinds (PodMonitor, ServiceMonitor) are not in kubernetes-validate's
//! schemas. Their published CRDs are kept in xtask/fixtures/prometheus-operator-crd/ (copied
//! verbatim from prometheus-operator's example/prometheus-operator-crd/, see the README there);
//! this turns a CRD's `openAPIV3Schema` into a JSON Schema (draft 4, whose keywords OpenAPI v3
//! schemas use) that python's `jsonschema` checks the rendered objects against, strictly, as
//! the API server does with field validation `Strict`: an unknown field is an error.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Map, Value};

use super::kustomize::parse_objects;
use crate::cmd::workspace_root;

/// The CRDs kept as fixtures, one per kind that the manifests use.
pub const CRD_FIXTURES: &[&str] = &[
    "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com_servicemonitors.yaml",
];

pub fn fixtures_dir() -> PathBuf {
    workspace_root().join("xtask/fixtures/prometheus-operator-crd")
}

/// One custom kind's schema.
#[derive(Debug)]
pub struct CrdSchema {
    /// `group/version`, as objects spell it in `apiVersion`.
    pub api_version: String,
    pub kind: String,
    /// The CRD's `operator.prometheus.io/version` annotation, for the output.
    pub operator_version: String,
    pub schema: Value,
}

/// Every served version of the CRD at `path`, as JSON Schemas.
pub fn load(path: &Path) -> Result<Vec<CrdSchema>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the CRD fixture {}", path.display()))?;
    let objects = parse_objects(&text, &path.display().to_string())?;
    let [crd] = objects.as_slice() else {
        bail!("{}: expected one CustomResourceDefinition", path.display());
    };
    if crd.kind() != "CustomResourceDefinition" {
        bail!(
            "{}: {} is not a CustomResourceDefinition",
            path.display(),
            crd.id()
        );
    }
    let crd: Value = serde_json::to_value(&crd.0).context("CRD as JSON")?;
    let spec = &crd["spec"];
    let group = spec["group"].as_str().context("CRD without spec.group")?;
    let kind = spec["names"]["kind"]
        .as_str()
        .context("CRD without spec.names.kind")?;
    let operator_version = crd["metadata"]["annotations"]["operator.prometheus.io/version"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();
    let versions = spec["versions"]
        .as_array()
        .context("CRD without spec.versions")?;
    let mut out = Vec::new();
    for v in versions.iter().filter(|v| v["served"] == json!(true)) {
        let name = v["name"].as_str().context("a CRD version without a name")?;
        let api_version = format!("{group}/{name}");
        let schema = v["schema"]["openAPIV3Schema"].clone();
        if !schema.is_object() {
            bail!("{}: version {name} has no openAPIV3Schema", path.display());
        }
        out.push(CrdSchema {
            schema: json_schema(&api_version, kind, schema),
            api_version,
            kind: kind.to_owned(),
            operator_version: operator_version.clone(),
        });
    }
    if out.is_empty() {
        bail!("{}: no served version", path.display());
    }
    Ok(out)
}

/// The JSON Schema of one object of the kind: the structural schema made strict, with
/// `apiVersion`, `kind` and the metadata fields a manifest may set pinned down.
pub fn json_schema(api_version: &str, kind: &str, openapi: Value) -> Value {
    let mut schema = strict(openapi);
    let props = schema
        .as_object_mut()
        .and_then(|s| s.get_mut("properties"))
        .and_then(Value::as_object_mut);
    if let Some(props) = props {
        props.insert("apiVersion".into(), json!({"enum": [api_version]}));
        props.insert("kind".into(), json!({"enum": [kind]}));
        let string_map = json!({"type": "object", "additionalProperties": {"type": "string"}});
        props.insert(
            "metadata".into(),
            json!({
                "type": "object",
                "required": ["name"],
                "additionalProperties": false,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "namespace": {"type": "string"},
                    "labels": string_map,
                    "annotations": string_map,
                },
            }),
        );
    }
    if let Some(s) = schema.as_object_mut() {
        s.insert(
            "$schema".into(),
            json!("http://json-schema.org/draft-04/schema#"),
        );
        s.insert(
            "required".into(),
            json!(["apiVersion", "kind", "metadata", "spec"]),
        );
    }
    schema
}

/// OpenAPI v3 structural schema → JSON Schema: objects with `properties` and no
/// `additionalProperties` reject unknown fields (unless marked
/// `x-kubernetes-preserve-unknown-fields`), `nullable` admits null, and the `x-kubernetes-*`
/// annotations are dropped (`x-kubernetes-int-or-string` comes with its own `anyOf`).
fn strict(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let preserve = m.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            let nullable = m.get("nullable") == Some(&json!(true));
            let mut out: Map<String, Value> = m
                .into_iter()
                .filter(|(k, _)| !k.starts_with("x-kubernetes-") && k != "nullable")
                .map(|(k, v)| {
                    // `properties` maps field names to schemas: recurse into the schemas,
                    // never treat a field name as a keyword.
                    let v = match (k.as_str(), v) {
                        ("properties", Value::Object(fields)) => {
                            Value::Object(fields.into_iter().map(|(f, s)| (f, strict(s))).collect())
                        }
                        (_, v) => strict(v),
                    };
                    (k, v)
                })
                .collect();
            if out.contains_key("properties")
                && !out.contains_key("additionalProperties")
                && !preserve
            {
                out.insert("additionalProperties".into(), json!(false));
            }
            if nullable {
                if let Some(Value::String(t)) = out.get("type").cloned() {
                    out.insert("type".into(), json!([t, "null"]));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(strict).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_with_properties_reject_unknown_fields_and_extensions_are_dropped() {
        let openapi = json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {
                        // A field named like a keyword stays a field.
                        "properties": {"type": "string"},
                        "port": {"anyOf": [{"type": "integer"}, {"type": "string"}],
                                 "x-kubernetes-int-or-string": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "properties": {"a": {"type": "string"}},
                                 "x-kubernetes-preserve-unknown-fields": true},
                        "maybe": {"type": "string", "nullable": true},
                    },
                },
            },
        });
        let s = json_schema("example.com/v1", "Widget", openapi);
        let spec = &s["properties"]["spec"];
        assert_eq!(spec["additionalProperties"], json!(false));
        assert_eq!(spec["properties"]["properties"], json!({"type": "string"}));
        assert_eq!(
            spec["properties"]["port"],
            json!({"anyOf": [{"type": "integer"}, {"type": "string"}]})
        );
        assert_eq!(
            spec["properties"]["labels"]["additionalProperties"],
            json!({"type": "string"})
        );
        assert!(spec["properties"]["free"]
            .get("additionalProperties")
            .is_none());
        assert_eq!(
            spec["properties"]["maybe"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(s["additionalProperties"], json!(false));
        assert_eq!(s["properties"]["kind"], json!({"enum": ["Widget"]}));
        assert_eq!(
            s["properties"]["apiVersion"],
            json!({"enum": ["example.com/v1"]})
        );
        assert_eq!(
            s["properties"]["metadata"]["additionalProperties"],
            json!(false)
        );
    }

    #[test]
    fn the_fixture_crds_give_strict_schemas_of_their_kinds() {
        let mut kinds = Vec::new();
        for f in CRD_FIXTURES {
            for crd in load(&fixtures_dir().join(f)).unwrap() {
                assert_eq!(crd.api_version, "monitoring.coreos.com/v1");
                assert_ne!(crd.operator_version, "unknown");
                let endpoints = match crd.kind.as_str() {
                    "PodMonitor" => "podMetricsEndpoints",
                    _ => "endpoints",
                };
                let endpoint = &crd.schema["properties"]["spec"]["properties"][endpoints]["items"];
                assert_eq!(
                    endpoint["additionalProperties"],
                    json!(false),
                    "{}",
                    crd.kind
                );
                assert!(endpoint["properties"]["tlsConfig"].is_object());
                let text = crd.schema.to_string();
                assert!(!text.contains("x-kubernetes-"), "{}", crd.kind);
                kinds.push(crd.kind);
            }
        }
        assert_eq!(kinds, ["PodMonitor", "ServiceMonitor"]);
    }
}
