//! Online calibration of probabilities: learn, from predictions whose outcome became known, how often a raw
//! probability came true, and map raw probabilities to those frequencies.
//!
//! The raw probabilities are cut into [`BINS`] equal bins. Bin `b` keeps `n_b` outcomes, `y_b` of them events
//! (weights: they can be decayed), and `Σp_b`, the sum of the raw probabilities behind them. Its calibrated value
//! is shrunk towards the raw mean of the bin with `k` pseudo-observations (so an empty or thin bin keeps the raw
//! value):
//!
//! ```text
//! e_b = (y_b + k · p̄_b) / (n_b + k),      p̄_b = Σp_b / n_b  (the bin's middle while n_b = 0)
//! ```
//!
//! then made non-decreasing over the bins that have outcomes by pooling adjacent violators (isotonic regression,
//! weights `n_b`). A raw probability `p` maps to the linear interpolation of the knots `(p̄_b, e_b)`, with `(0, 0)`
//! and `(1, 1)` as end points, so the map is continuous and non-decreasing, and the identity while nothing was
//! observed.

use serde::{Deserialize, Serialize};

/// Bins of the raw probability.
pub const BINS: usize = 20;

/// The bin of a raw probability `p` (clamped to `[0, 1]`).
pub fn bin(p: f64) -> usize {
    if p.is_nan() {
        return 0;
    }
    ((p.clamp(0.0, 1.0) * BINS as f64) as usize).min(BINS - 1)
}

/// Outcomes per bin and the map they give (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reliability {
    /// `[n, y, Σp]` per bin.
    bins: Vec<[f64; 3]>,
    /// Pseudo-observations of the raw value per bin.
    prior: f64,
    /// Knots `(raw, calibrated)` of the current map, ascending.
    #[serde(skip)]
    knots: Vec<(f64, f64)>,
}

impl Reliability {
    pub fn new(prior: f64) -> Reliability {
        Reliability {
            bins: vec![[0.0; 3]; BINS],
            prior: prior.max(1e-9),
            knots: Vec::new(),
        }
    }

    /// `weight` outcomes of predictions with raw probability `p`, of which `events` came true.
    pub fn observe(&mut self, p: f64, weight: f64, events: f64) {
        if weight.is_nan() || weight <= 0.0 || p.is_nan() {
            return;
        }
        if let Some(b) = self.bins.get_mut(bin(p)) {
            b[0] += weight;
            b[1] += events.clamp(0.0, weight);
            b[2] += p.clamp(0.0, 1.0) * weight;
        }
    }

    /// Multiplies every count by `factor` (forgetting).
    pub fn decay(&mut self, factor: f64) {
        if !(0.0..1.0).contains(&factor) {
            return;
        }
        for b in &mut self.bins {
            b.iter_mut().for_each(|x| *x *= factor);
        }
    }

    /// Outcomes observed, in all.
    pub fn observed(&self) -> f64 {
        self.bins.iter().map(|b| b[0]).sum()
    }

    /// Recomputes the map from the counts (call after observing, before [`Reliability::map`]).
    pub fn refresh(&mut self) {
        let k = self.prior;
        // Pool adjacent violators over the bins with outcomes: (Σ raw·n, calibrated, n).
        let mut pooled: Vec<(f64, f64, f64)> = Vec::with_capacity(BINS);
        for b in self.bins.iter().filter(|b| b[0] > 0.0) {
            let raw = b[2] / b[0];
            let e = (b[1] + k * raw) / (b[0] + k);
            pooled.push((b[2], e, b[0]));
            while pooled.len() >= 2 {
                let n = pooled.len();
                if pooled[n - 2].1 <= pooled[n - 1].1 {
                    break;
                }
                let (Some(y), Some(x)) = (pooled.pop(), pooled.pop()) else {
                    break;
                };
                let w = x.2 + y.2;
                pooled.push((x.0 + y.0, (x.1 * x.2 + y.1 * y.2) / w, w));
            }
        }
        let mut knots = vec![(0.0, 0.0)];
        for (raw_w, e, w) in pooled {
            let x = raw_w / w;
            if x > knots.last().map_or(0.0, |k| k.0) && x < 1.0 {
                knots.push((x, e.clamp(0.0, 1.0)));
            }
        }
        knots.push((1.0, 1.0));
        // Non-decreasing up to the end point.
        let mut m: f64 = 0.0;
        for kn in &mut knots {
            m = m.max(kn.1);
            kn.1 = m;
        }
        self.knots = knots;
    }

    /// The calibrated value of the raw probability `p` (the identity before [`Reliability::refresh`]).
    pub fn map(&self, p: f64) -> f64 {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        if self.knots.len() < 2 {
            return p;
        }
        let i = self.knots.partition_point(|k| k.0 <= p);
        let upper = self.knots.get(i.min(self.knots.len() - 1));
        let lower = i.checked_sub(1).and_then(|j| self.knots.get(j));
        let (Some(&(x1, y1)), Some(&(x0, y0))) = (upper, lower) else {
            return p;
        };
        if x1 <= x0 {
            return y0;
        }
        y0 + (y1 - y0) * (p - x0) / (x1 - x0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_until_observed_and_learns_a_pessimistic_predictor() {
        let mut r = Reliability::new(10.0);
        assert_eq!(r.map(0.37), 0.37);
        r.refresh();
        assert!((r.map(0.37) - 0.37).abs() < 1e-9, "{}", r.map(0.37));
        // Raw 0.6 came true 10 % of the time, raw 0.95 90 % of the time, raw 0.01 1 %.
        r.observe(0.6, 1000.0, 100.0);
        r.observe(0.95, 1000.0, 900.0);
        r.observe(0.01, 10_000.0, 100.0);
        r.refresh();
        let m = r.map(0.6);
        assert!((m - 0.1).abs() < 0.02, "{m}");
        let m = r.map(0.95);
        assert!((m - 0.9).abs() < 0.02, "{m}");
        assert!((r.map(0.01) - 0.01).abs() < 0.002);
        // Continuous and non-decreasing everywhere.
        let mut last = 0.0;
        for i in 0..=1000 {
            let v = r.map(f64::from(i) / 1000.0);
            assert!(v + 1e-12 >= last, "{i}: {v} < {last}");
            assert!((0.0..=1.0).contains(&v));
            last = v;
        }
        assert_eq!(r.map(1.0), 1.0);
    }

    #[test]
    fn thin_bins_stay_near_the_raw_value_and_violators_are_pooled() {
        let mut r = Reliability::new(10.0);
        // Two outcomes, none came true: shrunk, not set to 0.
        r.observe(0.5, 2.0, 0.0);
        // A higher bin that came true less often than a lower one: pooled to one value.
        r.observe(0.3, 500.0, 200.0);
        r.observe(0.4, 500.0, 100.0);
        r.refresh();
        let v = r.map(0.5);
        assert!(v > 0.3 && v < 0.5, "{v}");
        // Bins 0.3 (40 % came true) and 0.4 (20 %) pooled: about 30 % at their mean raw value 0.35.
        let v = r.map(0.35);
        assert!((v - 0.3).abs() < 0.01, "{v}");
        assert!(r.map(0.3) <= r.map(0.4));
        r.decay(0.5);
        assert!((r.observed() - 501.0).abs() < 1e-9);
        assert_eq!(bin(1.0), BINS - 1);
        assert_eq!(bin(-1.0), 0);
    }
}
