//! One access-log line in Envoy's JSON format → a [`Request`]. The line is hostile input:
//! its size is bounded by the reader before it gets here, every kept string is bounded and
//! every field may be missing, `null`, `"-"` (Envoy's "no value") or of the wrong type.
use std::net::SocketAddr;

use serde_json::{Map, Value};

use crate::config::EnvoyConfig;

/// Longest `response_flags`, `response_code_details` and `x_request_id` kept (bytes); longer
/// values are cut at a character boundary.
pub const MAX_TEXT: usize = 128;
/// Most response flags kept per request.
pub const MAX_FLAGS: usize = 8;

/// The JSON keys of Envoy's fields, as configured (`[envoy] field_*`).
#[derive(Clone, Debug, PartialEq)]
pub struct FieldNames {
    pub start_time: String,
    pub duration: String,
    pub response_code: String,
    pub response_flags: String,
    pub response_code_details: String,
    pub upstream_host: String,
    pub upstream_local_address: String,
    pub downstream_remote_address: String,
    pub downstream_local_address: String,
    pub upstream_connection_id: String,
    pub x_request_id: String,
}

impl FieldNames {
    pub fn of(c: &EnvoyConfig) -> FieldNames {
        FieldNames {
            start_time: c.field_start_time.clone(),
            duration: c.field_duration.clone(),
            response_code: c.field_response_code.clone(),
            response_flags: c.field_response_flags.clone(),
            response_code_details: c.field_response_code_details.clone(),
            upstream_host: c.field_upstream_host.clone(),
            upstream_local_address: c.field_upstream_local_address.clone(),
            downstream_remote_address: c.field_downstream_remote_address.clone(),
            downstream_local_address: c.field_downstream_local_address.clone(),
            upstream_connection_id: c.field_upstream_connection_id.clone(),
            x_request_id: c.field_x_request_id.clone(),
        }
    }
}

impl Default for FieldNames {
    fn default() -> Self {
        FieldNames::of(&EnvoyConfig::default())
    }
}

/// One request as the proxy logged it.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// `start_time`, ns since the Unix epoch (wall clock).
    pub start_unix_ns: i128,
    /// `duration`, ms (0 when absent).
    pub duration_ms: u64,
    /// `response_code`; `None` for 0 or absent (no response sent).
    pub status: Option<u16>,
    /// `response_flags` split at commas (`UF`, `URX`), at most [`MAX_FLAGS`]; empty for `-`.
    pub flags: Vec<String>,
    pub details: Option<String>,
    /// The upstream 4-tuple in the proxy's namespace: `upstream_host` is its remote end,
    /// `upstream_local_address` its local end.
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    /// The downstream pair: the client and the proxy's listener side.
    pub downstream_remote: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    pub upstream_connection_id: Option<u64>,
    pub request_id: Option<String>,
    /// REALTIME − MONOTONIC when the reader read the line (set by the reader, not the line):
    /// the clocks' offset the line's times were written under.
    pub wall_minus_mono: Option<i128>,
}

impl Request {
    /// The flags as Envoy writes them (`UF,URX`), `-` for none.
    pub fn flags_text(&self) -> String {
        if self.flags.is_empty() {
            "-".to_owned()
        } else {
            self.flags.join(",")
        }
    }
}

/// Why a line was not a request.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum LineError {
    #[error("not a JSON object ({0})")]
    NotJson(String),
    #[error("no {0:?} field (the request's start time is required)")]
    NoStartTime(String),
    #[error("field {field:?} is {why}")]
    BadField { field: String, why: &'static str },
}

/// Parses one JSON line (without its newline).
pub fn parse_line(line: &str, names: &FieldNames) -> Result<Request, LineError> {
    let obj: Map<String, Value> = serde_json::from_str(line).map_err(|e| {
        LineError::NotJson(crate::untrusted::escape_str(&e.to_string()).into_owned())
    })?;
    let bad = |field: &str, why| LineError::BadField {
        field: crate::untrusted::escape_str(field).into_owned(),
        why,
    };
    let start = match text(&obj, &names.start_time) {
        Some(t) => {
            // Envoy's text format wraps it in brackets; tolerate them here too.
            let t = t.trim_start_matches('[').trim_end_matches(']');
            crate::clock::parse_rfc3339(t).ok_or_else(|| bad(&names.start_time, "not RFC 3339"))?
        }
        None => return Err(LineError::NoStartTime(names.start_time.clone())),
    };
    let duration_ms = match number(&obj, &names.duration) {
        Ok(n) => n.unwrap_or(0),
        Err(()) => return Err(bad(&names.duration, "not a whole number of ms")),
    };
    let status = match number(&obj, &names.response_code) {
        Ok(n) => match n.map(u16::try_from) {
            None | Some(Ok(0)) => None,
            Some(Ok(c)) if c <= 999 => Some(c),
            _ => return Err(bad(&names.response_code, "not an HTTP status")),
        },
        Err(()) => return Err(bad(&names.response_code, "not an HTTP status")),
    };
    let flags = text(&obj, &names.response_flags)
        .map(|f| {
            f.split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty() && *f != "-")
                .take(MAX_FLAGS)
                .map(|f| cut(f, 16))
                .collect()
        })
        .unwrap_or_default();
    Ok(Request {
        start_unix_ns: start,
        duration_ms,
        status,
        flags,
        details: text(&obj, &names.response_code_details).map(|d| cut(d, MAX_TEXT)),
        upstream_host: addr(&obj, &names.upstream_host),
        upstream_local: addr(&obj, &names.upstream_local_address),
        downstream_remote: addr(&obj, &names.downstream_remote_address),
        downstream_local: addr(&obj, &names.downstream_local_address),
        upstream_connection_id: number(&obj, &names.upstream_connection_id).ok().flatten(),
        request_id: text(&obj, &names.x_request_id).map(|d| cut(d, MAX_TEXT)),
        wall_minus_mono: None,
    })
}

/// A string field; `None` for absent, `null`, empty or `-`.
fn text<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    match obj.get(key)? {
        Value::String(s) if !s.is_empty() && s != "-" => Some(s),
        _ => None,
    }
}

/// A whole number given as a number or a string of digits (Envoy writes either, by format);
/// `Ok(None)` for absent, `null` or `-`; `Err` for anything else.
fn number(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, ()> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(()),
        Some(Value::String(s)) if s.is_empty() || s == "-" => Ok(None),
        Some(Value::String(s)) if s.len() <= 20 => s.parse().map(Some).map_err(|_| ()),
        _ => Err(()),
    }
}

/// `10.0.0.5:8080` or `[fd00::5]:8080` (IPv4-mapped IPv6 shown as IPv4); anything else (a
/// unix socket path, a name) is no address.
pub fn addr(obj: &Map<String, Value>, key: &str) -> Option<SocketAddr> {
    let s = text(obj, key)?;
    if s.len() > 64 {
        return None;
    }
    s.parse::<SocketAddr>().ok().map(canonical)
}

/// The form flows and requests are compared in: an IPv4-mapped IPv6 address as IPv4.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
