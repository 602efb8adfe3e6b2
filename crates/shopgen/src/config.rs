//! The workload's configuration (YAML or JSON through serde; every field has a default).
//!
//! Times inside the run (outage windows, slow shipping) are offsets from `start_unix_nano`, written as durations
//! (`"10m"`, `"1h30m"`). Every injection is off by default.
//!
//! ```yaml
//! seed: 42
//! start_unix_nano: 1735689600000000000   # 2025-01-01T00:00:00Z
//! duration: 1h                            # new sessions start in [start, start + duration)
//! tail: 48h                               # nothing happens at or after start + duration + tail (the horizon)
//! orders_per_sec: 5.0                     # Poisson rate of checkout sessions
//! customers: 10000
//! products: 200
//! currency: USD
//! attribute_prefix: demo                  # demo | app (older OpenTelemetry Demo versions)
//! money_attributes: double                # double (as the demo) | string, for demo.order.amount / demo.shipping.amount
//! browse_traces: { min: 1, max: 4 }       # product-catalog browse traces per session
//! add_item_traces: true                   # one AddItem trace per line item before checkout
//! business_events: true
//! trace_export_delay: 1s                  # arrival = trace end + this (+ injections)
//! event_delay: 100ms                      # arrival = event time + this (+ injections)
//! impact_window: 1h                       # W of the revenue-at-risk de-duplication
//! fulfilment:
//!   enabled: true
//!   deadline: 24h
//!   ship_delay: { min: 1h, max: 8h }
//!   delivery_delay: { min: 4h, max: 12h }
//!   cancel_probability: 0.01
//!   abandoned_cancel_after: 30m
//! injections:
//!   payment_outages:
//!     - { start: 10m, end: 20m, failure_probability: 0.9, status_message: "payment gateway timeout", timeout: 5s }
//!   retries: { probability: 0.7, delay: { min: 30s, max: 15m }, max_attempts: 3 }
//!   duplicates: { probability: 0.01, max_delay: 5s }
//!   late: { probability: 0.005, delay: { min: 5m, max: 1h } }
//!   out_of_order: { probability: 0.05, max_delay: 10s }
//!   events_after_spans: { probability: 0.2, delay: { min: 100ms, max: 30s } }
//!   slow_shipping: { start: 30m, end: 50m, ship_latency: 4s, extra_delay: { min: 2h, max: 20h } }
//! ```

use bizpilot_core::config::Duration;
use bizpilot_core::money::Currency;
use serde::{Deserialize, Serialize};

/// The whole workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShopConfig {
    /// Seed of every random choice: same seed and config, same output byte for byte.
    pub seed: u64,
    /// Simulated time of the first possible session (unix nanoseconds).
    pub start_unix_nano: u64,
    /// New checkout sessions start in `[start, start + duration)`.
    pub duration: Duration,
    /// Nothing (no trace, no event) happens at or after the horizon `start + duration + tail`: later
    /// fulfilment stages are simply not generated and those orders are open in the ground truth.
    pub tail: Duration,
    /// Rate of checkout sessions per simulated second (Poisson process).
    pub orders_per_sec: f64,
    /// Number of customers (`cust-000001`…). Keep it well above `orders_per_sec` × session length (~30 s):
    /// a customer has one active cart at a time, sessions that find no free customer are skipped (and counted).
    pub customers: u32,
    /// Number of products (`SKU-0001`…).
    pub products: u32,
    /// Currency of every price and amount.
    pub currency: Currency,
    /// `demo` (`demo.order.id`, `user.id`) or `app` (`app.order.id`, `app.user.id`).
    pub attribute_prefix: AttributePrefix,
    /// Type of `demo.order.amount` and `demo.shipping.amount`: `double` as the OpenTelemetry Demo sets them, or
    /// `string`. `demo.payment.amount` is always a string (`"123.45"`). The double is the nearest to the exact
    /// decimal, so its shortest round-trip representation (Rust `{}`) is the exact amount.
    pub money_attributes: MoneyAttributes,
    /// Product-catalog browse traces (frontend `GET /api/products/{id}` → `GetProduct`) per session.
    pub browse_traces: CountRange,
    /// One AddItem trace (frontend `POST /api/cart` → `oteldemo.CartService/AddItem`) per line item.
    pub add_item_traces: bool,
    /// Emit business events (`order.placed`, …). Off: traces only.
    pub business_events: bool,
    /// A trace arrives this long after its root span ends (before injections).
    pub trace_export_delay: Duration,
    /// A business event arrives this long after its event time (before injections).
    pub event_delay: Duration,
    /// W: the de-duplication window of revenue at risk (and the width of the affected-customers windows).
    pub impact_window: Duration,
    pub fulfilment: FulfilmentConfig,
    pub injections: Injections,
}

impl Default for ShopConfig {
    fn default() -> Self {
        ShopConfig {
            seed: 1,
            start_unix_nano: 1_735_689_600_000_000_000,
            duration: Duration::from_secs(600),
            tail: Duration::from_secs(48 * 3600),
            orders_per_sec: 2.0,
            customers: 10_000,
            products: 200,
            currency: Currency::USD,
            attribute_prefix: AttributePrefix::Demo,
            money_attributes: MoneyAttributes::Double,
            browse_traces: CountRange { min: 1, max: 4 },
            add_item_traces: true,
            business_events: true,
            trace_export_delay: Duration::from_secs(1),
            event_delay: Duration::from_millis(100),
            impact_window: Duration::from_secs(3600),
            fulfilment: FulfilmentConfig::default(),
            injections: Injections::default(),
        }
    }
}

/// Attribute key prefix of the OpenTelemetry Demo version imitated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributePrefix {
    /// `demo.order.id`, `user.id`, … (current demo).
    Demo,
    /// `app.order.id`, `app.user.id`, … (older demo versions).
    App,
}

/// How money span attributes other than `demo.payment.amount` are typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoneyAttributes {
    Double,
    String,
}

/// An inclusive range of counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountRange {
    pub min: u32,
    pub max: u32,
}

/// A range of durations `[min, max]`, drawn uniformly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

impl DurationRange {
    pub const fn secs(min: u64, max: u64) -> Self {
        DurationRange {
            min: Duration::from_secs(min),
            max: Duration::from_secs(max),
        }
    }
    pub const fn millis(min: u64, max: u64) -> Self {
        DurationRange {
            min: Duration::from_millis(min),
            max: Duration::from_millis(max),
        }
    }
}

/// Order lifecycle after payment: placed → paid → shipped → delivered (or cancelled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FulfilmentConfig {
    /// Emit `order.shipped` / `order.delivered` / `order.cancelled`. Memory of [`crate::Shop::stream`] is
    /// proportional to orders per second × the longest lifecycle, since pending stages wait in a queue.
    pub enabled: bool,
    /// The KPI deadline: an order is fulfilled in time when delivered at most this long after it was placed.
    pub deadline: Duration,
    /// From payment to `order.shipped`.
    pub ship_delay: DurationRange,
    /// From `order.shipped` to `order.delivered`.
    pub delivery_delay: DurationRange,
    /// Probability that a paid order is cancelled before it ships (a normal business event, not an injection).
    pub cancel_probability: f64,
    /// An order whose payment failed and whose customer gave up is cancelled this long after the last failure.
    pub abandoned_cancel_after: Duration,
}

impl Default for FulfilmentConfig {
    fn default() -> Self {
        FulfilmentConfig {
            enabled: true,
            deadline: Duration::from_secs(24 * 3600),
            ship_delay: DurationRange::secs(3600, 8 * 3600),
            delivery_delay: DurationRange::secs(4 * 3600, 12 * 3600),
            cancel_probability: 0.01,
            abandoned_cancel_after: Duration::from_secs(1800),
        }
    }
}

/// Injected trouble. Everything off by default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Injections {
    pub payment_outages: Vec<PaymentOutage>,
    pub retries: Retries,
    pub duplicates: Duplicates,
    pub late: Late,
    pub out_of_order: OutOfOrder,
    pub events_after_spans: EventsAfterSpans,
    pub slow_shipping: Option<SlowShipping>,
}

/// A checkout attempt whose trace (its root span) starts in `[start, end)` fails with `failure_probability`: its
/// Charge span and its `charge` child are ERROR with `status_message` and last about `timeout`, PlaceOrder is
/// ERROR, the frontend answers 500, a `payment.failed` event is emitted and `demo.order.amount` is absent. Windows
/// must not overlap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentOutage {
    /// Offset from `start_unix_nano`.
    pub start: Duration,
    /// Offset from `start_unix_nano` (exclusive).
    pub end: Duration,
    pub failure_probability: f64,
    pub status_message: String,
    pub timeout: Duration,
}

impl Default for PaymentOutage {
    fn default() -> Self {
        PaymentOutage {
            start: Duration::from_secs(0),
            end: Duration::from_secs(0),
            failure_probability: 1.0,
            status_message: "payment gateway timeout".into(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// After a failed attempt the customer retries the same cart (same order id, new trace) with `probability`,
/// after a delay, up to `max_attempts` attempts in all; otherwise the order is abandoned (and cancelled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retries {
    pub probability: f64,
    /// From the end of the failed PlaceOrder span to the start of the next attempt.
    pub delay: DurationRange,
    pub max_attempts: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            probability: 0.0,
            delay: DurationRange::secs(30, 900),
            max_attempts: 3,
        }
    }
}

/// A trace is delivered twice (same trace and span ids, same content) with `probability`; the copy arrives up to
/// `max_delay` after the original.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Duplicates {
    pub probability: f64,
    pub max_delay: Duration,
}

impl Default for Duplicates {
    fn default() -> Self {
        Duplicates {
            probability: 0.0,
            max_delay: Duration::from_secs(5),
        }
    }
}

/// An emission (trace or event) arrives `delay` later than it would have, with `probability`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Late {
    pub probability: f64,
    pub delay: DurationRange,
}

impl Default for Late {
    fn default() -> Self {
        Late {
            probability: 0.0,
            delay: DurationRange::secs(300, 3600),
        }
    }
}

/// An emission's arrival is pushed back by up to `max_delay` (uniform), with `probability`: it overtakes nothing
/// but is overtaken by newer data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutOfOrder {
    pub probability: f64,
    pub max_delay: Duration,
}

impl Default for OutOfOrder {
    fn default() -> Self {
        OutOfOrder {
            probability: 0.0,
            max_delay: Duration::from_secs(10),
        }
    }
}

/// Business events of a checkout attempt (`order.placed`, `order.paid`, `payment.failed`) normally arrive before
/// the attempt's trace (events are sent at once, traces after the export delay). With `probability` such an
/// event instead arrives `delay` after the trace's arrival.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsAfterSpans {
    pub probability: f64,
    pub delay: DurationRange,
}

impl Default for EventsAfterSpans {
    fn default() -> Self {
        EventsAfterSpans {
            probability: 0.0,
            delay: DurationRange::millis(100, 30_000),
        }
    }
}

/// Orders paid by an attempt whose trace starts in `[start, end)` (`end` absent: forever) ship slowly:
/// the ShipOrder span lasts about `ship_latency` and the shipped (hence delivered) stage is delayed by
/// `extra_delay`, so that some orders breach the delivery deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlowShipping {
    pub start: Duration,
    pub end: Option<Duration>,
    pub ship_latency: Duration,
    pub extra_delay: DurationRange,
}

impl Default for SlowShipping {
    fn default() -> Self {
        SlowShipping {
            start: Duration::from_secs(0),
            end: None,
            ship_latency: Duration::from_secs(4),
            extra_delay: DurationRange::secs(2 * 3600, 20 * 3600),
        }
    }
}

/// A problem in a [`ShopConfig`], with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ShopConfig {
    /// Every problem of the config (empty when valid).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        let mut bad = |path: &str, message: String| {
            out.push(ConfigError {
                path: path.to_string(),
                message,
            })
        };
        let prob = |p: f64| (0.0..=1.0).contains(&p);
        if !(self.orders_per_sec.is_finite() && self.orders_per_sec > 0.0) {
            bad("orders_per_sec", format!("must be > 0, got {}", self.orders_per_sec));
        }
        if self.customers == 0 {
            bad("customers", "must be at least 1".into());
        }
        if self.products < 5 {
            bad(
                "products",
                "must be at least 5 (carts hold up to 5 distinct products)".into(),
            );
        }
        if self.browse_traces.min > self.browse_traces.max {
            bad("browse_traces", "min > max".into());
        }
        if self.impact_window.is_zero() {
            bad("impact_window", "must be > 0".into());
        }
        let horizon = self.start_unix_nano as u128 + self.duration.get().as_nanos() + self.tail.get().as_nanos();
        if horizon > u64::MAX as u128 / 2 {
            bad("tail", "start + duration + tail is out of range".into());
        }
        let f = &self.fulfilment;
        if f.deadline.is_zero() {
            bad("fulfilment.deadline", "must be > 0".into());
        }
        for (name, r) in [
            ("fulfilment.ship_delay", &f.ship_delay),
            ("fulfilment.delivery_delay", &f.delivery_delay),
            ("injections.retries.delay", &self.injections.retries.delay),
            ("injections.late.delay", &self.injections.late.delay),
            (
                "injections.events_after_spans.delay",
                &self.injections.events_after_spans.delay,
            ),
        ] {
            if r.min > r.max {
                bad(name, "min > max".into());
            }
        }
        if !prob(f.cancel_probability) {
            bad("fulfilment.cancel_probability", "must be in [0, 1]".into());
        }
        let inj = &self.injections;
        for (name, p) in [
            ("injections.retries.probability", inj.retries.probability),
            ("injections.duplicates.probability", inj.duplicates.probability),
            ("injections.late.probability", inj.late.probability),
            ("injections.out_of_order.probability", inj.out_of_order.probability),
            (
                "injections.events_after_spans.probability",
                inj.events_after_spans.probability,
            ),
        ] {
            if !prob(p) {
                bad(name, format!("must be in [0, 1], got {p}"));
            }
        }
        if inj.retries.max_attempts == 0 {
            bad("injections.retries.max_attempts", "must be at least 1".into());
        }
        let mut windows: Vec<(std::time::Duration, std::time::Duration, usize)> = Vec::new();
        for (i, o) in inj.payment_outages.iter().enumerate() {
            let p = format!("injections.payment_outages[{i}]");
            if o.start >= o.end {
                bad(&p, "start must be before end".into());
            }
            if !prob(o.failure_probability) {
                bad(&format!("{p}.failure_probability"), "must be in [0, 1]".into());
            }
            for &(s, e, j) in &windows {
                if o.start.get() < e && s < o.end.get() {
                    bad(&p, format!("overlaps injections.payment_outages[{j}]"));
                }
            }
            windows.push((o.start.get(), o.end.get(), i));
        }
        if let Some(s) = &inj.slow_shipping {
            if s.extra_delay.min > s.extra_delay.max {
                bad("injections.slow_shipping.extra_delay", "min > max".into());
            }
            if let Some(e) = s.end
                && e <= s.start
            {
                bad("injections.slow_shipping.end", "must be after start".into());
            }
        }
        out
    }

    /// `Ok` when [`ShopConfig::problems`] is empty, else the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
