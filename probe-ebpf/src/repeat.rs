//! In-kernel repeat-RST detection: a second RST on one flow within a window, or many RSTs
//! with one remote endpoint or on one local service port within one. Windows are fixed (opened
//! by the first RST after the last one ended); each scope alerts at most once per window. Each
//! hit sends a `RepeatRst` record so userspace reacts without polling.
use aya_ebpf::maps::LruHashMap;
use probe_common::{repeat_scope, EventKind, FlowState};

use crate::{
    counters::count_event,
    emit::{send, Header},
    maps::{PeerKey, Window, REPEAT, RST_PEER_HISTORY, RST_PORT_HISTORY},
    sock::Addrs,
};

/// Counts one RST (already counted and sent; `rst` is its record's header) with the flow it
/// belongs to, if any, and raises the alerts it completes.
#[inline(always)]
pub fn check(rst: &Header, a: &Addrs, flow: Option<&mut FlowState>) {
    let cfg = REPEAT.load();
    let now = rst.now;
    let is_service = |port: u16| port < cfg.ephemeral_low || port > cfg.ephemeral_high;

    if let Some(st) = flow {
        // RSTs of this flow in the current window, as for the peer and port scopes: the first
        // RST after a window ends opens the next one (never the flow's lifetime count, and
        // never a chain of RSTs each within the window of the one before).
        if st.rst_window == 0 || now.saturating_sub(st.rst_window_start_ns) >= cfg.window_ns {
            st.rst_window_start_ns = now;
            st.rst_window = 0;
        }
        st.rst_window = st.rst_window.saturating_add(1);
        // Once per window: the count passes 2 once.
        if st.rst_window == 2 {
            alert(rst, a, repeat_scope::SOCKET, 2);
        }
    }

    let peer = PeerKey {
        addr: a.remote_bytes(),
        port: if is_service(a.dport) { a.dport } else { 0 },
        family: a.family,
        _pad: 0,
    };
    let peers = bump(
        &RST_PEER_HISTORY,
        &peer,
        now,
        cfg.window_ns,
        cfg.peer_threshold,
    );
    alert(rst, a, repeat_scope::PEER, peers);
    if is_service(a.sport) {
        let port = u32::from(a.sport);
        let ports = bump(
            &RST_PORT_HISTORY,
            &port,
            now,
            cfg.window_ns,
            cfg.port_threshold,
        );
        alert(rst, a, repeat_scope::LOCAL_PORT, ports);
    }
}

/// Adds one to the key's window; returns the count when this RST reached the threshold (once
/// per window), else 0.
#[inline(always)]
fn bump<K>(map: &LruHashMap<K, Window>, key: &K, now: u64, window_ns: u64, threshold: u32) -> u32 {
    let Some(w) = map.get_ptr_mut(key) else {
        let fresh = Window {
            start_ns: now,
            count: 1,
            alerted: 0,
        };
        let _ = map.insert(key, fresh, 0);
        return 0;
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
        return count;
    }
    0
}

/// The `scope` alert, completed by the RST that brought its window to `count` RSTs (0: none
/// completed, no alert): a record of its own, with the RST's socket and addresses.
#[inline(always)]
fn alert(rst: &Header, a: &Addrs, scope: u32, count: u32) {
    if count == 0 {
        return;
    }
    count_event(EventKind::RepeatRst);
    send(EventKind::RepeatRst, None, 0, |rec| {
        Header::at(rst.now, rst.cookie, rst.netns, 0).write(rec);
        a.write(rec);
        rec.args = [scope, count];
    });
}
