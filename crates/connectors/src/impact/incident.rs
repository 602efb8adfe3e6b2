//! Incident detection for one operation: a state machine over the failure rate of a trailing window.
//!
//! Time is cut into evaluation intervals `[k·I, (k+1)·I)` aligned to the Unix epoch (event time). At each
//! boundary `e` (once the watermark has passed it, so the intervals before it are complete) the failure rate over
//! the window `[e − window, e)` is evaluated:
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

/// Operations of one evaluation interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    pub transition: Transition,
}

/// Thresholds of a [`Detector`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub interval_ns: u64,
    pub window_buckets: u64,
    pub open: f64,
    pub close: f64,
    pub min_operations: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Open {
    start: u64,
    last_bad_end: u64,
}

/// The failure-rate state machine of one operation.
#[derive(Debug, Clone)]
pub struct Detector {
    th: Thresholds,
    /// Chronological; only intervals that had operations, none older than the window.
    buckets: VecDeque<Bucket>,
    open: Option<Open>,
}

impl Detector {
    pub fn new(th: Thresholds) -> Self {
        Detector {
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
            transition,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn detector() -> Detector {
        Detector::new(Thresholds {
            interval_ns: 10 * S,
            window_buckets: 3,
            open: 0.5,
            close: 0.2,
            min_operations: 5,
        })
    }

    /// Feeds `per_bucket` operations per 10 s bucket with `fail(k)` of them failing, evaluating every boundary.
    fn run(
        d: &mut Detector,
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
}
