//! A mergeable quantile sketch of durations with a relative error bound (DDSketch's logarithmic
//! buckets): a value `v` falls in bucket `⌈log_γ v⌉` with γ = (1 + α)/(1 − α), α = 1 %, and a quantile
//! is answered by its bucket's midpoint `2γ^i/(γ + 1)`, within α of the true value. Buckets are sparse;
//! durations from 1 µs to 1 h need at most about 1,100 of them.

use std::collections::BTreeMap;

/// Relative accuracy.
pub const ALPHA: f64 = 0.01;

/// Durations in seconds.
#[derive(Debug, Clone, Default)]
pub struct Sketch {
    buckets: BTreeMap<i32, u64>,
    zeros: u64,
    count: u64,
}

fn gamma() -> f64 {
    (1.0 + ALPHA) / (1.0 - ALPHA)
}

impl Sketch {
    pub fn add(&mut self, seconds: f64) {
        self.count += 1;
        if seconds.is_nan() || seconds <= 1e-9 || !seconds.is_finite() {
            self.zeros += 1;
            return;
        }
        let i = (seconds.ln() / gamma().ln()).ceil() as i32;
        *self.buckets.entry(i).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Sketch) {
        self.count += other.count;
        self.zeros += other.zeros;
        for (i, n) in &other.buckets {
            *self.buckets.entry(*i).or_insert(0) += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0 ≤ q ≤ 1), `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).floor() as u64;
        if rank < self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        let g = gamma();
        for (i, n) in &self.buckets {
            seen += n;
            if seen > rank {
                return Some(2.0 * g.powi(*i) / (g + 1.0));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantiles of a known set are within the relative error bound.
    #[test]
    fn quantiles_within_alpha() {
        let mut s = Sketch::default();
        let mut v: Vec<f64> = (1..=10_000)
            .map(|i| 0.0001 * f64::from(i) * f64::from(i % 7 + 1))
            .collect();
        for x in &v {
            s.add(*x);
        }
        v.sort_by(f64::total_cmp);
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            let exact = v[(q * (v.len() - 1) as f64).floor() as usize];
            let got = s.quantile(q).unwrap_or(f64::NAN);
            assert!(
                (got - exact).abs() <= ALPHA * exact * 1.0001,
                "q={q} exact={exact} got={got}"
            );
        }
        let mut halves = Sketch::default();
        let mut other = Sketch::default();
        for (i, x) in v.iter().enumerate() {
            if i % 2 == 0 { &mut halves } else { &mut other }.add(*x);
        }
        halves.merge(&other);
        assert_eq!(halves.quantile(0.9), s.quantile(0.9));
        assert_eq!(Sketch::default().quantile(0.5), None);
    }
}
