//! The daemon's TOML configuration: `[flows]` (flow table), `[detect]` (anomaly detectors),
//! `[kernel]` (in-kernel repeat-RST check), `[metrics]` (exporter label budget) and
//! `[kubernetes]` (pod attribution) and `[envoy]` (access logs joined to flows). Every key
//! is optional and defaults to the value in `deploy/linkprobe.toml`; unknown keys, wrong types
//! and out-of-range values are errors that name the file, the dotted key, the value and the
//! allowed range.
//!
//! Load with [`Config::load`] (or [`Config::from_toml_str`]), apply command-line overrides with
//! [`Config::set`] / [`Config::set_override`], then call [`Config::validate`] once more: the
//! per-key checks run on every `set`, the checks between keys only in `validate`.
use std::{collections::BTreeMap, fmt, path::Path};

use serde::{Deserialize, Serialize};
use toml::{Spanned, Value};

mod error;
mod pods_mode;
pub use error::{ConfigError, Origin, Pos, Problem};
pub use pods_mode::PodsMode;

/// Lower end of an allowed range.
#[derive(Clone, Copy, Debug)]
enum Lo {
    Ge(f64),
    Gt(f64),
}

/// Upper end of an allowed range.
#[derive(Clone, Copy, Debug)]
enum Hi {
    Le(f64),
    Lt(f64),
}

#[derive(Clone, Copy, Debug)]
struct Range(Lo, Hi);

impl Range {
    fn contains(self, v: f64) -> bool {
        let lo = match self.0 {
            Lo::Ge(m) => v >= m,
            Lo::Gt(m) => v > m,
        };
        let hi = match self.1 {
            Hi::Le(m) => v <= m,
            Hi::Lt(m) => v < m,
        };
        lo && hi
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Lo::Ge(m) => write!(f, "{m} <= value")?,
            Lo::Gt(m) => write!(f, "{m} < value")?,
        }
        match self.1 {
            Hi::Le(m) => write!(f, " <= {m}"),
            Hi::Lt(m) => write!(f, " < {m}"),
        }
    }
}

/// A config value: how it is read from TOML and compared with its range (numbers by value,
/// strings by length in bytes).
trait Field: Clone + fmt::Display {
    /// What the error says a wrong-typed value should have been.
    const EXPECTED: &'static str;
    /// The value as a number for the range check; `None` for the wrong type.
    fn number(v: &Value) -> Option<f64>;
    /// The value itself, once its range was checked.
    fn convert(v: &Value) -> Option<Self>;
    fn as_f64(&self) -> f64;
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            const EXPECTED: &'static str = "a whole number";
            fn number(v: &Value) -> Option<f64> {
                v.as_integer().map(|i| i as f64)
            }
            fn convert(v: &Value) -> Option<Self> {
                v.as_integer().and_then(|i| <$t>::try_from(i).ok())
            }
            fn as_f64(&self) -> f64 {
                *self as f64
            }
        }
    )*};
}
int_field!(u32, u64, usize);

impl Field for f64 {
    const EXPECTED: &'static str = "a number";
    fn number(v: &Value) -> Option<f64> {
        match v {
            Value::Float(f) => Some(*f),
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }
    fn convert(v: &Value) -> Option<Self> {
        Self::number(v)
    }
    fn as_f64(&self) -> f64 {
        *self
    }
}

/// A string; its range bounds its length in bytes.
impl Field for String {
    const EXPECTED: &'static str = "a string";
    fn number(v: &Value) -> Option<f64> {
        v.as_str().map(|s| s.len() as f64)
    }
    fn convert(v: &Value) -> Option<Self> {
        v.as_str().map(str::to_string)
    }
    fn as_f64(&self) -> f64 {
        self.len() as f64
    }
}

/// One of a fixed set of names; its range is unused (any valid name is in it).
impl Field for PodsMode {
    const EXPECTED: &'static str = r#"one of "auto", "api", "logs", "off""#;
    fn number(v: &Value) -> Option<f64> {
        v.as_str().and_then(PodsMode::parse).map(|_| 0.0)
    }
    fn convert(v: &Value) -> Option<Self> {
        v.as_str().and_then(PodsMode::parse)
    }
    fn as_f64(&self) -> f64 {
        0.0
    }
}

/// A list of strings (paths); its range bounds the number of entries, each entry is at most
/// [`StringList::MAX_ENTRY`] bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct StringList(pub Vec<String>);

impl StringList {
    pub const MAX_ENTRY: usize = 4096;
}

impl fmt::Display for StringList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{s:?}")?;
        }
        f.write_str("]")
    }
}

impl Field for StringList {
    const EXPECTED: &'static str = "a list of strings";
    fn number(v: &Value) -> Option<f64> {
        let a = v.as_array()?;
        a.iter()
            .all(|e| e.as_str().is_some_and(|s| s.len() <= Self::MAX_ENTRY))
            .then_some(a.len() as f64)
    }
    fn convert(v: &Value) -> Option<Self> {
        let a = v.as_array()?;
        a.iter()
            .map(|e| e.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(StringList)
    }
    fn as_f64(&self) -> f64 {
        self.0.len() as f64
    }
}

/// Why one key's value was rejected (the caller adds the key, origin and position).
enum FieldError {
    Unknown,
    WrongType(&'static str),
    OutOfRange(Range),
}

fn parse_field<T: Field>(v: &Value, range: Range) -> Result<T, FieldError> {
    let n = T::number(v).ok_or(FieldError::WrongType(T::EXPECTED))?;
    if !range.contains(n) {
        return Err(FieldError::OutOfRange(range));
    }
    T::convert(v).ok_or(FieldError::OutOfRange(range))
}

/// Declares one config table: the struct with its docs and defaults, its key list, and the
/// per-key setter and range check. One line per key keeps default, type and range together.
macro_rules! config_table {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident in $table:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $ty:ty = $default:expr, $lo:expr, $hi:expr;
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $name {
            /// The table's name in the file.
            pub const TABLE: &'static str = $table;
            /// Every key of the table, in file order.
            pub const KEYS: &'static [&'static str] = &[$( stringify!($field) ),*];

            fn set_value(&mut self, key: &str, v: &Value) -> Result<(), FieldError> {
                match key {
                    $( stringify!($field) => {
                        self.$field = parse_field::<$ty>(v, Range($lo, $hi))?;
                        Ok(())
                    } )*
                    _ => Err(FieldError::Unknown),
                }
            }

            /// The first key whose value is outside its range.
            fn check_ranges(&self) -> Result<(), ConfigError> {
                $(
                    let range = Range($lo, $hi);
                    if !range.contains(Field::as_f64(&self.$field)) {
                        return Err(ConfigError::new(Problem::OutOfRange {
                            key: format!("{}.{}", $table, stringify!($field)),
                            value: self.$field.to_string(),
                            range: range.to_string(),
                            at: None,
                        }));
                    }
                )*
                Ok(())
            }
        }
    };
}

config_table! {
    /// `[flows]`: the flow table's size and retention.
    pub struct FlowsConfig in "flows" {
        /// Flows tracked at once (the flow table's memory bound).
        max_flows: usize = 65_536, Lo::Ge(16.0), Hi::Le(16_777_216.0);
        /// Seconds a flow is kept after it closed.
        retain_closed_secs: u64 = 60, Lo::Ge(0.0), Hi::Le(86_400.0);
        /// Events kept per flow in its timeline.
        timeline_len: usize = 32, Lo::Ge(1.0), Hi::Le(1024.0);
        /// Seconds an established flow may stay idle before it leaves the table, unless the
        /// kernel still lists it (the open-flow iterator): its close was never seen.
        idle_open_secs: u64 = 3600, Lo::Ge(10.0), Hi::Le(2_592_000.0);
        /// The same for a flow in a handshake or TIME_WAIT (these end on their own).
        idle_transient_secs: u64 = 180, Lo::Ge(10.0), Hi::Le(86_400.0);
    }
}

config_table! {
    /// `[detect]`: anomaly detector thresholds, windows and hysteresis. Windows are 1 s long.
    pub struct DetectConfig in "detect" {
        /// Scopes (peer endpoints, local ports, sockets) with detector state at once; when
        /// full, the least recently active scope without an active anomaly is evicted.
        max_scopes: usize = 4096, Lo::Ge(16.0), Hi::Le(1_048_576.0);
        /// Socket cookies kept as evidence per anomaly.
        evidence_len: usize = 16, Lo::Ge(0.0), Hi::Le(1024.0);
        /// Cleared anomalies kept for queries.
        recent_len: usize = 256, Lo::Ge(0.0), Hi::Le(65_536.0);
        /// Rate and ratio anomalies clear after this many consecutive windows below their
        /// clear threshold.
        clear_after: u32 = 3, Lo::Ge(1.0), Hi::Le(3600.0);
        /// Event anomalies (connect failures, resets after established, SYN retries, kernel
        /// repeat-RST) clear after this many consecutive windows without an occurrence.
        event_clear_after: u32 = 10, Lo::Ge(1.0), Hi::Le(3600.0);
        /// RST storm: at least this many RST/s in one scope ...
        rst_storm_min_rate: f64 = 20.0, Lo::Gt(0.0), Hi::Le(1e9);
        /// ... and at least this many times the scope's baseline RST/s.
        rst_storm_factor: f64 = 10.0, Lo::Ge(1.0), Hi::Le(1e6);
        /// EWMA weight of each calm window in the baseline.
        rst_storm_ewma_alpha: f64 = 0.1, Lo::Gt(0.0), Hi::Le(1.0);
        /// EWMA weight of each window during a storm (0: baseline frozen in storms, so a
        /// sustained level never becomes normal).
        rst_storm_adapt_alpha: f64 = 0.002, Lo::Ge(0.0), Hi::Lt(1.0);
        /// A storm clears below this fraction of its raise threshold.
        rst_storm_clear_fraction: f64 = 0.5, Lo::Gt(0.0), Hi::Lt(1.0);
        /// Windows in a row above threshold before a storm is raised.
        rst_storm_raise_after: u32 = 1, Lo::Ge(1.0), Hi::Le(60.0);
        /// RST ratio: RSTs per connection over the sliding window above this fraction ...
        rst_ratio: f64 = 0.05, Lo::Gt(0.0), Hi::Le(1.0);
        /// ... clears below this fraction ...
        rst_ratio_clear: f64 = 0.025, Lo::Gt(0.0), Hi::Le(1.0);
        /// ... and is only judged with at least this many connections in the window.
        rst_ratio_min_connections: u64 = 20, Lo::Ge(1.0), Hi::Le(1e12);
        /// Sliding window of the RST ratio, seconds.
        rst_ratio_window_secs: u32 = 60, Lo::Ge(1.0), Hi::Le(3600.0);
        /// Windows in a row above threshold before an RST ratio anomaly is raised.
        rst_ratio_raise_after: u32 = 2, Lo::Ge(1.0), Hi::Le(60.0);
        /// Retransmit rate: retransmitted / sent data segments over the window above this ...
        retransmit_ratio: f64 = 0.02, Lo::Gt(0.0), Hi::Le(1.0);
        /// ... clears below this ...
        retransmit_ratio_clear: f64 = 0.01, Lo::Gt(0.0), Hi::Le(1.0);
        /// ... and is only judged with at least this many segments sent in the window.
        retransmit_min_segments: u64 = 1000, Lo::Ge(1.0), Hi::Le(1e15);
        /// Sliding window of the retransmit rate, seconds.
        retransmit_window_secs: u32 = 60, Lo::Ge(1.0), Hi::Le(3600.0);
        /// Windows in a row above threshold before a retransmit anomaly is raised.
        retransmit_raise_after: u32 = 2, Lo::Ge(1.0), Hi::Le(60.0);
        /// A SYN retransmit counts when the first SYN was sent more than this long ago, ms.
        syn_retry_min_ms: u64 = 1000, Lo::Ge(0.0), Hi::Le(600_000.0);
    }
}

config_table! {
    /// `[kernel]`: the in-kernel repeat-RST check (see `probe_common::RepeatRstConfig`) and the
    /// fallback flow-state map.
    pub struct KernelConfig in "kernel" {
        /// Flows the kernel keeps state for where its BTF tracepoints cannot use socket
        /// storage (before 5.11: an LRU map; an evicted flow is seen again as LATE).
        fallback_flows: u32 = 65_536, Lo::Ge(1024.0), Hi::Le(16_777_216.0);
        /// Window of the check, ms.
        repeat_rst_window_ms: u64 = 1000, Lo::Ge(1.0), Hi::Le(60_000.0);
        /// RSTs with one remote endpoint within the window that raise an alert.
        repeat_rst_peer_threshold: u32 = 10, Lo::Ge(2.0), Hi::Le(1_000_000.0);
        /// RSTs on one local service port within the window that raise an alert.
        repeat_rst_port_threshold: u32 = 20, Lo::Ge(2.0), Hi::Le(1_000_000.0);
    }
}

impl KernelConfig {
    /// Copies these settings into the kernel's repeat-RST globals (ephemeral range untouched).
    pub fn apply(&self, cfg: &mut probe_common::RepeatRstConfig) {
        cfg.window_ns = self.repeat_rst_window_ms.saturating_mul(1_000_000);
        cfg.peer_threshold = self.repeat_rst_peer_threshold;
        cfg.port_threshold = self.repeat_rst_port_threshold;
    }
}

config_table! {
    /// `[metrics]`: the Prometheus exporter's label budget. Peers and local ports get a series
    /// of their own by activity (top-K); the rest is folded into `other`, never lost.
    pub struct MetricsConfig in "metrics" {
        /// Hard cap on traffic and anomaly series (each histogram bucket counts as one); a
        /// label set that would exceed it is folded into `peer="other",local_port="other"`.
        max_series: usize = 1800, Lo::Ge(100.0), Hi::Le(1_000_000.0);
        /// Remote peers with series of their own (top-K by activity).
        max_peers: usize = 200, Lo::Ge(1.0), Hi::Le(100_000.0);
        /// Local listening ports with series of their own (top-K by activity).
        max_local_ports: usize = 50, Lo::Ge(1.0), Hi::Le(65_536.0);
        /// Pods with series of their own in the per-pod families (top-K by activity; the rest
        /// count under `namespace="other",pod="other"`).
        max_pods: usize = 100, Lo::Ge(1.0), Hi::Le(100_000.0);
        /// Peers with handshake/RTT histograms of their own (each costs 2 × 20 series).
        max_histogram_peers: usize = 10, Lo::Ge(0.0), Hi::Le(10_000.0);
        /// How often the top-K is revisited: a peer idle for a whole period can give its
        /// series to a busier one (its counts move into `other`).
        rebalance_secs: u64 = 300, Lo::Ge(1.0), Hi::Le(86_400.0);
    }
}

config_table! {
    /// `[kubernetes]`: pod and container attribution. cgroup ids are mapped to pods through
    /// the cgroup tree; pod names come from the Kubernetes API or the kubelet's log directories.
    pub struct KubernetesConfig in "kubernetes" {
        /// Where pod names come from: "auto" (the API in a cluster, else the pod log
        /// directories when they exist, else off), "api", "logs" or "off" (no attribution).
        pods: PodsMode = PodsMode::Auto, Lo::Ge(0.0), Hi::Le(0.0);
        /// This node's name, whose pods the API source watches; empty: the `NODE_NAME`
        /// environment variable (the DaemonSet sets it from the downward API). At most 253 bytes.
        node_name: String = String::new(), Lo::Ge(0.0), Hi::Le(253.0);
        /// The API server to watch pods through instead of the in-cluster configuration
        /// (e.g. `http://127.0.0.1:8001` from `kubectl proxy`); empty: in-cluster.
        api_url: String = String::new(), Lo::Ge(0.0), Hi::Le(2048.0);
        /// The kubelet's pod log directories (`<namespace>_<pod>_<uid>`), the fallback source.
        pod_log_dir: String = "/var/log/pods".to_string(), Lo::Ge(1.0), Hi::Le(4096.0);
        /// Seconds between scans of `pod_log_dir`.
        pod_log_rescan_secs: u64 = 10, Lo::Ge(1.0), Hi::Le(3600.0);
        /// Pods of this node kept (names, UIDs, IPs); more are counted, not kept.
        max_pods: usize = 1024, Lo::Ge(1.0), Hi::Le(1_048_576.0);
        /// cgroup ids whose paths are cached (and cgroups walked per scan of the tree).
        max_cgroups: usize = 65_536, Lo::Ge(16.0), Hi::Le(16_777_216.0);
        /// Least milliseconds between two walks of the cgroup tree for unknown cgroup ids.
        cgroup_rescan_ms: u64 = 2000, Lo::Ge(0.0), Hi::Le(3_600_000.0);
    }
}

config_table! {
    /// `[envoy]`: Envoy (or any proxy writing Envoy's field names) JSON access logs joined to
    /// the flows that carried each request. Field names are configurable: each `field_*` key
    /// names the JSON key of one of Envoy's documented fields.
    pub struct EnvoyConfig in "envoy" {
        /// Files and directories to follow (empty: off). A directory means its `*.log` files
        /// and, for kubelet pod log directories (`<namespace>_<pod>_<uid>`, or their parent
        /// such as `/var/log/pods`), each pod's `istio-proxy/*.log`. At most 64 entries.
        paths: StringList = StringList::default(), Lo::Ge(0.0), Hi::Le(64.0);
        /// The network namespace the proxy's sockets live in (`ip netns` name, `host` or a
        /// netns cookie); empty: any namespace (a tuple found only elsewhere is then reported
        /// as "other netns").
        netns: String = String::new(), Lo::Ge(0.0), Hi::Le(253.0);
        field_start_time: String = "start_time".to_string(), Lo::Ge(1.0), Hi::Le(128.0);
        field_duration: String = "duration".to_string(), Lo::Ge(1.0), Hi::Le(128.0);
        field_response_code: String = "response_code".to_string(), Lo::Ge(1.0), Hi::Le(128.0);
        field_response_flags: String = "response_flags".to_string(), Lo::Ge(1.0), Hi::Le(128.0);
        field_response_code_details: String = "response_code_details".to_string(), Lo::Ge(1.0), Hi::Le(128.0);
        field_upstream_host: String = "upstream_host".to_string(), Lo::Ge(1.0), Hi::Le(128.0);
        field_upstream_local_address: String = "upstream_local_address".to_string(), Lo::Ge(1.0), Hi::Le(128.0);
        field_downstream_remote_address: String = "downstream_remote_address".to_string(), Lo::Ge(1.0), Hi::Le(128.0);
        field_downstream_local_address: String = "downstream_local_address".to_string(), Lo::Ge(1.0), Hi::Le(128.0);
        field_upstream_connection_id: String = "upstream_connection_id".to_string(), Lo::Ge(1.0), Hi::Le(128.0);
        field_x_request_id: String = "x_request_id".to_string(), Lo::Ge(1.0), Hi::Le(128.0);
        /// Longest access-log line read (a CRI-joined line included); longer ones are
        /// skipped and counted.
        max_line_bytes: usize = 16_384, Lo::Ge(256.0), Hi::Le(1_048_576.0);
        /// Parsed requests queued for the event loop; when full, more are counted, not kept.
        queue_len: usize = 8192, Lo::Ge(16.0), Hi::Le(1_048_576.0);
        /// Files followed at once over all paths.
        max_files: usize = 256, Lo::Ge(1.0), Hi::Le(65_536.0);
        /// Milliseconds between two reads of the followed files.
        poll_ms: u64 = 200, Lo::Ge(10.0), Hi::Le(60_000.0);
        /// Seconds between two listings of the configured directories (new files, rotation).
        rescan_secs: u64 = 5, Lo::Ge(1.0), Hi::Le(3600.0);
        /// Slack around a request's time window when matching flows, milliseconds (log
        /// timestamps are rounded to ms; the connection may predate the request).
        join_slack_ms: u64 = 1000, Lo::Ge(0.0), Hi::Le(600_000.0);
        /// Requests kept per flow for `linkprobe flow`; more are counted.
        requests_per_flow: usize = 16, Lo::Ge(1.0), Hi::Le(1024.0);
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub flows: FlowsConfig,
    pub detect: DetectConfig,
    pub kernel: KernelConfig,
    pub metrics: MetricsConfig,
    pub kubernetes: KubernetesConfig,
    pub envoy: EnvoyConfig,
}

const TABLES: &[&str] = &[
    FlowsConfig::TABLE,
    DetectConfig::TABLE,
    KernelConfig::TABLE,
    MetricsConfig::TABLE,
    KubernetesConfig::TABLE,
    EnvoyConfig::TABLE,
];

fn field_error(
    e: FieldError,
    table: &'static str,
    field: &str,
    v: &Value,
    at: Option<Pos>,
) -> Problem {
    let key = format!("{table}.{field}");
    match e {
        FieldError::Unknown => Problem::UnknownKey {
            key,
            table: Some(table),
            valid: keys_of(table),
            at,
        },
        FieldError::WrongType(expected) => Problem::WrongType {
            key,
            value: v.to_string(),
            expected,
            at,
        },
        FieldError::OutOfRange(range) => Problem::OutOfRange {
            key,
            value: v.to_string(),
            range: range.to_string(),
            at,
        },
    }
}

fn keys_of(table: &str) -> &'static [&'static str] {
    match table {
        "flows" => FlowsConfig::KEYS,
        "detect" => DetectConfig::KEYS,
        "metrics" => MetricsConfig::KEYS,
        "kubernetes" => KubernetesConfig::KEYS,
        "envoy" => EnvoyConfig::KEYS,
        _ => KernelConfig::KEYS,
    }
}

type Spanned2 = BTreeMap<Spanned<String>, Spanned<BTreeMap<Spanned<String>, Spanned<Value>>>>;

impl Config {
    /// Parses and validates a configuration text.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let syntax = |e: toml::de::Error| {
            ConfigError::new(Problem::Syntax {
                message: e.message().to_string(),
                at: e.span().map(|r| Pos::of(s, r.start)),
            })
        };
        // First pass: syntax and the top-level shape, so the second pass cannot fail on it.
        let top: BTreeMap<Spanned<String>, Spanned<Value>> = toml::from_str(s).map_err(syntax)?;
        let mut top: Vec<_> = top.into_iter().collect();
        top.sort_by_key(|(k, _)| k.span().start);
        for (key, value) in &top {
            let at = Some(Pos::of(s, key.span().start));
            if !TABLES.contains(&key.get_ref().as_str()) {
                return Err(ConfigError::new(Problem::UnknownKey {
                    key: key.get_ref().clone(),
                    table: None,
                    valid: TABLES,
                    at,
                }));
            }
            if !value.get_ref().is_table() {
                return Err(ConfigError::new(Problem::NotATable {
                    key: key.get_ref().clone(),
                    at,
                }));
            }
        }
        let tables: Spanned2 = toml::from_str(s).map_err(syntax)?;
        let mut entries: Vec<(&'static str, Spanned<String>, Spanned<Value>)> = Vec::new();
        for (table, fields) in tables {
            let table = match TABLES.iter().find(|t| **t == table.get_ref().as_str()) {
                Some(t) => *t,
                None => continue,
            };
            for (k, v) in fields.into_inner() {
                entries.push((table, k, v));
            }
        }
        entries.sort_by_key(|(_, k, _)| k.span().start);
        let mut cfg = Config::default();
        for (table, key, value) in entries {
            cfg.set_value(table, key.get_ref(), value.get_ref())
                .map_err(|e| {
                    let at = match e {
                        FieldError::Unknown => key.span().start,
                        _ => value.span().start,
                    };
                    ConfigError::new(field_error(
                        e,
                        table,
                        key.get_ref(),
                        value.get_ref(),
                        Some(Pos::of(s, at)),
                    ))
                })?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a configuration file; errors name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = Origin::File(path.to_path_buf());
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            problem: Problem::Read(e),
        })?;
        Config::from_toml_str(&text).map_err(|e| e.with_origin(origin))
    }

    fn set_value(&mut self, table: &str, key: &str, v: &Value) -> Result<(), FieldError> {
        match table {
            "flows" => self.flows.set_value(key, v),
            "detect" => self.detect.set_value(key, v),
            "kernel" => self.kernel.set_value(key, v),
            "metrics" => self.metrics.set_value(key, v),
            "kubernetes" => self.kubernetes.set_value(key, v),
            "envoy" => self.envoy.set_value(key, v),
            _ => Err(FieldError::Unknown),
        }
    }

    /// Overrides one key, e.g. `set("detect.rst_storm_min_rate", "50")`. The value is read as
    /// a TOML value; the key's range is checked here, checks between keys in [`Config::validate`].
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let err = |p: Problem| ConfigError::new(p).with_origin(Origin::Override);
        let (table, field) = key.split_once('.').unwrap_or((key, ""));
        let Some(table) = TABLES.iter().copied().find(|t| *t == table) else {
            return Err(err(Problem::UnknownKey {
                key: key.to_string(),
                table: None,
                valid: TABLES,
                at: None,
            }));
        };
        let v = parse_value(value.trim());
        self.set_value(table, field, &v)
            .map_err(|e| err(field_error(e, table, field, &v, None)))
    }

    /// Overrides one key from a `KEY=VALUE` argument (the CLI's `--set`).
    pub fn set_override(&mut self, arg: &str) -> Result<(), ConfigError> {
        match arg.split_once('=') {
            Some((k, v)) => self.set(k.trim(), v),
            None => Err(ConfigError::new(Problem::BadOverride(arg.to_string()))
                .with_origin(Origin::Override)),
        }
    }

    /// Checks every key's range and the rules between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.flows.check_ranges()?;
        self.detect.check_ranges()?;
        self.kernel.check_ranges()?;
        self.metrics.check_ranges()?;
        self.kubernetes.check_ranges()?;
        self.envoy.check_ranges()?;
        let d = &self.detect;
        let below = |key: &str, value: f64, other: &str, other_value: f64| {
            if value < other_value {
                return Ok(());
            }
            Err(ConfigError::new(Problem::Inconsistent {
                key: format!("detect.{key}"),
                value: value.to_string(),
                rule: format!("must be below detect.{other} ({other_value})"),
            }))
        };
        below(
            "rst_ratio_clear",
            d.rst_ratio_clear,
            "rst_ratio",
            d.rst_ratio,
        )?;
        below(
            "retransmit_ratio_clear",
            d.retransmit_ratio_clear,
            "retransmit_ratio",
            d.retransmit_ratio,
        )?;
        if d.rst_storm_adapt_alpha > d.rst_storm_ewma_alpha {
            return Err(ConfigError::new(Problem::Inconsistent {
                key: "detect.rst_storm_adapt_alpha".to_string(),
                value: d.rst_storm_adapt_alpha.to_string(),
                rule: format!(
                    "must not exceed detect.rst_storm_ewma_alpha ({})",
                    d.rst_storm_ewma_alpha
                ),
            }));
        }
        Ok(())
    }
}

/// A command-line value as TOML (`50`, `0.5`, `"x"`); anything else is taken as a string.
fn parse_value(s: &str) -> Value {
    toml::from_str::<toml::Table>(&format!("v = {s}"))
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(s.to_string()))
}

#[cfg(test)]
mod tests;
