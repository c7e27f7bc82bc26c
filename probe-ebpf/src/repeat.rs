//! In-kernel repeat-RST detection: a second RST on one socket within the window, or many RSTs
//! with one remote endpoint or on one local service port. Each hit sends a `RepeatRst` record
//! so userspace reacts without polling; socket hits are also written to `ANOMALY_ALERTS`.
use aya_ebpf::maps::LruHashMap;
use probe_common::{flags, repeat_scope, EventKind, FlowEvent};

use crate::{
    emit::{count_event, emit},
    maps::{
        PeerKey, RstHistory, Window, ANOMALY_ALERTS, REPEAT, RST_HISTORY, RST_PEER_HISTORY,
        RST_PORT_HISTORY,
    },
};

/// Counts one RST described by `rst` (already emitted) and raises the alerts it completes.
/// Alerts reuse the record in place (same cookie and addresses), so call this last.
#[inline(always)]
pub fn check(rst: &mut FlowEvent) {
    let cfg = REPEAT.load();
    let now = rst.ts_ns;
    let is_service = |port: u16| port < cfg.ephemeral_low || port > cfg.ephemeral_high;

    if rst.flags & flags::COOKIE != 0 {
        let previous = unsafe { RST_HISTORY.get(rst.cookie) }.copied();
        let history = RstHistory {
            last_ns: now,
            count: previous.map_or(1, |p| p.count.saturating_add(1)),
            _pad: 0,
        };
        // A failed insert (map busy) only costs this check one sample.
        let _ = RST_HISTORY.insert(rst.cookie, history, 0);
        if previous.is_some_and(|p| now.saturating_sub(p.last_ns) < cfg.window_ns) {
            let _ = ANOMALY_ALERTS.insert(rst.cookie, now, 0);
            alert(rst, repeat_scope::SOCKET, history.count);
        }
    }

    let peer = PeerKey {
        addr: rst.daddr,
        port: if is_service(rst.dport) { rst.dport } else { 0 },
        family: rst.family,
        _pad: 0,
    };
    if let Some(count) = bump(
        &RST_PEER_HISTORY,
        &peer,
        now,
        cfg.window_ns,
        cfg.peer_threshold,
    ) {
        alert(rst, repeat_scope::PEER, count);
    }
    if is_service(rst.sport) {
        let port = u32::from(rst.sport);
        if let Some(count) = bump(
            &RST_PORT_HISTORY,
            &port,
            now,
            cfg.window_ns,
            cfg.port_threshold,
        ) {
            alert(rst, repeat_scope::LOCAL_PORT, count);
        }
    }
}

/// Adds one to the key's window; returns the count when this RST reached the threshold
/// (once per window).
#[inline(always)]
fn bump<K>(
    map: &LruHashMap<K, Window>,
    key: &K,
    now: u64,
    window_ns: u64,
    threshold: u32,
) -> Option<u32> {
    let Some(w) = map.get_ptr_mut(key) else {
        let fresh = Window {
            start_ns: now,
            count: 1,
            alerted: 0,
        };
        let _ = map.insert(key, fresh, 0);
        return None;
    };
    // SAFETY: `w` points at a live map value. Two CPUs may race on it and lose an increment:
    // the window count only decides when to alert; exact totals live in the per-CPU counters.
    let w = unsafe { &mut *w };
    if now.saturating_sub(w.start_ns) >= window_ns {
        w.start_ns = now;
        w.count = 0;
        w.alerted = 0;
    }
    w.count = w.count.saturating_add(1);
    let count = w.count;
    if count >= threshold && w.alerted == 0 {
        w.alerted = 1;
        return Some(count);
    }
    None
}

#[inline(always)]
fn alert(rst: &mut FlowEvent, scope: u32, count: u32) {
    count_event(EventKind::RepeatRst);
    rst.kind = EventKind::RepeatRst as u32;
    rst.args = [scope, count, 0, 0];
    emit(EventKind::RepeatRst, rst);
}
