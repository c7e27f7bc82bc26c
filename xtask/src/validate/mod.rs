//! `cargo xtask validate`, also a step of `cargo xtask test`: the deployment files checked by
//! the tools their users' clusters and Prometheus apply, never skipped (a missing tool is an
//! error, `cargo xtask setup` installs them):
//! - deploy/kubernetes rendered (kustomize subset, [`kustomize`]): the base and the base with
//!   each monitor component (overlays in xtask/fixtures/kustomize);
//! - the DaemonSet's least privilege, the daemon's RBAC and the scrape targets ([`checks`]);
//! - `kubernetes-validate --strict` on every built-in object for the oldest and newest
//!   Kubernetes it ships schemas for; PodMonitor and ServiceMonitor against the operator's
//!   CRD schemas with python's jsonschema ([`crd`]); each validator is first shown a broken
//!   object that it must reject;
//! - `yamllint` (.yamllint.yaml) on deploy/, `promtool check rules` and `promtool test rules`;
//! - the names the rules and dashboard query are exported: probe-user's unit test
//!   `deploy_rules_and_dashboard_use_only_exported_names`, run by name.
pub mod checks;
mod crd;
pub mod kustomize;
pub mod tools;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::{json, Value};

use self::kustomize::{render, to_yaml, Object};
use crate::cmd::{cargo, shown, target_dir, workspace_root};

/// The base and the overlays that add a monitor component, as users apply them.
const VARIANTS: &[(&str, &str)] = &[
    ("base", "deploy/kubernetes"),
    ("podmonitor", "xtask/fixtures/kustomize/podmonitor"),
    ("servicemonitor", "xtask/fixtures/kustomize/servicemonitor"),
];
const SCRAPE_CONFIG: &str = "deploy/kubernetes/prometheus-scrape-config.yaml";
/// probe-user's test that every metric name in the rules and the dashboard is exported.
const NAMES_TEST: &str =
    "pipeline::metrics::tests::deploy_rules_and_dashboard_use_only_exported_names";
/// Kinds validated against the operator's CRDs instead of kubernetes-validate's schemas.
const CRD_KINDS: &[&str] = &["PodMonitor", "ServiceMonitor"];

fn out_dir() -> PathBuf {
    target_dir().join("validate")
}

/// One step's header; its lines follow indented.
fn step(name: &str) -> Instant {
    println!("[validate] {name}");
    Instant::now()
}

fn done(start: Instant, what: &str) {
    println!(
        "[validate]   ok: {what} ({:.1}s)",
        start.elapsed().as_secs_f64()
    );
}

fn indented(text: &str) {
    for line in text.lines() {
        println!("[validate]     {line}");
    }
}

/// Runs a validator; returns its stdout and stderr together, and whether it exited 0.
fn output_of(cmd: &mut Command) -> Result<(String, bool)> {
    let command = shown(cmd);
    // An inline script is long: show its first line only.
    let first = command.lines().next().unwrap_or("");
    let more = if command.contains('\n') {
        " … (script)"
    } else {
        ""
    };
    println!("[validate]   $ {first}{more}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{command}`: run `cargo xtask setup`"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((text, out.status.success()))
}

pub fn validate() -> Result<()> {
    let start = Instant::now();
    if !tools::installed() {
        bail!(
            "the Python validators are not installed in {}: run `cargo xtask setup`",
            tools::venv_dir().display()
        );
    }
    let dir = out_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let t = step("render deploy/kubernetes (xtask's kustomize subset)");
    let mut variants = Vec::new();
    for (name, path) in VARIANTS {
        let objects =
            render(&workspace_root().join(path)).with_context(|| format!("rendering {path}"))?;
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, to_yaml(&objects)?)?;
        println!(
            "[validate]     {path} -> {} ({} objects)",
            file.display(),
            objects.len()
        );
        variants.push((*name, objects));
    }
    let base = &variants[0].1;
    indented(&base.iter().map(Object::id).collect::<Vec<_>>().join("\n"));
    done(t, "3 renderings");

    let t = step("DaemonSet: no privileged, no hostPID, measured capabilities, read-only root");
    indented(&checks::daemonset_security(base)?);
    done(t, "least privilege");

    let t = step("RBAC of the daemon's service account");
    indented(&checks::daemon_rbac(base)?.join("\n"));
    done(t, "pods get/list/watch and the proxy's reviews only");

    let t = step("scrape targets: Service, monitors and the plain scrape config");
    for (name, objects) in &variants {
        for line in checks::scrape_targets_match(objects)? {
            println!("[validate]     {name}: {line}");
        }
    }
    let config = std::fs::read_to_string(workspace_root().join(SCRAPE_CONFIG))?;
    indented(&checks::scrape_config_matches(base, &config)?);
    done(t, "all point at the DaemonSet's https-metrics port");

    // Every object of every rendering, once.
    let mut unique: Vec<&Object> = Vec::new();
    for o in variants.iter().flat_map(|(_, objects)| objects) {
        if !unique
            .iter()
            .any(|u| u.id() == o.id() && u.api_version() == o.api_version())
        {
            unique.push(o);
        }
    }
    let (custom, builtin): (Vec<&Object>, Vec<&Object>) = unique
        .into_iter()
        .partition(|o| CRD_KINDS.contains(&o.kind()));
    kubernetes_validate(&builtin, &dir)?;
    crd_validate(&custom, &dir)?;
    yamllint()?;
    promtool()?;
    exported_names()?;
    println!(
        "[validate] all passed in {:.1}s (renderings in {})",
        start.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}

fn kubernetes_validate(objects: &[&Object], dir: &Path) -> Result<()> {
    let versions = tools::kubernetes_versions()?;
    let (oldest, newest) = (&versions[0], &versions[versions.len() - 1]);
    let t = step(&format!(
        "kubernetes-validate --strict, Kubernetes {oldest} and {newest} ({} built-in objects)",
        objects.len()
    ));
    let file = dir.join("builtin.yaml");
    let owned: Vec<Object> = objects.iter().map(|o| (*o).clone()).collect();
    std::fs::write(&file, to_yaml(&owned)?)?;
    // The canary: an unknown field in a DaemonSet's pod spec must be refused.
    let ds = owned
        .iter()
        .find(|o| o.kind() == "DaemonSet")
        .context("no DaemonSet")?;
    let mut broken = serde_json::to_value(&ds.0)?;
    broken["spec"]["template"]["spec"]["hostPIDs"] = json!(true);
    let canary = dir.join("canary-builtin.yaml");
    std::fs::write(&canary, serde_norway::to_string(&broken)?)?;
    for version in [oldest, newest] {
        let (text, ok) = output_of(
            Command::new(tools::venv_bin("kubernetes-validate"))
                .args(["--strict", "-k", version])
                .arg(&file),
        )?;
        indented(text.trim_end());
        let passed = text
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        // Unknown kinds are only a WARN with exit 0: any warning fails here.
        ensure!(
            ok && passed == objects.len() && !text.contains("WARN") && !text.contains("ERROR"),
            "kubernetes-validate --strict -k {version}: {passed} of {} objects passed",
            objects.len()
        );
        let (text, ok) = output_of(
            Command::new(tools::venv_bin("kubernetes-validate"))
                .args(["--strict", "--quiet", "-k", version])
                .arg(&canary),
        )?;
        ensure!(
            !ok && text.contains("hostPIDs"),
            "kubernetes-validate accepted a DaemonSet with an unknown field (hostPIDs): {text}"
        );
        let why = text
            .lines()
            .find(|l| l.contains("hostPIDs"))
            .unwrap_or("")
            .trim();
        println!("[validate]     canary (unknown field hostPIDs) rejected by {version}: {why}");
    }
    done(
        t,
        &format!("{} objects valid on {oldest} and {newest}", objects.len()),
    );
    Ok(())
}

/// Validates the objects (as JSON) against the schemas; one line per object, exit 1 on any
/// error. Argument: a JSON file `[{"schema": …, "object": …, "name": …, "expect_valid": bool}]`.
const JSONSCHEMA_CHECK: &str = r#"# jsonschema on the CRD kinds (xtask/src/validate/mod.rs)
import json, sys
from jsonschema import Draft4Validator
failed = 0
for case in json.load(open(sys.argv[1])):
    Draft4Validator.check_schema(case["schema"])
    errors = sorted(Draft4Validator(case["schema"]).iter_errors(case["object"]), key=lambda e: list(e.path))
    if case["expect_valid"]:
        print(f"{case['name']}: {'valid' if not errors else 'INVALID'}")
    else:
        print(f"{case['name']}: {'rejected' if errors else 'ACCEPTED'}")
    for e in errors:
        print(f"  {'/'.join(str(p) for p in e.path) or '.'}: {e.message}")
    if bool(errors) == case["expect_valid"]:
        failed += 1
sys.exit(1 if failed else 0)
"#;

fn crd_validate(objects: &[&Object], dir: &Path) -> Result<()> {
    let t = step("Prometheus Operator kinds against their CRD schemas (python jsonschema)");
    let mut schemas = Vec::new();
    for f in crd::CRD_FIXTURES {
        schemas.extend(crd::load(&crd::fixtures_dir().join(f))?);
    }
    let mut cases = Vec::new();
    for kind in CRD_KINDS {
        let of_kind: Vec<&&Object> = objects.iter().filter(|o| o.kind() == *kind).collect();
        ensure!(
            !of_kind.is_empty(),
            "no {kind} rendered: nothing to validate"
        );
        for o in of_kind {
            let schema = schemas
                .iter()
                .find(|s| s.kind == o.kind() && s.api_version == o.api_version())
                .with_context(|| {
                    format!("no CRD fixture serves {} {}", o.api_version(), o.kind())
                })?;
            let object = serde_json::to_value(&o.0)?;
            let name = format!(
                "{} ({} CRD, operator {})",
                o.id(),
                schema.api_version,
                schema.operator_version
            );
            // The canary: the same object with an unknown field in its spec.
            let mut broken = object.clone();
            broken["spec"]["scrapeIntervall"] = json!("15s");
            cases.push(json!({"schema": schema.schema, "object": object, "name": name, "expect_valid": true}));
            cases.push(json!({
                "schema": schema.schema,
                "object": broken,
                "name": format!("canary: {} with unknown field spec.scrapeIntervall", o.id()),
                "expect_valid": false,
            }));
        }
    }
    let file = dir.join("crd-cases.json");
    std::fs::write(&file, serde_json::to_vec(&Value::Array(cases))?)?;
    let (text, ok) = output_of(
        Command::new(tools::venv_bin("python"))
            .args(["-c", JSONSCHEMA_CHECK])
            .arg(&file),
    )?;
    indented(text.trim_end());
    ensure!(ok, "CRD schema validation failed (above)");
    done(
        t,
        &format!("{} objects valid, canaries rejected", objects.len()),
    );
    Ok(())
}

fn yamllint() -> Result<()> {
    let t = step("yamllint --strict (.yamllint.yaml) on deploy/ and the kustomize fixtures");
    let (text, ok) = output_of(
        Command::new(tools::venv_bin("yamllint"))
            .current_dir(workspace_root())
            .args(["--strict", "-f", "parsable", "-c", ".yamllint.yaml"])
            .args(["deploy", "xtask/fixtures/kustomize"]),
    )?;
    indented(text.trim_end());
    ensure!(ok, "yamllint found problems (above)");
    done(t, "no problems");
    Ok(())
}

fn promtool() -> Result<()> {
    let t = step("promtool on deploy/prometheus-rules.yaml");
    for args in [
        ["check", "rules", "prometheus-rules.yaml"],
        ["test", "rules", "prometheus-rules.test.yaml"],
    ] {
        let (text, ok) = output_of(
            Command::new("promtool")
                .current_dir(workspace_root().join("deploy"))
                .args(args),
        )?;
        indented(text.trim_end());
        ensure!(
            ok && text.contains("SUCCESS"),
            "promtool {} failed (above)",
            args.join(" ")
        );
    }
    done(t, "rules load, unit tests pass");
    Ok(())
}

fn exported_names() -> Result<()> {
    let t = step("rules and dashboard query only exported metric names (probe-user unit test)");
    let (text, ok) = output_of(
        cargo()
            .args(["test", "--quiet", "-p", "probe-user", "--lib", NAMES_TEST])
            .args(["--", "--exact"]),
    )?;
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("test result"))
        .collect();
    indented(&summary.join("\n"));
    // A renamed test would run 0 tests and pass: exactly one must have run.
    ensure!(
        ok && summary.iter().any(|l| l.contains(" 1 passed")),
        "{NAMES_TEST} did not run and pass:\n{text}"
    );
    done(t, "every name exported");
    Ok(())
}
