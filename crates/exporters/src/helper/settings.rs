//! Config of the sending queue, retries and timeout, with the Collector's keys and defaults.

use bizpilot_core::FieldError;
use bizpilot_core::config::Duration;
use serde::Deserialize;

/// `retry_on_failure`: exponential backoff with jitter on retryable errors.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    pub enabled: bool,
    /// Wait before the first retry.
    pub initial_interval: Duration,
    /// Each wait is randomised by ± this fraction of it (0 to 1).
    pub randomization_factor: f64,
    /// Growth of the wait after each retry.
    pub multiplier: f64,
    /// Upper bound of one wait.
    pub max_interval: Duration,
    /// Give up after this long since the first attempt; `0` retries forever.
    pub max_elapsed_time: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_interval: Duration::from_secs(5),
            randomization_factor: 0.5,
            multiplier: 1.5,
            max_interval: Duration::from_secs(30),
            max_elapsed_time: Duration::from_secs(300),
        }
    }
}

impl RetrySettings {
    /// Problems, with paths under `prefix` (e.g. `retry_on_failure`).
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut e = Vec::new();
        if !self.enabled {
            return e;
        }
        if self.initial_interval.is_zero() {
            e.push(FieldError::new(
                format!("{prefix}.initial_interval"),
                "must be greater than 0",
            ));
        }
        if !(0.0..=1.0).contains(&self.randomization_factor) {
            e.push(FieldError::new(
                format!("{prefix}.randomization_factor"),
                format!("must be within [0, 1], got {}", self.randomization_factor),
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            e.push(FieldError::new(
                format!("{prefix}.multiplier"),
                format!("must be at least 1, got {}", self.multiplier),
            ));
        }
        if self.max_interval < self.initial_interval {
            e.push(FieldError::new(
                format!("{prefix}.max_interval"),
                format!(
                    "must not be less than initial_interval ({} < {})",
                    self.max_interval, self.initial_interval
                ),
            ));
        }
        e
    }
}

/// `sending_queue`: batches waiting to be sent, and how many are sent at once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// Without a queue, batches are sent one at a time, in order, by the exporter's task.
    pub enabled: bool,
    /// Concurrent senders.
    pub num_consumers: usize,
    /// Capacity in batches. A full queue stops reading the input (backpressure), it never drops.
    /// With `storage`: batches stored; beyond it new batches are refused upstream (counted).
    pub queue_size: usize,
    /// Id of a storage extension (`file_storage`) that keeps the queue on disk; none: in memory.
    pub storage: Option<String>,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            num_consumers: 10,
            queue_size: 1000,
            storage: None,
        }
    }
}

impl QueueSettings {
    /// Problems, with paths under `prefix` (e.g. `sending_queue`).
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut e = Vec::new();
        if !self.enabled {
            if self.storage.is_some() {
                e.push(FieldError::new(
                    format!("{prefix}.storage"),
                    "needs the queue: remove `enabled: false` or the storage",
                ));
            }
            return e;
        }
        if let Some(s) = &self.storage
            && let Err(m) = s.parse::<bizpilot_core::ComponentId>()
        {
            e.push(FieldError::new(format!("{prefix}.storage"), m.to_string()));
        }
        if self.num_consumers == 0 {
            e.push(FieldError::new(format!("{prefix}.num_consumers"), "must be at least 1"));
        }
        if self.queue_size == 0 {
            e.push(FieldError::new(format!("{prefix}.queue_size"), "must be at least 1"));
        }
        e
    }
}

/// Everything the helper needs; exporters keep the three keys at the top level of their
/// config (`timeout`, `retry_on_failure`, `sending_queue`) and build this from them.
#[derive(Debug, Clone, PartialEq)]
pub struct HelperSettings {
    /// Limit of one send attempt; `0` = none.
    pub timeout: Duration,
    pub retry_on_failure: RetrySettings,
    pub sending_queue: QueueSettings,
}

impl Default for HelperSettings {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            retry_on_failure: RetrySettings::default(),
            sending_queue: QueueSettings::default(),
        }
    }
}

/// The default `timeout` (5s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl HelperSettings {
    /// Problems of `retry_on_failure` and `sending_queue`, with those paths.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut e = self.retry_on_failure.validate("retry_on_failure");
        e.extend(self.sending_queue.validate("sending_queue"));
        e
    }
}
