//! The pod as this source reads it: only uid, name, namespace, resourceVersion, hostNetwork
//! and pod IPs are deserialized, everything else (labels, annotations, managedFields,
//! container statuses) is skipped by serde without being kept. A page of a list or a watch
//! event is therefore a few hundred bytes per pod in memory, not the full object.
//!
//! [`to_pod_meta`] checks what the apiserver sent before it reaches the directory: a name,
//! namespace or uid that no apiserver would accept is refused (and counted by the caller).
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

use super::super::pods::PodMeta;
use crate::untrusted::escape_str;

/// A `v1/Pod`, reduced to what attribution needs.
#[derive(Clone, Debug, Deserialize)]
pub struct SlimPod {
    #[serde(deserialize_with = "slim_object_meta")]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<SlimSpec>,
    #[serde(default)]
    status: Option<SlimStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimSpec {
    #[serde(default)]
    host_network: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimStatus {
    #[serde(default, rename = "podIPs")]
    pod_ips: Option<Vec<PodIp>>,
    /// Older apiservers (and pods not yet updated) set only `podIP`.
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
struct PodIp {
    ip: String,
}

/// The metadata fields kept; the watcher needs `resourceVersion` to resume.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
}

fn slim_object_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        ..ObjectMeta::default()
    })
}

impl k8s_openapi::Resource for SlimPod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for SlimPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Dual-stack pods have two; more is not a pod an apiserver produced.
const MAX_POD_IPS: usize = 4;

/// Why a pod from the apiserver was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("a pod without {0}")]
    Missing(&'static str),
    #[error("pod {field} is not a valid Kubernetes {what} ({len} bytes, starting \"{start}\")")]
    Invalid {
        field: &'static str,
        what: &'static str,
        len: usize,
        start: String,
    },
    #[error("pod {pod} has {count} IPs (at most {MAX_POD_IPS} are taken)")]
    TooManyIps { pod: String, count: usize },
    #[error("pod {pod} has an IP that is not an address: \"{start}\"")]
    BadIp { pod: String, start: String },
}

fn invalid(field: &'static str, what: &'static str, value: &str) -> Refused {
    Refused::Invalid {
        field,
        what,
        len: value.len(),
        start: escape_str(&value.chars().take(40).collect::<String>()).into_owned(),
    }
}

/// `metadata.uid`: a UUID as the apiserver writes it (lowercase hex and dashes).
pub fn checked_uid(pod: &SlimPod) -> Result<String, Refused> {
    let uid = pod.metadata.uid.as_deref().ok_or(Refused::Missing("uid"))?;
    let ok =
        (1..=64).contains(&uid.len()) && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if !ok {
        return Err(invalid("uid", "UID", uid));
    }
    Ok(uid.to_ascii_lowercase())
}

/// A DNS label (namespaces) or subdomain (pod names): lowercase letters, digits, `-` (and
/// `.` in subdomains), bounded in length. Anything else would be a hostile or corrupt body.
fn checked_dns<'a>(
    value: Option<&'a str>,
    field: &'static str,
    max: usize,
    dots: bool,
) -> Result<&'a str, Refused> {
    let value = value.ok_or(Refused::Missing(field))?;
    let what = if dots { "DNS subdomain" } else { "DNS label" };
    let ok = (1..=max).contains(&value.len())
        && value.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
        });
    if ok {
        Ok(value)
    } else {
        Err(invalid(field, what, value))
    }
}

/// The directory's view of a pod, or why it is refused.
pub fn to_pod_meta(pod: &SlimPod) -> Result<PodMeta, Refused> {
    let uid = checked_uid(pod)?;
    let namespace = checked_dns(pod.metadata.namespace.as_deref(), "namespace", 63, false)?;
    let name = checked_dns(pod.metadata.name.as_deref(), "name", 253, true)?;
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let mut ips = Vec::new();
    // A hostNetwork pod's IPs are the node's: attributing them to the pod would name it
    // for every host process's traffic.
    if !host_network {
        let status = pod.status.as_ref();
        let listed: Vec<&str> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|v| v.iter().map(|p| p.ip.as_str()).collect())
            .unwrap_or_default();
        let listed = if listed.is_empty() {
            status
                .and_then(|s| s.pod_ip.as_deref())
                .into_iter()
                .collect()
        } else {
            listed
        };
        if listed.len() > MAX_POD_IPS {
            return Err(Refused::TooManyIps {
                pod: format!("{namespace}/{name}"),
                count: listed.len(),
            });
        }
        for text in listed.into_iter().filter(|t| !t.is_empty()) {
            let ip: IpAddr = text.parse().map_err(|_| Refused::BadIp {
                pod: format!("{namespace}/{name}"),
                start: escape_str(&text.chars().take(40).collect::<String>()).into_owned(),
            })?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    Ok(PodMeta {
        uid,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        ips,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> SlimPod {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_real_pod_keeps_only_what_attribution_needs() {
        let list: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/kube/list-page-1.json"
        )))
        .unwrap();
        let pod: SlimPod = serde_json::from_value(list["items"][0].clone()).unwrap();
        assert!(pod.metadata.labels.is_none() && pod.metadata.managed_fields.is_none());
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("48211"));
        let meta = to_pod_meta(&pod).unwrap();
        assert_eq!(meta.namespace, "shop");
        assert_eq!(meta.name, "frontend-7d9c6b5f4-x2lqz");
        assert_eq!(meta.uid, "0b6c3a8e-5d0c-4a4e-9a57-2f4f1e6b8c11");
        let ips: Vec<String> = meta.ips.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(ips, ["10.244.1.17", "fd00:10:244:1::11"]);
    }

    #[test]
    fn host_network_pods_get_no_ips_and_pod_ip_is_a_fallback() {
        let host = parse(
            r#"{"metadata":{"name":"kube-proxy-abcde","namespace":"kube-system","uid":"11111111-2222-3333-4444-555555555555"},
                "spec":{"hostNetwork":true},"status":{"podIP":"192.0.2.10","podIPs":[{"ip":"192.0.2.10"}]}}"#,
        );
        assert!(to_pod_meta(&host).unwrap().ips.is_empty());
        let old = parse(
            r#"{"metadata":{"name":"a","namespace":"b","uid":"AB-12"},"status":{"podIP":"10.0.0.9"}}"#,
        );
        let meta = to_pod_meta(&old).unwrap();
        assert_eq!(meta.uid, "ab-12");
        assert_eq!(meta.ips, ["10.0.0.9".parse::<IpAddr>().unwrap()]);
        let pending =
            parse(r#"{"metadata":{"name":"a","namespace":"b","uid":"1"},"spec":null,"status":{}}"#);
        assert!(to_pod_meta(&pending).unwrap().ips.is_empty());
    }

    #[test]
    fn hostile_fields_are_refused_with_what_was_wrong() {
        let huge = "x".repeat(1 << 20);
        let cases = [
            (format!(r#"{{"metadata":{{"name":"{huge}","namespace":"b","uid":"1"}}}}"#), "name"),
            (r#"{"metadata":{"name":"a","namespace":"B/../c","uid":"1"}}"#.into(), "namespace"),
            (r#"{"metadata":{"name":"a","namespace":"b","uid":"1 OR 1"}}"#.into(), "uid"),
            (r#"{"metadata":{"name":"a","namespace":"b"}}"#.into(), "without uid"),
            (
                r#"{"metadata":{"name":"a","namespace":"b","uid":"1"},"status":{"podIP":"10.0.0.300"}}"#
                    .into(),
                "not an address",
            ),
            (
                r#"{"metadata":{"name":"a","namespace":"b","uid":"1"},"status":{"podIPs":[{"ip":"10.0.0.1"},{"ip":"10.0.0.2"},{"ip":"10.0.0.3"},{"ip":"10.0.0.4"},{"ip":"10.0.0.5"}]}}"#
                    .into(),
                "5 IPs",
            ),
        ];
        for (json, expected) in cases {
            let err = to_pod_meta(&parse(&json)).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should name {expected:?}");
            assert!(
                err.len() < 200,
                "the error quotes a bounded prefix: {}",
                err.len()
            );
        }
    }
}
