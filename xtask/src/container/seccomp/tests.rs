//! The derived profile against the base, read the two ways runtimes read it.
use std::collections::BTreeSet;

use serde_json::Value;

use super::*;

/// How a reader turns the profile into the filter a container gets.
#[derive(Clone, Copy, Debug)]
enum Reader {
    /// podman / CRI-O: a rule counts when the container has all of `includes.caps`, none of
    /// `excludes.caps`, and (amd64) its `includes.arches` name amd64.
    Podman,
    /// containerd (OCI `LinuxSeccomp`): every rule counts.
    Oci,
}

/// The rules for `syscall` a container with `caps` gets, in order: (action, errno, args).
fn rules_for(profile: &Value, reader: Reader, syscall: &str, caps: &[&str]) -> Vec<String> {
    profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| names(r).contains(&syscall))
        .filter(|r| match reader {
            Reader::Oci => true,
            Reader::Podman => {
                let list = |p: &str| -> Vec<&str> {
                    r.pointer(p)
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default()
                };
                let arches = list("/includes/arches");
                list("/includes/caps").iter().all(|c| caps.contains(c))
                    && !list("/excludes/caps").iter().any(|c| caps.contains(c))
                    && (arches.is_empty() || arches.contains(&"amd64"))
            }
        })
        .map(|r| format!("{} {} {}", r["action"], r["errnoRet"], r["args"]))
        .collect()
}

/// What an argument-less call of `syscall` gets: the first rule (libseccomp keeps the first of
/// several argument-less rules), else the default action.
fn outcome(profile: &Value, reader: Reader, syscall: &str, caps: &[&str]) -> String {
    rules_for(profile, reader, syscall, caps)
        .into_iter()
        .next()
        .unwrap_or_else(|| format!("default {}", profile["defaultAction"]))
}

const CAP_SETS: [&[&str]; 6] = [
    &[],
    &["CAP_SYS_ADMIN"],
    &["CAP_BPF"],
    &["CAP_PERFMON"],
    &["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"],
    &["CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON"],
];

fn base() -> Value {
    serde_json::from_str(PODMAN_DEFAULT).unwrap()
}

fn all_names(profile: &Value) -> BTreeSet<String> {
    profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| names(r).into_iter().map(str::to_owned))
        .collect()
}

#[test]
fn the_pinned_base_denies_both_syscalls_without_sys_admin() {
    let base = base();
    for reader in [Reader::Podman] {
        for g in GRANTS {
            let got = outcome(&base, reader, g.syscall, &["CAP_BPF", "CAP_PERFMON"]);
            assert!(
                got.starts_with("\"SCMP_ACT_ERRNO\""),
                "{}: {got}",
                g.syscall
            );
            let got = outcome(&base, reader, g.syscall, &["CAP_SYS_ADMIN"]);
            assert!(
                got.starts_with("\"SCMP_ACT_ALLOW\""),
                "{}: {got}",
                g.syscall
            );
        }
    }
}

#[test]
fn grants_allow_under_their_capability_for_both_readers() {
    let derived = derive(&base()).unwrap();
    for g in GRANTS {
        let with = outcome(&derived, Reader::Podman, g.syscall, &[g.cap]);
        assert_eq!(
            with, "\"SCMP_ACT_ALLOW\" null []",
            "{} under {}",
            g.syscall, g.cap
        );
        let without = outcome(&derived, Reader::Podman, g.syscall, &["CAP_NET_ADMIN"]);
        assert_eq!(
            without, "\"SCMP_ACT_ERRNO\" 1 []",
            "{} without {}",
            g.syscall, g.cap
        );
        let admin = outcome(&derived, Reader::Podman, g.syscall, &["CAP_SYS_ADMIN"]);
        assert_eq!(
            admin, "\"SCMP_ACT_ALLOW\" null []",
            "{} under CAP_SYS_ADMIN",
            g.syscall
        );
        // containerd: no capability conditions; the allow must come first.
        let oci = outcome(&derived, Reader::Oci, g.syscall, &[]);
        assert_eq!(
            oci, "\"SCMP_ACT_ALLOW\" null []",
            "{} read as OCI",
            g.syscall
        );
    }
}

#[test]
fn under_podman_an_allow_and_a_deny_never_both_apply() {
    let derived = derive(&base()).unwrap();
    for g in GRANTS {
        for caps in CAP_SETS {
            let rules = rules_for(&derived, Reader::Podman, g.syscall, caps);
            let actions: BTreeSet<&str> =
                rules.iter().map(|r| r.split(' ').next().unwrap()).collect();
            assert_eq!(actions.len(), 1, "{} with {caps:?}: {rules:?}", g.syscall);
        }
    }
}

#[test]
fn every_other_syscall_is_filtered_as_podmans_default_does() {
    let base = base();
    let derived = derive(&base).unwrap();
    assert_eq!(all_names(&base), all_names(&derived));
    let granted: Vec<&str> = GRANTS.iter().map(|g| g.syscall).collect();
    for name in all_names(&base)
        .iter()
        .filter(|n| !granted.contains(&n.as_str()))
    {
        for caps in CAP_SETS {
            for reader in [Reader::Podman, Reader::Oci] {
                assert_eq!(
                    rules_for(&base, reader, name, caps),
                    rules_for(&derived, reader, name, caps),
                    "{name} with {caps:?} ({reader:?})"
                );
            }
        }
    }
    // And the rest of the profile (default action, errno, architectures) is the base's.
    for key in [
        "defaultAction",
        "defaultErrnoRet",
        "defaultErrno",
        "archMap",
    ] {
        assert_eq!(base[key], derived[key], "{key}");
    }
    let added =
        derived["syscalls"].as_array().unwrap().len() - base["syscalls"].as_array().unwrap().len();
    assert_eq!(added, 4, "two allow rules, two deny rules of their own");
}

#[test]
fn the_shipped_profile_is_the_derived_one() {
    let shipped = std::fs::read_to_string(shipped_path()).unwrap();
    assert_eq!(
        shipped,
        derive_text(PODMAN_DEFAULT).unwrap(),
        "deploy/seccomp/linkprobe.json is stale: run `cargo xtask seccomp`"
    );
}

#[test]
fn derivation_is_idempotent_in_effect() {
    // Deriving from the derived profile finds the grants' own deny rules and adds the allows
    // again: the outcome for every capability set is unchanged.
    let once = derive(&base()).unwrap();
    let twice = derive(&once).unwrap();
    for g in GRANTS {
        for caps in CAP_SETS {
            for reader in [Reader::Podman, Reader::Oci] {
                assert_eq!(
                    outcome(&once, reader, g.syscall, caps),
                    outcome(&twice, reader, g.syscall, caps)
                );
            }
        }
    }
}

#[test]
fn a_profile_of_another_shape_is_refused_with_the_reason() {
    let no_deny = serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["bpf", "read"], "action": "SCMP_ACT_ALLOW"}]
    });
    let err = derive(&no_deny).unwrap_err().to_string();
    assert!(err.contains("no deny rule for `bpf`"), "{err}");
    let err = derive(&serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no `syscalls` array"), "{err}");
    assert!(derive_text("{not json").is_err());
}

#[test]
fn a_deny_rule_naming_only_the_syscall_is_replaced_not_left_empty() {
    let profile = serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["bpf"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["perf_event_open"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}}
        ]
    });
    let derived = derive(&profile).unwrap();
    let rules = derived["syscalls"].as_array().unwrap();
    assert_eq!(rules.len(), 4);
    assert!(rules.iter().all(|r| !names(r).is_empty()));
    assert_eq!(
        rules[3]["excludes"]["caps"],
        serde_json::json!(["CAP_SYS_ADMIN", "CAP_PERFMON"])
    );
    assert_eq!(rules[1]["excludes"]["caps"], serde_json::json!(["CAP_BPF"]));
}

#[test]
fn the_oci_reading_drops_the_conditions_only() {
    let text = derive_text(PODMAN_DEFAULT).unwrap();
    let oci: Value = serde_json::from_str(&as_oci(&text).unwrap()).unwrap();
    let derived: Value = serde_json::from_str(&text).unwrap();
    let rules = oci["syscalls"].as_array().unwrap();
    assert_eq!(rules.len(), derived["syscalls"].as_array().unwrap().len());
    assert!(rules
        .iter()
        .all(|r| r.get("includes").is_none() && r.get("excludes").is_none()));
    for g in GRANTS {
        assert_eq!(
            outcome(&oci, Reader::Podman, g.syscall, &[]),
            "\"SCMP_ACT_ALLOW\" null []"
        );
    }
}
