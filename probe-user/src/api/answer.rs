//! The event loop's side of the API: answers one query from the state the loop owns (flow
//! table, detectors, top, counters), synchronously and with bounded work (one pass over the
//! flow table at most, results capped by `limit`).
use crate::{
    api::{
        filter::Matcher,
        proto::{
            error, AnomalyCounts, AnomalyRecord, ApiCounters, EnvoyRow, ErrorCode, FlowRecord,
            FlowTableRow, PodsRow, ProbeRow, Query, Reply, SortKey, StatusReport,
        },
    },
    attrib::netns_names,
    clock::monotonic_ns,
    config::Config,
    event::totals::Totals,
    kernel::counters,
    kernel::loader::Loaded,
    pipeline::coverage,
    pipeline::flowtable::{CloseCause, Flow},
    pipeline::Pipeline,
    render::{
        anomaly::{name_pods, name_processes},
        incident::{self, HostView},
        netns,
        request::RequestRecord,
    },
};
use std::{collections::HashSet, net::IpAddr};

/// Most flows one `flows` answer returns, whatever the request's limit: the loop answers
/// synchronously, so the work per query stays small (a few ms).
pub const MAX_LIMIT: usize = 2_000;

/// What the loop lends to [`answer`].
pub struct Lent<'a> {
    pub pipeline: &'a Pipeline,
    pub loaded: &'a Loaded,
    pub totals: &'a Totals,
    pub config: &'a Config,
}

/// Answers a query that needs the loop's state (streams are handled by the server).
pub fn answer(q: &Query, st: &Lent<'_>) -> Reply {
    match q {
        Query::Flows {
            filter,
            sort,
            limit,
        } => match Matcher::new(filter) {
            Ok(m) => flows(st, &m, *sort, (*limit).min(MAX_LIMIT)),
            Err(e) => error(ErrorCode::BadRequest, e.to_string()).reply,
        },
        Query::Status => Reply::Status(Box::new(status(st))),
        Query::Flow { cookie } => flow(st, *cookie),
        Query::Anomalies { .. } => anomalies(st),
        Query::Top {
            by,
            limit,
            pods,
            netns: wanted,
        } => {
            let cookie = match wanted.as_deref().map(netns_names::resolve).transpose() {
                Ok(c) => c,
                Err(e) => return error(ErrorCode::BadRequest, e.to_string()).reply,
            };
            let mut report = st.pipeline.top.report_of(
                monotonic_ns(),
                *by,
                (*limit).min(MAX_LIMIT),
                *pods,
                cookie,
            );
            netns::name_top(&mut report, &st.pipeline.attrib);
            Reply::Top(report)
        }
        Query::Watch { .. } => Reply::Error {
            code: ErrorCode::Internal,
            message: "not answered here (watch streams are served by the API thread)".to_owned(),
        },
    }
}

fn status(st: &Lent<'_>) -> StatusReport {
    let kernel = counters::read(&st.loaded.ebpf, &st.loaded.reason_names);
    let (kernel_events, kernel_lost) = match kernel {
        Ok(k) => (
            k.events.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            k.lost.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ),
        Err(e) => {
            log::warn!("status: {e}");
            Default::default()
        }
    };
    let flows = st.pipeline.flows.stats();
    let detect = st.pipeline.detectors.stats();
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: st.totals.kernel_release.clone(),
        pid: std::process::id(),
        uptime_secs: st.totals.started.elapsed().as_secs(),
        probes: st
            .loaded
            .probes
            .iter()
            .map(|p| ProbeRow {
                name: p.spec.program.to_owned(),
                hook: p.target.clone(),
                how: p.how.clone(),
                attached: p.state.is_attached(),
                skipped: p.state.is_skipped(),
                reason: p.state.why().map(str::to_owned),
                requires: p.spec.requires.to_owned(),
            })
            .collect(),
        records: st
            .totals
            .records
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        decode_errors: st.totals.decode_errors,
        output_dropped_lines: st.totals.output_dropped_lines,
        kernel_events,
        kernel_lost,
        flows: FlowTableRow {
            tracked: flows.tracked,
            max: st.config.flows.max_flows,
            evicted: flows.evicted,
            expired: flows.expired,
            expired_open: flows.expired_open,
        },
        anomalies: AnomalyCounts {
            active: detect.active,
            raised: crate::pipeline::detect::AnomalyKind::ALL
                .iter()
                .map(|k| (k.name().to_owned(), detect.raised(*k)))
                .collect(),
        },
        // The server thread fills in its own counters.
        api: ApiCounters::default(),
        command_line: std::env::args().collect(),
        config: st.config.clone(),
        pods: pods_row(&st.pipeline.attrib),
        envoy: envoy_row(&st.pipeline.requests),
    }
}

fn envoy_row(r: &crate::pipeline::requests::Requests) -> Option<EnvoyRow> {
    let stats = r.stats()?;
    let reader = stats.reader;
    Some(EnvoyRow {
        sources: reader.sources,
        queue_full: reader.queue_full,
        files_over_cap: reader.files_over_cap,
        received: stats.received,
        results: stats
            .results
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        unmatched: stats
            .unmatched
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        kept: stats.kept,
        kept_flows: stats.kept_flows,
    })
}

fn pods_row(attrib: &crate::attrib::Attributor) -> PodsRow {
    let a = attrib.status();
    PodsRow {
        mode: a.mode.to_owned(),
        source: a.source.source.to_owned(),
        state: a.source.state,
        fallback: a.fallback,
        pods: a.pods,
        source_errors: a.source.errors,
        source_last_error: a.source.last_error,
        pods_over_cap: a.source.over_cap,
        cgroups_cached: a.cgroups_cached,
        cgroup_misses: a.cgroups.misses,
        cgroup_rescans: a.cgroups.rescans,
        cgroup_rescans_refused: a.cgroups.rate_limited,
        cgroups_gone: a.cgroups.gone,
        cgroup_last_scan_us: a.cgroups.last_scan_us,
        cgroups_skipped: a.cgroups.skipped,
    }
}

fn flows(st: &Lent<'_>, m: &Matcher, sort: SortKey, limit: usize) -> Reply {
    let now = monotonic_ns();
    let table = &st.pipeline.flows;
    let attrib = &st.pipeline.attrib;
    let requests = &st.pipeline.requests;
    let matched: Vec<&Flow> = table
        .iter()
        .filter(|f| {
            m.flow(f, now)
                && (!m.wants_owner() || m.owner(&attrib.owner(f.cgroup_id)))
                && (!m.wants_requests()
                    || requests
                        .of(&f.key)
                        .is_some_and(|r| r.kept.iter().any(|r| m.request(r))))
        })
        .collect();
    let n = matched.len();
    let matched = best_flows(matched, sort, limit);
    Reply::Flows {
        total: table.len(),
        matched: n,
        truncated: matched.len() < n,
        flows: matched
            .iter()
            .map(|f| {
                FlowRecord::new(f, &st.loaded.reason_names)
                    .attributed(f, attrib)
                    .with_requests(requests.of(&f.key), |r| m.request(r))
            })
            .collect(),
    }
}

/// Where a flow ranks under `sort` (higher first). Ties end at the flow's key, unique in the
/// table, so the order is total: the same flows come first however they were stored.
fn rank(f: &Flow, sort: SortKey) -> (u64, u64, u64, u64) {
    let (cookie, netns) = (f.key.cookie, f.key.netns);
    match sort {
        SortKey::Age => (f.start_ns, cookie, netns, 0),
        SortKey::Retrans => (
            u64::from(f.syn_retransmits) + u64::from(f.data_retransmits),
            f.start_ns,
            cookie,
            netns,
        ),
        SortKey::Rtt => (u64::from(f.srtt_us), f.start_ns, cookie, netns),
    }
}

/// The first `limit` of `matched` in `sort` order: a partial selection (linear) then a sort of
/// the kept ones only, instead of sorting every match to keep a few.
pub fn best_flows(mut matched: Vec<&Flow>, sort: SortKey, limit: usize) -> Vec<&Flow> {
    let order = |a: &&Flow, b: &&Flow| rank(b, sort).cmp(&rank(a, sort));
    if limit == 0 {
        matched.clear();
    } else if matched.len() > limit {
        matched.select_nth_unstable_by(limit - 1, order);
        matched.truncate(limit);
    }
    matched.sort_unstable_by(order);
    matched
}

fn flow(st: &Lent<'_>, cookie: u64) -> Reply {
    // The cookie is unique per boot across namespaces; the table key adds the netns.
    let Some(f) = st.pipeline.flows.iter().find(|f| f.key.cookie == cookie) else {
        return error(
            ErrorCode::NotFound,
            format!(
                "no flow with cookie {cookie} in the table (closed flows are kept for {} s; see \
                 `linkprobe flows`)",
                st.config.flows.retain_closed_secs
            ),
        )
        .reply;
    };
    let now = monotonic_ns();
    let det = &st.pipeline.detectors;
    // The flow's anomalies: those that name it as evidence and those that cover it (their
    // evidence lists are bounded; what they cover is not).
    let mine = |a: &&crate::pipeline::detect::Anomaly| {
        a.evidence.contains(&cookie) || coverage::covers(a, f, now)
    };
    let mut anomalies = Vec::new();
    for a in det.active().filter(mine) {
        anomalies.push(AnomalyRecord::new(a, "active", now));
    }
    for a in det.recent().filter(mine) {
        anomalies.push(AnomalyRecord::new(a, "cleared", now));
    }
    name_pods(&mut anomalies, &st.pipeline.flows, &st.pipeline.attrib);
    name_processes(&mut anomalies, &st.pipeline.flows);
    netns::name_anomalies(&mut anomalies, &st.pipeline.attrib);
    let hint = root_cause(f, &st.loaded.reason_names, &anomalies);
    Reply::Flow {
        flow: Box::new(
            FlowRecord::new(f, &st.loaded.reason_names)
                .attributed(f, &st.pipeline.attrib)
                .with_requests(st.pipeline.requests.of(&f.key), |_| true),
        ),
        anomalies,
        hint,
    }
}

fn anomalies(st: &Lent<'_>) -> Reply {
    let now = monotonic_ns();
    let det = &st.pipeline.detectors;
    let mut active: Vec<AnomalyRecord> = det
        .active()
        .map(|a| AnomalyRecord::new(a, "active", now))
        .collect();
    // Most recently cleared first.
    let mut recent: Vec<AnomalyRecord> = det
        .recent()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|a| AnomalyRecord::new(a, "cleared", now))
        .collect();
    let (flows, attrib) = (&st.pipeline.flows, &st.pipeline.attrib);
    name_pods(&mut active, flows, attrib);
    name_pods(&mut recent, flows, attrib);
    name_processes(&mut active, flows);
    name_processes(&mut recent, flows);
    netns::name_anomalies(&mut active, attrib);
    netns::name_anomalies(&mut recent, attrib);
    // How many flows of the table each covers (one pass over the flow table).
    let listed: Vec<&crate::pipeline::detect::Anomaly> = det.active().chain(det.recent()).collect();
    let covered = coverage::count_covered(&listed, flows.iter(), now);
    for r in active.iter_mut().chain(recent.iter_mut()) {
        r.flows = covered.get(&r.id).copied();
    }
    let all: Vec<AnomalyRecord> = active.iter().chain(&recent).cloned().collect();
    let mut incidents = incident::group(&all, &host_view(flows, &all), now);
    let cookies: std::collections::HashMap<u64, &crate::pipeline::flowtable::FlowKey> = st
        .pipeline
        .requests
        .flows()
        .map(|(k, _)| (k.cookie, k))
        .collect();
    incident::add_requests(
        &mut incidents,
        &request_flows_by_anomaly(st, &listed, now),
        |cookie| {
            cookies
                .get(&cookie)
                .and_then(|k| st.pipeline.requests.of(k))
                .map(|j| RequestRecord::all_of(j, |_| true))
                .unwrap_or_default()
        },
    );
    Reply::Anomalies {
        active,
        recent,
        incidents,
    }
}

/// Flows with joined requests that each anomaly covers or names, by anomaly id: one check
/// per flow with requests, at most [`MAX_REQUEST_FLOWS`] flows per anomaly.
fn request_flows_by_anomaly(
    st: &Lent<'_>,
    listed: &[&crate::pipeline::detect::Anomaly],
    now: u64,
) -> std::collections::HashMap<u64, Vec<u64>> {
    let mut out: std::collections::HashMap<u64, Vec<u64>> = std::collections::HashMap::new();
    if listed.is_empty() {
        return out;
    }
    let index = coverage::CoverIndex::new(listed);
    let mut ids = Vec::new();
    for (key, _) in st.pipeline.requests.flows() {
        let Some(f) = st.pipeline.flows.get(key) else {
            continue;
        };
        index.ids_of(f, now, &mut ids);
        for id in &ids {
            let list = out.entry(*id).or_default();
            if list.len() < MAX_REQUEST_FLOWS {
                list.push(key.cookie);
            }
        }
    }
    out
}

/// Flows with requests considered per anomaly for its incident's requests.
const MAX_REQUEST_FLOWS: usize = 4096;

/// This host's addresses, as its sockets show them (a peer endpoint at one of them is one of
/// our own service ports), and the service port each evidence flow was about: one pass over
/// the flow table.
fn host_view(flows: &crate::pipeline::flowtable::FlowTable, all: &[AnomalyRecord]) -> HostView {
    let evidence: HashSet<u64> = all
        .iter()
        .flat_map(|a| a.evidence.iter().copied())
        .collect();
    let local_ips: HashSet<IpAddr> = flows.iter().map(|f| f.local.ip()).collect();
    let mut ip_netns: std::collections::HashMap<IpAddr, std::collections::BTreeSet<u64>> =
        std::collections::HashMap::new();
    for f in flows.iter() {
        let held = ip_netns.entry(f.local.ip()).or_default();
        // Bounded: an address is in a few namespaces at most that matter here.
        if held.len() < 16 {
            held.insert(f.key.netns);
        }
    }
    let mut service_port = std::collections::HashMap::new();
    let mut flow_netns = std::collections::HashMap::new();
    for f in flows.iter().filter(|f| evidence.contains(&f.key.cookie)) {
        let port = match f.role {
            Some(crate::event::Role::Server) => Some(f.local.port()),
            Some(crate::event::Role::Client)
                if f.remote.ip().is_loopback() || local_ips.contains(&f.remote.ip()) =>
            {
                Some(f.remote.port())
            }
            _ => None,
        };
        if let Some(p) = port {
            service_port.insert(f.key.cookie, p);
            flow_netns.insert(f.key.cookie, f.key.netns);
        }
    }
    HostView {
        local_ips,
        service_port,
        flow_netns,
        ip_netns,
    }
}

/// One line: why this flow ended (or how it is doing), from its close cause, counters and the
/// anomalies it is evidence for.
pub fn root_cause(
    f: &Flow,
    reasons: &crate::event::rst_reason::ReasonNames,
    anomalies: &[AnomalyRecord],
) -> String {
    let remote = f.remote;
    let mut hint = match f.close {
        Some(CloseCause::Refused) => {
            format!("nothing listening on {remote} (RST to SYN): connection refused")
        }
        Some(CloseCause::Timeout) => format!(
            "connect to {remote} timed out in the kernel (ETIMEDOUT after {} SYN retransmits): \
             backend down or a firewall dropping SYNs",
            f.syn_retransmits
        ),
        Some(CloseCause::Abandoned) => format!(
            "connect to {remote} aborted by the app after {} ({} SYN retransmits unanswered, \
             no kernel timeout): backend down or a firewall dropping SYNs, or the app's connect \
             timeout is shorter than the path needs",
            f.closed_ns.map_or_else(
                || "-".to_owned(),
                |c| format!("{:.1} s", c.get().saturating_sub(f.start_ns) as f64 / 1e9)
            ),
            f.syn_retransmits
        ),
        Some(CloseCause::Unreachable) => format!("no route to {remote} (ICMP unreachable)"),
        Some(CloseCause::RstReceived) => format!(
            "{remote} reset the connection{}: app crash, idle timeout or an LB/proxy reset",
            if f.established {
                " after it was established"
            } else {
                ""
            }
        ),
        // This host sent it: the kernel's reason says whether its application aborted or it
        // answered a segment of the peer's.
        Some(CloseCause::RstSent) => {
            let reason = f.last_rst_reason.map(|r| reasons.shared(r));
            crate::event::rst_reason::explain_sent(reason.as_deref(), &remote.to_string())
        }
        // A reset after CLOSE (SO_LINGER 0) already turned the cause into RstSent/RstReceived.
        Some(CloseCause::Fin) => "closed normally (FIN)".to_owned(),
        None if !f.established && f.syn_retransmits > 0 => format!(
            "still connecting to {remote}: {} SYN retransmits so far",
            f.syn_retransmits
        ),
        None if f.established && f.rst_sent + f.rst_received + f.data_retransmits == 0 => {
            format!(
                "open and healthy: established with {remote} ({}), no retransmits or resets so far",
                f.state
            )
        }
        None if f.established => format!("open: established with {remote} ({})", f.state),
        None if f.state == crate::event::TcpState::SYN_SENT => {
            format!("connecting to {remote}: SYN sent, no answer yet")
        }
        None => format!("open ({}), nothing unusual seen", f.state),
    };
    // RTOs before the handshake are SYN retries, already told above.
    if f.data_retransmits > 0 || (f.established && f.rtos > 0) {
        hint.push_str(&format!(
            "; {} data retransmits, {} RTOs (loss on the path?)",
            f.data_retransmits, f.rtos
        ));
    }
    // The anomaly that matches how the flow ended says most; else the first one.
    let wanted: &[&str] = match f.close {
        Some(CloseCause::Refused) => &["connect_refused", "rst_storm", "rst_ratio"],
        Some(CloseCause::Timeout) => &["connect_timeout", "syn_retry"],
        Some(CloseCause::Abandoned) => &["connect_abandoned", "syn_retry"],
        Some(CloseCause::Unreachable) => &["connect_unreachable"],
        Some(CloseCause::RstReceived) => &["reset_after_established", "rst_storm", "rst_ratio"],
        Some(CloseCause::RstSent) => &["local_reset_established", "rst_storm", "rst_ratio"],
        _ => &[],
    };
    let best = wanted
        .iter()
        .find_map(|k| anomalies.iter().find(|a| a.kind == *k))
        .or(anomalies.first());
    if let Some(a) = best {
        hint.push_str(&format!("; evidence for {} on {}", a.kind, a.scope));
    }
    hint
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::pipeline::flowtable::FlowKey;

    fn flow(i: usize, start_ns: u64, retrans: (u32, u32), srtt_us: u32) -> Flow {
        let mut f = Flow::new(
            FlowKey {
                netns: (i % 3) as u64,
                cookie: (i / 3) as u64,
            },
            "10.0.0.1:1000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
            start_ns,
        );
        (f.syn_retransmits, f.data_retransmits, f.srtt_us) = (retrans.0, retrans.1, srtt_us);
        f
    }

    fn full_sort(flows: &[Flow], sort: SortKey, limit: usize) -> Vec<(u64, u64)> {
        let mut all: Vec<&Flow> = flows.iter().collect();
        all.sort_by_key(|f| std::cmp::Reverse(rank(f, sort)));
        all.truncate(limit);
        all.iter().map(|f| (f.key.netns, f.key.cookie)).collect()
    }

    proptest! {
        /// Small value ranges so that ties on the sort field are common.
        #[test]
        fn partial_selection_returns_exactly_what_a_full_sort_would(
            fields in prop::collection::vec((0u64..20, (0u32..4, 0u32..4), 0u32..10), 0..300),
            limit in 0usize..320,
        ) {
            let flows: Vec<Flow> = fields
                .iter()
                .enumerate()
                .map(|(i, (start, retrans, rtt))| flow(i, *start, *retrans, *rtt))
                .collect();
            for sort in [SortKey::Age, SortKey::Retrans, SortKey::Rtt] {
                let got: Vec<(u64, u64)> = best_flows(flows.iter().collect(), sort, limit)
                    .iter()
                    .map(|f| (f.key.netns, f.key.cookie))
                    .collect();
                prop_assert_eq!(got, full_sort(&flows, sort, limit), "{:?}", sort);
            }
        }
    }

    #[test]
    fn ties_are_broken_by_the_flow_key_not_by_storage_order() {
        let flows = [
            flow(0, 5, (1, 0), 3),
            flow(1, 5, (1, 0), 3),
            flow(2, 5, (0, 1), 3),
        ];
        let fwd = best_flows(flows.iter().collect(), SortKey::Retrans, 2);
        let rev = best_flows(flows.iter().rev().collect(), SortKey::Retrans, 2);
        let keys = |v: &[&Flow]| v.iter().map(|f| f.key.netns).collect::<Vec<_>>();
        assert_eq!(keys(&fwd), keys(&rev));
        assert_eq!(keys(&fwd), [2, 1]);
    }
}
