use super::*;

const EXAMPLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/linkprobe.toml"
));

fn err(text: &str) -> String {
    match Config::from_toml_str(text) {
        Ok(c) => panic!("accepted {text:?}: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_validate_and_equal_an_empty_file() {
    let c = Config::default();
    c.validate().unwrap();
    assert_eq!(Config::from_toml_str("").unwrap(), c);
    assert_eq!(c.flows.max_flows, 65_536);
    assert_eq!(c.flows.retain_closed_secs, 60);
    assert_eq!(c.flows.timeline_len, 32);
    assert_eq!(c.detect.rst_storm_min_rate, 20.0);
    assert_eq!(c.detect.rst_ratio, 0.05);
    assert_eq!(c.detect.max_scopes, 4096);
    assert_eq!(c.kernel.repeat_rst_window_ms, 1000);
    assert_eq!(c.kernel.repeat_rst_peer_threshold, 10);
    assert_eq!(c.kernel.repeat_rst_port_threshold, 20);
}

#[test]
fn example_file_parses_to_defaults_and_lists_every_key() {
    assert_eq!(Config::from_toml_str(EXAMPLE).unwrap(), Config::default());
    for (table, keys) in [
        ("flows", FlowsConfig::KEYS),
        ("detect", DetectConfig::KEYS),
        ("kernel", KernelConfig::KEYS),
        ("metrics", MetricsConfig::KEYS),
        ("kubernetes", KubernetesConfig::KEYS),
        ("envoy", EnvoyConfig::KEYS),
    ] {
        assert!(EXAMPLE.contains(&format!("[{table}]")));
        for key in keys {
            assert!(
                EXAMPLE.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "{table}.{key} missing from deploy/linkprobe.toml"
            );
        }
    }
    // The serde derive reads the same file.
    assert_eq!(
        toml::from_str::<Config>(EXAMPLE).unwrap(),
        Config::default()
    );
}

#[test]
fn values_are_read() {
    let c = Config::from_toml_str(
        "[flows]\nmax_flows = 1000\n[detect]\nrst_storm_min_rate = 50\nrst_ratio = 0.1\n\
         [kernel]\nrepeat_rst_window_ms = 500\n",
    )
    .unwrap();
    assert_eq!(c.flows.max_flows, 1000);
    assert_eq!(c.detect.rst_storm_min_rate, 50.0);
    assert_eq!(c.detect.rst_ratio, 0.1);
    assert_eq!(c.kernel.repeat_rst_window_ms, 500);
    // Dotted keys at the top level are the same thing.
    let d = Config::from_toml_str("detect.rst_ratio = 0.1\n").unwrap();
    assert_eq!(d.detect.rst_ratio, 0.1);
}

#[test]
fn out_of_range_values_name_key_value_and_range() {
    let cases = [
        ("detect", "rst_ratio", "1.5", "0 < value <= 1"),
        ("detect", "rst_ratio", "0", "0 < value <= 1"),
        (
            "detect",
            "rst_storm_min_rate",
            "-1.0",
            "0 < value <= 1000000000",
        ),
        ("detect", "rst_storm_factor", "0.5", "1 <= value <= 1000000"),
        ("detect", "rst_storm_ewma_alpha", "0.0", "0 < value <= 1"),
        ("detect", "rst_storm_clear_fraction", "1.0", "0 < value < 1"),
        ("detect", "max_scopes", "8", "16 <= value <= 1048576"),
        ("detect", "clear_after", "0", "1 <= value <= 3600"),
        ("detect", "rst_ratio_window_secs", "0", "1 <= value <= 3600"),
        (
            "detect",
            "retransmit_min_segments",
            "0",
            "1 <= value <= 1000000000000000",
        ),
        ("detect", "syn_retry_min_ms", "-5", "0 <= value <= 600000"),
        ("flows", "max_flows", "-1", "16 <= value <= 16777216"),
        ("flows", "timeline_len", "0", "1 <= value <= 1024"),
        (
            "kernel",
            "repeat_rst_peer_threshold",
            "1",
            "2 <= value <= 1000000",
        ),
        ("kernel", "repeat_rst_window_ms", "0", "1 <= value <= 60000"),
    ];
    for (table, key, value, range) in cases {
        let msg = err(&format!("[{table}]\n{key} = {value}\n"));
        let want = format!("config: {table}.{key} = {value} is out of range ({range}) at line 2");
        assert!(msg.starts_with(&want), "{msg}\nwanted {want}");
    }
}

#[test]
fn every_key_rejects_a_negative_value() {
    let kubernetes_numbers: Vec<&str> = KubernetesConfig::KEYS
        .iter()
        .copied()
        .filter(|k| !["pods", "node_name", "api_url", "pod_log_dir"].contains(k))
        .collect();
    for (table, keys) in [
        ("flows", FlowsConfig::KEYS),
        ("detect", DetectConfig::KEYS),
        ("kernel", KernelConfig::KEYS),
        ("metrics", MetricsConfig::KEYS),
        ("kubernetes", kubernetes_numbers.as_slice()),
    ] {
        for key in keys {
            let msg = err(&format!("[{table}]\n{key} = -1\n"));
            assert!(
                msg.contains(&format!("{table}.{key} = -1 is out of range (")),
                "{msg}"
            );
            let mut c = Config::default();
            let e = c
                .set(&format!("{table}.{key}"), "-1")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{table}.{key} = -1 is out of range")),
                "{e}"
            );
            assert_eq!(
                c,
                Config::default(),
                "a rejected set must not change anything"
            );
        }
    }
}

#[test]
fn validate_rejects_values_set_in_code() {
    let mut c = Config::default();
    c.detect.rst_ratio = 1.5;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "config: detect.rst_ratio = 1.5 is out of range (0 < value <= 1)"
    );
    let mut c = Config::default();
    c.detect.rst_storm_ewma_alpha = f64::NAN;
    assert!(c.validate().is_err());
    let mut c = Config::default();
    c.flows.max_flows = 0;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("flows.max_flows = 0"));
}

#[test]
fn keys_that_contradict_each_other() {
    let msg = err("[detect]\nrst_ratio = 0.05\nrst_ratio_clear = 0.05\n");
    assert_eq!(
        msg,
        "config: detect.rst_ratio_clear = 0.05 must be below detect.rst_ratio (0.05)"
    );
    let msg = err("[detect]\nretransmit_ratio_clear = 0.5\n");
    assert!(
        msg.contains(
            "detect.retransmit_ratio_clear = 0.5 must be below detect.retransmit_ratio (0.02)"
        ),
        "{msg}"
    );
    let msg = err("[detect]\nrst_storm_adapt_alpha = 0.5\n");
    assert!(
        msg.contains("must not exceed detect.rst_storm_ewma_alpha (0.1)"),
        "{msg}"
    );
}

#[test]
fn wrong_types() {
    let msg = err("[detect]\nrst_ratio = \"high\"\n");
    assert_eq!(
        msg,
        "config: detect.rst_ratio = \"high\" is not a number at line 2, column 13"
    );
    let msg = err("[flows]\nmax_flows = 1.5\n");
    assert!(
        msg.contains("flows.max_flows = 1.5 is not a whole number"),
        "{msg}"
    );
    let msg = err("detect = 5\n");
    assert!(
        msg.contains("detect at line 1, column 1 must be a table"),
        "{msg}"
    );
    let msg = err("[detect.sub]\nx = 1\n");
    assert!(msg.contains("unknown key detect.sub"), "{msg}");
}

#[test]
fn unknown_keys_list_the_valid_ones() {
    let msg = err("[detect]\nrst_ratio = 0.1\nrst_ratoi = 0.1\n");
    assert!(
        msg.starts_with("config: unknown key detect.rst_ratoi at line 3, column 1; valid keys of [detect]: max_scopes, evidence_len,"),
        "{msg}"
    );
    assert!(msg.contains("rst_ratio, rst_ratio_clear"), "{msg}");
    let msg = err("[flows]\n[detector]\nx = 1\n");
    assert_eq!(
        msg,
        "config: unknown key detector at line 2, column 2; valid keys at the top level: flows, detect, kernel, metrics, kubernetes, envoy"
    );
    let msg = err("[kernel]\nwindow = 3\n");
    assert!(msg.ends_with("valid keys of [kernel]: fallback_flows, repeat_rst_window_ms, repeat_rst_peer_threshold, repeat_rst_port_threshold"), "{msg}");
}

#[test]
fn syntax_errors_have_line_and_column() {
    let msg = err("[flows]\nmax_flows = 10\n[detect\n");
    assert!(
        msg.starts_with("config: TOML syntax error at line 3, column "),
        "{msg}"
    );
    let msg = err("[flows]\nmax_flows = = 3\n");
    assert!(
        msg.starts_with("config: TOML syntax error at line 2, column 13"),
        "{msg}"
    );
    let msg = err("[flows]\nmax_flows = 1\nmax_flows = 2\n");
    assert!(msg.contains("line 3"), "{msg}");
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("linkprobe-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("linkprobe.toml");
    std::fs::write(&path, "[detect]\nrst_ratio = 1.5\n").unwrap();
    let msg = Config::load(&path).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "config {}: detect.rst_ratio = 1.5 is out of range (0 < value <= 1) at line 2, column 13",
            path.display()
        )
    );
    std::fs::write(&path, EXAMPLE).unwrap();
    assert_eq!(Config::load(&path).unwrap(), Config::default());
    let missing = dir.join("missing.toml");
    let e = Config::load(&missing).unwrap_err();
    assert!(e
        .to_string()
        .starts_with(&format!("config {}: cannot read: ", missing.display())));
    assert!(std::error::Error::source(&e).is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn set_overrides_keys() {
    let mut c = Config::default();
    c.set("detect.rst_storm_min_rate", "50").unwrap();
    c.set("flows.max_flows", "1000").unwrap();
    c.set("detect.rst_ratio", " 0.1 ").unwrap();
    c.set_override("kernel.repeat_rst_port_threshold=40")
        .unwrap();
    c.set_override("detect.clear_after = 5").unwrap();
    assert_eq!(c.detect.rst_storm_min_rate, 50.0);
    assert_eq!(c.flows.max_flows, 1000);
    assert_eq!(c.detect.rst_ratio, 0.1);
    assert_eq!(c.kernel.repeat_rst_port_threshold, 40);
    assert_eq!(c.detect.clear_after, 5);
    c.validate().unwrap();

    let e = |r: Result<(), ConfigError>| r.unwrap_err().to_string();
    assert_eq!(
        e(c.set("detect.rst_ratio", "1.5")),
        "config override: detect.rst_ratio = 1.5 is out of range (0 < value <= 1)"
    );
    assert_eq!(
        e(c.set("detect.clear_after", "many")),
        "config override: detect.clear_after = \"many\" is not a whole number"
    );
    assert!(e(c.set("detect.nope", "1")).starts_with(
        "config override: unknown key detect.nope; valid keys of [detect]: max_scopes,"
    ));
    assert_eq!(
        e(c.set("nope.x", "1")),
        "config override: unknown key nope.x; valid keys at the top level: flows, detect, kernel, metrics, kubernetes, envoy"
    );
    assert!(e(c.set("detect", "1")).contains("unknown key detect."));
    assert_eq!(
        e(c.set_override("detect.rst_ratio")),
        "config override: \"detect.rst_ratio\" is not KEY=VALUE (e.g. detect.rst_ratio=0.1)"
    );
    // Checks between keys run in validate, after all overrides.
    c.set("detect.rst_ratio_clear", "0.5").unwrap();
    assert!(c.validate().is_err());
}

#[test]
fn kernel_config_applies_to_the_kernel_globals() {
    let mut k = probe_common::RepeatRstConfig::DEFAULT;
    let cfg = KernelConfig {
        fallback_flows: 4096,
        repeat_rst_window_ms: 250,
        repeat_rst_peer_threshold: 5,
        repeat_rst_port_threshold: 7,
    };
    cfg.apply(&mut k);
    assert_eq!(k.window_ns, 250_000_000);
    assert_eq!((k.peer_threshold, k.port_threshold), (5, 7));
    assert_eq!(
        k.ephemeral_low,
        probe_common::RepeatRstConfig::DEFAULT.ephemeral_low
    );
    // The defaults match the kernel side's.
    let mut d = probe_common::RepeatRstConfig::DEFAULT;
    KernelConfig::default().apply(&mut d);
    assert_eq!(d, probe_common::RepeatRstConfig::DEFAULT);
}

#[test]
fn kubernetes_strings_and_modes() {
    let c = Config::from_toml_str(
        "[kubernetes]\npods = \"logs\"\nnode_name = \"node-7\"\npod_log_dir = \"/tmp/pods\"\n",
    )
    .unwrap();
    assert_eq!(c.kubernetes.pods, PodsMode::Logs);
    assert_eq!(c.kubernetes.node_name, "node-7");
    assert_eq!(c.kubernetes.pod_log_dir, "/tmp/pods");
    let msg = err("[kubernetes]\npods = \"sometimes\"\n");
    assert!(
        msg.contains(r#"kubernetes.pods = "sometimes" has the wrong type (expected one of "auto", "api", "logs", "off")"#)
            || msg.contains("one of \"auto\""),
        "{msg}"
    );
    let msg = err("[kubernetes]\npods = 1\n");
    assert!(msg.contains("kubernetes.pods"), "{msg}");
    let msg = err(&format!(
        "[kubernetes]\nnode_name = \"{}\"\n",
        "n".repeat(254)
    ));
    assert!(msg.contains("kubernetes.node_name"), "{msg}");
    assert!(msg.contains("out of range (0 <= value <= 253)"), "{msg}");
    let msg = err("[kubernetes]\npod_log_dir = \"\"\n");
    assert!(msg.contains("kubernetes.pod_log_dir"), "{msg}");
    let mut c = Config::default();
    c.set("kubernetes.pods", "off").unwrap();
    c.set("kubernetes.node_name", "worker-2").unwrap();
    assert_eq!(c.kubernetes.pods, PodsMode::Off);
    assert_eq!(c.kubernetes.node_name, "worker-2");
    assert!(c.set("kubernetes.pods", "maybe").is_err());
    assert_eq!(c.kubernetes.pods, PodsMode::Off);
}

#[test]
fn envoy_paths_and_field_names() {
    let c = Config::from_toml_str(
        "[envoy]\npaths = [\"/var/log/pods\", \"/tmp/envoy.log\"]\nfield_start_time = \"ts\"\n",
    )
    .unwrap();
    assert_eq!(c.envoy.paths.0, ["/var/log/pods", "/tmp/envoy.log"]);
    assert_eq!(c.envoy.field_start_time, "ts");
    assert_eq!(c.envoy.field_duration, "duration");
    let msg = err("[envoy]\npaths = \"/var/log/pods\"\n");
    assert!(msg.contains("is not a list of strings"), "{msg}");
    let msg = err("[envoy]\npaths = [1]\n");
    assert!(msg.contains("is not a list of strings"), "{msg}");
    let many: Vec<String> = (0..65).map(|i| format!("\"/p{i}\"")).collect();
    let msg = err(&format!("[envoy]\npaths = [{}]\n", many.join(",")));
    assert!(msg.contains("is out of range (0 <= value <= 64)"), "{msg}");
    let msg = err("[envoy]\nfield_duration = \"\"\n");
    assert!(msg.contains("envoy.field_duration"), "{msg}");
    let mut c = Config::default();
    c.set("envoy.paths", r#"["/a.log"]"#).unwrap();
    assert_eq!(c.envoy.paths.0, ["/a.log"]);
}
