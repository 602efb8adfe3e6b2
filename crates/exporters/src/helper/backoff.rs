//! Exponential backoff with jitter, as the Collector's `retry_on_failure` computes it.

use std::time::Duration;

use super::RetrySettings;

/// The waits between attempts of one batch.
#[derive(Debug, Clone)]
pub struct Backoff {
    current: Duration,
    randomization_factor: f64,
    multiplier: f64,
    max_interval: Duration,
    max_elapsed_time: Option<Duration>,
}

impl Backoff {
    pub fn new(s: &RetrySettings) -> Self {
        Self {
            current: s.initial_interval.get(),
            randomization_factor: s.randomization_factor.clamp(0.0, 1.0),
            multiplier: if s.multiplier.is_finite() {
                s.multiplier.max(1.0)
            } else {
                1.0
            },
            max_interval: s.max_interval.get(),
            max_elapsed_time: (!s.max_elapsed_time.is_zero()).then(|| s.max_elapsed_time.get()),
        }
    }

    /// The wait before the next attempt, `None` when retries are exhausted. `elapsed` is the
    /// time since the first attempt; `server_delay` a delay the server asked for (gRPC
    /// `RetryInfo`, HTTP `Retry-After`), which is waited at least.
    pub fn next(&mut self, elapsed: Duration, server_delay: Option<Duration>) -> Option<Duration> {
        self.next_with(elapsed, server_delay, rand::random::<f64>())
    }

    /// [`Backoff::next`] with the random number in `[0, 1)` given.
    pub fn next_with(&mut self, elapsed: Duration, server_delay: Option<Duration>, random: f64) -> Option<Duration> {
        let base = self.current.as_secs_f64();
        let delta = self.randomization_factor * base;
        let low = base - delta;
        let jittered = low + random.clamp(0.0, 1.0) * (2.0 * delta);
        let mut delay = Duration::try_from_secs_f64(jittered.max(0.0)).unwrap_or(self.max_interval);
        // Grow the interval for the next time.
        let max = self.max_interval.as_secs_f64();
        let grown = base * self.multiplier;
        self.current = if grown >= max {
            self.max_interval
        } else {
            Duration::try_from_secs_f64(grown).unwrap_or(self.max_interval)
        };
        if let Some(d) = server_delay {
            delay = delay.max(d);
        }
        match self.max_elapsed_time {
            Some(limit) if elapsed.saturating_add(delay) > limit => None,
            _ => Some(delay),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::config::Duration as Cfg;

    fn settings() -> RetrySettings {
        RetrySettings {
            enabled: true,
            initial_interval: Cfg::from_secs(1),
            randomization_factor: 0.5,
            multiplier: 2.0,
            max_interval: Cfg::from_secs(5),
            max_elapsed_time: Cfg::from_secs(20),
        }
    }

    #[test]
    fn grows_to_max_with_jitter_bounds() {
        let mut b = Backoff::new(&settings());
        let z = Duration::ZERO;
        assert_eq!(b.next_with(z, None, 0.0), Some(Duration::from_millis(500)));
        let d = b.next_with(z, None, 0.999).unwrap_or_default();
        assert!(d > Duration::from_millis(2900) && d < Duration::from_secs(3), "{d:?}");
        assert_eq!(b.next_with(z, None, 0.5), Some(Duration::from_secs(4)));
        assert_eq!(b.next_with(z, None, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(b.next_with(z, None, 0.5), Some(Duration::from_secs(5)));
    }

    #[test]
    fn server_delay_is_a_minimum_and_elapsed_limit_stops() {
        let mut b = Backoff::new(&settings());
        assert_eq!(
            b.next_with(Duration::ZERO, Some(Duration::from_secs(7)), 0.5),
            Some(Duration::from_secs(7))
        );
        assert_eq!(b.next_with(Duration::from_secs(19), None, 0.5), None);
        let mut forever = Backoff::new(&RetrySettings {
            max_elapsed_time: Cfg::default(),
            ..settings()
        });
        assert!(forever.next_with(Duration::from_secs(1 << 30), None, 0.5).is_some());
    }
}
