//! Bounded label values for the failure metric: Envoy's documented response flags (anything
//! else is `other`) and the close cause of the flow behind the request.
use crate::pipeline::flowtable::Flow;

/// Envoy's response flags (short forms), as documented for access logs.
pub const FLAGS: &[&str] = &[
    "DC", "DF", "DI", "DO", "DPE", "DT", "FI", "IH", "LH", "LR", "NC", "NFCF", "NR", "OM", "RFCF",
    "RL", "RLSE", "SI", "UAEX", "UC", "UDO", "UF", "UH", "UMSDR", "UO", "UPE", "URX", "UT",
];

/// `flag` as a metric label: itself when Envoy documents it, else `other`.
pub fn flag(flag: &str) -> &'static str {
    FLAGS
        .iter()
        .find(|f| f.eq_ignore_ascii_case(flag))
        .copied()
        .unwrap_or("other")
}

/// How the flow behind a request ended: its close cause, `open`, or `unmatched`.
pub fn close_cause(flow: Option<&Flow>) -> &'static str {
    match flow {
        None => "unmatched",
        Some(f) => f.close.map_or("open", |c| c.name()),
    }
}
