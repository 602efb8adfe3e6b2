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
//! | `storage` | — | id of a storage extension (`file_storage`): the state is restored from it at start and checkpointed into it; none: memory only |
//! | `checkpoint_interval` | `1s` | how often the keys changed since the last checkpoint are written (and once more at shutdown); a `SIGKILL` loses at most this much of the file's writes, never an event whose Kafka offset was committed (the `business_events` exporter acknowledges after the checkpoint) |
//!
//! ```yaml
//! extensions:
//!   file_storage:
//!     directory: ${env:BIZPILOT_STORAGE_DIR:-bizpilot-data}
//!   business_state:
//!     max_orders: 200000
//!     max_customers: 50000
//!     ttl: 30m
//!     storage: file_storage
//! service:
//!   extensions: [file_storage, business_state]
//! ```
//!
//! With `storage`, the state is restored before any pipeline starts (readiness waits for it) and
//! checkpointed incrementally (`bizpilot::business::checkpoint` describes the format); see
//! `docs/durable-state.md`. A checkpoint of another format, or storage that cannot be opened,
//! stops the start with an error naming the file.
//!
//! Self-telemetry (labels `extension`, `store` = `orders` | `customers` | `traces`):
//! `bizpilot_business_state_{hits,misses,updates,evictions,expirations}_total` and the gauge
//! `bizpilot_business_state_entries`; `bizpilot_business_state_trace_joins_total{extension,first}`
//! counts orders given a customer by their trace (`first` = `span` or `event`, whichever came first).
//! With `storage`: `bizpilot_business_state_checkpoints_total{extension}`,
//! `bizpilot_business_state_checkpoint_errors_total{extension}`,
//! `bizpilot_business_state_checkpointed_keys_total{extension}` and the gauges
//! `bizpilot_business_state_restored_entries{extension}`, `bizpilot_business_state_restore_seconds{extension}`.

use serde::Deserialize;
use std::any::Any;
use std::sync::Arc;

use bizpilot_business::{BusinessState, StateConfig};
use bizpilot_core::config::Duration;
use bizpilot_core::storage::StorageClient;
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
    pub storage: Option<String>,
    pub checkpoint_interval: Duration,
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
            storage: None,
            checkpoint_interval: Duration::from_secs(1),
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
        errs.extend(bizpilot_core::storage::validate_config(
            self.storage.as_deref(),
            self.checkpoint_interval,
        ));
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
    checkpoints: Checkpoints,
}

/// Where and how often the state is checkpointed: into `storage` (if configured) and into a changelog
/// topic attached to the state (`bizpilot_business::changelog`, `docs/partition-state.md`), if any.
struct Checkpoints {
    client: Option<Arc<dyn StorageClient>>,
    every: std::time::Duration,
    done: metrics::Counter,
    errors: metrics::Counter,
    keys: metrics::Counter,
}

impl Checkpoints {
    /// One checkpoint, off the async workers (a commit waits for the disk).
    async fn run(&self, state: &Arc<BusinessState>, id: &str) {
        let (state, client) = (state.clone(), self.client.clone());
        let checkpoint = move || {
            let sink = state.changelog().cloned();
            state.checkpoint_with(client.as_deref(), sink.as_deref())
        };
        match tokio::task::spawn_blocking(checkpoint).await {
            Ok(Ok(n)) => {
                if n > 0 {
                    self.done.increment(1);
                    self.keys.increment(n as u64);
                }
            }
            Ok(Err(e)) => {
                self.errors.increment(1);
                tracing::warn!(extension = id, error = %e, "business state checkpoint failed; the changes are kept for the next one");
            }
            Err(e) => {
                self.errors.increment(1);
                tracing::warn!(extension = id, error = %e, "business state checkpoint task failed");
            }
        }
    }
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
        let id = ctx.id.to_string();
        let state = Arc::new(BusinessState::new(&id, config.state_config()));
        let mut client = None;
        if let Some(storage) = &config.storage {
            let sid = storage;
            let storage_client = bizpilot_core::storage::client_for(ctx.extensions, storage, &id)?;
            let started = std::time::Instant::now();
            let restored = state
                .restore_from(&*storage_client, &id)
                .map_err(|e| ComponentError::Other(e.to_string()))?;
            let took = started.elapsed();
            metrics::gauge!("bizpilot_business_state_restored_entries", "extension" => id.clone())
                .set((restored.orders + restored.customers + restored.traces) as f64);
            metrics::gauge!("bizpilot_business_state_restore_seconds", "extension" => id.clone())
                .set(took.as_secs_f64());
            tracing::info!(extension = %id, storage = %sid, orders = restored.orders, customers = restored.customers,
                traces = restored.traces, expired = restored.expired, unreadable = restored.unreadable,
                seconds = took.as_secs_f64(), "business state restored");
            state.track_changes();
            client = Some(storage_client);
        }
        let checkpoints = Checkpoints {
            client,
            every: config.checkpoint_interval.get(),
            done: metrics::counter!("bizpilot_business_state_checkpoints_total", "extension" => id.clone()),
            errors: metrics::counter!("bizpilot_business_state_checkpoint_errors_total", "extension" => id.clone()),
            keys: metrics::counter!("bizpilot_business_state_checkpointed_keys_total", "extension" => id.clone()),
        };
        Ok(Arc::new(BusinessStateExtension {
            state,
            purge_interval: config.purge_interval.get(),
            checkpoints,
        }))
    }
}

impl Extension for BusinessStateExtension {
    fn start(self: Arc<Self>, ctx: ExtensionContext) -> Result<Running, ComponentError> {
        let state = self.state.clone();
        let every = self.purge_interval;
        let this = self.clone();
        Ok(Running::spawn(async move {
            let purge = state.orders.ttl().is_some() || state.traces.ttl().is_some();
            // A changelog may be attached after the start (by the component that owns the Kafka client).
            let checkpointing = || this.checkpoints.client.is_some() || state.changelog().is_some();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let checkpoint_every = this.checkpoints.every;
            let mut checkpoint_tick = tokio::time::interval(checkpoint_every);
            checkpoint_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let id = ctx.id.to_string();
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => {
                        // Extensions stop after the pipelines drained: this checkpoint has everything.
                        if checkpointing() {
                            this.checkpoints.run(&state, &id).await;
                        }
                        return Ok(());
                    }
                    _ = tick.tick(), if purge => {
                        let n = state.purge_expired();
                        if n > 0 {
                            tracing::debug!(extension = %ctx.id, expired = n, "expired business state entries removed");
                        }
                    }
                    _ = checkpoint_tick.tick() => {
                        if checkpointing() {
                            this.checkpoints.run(&state, &id).await;
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
