//! Baselines learned online: what is normal for one stream, forgetting the past at a known rate.
//!
//! [`RateBaseline`] estimates a failure probability from counts `(n, f)` fed once per step (an evaluation
//! interval): exponentially weighted sums `N ← d·N + n`, `F ← d·F + f` with `d = 2^(−1/half_life_steps)`, and
//! a prior of `prior_weight` pseudo-operations at `prior_rate`, so
//! `p̂ = (F + prior_rate·prior_weight) / (N + prior_weight)`, clamped to `[floor, ceiling]`. The prior is
//! what a cold start uses and fades as data accumulates; the floor keeps a clean stream from making a single
//! failure look like an outage. Callers protect the baseline from the anomalies it is meant to expose by
//! not feeding it while an incident is open and by capping the failures a step may contribute.
//!
//! [`LogScale`] estimates the typical size of a positive quantity (a duration) as the exponential of an
//! exponentially weighted mean of its logarithm, each observation winsorized to within a factor `clip` of
//! the current estimate (a slow outlier moves it little).

/// A failure probability learned from counts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RateBaseline {
    decay: f64,
    n: f64,
    f: f64,
    prior_rate: f64,
    prior_weight: f64,
    floor: f64,
    ceiling: f64,
}

impl RateBaseline {
    /// `half_life_steps`: steps after which a step's weight has halved (> 0).
    pub fn new(half_life_steps: f64, prior_rate: f64, prior_weight: f64, floor: f64, ceiling: f64) -> Self {
        RateBaseline {
            decay: 0.5f64.powf(1.0 / half_life_steps.max(1e-9)),
            n: 0.0,
            f: 0.0,
            prior_rate,
            prior_weight: prior_weight.max(0.0),
            floor,
            ceiling: ceiling.max(floor),
        }
    }

    /// One step's counts; `f` is capped at `max_rate · n`.
    pub fn learn(&mut self, n: u64, f: u64, max_rate: f64) {
        let n = n as f64;
        let f = (f as f64).min(max_rate.max(0.0) * n);
        self.n = self.n * self.decay + n;
        self.f = self.f * self.decay + f;
    }

    /// The estimated probability.
    pub fn rate(&self) -> f64 {
        let den = self.n + self.prior_weight;
        let p = if den > 0.0 {
            (self.f + self.prior_rate * self.prior_weight) / den
        } else {
            self.prior_rate
        };
        p.clamp(self.floor, self.ceiling)
    }

    /// The weight of the evidence behind [`RateBaseline::rate`], in operations (decayed).
    pub fn weight(&self) -> f64 {
        self.n
    }
}

/// The typical size of a positive quantity, on a log scale.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogScale {
    mean_ln: f64,
    count: u64,
    max_weight: u64,
    clip_ln: f64,
}

impl LogScale {
    /// `max_weight`: the estimate averages over about this many recent observations; `clip`: factor beyond
    /// which an observation is pulled in before it is learned (≥ 1).
    pub fn new(max_weight: u64, clip: f64) -> Self {
        LogScale {
            mean_ln: 0.0,
            count: 0,
            max_weight: max_weight.max(1),
            clip_ln: clip.max(1.0).ln(),
        }
    }

    pub fn learn(&mut self, x: f64) {
        if !(x.is_finite() && x > 0.0) {
            return;
        }
        let l = x.ln();
        if self.count == 0 {
            self.mean_ln = l;
        } else {
            let l = l.clamp(self.mean_ln - self.clip_ln, self.mean_ln + self.clip_ln);
            let w = 1.0 / (self.count.min(self.max_weight) + 1) as f64;
            self.mean_ln += w * (l - self.mean_ln);
        }
        self.count += 1;
    }

    /// Observations learned.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The typical value (geometric mean of the recent observations); `None` before any.
    pub fn typical(&self) -> Option<f64> {
        (self.count > 0).then(|| self.mean_ln.exp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prior_fades_and_rate_converges() {
        let mut b = RateBaseline::new(360.0, 0.01, 200.0, 0.001, 0.5);
        assert!((b.rate() - 0.01).abs() < 1e-12, "cold start: the prior");
        for _ in 0..1000 {
            b.learn(200, 1, 1.0);
        }
        assert!((b.rate() - 0.005).abs() < 2e-4, "{}", b.rate());
        // A clean stream is floored.
        let mut c = RateBaseline::new(360.0, 0.01, 200.0, 0.001, 0.5);
        for _ in 0..5000 {
            c.learn(100, 0, 1.0);
        }
        assert_eq!(c.rate(), 0.001);
    }

    #[test]
    fn capped_steps_barely_move_it() {
        let mut b = RateBaseline::new(360.0, 0.005, 200.0, 0.001, 0.5);
        for _ in 0..2000 {
            b.learn(200, 1, 1.0);
        }
        let before = b.rate();
        // Six steps of a total outage, capped at 2.5 %.
        for _ in 0..6 {
            b.learn(200, 200, 0.025);
        }
        assert!(b.rate() - before < 0.0005, "{before} → {}", b.rate());
    }

    #[test]
    fn half_life_halves_the_weight() {
        let mut b = RateBaseline::new(10.0, 0.0, 0.0, 0.0, 1.0);
        b.learn(100, 0, 1.0);
        for _ in 0..10 {
            b.learn(0, 0, 1.0);
        }
        assert!((b.weight() - 50.0).abs() < 1e-9);
    }

    #[test]
    fn log_scale_is_robust_to_slow_outliers() {
        let mut s = LogScale::new(1000, 2.0);
        assert_eq!(s.typical(), None);
        for i in 0..1000 {
            s.learn(if i % 2 == 0 { 0.1 } else { 0.4 });
        }
        assert!((s.typical().unwrap_or(0.0) - 0.2).abs() < 0.01);
        for _ in 0..20 {
            s.learn(100.0);
        }
        assert!(s.typical().unwrap_or(0.0) < 0.25, "20 outliers clipped to 2×");
    }
}
