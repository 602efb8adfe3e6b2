//! The `business_state` extension: the keyed business state shared by the
//! components of a cross-pipeline join. The `business_events` exporter (in a
//! logs pipeline) writes business events into it; the `enrich` processor (in a
//! traces pipeline) reads orders and customers from it.
//!
//! Other components get it with
//! `ctx.extensions.get::<bizpilot_business::BusinessState>(&id)`.
//! See [`bizpilot_business::state`] for the store's semantics (bounds,
//! least-recently-updated eviction, TTL, counters, key-arrival notifications).
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `max_orders` | `100000` | most orders held; beyond it the least recently updated order is evicted |
//! | `max_customers` | `100000` | most customers held, likewise |
//! | `ttl` | `1h` | an order or customer not updated for this long is dropped; `0` keeps keys until evicted |
//! | `max_traces` | `100000` | most trace links held (trace id → customer, tier, order: the join of events without a customer, such as the OpenTelemetry Demo's `OrderResult`, to their trace; see `docs/order-result-join.md`) |
//! | `trace_ttl` | `5m` | a trace link not updated for this long is dropped (`0` = until evicted); keep it above the longest delay between a trace's spans and its events |
//! | `purge_interval` | `1s` | how often expired keys are removed in the background (reads ignore expired keys at once) |
//!
//! ```yaml
//! extensions:
//!   business_state:
//!     max_orders: 200000
//!     max_customers: 50000
//!     ttl: 30m
//! service:
//!   extensions: [business_state]
//! ```
//!
//! Self-telemetry (labels `extension`, `store` = `orders` | `customers` | `traces`):
//! `bizpilot_business_state_{hits,misses,updates,evictions,expirations}_total` and the gauge
//! `bizpilot_business_state_entries`; `bizpilot_business_state_trace_joins_total{extension,first}`
//! counts orders given a customer by their trace (`first` = `span` or `event`, whichever came first).

use serde::Deserialize;
use std::any::Any;
use std::sync::Arc;

use bizpilot_business::{BusinessState, StateConfig};
use bizpilot_core::config::Duration;
use bizpilot_core::{
    ComponentConfig, ComponentError, ComponentInfo, ComponentKind, CreateContext, Extension, ExtensionContext,
    ExtensionFactory, FieldError, Running, Stability,
};

/// The component type name.
pub const TYPE: &str = "business_state";

/// Config of the `business_state` extension.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusinessStateConfig {
    pub max_orders: usize,
    pub max_customers: usize,
    pub ttl: Duration,
    pub max_traces: usize,
    pub trace_ttl: Duration,
    pub purge_interval: Duration,
}

impl Default for BusinessStateConfig {
    fn default() -> Self {
        BusinessStateConfig {
            max_orders: 100_000,
            max_customers: 100_000,
            ttl: Duration::from_secs(3600),
            max_traces: 100_000,
            trace_ttl: Duration::from_secs(300),
            purge_interval: Duration::from_secs(1),
        }
    }
}

impl ComponentConfig for BusinessStateConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.max_orders == 0 {
            errs.push(FieldError::new("max_orders", "must be at least 1"));
        }
        if self.max_traces == 0 {
            errs.push(FieldError::new("max_traces", "must be at least 1"));
        }
        if self.max_customers == 0 {
            errs.push(FieldError::new("max_customers", "must be at least 1"));
        }
        if self.purge_interval.is_zero() {
            errs.push(FieldError::new("purge_interval", "must be greater than 0"));
        }
        errs
    }
}

impl BusinessStateConfig {
    pub fn state_config(&self) -> StateConfig {
        StateConfig {
            max_orders: self.max_orders,
            max_customers: self.max_customers,
            ttl: (!self.ttl.is_zero()).then(|| self.ttl.get()),
            max_traces: self.max_traces,
            trace_ttl: (!self.trace_ttl.is_zero()).then(|| self.trace_ttl.get()),
        }
    }
}

/// Makes `business_state` extensions.
#[derive(Debug, Default, Clone, Copy)]
pub struct BusinessStateExtensionFactory;

/// A running `business_state` extension.
pub struct BusinessStateExtension {
    state: Arc<BusinessState>,
    purge_interval: std::time::Duration,
}

impl BusinessStateExtension {
    /// The shared state.
    pub fn state(&self) -> &Arc<BusinessState> {
        &self.state
    }
}

impl ExtensionFactory for BusinessStateExtensionFactory {
    type Config = BusinessStateConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Extension,
            stability: Stability::Alpha,
            description: "Keyed business state (orders, customers) joined onto spans by the enrich processor",
            signals: &[],
            connects: &[],
        }
    }

    fn create(&self, config: Self::Config, ctx: &CreateContext<'_>) -> Result<Arc<dyn Extension>, ComponentError> {
        Ok(Arc::new(BusinessStateExtension {
            state: Arc::new(BusinessState::new(&ctx.id.to_string(), config.state_config())),
            purge_interval: config.purge_interval.get(),
        }))
    }
}

impl Extension for BusinessStateExtension {
    fn start(self: Arc<Self>, ctx: ExtensionContext) -> Result<Running, ComponentError> {
        let state = self.state.clone();
        let every = self.purge_interval;
        Ok(Running::spawn(async move {
            if state.orders.ttl().is_none() && state.traces.ttl().is_none() {
                return Ok(());
            }
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    _ = tick.tick() => {
                        let n = state.purge_expired();
                        if n > 0 {
                            tracing::debug!(extension = %ctx.id, expired = n, "expired business state entries removed");
                        }
                    }
                }
            }
        }))
    }

    fn shared(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self.state.clone()
    }
}
