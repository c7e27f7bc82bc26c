//! Names the network namespaces of anomaly and `top` scopes, after the records are built: the
//! pipeline keys scopes by netns cookie (two `:8080` listeners in two namespaces are two
//! scopes); people read names. A scope in the host's namespace (or in the daemon's `--netns`
//! one, the only one it sees) keeps its text as it was; any other says where it is
//! (`local port 8080 in netns ux1`).
use crate::{attrib::Attributor, pipeline::top::TopReport, render::anomaly::AnomalyRecord};

/// `(name, scope text)` for a scope `text` in the namespace `cookie`.
fn named(attrib: &Attributor, cookie: u64, text: &str) -> (Option<String>, String) {
    let name = attrib.netns_name(cookie);
    if attrib.is_home_netns(cookie) {
        return (name.map(|n| n.to_string()), text.to_owned());
    }
    match name {
        Some(name) => (Some(name.to_string()), format!("{text} in netns {name}")),
        // Not found (yet): the cookie, as `flows -o wide` shows it without a name.
        None => (None, format!("{text} in netns {cookie}")),
    }
}

/// Names the namespace of each record's scope (one cached lookup per record).
pub fn name_anomalies(records: &mut [AnomalyRecord], attrib: &Attributor) {
    for r in records.iter_mut() {
        let Some(cookie) = r.netns_cookie else {
            continue;
        };
        if r.netns.is_some() {
            continue;
        }
        let (name, scope) = named(attrib, cookie, &r.scope);
        r.netns = name;
        r.scope = scope;
    }
}

/// Names the namespace of each row of a `top` report.
pub fn name_top(report: &mut TopReport, attrib: &Attributor) {
    for row in &mut report.rows {
        let Some(cookie) = row.netns_cookie else {
            continue;
        };
        let (name, scope) = named(attrib, cookie, &row.scope);
        row.netns = name;
        row.scope = scope;
    }
}
