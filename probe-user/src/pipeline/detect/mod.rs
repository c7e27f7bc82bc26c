//! Anomaly detectors: count [`Signal`]s per scope (peer endpoint, local port, socket) in 1 s
//! windows and raise / clear [`Anomaly`]s with hysteresis.
//!
//! Pure and deterministic: time comes only from the signals' `ts_ns` and from
//! [`Detectors::tick`] (both CLOCK_MONOTONIC). Windows are `[k s, (k+1) s)`; window `k` is closed
//! (evaluated) by the first `tick(now)` or signal with a time at or after its end. Signals from
//! an already closed window (a little reordering between CPUs) count into the open one.
//!
//! Kinds and rules (thresholds in [`DetectConfig`], defaults in brackets):
//! - rate / ratio kinds, evaluated when a window closes, raised after `*_raise_after`
//!   consecutive windows above the raise threshold, cleared after `clear_after` [3] consecutive
//!   windows below a lower clear threshold (windows in between reset the clear count):
//!   - [`AnomalyKind::RstStorm`] per peer and per local port: RST/s ≥ `rst_storm_min_rate` [20]
//!     and ≥ `rst_storm_factor` [10] × the scope's EWMA baseline; raise after 1 window; clear
//!     below `rst_storm_clear_fraction` [0.5] × the raise threshold. The baseline learns from
//!     calm windows with `rst_storm_ewma_alpha` [0.1] (a new scope starts at 0, so the floor
//!     decides) and, during a storm or a raise streak, only with `rst_storm_adapt_alpha`
//!     [0.002]: a level that stays high becomes the new normal after about 2 minutes
//!     (`1 - (1 - 0.002)^n` reaches 1/(factor × clear_fraction) = 0.2 at n ≈ 111 windows), so a
//!     scope that always runs at 25 RST/s raises once on first sight, clears after about 2
//!     minutes and does not raise again. Set it to 0 to freeze the baseline during storms.
//!   - [`AnomalyKind::RstRatio`] per peer and per local port: RSTs / connections over the last
//!     `rst_ratio_window_secs` [60] windows > `rst_ratio` [5 %] with at least
//!     `rst_ratio_min_connections` [20]; raise after 2 windows; clear below `rst_ratio_clear`
//!     [2.5 %] or when fewer connections remain in the window.
//!   - [`AnomalyKind::RetransmitRate`] per peer: retransmitted / sent data segments over
//!     `retransmit_window_secs` [60] > `retransmit_ratio` [2 %] with at least
//!     `retransmit_min_segments` [1000] sent; raise after 2 windows; clear below
//!     `retransmit_ratio_clear` [1 %] or with fewer segments.
//! - event kinds, raised by the signal itself when none is active for the (kind, scope),
//!   cleared after `event_clear_after` [10] windows without a new occurrence:
//!   [`AnomalyKind::SynRetry`] (SYN retransmit more than `syn_retry_min_ms` [1000] after the
//!   first SYN), the typed connect failures, [`AnomalyKind::ResetAfterEstablished`] (per peer,
//!   RSTs received: the peer reset us), [`AnomalyKind::LocalResetEstablished`] (per peer, RSTs
//!   sent: this host reset the peer, with the kernel reason's meaning and hint) and [`AnomalyKind::KernelRepeatRst`] (per socket, peer or local port, as the kernel said).
//!
//! At most one anomaly is active per (kind, scope); its `peak_rate` and evidence (socket
//! cookies, at most `evidence_len` [16]) grow while it is. Ids increase monotonically.
//!
//! Memory: at most `max_scopes` [4096] scopes; a new scope evicts the least recently active
//! scope without an active anomaly (O(1): scopes with an active anomaly leave the recency list).
//! When every scope has an active anomaly, the new scope's signal is dropped and counted.
//! Each window close only visits scopes with something to evaluate (the "hot" list).
mod anomaly;
mod book;
mod state;
mod table;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_events;

use std::time::Duration;

pub use crate::config::DetectConfig;
use crate::{
    event::{
        rst_reason::{self, ResetCause},
        RepeatScope,
    },
    pipeline::signal::{ConnectFailure, Peer, RetransmitKind, RstDirection, Signal},
};

pub use anomaly::{Anomaly, AnomalyChange, AnomalyKind, Scope, WINDOW_NS};
use book::Book;
use state::{Said, ScopeState};
use table::ScopeTable;

/// Detector counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DetectStats {
    pub scopes_tracked: usize,
    pub scopes_evicted: u64,
    /// Signals dropped for a new scope because every tracked scope had an active anomaly.
    pub scopes_rejected: u64,
    /// Kernel repeat-RST signals without the cookie, peer or port their scope needs.
    pub signals_unscoped: u64,
    /// Changes dropped because `tick` was not called for too long.
    pub changes_dropped: u64,
    pub active: usize,
    /// Anomalies raised since start, indexed by [`AnomalyKind::index`].
    pub raised_total: [u64; AnomalyKind::COUNT],
}

impl DetectStats {
    pub fn raised(&self, kind: AnomalyKind) -> u64 {
        self.raised_total[kind.index()]
    }
}

/// All detectors over all scopes.
pub struct Detectors {
    cfg: DetectConfig,
    table: ScopeTable,
    book: Book,
    /// The window signals count into; every earlier one is closed.
    open: Option<u64>,
    unscoped: u64,
}

impl Detectors {
    pub fn new(cfg: DetectConfig) -> Self {
        Detectors {
            table: ScopeTable::new(cfg.max_scopes),
            book: Book::new(cfg.evidence_len, cfg.recent_len),
            cfg,
            open: None,
            unscoped: 0,
        }
    }

    /// Counts one signal into the open window of each scope it belongs to; event kinds raise
    /// here (reported by the next `tick`). Closes the windows that ended before the signal.
    pub fn observe(&mut self, s: &Signal) {
        let ts = s.ts_ns();
        self.advance(ts / WINDOW_NS);
        let open = self.open.unwrap_or_default();
        match s {
            Signal::Connection {
                peer, local_port, ..
            } => {
                self.update(Scope::Peer(*peer), |st, cfg, _| {
                    st.connection(ts, open, cfg);
                });
                if let Some(port) = local_port {
                    self.update(Scope::LocalPort(peer.netns, *port), |st, cfg, _| {
                        st.connection(ts, open, cfg);
                    });
                }
            }
            Signal::Rst {
                direction,
                peer,
                local_port,
                cookie,
                reason,
                after_established,
                connection_ns,
                ..
            } => {
                let counted = |st: &mut ScopeState, cfg: &DetectConfig, book: &mut Book| {
                    st.rst(*cookie, book);
                    if let Some(c) = connection_ns {
                        st.flow_reset(*c, open, cfg);
                    }
                };
                self.update(Scope::Peer(*peer), counted);
                if let Some(port) = local_port {
                    self.update(Scope::LocalPort(peer.netns, *port), counted);
                }
                if *after_established {
                    let (kind, said) = reset_said(*direction, *peer, reason.as_deref());
                    self.update(Scope::Peer(*peer), |st, _, book| {
                        st.event(kind, ts, *cookie, None, said, book);
                    });
                }
            }
            Signal::Retransmit {
                peer,
                cookie: Some(cookie),
                kind:
                    RetransmitKind::Syn {
                        since_first_syn: Some(since_first_syn),
                    },
                ..
            } => {
                if *since_first_syn > Duration::from_millis(self.cfg.syn_retry_min_ms) {
                    let detail = format!(
                        "SYN retransmitted {} ms after the first SYN",
                        since_first_syn.as_millis()
                    );
                    self.update(Scope::Peer(*peer), |st, _, book| {
                        let kind = AnomalyKind::SynRetry;
                        st.event(kind, ts, Some(*cookie), None, Said::of(kind, detail), book);
                    });
                }
            }
            Signal::ConnectFailed {
                peer,
                cookie,
                cause,
                ..
            } => {
                let (kind, detail) = match cause {
                    ConnectFailure::Refused => (AnomalyKind::ConnectRefused, "connection refused"),
                    ConnectFailure::Timeout => (AnomalyKind::ConnectTimeout, "connect timed out"),
                    ConnectFailure::Unreachable => {
                        (AnomalyKind::ConnectUnreachable, "peer unreachable")
                    }
                    ConnectFailure::Abandoned => (
                        AnomalyKind::ConnectAbandoned,
                        "connect abandoned by the app before the kernel timed out",
                    ),
                    // Resets are raised from the RST itself (reset after established, storms).
                    ConnectFailure::Reset => return,
                };
                self.update(Scope::Peer(*peer), |st, _, book| {
                    let said = Said::of(kind, detail.to_owned());
                    st.event(kind, ts, Some(*cookie), None, said, book);
                });
            }
            Signal::DataSegments {
                peer,
                sent,
                retransmitted,
                ..
            } => {
                self.update(Scope::Peer(*peer), |st, cfg, _| {
                    st.segments(*sent, *retransmitted, cfg);
                });
            }
            Signal::RepeatRst {
                scope,
                peer,
                local_port,
                netns,
                cookie,
                count,
                ..
            } => {
                let target = match scope {
                    RepeatScope::Socket => cookie.map(Scope::Socket),
                    RepeatScope::Peer => peer.map(Scope::Peer),
                    RepeatScope::LocalPort => local_port.map(|p| Scope::LocalPort(*netns, p)),
                };
                let Some(target) = target else {
                    self.unscoped += 1;
                    return;
                };
                let detail = format!("kernel counted {count} RSTs within its window on {target}");
                let peak = Some(f64::from(*count));
                self.update(target, |st, _, book| {
                    let kind = AnomalyKind::KernelRepeatRst;
                    st.event(kind, ts, *cookie, peak, Said::of(kind, detail), book);
                });
            }
            // Counted by the exporter; no detector rule uses them (yet).
            Signal::Retransmit { .. } | Signal::Handshake { .. } | Signal::Rtt { .. } => {}
        }
    }

    /// Closes every window that ended by `now_ns` and returns the changes since the last call
    /// (in order: raised by signals or by window closes, updated, cleared).
    pub fn tick(&mut self, now_ns: u64) -> Vec<AnomalyChange> {
        self.advance(now_ns / WINDOW_NS);
        self.book.drain()
    }

    /// Active anomalies, oldest id first.
    pub fn active(&self) -> impl Iterator<Item = &Anomaly> {
        self.book.active()
    }

    /// Cleared anomalies (at most `recent_len`), in the order they cleared.
    pub fn recent(&self) -> impl Iterator<Item = &Anomaly> {
        self.book.recent()
    }

    pub fn stats(&self) -> DetectStats {
        DetectStats {
            scopes_tracked: self.table.len(),
            scopes_evicted: self.table.evicted(),
            scopes_rejected: self.table.rejected(),
            signals_unscoped: self.unscoped,
            changes_dropped: self.book.changes_dropped(),
            active: self.book.active_len(),
            raised_total: self.book.raised_total(),
        }
    }

    /// Whether the scope has detector state (tests of eviction order).
    #[cfg(test)]
    fn tracks(&self, scope: &Scope) -> bool {
        self.table.contains(scope)
    }

    /// Applies `f` to the scope's state (tracking it if new) and re-files the scope.
    fn update(&mut self, scope: Scope, f: impl FnOnce(&mut ScopeState, &DetectConfig, &mut Book)) {
        let window = self.open.unwrap_or_default();
        let Some(i) = self.table.lookup(scope, || ScopeState::new(scope, window)) else {
            return;
        };
        if let Some(st) = self.table.state_mut(i) {
            f(st, &self.cfg, &mut self.book);
        }
        self.table.settle(i);
    }

    /// Makes `target` the open window, closing the ones before it.
    fn advance(&mut self, target: u64) {
        let Some(mut w) = self.open else {
            self.open = Some(target);
            return;
        };
        while w < target {
            for (i, generation) in self.table.take_hot() {
                if let Some(st) = self.table.current(i, generation) {
                    st.close(w, &self.cfg, &mut self.book);
                    self.table.after_close(i, generation);
                }
            }
            w += 1;
            if self.table.hot_is_empty() {
                // Nothing left to evaluate: the windows in between change nothing.
                w = target;
            }
        }
        self.open = Some(w);
    }
}

/// A reset on an established connection: received, the peer did it; sent, this host did, and
/// the kernel's reason says whether its application aborted or it answered the peer.
fn reset_said(direction: RstDirection, peer: Peer, reason: Option<&str>) -> (AnomalyKind, Said) {
    match direction {
        RstDirection::Received => {
            let kind = AnomalyKind::ResetAfterEstablished;
            let detail = format!("{peer} reset an established connection (RST received)");
            (kind, Said::of(kind, detail))
        }
        RstDirection::Sent => {
            let kind = AnomalyKind::LocalResetEstablished;
            let cause = reason
                .and_then(rst_reason::meaning)
                .map_or(ResetCause::Unspecified, |m| m.cause);
            let said = Said {
                detail: rst_reason::explain_sent(reason, &peer.to_string()),
                hint: AnomalyKind::local_reset_hint(cause),
            };
            (kind, said)
        }
    }
}
