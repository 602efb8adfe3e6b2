//! Page's CUSUM for a Bernoulli stream (failure or not), with the false-alarm arithmetic behind its threshold.
//!
//! Under the in-control hypothesis H₀ each observation fails with probability `p0`; under the out-of-control
//! alternative H₁ with `p1 > p0`. Each observation `x ∈ {0, 1}` adds its log-likelihood ratio
//! `ℓ(x) = x·ln(p1/p0) + (1 − x)·ln((1 − p1)/(1 − p0))` and the statistic is `S ← max(0, S + ℓ(x))`; an alarm
//! is raised when `S ≥ h`. CUSUM is optimal for detecting a change from p0 to p1 (Lorden 1971,
//! Moustakides 1986): the smallest worst-case delay for a given false-alarm rate. A failure adds `ln(p1/p0)`;
//! a success removes `ln((1 − p0)/(1 − p1))`, so the statistic forgets healthy history, and a short burst of
//! failures and a long modest excess both reach `h`: one test covers what burn-rate alerts need a fast and a
//! slow window for.
//!
//! **False alarms.** `ℓ` is a log-likelihood ratio, so under H₀ `E[e^ℓ] = 1` and Siegmund's approximation of
//! the in-control average run length (observations until a false alarm) is
//! `ARL₀ ≈ (e^h − h − 1) / |μ₀|` with `μ₀ = E₀[ℓ] = p0·ln(p1/p0) + (1 − p0)·ln((1 − p1)/(1 − p0)) < 0`
//! ([`arl0`]); it ignores the overshoot over `h`, which makes the true ARL₀ longer (conservative). The
//! expected delay when the true rate is `p` is about `h / μ(p)` observations ([`drift`]).

/// A Bernoulli CUSUM.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BernoulliCusum {
    h: f64,
    s: f64,
    up: f64,
    down: f64,
}

impl BernoulliCusum {
    /// Threshold `h` (> 0) for rates `p0 < p1` (both in (0, 1)).
    pub fn new(h: f64, p0: f64, p1: f64) -> Self {
        let mut c = BernoulliCusum {
            h,
            s: 0.0,
            up: 0.0,
            down: 0.0,
        };
        c.set_rates(p0, p1);
        c
    }

    /// Changes the hypotheses (the statistic is kept).
    pub fn set_rates(&mut self, p0: f64, p1: f64) {
        let (up, down) = increments(p0, p1);
        self.up = up;
        self.down = down;
    }

    /// One observation; true when the statistic is at or above the threshold.
    pub fn observe(&mut self, failed: bool) -> bool {
        self.s = (self.s + if failed { self.up } else { self.down }).max(0.0);
        self.s >= self.h
    }

    pub fn value(&self) -> f64 {
        self.s
    }

    pub fn threshold(&self) -> f64 {
        self.h
    }

    pub fn reset(&mut self) {
        self.s = 0.0;
    }
}

/// (`ℓ(1)`, `ℓ(0)`) for rates `p0 < p1`.
pub fn increments(p0: f64, p1: f64) -> (f64, f64) {
    let p0 = p0.clamp(1e-9, 1.0 - 1e-9);
    let p1 = p1.clamp(p0, 1.0 - 1e-9);
    ((p1 / p0).ln(), ((1.0 - p1) / (1.0 - p0)).ln())
}

/// The alternative tested against baseline `p0`: `max(ratio·p0, p0 + shift)`, at most `ceiling`.
pub fn alternative(p0: f64, ratio: f64, shift: f64, ceiling: f64) -> f64 {
    (ratio * p0).max(p0 + shift).min(ceiling).max(p0)
}

/// Expected increment of the statistic per observation when the true failure rate is `p`.
pub fn drift(p0: f64, p1: f64, p: f64) -> f64 {
    let (up, down) = increments(p0, p1);
    p * up + (1.0 - p) * down
}

/// Siegmund's approximation of the in-control average run length, in observations (see the module docs).
pub fn arl0(p0: f64, p1: f64, h: f64) -> f64 {
    let mu = drift(p0, p1, p0).abs().max(1e-300);
    (h.exp() - h - 1.0) / mu
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), independent of any crate.
    struct Rng(u64);
    impl Rng {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn a_total_outage_alarms_after_h_over_ln_ratio_failures() {
        let mut c = BernoulliCusum::new(16.0, 0.005, 0.025);
        let need = (16.0 / (0.025f64 / 0.005).ln()).ceil() as usize;
        for i in 1..need {
            assert!(!c.observe(true), "alarm after {i} < {need} failures");
        }
        assert!(c.observe(true));
        c.reset();
        assert_eq!(c.value(), 0.0);
    }

    #[test]
    fn healthy_history_is_forgotten() {
        let mut c = BernoulliCusum::new(16.0, 0.005, 0.025);
        for _ in 0..100_000 {
            c.observe(false);
        }
        assert_eq!(c.value(), 0.0, "never below zero: no credit for a long good past");
    }

    #[test]
    fn simulated_run_length_is_at_least_siegmunds_approximation() {
        // A low threshold so that false alarms are frequent enough to measure: the mean run length in
        // control must be near (above, because of the overshoot) the approximation.
        let (p0, p1, h) = (0.01, 0.05, 4.0);
        let approx = arl0(p0, p1, h);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut c = BernoulliCusum::new(h, p0, p1);
        let (mut runs, mut total, mut len) = (0u64, 0u64, 0u64);
        while runs < 400 {
            len += 1;
            if c.observe(rng.unit() < p0) {
                runs += 1;
                total += len;
                len = 0;
                c.reset();
            }
        }
        let mean = total as f64 / runs as f64;
        assert!(
            mean > 0.8 * approx && mean < 3.0 * approx,
            "simulated {mean}, approximation {approx}"
        );
    }

    #[test]
    fn drift_is_negative_in_control_and_positive_out_of_control() {
        let p1 = alternative(0.005, 4.0, 0.02, 0.5);
        assert!((p1 - 0.025).abs() < 1e-12);
        assert!(drift(0.005, p1, 0.005) < 0.0);
        assert!(drift(0.005, p1, 0.10) > 0.1);
        assert_eq!(alternative(0.2, 4.0, 0.02, 0.5), 0.5);
    }
}
