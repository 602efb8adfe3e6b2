//! The tick shared by the connectors that close idle state and emit metrics on their own
//! schedule (`business_impact`, `capacity_planner`); the core stage driver calls them when
//! [`Ticker::deadline`] passes.

use std::time::Duration;
use tokio::time::Instant;

/// When a connector next ticks, how long its input has been idle, and whether its metrics
/// are due.
pub(crate) struct Ticker {
    step: Duration,
    flush_every: Duration,
    next: Instant,
    last_arrival: Instant,
    last_flush: Instant,
}

/// What one tick found.
pub(crate) struct Tick {
    /// Time since the last batch arrived.
    pub idle: Duration,
    /// `flush_every` has passed since metrics were last emitted.
    pub flush: bool,
}

impl Ticker {
    /// Ticks every `step` (the first one at once); metrics are due every `flush_every`.
    /// Create it inside the runtime (in [`bizpilot_core::Stage::start`]).
    pub fn new(step: Duration, flush_every: Duration) -> Self {
        let now = Instant::now();
        Self {
            step,
            flush_every,
            next: now,
            last_arrival: now,
            last_flush: now,
        }
    }

    pub fn arrived(&mut self) {
        self.last_arrival = Instant::now();
    }

    pub fn deadline(&self) -> Instant {
        self.next
    }

    /// Called when the deadline has passed: the next tick comes `step` from now.
    pub fn tick(&mut self) -> Tick {
        let now = Instant::now();
        self.next = now + self.step;
        let flush = now.duration_since(self.last_flush) >= self.flush_every;
        if flush {
            self.last_flush = now;
        }
        Tick {
            idle: now.duration_since(self.last_arrival),
            flush,
        }
    }
}
