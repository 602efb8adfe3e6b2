//! The breach predictor's learned distributions (see "The model" in the module doc of [`super`]).
//!
//! Per stage `s` and condition `c` (healthy or degraded): the stage duration `T_{s,c}` (time from reaching `s`
//! to reaching any later stage). Per KPI and stage `m` (from `from` up to the stage before `to`): the remaining
//! time `R_m` from reaching `m` to reaching the KPI's goal. Each is a pair of log histograms: exits and
//! censored observations (orders that left the state unfinished, by `max_order_age`); at every evaluation the
//! orders still open are added as censored at their current age, and a Kaplan–Meier survival is estimated.

use super::sketch::{LogHistogram, Scale, Survival, TimeChange, miss_probability_changed};
use crate::stats::calibration::{self, Reliability};

/// Pseudo-observations of the raw probability per calibration bin (see [`crate::stats::calibration`]).
pub const CALIBRATION_PRIOR: f64 = 20.0;

/// Whether the IT services serving an order's stage were in trouble for that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Condition {
    Healthy = 0,
    Degraded = 1,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Healthy => "healthy",
            Condition::Degraded => "degraded",
        }
    }
}

/// Exits, permanently censored observations and (per evaluation) the open orders' current ages.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Sketch {
    exits: LogHistogram,
    censored: LogHistogram,
    open: LogHistogram,
}

impl Sketch {
    fn new() -> Sketch {
        Sketch {
            exits: LogHistogram::new(Scale::durations()),
            censored: LogHistogram::new(Scale::durations()),
            open: LogHistogram::new(Scale::durations()),
        }
    }

    fn weight(&self) -> f64 {
        self.exits.total() + self.censored.total() + self.open.total()
    }

    fn survival(&self) -> Option<Survival> {
        Survival::estimate(&self.exits, &[&self.censored, &self.open])
    }

    fn merged(a: &Sketch, b: &Sketch) -> Sketch {
        let mut m = a.clone();
        m.exits.merge(&b.exits);
        m.censored.merge(&b.censored);
        m.open.merge(&b.open);
        m
    }
}

/// Figures about one learned distribution, for the API and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct SketchInfo {
    pub exits: f64,
    pub censored: f64,
    pub open: f64,
    /// Median (ns) of the estimate, if any.
    pub median: Option<f64>,
}

/// The learned distributions.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Model {
    min_samples: f64,
    half_life_ns: Option<f64>,
    last_decay: Option<u64>,
    /// `[stage][condition]`.
    durations: Vec<[Sketch; 2]>,
    /// `[kpi][stage]`.
    remaining: Vec<Vec<Sketch>>,
    /// Estimates of the current evaluation.
    dur_survival: Vec<[Option<Survival>; 2]>,
    rem_survival: Vec<Vec<Option<Survival>>>,
    /// `[kpi][regime]`: how often the raw probabilities came true, regime 0 while the order's way is working
    /// normally, 1 while a stage on it is slowed (see [`Model::calibrated`]).
    #[serde(default)]
    calibration: Vec<[Reliability; 2]>,
    /// Outcomes waiting for their order's deadline before the calibration learns them: `(deadline, kpi,
    /// bins, breached)` (see [`Model::outcome`]).
    #[serde(default)]
    pending: Vec<(u64, usize, [u32; 2], bool)>,
}

/// Most outcomes waiting for their deadline ([`Model::outcome`]); beyond it the oldest are learned at once.
pub const MAX_PENDING_OUTCOMES: usize = 1 << 20;

impl Model {
    pub fn new(stages: usize, kpis: usize, min_samples: f64, half_life_ns: u64) -> Model {
        Model {
            min_samples,
            half_life_ns: (half_life_ns > 0).then_some(half_life_ns as f64),
            last_decay: None,
            durations: (0..stages).map(|_| [Sketch::new(), Sketch::new()]).collect(),
            remaining: (0..kpis)
                .map(|_| (0..stages).map(|_| Sketch::new()).collect())
                .collect(),
            dur_survival: (0..stages).map(|_| [None, None]).collect(),
            rem_survival: (0..kpis).map(|_| vec![None; stages]).collect(),
            calibration: (0..kpis)
                .map(|_| [Reliability::new(CALIBRATION_PRIOR), Reliability::new(CALIBRATION_PRIOR)])
                .collect(),
            pending: Vec::new(),
        }
    }

    /// An order left `stage` after `duration` ns.
    pub fn stage_exit(&mut self, stage: usize, c: Condition, duration: u64) {
        if let Some(s) = self.durations.get_mut(stage) {
            s[c as usize].exits.add(duration, 1.0);
        }
    }

    /// An order reached KPI `kpi`'s goal `duration` ns after reaching `stage`.
    pub fn goal_reached(&mut self, kpi: usize, stage: usize, duration: u64) {
        if let Some(s) = self.remaining.get_mut(kpi).and_then(|k| k.get_mut(stage)) {
            s.exits.add(duration, 1.0);
        }
    }

    /// An order left the state unfinished, `age` ns into `stage`.
    pub fn stage_censored(&mut self, stage: usize, c: Condition, age: u64) {
        if let Some(s) = self.durations.get_mut(stage) {
            s[c as usize].censored.add(age, 1.0);
        }
    }

    /// An order left the state without reaching KPI `kpi`'s goal, `age` ns after reaching `stage`.
    pub fn goal_censored(&mut self, kpi: usize, stage: usize, age: u64) {
        if let Some(s) = self.remaining.get_mut(kpi).and_then(|k| k.get_mut(stage)) {
            s.censored.add(age, 1.0);
        }
    }

    /// Starts an evaluation at `now`: old observations are decayed, the open orders' ages are cleared.
    pub fn begin(&mut self, now: u64) {
        if let (Some(h), Some(last)) = (self.half_life_ns, self.last_decay)
            && now > last
        {
            let f = 0.5f64.powf((now - last) as f64 / h);
            for s in self
                .durations
                .iter_mut()
                .flatten()
                .chain(self.remaining.iter_mut().flatten())
            {
                s.exits.decay(f);
                s.censored.decay(f);
            }
            for r in self.calibration.iter_mut().flatten() {
                r.decay(f);
            }
        }
        self.last_decay = Some(now);
        for s in self
            .durations
            .iter_mut()
            .flatten()
            .chain(self.remaining.iter_mut().flatten())
        {
            s.open.clear();
        }
    }

    /// An open order has been in `stage` for `age` ns.
    pub fn open_in_stage(&mut self, stage: usize, c: Condition, age: u64) {
        if let Some(s) = self.durations.get_mut(stage) {
            s[c as usize].open.add(age, 1.0);
        }
    }

    /// An open order reached `stage` `age` ns ago and has not reached KPI `kpi`'s goal.
    pub fn open_towards_goal(&mut self, kpi: usize, stage: usize, age: u64) {
        if let Some(s) = self.remaining.get_mut(kpi).and_then(|k| k.get_mut(stage)) {
            s.open.add(age, 1.0);
        }
    }

    /// Ends the evaluation's preparation: estimates the survivals. A condition with fewer than `min_samples`
    /// observations uses both conditions pooled; with fewer still, there is no estimate.
    pub fn estimate(&mut self) {
        for r in self.calibration.iter_mut().flatten() {
            r.refresh();
        }
        let min = self.min_samples;
        for (st, out) in self.durations.iter().zip(self.dur_survival.iter_mut()) {
            let pooled = Sketch::merged(&st[0], &st[1]);
            let pooled_survival = (pooled.weight() >= min).then(|| pooled.survival()).flatten();
            for c in 0..2 {
                out[c] = if st[c].weight() >= min {
                    st[c].survival()
                } else {
                    pooled_survival.clone()
                };
            }
        }
        for (k, out) in self.remaining.iter().zip(self.rem_survival.iter_mut()) {
            for (s, o) in k.iter().zip(out.iter_mut()) {
                *o = (s.weight() >= min).then(|| s.survival()).flatten();
            }
        }
    }

    /// The probability that an order of KPI `kpi` that has been `age` ns in `stage` (condition `c`) reaches
    /// the goal `goal` (a later stage) more than `left` ns from now; `None` while the distributions needed
    /// are not learned.
    pub fn miss(&self, kpi: usize, stage: usize, goal: usize, c: Condition, age: u64, left: u64) -> Option<f64> {
        self.miss_changed(kpi, stage, goal, c, age as f64, left, TimeChange::NORMAL)
    }

    /// [`Model::miss`] with the stage's clock changed by `tc` (`age` is the order's clock age in the stage).
    #[allow(clippy::too_many_arguments)]
    pub fn miss_changed(
        &self,
        kpi: usize,
        stage: usize,
        goal: usize,
        c: Condition,
        age: f64,
        left: u64,
        tc: TimeChange,
    ) -> Option<f64> {
        let t = self.dur_survival.get(stage)?[c as usize].as_ref()?;
        let rest = if stage + 1 >= goal {
            None
        } else {
            Some(self.rem_survival.get(kpi)?.get(stage + 1)?.as_ref()?)
        };
        Some(miss_probability_changed(t, age, left as f64, rest, tc))
    }

    /// The probability of missing the deadline `left` ns from now for an order that will leave `stage` after
    /// `wait` ns (a queueing estimate): `S_R(left − wait)` of the next stage's remaining time (a step at 0 when
    /// the next stage is the goal).
    pub fn miss_after_wait(&self, kpi: usize, stage: usize, goal: usize, wait: f64, left: u64) -> Option<f64> {
        let y = left as f64 - wait;
        if stage + 1 >= goal {
            return Some(if y < 0.0 { 1.0 } else { 0.0 });
        }
        let r = self.rem_survival.get(kpi)?.get(stage + 1)?.as_ref()?;
        Some(if y <= 0.0 { 1.0 } else { r.at(y) })
    }

    /// The probability that an order `age` ns (clock) into `stage` leaves it within the next `dt` ns of normal
    /// work: `1 − S(age + dt) / S(age)` (`1` beyond every observation); `None` while not learned.
    pub fn exit_probability(&self, stage: usize, c: Condition, age: f64, dt: f64) -> Option<f64> {
        let t = self.dur_survival.get(stage)?[c as usize].as_ref()?;
        let sa = t.at(age);
        if sa <= 1e-12 {
            return Some(1.0);
        }
        Some((1.0 - t.at(age + dt) / sa).clamp(0.0, 1.0))
    }

    /// The calibrated probability of a raw probability `p` of KPI `kpi` in `regime` (0: the order's way works
    /// normally, 1: a stage on it is slowed): how often raw probabilities like it came true for the orders
    /// resolved so far (see [`crate::stats::calibration`]; the identity while none was).
    pub fn calibrated(&self, kpi: usize, regime: usize, p: f64) -> f64 {
        self.calibration
            .get(kpi)
            .and_then(|r| r.get(regime))
            .map_or(p, |r| r.map(p))
    }

    /// An order of KPI `kpi` with deadline `deadline` was resolved (`breached` or in time) after raw
    /// probabilities in the calibration bins `bins[regime]` (bit `b` set: bin `b`) were given to it. The
    /// calibration learns it once the deadline has passed, whatever the outcome (a breach is known only then,
    /// an order in time as soon as it arrives: learning those at once would learn from a set biased towards
    /// them), and what was given while a stage was slowed (regime 1) only once no stage is slowed any more
    /// ([`Model::learn_outcomes`]).
    pub fn outcome(&mut self, kpi: usize, bins: [u32; 2], breached: bool, deadline: u64) {
        if self.pending.len() >= MAX_PENDING_OUTCOMES {
            let (_, k, b, y) = self.pending.remove(0);
            self.learn(k, b, y);
        }
        self.pending.push((deadline, kpi, bins, breached));
    }

    /// Learns the outcomes whose deadline is at or before `now`, in the order they were resolved; while a stage
    /// is `slowed`, only what was given to them with no stage on their way slowed (regime 0). A slowdown's own
    /// outcomes are learned once it is over: while it lasts, the orders it has made miss are known (their
    /// deadlines came during it) and the ones it will let through are not yet, so learning them then would
    /// teach the map that every probability given during a slowdown comes true — the slowdown's length, not
    /// the calibration of the model.
    pub fn learn_outcomes(&mut self, now: u64, slowed: bool) {
        if !self.pending.iter().any(|p| p.0 <= now) {
            return;
        }
        let mut keep = Vec::with_capacity(self.pending.len());
        for (d, k, mut b, y) in std::mem::take(&mut self.pending) {
            if d > now {
                keep.push((d, k, b, y));
                continue;
            }
            if slowed {
                self.learn(k, [b[0], 0], y);
                b[0] = 0;
                if b[1] != 0 {
                    keep.push((d, k, b, y));
                }
            } else {
                self.learn(k, b, y);
            }
        }
        self.pending = keep;
    }

    fn learn(&mut self, kpi: usize, bins: [u32; 2], breached: bool) {
        let Some(rs) = self.calibration.get_mut(kpi) else {
            return;
        };
        for (r, mask) in rs.iter_mut().zip(bins) {
            for b in 0..calibration::BINS {
                if mask & (1 << b) != 0 {
                    let mid = (b as f64 + 0.5) / calibration::BINS as f64;
                    r.observe(mid, 1.0, f64::from(u8::from(breached)));
                }
            }
        }
    }

    /// The median stage duration learned for (`stage`, `c`), ns.
    pub fn median_duration(&self, stage: usize, c: Condition) -> Option<f64> {
        self.dur_survival.get(stage)?[c as usize].as_ref().map(Survival::median)
    }

    /// The `q`-quantile of the stage duration learned for (`stage`, `c`), ns.
    pub fn duration_quantile(&self, stage: usize, c: Condition, q: f64) -> Option<f64> {
        self.dur_survival.get(stage)?[c as usize]
            .as_ref()
            .map(|s| s.quantile(q))
    }

    /// The median time from reaching `stage` to reaching KPI `kpi`'s goal, ns (`0` for the goal's own stage).
    pub fn median_remaining(&self, kpi: usize, stage: usize) -> Option<f64> {
        self.rem_survival.get(kpi)?.get(stage)?.as_ref().map(Survival::median)
    }

    /// Figures of the stage-duration distribution (`stage`, `c`).
    pub fn duration_info(&self, stage: usize, c: Condition) -> Option<SketchInfo> {
        let s = &self.durations.get(stage)?[c as usize];
        Some(SketchInfo {
            exits: s.exits.total(),
            censored: s.censored.total(),
            open: s.open.total(),
            median: s.survival().map(|v| v.median()),
        })
    }

    /// Memory held by the sketches, in bytes (fixed: it does not grow with the data).
    pub fn memory_bytes(&self) -> usize {
        let n = self.durations.len() * 2 + self.remaining.iter().map(Vec::len).sum::<usize>();
        n * 3 * Scale::durations().buckets() * std::mem::size_of::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000_000_000;

    #[test]
    fn learns_per_condition_and_falls_back_to_pooled() {
        let mut m = Model::new(3, 1, 5.0, 0);
        for i in 0..20 {
            m.stage_exit(1, Condition::Healthy, (2 + i % 3) * H);
            m.goal_reached(0, 2, 4 * H);
        }
        m.begin(0);
        m.estimate();
        // Degraded has no data of its own: the pooled (healthy) estimate is used.
        let p_h = m.miss(0, 1, 3, Condition::Healthy, 0, 20 * H).unwrap();
        let p_d = m.miss(0, 1, 3, Condition::Degraded, 0, 20 * H).unwrap();
        assert_eq!(p_h, p_d);
        assert!(p_h < 0.01);
        for _ in 0..20 {
            m.stage_exit(1, Condition::Degraded, 18 * H);
        }
        m.begin(0);
        m.estimate();
        let p_d = m.miss(0, 1, 3, Condition::Degraded, 0, 20 * H).unwrap();
        assert!(p_d > 0.9, "{p_d}");
        assert!(m.miss(0, 0, 3, Condition::Healthy, 0, H).is_none(), "stage 0 unknown");
    }

    #[test]
    fn outcomes_are_learned_at_their_deadline_whatever_they_are() {
        let mut m = Model::new(2, 1, 1.0, 0);
        let bin = 1 << calibration::bin(0.5);
        // Two orders given a raw 0.5: one in time (known at once, its deadline at 10 h), one that missed
        // its deadline at 4 h.
        m.outcome(0, [bin, 0], false, 10 * H);
        m.outcome(0, [bin, 0], true, 4 * H);
        m.begin(5 * H);
        m.learn_outcomes(5 * H, false);
        m.estimate();
        // Only the breach is learned by 5 h: the map moves up from the raw value.
        let after_breach = m.calibrated(0, 0, 0.5);
        assert!(after_breach > 0.5, "{after_breach}");
        m.begin(10 * H);
        m.learn_outcomes(10 * H, false);
        m.estimate();
        // The order in time is learned at its deadline: one of two came true.
        let both = m.calibrated(0, 0, 0.5);
        assert!(both < after_breach, "{both} {after_breach}");
        assert!(m.pending.is_empty());
        // The other regime learned nothing.
        assert_eq!(m.calibrated(0, 1, 0.5), 0.5);
        // Given during a slowdown (regime 1) and missed: learned only once no stage is slowed.
        m.outcome(0, [0, bin], true, 11 * H);
        m.learn_outcomes(12 * H, true);
        m.estimate();
        assert_eq!(m.calibrated(0, 1, 0.5), 0.5);
        assert_eq!(m.pending.len(), 1);
        m.learn_outcomes(13 * H, false);
        m.estimate();
        assert!(m.calibrated(0, 1, 0.5) > 0.5);
        assert!(m.pending.is_empty());
    }

    #[test]
    fn open_orders_are_censored_at_their_age_and_decay_forgets() {
        let mut m = Model::new(2, 1, 1.0, H);
        for _ in 0..10 {
            m.stage_exit(0, Condition::Healthy, H);
        }
        m.begin(0);
        for _ in 0..10 {
            m.open_in_stage(0, Condition::Healthy, 5 * H);
        }
        m.estimate();
        // Half left after 1 h, half are still there after 5 h.
        let p = m.miss(0, 0, 1, Condition::Healthy, 0, 3 * H).unwrap();
        assert!((p - 0.5).abs() < 1e-6, "{p}");
        m.begin(H);
        assert!((m.duration_info(0, Condition::Healthy).unwrap().exits - 5.0).abs() < 1e-9);
        assert_eq!(m.duration_info(0, Condition::Healthy).unwrap().open, 0.0);
    }
}
