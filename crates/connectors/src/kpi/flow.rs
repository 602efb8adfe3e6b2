//! Stage flow: is a stage working at its normal speed right now, for everybody in it?
//!
//! At every evaluation the engine asks the learned stage durations how many of the orders now in stage `s`
//! should leave it within the next evaluation interval at normal speed (the **expected** exits,
//! `E = Σ_orders 1 − S(c + Δ) / S(c)`, `c` the order's clock age, `Δ` the interval), and counts at the next
//! evaluation how many of those orders did leave (the **observed** exits, `O`; orders that entered and left
//! within one interval are not counted on either side). Over the last [`WINDOW_NS`] (30 min, as many intervals
//! as fit in it), a one-sided Poisson
//! test ([`crate::stats::rate`]) compares `O` with `E`: when `O` is significantly low (`P(X ≤ O | E) < α`)
//! and `O/E ≤ 0.7`, the stage is **slowed** and works at the rate `r = O/E`; significantly high and
//! `O/E ≥ 1.3` (a backlog being cleared) it works at `r = min(O/E, 4)`; otherwise `r = 1`. Because `E` comes
//! from the orders actually in the stage and their ages, a quiet night or a busy Monday is not an anomaly:
//! only a stage that lets its orders go slower than their own history says is.
//!
//! Each order carries a **stage clock**: its age in the stage measured in normal work, advanced by
//! `r × elapsed` at each evaluation. The stage durations are learned in clock time, so a backlog does not
//! teach the model that the stage is always slow, and a stalled order does not look "about to leave" only
//! because it is old. For the prediction, the stage is assumed to keep working at `r` for an uncertain
//! remaining length `W` (below), then normally: see [`super::sketch::TimeChange`].
//!
//! # How long will a slowdown last?
//!
//! With `m = max(time slowed so far, 1 h)`, the remaining length `W` of the slowdown has the survival
//!
//! ```text
//! G(x) = P(W > x) = (k₀ · m / (m + x) + #{past slowdowns L_i > m + x}) / (k₀ + #{past slowdowns L_i > m})
//! ```
//!
//! the "it lasts about as long again as it has lasted" prior (`m / (m + x)`, median `m`; weight
//! [`PRIOR_WEIGHT`] episodes) updated with the lengths of the slowdowns the connector has seen end (of every
//! stage, the latest [`MAX_EPISODES`]): the prior is what is believed before any slowdown was seen, the data
//! take over as they accumulate. The predictions integrate over `W` with [`QUADRATURE`] equally likely points
//! (the mid-quantiles of `G`), so the probability of a miss is a continuous function of the order's slack
//! rather than a few steps.

use std::collections::VecDeque;

use super::sketch::TimeChange;
use crate::stats::rate::{RateVerdict, rate_test};

/// Significance of the rate test (one-sided, per evaluation).
pub const ALPHA: f64 = 1e-4;
/// Smallest relative change of the rate that counts.
pub const MIN_CHANGE: f64 = 0.3;
/// Expected exits over the window needed to judge a stage.
pub const MIN_EXPECTED: f64 = 10.0;
/// The test's window (a duration: as many evaluation intervals as fit in it, at least one).
pub const WINDOW_NS: u64 = 1_800_000_000_000;
/// Points of the quadrature over the remaining length of a slowdown.
pub const QUADRATURE: usize = 32;
/// Weight of the prior on a slowdown's length, in episodes.
pub const PRIOR_WEIGHT: f64 = 2.0;
/// Ended slowdowns remembered (their lengths), per stage.
pub const MAX_EPISODES: usize = 32;
/// A slowed stage working below this speed is **stalled**: nothing leaves it; its orders are predicted to
/// leave at the later of the stall's end and their own normal exit (see [`super::sketch::TimeChange`]).
pub const STALL: f64 = 0.1;
/// Shortest assumed remaining duration of a slowdown.
pub const MIN_SPAN_NS: u64 = 3_600_000_000_000;

/// The flow of one stage.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StageFlow {
    history: VecDeque<(f64, f64)>,
    /// Exits expected over the current interval (sum over the orders in the stage at its start).
    pub expected_next: f64,
    /// Exits observed since the last evaluation of orders that were in the stage then.
    pub observed: f64,
    /// Speed of the stage's clock: `1` normal, `< 1` slowed, `> 1` catching up.
    pub rate: f64,
    /// First evaluation of the current slowdown.
    pub slowed_since: Option<u64>,
    /// Exits per hour over the window: expected (normal) and observed.
    pub normal_per_hour: f64,
    pub observed_per_hour: f64,
    /// Orders in the stage at the last evaluation.
    pub backlog: u64,
    /// Lengths (ns) of the latest slowdowns of this stage that ended, oldest first.
    #[serde(default)]
    pub episodes: VecDeque<u64>,
    /// Orders that left the stage during the current interval: the sum of their entry times (s) and how many.
    #[serde(default)]
    exits_now: (u64, u64),
    /// The same per interval over the window.
    #[serde(default)]
    exit_history: VecDeque<(u64, u64)>,
    /// Mean entry time (ns) of the orders that left the stage over the latest window with exits: where the stage's
    /// service stands (see [`StageFlow::overtaken`]).
    #[serde(default)]
    pub served_entry: Option<u64>,
    /// Whether the current slowdown stalled the stage, and when the stall ended (see [`StageFlow::releasing`]).
    #[serde(default)]
    pub stall: StallState,
}

/// Whether the current slowdown of a stage stalled it, and when the stall ended (the stage lets its orders go
/// again): see [`StageFlow::releasing`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StallState {
    /// No stall in the current slowdown (or no slowdown).
    #[default]
    None,
    /// The stage is stalled now.
    Stalled,
    /// The stall ended at this time (ns): the stage releases what it held.
    Released(u64),
}

impl Default for StageFlow {
    fn default() -> Self {
        StageFlow {
            history: VecDeque::new(),
            expected_next: 0.0,
            observed: 0.0,
            rate: 1.0,
            slowed_since: None,
            normal_per_hour: 0.0,
            observed_per_hour: 0.0,
            backlog: 0,
            episodes: VecDeque::new(),
            exits_now: (0, 0),
            exit_history: VecDeque::new(),
            served_entry: None,
            stall: StallState::None,
        }
    }
}

/// Evaluation intervals in the test's window for an interval of `interval` ns.
pub fn window_intervals(interval: u64) -> usize {
    usize::try_from(WINDOW_NS.div_ceil(interval.max(1)))
        .unwrap_or(usize::MAX)
        .max(1)
}

impl StageFlow {
    /// An order that entered the stage at `entered` (ns) left it.
    pub fn exited(&mut self, entered: u64) {
        self.exits_now.0 = self.exits_now.0.saturating_add(entered / 1_000_000_000);
        self.exits_now.1 += 1;
    }

    /// Whether an order that entered the stage at `entered` has been **overtaken**: the orders leaving the stage
    /// now entered it, on average, more than `margin` ns after it. In a stage that lets its orders go in order
    /// (a first-come-first-served queue, or a stall that releases what it held), such an order is not waiting
    /// behind the others: its own work is what keeps it, and the stage's slowdown did not cost it its time
    /// (`margin`: how much later than an order of typical duration an order of long but normal duration leaves,
    /// the engine takes the 95th percentile minus the median of the stage's normal duration).
    pub fn overtaken(&self, entered: u64, margin: f64) -> bool {
        self.served_entry.is_some_and(|e| entered as f64 + margin < e as f64)
    }

    /// Whether the order in which the stage lets its orders go says who waits behind whom now
    /// ([`StageFlow::overtaken`]): it works at a normal or slowed pace. Not while it is stalled (nobody leaves,
    /// so nobody overtakes anybody: where the service stood before the stall says nothing of what it holds) nor
    /// while it catches up (a stall's release or a backlog's drain lets go of what it held in a burst).
    pub fn serving(&self) -> bool {
        self.rate >= STALL && self.rate <= 1.0
    }

    /// Closes the interval ending at `now` (of length `interval` ns) and decides the stage's rate.
    pub fn close_interval(&mut self, now: u64, interval: u64) {
        self.history.push_back((self.observed, self.expected_next));
        while self.history.len() > window_intervals(interval) {
            self.history.pop_front();
        }
        self.exit_history.push_back(std::mem::take(&mut self.exits_now));
        while self.exit_history.len() > window_intervals(interval) {
            self.exit_history.pop_front();
        }
        let (sum, n) = self
            .exit_history
            .iter()
            .fold((0u64, 0u64), |(s, n), (a, b)| (s.saturating_add(*a), n + b));
        if let Some(mean) = sum.checked_div(n) {
            self.served_entry = Some(mean.saturating_mul(1_000_000_000));
        }
        self.observed = 0.0;
        self.expected_next = 0.0;
        let (o, e) = self.history.iter().fold((0.0, 0.0), |(a, b), (o, e)| (a + o, b + e));
        let hours = (self.history.len() as f64 * interval as f64 / 3.6e12).max(1e-9);
        self.normal_per_hour = e / hours;
        self.observed_per_hour = o / hours;
        match rate_test(o, e, ALPHA, MIN_CHANGE, MIN_EXPECTED) {
            RateVerdict::Low(r) => {
                self.rate = r.max(0.0);
                self.slowed_since.get_or_insert(now);
                // A stall ends when its orders leave again at least at the normal pace (the latest interval's
                // exits reach the expected ones), not when a slowdown that once fell below `STALL` creeps above it.
                let (o_last, e_last) = self.history.back().copied().unwrap_or((0.0, 0.0));
                if self.rate < STALL {
                    self.stall = StallState::Stalled;
                } else if self.stall == StallState::Stalled && e_last > 0.0 && o_last >= e_last {
                    self.stall = StallState::Released(now);
                }
            }
            RateVerdict::High(r) => {
                self.rate = r.min(4.0);
                self.end_slowdown(now);
            }
            RateVerdict::Normal => {
                self.rate = 1.0;
                self.end_slowdown(now);
            }
        }
    }

    /// The current slowdown, if any, ended at `now`: its length is remembered.
    fn end_slowdown(&mut self, now: u64) {
        self.stall = StallState::None;
        if let Some(since) = self.slowed_since.take() {
            self.episodes.push_back(now.saturating_sub(since));
            while self.episodes.len() > MAX_EPISODES {
                self.episodes.pop_front();
            }
        }
    }

    /// Back to normal (no judgement yet: the model is still warming up).
    pub fn assume_normal(&mut self) {
        self.rate = 1.0;
        self.slowed_since = None;
        self.stall = StallState::None;
    }

    /// Whether the stage is **releasing** what a stall held: its current slowdown stalled it, and its orders
    /// leave again at least at the normal pace (the latest interval's exits reach the expected ones; the rate
    /// test over the window still says "slowed" because the window holds the stall). The
    /// stall is over, so its remaining length is `0`: its orders leave at their own normal exit, with the time
    /// they were held counted towards their own work (the hold rule with `W = 0`, see
    /// [`super::sketch::TimeChange::held_for`]). Neither the slowdown's "as long again" nor a first-come
    /// first-served queue at the window's throughput (which mixes the stall with the release) describes it.
    pub fn releasing(&self) -> bool {
        self.slowed() && matches!(self.stall, StallState::Released(_))
    }

    /// How long (ns) the stage has held an order that entered it at `entered`, as of `now`: while stalled, since
    /// the stall began; while releasing, until the stall ended; else `0`.
    pub fn held(&self, entered: u64, now: u64) -> u64 {
        let Some(since) = self.slowed_since else { return 0 };
        let until = match self.stall {
            StallState::Released(t) => t,
            _ if self.stalled() => now,
            _ => return 0,
        };
        until.saturating_sub(since.max(entered))
    }

    /// The clock changes assumed for predictions made at `now`, each equally likely: one (`NORMAL`) unless
    /// the stage is slowed; then the slowdown's remaining length `W` is uncertain and taken at the
    /// [`QUADRATURE`] mid-quantiles of its survival `G` (see the module doc; `episodes`: the lengths of the
    /// slowdowns seen to end, of every stage).
    pub fn time_changes(&self, now: u64, episodes: &[u64]) -> Vec<TimeChange> {
        if self.rate >= 1.0 || self.slowed_since.is_none() || self.releasing() {
            return vec![self.time_change(now)];
        }
        let m = self.time_change(now).span;
        remaining_quantiles(m, episodes)
            .into_iter()
            .map(|w| TimeChange {
                rate: self.rate,
                span: w,
                hold: self.stalled(),
            })
            .collect()
    }

    /// Whether orders in the stage are predicted as a queue ([`StageFlow::queue_waits`]): slowed but still
    /// working (`0.1 ≤ r < 1`).
    pub fn queueing(&self) -> bool {
        self.slowed() && self.rate >= STALL && self.rate < 1.0 && self.observed_per_hour > 0.0 && !self.releasing()
    }

    /// Waits (ns) of an order with `ahead` orders before it in the stage, served first come first served:
    /// "backlog ahead / current throughput" while the slowdown lasts (`c_s` = observed exits per hour), then
    /// at the normal pace (`c_n` = expected exits per hour): for each equally likely remaining length `W` of
    /// the slowdown (as in [`StageFlow::time_changes`]), `ahead / c_s` if `ahead ≤ c_s·W`, else
    /// `W + (ahead − c_s·W) / c_n`. `None` unless [`StageFlow::queueing`].
    pub fn queue_waits(&self, ahead: usize, now: u64, episodes: &[u64]) -> Option<Vec<f64>> {
        if !self.queueing() {
            return None;
        }
        let h = 3.6e12;
        let (cs, cn) = (
            self.observed_per_hour / h,
            self.normal_per_hour.max(self.observed_per_hour) / h,
        );
        let n = ahead as f64;
        Some(
            self.time_changes(now, episodes)
                .iter()
                .map(|tc| {
                    let w = tc.span;
                    if n <= cs * w { n / cs } else { w + (n - cs * w) / cn }
                })
                .collect(),
        )
    }

    /// Whether the stage is slowed now.
    pub fn slowed(&self) -> bool {
        self.slowed_since.is_some()
    }

    /// Whether the stage is stalled now (slowed below [`STALL`]).
    pub fn stalled(&self) -> bool {
        self.slowed() && self.rate < STALL
    }

    /// The clock change assumed for predictions made at `now`.
    pub fn time_change(&self, now: u64) -> TimeChange {
        if (self.rate - 1.0).abs() < 1e-9 {
            return TimeChange::NORMAL;
        }
        if self.releasing() {
            return TimeChange::RELEASED;
        }
        let lasted = self.slowed_since.map_or(0, |s| now.saturating_sub(s));
        TimeChange {
            rate: self.rate,
            span: lasted.max(MIN_SPAN_NS) as f64,
            hold: self.stalled(),
        }
    }

    /// Extra delay (ns) the current slowdown adds to an order that reaches the stage in `eta` ns.
    pub fn extra_delay(&self, now: u64, eta: f64) -> f64 {
        Self::extra_delay_of(&self.time_change(now), eta)
    }

    /// [`StageFlow::extra_delay`] for a clock change `tc`: `max(0, D·(1 − r) − eta)` while slowed.
    pub fn extra_delay_of(tc: &TimeChange, eta: f64) -> f64 {
        if tc.rate >= 1.0 {
            return 0.0;
        }
        (tc.span * (1.0 - tc.rate) - eta.max(0.0)).max(0.0)
    }
}

/// `G(x) = P(W > x)`, the remaining length of a slowdown that has lasted `m` ns (see the module doc).
pub fn remaining_survival(m: f64, episodes: &[u64], x: f64) -> f64 {
    let m = m.max(1.0);
    let x = x.max(0.0);
    let longer = |t: f64| episodes.iter().filter(|l| **l as f64 > t).count() as f64;
    (PRIOR_WEIGHT * m / (m + x) + longer(m + x)) / (PRIOR_WEIGHT + longer(m))
}

/// The [`QUADRATURE`] mid-quantiles of `W` (ns, ascending): `W_i` with `G(W_i) = 1 − (i + ½) / n`.
pub fn remaining_quantiles(m: f64, episodes: &[u64]) -> Vec<f64> {
    let n = QUADRATURE;
    (0..n)
        .map(|i| {
            let target = 1.0 - (i as f64 + 0.5) / n as f64;
            // G falls from 1 to 0: bisection between 0 and an upper bound where G is below the target (the
            // prior part alone is below it from `m·(k₀/(target·(k₀ + n_m)) − 1)` on; the data part from the
            // longest episode on).
            let mut hi = m.max(1.0);
            while remaining_survival(m, episodes, hi) > target && hi < 1e22 {
                hi *= 2.0;
            }
            let mut lo = 0.0;
            for _ in 0..60 {
                let mid = 0.5 * (lo + hi);
                if remaining_survival(m, episodes, mid) > target {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            hi
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const M5: u64 = 300_000_000_000;

    /// `n` intervals of 5 minutes in which 20 exits were expected and `observed` came.
    fn intervals(f: &mut StageFlow, now: &mut u64, n: usize, observed: f64) {
        for _ in 0..n {
            *now += M5;
            f.expected_next = 20.0;
            f.observed = observed;
            f.close_interval(*now, M5);
        }
    }

    #[test]
    fn a_stalled_stage_is_slowed_and_recovers() {
        let mut f = StageFlow::default();
        let mut now = 0;
        intervals(&mut f, &mut now, window_intervals(M5), 19.0);
        assert_eq!(f.rate, 1.0);
        assert!(!f.slowed());
        intervals(&mut f, &mut now, 3, 0.0);
        assert!(f.slowed());
        assert!(f.rate < 0.6, "{}", f.rate);
        let tc = f.time_change(now);
        assert!(tc.span >= MIN_SPAN_NS as f64);
        assert!(f.extra_delay(now, 0.0) > 0.0);
        intervals(&mut f, &mut now, window_intervals(M5), 60.0);
        assert!(!f.slowed());
        assert!(f.rate > 1.3);
        assert_eq!(f.episodes.len(), 1, "the ended slowdown is remembered");
    }

    #[test]
    fn an_order_is_overtaken_when_the_orders_leaving_entered_well_after_it() {
        let h = 3_600_000_000_000u64;
        let mut f = StageFlow::default();
        assert!(!f.overtaken(0, 0.0), "nothing left yet: nobody overtook anybody");
        // The orders leaving now entered at 10 h and 12 h: on average at 11 h.
        f.exited(10 * h);
        f.exited(12 * h);
        f.close_interval(13 * h, M5);
        assert_eq!(f.served_entry, Some(11 * h));
        assert!(
            f.overtaken(5 * h, 2.0 * h as f64),
            "entered 6 h before them, margin 2 h"
        );
        assert!(
            !f.overtaken(10 * h, 2.0 * h as f64),
            "within the margin: waiting its turn"
        );
        // An interval without exits (a stall) keeps where the service stood.
        f.close_interval(13 * h + M5, M5);
        assert_eq!(f.served_entry, Some(11 * h));
        // Once the window has moved on, only the latest exits count.
        for i in 0..window_intervals(M5) as u64 {
            f.exited(20 * h);
            f.close_interval(14 * h + i * M5, M5);
        }
        assert_eq!(f.served_entry, Some(20 * h));
    }

    #[test]
    fn a_stall_that_lets_its_orders_go_again_is_releasing_not_a_queue() {
        let h = 3_600_000_000_000u64;
        let mut f = StageFlow::default();
        let mut now = 0;
        intervals(&mut f, &mut now, window_intervals(M5), 20.0);
        // Nothing leaves for an hour: stalled (detected once the test is sure); an order that entered before the
        // stall is held since then.
        let quiet = now;
        intervals(&mut f, &mut now, 12, 0.0);
        assert!(f.stalled() && !f.releasing());
        assert_eq!(f.stall, StallState::Stalled);
        let since = f.slowed_since.expect("slowed");
        assert!(since > quiet && since < quiet + 6 * M5, "{since}");
        assert_eq!(f.held(0, now), now - since);
        assert_eq!(f.held(now - 600_000_000_000, now), 600_000_000_000);
        assert!(
            f.time_changes(now, &[]).len() > 1,
            "the stall's remaining length is uncertain"
        );
        // The release: orders leave again, but the window still holds the stall, so the stage is still slowed,
        // at a rate that is neither a stall nor normal.
        let end = now + M5;
        now += M5;
        f.expected_next = 20.0;
        f.observed = 60.0;
        f.close_interval(now, M5);
        assert!(f.slowed() && !f.stalled(), "rate {}", f.rate);
        assert!(f.releasing());
        assert!(
            !f.queueing(),
            "a release is not a first-come-first-served queue at the window's throughput"
        );
        assert_eq!(f.time_changes(now, &[]), vec![TimeChange::RELEASED], "no stall left");
        assert_eq!(StageFlow::extra_delay_of(&f.time_change(now), 0.0), 0.0);
        // The time held stops at the stall's end.
        assert_eq!(f.held(0, now + h), end - since);
        // Once the stage is normal again, the stall is forgotten.
        intervals(&mut f, &mut now, window_intervals(M5), 20.0);
        assert!(!f.slowed() && !f.releasing());
        assert_eq!(f.stall, StallState::None);
        assert_eq!(f.held(0, now), 0);
        // A slowdown that stalled and then creeps above the stall's speed, still below the normal pace, is still
        // a slowdown (a queue), not a release.
        intervals(&mut f, &mut now, 12, 0.0);
        assert!(f.stalled());
        intervals(&mut f, &mut now, window_intervals(M5), 10.0);
        assert!(f.slowed() && !f.stalled(), "rate {}", f.rate);
        assert!(!f.releasing());
        assert_eq!(f.held(0, now), 0);
    }

    #[test]
    fn the_window_is_a_duration() {
        assert_eq!(window_intervals(M5), 6);
        assert_eq!(window_intervals(30_000_000_000), 60);
        assert_eq!(window_intervals(3_600_000_000_000), 1);
    }

    #[test]
    fn slowdown_length_prior_is_lasts_as_long_again_and_learns_from_episodes() {
        let h = 3_600e9;
        // No episode seen: P(W > x) = m / (m + x), median m.
        assert!((remaining_survival(2.0 * h, &[], 2.0 * h) - 0.5).abs() < 1e-12);
        assert!((remaining_survival(2.0 * h, &[], 6.0 * h) - 0.25).abs() < 1e-12);
        let q = remaining_quantiles(2.0 * h, &[]);
        assert_eq!(q.len(), QUADRATURE);
        assert!(q.windows(2).all(|w| w[0] < w[1]), "ascending");
        let med = 0.5 * (q[QUADRATURE / 2 - 1] + q[QUADRATURE / 2]);
        assert!((med / h - 2.0).abs() < 0.2, "median {}", med / h);
        // Many slowdowns seen to end after 3 h: one that has lasted 2 h has about 1 h left, rarely more.
        let eps = vec![(3.0 * h) as u64; 20];
        let g = remaining_survival(2.0 * h, &eps, 2.0 * h);
        assert!(g < 0.1, "{g}");
        let q = remaining_quantiles(2.0 * h, &eps);
        let med = 0.5 * (q[QUADRATURE / 2 - 1] + q[QUADRATURE / 2]);
        assert!(med < 1.1 * h && med > 0.9 * h, "median {}", med / h);
        // Episodes shorter than the time lasted say nothing: the prior again.
        let short = vec![h as u64; 20];
        assert!((remaining_survival(2.0 * h, &short, 2.0 * h) - 0.5).abs() < 1e-12);
    }
}
