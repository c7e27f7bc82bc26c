//! One scope's detector state: the open window's counts, the RST baseline, the sliding sums of
//! the ratio kinds, recent RST cookies and the hysteresis state of each kind.
use std::collections::VecDeque;

use super::{
    anomaly::{AnomalyKind, Scope, WINDOW_NS},
    book::{Book, NewAnomaly},
};
use crate::config::DetectConfig;

/// Sums of (numerator, denominator) over the last `len` windows, one bucket per window.
pub(super) struct Sliding {
    buckets: Box<[(u32, u32)]>,
    pos: usize,
    num: u64,
    den: u64,
}

impl Sliding {
    fn new(len: u32) -> Box<Sliding> {
        let len = usize::try_from(len.max(1)).unwrap_or(1);
        Box::new(Sliding {
            buckets: vec![(0, 0); len].into_boxed_slice(),
            pos: 0,
            num: 0,
            den: 0,
        })
    }

    /// Adds the closing window, dropping the one that leaves.
    fn push(&mut self, num: u64, den: u64) {
        let num = u32::try_from(num).unwrap_or(u32::MAX);
        let den = u32::try_from(den).unwrap_or(u32::MAX);
        if let Some(bucket) = self.buckets.get_mut(self.pos) {
            self.num = self.num - u64::from(bucket.0) + u64::from(num);
            self.den = self.den - u64::from(bucket.1) + u64::from(den);
            *bucket = (num, den);
        }
        self.pos = (self.pos + 1) % self.buckets.len();
    }

    fn is_empty(&self) -> bool {
        self.num == 0 && self.den == 0
    }
}

/// (reset flows, connections) of each of the last `len` windows, in a bucket per window
/// (`window % len`, tagged with the window): a flow's reset is counted in the window its
/// connection was counted in, so every bucket, and the sums, count resets of flows whose
/// connection they count (a fraction of the same flows, never above 1).
pub(super) struct PerWindow {
    buckets: Box<[Bucket]>,
    num: u64,
    den: u64,
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    window: u64,
    num: u32,
    den: u32,
}

impl PerWindow {
    fn new(len: u32) -> Box<PerWindow> {
        let len = usize::try_from(len.max(1)).unwrap_or(1);
        Box::new(PerWindow {
            buckets: vec![Bucket::default(); len].into_boxed_slice(),
            num: 0,
            den: 0,
        })
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    /// Adds to window `w`, one of the last `len` windows up to `open`; false (nothing counted)
    /// for a window out of that range.
    fn add(&mut self, w: u64, open: u64, num: u32, den: u32) -> bool {
        if w > open || w.saturating_add(self.len()) <= open {
            return false;
        }
        let i = usize::try_from(w % self.len()).unwrap_or(0);
        let Some(b) = self.buckets.get_mut(i) else {
            return false;
        };
        if b.window != w {
            // The window this bucket held left the range.
            self.num -= u64::from(b.num);
            self.den -= u64::from(b.den);
            *b = Bucket {
                window: w,
                num: 0,
                den: 0,
            };
        }
        b.num = b.num.saturating_add(num);
        b.den = b.den.saturating_add(den);
        self.num = self.num.saturating_add(u64::from(num));
        self.den = self.den.saturating_add(u64::from(den));
        true
    }

    /// Window `w` closes: the sums become those of windows `w - len + 1 ..= w` (the bucket
    /// `w` shares with `w - len` is emptied if `w` counted nothing).
    fn close(&mut self, w: u64) {
        let i = usize::try_from(w % self.len()).unwrap_or(0);
        let len = self.len();
        if let Some(b) = self.buckets.get_mut(i) {
            if b.window != w && b.window.saturating_add(len) <= w {
                self.num -= u64::from(b.num);
                self.den -= u64::from(b.den);
                *b = Bucket::default();
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.num == 0 && self.den == 0
    }
}

/// The open window's counts.
#[derive(Clone, Copy, Default)]
struct Counts {
    rst: u64,
    sent: u64,
    retrans: u64,
}

/// Hysteresis state of one kind in one scope.
#[derive(Clone, Copy, Default)]
struct KindState {
    /// Id of the active anomaly.
    active: Option<u64>,
    /// Consecutive windows meeting the raise condition (while not active).
    above: u32,
    /// Consecutive windows below the clear threshold / without occurrence (while active).
    below: u32,
    /// Occurrences in the open window (event kinds).
    hits: u32,
    streak_start_ns: u64,
    /// The peak rose during the open window (event kinds): announce it at close.
    peak_rose: bool,
    /// Peak in the last Raised / Updated change.
    reported_peak: f64,
}

/// An `Updated` change is sent when the peak grew by this factor since the last report.
const REPORT_GROWTH: f64 = 1.1;

impl KindState {
    /// Whether a new peak is worth an `Updated` change; remembers it when it is.
    fn worth_reporting(&mut self, peak: f64) -> bool {
        if peak >= self.reported_peak * REPORT_GROWTH {
            self.reported_peak = peak;
            return true;
        }
        false
    }
}

enum Verdict {
    Raise,
    Clear,
    /// Active and not below the clear threshold.
    Holding,
    Quiet,
}

impl KindState {
    fn judge(
        &mut self,
        raise: bool,
        below: bool,
        raise_after: u32,
        clear_after: u32,
        start: u64,
    ) -> Verdict {
        if self.active.is_none() {
            if !raise {
                self.above = 0;
                return Verdict::Quiet;
            }
            if self.above == 0 {
                self.streak_start_ns = start;
            }
            self.above += 1;
            if self.above >= raise_after {
                self.above = 0;
                self.below = 0;
                return Verdict::Raise;
            }
            return Verdict::Quiet;
        }
        if !below {
            self.below = 0;
            return Verdict::Holding;
        }
        self.below += 1;
        if self.below >= clear_after {
            self.below = 0;
            return Verdict::Clear;
        }
        Verdict::Quiet
    }
}

/// What an occurrence of an event kind says: its measurement and the hint it raises with.
pub(super) struct Said {
    pub detail: String,
    pub hint: &'static str,
}

impl Said {
    /// The kind's own hint.
    pub fn of(kind: AnomalyKind, detail: String) -> Said {
        Said {
            detail,
            hint: kind.hint(),
        }
    }
}

pub(super) struct ScopeState {
    pub scope: Scope,
    counts: Counts,
    /// EWMA of RST/s.
    baseline: f64,
    /// First window not yet folded into `baseline`.
    baseline_next: u64,
    /// Reset flows / connections for the RST ratio.
    rst_conn: Option<Box<PerWindow>>,
    segments: Option<Box<Sliding>>,
    /// Recent RST cookies: the evidence of a rate anomaly when it is raised.
    cookies: VecDeque<u64>,
    kinds: [KindState; AnomalyKind::COUNT],
    /// Kinds with an active anomaly.
    active: u8,
}

impl ScopeState {
    pub fn new(scope: Scope, window: u64) -> ScopeState {
        ScopeState {
            scope,
            counts: Counts::default(),
            baseline: 0.0,
            baseline_next: window,
            rst_conn: None,
            segments: None,
            cookies: VecDeque::new(),
            kinds: [KindState::default(); AnomalyKind::COUNT],
            active: 0,
        }
    }

    pub fn has_active(&self) -> bool {
        self.active > 0
    }

    /// Nothing to evaluate when a window closes (the baseline decays lazily).
    pub fn is_quiet(&self) -> bool {
        self.active == 0
            && self.kinds.iter().all(|k| k.above == 0)
            && self.rst_conn.as_ref().is_none_or(|s| s.is_empty())
            && self.segments.as_ref().is_none_or(|s| s.is_empty())
            && self.counts.rst == 0
            && self.counts.sent == 0
            && self.counts.retrans == 0
    }

    /// A connection at `ts_ns`, counted in its window (or the open one `open` when that left
    /// the ratio's range: its reset will not count either).
    pub fn connection(&mut self, ts_ns: u64, open: u64, cfg: &DetectConfig) {
        let ratio = self
            .rst_conn
            .get_or_insert_with(|| PerWindow::new(cfg.rst_ratio_window_secs));
        if !ratio.add(ts_ns / WINDOW_NS, open, 0, 1) {
            ratio.add(open, open, 0, 1);
        }
    }

    /// The first RST of a flow whose connection (at `connection_ns`) this scope counted.
    pub fn flow_reset(&mut self, connection_ns: u64, open: u64, cfg: &DetectConfig) {
        let ratio = self
            .rst_conn
            .get_or_insert_with(|| PerWindow::new(cfg.rst_ratio_window_secs));
        ratio.add(connection_ns / WINDOW_NS, open, 1, 0);
    }

    pub fn rst(&mut self, cookie: Option<u64>, book: &mut Book) {
        self.counts.rst += 1;
        let Some(cookie) = cookie else {
            return;
        };
        let bound = book.evidence_len();
        if bound > 0 && !self.cookies.contains(&cookie) {
            if self.cookies.len() >= bound {
                self.cookies.pop_front();
            }
            self.cookies.push_back(cookie);
        }
        for kind in [AnomalyKind::RstStorm, AnomalyKind::RstRatio] {
            if let Some(id) = self.kinds[kind.index()].active {
                book.add_evidence(id, cookie);
            }
        }
    }

    pub fn segments(&mut self, sent: u64, retransmitted: u64, cfg: &DetectConfig) {
        self.counts.sent = self.counts.sent.saturating_add(sent);
        self.counts.retrans = self.counts.retrans.saturating_add(retransmitted);
        self.segments
            .get_or_insert_with(|| Sliding::new(cfg.retransmit_window_secs));
    }

    /// One occurrence of an event kind: raises it if not active, else grows its evidence and
    /// peak. `peak` is the occurrence's own rate; `None` counts occurrences per window.
    pub fn event(
        &mut self,
        kind: AnomalyKind,
        ts: u64,
        cookie: Option<u64>,
        peak: Option<f64>,
        said: Said,
        book: &mut Book,
    ) {
        let Said { detail, hint } = said;
        let ks = &mut self.kinds[kind.index()];
        ks.hits = ks.hits.saturating_add(1);
        let rate = peak.unwrap_or(f64::from(ks.hits));
        match ks.active {
            Some(id) => {
                ks.below = 0;
                book.touch(id, ts);
                if let Some(c) = cookie {
                    book.add_evidence(id, c);
                }
                if book.peak(id, rate, || detail) && rate >= ks.reported_peak * REPORT_GROWTH {
                    ks.peak_rose = true;
                }
            }
            None => {
                let id = book.raise(NewAnomaly {
                    kind,
                    scope: self.scope,
                    start_ns: ts,
                    last_ns: ts,
                    rate,
                    evidence: cookie.into_iter().collect(),
                    detail,
                    hint,
                });
                ks.active = Some(id);
                ks.below = 0;
                ks.peak_rose = false;
                ks.reported_peak = rate;
                self.active += 1;
            }
        }
    }

    /// Evaluates window `w` (which must be the next one for this scope's sliding sums) and
    /// resets the counts.
    pub fn close(&mut self, w: u64, cfg: &DetectConfig, book: &mut Book) {
        let start = w.saturating_mul(WINDOW_NS);
        let end = start.saturating_add(WINDOW_NS);
        if !matches!(self.scope, Scope::Socket(_)) {
            self.close_storm(w, start, end, cfg, book);
        }
        if let Some(ratio) = self.rst_conn.as_mut() {
            ratio.close(w);
            let sums = (ratio.num, ratio.den);
            self.close_ratio(&RatioRule::rst(cfg), sums, (start, end), cfg, book);
        }
        if let Some(sliding) = self.segments.as_mut() {
            sliding.push(self.counts.retrans, self.counts.sent);
            let sums = (sliding.num, sliding.den);
            self.close_ratio(&RatioRule::retransmit(cfg), sums, (start, end), cfg, book);
        }
        for kind in AnomalyKind::ALL.into_iter().filter(|k| k.is_event()) {
            let ks = &mut self.kinds[kind.index()];
            if let Some(id) = ks.active {
                if ks.hits > 0 {
                    ks.below = 0;
                    if ks.peak_rose && ks.worth_reporting(book.peak_of(id)) {
                        book.announce(id);
                    }
                } else {
                    ks.below += 1;
                    if ks.below >= cfg.event_clear_after {
                        ks.below = 0;
                        ks.active = None;
                        self.active -= 1;
                        book.clear(id, end);
                    }
                }
            }
            ks.hits = 0;
            ks.peak_rose = false;
        }
        self.counts = Counts::default();
    }

    /// The RST storm rule for window `w` and the baseline update.
    fn close_storm(&mut self, w: u64, start: u64, end: u64, cfg: &DetectConfig, book: &mut Book) {
        // Windows this scope was not evaluated in had no RST and no storm: calm zeros.
        let skipped = w.saturating_sub(self.baseline_next).min(100_000);
        if skipped > 0 {
            let skipped = i32::try_from(skipped).unwrap_or(100_000);
            self.baseline *= (1.0 - cfg.rst_storm_ewma_alpha).powi(skipped);
        }
        let rate = self.counts.rst as f64 * (1e9 / WINDOW_NS as f64);
        let threshold = cfg
            .rst_storm_min_rate
            .max(cfg.rst_storm_factor * self.baseline);
        let was_active = self.kinds[AnomalyKind::RstStorm.index()].active.is_some();
        let baseline = self.baseline;
        self.rate_kind(
            AnomalyKind::RstStorm,
            rate >= threshold,
            rate < cfg.rst_storm_clear_fraction * threshold,
            rate,
            cfg.rst_storm_raise_after,
            (start, end),
            cfg.clear_after,
            book,
            || format!("{rate:.0} RST/s (raise at {threshold:.0}/s, baseline {baseline:.1}/s)"),
        );
        let calm = !was_active && rate < threshold;
        let alpha = if calm {
            cfg.rst_storm_ewma_alpha
        } else {
            cfg.rst_storm_adapt_alpha
        };
        self.baseline += alpha * (rate - self.baseline);
        self.baseline_next = w + 1;
    }

    /// One ratio detector's verdict on its sliding sums.
    fn close_ratio(
        &mut self,
        rule: &RatioRule,
        (num, den): (u64, u64),
        span: (u64, u64),
        cfg: &DetectConfig,
        book: &mut Book,
    ) {
        let enough = den >= rule.min_den;
        let ratio = num as f64 / den.max(1) as f64;
        self.rate_kind(
            rule.kind,
            enough && ratio > rule.raise,
            !enough || ratio < rule.clear,
            ratio,
            rule.raise_after,
            span,
            cfg.clear_after,
            book,
            || (rule.detail)(num, den, rule.window_secs, ratio),
        );
    }

    /// Hysteresis of a rate or ratio kind at the end of a window.
    #[expect(
        clippy::too_many_arguments,
        reason = "the rule's inputs, named at each call site"
    )]
    fn rate_kind(
        &mut self,
        kind: AnomalyKind,
        raise: bool,
        below: bool,
        value: f64,
        raise_after: u32,
        (start, end): (u64, u64),
        clear_after: u32,
        book: &mut Book,
        detail: impl FnOnce() -> String,
    ) {
        let ks = &mut self.kinds[kind.index()];
        match ks.judge(raise, below, raise_after, clear_after, start) {
            Verdict::Raise => {
                let id = book.raise(NewAnomaly {
                    kind,
                    scope: self.scope,
                    start_ns: ks.streak_start_ns,
                    last_ns: end,
                    rate: value,
                    evidence: self.cookies.iter().copied().collect(),
                    detail: detail(),
                    hint: kind.hint(),
                });
                ks.active = Some(id);
                ks.reported_peak = value;
                self.active += 1;
            }
            Verdict::Clear => {
                if let Some(id) = ks.active.take() {
                    self.active -= 1;
                    book.clear(id, end);
                }
            }
            Verdict::Holding => {
                if let Some(id) = ks.active {
                    book.touch(id, end);
                    if book.peak(id, value, detail) && ks.worth_reporting(value) {
                        book.announce(id);
                    }
                }
            }
            Verdict::Quiet => {}
        }
    }
}

/// A ratio detector: a numerator over a denominator, both summed over a sliding window, raised
/// above `raise` once the denominator reaches `min_den`, cleared below `clear` (or when the
/// denominator falls short). RST ratio and retransmit rate are two of these.
struct RatioRule {
    kind: AnomalyKind,
    min_den: u64,
    raise: f64,
    clear: f64,
    raise_after: u32,
    window_secs: u32,
    /// (numerator, denominator, window seconds, ratio) → the anomaly's detail.
    detail: fn(u64, u64, u32, f64) -> String,
}

impl RatioRule {
    fn rst(cfg: &DetectConfig) -> RatioRule {
        RatioRule {
            kind: AnomalyKind::RstRatio,
            min_den: cfg.rst_ratio_min_connections,
            raise: cfg.rst_ratio,
            clear: cfg.rst_ratio_clear,
            raise_after: cfg.rst_ratio_raise_after,
            window_secs: cfg.rst_ratio_window_secs,
            detail: |reset, conns, secs, ratio| {
                format!(
                    "{reset} of {conns} connections reset in {secs} s ({:.1} %)",
                    ratio * 100.0
                )
            },
        }
    }

    fn retransmit(cfg: &DetectConfig) -> RatioRule {
        RatioRule {
            kind: AnomalyKind::RetransmitRate,
            min_den: cfg.retransmit_min_segments,
            raise: cfg.retransmit_ratio,
            clear: cfg.retransmit_ratio_clear,
            raise_after: cfg.retransmit_raise_after,
            window_secs: cfg.retransmit_window_secs,
            detail: |retrans, sent, secs, ratio| {
                format!(
                    "{retrans} of {sent} data segments retransmitted in {secs} s ({:.2} %)",
                    ratio * 100.0
                )
            },
        }
    }
}
