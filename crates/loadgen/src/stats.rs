//! Latency percentiles from a sorted sample.

use serde::Serialize;

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentiles of `samples` (nanoseconds), reported in milliseconds. Sorts in place.
pub fn percentiles(samples: &mut [u64]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_unstable();
    let n = samples.len();
    let at = |q: f64| {
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        samples[rank - 1] as f64 / 1e6
    };
    Percentiles {
        count: n as u64,
        p50: round3(at(0.50)),
        p90: round3(at(0.90)),
        p99: round3(at(0.99)),
        max: round3(samples[n - 1] as f64 / 1e6),
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().map(|i| i * 1_000_000).collect();
        let p = percentiles(&mut v);
        assert_eq!((p.count, p.p50, p.p90, p.p99, p.max), (100, 50.0, 90.0, 99.0, 100.0));
        assert_eq!(percentiles(&mut []), Percentiles::default());
    }
}
