//! The `business_impact` connector (traces → metrics, traces → logs): turns spans of configured **business
//! operations** into business impact (business semantics §3): operations by outcome, revenue, revenue at risk,
//! recovered and lost revenue, distinct affected customers, operation durations, incidents, goals, and one
//! **impact record** per affected customer per incident, with its cart.
//!
//! # Semantics
//!
//! - An **operation** is a span that matches an `operations[]` matcher (every given part must hold). Its
//!   **time** is the span's end time (event time, not arrival time), its **outcome** is failure when the span
//!   status is ERROR (`failure.on_status_error`) or any `failure.when` condition holds, its **value** is exact
//!   money from `value.attribute` (+ `value.currency_attribute`), or else, with `state`, the order's value
//!   from the `business_state` extension (its stated amount, else its line items priced by their unit prices or
//!   the `prices` table), its **business key** is `business_key`.
//! - **Event time and lateness.** Operations are held until the *watermark* (newest span end time seen minus
//!   `allowed_lateness`) passes them, then counted in event-time order, so late and out-of-order spans count
//!   where they belong; a span older than the watermark is dropped and counted
//!   (`bizpilot_connector_business_impact_dropped_spans_total{reason="late"}`). When no span arrives for
//!   `idle_timeout`, everything seen is final (the watermark moves just past the newest span; it never follows
//!   the wall clock, so replayed data works). The figures therefore trail the newest data by `allowed_lateness`,
//!   or by `idle_timeout` of wall time when the input pauses. Keep both above any hold upstream (the `enrich`
//!   processor's `join.window`): a held span arrives that much later.
//! - **Duplicates**: a span with a trace id and span id already seen counts once (ids are remembered until they
//!   are `dedup_window` behind the watermark, at most `dedup_max_spans`). Pending operations' ids are an exact
//!   set of 64-bit keyed hashes; once finalized, an id only decides whether a re-sent span (older than the
//!   watermark, so dropped either way) counts as `duplicate` or `late`, and is kept as 32 bits in buckets of
//!   event time; a span re-sent with the same ids but another end time is judged by its own time.
//! - **Memory**: per operation waiting for the watermark, one packed record (80 bytes and its variable part:
//!   about 160 bytes for the shop workload's checkout and payment, about 280 with allocator rounding, the heap's
//!   growth slack and the id set), never the span; 4 bytes per finalized span id remembered. So about
//!   (operations/s × `allowed_lateness` × 280 bytes) + (min(operations/s ×
//!   `dedup_window`, `dedup_max_spans`) × 4 bytes); `docs/impact-memory.md` has the figures per span/s and per
//!   minute of lateness, and the measurements.
//! - **Revenue at risk** (`dedup_window` = W): a failure of key K opens an *episode* `[t, t + W)` worth its
//!   value, unless an episode of K is active (a customer retrying the same cart three times is one cart at
//!   risk); a success of K within the episode ends it as **recovered** (`business.revenue.recovered`); an episode
//!   that reaches its end unrecovered counts as **lost** (`business.revenue.lost`). This is exactly shopgen's
//!   ground truth (`bizpilot_shopgen::truth`). At most `max_keys` episodes per operation are active (the oldest
//!   are ended as lost beyond it, and counted).
//! - **Affected customers**: distinct business keys with a failed operation per tumbling window of width W
//!   aligned to the Unix epoch; exact up to `distinct_exact_limit` keys, then a HyperLogLog sketch (2¹⁴
//!   registers, relative standard error 0.81 %, ±2.5 % at 3σ; see [`sketch`]).
//! - **Incidents** (per operation, see [`incident`] and `docs/incident-detection.md`): with `incident.detection:
//!   baseline` (the default) a Bernoulli CUSUM of the operation's failures against its own learned normal
//!   failure rate, decided at every `incident.evaluation_interval` boundary of event time: it catches a
//!   10-second total outage and a sustained 10 % failure on a 0.5 % baseline alike, with about one false
//!   incident per operation per year of independent traffic. A customer's failure within `retry_window` of
//!   their previous one is a retry, not new evidence. A second detector per operation watches the share of
//!   *slow* successful operations (slower than `latency_factor` × the typical duration): `kind: latency`.
//!   (`detection: threshold` keeps the fixed-share rule: opened when at least `min_operations` ran in the
//!   trailing `incident.window` and the failure rate reached `open_threshold`, closed below
//!   `close_threshold`.) Start and end are dated to the evaluation intervals where failures began and ended.
//!   An incident closes when the rate is back to normal (`closed_reason: recovered`), when no span arrived for
//!   `incident.idle_timeout` of wall clock (`idle`; the last interval is evaluated first) or at shutdown
//!   (`shutdown`). Failures from the start on are attributed to the incident; its totals: failed operations,
//!   revenue at risk and recovered (of its affected customers' carts), affected customers, top causes
//!   (service + status message of the root cause: the deepest ERROR span of the same trace, else the failed
//!   span itself).
//! - **Impact records**: one per affected customer at their first failed operation, whether or not an
//!   incident is open (later failures of the same revenue-at-risk episode only raise `failed_attempts`); when
//!   an incident opens, the records of failures since its start name it (and are logged again). In an incident,
//!   one record per (incident, business key), describing the customer's first failed operation in it: customer
//!   (its HMAC-SHA256 hash with `redact_customer`, keyed by the `hash_key_env` variable, as the `redaction`
//!   processor does), tier, cart value, line items (from `state`), order id, the failed span (service, span
//!   name, status message), the root cause, trace id and time. Emitted as log records with
//!   `event.name` = `business.impact` (on the logs pipelines the connector feeds) and listed by the HTTP API.
//! - **Provisional figures**: operations newer than the watermark (not final yet) are counted at once —
//!   operations, failures, revenue, revenue at risk (a customer's first pending failure unless already at
//!   risk), distinct affected customers — in the API (`summary[].provisional`) and as gauges
//!   `business_*_provisional`; when the watermark passes them they move into the final figures, which are
//!   exactly as without them (monotonic counters). A live view is final + provisional.
//! - **Incident records**: log records with `event.name` = `business.incident` and
//!   `business.incident.state` = `open`, `update` (every evaluation) or `closed`.
//! - **Goals**: revenue of the goal's operation (in the target's currency) in the current period (aligned to the
//!   epoch), as attainment so far and projected attainment at the period's end (at the pace so far).
//! - **Cardinality**: each distinct (operation, dimension values) is a series; beyond `max_series`, measurements
//!   go to one overflow series per operation with `otel.metric.overflow=true` instead of the dimensions (as
//!   the OpenTelemetry SDK's cardinality limit), counted by `business.metric.overflowed_points`.
//! - **Restarts**: with `storage` (a `file_storage` extension), the connector journals its input — what the engine
//!   read of each traces request (its newest event time, and the ERROR and operation spans with the attributes the
//!   configuration names, in a compact binary record, about 100 bytes per such span), and the two wall-clock decisions (input idle) that changed its state — committing it
//!   in groups every `checkpoint_interval` and releasing the data's acknowledgements only then, and at start
//!   replays the journal into a fresh engine before any pipeline runs ([`durable`], `docs/durable-state.md`):
//!   after a restart, graceful or `SIGKILL`, every figure (pending operations, span-id dedup set, episodes,
//!   affected customers, incidents and their detectors' baselines, goals) continues as if it had not happened,
//!   and a span sent again after the restart is a duplicate. **Compaction**: once the journal written since the
//!   last snapshot reaches `snapshot_min_journal` and twice that snapshot's size, a snapshot of the engine's state
//!   (CBOR, versioned, config-fingerprinted: [`snapshot`]) replaces the journal it covers, atomically, and at
//!   graceful shutdown a last one is written; a start loads the snapshot and replays the journal after it. What
//!   is stored stays below about three snapshots plus `snapshot_min_journal`. Without `storage` the state is memory only. Either way the metrics' start time is the process's: a
//!   restarted process re-emits the restored cumulative sums with a new start time.
//!
//! **Reading spans.** Traces held encoded (as the OTLP receivers hand them on) are read through
//! zero-copy views over the bytes ([`bizpilot_core::Traces::for_each_span`]), never decoded: a span
//! costs one walk over its fields; attributes are read only for matched operations and ERROR spans,
//! and only what the engine keeps is allocated. Traces that arrive decoded (OTLP/JSON) are read as
//! they are. Both paths give identical results.
//!
//! # Metrics (cumulative; names as Prometheus shows them through the `prometheus` exporter)
//!
//! | OpenTelemetry | Prometheus | type | attributes |
//! |---|---|---|---|
//! | `business.operations` | `business_operations_total` | counter | `operation`, `outcome` (`success`/`failure`), dimensions |
//! | `business.operation.duration` (s) | `business_operation_duration_seconds` | histogram | as above |
//! | `business.revenue` | `business_revenue_total` | counter (double) | `operation`, `currency`, dimensions |
//! | `business.revenue.at_risk` | `business_revenue_at_risk_total` | counter | as above (dimensions of the failure that opened the episode) |
//! | `business.revenue.recovered` | `business_revenue_recovered_total` | counter | as above |
//! | `business.revenue.lost` | `business_revenue_lost_total` | counter | as above |
//! | `business.affected_customers` | `business_affected_customers` | gauge | `operation`, `window` (`current`/`previous`) |
//! | `business.incident.open` | `business_incident_open` | gauge (0/1) | `operation` |
//! | `business.incident.latency.open` | `business_incident_latency_open` | gauge (0/1) | `operation` |
//! | `business.operations.provisional` | `business_operations_provisional` | gauge | `operation`, `outcome` |
//! | `business.revenue.provisional` | `business_revenue_provisional` | gauge | `operation`, `currency` |
//! | `business.revenue.at_risk.provisional` | `business_revenue_at_risk_provisional` | gauge | `operation`, `currency` |
//! | `business.affected_customers.provisional` | `business_affected_customers_provisional` | gauge | `operation` |
//! | `business.goal.attainment` (1) | `business_goal_attainment_ratio` | gauge | `goal`, `operation` |
//! | `business.goal.projected_attainment` (1) | `business_goal_projected_attainment_ratio` | gauge | `goal`, `operation` |
//! | `business.goal.achieved` | `business_goal_achieved` | gauge | `goal`, `operation`, `currency` |
//! | `business.metric.overflowed_points` | `business_metric_overflowed_points_total` | counter | `operation` |
//!
//! The overflow series carries `operation`, `outcome`/`currency` and `otel_metric_overflow="true"`.
//!
//! # Config
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `operations[].name` | (required) | the operation's name (`checkout`) |
//! | `operations[].service` | — | `service.name` is this (or one of this list) |
//! | `operations[].span_name` | — | span name is exactly this (or one of this list) |
//! | `operations[].span_name_regex` | — | span name matches this regular expression |
//! | `operations[].attributes` | `{}` | span (else resource) attributes equal to these values |
//! | `operations[].failure.on_status_error` | `true` | status ERROR is a failure |
//! | `operations[].failure.when` | `[]` | conditions `"<attribute> <op> <value>"`, op `>=` `>` `<=` `<` `==` `!=` (numbers compared exactly); any true is a failure |
//! | `operations[].value` | `value` | per-operation override of `value` |
//! | `operations[].business_key` | `business_key` | per-operation override of `business_key` |
//! | `business_key` | `business.customer.id` | key of de-duplication, recovery and distinct counts |
//! | `customer_attribute` | `business_key` | customer named in impact records |
//! | `tier_attribute` | `business.customer.tier` | customer tier in impact records |
//! | `order_attribute` | `business.order.id` | order id (impact records; key into `state`) |
//! | `items_attribute` | `business.cart.items` | number of line items |
//! | `value.attribute` | `business.order.value` | money: `"123.45"`, `"USD 123.45"`, double, int or `{units, nanos, currency_code}` |
//! | `value.currency_attribute` | `business.currency` | currency code when the value has none |
//! | `value.default_currency` | — | currency when neither gives one |
//! | `value.from_state` | `true` | without the attribute: the order's value from `state` |
//! | `state` | — | id of a `business_state` extension: line items and fallback value by order id |
//! | `prices.extension`, `prices.column` | —, `price` | a `lookup` extension keyed by SKU pricing line items without a unit price |
//! | `dimensions` | `[{name: customer.tier, attribute: business.customer.tier, default: unknown}]` | metric attributes: `attribute` or `{name, attribute, default}` (span, else resource attribute) |
//! | `max_series` | `1000` | most (operation, dimensions) series; beyond: the overflow series |
//! | `dedup_window` | `1h` | W: revenue-at-risk episodes, affected-customer windows, duplicate span memory |
//! | `dedup_max_spans` | `1000000` | most span ids remembered for duplicate detection (4 bytes per finalized id; the oldest go first, counted) |
//! | `distinct_exact_limit` | `10000` | distinct customers counted exactly per window before the sketch |
//! | `allowed_lateness` | `30s` | how far behind the newest span a span may end and still count |
//! | `idle_timeout` | `allowed_lateness` | without new spans this long, everything seen is final |
//! | `max_pending_spans` | `1000000` | most operations waiting for the watermark, about 280 bytes each (beyond: the oldest are finalized early, counted) |
//! | `max_keys` | `1000000` | most active revenue-at-risk episodes per operation |
//! | `metrics_flush_interval` | `15s` | how often the cumulative metrics are emitted (and at shutdown) |
//! | `duration_buckets` | `[0.005 … 10]` | histogram bounds in seconds |
//! | `redact_customer` | `false` | show customers as their HMAC-SHA256 hash |
//! | `hash_key_env` | `BIZPILOT_HASH_KEY` | environment variable holding the HMAC key (required at start with `redact_customer`) |
//! | `storage` | — | id of a storage extension (`file_storage`): the input is journaled into it and replayed at start (durable state); none: memory only |
//! | `checkpoint_interval` | `200ms` | with `storage`: how often the journal is committed (group commit); acknowledgements of the data wait for it |
//! | `snapshot_min_journal` | `16MiB` | with `storage`: a snapshot of the state replaces the journal once the journal since the last one is this large and twice that snapshot |
//! | `incident.detection` | `baseline` | `baseline` (relative to the learned normal rate) or `threshold` (fixed share) |
//! | `incident.evaluation_interval` | `10s` | evaluation step (event time) |
//! | `incident.cusum_threshold` | `16` | CUSUM threshold h (higher: fewer false incidents, later detection) |
//! | `incident.detect_ratio`, `incident.detect_shift` | `4`, `0.02` | the rate tested against: max(ratio × baseline, baseline + shift) |
//! | `incident.baseline_half_life` | `1h` | how fast the learned normal rate forgets |
//! | `incident.baseline_prior`, `incident.baseline_prior_operations` | `0.01`, `200` | cold start: the rate assumed, worth that many operations |
//! | `incident.min_baseline` | `0.001` | floor of the learned rate |
//! | `incident.interval_alpha` | `0.01` | an interval is bad when its failures are this unlikely at the normal rate (dates start and end) |
//! | `incident.close_intervals` | `2` | consecutive intervals back to normal that close an incident |
//! | `incident.retry_window` | `1m` | a customer's failure this soon after their previous one is a retry (not new evidence) |
//! | `incident.idle_timeout` | `1m` | without new spans this long (wall clock), open incidents close |
//! | `incident.latency_factor` | `5` | slow = longer than this × the typical duration (0: no latency incidents) |
//! | `incident.latency_min_samples` | `200` | operations learned before durations are judged |
//! | `incident.window` | `1m` | `threshold`: trailing window of the failure rate (a multiple of the interval) |
//! | `incident.open_threshold` | `0.5` | `threshold`: failure rate that opens an incident |
//! | `incident.close_threshold` | `0.2` | `threshold`: failure rate below which it closes |
//! | `incident.min_operations` | `10` | `threshold`: operations needed in the window to open |
//! | `incident.top_causes` | `5` | causes listed per incident |
//! | `incident.max_retained` | `100` | closed incidents kept for the API |
//! | `impact.max_records` | `100000` | impact records kept for the API (oldest go first) |
//! | `impact.windows_retained` | `48` | closed affected-customer windows kept for the API |
//! | `goals[]` | `[]` | `{name, operation, target: "USD 1000000", period: 1h}` |
//! | `trace_context.enabled` | `false` | an operation takes what its span lacks (value, currency, customer, tier, order, items, dimensions) from other spans of its trace ([`trace`]) |
//! | `trace_context.wait` | `30s` | how long a trace's record is kept after its newest span, behind the watermark |
//! | `trace_context.max_traces` | `100000` | most trace records held (the oldest are evicted, counted) |
//! | `trace_context.attributes` | what the connector reads | the attributes a trace's record keeps |
//!
//! ```yaml
//! connectors:
//!   business_impact:
//!     operations:
//!       - name: checkout
//!         span_name: oteldemo.CheckoutService/PlaceOrder
//!       - name: payment
//!         service: payment
//!         span_name: oteldemo.PaymentService/Charge
//!       - name: api
//!         span_name_regex: "^(GET|POST) /api/"
//!         failure: {when: ["http.response.status_code >= 500"]}
//!     state: business_state
//!     dimensions:
//!       - {name: customer.tier, attribute: business.customer.tier, default: unknown}
//!       - {name: payment.method, attribute: demo.payment.card_type}
//!     dedup_window: 1h
//!     allowed_lateness: 1m
//!     incident: {detection: baseline, evaluation_interval: 10s, idle_timeout: 1m}
//!     goals:
//!       - {name: sales_per_hour, operation: checkout, target: "USD 1000000", period: 1h}
//! service:
//!   pipelines:
//!     traces: {receivers: [otlp], processors: [enrich], exporters: [business_impact]}
//!     metrics/impact: {receivers: [business_impact], exporters: [prometheus]}
//!     logs/impact: {receivers: [business_impact], exporters: [debug]}
//! ```
//!
//! The HTTP API (`/api/v1/incidents`, `/api/v1/impact`) is described in [`api`].
//!
//! Self-telemetry (label `connector`): `bizpilot_connector_business_impact_operations_total{kind}` (`finalized`,
//! `forced`), `bizpilot_connector_business_impact_dropped_spans_total{reason}` (`duplicate`, `late`),
//! `bizpilot_connector_business_impact_missing_total{field}` (`business_key`, `value`, `invalid_value`),
//! `bizpilot_connector_business_impact_evictions_total{what}` (`business_key`, `span_id`),
//! `bizpilot_connector_business_impact_overflowed_points_total`,
//! `bizpilot_connector_business_impact_trace_context_total{event}` (`incomplete`, `evicted`, `late`), and the gauges
//! `bizpilot_connector_business_impact_pending_spans`, `bizpilot_connector_business_impact_span_ids` (span ids
//! remembered for de-duplication), `bizpilot_connector_business_impact_trace_context_traces` (trace records held),
//! `bizpilot_connector_business_impact_records` and `bizpilot_connector_business_impact_incidents` (held for the API).

pub mod api;
pub mod book;
mod compact;
pub mod config;
pub mod durable;
pub mod engine;
pub mod incident;
pub mod output;
mod pending;
mod read;
pub mod series;
pub mod sketch;
pub mod snapshot;
pub mod trace;

pub use config::BusinessImpactConfig;
pub use engine::{Compiled, Engine};

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::otlp_out::wall_ns;
use crate::tick::Ticker;
use bizpilot_core::storage::Journal;

use bizpilot_business::{BusinessState, KeyedHasher, Lookup};
use bizpilot_core::stage::reason;
use bizpilot_core::{
    Batch, ComponentError, ComponentInfo, ComponentKind, Connector, ConnectorFactory, CreateContext, Logs, Metrics,
    Out, Payload, Signal, Stability, Stage, StageInfo,
};

/// The component type name.
pub const TYPE: &str = "business_impact";

/// Makes `business_impact` connectors.
#[derive(Debug, Default, Clone, Copy)]
pub struct BusinessImpactConnectorFactory;

impl ConnectorFactory for BusinessImpactConnectorFactory {
    type Config = BusinessImpactConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Connector,
            stability: Stability::Alpha,
            description: "Business impact of failing operations: revenue at risk, affected customers, incidents, goals",
            signals: &[Signal::Traces, Signal::Metrics, Signal::Logs],
            connects: &[(Signal::Traces, Signal::Metrics), (Signal::Traces, Signal::Logs)],
        }
    }

    fn create(
        &self,
        config: BusinessImpactConfig,
        ctx: &CreateContext<'_>,
    ) -> Result<Box<dyn Connector>, ComponentError> {
        let wrong: BTreeSet<Signal> = ctx.signals.iter().copied().filter(|s| *s != Signal::Traces).collect();
        if !wrong.is_empty() {
            return Err(ComponentError::Config(format!(
                "{TYPE} reads traces only; it is an exporter of a {} pipeline",
                wrong.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        if ctx.output_signals.contains(&Signal::Traces) {
            return Err(ComponentError::Config(format!(
                "{TYPE} emits metrics and logs; a traces pipeline cannot receive from it"
            )));
        }
        let state = match &config.state {
            Some(id) => Some(
                ctx.extensions
                    .get::<BusinessState>(id)
                    .map_err(|e| ComponentError::Config(format!("state: {e}")))?,
            ),
            None => None,
        };
        let prices = match &config.prices {
            Some(p) => Some(
                ctx.extensions
                    .get::<Lookup>(&p.extension)
                    .map_err(|e| ComponentError::Config(format!("prices.extension: {e}")))?,
            ),
            None => None,
        };
        let hasher = if config.redact_customer {
            Some(
                KeyedHasher::from_env(&config.hash_key_env)
                    .map_err(|e| ComponentError::Config(format!("redact_customer: {e}")))?,
            )
        } else {
            None
        };
        let compiled = Compiled::new(&config, state, prices, hasher)?;
        let id = ctx.id.to_string();
        let mut engine = Engine::new(compiled, &id);
        let journal = match &config.storage {
            Some(storage) => Some(durable::open(&mut engine, ctx, storage, &id, &config)?),
            None => None,
        };
        ctx.extensions.api().register(Arc::new(api::ImpactApi::new(
            id.clone(),
            engine.book(),
            config.incident.top_causes,
        )));
        Ok(Box::new(BusinessImpactConnector {
            engine,
            journal,
            snapshots: durable::Snapshots::new(config.fingerprint(), config.snapshot_min_journal.bytes()),
            incident_idle: config.incident.idle_timeout.get(),
            flush_interval: config.metrics_flush_interval.get(),
            idle_timeout: config.idle_timeout.unwrap_or(config.allowed_lateness).get(),
        }))
    }
}

/// A `business_impact` connector.
pub struct BusinessImpactConnector {
    engine: Engine,
    journal: Option<Journal>,
    snapshots: durable::Snapshots,
    incident_idle: Duration,
    flush_interval: Duration,
    idle_timeout: Duration,
}

impl Connector for BusinessImpactConnector {
    fn into_stage(self: Box<Self>) -> Box<dyn Stage> {
        let mut step = self
            .flush_interval
            .min(self.idle_timeout / 2)
            .min(self.incident_idle / 2)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        if let Some(j) = &self.journal {
            step = step.min(j.interval().max(Duration::from_millis(10)));
        }
        Box::new(Task {
            id: String::new(),
            engine: self.engine,
            journal: self.journal,
            snapshots: self.snapshots,
            metrics: false,
            logs: false,
            flush_interval: self.flush_interval,
            idle_timeout: self.idle_timeout,
            incident_idle: self.incident_idle,
            step,
            start_ns: 0,
            pending_gauge: None,
            ticker: None,
        })
    }
}

/// The connector's stage: ingests traces, and on its tick closes idle state, emits logs and,
/// every `metrics_flush_interval`, metrics.
struct Task {
    id: String,
    engine: Engine,
    /// With `storage`: the journal of what changed the engine, and the acknowledgements waiting for its commit.
    journal: Option<Journal>,
    /// Snapshots of the engine, encoded off the stage's thread.
    snapshots: durable::Snapshots,
    /// Whether a metrics (logs) pipeline receives from the connector.
    metrics: bool,
    logs: bool,
    flush_interval: Duration,
    idle_timeout: Duration,
    incident_idle: Duration,
    step: Duration,
    start_ns: u64,
    /// Gauges of what the engine holds: pending operations, remembered span ids, trace records, impact records,
    /// incidents.
    pending_gauge: Option<[metrics::Gauge; 5]>,
    /// Set at start.
    ticker: Option<Ticker>,
}

impl Task {
    fn send_logs(&mut self, out: &mut Out) {
        let records = self.engine.take_logs();
        if records.is_empty() || !self.logs {
            return;
        }
        out.send(Batch::new(Payload::Logs(Logs::from_message(output::logs_request(
            records,
        )))));
    }

    fn send_metrics(&mut self, out: &mut Out) {
        if let Some([pending, ids, traces, records, incidents]) = &self.pending_gauge {
            pending.set(self.engine.pending() as f64);
            ids.set(self.engine.remembered_span_ids() as f64);
            traces.set(self.engine.trace_records() as f64);
            let (r, i) = self.engine.book().lock().map(|b| b.held()).unwrap_or_default();
            records.set(r as f64);
            incidents.set(i as f64);
        }
        if !self.metrics {
            return;
        }
        let req = self.engine.metrics(self.start_ns, wall_ns());
        if req
            .resource_metrics
            .iter()
            .all(|r| r.scope_metrics.iter().all(|s| s.metrics.is_empty()))
        {
            return;
        }
        out.send(Batch::new(Payload::Metrics(Metrics::from_message(req))));
    }
}

impl Stage for Task {
    fn start(&mut self, info: &StageInfo) {
        self.id = info.id.clone();
        self.metrics = info.outputs.contains(&Signal::Metrics);
        self.logs = info.outputs.contains(&Signal::Logs);
        self.start_ns = wall_ns();
        let g = |name: &'static str| metrics::gauge!(name, "connector" => info.id.clone());
        self.pending_gauge = Some([
            g("bizpilot_connector_business_impact_pending_spans"),
            g("bizpilot_connector_business_impact_span_ids"),
            g("bizpilot_connector_business_impact_trace_context_traces"),
            g("bizpilot_connector_business_impact_records"),
            g("bizpilot_connector_business_impact_incidents"),
        ]);
        self.ticker = Some(Ticker::new(self.step, self.flush_interval));
    }

    fn on_batch(&mut self, mut batch: Batch, out: &mut Out) {
        if let Some(t) = self.ticker.as_mut() {
            t.arrived();
        }
        self.engine.set_now(wall_ns());
        // Views over the encoding (never decoded), or the decoded structs when the data arrived
        // decoded. Receivers validated the bytes: views cannot fail.
        if let Payload::Traces(t) = &mut batch.payload {
            self.engine.ingest_traces(t);
            let journaled = match (self.journal.as_mut(), self.engine.captured()) {
                (Some(j), Some(record)) => j.append(durable::TAG_SPANS, record),
                _ => Ok(()),
            };
            match (self.journal.as_mut(), journaled) {
                (Some(j), Ok(())) => {
                    // Acknowledged once the journal holding it is committed.
                    j.hold(std::mem::take(&mut batch.acks));
                    j.commit_if_due();
                    self.snapshots.if_due(&self.engine, j);
                    out.consume(batch);
                }
                (Some(_), Err(e)) => {
                    // Counted by the journal. The engine counted the data, but a restart would not: the sender
                    // is told it was not delivered.
                    tracing::error!(connector = %self.id, error = %e, "traces not journaled");
                    out.fail(batch, reason::ERROR);
                }
                // Aggregated: the batch is delivered when dropped.
                (None, _) => out.consume(batch),
            }
        } else {
            tracing::warn!(connector = %self.id, signal = %batch.signal(), "not traces; dropped");
            out.fail(batch, reason::UNSUPPORTED_SIGNAL);
        }
        self.send_logs(out);
    }

    fn deadline(&mut self) -> Option<Instant> {
        self.ticker.as_ref().map(Ticker::deadline)
    }

    fn on_timer(&mut self, out: &mut Out) {
        let Some(tick) = self.ticker.as_mut().map(Ticker::tick) else {
            return;
        };
        self.engine.set_now(wall_ns());
        // Wall-clock decisions are journaled when they changed the state, so a replay takes them again.
        let before = (self.engine.watermark(), self.engine.any_open());
        self.engine.idle(tick.idle, self.idle_timeout);
        let mid = (self.engine.watermark(), self.engine.any_open());
        self.engine.idle_close(tick.idle, self.incident_idle);
        let after = (self.engine.watermark(), self.engine.any_open());
        if let Some(j) = self.journal.as_mut() {
            // Empty records always fit.
            if mid != before {
                let _ = j.append(durable::TAG_IDLE, &[]);
            }
            if after != mid {
                let _ = j.append(durable::TAG_IDLE_CLOSE, &[]);
            }
            j.commit_if_due();
            self.snapshots.if_due(&self.engine, j);
        }
        self.send_logs(out);
        if tick.flush {
            self.send_metrics(out);
        }
    }

    fn on_drain(&mut self, out: &mut Out) {
        // Everything received is journaled before the final flush, which is not: a restart continues from the
        // state before it (pending operations still pending, incidents still open), as if it had not stopped.
        if let Some(j) = self.journal.as_mut() {
            // A restart then starts from the snapshot alone.
            self.snapshots.wait();
            if j.since_snapshot() > 0 {
                self.snapshots.now(&self.engine, j);
            }
            j.close(Duration::from_secs(5));
        }
        self.engine.set_now(wall_ns());
        self.engine.flush();
        self.engine.close_all(book::CloseReason::Shutdown);
        self.send_logs(out);
        self.send_metrics(out);
    }
}

#[cfg(test)]
mod tests;
