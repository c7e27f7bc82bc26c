//! The local API's wire types, shared by the daemon and the CLI: newline-delimited JSON, one
//! [`Request`] per line, one [`Response`] per line (a stream of them for `watch`). Field names
//! are a contract; `flow`, `anomaly` and `event` objects are the records of `render` (the same
//! types the daemon's `-o json` writes), which the CLI decodes.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Config;
// Records are defined once, where they are rendered; the top report is the pipeline's own.
pub use crate::{
    pipeline::top::{TopKey, TopReport},
    render::{
        anomaly::AnomalyRecord, event::EventRecord, flow::FlowRecord, incident::IncidentRecord,
    },
};

/// Protocol version: a daemon answers requests of this version only.
pub const API_VERSION: u32 = 1;
/// Longest request line the daemon reads; longer ones get an error and the connection closes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub v: u32,
    pub req: Query,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Query {
    Status,
    Flows {
        #[serde(default)]
        filter: Filter,
        #[serde(default)]
        sort: SortKey,
        #[serde(default = "default_limit")]
        limit: usize,
    },
    Flow {
        cookie: u64,
    },
    Anomalies {
        /// Stream anomaly changes after the snapshot.
        #[serde(default)]
        watch: bool,
    },
    /// Stream live events matching the filter.
    Watch {
        #[serde(default)]
        filter: Filter,
    },
    Top {
        #[serde(default)]
        by: TopKey,
        #[serde(default = "default_limit")]
        limit: usize,
        /// Rank the pods of this node instead of peers and ports.
        #[serde(default)]
        pods: bool,
        /// Only scopes of this network namespace: an `ip netns` name, `host` or a cookie.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<String>,
    },
}

fn default_limit() -> usize {
    50
}

/// Flow / event filter; every field set must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filter {
    /// Remote address, optionally with port (`10.0.0.5` or `10.0.0.5:80`).
    pub peer: Option<String>,
    /// Local or remote port.
    pub port: Option<u16>,
    /// TCP state name (`ESTABLISHED`, `SYN_SENT`, …) or `open` / `closed`.
    pub state: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<u64>,
    /// The network namespace: an `ip netns` name, `host`, or a netns cookie (digits).
    pub netns: Option<String>,
    /// The owning pod's namespace (pod attribution).
    pub namespace: Option<String>,
    /// The owning pod's name.
    pub pod: Option<String>,
    pub with_rst: bool,
    pub with_retrans: bool,
    /// Connection attempts that failed (refused, timeout, unreachable).
    pub failed: bool,
    /// Only flows active in the last this many milliseconds.
    pub since_ms: Option<u64>,
    /// Only flows that carried a proxy request with this Envoy response flag (`UC`).
    pub envoy_flag: Option<String>,
    /// Only flows that carried a proxy request with this response code.
    pub status: Option<u16>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// Newest first.
    #[default]
    Age,
    /// Most retransmits first.
    Retrans,
    /// Highest smoothed RTT first.
    Rtt,
}

/// One response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub reply: Reply,
}

impl Response {
    pub fn new(reply: Reply) -> Response {
        Response {
            v: API_VERSION,
            reply,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Status(Box<StatusReport>),
    Flows {
        /// Flows in the table, matching, returned (after `limit`).
        total: usize,
        matched: usize,
        flows: Vec<FlowRecord>,
        /// Fewer flows returned than matched (`limit`, or the daemon's cap of 2000).
        #[serde(default)]
        truncated: bool,
    },
    Flow {
        flow: Box<FlowRecord>,
        /// Active and recently cleared anomalies with this cookie as evidence.
        anomalies: Vec<AnomalyRecord>,
        /// One-line root-cause hint.
        hint: String,
    },
    Anomalies {
        active: Vec<AnomalyRecord>,
        recent: Vec<AnomalyRecord>,
        /// `active` and `recent` grouped: one incident per outage (absent from older daemons).
        #[serde(default)]
        incidents: Vec<IncidentRecord>,
    },
    Top(TopReport),
    /// Streams: the subscription is live (every later event is sent).
    Subscribed,
    /// One live event (`event` has the `-o json` event shape).
    Event {
        event: Box<EventRecord>,
    },
    /// One anomaly change (raised / updated / cleared).
    Anomaly {
        anomaly: Box<AnomalyRecord>,
    },
    /// This client fell behind; `lost` items were dropped for it.
    Overflow {
        lost: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not a known request, or bad fields.
    BadRequest,
    /// Line longer than [`MAX_REQUEST_BYTES`].
    TooLarge,
    UnsupportedVersion,
    NotFound,
    /// The event loop's query queue was full.
    Busy,
    /// Too many connections.
    TooManyClients,
    Timeout,
    Internal,
}

/// `linkprobe status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub kernel: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub probes: Vec<ProbeRow>,
    /// Records decoded per kind.
    pub records: BTreeMap<String, u64>,
    pub decode_errors: u64,
    /// Lines the daemon's stdout did not take in time.
    #[serde(default)]
    pub output_dropped_lines: u64,
    /// Kernel counters: events per kind and records the ring could not take.
    pub kernel_events: BTreeMap<String, u64>,
    pub kernel_lost: BTreeMap<String, u64>,
    pub flows: FlowTableRow,
    pub anomalies: AnomalyCounts,
    pub api: ApiCounters,
    /// The daemon's command line (scope filters, ring and drain settings, …).
    pub command_line: Vec<String>,
    pub config: Config,
    /// Pod attribution: the pod source in use and the cgroup path cache.
    #[serde(default)]
    pub pods: PodsRow,
    /// Proxy access logs (`[envoy]`): sources and the join's counts; absent when off.
    #[serde(default)]
    pub envoy: Option<EnvoyRow>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnvoyRow {
    /// One row per path of `[envoy] paths`.
    pub sources: Vec<crate::accesslog::SourceStatus>,
    /// Requests the reader's full queue did not take.
    pub queue_full: u64,
    /// Files the last listing found but did not follow: `envoy.max_files` reached.
    pub files_over_cap: u64,
    /// Requests taken by the loop.
    pub received: u64,
    /// Joined requests: matched, approximate, unmatched.
    pub results: BTreeMap<String, u64>,
    /// Unmatched requests by reason.
    pub unmatched: BTreeMap<String, u64>,
    /// Requests kept on flows now (for `flow <cookie>`), and on how many flows.
    pub kept: usize,
    pub kept_flows: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodsRow {
    /// `[kubernetes] pods`: auto, api, logs or off.
    pub mode: String,
    /// `kubernetes-api`, `pod-log-dirs` or `none`.
    pub source: String,
    /// The source's state (`synced: 12 pods`, `reconnecting: …`).
    pub state: String,
    /// Why the API source is not in use, when it fell back.
    pub fallback: Option<String>,
    pub pods: usize,
    pub source_errors: u64,
    /// The source's latest error, kept after it recovered.
    pub source_last_error: Option<String>,
    pub pods_over_cap: u64,
    pub cgroups_cached: usize,
    pub cgroup_misses: u64,
    pub cgroup_rescans: u64,
    pub cgroup_rescans_refused: u64,
    /// Lookups of removed cgroups answered without a walk.
    pub cgroups_gone: u64,
    pub cgroup_last_scan_us: u64,
    pub cgroups_skipped: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRow {
    pub name: String,
    pub hook: String,
    /// How it runs on this kernel (`tp_btf, socket storage`, …).
    #[serde(default)]
    pub how: String,
    pub attached: bool,
    /// Not attached because this kernel does not need it (`reason` says why).
    #[serde(default)]
    pub skipped: bool,
    pub reason: Option<String>,
    pub requires: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTableRow {
    pub tracked: usize,
    pub max: usize,
    pub evicted: u64,
    /// Closed flows dropped after `flows.retain_closed_secs`.
    pub expired: u64,
    /// Open flows dropped idle (their close was never seen), `flows.idle_*_secs`.
    #[serde(default)]
    pub expired_open: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnomalyCounts {
    pub active: usize,
    pub raised: BTreeMap<String, u64>,
}

/// The API server's own counters (filled in by the server thread).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiCounters {
    pub connections: u64,
    pub clients_now: u64,
    pub rejected_connections: u64,
    /// Of `rejected_connections`, those over the per-uid cap.
    #[serde(default)]
    pub rejected_per_uid: u64,
    pub bad_requests: u64,
    pub busy: u64,
    /// Stream items dropped for slow watch clients.
    pub watch_lost: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("request is longer than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("request is not UTF-8")]
    NotUtf8,
    #[error("bad request: {0}")]
    Json(String),
    #[error("unsupported API version {got} (this daemon speaks {API_VERSION})")]
    Version { got: u32 },
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge => ErrorCode::TooLarge,
            DecodeError::Version { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::NotUtf8 | DecodeError::Json(_) => ErrorCode::BadRequest,
        }
    }
}

/// Decodes one request line (without or with its trailing newline). Never panics.
pub fn decode_request(line: &[u8]) -> Result<Request, DecodeError> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(DecodeError::TooLarge);
    }
    let text = std::str::from_utf8(line).map_err(|_| DecodeError::NotUtf8)?;
    let req: Request = serde_json::from_str(text.trim_end()).map_err(|e| {
        // serde quotes the client's own field and variant names: escaped before they reach a
        // terminal or the log.
        DecodeError::Json(crate::untrusted::escape_str(&e.to_string()).into_owned())
    })?;
    if req.v != API_VERSION {
        return Err(DecodeError::Version { got: req.v });
    }
    Ok(req)
}

/// One JSON line for a value of our own types (serialising them cannot fail; an error object
/// replaces it regardless).
pub fn encode_line<T: Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string(value).unwrap_or_else(|e| {
        format!("{{\"v\":{API_VERSION},\"reply\":{{\"type\":\"error\",\"code\":\"internal\",\"message\":\"{e}\"}}}}")
    });
    s.push('\n');
    s
}

pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::new(Reply::Error {
        code,
        message: message.into(),
    })
}
