//! Incident detection for one stream of an operation (its failures, or its slow operations): two state
//! machines behind [`Detector`].
//!
//! **[`BaselineDetector`]** (`detection: baseline`, the default): a Bernoulli CUSUM of the stream against its
//! own learned normal rate ([`crate::stats`]; the statistics, parameters and false-alarm arithmetic are in
//! `docs/incident-detection.md`), fed operation by operation in event-time order and decided at the
//! evaluation boundaries.
//!
//! **[`ThresholdDetector`]** (`detection: threshold`): the failure rate of a trailing window. Time is cut into
//! evaluation intervals `[k·I, (k+1)·I)` aligned to the Unix epoch (event time). At each boundary `e` (once the
//! watermark has passed it, so the intervals before it are complete) the failure rate over the window
//! `[e − window, e)` is evaluated:
//!
//! - **closed → open** when the window holds at least `min_operations` operations and the rate is at least
//!   `open_threshold`. The incident's *start* is dated back to the first interval of the run of *bad* intervals
//!   (failure rate ≥ `close_threshold`, empty intervals neutral) that ends at `e`, so it is within one interval of
//!   when failures began, although detection needs a window's worth of evidence;
//! - **open → open** (an update) otherwise, while the rate stays at or above `close_threshold`;
//! - **open → closed** when the rate falls below `close_threshold`; the *end* is the end of the last bad interval.
//!
//! A window without any operation changes nothing (no evidence either way).

use std::collections::VecDeque;

use crate::stats::baseline::RateBaseline;
use crate::stats::binomial;
use crate::stats::cusum::{self, BernoulliCusum};

/// Operations of one evaluation interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bucket {
    pub start: u64,
    pub total: u64,
    pub failed: u64,
}

/// What an evaluation decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing open, nothing opened.
    Quiet,
    Opened {
        start: u64,
    },
    Updated,
    Closed {
        end: u64,
    },
}

/// The result of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub at: u64,
    pub operations: u64,
    pub failed: u64,
    /// `failed / operations` (0 when there were none).
    pub rate: f64,
    /// The learned normal failure rate (baseline detection; 0 for thresholds).
    pub baseline: f64,
    /// The test statistic: the CUSUM (baseline detection) or the window's rate (thresholds).
    pub score: f64,
    pub transition: Transition,
}

/// Thresholds of a [`Detector`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Thresholds {
    pub interval_ns: u64,
    pub window_buckets: u64,
    pub open: f64,
    pub close: f64,
    pub min_operations: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Open {
    start: u64,
    last_bad_end: u64,
}

/// The failure-rate state machine of one operation (`detection: threshold`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ThresholdDetector {
    th: Thresholds,
    /// Chronological; only intervals that had operations, none older than the window.
    buckets: VecDeque<Bucket>,
    open: Option<Open>,
}

impl ThresholdDetector {
    pub fn new(th: Thresholds) -> Self {
        ThresholdDetector {
            th,
            buckets: VecDeque::new(),
            open: None,
        }
    }

    pub fn interval(&self) -> u64 {
        self.th.interval_ns
    }

    fn window_ns(&self) -> u64 {
        self.th.interval_ns.saturating_mul(self.th.window_buckets)
    }

    fn is_bad(&self, b: &Bucket) -> bool {
        b.failed > 0 && (b.failed as f64) >= self.th.close * b.total as f64
    }

    /// Counts an operation at event time `t` (non-decreasing between evaluations).
    pub fn record(&mut self, t: u64, failed: bool) {
        let start = t - t % self.th.interval_ns;
        match self.buckets.back_mut() {
            Some(b) if b.start == start => {
                b.total += 1;
                b.failed += u64::from(failed);
            }
            Some(b) if b.start > start => {
                // Out of order by less than an interval cannot happen (operations are finalized in time order);
                // count it in the latest bucket rather than lose it.
                b.total += 1;
                b.failed += u64::from(failed);
            }
            _ => self.buckets.push_back(Bucket {
                start,
                total: 1,
                failed: u64::from(failed),
            }),
        }
    }

    /// True when nothing is held: evaluations would change nothing until the next operation.
    pub fn is_idle(&self) -> bool {
        self.buckets.is_empty()
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The start of the open incident.
    pub fn open_start(&self) -> Option<u64> {
        self.open.map(|o| o.start)
    }

    /// Evaluates the window ending at boundary `e`.
    pub fn evaluate(&mut self, e: u64) -> Evaluation {
        let from = e.saturating_sub(self.window_ns());
        while self.buckets.front().is_some_and(|b| b.start < from) {
            self.buckets.pop_front();
        }
        let (operations, failed) = self
            .buckets
            .iter()
            .filter(|b| b.start < e)
            .fold((0, 0), |(t, f), b| (t + b.total, f + b.failed));
        let rate = if operations == 0 {
            0.0
        } else {
            failed as f64 / operations as f64
        };
        let newest_bad = self
            .buckets
            .iter()
            .rev()
            .find(|b| b.start < e && b.start + self.th.interval_ns == e)
            .is_some_and(|b| self.is_bad(b));
        let transition = match self.open {
            None => {
                if operations >= self.th.min_operations.max(1) && rate >= self.th.open {
                    let start = self.run_start(e);
                    let last_bad_end = self
                        .buckets
                        .iter()
                        .filter(|b| b.start < e && self.is_bad(b))
                        .map(|b| b.start + self.th.interval_ns)
                        .max()
                        .unwrap_or(e);
                    self.open = Some(Open { start, last_bad_end });
                    Transition::Opened { start }
                } else {
                    Transition::Quiet
                }
            }
            Some(mut o) => {
                if newest_bad {
                    o.last_bad_end = e;
                }
                if operations > 0 && rate < self.th.close {
                    self.open = None;
                    Transition::Closed {
                        end: o.last_bad_end.max(o.start),
                    }
                } else {
                    self.open = Some(o);
                    Transition::Updated
                }
            }
        };
        Evaluation {
            at: e,
            operations,
            failed,
            rate,
            baseline: 0.0,
            score: rate,
            transition,
        }
    }

    /// Closes an open incident now (wall-clock idle, shutdown): its end is the end of its last bad interval.
    pub fn force_close(&mut self) -> Option<u64> {
        self.open.take().map(|o| o.last_bad_end.max(o.start))
    }

    /// Start of the run of bad intervals ending at `e` (empty intervals neutral); failing that, the first
    /// interval of the window with a failure.
    fn run_start(&self, e: u64) -> u64 {
        let mut start = None;
        for b in self.buckets.iter().rev().filter(|b| b.start < e) {
            if !self.is_bad(b) {
                break;
            }
            start = Some(b.start);
        }
        start
            .or_else(|| self.buckets.iter().find(|b| b.failed > 0).map(|b| b.start))
            .unwrap_or(e.saturating_sub(self.th.interval_ns))
    }
}

/// Parameters of a [`BaselineDetector`] (see `docs/incident-detection.md` for the arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BaselineParams {
    pub interval_ns: u64,
    /// CUSUM threshold `h`.
    pub h: f64,
    /// The alternative: `p1 = max(ratio·p0, p0 + shift)`, at most `max_rate`.
    pub ratio: f64,
    pub shift: f64,
    pub max_rate: f64,
    /// Baseline: half-life in evaluation intervals, prior rate and weight (operations), floor.
    pub half_life_intervals: f64,
    pub prior_rate: f64,
    pub prior_weight: f64,
    pub floor: f64,
    /// An interval is *bad* when `P(X ≥ failed | n, p0) ≤ alpha`, *normal* when it is `> normal_alpha`.
    pub alpha: f64,
    pub normal_alpha: f64,
    /// Consecutive normal intervals that close an incident.
    pub close_intervals: u32,
}

/// Intervals remembered for dating an incident's start back.
pub const HISTORY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct OpenRun {
    start: u64,
    last_bad_end: u64,
    good_run: u32,
}

/// Baseline-relative detection for one stream (an operation's failures, or its slow operations): a Bernoulli
/// CUSUM of the stream against its own learned normal rate, fed one operation at a time in event-time
/// order, decided at evaluation boundaries.
///
/// - **Open** at the first boundary after the CUSUM reached `h`; the start is dated back to the first
///   interval of the run of *bad* intervals (significantly above the baseline; empty intervals neutral)
///   ending at the boundary.
/// - **Close** after `close_intervals` consecutive *normal* intervals (with operations, and failures quite
///   plausible at the baseline: `P(X ≥ f | n, p0) > normal_alpha`); the end is the end of the last bad
///   interval. Intervals neither bad nor normal extend nothing and interrupt the run of normal ones.
/// - **Baseline**: learned from every evaluated interval while no incident is open, each interval's failures
///   capped at the alternative rate `p1` (an outage before detection moves it by at most its share of
///   the half-life times `p1 − p0`), never while one is open.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BaselineDetector {
    p: BaselineParams,
    baseline: RateBaseline,
    cusum: BernoulliCusum,
    p0: f64,
    p1: f64,
    /// (interval start, operations, failures) of the interval being filled.
    cur: Option<(u64, u64, u64)>,
    crossed: bool,
    /// Event time of the operation that last lifted the CUSUM from 0: its estimate of the change point.
    rise: u64,
    /// (interval start, bad) of recent intervals with operations, oldest first.
    history: VecDeque<(u64, bool)>,
    open: Option<OpenRun>,
}

impl BaselineDetector {
    pub fn new(p: BaselineParams) -> Self {
        let baseline = RateBaseline::new(p.half_life_intervals, p.prior_rate, p.prior_weight, p.floor, p.max_rate);
        let p0 = baseline.rate();
        let p1 = cusum::alternative(p0, p.ratio, p.shift, p.max_rate);
        BaselineDetector {
            p,
            cusum: BernoulliCusum::new(p.h, p0, p1),
            baseline,
            p0,
            p1,
            cur: None,
            crossed: false,
            rise: 0,
            history: VecDeque::new(),
            open: None,
        }
    }

    /// Counts an operation at event time `t` (non-decreasing between evaluations).
    pub fn record(&mut self, t: u64, failed: bool) {
        let start = t - t % self.p.interval_ns.max(1);
        match &mut self.cur {
            Some((s, n, f)) if *s >= start => {
                *n += 1;
                *f += u64::from(failed);
            }
            _ => self.cur = Some((start, 1, u64::from(failed))),
        }
        if self.open.is_none() {
            let was_zero = self.cusum.value() <= 0.0;
            if self.cusum.observe(failed) {
                self.crossed = true;
            }
            if was_zero && self.cusum.value() > 0.0 {
                self.rise = t;
            }
        }
    }

    pub fn is_idle(&self) -> bool {
        self.cur.is_none()
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    pub fn open_start(&self) -> Option<u64> {
        self.open.map(|o| o.start)
    }

    /// The learned normal rate.
    pub fn baseline(&self) -> f64 {
        self.p0
    }

    fn is_bad(&self, n: u64, f: u64) -> bool {
        f > 0 && n > 0 && binomial::upper_tail(n, f, self.p0) <= self.p.alpha
    }

    /// Evaluates the interval ending at boundary `e`.
    pub fn evaluate(&mut self, e: u64) -> Evaluation {
        let i = self.p.interval_ns.max(1);
        let (n, f) = match self.cur {
            Some((s, n, f)) if s < e => {
                self.cur = None;
                (n, f)
            }
            _ => (0, 0),
        };
        let bad = self.is_bad(n, f);
        if n > 0 {
            self.history.push_back((e.saturating_sub(i), bad));
            while self.history.len() > HISTORY {
                self.history.pop_front();
            }
        }
        let transition = match self.open {
            None if self.crossed => {
                self.crossed = false;
                self.cusum.reset();
                let start = self.run_start(e);
                let last_bad_end = self
                    .history
                    .iter()
                    .filter(|(s, b)| *b && *s >= start)
                    .map(|(s, _)| s + i)
                    .max()
                    .unwrap_or(e);
                self.open = Some(OpenRun {
                    start,
                    last_bad_end,
                    good_run: 0,
                });
                Transition::Opened { start }
            }
            None => {
                if n > 0 {
                    self.baseline.learn(n, f, self.p1);
                    self.p0 = self.baseline.rate();
                    self.p1 = cusum::alternative(self.p0, self.p.ratio, self.p.shift, self.p.max_rate);
                    self.cusum.set_rates(self.p0, self.p1);
                }
                Transition::Quiet
            }
            Some(mut o) => {
                if n > 0 {
                    if bad {
                        o.last_bad_end = e;
                        o.good_run = 0;
                    } else if binomial::upper_tail(n, f, self.p0) > self.p.normal_alpha {
                        o.good_run += 1;
                    } else {
                        o.good_run = 0;
                    }
                }
                if o.good_run >= self.p.close_intervals.max(1) {
                    self.open = None;
                    self.cusum.reset();
                    Transition::Closed {
                        end: o.last_bad_end.max(o.start),
                    }
                } else {
                    self.open = Some(o);
                    Transition::Updated
                }
            }
        };
        Evaluation {
            at: e,
            operations: n,
            failed: f,
            rate: if n == 0 { 0.0 } else { f as f64 / n as f64 },
            baseline: self.p0,
            score: self.cusum.value(),
            transition,
        }
    }

    /// Closes an open incident now: its end is the end of its last bad interval.
    pub fn force_close(&mut self) -> Option<u64> {
        self.cusum.reset();
        self.crossed = false;
        self.open.take().map(|o| o.last_bad_end.max(o.start))
    }

    /// The start of the run of bad intervals (empty intervals neutral) that ends at the newest bad interval
    /// since the CUSUM's change point (the operation that last lifted it from 0), never before the change
    /// point's interval; without a bad interval since then, the change point's interval.
    fn run_start(&self, e: u64) -> u64 {
        let i = self.p.interval_ns.max(1);
        let floor = self.rise - self.rise % i;
        let mut start = None;
        for (s, bad) in self.history.iter().rev() {
            if *s < floor {
                break;
            }
            if !bad {
                if start.is_some() {
                    break;
                }
                continue;
            }
            start = Some(*s);
        }
        start.unwrap_or(if floor > 0 { floor } else { e.saturating_sub(i) })
    }
}

/// The detector of one stream: baseline-relative (the default) or fixed thresholds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Detector {
    Baseline(Box<BaselineDetector>),
    Threshold(ThresholdDetector),
}

impl Detector {
    pub fn record(&mut self, t: u64, failed: bool) {
        match self {
            Detector::Baseline(d) => d.record(t, failed),
            Detector::Threshold(d) => d.record(t, failed),
        }
    }
    pub fn is_idle(&self) -> bool {
        match self {
            Detector::Baseline(d) => d.is_idle(),
            Detector::Threshold(d) => d.is_idle(),
        }
    }
    pub fn is_open(&self) -> bool {
        match self {
            Detector::Baseline(d) => d.is_open(),
            Detector::Threshold(d) => d.is_open(),
        }
    }
    pub fn evaluate(&mut self, e: u64) -> Evaluation {
        match self {
            Detector::Baseline(d) => d.evaluate(e),
            Detector::Threshold(d) => d.evaluate(e),
        }
    }
    pub fn force_close(&mut self) -> Option<u64> {
        match self {
            Detector::Baseline(d) => d.force_close(),
            Detector::Threshold(d) => d.force_close(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn detector() -> ThresholdDetector {
        ThresholdDetector::new(Thresholds {
            interval_ns: 10 * S,
            window_buckets: 3,
            open: 0.5,
            close: 0.2,
            min_operations: 5,
        })
    }

    /// Feeds `per_bucket` operations per 10 s bucket with `fail(k)` of them failing, evaluating every boundary.
    fn run(
        d: &mut ThresholdDetector,
        buckets: std::ops::Range<u64>,
        per_bucket: u64,
        fail: impl Fn(u64) -> u64,
    ) -> Vec<Evaluation> {
        let mut out = Vec::new();
        for k in buckets {
            for i in 0..per_bucket {
                d.record(k * 10 * S + i * S / 2, i < fail(k));
            }
            out.push(d.evaluate((k + 1) * 10 * S));
        }
        out
    }

    fn transitions(ev: &[Evaluation]) -> Vec<(u64, Transition)> {
        ev.iter()
            .filter(|e| !matches!(e.transition, Transition::Quiet | Transition::Updated))
            .map(|e| (e.at / S, e.transition))
            .collect()
    }

    #[test]
    fn opens_dated_back_and_closes_at_the_last_bad_interval() {
        let mut d = detector();
        // Outage in buckets 10..20 (100 s .. 200 s): 90 % failures; otherwise none.
        let ev = run(&mut d, 0..40, 10, |k| if (10..20).contains(&k) { 9 } else { 0 });
        let t = transitions(&ev);
        assert_eq!(t.len(), 2, "{t:?}");
        // Detected at 120 s (window 90..120: 18/30 = 0.6), started at 100 s.
        assert_eq!(t[0], (120, Transition::Opened { start: 100 * S }));
        // Window 180..210 holds 9/30 = 0.3 ≥ 0.2 → still open; 190..220: 9/30... the last bad bucket is 190..200.
        let (at, tr) = t[1];
        assert_eq!(tr, Transition::Closed { end: 200 * S });
        assert!(at > 200 && at <= 230, "closed at {at}");
        assert!(!d.is_open());
    }

    #[test]
    fn updates_every_evaluation_while_open_and_respects_min_operations() {
        let mut d = detector();
        // 2 operations per bucket, all failing: fewer than 5 in the first two windows.
        let ev = run(&mut d, 0..6, 2, |_| 2);
        assert_eq!(ev[0].transition, Transition::Quiet, "2 operations < min 5");
        assert_eq!(ev[1].transition, Transition::Quiet, "4 operations < min 5");
        assert_eq!(ev[2].transition, Transition::Opened { start: 0 });
        assert!(ev[3..].iter().all(|e| e.transition == Transition::Updated));
        // No operations at all: nothing changes.
        let e = d.evaluate(200 * S);
        assert_eq!((e.operations, e.transition), (0, Transition::Updated));
        assert!(d.is_open() && d.is_idle());
    }

    #[test]
    fn flapping_below_the_open_threshold_never_opens() {
        let mut d = detector();
        let ev = run(&mut d, 0..30, 10, |k| if k % 2 == 0 { 4 } else { 5 });
        assert!(transitions(&ev).is_empty(), "45 % < 50 %");
        // Hysteresis: once open at ≥ 50 %, 30 % keeps it open.
        let mut d = detector();
        let ev = run(&mut d, 0..20, 10, |k| if k < 5 { 8 } else { 3 });
        let t = transitions(&ev);
        assert_eq!(t.len(), 1, "{t:?}");
        assert!(d.is_open());
    }

    #[test]
    fn start_is_the_run_of_bad_intervals_ending_at_detection() {
        let mut d = detector();
        // Bucket 0: 3/10 (bad), bucket 1: 0/2 (good), bucket 2: 20/20.
        for (k, total, failed) in [(0u64, 10u64, 3u64), (1, 2, 0), (2, 20, 20)] {
            for i in 0..total {
                d.record(k * 10 * S + i, i < failed);
            }
        }
        let e = d.evaluate(30 * S);
        assert_eq!(e.transition, Transition::Opened { start: 20 * S }, "{e:?}");
        assert_eq!((e.operations, e.failed), (32, 23));
    }

    fn baseline() -> BaselineDetector {
        BaselineDetector::new(BaselineParams {
            interval_ns: 10 * S,
            h: 16.0,
            ratio: 4.0,
            shift: 0.02,
            max_rate: 0.5,
            half_life_intervals: 360.0,
            prior_rate: 0.01,
            prior_weight: 200.0,
            floor: 0.001,
            alpha: 0.01,
            normal_alpha: 0.2,
            close_intervals: 2,
        })
    }

    /// `per_s` operations per second over `secs`, failing when `fail(t_ns, i)`; evaluates every boundary.
    fn feed_baseline(
        d: &mut BaselineDetector,
        secs: std::ops::Range<u64>,
        per_s: u64,
        fail: impl Fn(u64, u64) -> bool,
    ) -> Vec<Evaluation> {
        let mut out = Vec::new();
        for sec in secs {
            if sec % 10 == 0 && sec > 0 {
                out.push(d.evaluate(sec * S));
            }
            for i in 0..per_s {
                let t = sec * S + i * (S / per_s);
                d.record(t, fail(t, sec * per_s + i));
            }
        }
        out
    }

    #[test]
    fn baseline_catches_a_ten_second_outage_and_a_ten_percent_excess() {
        let mut d = baseline();
        // 20 min at 5/s with 0.5 % failures, then a 10 s total outage starting at 1203 s.
        let ev = feed_baseline(&mut d, 0..1300, 5, |t, n| {
            (1203 * S..1213 * S).contains(&t) || n % 200 == 17
        });
        let t = transitions(&ev);
        assert_eq!(t[0], (1210, Transition::Opened { start: 1200 * S }), "{t:?}");
        assert_eq!(t[1].1, Transition::Closed { end: 1220 * S });
        assert_eq!(t.len(), 2, "{t:?}");
        assert!((d.baseline() - 0.005).abs() < 0.002, "learned {}", d.baseline());

        // 10 % on a 0.5 % baseline at 20/s from 1205 s.
        let mut d = baseline();
        let ev = feed_baseline(&mut d, 0..1500, 20, |t, n| {
            n % 200 == 17 || (t >= 1205 * S && n % 10 == 3)
        });
        let t = transitions(&ev);
        assert_eq!(t.len(), 1, "{t:?}");
        let (at, tr) = t[0];
        assert_eq!(tr, Transition::Opened { start: 1200 * S });
        assert!(at <= 1220, "detected at {at} s");
    }

    #[test]
    fn baseline_ignores_noise_at_the_normal_rate() {
        let mut d = baseline();
        // 2 % failures, evenly spread, for 6 h at 20/s: learned as normal, never an incident.
        let ev = feed_baseline(&mut d, 0..6 * 3600, 20, |_, n| n % 50 == 7);
        assert!(transitions(&ev).is_empty(), "{:?}", transitions(&ev));
        assert!((d.baseline() - 0.02).abs() < 0.002, "learned {}", d.baseline());
    }
}
