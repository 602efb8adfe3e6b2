//! Business events exporter, type `business_events` (logs): writes the business
//! events carried by log records into a `business_state` extension. This is the
//! writer side of the cross-pipeline join: a logs pipeline feeds it, and the
//! `enrich` processor of a traces pipeline reads the same state.
//!
//! A log record is a business event when its `event_name` (or its `event.name`
//! attribute) names one; its fields are read as described in
//! [`bizpilot_business::event`] (attribute names configurable under `mapping`).
//! Each event updates its order (by order id) and its customer (by customer id). An event with a
//! trace context (`trace_id`, e.g. from a Kafka `traceparent` header) that names no customer or
//! tier takes them from the spans of its trace (the state's trace links, written by an `enrich`
//! processor with `join.link_traces: true`), in either arrival order: this is how the
//! OpenTelemetry Demo's `OrderResult` gets its customer (`docs/order-result-join.md`).
//! Records that are not events are ignored, and events that cannot be read
//! (an amount that is not money, say) are skipped; both are counted, neither
//! fails the batch (redelivering it would not help).
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `state` | `business_state` | id of the `business_state` extension written to |
//! | `mapping` | see [`bizpilot_business::event`] | where event fields are found: `event_name_attribute`, `names`, `order_id`, `customer_id`, `customer_tier`, `amount`, `currency`, `default_currency`, `items`, `item_sku`, `item_quantity`, `item_unit_price`, `item_count`, `time` |
//!
//! ```yaml
//! extensions:
//!   business_state: {max_orders: 100000, ttl: 1h}
//! exporters:
//!   business_events:
//!     state: business_state
//!     mapping:
//!       names: ["order.*", "payment.*"]
//!       default_currency: USD
//! service:
//!   extensions: [business_state]
//!   pipelines:
//!     logs/events:
//!       receivers: [otlp]
//!       exporters: [business_events]
//! ```
//!
//! Acknowledgements: when the state is checkpointed (`business_state` with `storage`), a batch is
//! acknowledged — a Kafka receiver commits its offsets — only once the checkpoint holding its
//! events is committed, so a `SIGKILL` never loses an event whose offset was committed
//! (`docs/durable-state.md`). Without storage it is acknowledged at once.
//!
//! Self-telemetry: `bizpilot_exporter_sent_log_records_total{exporter}` (every record handled),
//! `bizpilot_exporter_business_events_total{exporter, outcome}` with `outcome` = `applied`,
//! `ignored` (not an event) or `invalid` (an event that could not be read).

use metrics::{Counter, counter};
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bizpilot_business::{BusinessState, EventMapping};
use bizpilot_core::pdata::proto::collector::logs::v1::ExportLogsServiceRequest;
use bizpilot_core::telemetry::ExporterTelemetry;
use bizpilot_core::{
    ComponentConfig, ComponentError, ComponentId, ComponentInfo, ComponentKind, CreateContext, Exporter,
    ExporterContext, ExporterFactory, FieldError, Payload, Running, Signal, Stability,
};

/// The component type name.
pub const TYPE: &str = "business_events";

/// Config of the `business_events` exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusinessEventsExporterConfig {
    pub state: ComponentId,
    pub mapping: EventMapping,
}

impl Default for BusinessEventsExporterConfig {
    fn default() -> Self {
        BusinessEventsExporterConfig {
            state: ComponentId::new("business_state", None),
            mapping: EventMapping::default(),
        }
    }
}

impl ComponentConfig for BusinessEventsExporterConfig {
    fn validate(&self) -> Vec<FieldError> {
        self.mapping
            .validate()
            .into_iter()
            .map(|(f, m)| FieldError::new(format!("mapping.{f}"), m))
            .collect()
    }
}

/// What happened to the records of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    pub applied: u64,
    pub ignored: u64,
    pub invalid: u64,
}

/// Reads the business events of `req` and folds them into `state`.
pub fn apply_logs(state: &BusinessState, mapping: &EventMapping, req: &ExportLogsServiceRequest) -> EventCounts {
    let mut c = EventCounts::default();
    let mut first_error = None;
    for rec in req
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
    {
        match mapping.parse(rec) {
            Ok(Some(mut ev)) => {
                match bizpilot_business::trace_key(&rec.trace_id) {
                    Some(trace) => state.apply_traced(&mut ev, &trace),
                    None => state.apply(&ev),
                };
                c.applied += 1;
            }
            Ok(None) => c.ignored += 1,
            Err(e) => {
                c.invalid += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        tracing::warn!(invalid = c.invalid, first = %e, "business events that could not be read were skipped");
    }
    c
}

/// Creates `business_events` exporters.
#[derive(Debug, Clone, Copy, Default)]
pub struct BusinessEventsExporterFactory;

impl ExporterFactory for BusinessEventsExporterFactory {
    type Config = BusinessEventsExporterConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Exporter,
            stability: Stability::Alpha,
            description: "Writes business events from log records into a business_state extension (the join's writer side)",
            signals: &[Signal::Logs],
            connects: &[],
        }
    }

    fn create(&self, config: Self::Config, ctx: &CreateContext<'_>) -> Result<Box<dyn Exporter>, ComponentError> {
        let state = ctx
            .extensions
            .get::<BusinessState>(&config.state)
            .map_err(|e| ComponentError::Config(format!("state: {e}")))?;
        Ok(Box::new(BusinessEventsExporter::new(state, config.mapping)))
    }
}

/// Totals of a `business_events` exporter.
#[derive(Debug, Default)]
pub struct BusinessEventsStats {
    applied: AtomicU64,
    ignored: AtomicU64,
    invalid: AtomicU64,
}

impl BusinessEventsStats {
    pub fn get(&self) -> EventCounts {
        EventCounts {
            applied: self.applied.load(Ordering::Relaxed),
            ignored: self.ignored.load(Ordering::Relaxed),
            invalid: self.invalid.load(Ordering::Relaxed),
        }
    }
}

/// A created `business_events` exporter.
pub struct BusinessEventsExporter {
    state: Arc<BusinessState>,
    mapping: EventMapping,
    stats: Arc<BusinessEventsStats>,
}

impl BusinessEventsExporter {
    pub fn new(state: Arc<BusinessState>, mapping: EventMapping) -> Self {
        BusinessEventsExporter {
            state,
            mapping,
            stats: Arc::default(),
        }
    }

    /// Totals, readable after the exporter started.
    pub fn stats(&self) -> Arc<BusinessEventsStats> {
        self.stats.clone()
    }
}

impl Exporter for BusinessEventsExporter {
    fn start(self: Box<Self>, ctx: ExporterContext) -> Result<Running, ComponentError> {
        let ExporterContext { id, mut input, .. } = ctx;
        let name = id.to_string();
        let telemetry = ExporterTelemetry::new(&name);
        let outcome = |o: &'static str| -> Counter {
            counter!("bizpilot_exporter_business_events_total", "exporter" => name.clone(), "outcome" => o)
        };
        let (applied, ignored, invalid) = (outcome("applied"), outcome("ignored"), outcome("invalid"));
        let BusinessEventsExporter { state, mapping, stats } = *self;
        // With checkpoints, a batch is acknowledged (a Kafka offset committed) only once the
        // checkpoint holding its changes is committed: see `release_when_durable`.
        let (held_tx, held) = tokio::sync::mpsc::channel(HELD_BATCHES);
        let closing = tokio_util::sync::CancellationToken::new();
        let releaser = tokio::spawn(release_when_durable(
            state.clone(),
            held,
            closing.clone(),
            id.to_string(),
        ));
        Ok(Running::spawn(async move {
            while let Some(mut batch) = input.recv().await {
                let Payload::Logs(logs) = &mut batch.payload else {
                    // Validation only lets this exporter into logs pipelines.
                    continue;
                };
                let items = logs.items();
                match logs.message() {
                    Ok(req) => {
                        let c = apply_logs(&state, &mapping, req);
                        applied.increment(c.applied);
                        ignored.increment(c.ignored);
                        invalid.increment(c.invalid);
                        stats.applied.fetch_add(c.applied, Ordering::Relaxed);
                        stats.ignored.fetch_add(c.ignored, Ordering::Relaxed);
                        stats.invalid.fetch_add(c.invalid, Ordering::Relaxed);
                        telemetry.sent(Signal::Logs, items);
                    }
                    Err(e) => {
                        tracing::error!(exporter = %id, error = %e, "cannot decode log records");
                        telemetry.failed(Signal::Logs, items);
                        batch.fail();
                    }
                }
                if state.is_checkpointed() && !batch.acks.is_empty() {
                    // Read the epoch after the writes; the payload is not kept, only the acknowledgements.
                    let epoch = state.change_epoch();
                    // A full channel means checkpoints lag: wait (backpressure), do not acknowledge early.
                    if held_tx.send((epoch, std::mem::take(&mut batch.acks))).await.is_err() {
                        tracing::error!(exporter = %id, "acknowledgement task ended");
                    }
                }
            }
            closing.cancel();
            drop(held_tx);
            if let Err(e) = releaser.await {
                tracing::error!(exporter = %id, error = %e, "acknowledgement task failed");
            }
            Ok(())
        }))
    }
}

/// How many batches may wait for a checkpoint before the exporter stops taking more.
const HELD_BATCHES: usize = 4096;

/// At shutdown, how long held batches may wait for the extension's next checkpoint before they are
/// failed (their source delivers them again: applying an event twice is idempotent).
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Acknowledges each held batch once the checkpoint holding its changes is committed, in order.
/// After `closing` (the exporter's input ended), what is still held waits at most
/// [`SHUTDOWN_WAIT`] in all — the `business_state` extension keeps checkpointing until the
/// pipelines have drained — and is then failed rather than acknowledged.
async fn release_when_durable(
    state: Arc<BusinessState>,
    mut held: tokio::sync::mpsc::Receiver<(u64, Vec<bizpilot_core::Ack>)>,
    closing: tokio_util::sync::CancellationToken,
    exporter: String,
) {
    let deadline = async {
        closing.cancelled().await;
        tokio::time::sleep(SHUTDOWN_WAIT).await;
    };
    tokio::pin!(deadline);
    let mut expired = false;
    while let Some((epoch, acks)) = held.recv().await {
        if !expired {
            tokio::select! {
                _ = state.wait_durable(epoch) => {}
                _ = &mut deadline => expired = true,
            }
        }
        if expired && state.durable_epoch() < epoch {
            tracing::warn!(
                exporter,
                epoch,
                "business events not checkpointed before shutdown; their source will deliver them again"
            );
            for a in &acks {
                a.fail();
            }
        }
        drop(acks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_business::StateConfig;
    use bizpilot_core::pdata::proto::common::v1::{AnyValue, KeyValue, any_value::Value};
    use bizpilot_core::pdata::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use bizpilot_core::{Ack, Batch, Delivery, Extensions, Logs, Registry};
    use std::collections::BTreeSet;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn logs(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn start(state: &Arc<BusinessState>) -> (mpsc::Sender<Batch>, Running) {
        let mut exts = Extensions::default();
        exts.insert("business_state".parse().unwrap(), state.clone());
        let mut r = Registry::new();
        r.exporter(BusinessEventsExporterFactory);
        let id: ComponentId = "business_events".parse().unwrap();
        let ctx = CreateContext {
            id: &id,
            pipeline: None,
            signals: BTreeSet::from([Signal::Logs]),
            output_signals: BTreeSet::new(),
            extensions: &exts,
        };
        let raw: serde_yaml::Value = serde_yaml::from_str("{state: business_state}").unwrap();
        let Ok(bizpilot_core::Built::Exporter(exp)) = r.get(ComponentKind::Exporter, TYPE).unwrap().build(&raw, &ctx)
        else {
            panic!("not built")
        };
        let (tx, rx) = mpsc::channel(4);
        let running = exp
            .start(ExporterContext {
                id: id.clone(),
                input: rx,
                abort: CancellationToken::new(),
            })
            .unwrap();
        (tx, running)
    }

    #[tokio::test]
    async fn writes_events_into_the_state() {
        let state = Arc::new(BusinessState::new("business_state", StateConfig::default()));
        let (tx, mut running) = start(&state);
        let records = vec![
            LogRecord {
                event_name: "order.placed".into(),
                time_unix_nano: 5,
                attributes: vec![
                    kv("order.id", "o-1"),
                    kv("customer.id", "c-1"),
                    kv("order.amount", "12.30"),
                    kv("order.currency", "EUR"),
                ],
                ..Default::default()
            },
            LogRecord {
                attributes: vec![kv("message", "just a log line")],
                ..Default::default()
            },
            LogRecord {
                event_name: "order.paid".into(),
                attributes: vec![kv("order.id", "o-2"), kv("order.amount", "lots")],
                ..Default::default()
            },
        ];
        let (ack, ack_rx) = Ack::channel();
        tx.send(Batch::with_ack(Payload::Logs(Logs::from_message(logs(records))), ack))
            .await
            .unwrap();
        drop(tx);
        running.join().await.unwrap();
        assert_eq!(ack_rx.await.unwrap(), Delivery::Delivered);
        let o = state.order("o-1").unwrap();
        assert_eq!(o.customer_id(), Some("c-1"));
        assert_eq!(o.value().unwrap().to_string(), "EUR 12.30");
        assert!(state.order("o-2").is_none(), "an unreadable event is skipped");
        assert!(state.customer("c-1").is_some());
    }

    /// A storage client whose commits fail while `broken` is set.
    #[derive(Default)]
    struct Flaky {
        inner: bizpilot_core::storage::MemoryClient,
        broken: std::sync::atomic::AtomicBool,
    }

    impl bizpilot_core::storage::StorageClient for Flaky {
        fn load_all(&self) -> Result<bizpilot_core::storage::Entries, bizpilot_core::storage::StorageError> {
            self.inner.load_all()
        }
        fn apply(&self, ops: &[bizpilot_core::storage::StorageOp]) -> Result<(), bizpilot_core::storage::StorageError> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(bizpilot_core::storage::StorageError::Io {
                    path: "test".into(),
                    reason: "disk full".into(),
                });
            }
            self.inner.apply(ops)
        }
    }

    fn placed(order: &str) -> ExportLogsServiceRequest {
        logs(vec![LogRecord {
            event_name: "order.placed".into(),
            attributes: vec![
                kv("order.id", order),
                kv("customer.id", "c-1"),
                kv("order.amount", "5.00"),
            ],
            ..Default::default()
        }])
    }

    async fn pending(rx: &mut tokio::sync::oneshot::Receiver<Delivery>) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(150), rx)
            .await
            .is_err()
    }

    /// With a checkpointed state, a batch (a Kafka offset) is acknowledged only once a committed
    /// checkpoint holds its events: a failed checkpoint acknowledges nothing, the next good one does.
    #[tokio::test]
    async fn with_checkpoints_a_batch_is_acknowledged_once_its_events_are_committed() {
        let state = Arc::new(BusinessState::new("business_state", StateConfig::default()));
        state.track_changes();
        let client = Flaky::default();
        let (tx, mut running) = start(&state);

        let (ack, mut first) = Ack::channel();
        tx.send(Batch::with_ack(Payload::Logs(Logs::from_message(placed("o-1"))), ack))
            .await
            .unwrap();
        assert!(pending(&mut first).await, "acknowledged before any checkpoint");
        assert!(state.order("o-1").is_some(), "applied at once, acknowledged later");

        client.broken.store(true, Ordering::SeqCst);
        assert!(state.checkpoint(&client).is_err());
        assert!(pending(&mut first).await, "acknowledged although the checkpoint failed");

        client.broken.store(false, Ordering::SeqCst);
        assert_eq!(state.checkpoint(&client).unwrap(), 2, "the order and its customer");
        assert_eq!(first.await.unwrap(), Delivery::Delivered);

        // A batch applied after a checkpoint waits for the next one, also at shutdown.
        let (ack, mut second) = Ack::channel();
        tx.send(Batch::with_ack(Payload::Logs(Logs::from_message(placed("o-2"))), ack))
            .await
            .unwrap();
        assert!(pending(&mut second).await);
        drop(tx);
        assert!(
            pending(&mut second).await,
            "shutdown waits for the extension's next checkpoint"
        );
        state.checkpoint(&client).unwrap();
        assert_eq!(second.await.unwrap(), Delivery::Delivered);
        running.join().await.unwrap();
        let restored = BusinessState::new("business_state", StateConfig::default());
        restored.restore_from(&client, "business_state").unwrap();
        assert!(restored.order("o-1").is_some() && restored.order("o-2").is_some());
    }

    #[test]
    fn counts_and_config() {
        let state = BusinessState::new("s", StateConfig::default());
        let req = logs(vec![
            LogRecord {
                attributes: vec![kv("event.name", "cart.updated"), kv("customer.id", "c")],
                ..Default::default()
            },
            LogRecord::default(),
        ]);
        let c = apply_logs(&state, &EventMapping::default(), &req);
        assert_eq!(
            c,
            EventCounts {
                applied: 1,
                ignored: 1,
                invalid: 0
            }
        );
        let raw: serde_yaml::Value = serde_yaml::from_str("{mapping: {order_id: ''}}").unwrap();
        let errs = bizpilot_core::parse_config::<BusinessEventsExporterConfig>(&raw).unwrap_err();
        assert_eq!(errs[0].path, "mapping.order_id");
        let raw: serde_yaml::Value = serde_yaml::from_str("{mapping: {order: x}}").unwrap();
        assert!(bizpilot_core::parse_config::<BusinessEventsExporterConfig>(&raw).is_err());
    }
}
