//! Rate tests: is an observed count of events consistent with the count a model expected?
//!
//! Used by the `order_kpi` connector to decide whether a stage's throughput is below (or above) what the
//! orders in it normally do. Counts are Poisson with mean `expected` under the null hypothesis.
//!
//! ```text
//! lower tail  P(X ≤ k | λ) = Σ_{i=0..k} e^{-λ} λ^i / i!
//! upper tail  P(X ≥ k | λ) = 1 − P(X ≤ k − 1 | λ)
//! ```
//!
//! Both are computed in log space term by term (exact for the counts seen per hour of a shop; `k` is capped
//! at 100 000 terms, beyond which the normal approximation with continuity correction is used).

/// `P(X ≤ k)` for `X ~ Poisson(lambda)`; `1` for `lambda ≤ 0`.
pub fn poisson_cdf(k: f64, lambda: f64) -> f64 {
    if lambda.is_nan() || lambda <= 0.0 {
        return 1.0;
    }
    if k < 0.0 {
        return 0.0;
    }
    let k = k.floor();
    if k > 100_000.0 {
        let z = (k + 0.5 - lambda) / lambda.sqrt();
        return normal_cdf(z);
    }
    // Sum e^{-λ} λ^i / i! from i = 0 with terms in log space.
    let mut log_term = -lambda;
    let mut acc = log_term.exp();
    let mut i = 1.0;
    while i <= k {
        log_term += lambda.ln() - f64::ln(i);
        acc += log_term.exp();
        i += 1.0;
    }
    acc.clamp(0.0, 1.0)
}

/// `P(X ≥ k)` for `X ~ Poisson(lambda)`.
pub fn poisson_sf(k: f64, lambda: f64) -> f64 {
    if k <= 0.0 {
        return 1.0;
    }
    (1.0 - poisson_cdf(k - 1.0, lambda)).clamp(0.0, 1.0)
}

/// Standard normal CDF (Abramowitz–Stegun 7.1.26 for erf, |error| < 1.5e-7).
pub fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t + 0.254_829_592)
            * t
            * (-x * x).exp();
    if z >= 0.0 { 0.5 * (1.0 + y) } else { 0.5 * (1.0 - y) }
}

/// The verdict of [`rate_test`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateVerdict {
    /// Fewer events than expected, significantly: `observed / expected`.
    Low(f64),
    /// More events than expected, significantly.
    High(f64),
    /// Consistent with the expectation (or too little data to tell).
    Normal,
}

/// Compares `observed` events with the `expected` count: significant at level `alpha` (one-sided, each side)
/// and off by at least `min_change` in ratio (`0.3`: below 0.7 or above 1.3), else `Normal`. Needs
/// `expected ≥ min_expected`.
pub fn rate_test(observed: f64, expected: f64, alpha: f64, min_change: f64, min_expected: f64) -> RateVerdict {
    if expected.is_nan() || expected < min_expected || expected <= 0.0 {
        return RateVerdict::Normal;
    }
    let ratio = observed / expected;
    if ratio <= 1.0 - min_change && poisson_cdf(observed, expected) < alpha {
        RateVerdict::Low(ratio)
    } else if ratio >= 1.0 + min_change && poisson_sf(observed, expected) < alpha {
        RateVerdict::High(ratio)
    } else {
        RateVerdict::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_tails_match_hand_computed_values() {
        // P(X ≤ 2 | 1) = e^-1 (1 + 1 + 1/2) = 0.919698…
        assert!((poisson_cdf(2.0, 1.0) - 0.919_698_602_9).abs() < 1e-9);
        // P(X ≥ 1 | 0.5) = 1 − e^-0.5
        assert!((poisson_sf(1.0, 0.5) - (1.0 - (-0.5f64).exp())).abs() < 1e-12);
        assert_eq!(poisson_cdf(3.0, 0.0), 1.0);
        assert!((normal_cdf(1.96) - 0.975).abs() < 1e-3);
    }

    #[test]
    fn rate_test_needs_significance_and_size() {
        assert_eq!(rate_test(95.0, 100.0, 1e-4, 0.3, 5.0), RateVerdict::Normal);
        assert!(matches!(rate_test(30.0, 100.0, 1e-4, 0.3, 5.0), RateVerdict::Low(r) if (r - 0.3).abs() < 1e-9));
        assert!(matches!(rate_test(200.0, 100.0, 1e-4, 0.3, 5.0), RateVerdict::High(_)));
        // 0 of 2 expected is not significant at 1e-4 (e^-2 = 0.135).
        assert_eq!(rate_test(0.0, 2.0, 1e-4, 0.3, 1.0), RateVerdict::Normal);
        assert_eq!(rate_test(0.0, 3.0, 1e-4, 0.3, 5.0), RateVerdict::Normal);
    }
}
