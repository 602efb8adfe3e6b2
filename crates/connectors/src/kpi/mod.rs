//! The `order_kpi` connector (logs → metrics, logs → logs, traces → metrics, traces → logs): follows every order
//! through its lifecycle from business events, computes the fulfilment KPI ("delivered within 24 h of being
//! placed", business semantics §4), predicts for every open order the probability of missing its deadline from
//! learned stage durations and the health of the IT services on its path, explains the orders at risk, and
//! scores its own predictions.
//!
//! # Semantics
//!
//! - **Inputs.** Business events are OTLP log records naming an event (`event_name`, else the `event.name`
//!   attribute; field names as in `bizpilot_business::event`, under `events`): each configured event name marks
//!   a **stage** (`order.paid` → `paid`) or a cancellation, for the order in `events.order_id`; the stage is
//!   reached at the event's time. Spans matter when they carry an order key (`order_key_attributes`, first
//!   present wins: `business.order.id`, `demo.order.id`, `app.order.id`) or belong to a service serving a stage
//!   (`stage_services`); a span's time is its end time.
//! - **Event time, watermark, lateness.** The connector has no clock but the data's: each input — business
//!   events (logs) and spans (traces) — has a *watermark*, its newest event time seen minus `allowed_lateness`,
//!   and the connector's watermark is the oldest of them, over the inputs that are *active*: an input that has
//!   sent nothing for `idle_timeout` (wall time) stops holding it back until it sends again, and one that has
//!   sent nothing since the state began holds nothing (when none is active: the newest event time seen minus
//!   `allowed_lateness`). So an input that trails the other (events read again after a restart while the spans
//!   are fresh) is waited for, not counted late. Data waits until the watermark passes it. Every multiple
//!   of `evaluation_interval` (aligned to the Unix epoch) the watermark passes is an *evaluation*: the waiting
//!   items up to it are applied in event-time order (ties: stage order, then cancellations, then spans), then
//!   deadlines are checked and open orders predicted as of that time. So the results are a function of the data
//!   alone — not of arrival order, batching or wall time — for all data at most `allowed_lateness` behind the
//!   newest of its own input, while no input goes idle: a replay gives what the live run gave. Later data is
//!   applied at once, out of order, and counted (`late`, per input), as is what an input sends when it resumes
//!   after being idle with data behind the watermark the other input moved on.
//!   At the end of input (shutdown, end of a replay) everything seen is final.
//! - **Lifecycle.** An order's stage is the latest stage it reached (stages may be skipped). A repeated event
//!   is a duplicate (the earliest time is kept); an earlier stage arriving after a later one is recorded without
//!   moving the order back. A KPI (`from` → `to` within `deadline`) is **resolved** when the order reaches `to`
//!   (or a later stage): *in time* when at most `deadline` after reaching `from` (exactly at the deadline is in
//!   time), *breached* otherwise; or *breached* at the first evaluation after its deadline passed without it.
//!   Cancelled orders, orders dropped after `max_order_age` and orders whose `from` stage was never seen are
//!   excluded from compliance (`kpi.orders.excluded`). **Compliance** = in time / (in time + breached). A
//!   breach is final when declared: a cancellation after the deadline does not undo it.
//! - **State** is one record per open order (reaching the last stage, a cancellation or `max_order_age`
//!   removes it; a breached order stays until delivered, so long durations are learned too). A closed order's
//!   id is remembered for `closed_memory` (at most `max_closed`) so that straggling events do not reopen it;
//!   spans of orders not seen yet wait `closed_memory` (at most `max_pending_evidence`). Everything learned from
//!   resolved orders goes into fixed-size sketches.
//!
//! # The model
//!
//! At an evaluation at time `t`, an open order in stage `s` with KPI deadline `D` has the **clock age** `a`
//! (its time in the stage measured in normal work: real time × the stage's current speed `r`, see [`flow`];
//! `a = t − e` while the stage works normally) and time left `L = D − t`. Its probability of missing the
//! deadline is
//!
//! ```text
//! P(miss) = P(g(T[s,c] − a) + R[s+1] > L'  |  T[s,c] > a)
//!         = Σ_k m_k · S_R(L' − g(x_k − a)) / S_T(a)
//! g(τ)    = τ / r            while τ < r·W       (the stage keeps working at r for W more)
//!         = W + τ − r·W      after               (then normally)
//!         = max(W, τ − h)    stalled (r < 0.1)   (held for h so far: leaves at the later of the stall's end and
//!                                                 its own exit, which may have come while it was held; a = its
//!                                                 clock age, its age when the stall began)
//! W       ~ the slowdown's remaining length: P(W > x) = G(x)  (see [`flow`])
//! L'      = L − Σ_{later stages m slowed} max(0, W_m(1 − r_m) − median T[s])
//! ```
//!
//! averaged over `W` (32 equally likely mid-quantiles of `G`: `P(W > x) = m / (m + x)` with
//! `m = max(time slowed so far, 1 h)` — it lasts about as long again as it has lasted — updated with the
//! lengths of the slowdowns seen to end). The probability given is that raw value **calibrated**: mapped to how
//! often raw values like it came true for the orders resolved so far, separately while the order's way works
//! normally and while a stage on it is slowed (20 bins, isotonic, 20 pseudo-observations of the raw value per
//! bin, see [`crate::stats::calibration`]; the identity until outcomes are known). An outcome is learned once
//! the order's deadline has passed, and one given while a stage was slowed once no stage is slowed any more
//! (see [`model::Model::learn_outcomes`]): a slowdown's misses are known before its successes.
//!
//! (`r = 1`: `g(τ) = τ`, the plain semi-Markov model). The stage's speed `r` comes from a Poisson test of the
//! exits its orders made over the last 30 minutes against the exits their learned durations expected (see
//! [`flow`]): a stage that slows down for everybody raises every order in it at once, hours before their
//! ages alone would.
//!
//! - `T[s,c]` is the **stage duration** of `s` (from reaching `s` to reaching a later stage, in clock time)
//!   learned from past orders in **condition** `c`. `c` is *degraded* when a span carrying this order's key, of a service serving
//!   `s` (`stage_services`), failed (status ERROR) or was slow (see [`health`]); or, when no span of those
//!   services carried its key, when one of them is unhealthy right now (its error rate or slow-span share over
//!   `health.window`). Otherwise `c` is *healthy*. A condition with fewer than `prediction.min_samples`
//!   observations uses both conditions pooled; with fewer still there is no prediction.
//! - `R[s+1]` is the **remaining time** from reaching the next stage to reaching the KPI's `to` stage, learned
//!   per KPI and stage (`R = 0` when the next stage is the goal). `T` and `R` are taken as independent (a
//!   semi-Markov model).
//! - Both are Kaplan–Meier survival functions (`S_T`, `S_R`) over log-bucket histograms (10 % buckets, see
//!   [`sketch`]): exits are the observed durations; open orders count as censored at their current age at
//!   every evaluation (so a new, long delay is seen while it happens, not only once orders complete), expired
//!   orders as censored at their age when dropped. Beyond the longest observation nothing is assumed (the
//!   survival drops to 0 there). Observations lose half their weight every `prediction.half_life`.
//! - The sum runs over the buckets of `T` beyond `a`: `m_k` is the probability mass of the part of bucket `k`
//!   beyond `a`, `x_k` its geometric middle. An order older than every observation (`S_T(a) = 0`) is taken to
//!   leave its stage now: `P = S_R(L)`.
//! - An order is **at risk** while `P ≥ prediction.threshold`; the first evaluation at which it is at risk
//!   *flags* it (one `kpi.at_risk` log record). As `P` rises smoothly while an order waits, a calibrated model
//!   flags most orders when `P` just reaches the threshold, so about `1 − threshold` of the flags are false
//!   alarms: the default `0.93` keeps precision above 0.9 with a margin for model error. Lower it for earlier,
//!   less certain warnings.
//! - **Cause** of an at-risk order. The **stage** is named when slowdowns cost the order its deadline: it
//!   would likely (`P < 0.5`, same model, stage working normally) make it with the time they cost it given back
//!   (`Σ elapsed × (1 − r)` over the stages it went through). Then the stage named is its current stage if
//!   slowed for everybody (a cohort cause: "backlog in stage paid: 1,840 orders, throughput 35 % of normal
//!   since …"), with or without an IT signal, else the latest earlier stage whose slowdown cost it at least 1/24
//!   of the deadline (the backlog ate its slack). An order deep in its own long tail is not blamed on a stage,
//!   nor one **overtaken** in its stage (the orders leaving it entered it, on average, more than the 95th minus
//!   the 50th percentile of its normal duration after this one): its own work keeps it, and the time counted
//!   lost there is given back ([`flow::StageFlow::overtaken`]).
//!   A **service** is named only when its trouble overlaps the order's current delay in path and time: (1) a
//!   service of its current stage with failed (`errors`) or slow (`latency`) spans of this order that ended at
//!   most 1 h before the order entered the stage or later; else (2) a service of an earlier stage the order
//!   waited unusually long in (≥ 1/24 of the deadline, 1 h for 24 h, and ≥ 4 × that stage's median), with failed or slow spans of this order
//!   during that wait (a payment failure that kept it 10 h in `placed`); else (3) a service of its stage
//!   unhealthy now (service-wide) of which the order has no spans of its own (if it has, they were fine or too
//!   old to overlap: the trouble did not touch it). A card decline retried within minutes is not blamed for a delivery delay a day later.
//!   Labels read `shipping latency`, `payment errors`, `paid stage slowdown` (stage only), or `none` ("no IT
//!   cause found").
//! - **Action.** Every at-risk order carries one (`kpi.action`): fix the named service, and "expedite: must
//!   leave stage paid by 14:20" (its deadline minus the median remaining time after the stage), or "too late
//!   for the usual pace". Every slowed stage carries one (API `stages[].action`, metric
//!   `kpi.stage.action.extra_per_hour`): the completions per hour that clear its orders before their deadlines
//!   served closest deadline first (`max_j j / (x_j − t)` over its orders sorted by latest exit time `x_j`),
//!   how many more than now, which orders first, and the expected compliance of its orders without the action
//!   (`1 − mean P(miss)`) and with it (the share that can still make it). *Which orders first*
//!   (`stages[].action.expedite`, at most 10, with `behind` = how many): the orders that would miss their deadline
//!   at the stage's current pace (closest deadline first, the j-th leaves after `j / throughput` hours) but can
//!   still make it, highest order value first (the value the order's events stated, `events.amount`; orders
//!   without one last), then closest deadline, each with the time it must leave the stage by.
//! - **Scoring.** When a KPI resolves, its prediction is scored: flagged before the deadline and breached is a
//!   true positive (lead time = deadline − first flag), flagged and in time a false positive, not flagged and
//!   breached a false negative, else a true negative. Precision = TP / (TP + FP), recall = TP / (TP + FN).
//!   Lead times are in event time; a flag is emitted when the watermark reaches its evaluation, that is
//!   `allowed_lateness` later in data time.
//!
//! # Metrics (cumulative since the first evaluation; timestamps are event time)
//!
//! Emitted at every evaluation on a multiple of `metrics_interval` (when the watermark passes several at once,
//! the latest) and at the end of input.
//!
//! | OpenTelemetry | Prometheus | type | attributes |
//! |---|---|---|---|
//! | `kpi.orders.resolved` | `kpi_orders_resolved_total` | counter | `kpi`, `outcome` (`in_time`/`breached`), dimensions |
//! | `kpi.orders.excluded` | `kpi_orders_excluded_total` | counter | `kpi`, `reason` (`cancelled`/`expired`/`no_start`) |
//! | `kpi.compliance` | `kpi_compliance_ratio` | gauge | `kpi` |
//! | `kpi.orders.open` | `kpi_orders_open` | gauge | `kpi`, `stage`, `age` (`<1h`, `1h-4h`, … from `age_buckets`), dimensions |
//! | `kpi.orders.at_risk` | `kpi_orders_at_risk` | gauge | `kpi`, `stage`, `cause`, dimensions |
//! | `kpi.at_risk.share` | `kpi_at_risk_share_ratio` | gauge | `kpi`, `cause` |
//! | `kpi.breaches` | `kpi_breaches_total` | counter | `kpi`, `cause` |
//! | `kpi.predictions` | `kpi_predictions_total` | counter | `kpi`, `outcome` (`true_positive`, `false_positive`, `false_negative`, `true_negative`) |
//! | `kpi.prediction.precision` | `kpi_prediction_precision_ratio` | gauge | `kpi` |
//! | `kpi.prediction.recall` | `kpi_prediction_recall_ratio` | gauge | `kpi` |
//! | `kpi.prediction.lead_time` (s) | `kpi_prediction_lead_time_seconds` | histogram | `kpi` |
//! | `kpi.prediction.lead_time.median` (s) | `kpi_prediction_lead_time_median_seconds` | gauge | `kpi` |
//! | `kpi.stage.throughput.ratio` | `kpi_stage_throughput_ratio` | gauge | `stage` |
//! | `kpi.stage.backlog` | `kpi_stage_backlog` | gauge | `stage` |
//! | `kpi.stage.action.extra_per_hour` | `kpi_stage_action_extra_per_hour` | gauge | `kpi`, `stage` (slowed stages) |
//! | `kpi.metric.overflowed_points` | `kpi_metric_overflowed_points_total` | counter | — |
//!
//! Dimensions come from event attributes or from a `lookup` extension keyed by an event attribute; each
//! distinct combination is a series, at most `max_series`; beyond, further orders count in one overflow series
//! (`otel.metric.overflow=true`).
//!
//! # Logs
//!
//! One record per order when it is first flagged: `event.name` = `kpi.at_risk`, attributes `kpi.name`,
//! `order.id`, `kpi.probability`, `kpi.threshold`, `kpi.stage`, `kpi.stage.entered_unix_nano`,
//! `kpi.stage.age_s`, `kpi.deadline_unix_nano`, `kpi.time_left_s`, `kpi.condition`, `kpi.cause`,
//! `kpi.cause.service`, `kpi.cause.issue`, `kpi.cause.stage`, `kpi.cause.text`, `kpi.action`, `kpi.order.value` and
//! `kpi.order.currency` (when the order's events stated a value), the dimensions, and `kpi.evidence` (per service: `service`, `spans`,
//! `errors`, `slow`, `trace_ids`); the record's trace id is an example trace of the cause; its time is the
//! evaluation's. The HTTP API (`/api/v1/kpi/{name}/at-risk`) is described in [`api`].
//!
//! # Config
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `events` | see `bizpilot_business::event` | event name attribute, `names` filter, `order_id` (`order.id`), `time` |
//! | `stages` | `placed`, `paid`, `shipped`, `delivered` | lifecycle stages in order: `{name, events: [names]}` (events default `order.<name>`) |
//! | `cancel_events` | `[order.cancelled]` | events that cancel an order |
//! | `kpis` | `[{name: fulfilled_24h, deadline: 24h}]` | `{name, from (first stage), to (last stage), deadline}` |
//! | `order_key_attributes` | `[business.order.id, demo.order.id, app.order.id]` | span attributes holding an order id |
//! | `stage_services` | `{placed: [payment], paid: [shipping], shipped: [shipping]}` | services (`service.name`) serving each stage |
//! | `health.window` | `15m` | trailing window of a service's error rate and slow-span share |
//! | `health.min_spans` | `10` | spans in the window needed to judge a service |
//! | `health.error_rate_threshold` | `0.1` | unhealthy (errors) at or above this error rate |
//! | `health.slow_rate_threshold` | `0.25` | unhealthy (latency) at or above this share of slow spans |
//! | `health.slow_factor` | `5` | a span is slow above this × its operation's baseline latency |
//! | `health.baseline_window`, `health.baseline_windows` | `24h`, `7` | baseline = lowest median over these windows |
//! | `health.min_baseline_spans` | `30` | spans a window needs to count for the baseline |
//! | `health.latency_thresholds` | `{}` | absolute slow thresholds per service (`{shipping: 1s}`), instead of the baseline |
//! | `prediction.threshold` | `0.93` | at risk at or above this probability of missing the deadline |
//! | `prediction.min_samples` | `30` | observations a learned distribution needs |
//! | `prediction.half_life` | `168h` | observations lose half their weight after this; `0` never forgets |
//! | `allowed_lateness` | `5m` | how late data may be (behind the newest of its own input) and still be applied in event-time order |
//! | `idle_timeout` | `5m` | wall time without data after which an input (events or spans) stops holding the watermark back, until it sends again; `0`: never (a silent input holds it for good) |
//! | `evaluation_interval` | `5m` | evaluation step (event time) |
//! | `metrics_interval` | `5m` | metrics emission step (a multiple of `evaluation_interval`) |
//! | `dimensions` | `[]` | `attribute` or `{name, attribute}` or `{name, lookup: {extension, key_attribute (customer.id), column (name)}, default (unknown)}` |
//! | `max_series` | `1000` | most dimension combinations; beyond: the overflow series |
//! | `age_buckets` | `[1h, 4h, 12h, 24h]` | bounds of the `age` label of open orders |
//! | `max_open_orders` | `1000000` | most open orders; new orders beyond are refused (counted) |
//! | `max_order_age` | `168h` | an order without end after this is dropped (`expired`) |
//! | `max_pending` | `1000000` | most items waiting for the watermark (beyond, it jumps forward; counted) |
//! | `closed_memory` | `1h` | how long closed order ids and early spans are remembered |
//! | `max_closed` | `200000` | most closed order ids remembered |
//! | `max_pending_evidence` | `100000` | most unknown orders whose spans are kept waiting |
//! | `api.max_at_risk` | `10000` | at-risk orders listed per KPI by the HTTP API |
//! | `storage` | — | id of a storage extension (`file_storage`): the state (open orders, pending items, the learned model, health, figures) is restored from it at start and checkpointed into it; none: memory only |
//! | `checkpoint_interval` | `10s` | how often the whole state is checkpointed (and once more at shutdown, before the final evaluation); the input's acknowledgements wait for it (below) |
//!
//! With `storage`, a restart continues the figures and the open orders as if it had not happened (the engine's
//! snapshot test checks that an interrupted and restored run equals the uninterrupted one, record for record). A
//! snapshot of another format, or one that cannot be read, stops the start with an error; one taken under another
//! configuration (stages, KPIs, dimensions, bounds, lateness…) is ignored with a warning and the state starts empty.
//!
//! **Acknowledgements.** With `storage`, a batch the connector ingested is acknowledged to its source only once a
//! snapshot that includes it is written — so the Kafka receiver commits its offset only then, and a `SIGKILL` loses
//! nothing: what no checkpoint holds is read again. A failed checkpoint keeps them held for the next one (retried
//! every `checkpoint_interval`, counted in `…_checkpoint_errors_total`); at the end of input the final checkpoint
//! releases them, or, if it fails, they are failed (the source sends them again). When 500 acknowledgements wait,
//! the checkpoint starts at once instead of at the next interval (unless the last one failed): the Kafka receiver
//! pauses a partition at `max_in_flight` (1,000) unacknowledged messages and resumes it at half that, so a fast
//! partition is served by back-to-back snapshots rather than stalled for the interval. Each is a full snapshot, but
//! the connector's thread only copies the state (the per-order maps are copy-on-write shards: the copy shares them,
//! and a shard written to while the snapshot is encoded is copied then); encoding and writing run on another thread,
//! and their time, growing with the open orders, bounds how often snapshots follow each other (figures:
//! `docs/durable-state.md`, "order_kpi's checkpoint cost"). Only the handles are held, not the batches' data.
//! Without `storage`, a batch is acknowledged as soon as it is ingested.
//!
//! Self-telemetry: `bizpilot_connector_order_kpi_checkpoints_total{connector}`,
//! `bizpilot_connector_order_kpi_checkpoint_errors_total{connector}`, gauges
//! `bizpilot_connector_order_kpi_checkpoint_bytes{connector}`, `bizpilot_connector_order_kpi_restored_orders{connector}`
//! and `bizpilot_connector_order_kpi_held_acks{connector}` (acknowledgements waiting for a checkpoint).
//!
//! **Open orders that move with their Kafka partition:** a `kafka` receiver's `changelog.state` may name the
//! connector (with `storage`); its checkpoints then also write the orders changed since the last one to the changelog
//! topic, a partition's new owner restores them, the former owner drops them ([`partition`],
//! `docs/partition-state.md`; `bizpilot_connector_order_kpi_changelog_{restored,dropped}_orders_total{connector}`).
//!
//! ```yaml
//! extensions:
//!   lookup/customers: {file: /etc/bizpilot/customers.csv, key: customer_id}
//! connectors:
//!   order_kpi:
//!     stages:
//!       - {name: placed, events: [order.placed]}
//!       - {name: paid, events: [order.paid]}
//!       - {name: shipped, events: [order.shipped]}
//!       - {name: delivered, events: [order.delivered]}
//!     cancel_events: [order.cancelled]
//!     kpis:
//!       - {name: fulfilled_24h, from: placed, to: delivered, deadline: 24h}
//!     stage_services: {placed: [payment], paid: [shipping], shipped: [shipping]}
//!     dimensions:
//!       - {name: customer.tier, lookup: {extension: lookup/customers, key_attribute: customer.id, column: tier}}
//!       - {name: region, lookup: {extension: lookup/customers}}
//!     prediction: {threshold: 0.93}
//! service:
//!   extensions: [lookup/customers]
//!   pipelines:
//!     logs/events: {receivers: [otlp], exporters: [order_kpi]}
//!     traces: {receivers: [otlp], exporters: [order_kpi]}
//!     metrics/kpi: {receivers: [order_kpi], exporters: [prometheus]}
//!     logs/kpi: {receivers: [order_kpi], exporters: [debug]}
//! ```
//!
//! `bizpilot replay --config pipeline.yaml --input recording.otlprec` feeds recorded data (see [`recording`])
//! through such a pipeline at full speed.
//!
//! Self-telemetry (label `connector`): `bizpilot_connector_order_kpi_events_total{result}` (`accepted`,
//! `ignored`, `missing_order`, `late`, `duplicate`, `out_of_order`, `after_close`, `refused`),
//! `bizpilot_connector_order_kpi_spans_total{result}` (`accepted`, `late`, `duplicate`, `orphaned`), the gauges
//! `bizpilot_connector_order_kpi_open_orders` and `bizpilot_connector_order_kpi_pending_items`; per input
//! (label `input`: `logs` for the business events, `traces` for the spans) the gauges
//! `bizpilot_connector_order_kpi_input_watermark_seconds` (Unix seconds of event time) and
//! `bizpilot_connector_order_kpi_input_active` (1 while it holds the watermark, 0 once idle) and the counter
//! `bizpilot_connector_order_kpi_late_items_total`; and the connector's watermark,
//! `bizpilot_connector_order_kpi_watermark_seconds`.

pub mod api;
pub mod config;
pub mod engine;
pub mod flow;
pub mod health;
pub mod model;
pub mod output;
pub mod partition;
pub mod recording;
pub mod sketch;

pub use config::OrderKpiConfig;
pub use engine::{Compiled, Engine, Outcome, Resolution};

use std::sync::Arc;

use bizpilot_business::Lookup;
use bizpilot_core::stage::{Wake, reason};
use bizpilot_core::{
    Batch, ComponentError, ComponentInfo, ComponentKind, Connector, ConnectorFactory, CreateContext, Logs, Metrics,
    Out, Payload, Signal, Stability, Stage, StageInfo,
};

/// The component type name.
pub const TYPE: &str = "order_kpi";

/// Makes `order_kpi` connectors.
#[derive(Debug, Default, Clone, Copy)]
pub struct OrderKpiConnectorFactory;

impl ConnectorFactory for OrderKpiConnectorFactory {
    type Config = OrderKpiConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Connector,
            stability: Stability::Alpha,
            description: "Order fulfilment KPI from business events: compliance, predicted breaches and their causes",
            signals: &[Signal::Traces, Signal::Metrics, Signal::Logs],
            connects: &[
                (Signal::Logs, Signal::Metrics),
                (Signal::Logs, Signal::Logs),
                (Signal::Traces, Signal::Metrics),
                (Signal::Traces, Signal::Logs),
            ],
        }
    }

    fn create(&self, config: OrderKpiConfig, ctx: &CreateContext<'_>) -> Result<Box<dyn Connector>, ComponentError> {
        if ctx.signals.contains(&Signal::Metrics) {
            return Err(ComponentError::Config(format!(
                "{TYPE} reads business events (logs) and traces; it cannot be an exporter of a metrics pipeline"
            )));
        }
        if ctx.output_signals.contains(&Signal::Traces) {
            return Err(ComponentError::Config(format!(
                "{TYPE} emits metrics and logs; a traces pipeline cannot receive from it"
            )));
        }
        let compiled = Compiled::new(&config, |id| ctx.extensions.get::<Lookup>(id))?;
        let mut engine = Engine::new(compiled);
        let id = ctx.id.to_string();
        // Its open orders move with their Kafka partition when a receiver's `changelog` names it.
        let partitions = Arc::new(partition::KpiPartitions::new(&id, config.storage.is_some()));
        let shared: Arc<dyn bizpilot_business::changelog::PartitionedState> = partitions.clone();
        ctx.extensions.publish(ctx.id.clone(), Arc::new(shared));
        let checkpoint = match &config.storage {
            Some(storage) => Some(Checkpoint::open(
                &id,
                storage,
                ctx,
                &mut engine,
                config.checkpoint_interval.get(),
                partitions,
            )?),
            None => None,
        };
        ctx.extensions
            .api()
            .register(Arc::new(api::KpiApi::new(id, engine.book())));
        Ok(Box::new(OrderKpiConnector { engine, checkpoint }))
    }
}

/// Where and how often the engine is checkpointed.
struct Checkpoint {
    client: Arc<dyn bizpilot_core::StorageClient>,
    every: std::time::Duration,
    done: metrics::Counter,
    errors: metrics::Counter,
    bytes: metrics::Gauge,
    /// The checkpoint interval (created when the stage starts, inside the runtime).
    tick: Option<tokio::time::Interval>,
    /// The snapshot in flight: encoded and written off the stage's thread; its size once written.
    inflight: Option<tokio::task::JoinHandle<Result<usize, CheckpointError>>>,
    /// The acknowledgements of the batches ingested, released once a snapshot that includes them is written.
    held: bizpilot_core::ack::Held,
    /// `bizpilot_connector_order_kpi_held_acks`.
    held_gauge: metrics::Gauge,
    /// Whether the latest checkpoint failed (then the next waits for the interval, even beyond [`MAX_HELD`]).
    failed: bool,
    /// The connector's partitioned state: with a changelog attached, each checkpoint also writes the orders changed
    /// since the last one there ([`partition`]).
    partitions: Arc<partition::KpiPartitions>,
    changes: Arc<std::sync::Mutex<engine::changelog::ChangeTracker>>,
}

/// Why a snapshot taken could not be stored.
#[derive(Debug, thiserror::Error)]
enum CheckpointError {
    #[error(transparent)]
    Encode(#[from] engine::SnapshotError),
    #[error(transparent)]
    Store(#[from] bizpilot_core::StorageError),
    #[error(transparent)]
    Changelog(#[from] bizpilot_business::changelog::ChangelogError),
}

/// Held acknowledgements beyond which a checkpoint starts at once instead of at the next interval: half the Kafka
/// receiver's default `max_in_flight` (one acknowledgement per message), so a partition it paused for want of
/// acknowledgements is released by the next snapshot, not after up to `checkpoint_interval`.
const MAX_HELD: usize = 500;

/// The key of the engine's snapshot in the connector's storage namespace.
const SNAPSHOT_KEY: &[u8] = b"engine";

impl Checkpoint {
    /// Opens the connector's namespace in `storage` and restores `engine` from it.
    fn open(
        id: &str,
        storage: &str,
        ctx: &CreateContext<'_>,
        engine: &mut Engine,
        every: std::time::Duration,
        partitions: Arc<partition::KpiPartitions>,
    ) -> Result<Checkpoint, ComponentError> {
        let sid = storage;
        let client = bizpilot_core::storage::client_for(ctx.extensions, storage, id)?;
        let started = std::time::Instant::now();
        let entries = client.load_all().map_err(|e| ComponentError::Other(e.to_string()))?;
        if let Some((_, bytes)) = entries.iter().find(|(k, _)| k == SNAPSHOT_KEY) {
            match engine.restore(bytes) {
                Ok(()) => tracing::info!(connector = id, storage = %sid, open_orders = engine.open_orders(),
                    bytes = bytes.len(), seconds = started.elapsed().as_secs_f64(), "order_kpi state restored"),
                Err(engine::SnapshotError::Config) => tracing::warn!(connector = id, storage = %sid,
                    "the stored order_kpi state was taken under another configuration; starting from empty state"),
                Err(e) => return Err(ComponentError::Other(format!("{id}: {e} (storage {sid})"))),
            }
        }
        metrics::gauge!("bizpilot_connector_order_kpi_restored_orders", "connector" => id.to_string())
            .set(engine.open_orders() as f64);
        Ok(Checkpoint {
            client,
            every,
            done: metrics::counter!("bizpilot_connector_order_kpi_checkpoints_total", "connector" => id.to_string()),
            errors: metrics::counter!("bizpilot_connector_order_kpi_checkpoint_errors_total", "connector" => id.to_string()),
            bytes: metrics::gauge!("bizpilot_connector_order_kpi_checkpoint_bytes", "connector" => id.to_string()),
            tick: None,
            inflight: None,
            held: bizpilot_core::ack::Held::default(),
            held_gauge: metrics::gauge!("bizpilot_connector_order_kpi_held_acks", "connector" => id.to_string()),
            failed: false,
            partitions,
            changes: Default::default(),
        })
    }

    /// Copies `engine`'s state (cheap: the per-order maps are shared copy-on-write) and starts encoding and writing
    /// it off the stage's thread and the async workers.
    fn start(&mut self, id: &str, engine: &Engine) {
        let copy = match engine.snapshot_copy() {
            Ok(c) => c,
            Err(e) => {
                self.errors.increment(1);
                self.failed = true;
                tracing::warn!(connector = id, error = %e, "order_kpi checkpoint failed");
                return;
            }
        };
        // With a changelog: the orders changed since its last write, found and written after the snapshot's (every
        // order after a rebalance). No write is in flight here: the tracker is free.
        if self.partitions.take_rewrite() {
            self.changes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .reset();
        }
        let changelog = self.partitions.sink().map(|sink| {
            (
                sink.clone(),
                engine.change_copy(),
                self.changes.clone(),
                self.partitions.prefix().to_string(),
            )
        });
        // The snapshot includes every batch ingested so far: their acknowledgements wait for its write.
        self.held.seal();
        let client = self.client.clone();
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            let bytes = copy.encode()?;
            drop(copy);
            let n = bytes.len();
            client.apply(&[bizpilot_core::StorageOp::Put(SNAPSHOT_KEY.to_vec(), bytes)])?;
            if let Some((sink, now, changes, prefix)) = changelog {
                let mut changes = changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let records = changes.records(now, &prefix, sink.partitions())?;
                sink.send(&records)?;
                changes.written();
            }
            Ok(n)
        }));
    }

    /// Waits for the write in flight, if any, and counts its outcome. Cancel-safe: dropped while waiting, the
    /// write goes on and the next call waits for it again.
    async fn settle(&mut self, id: &str) {
        let Some(handle) = self.inflight.as_mut() else {
            return;
        };
        let result = handle.await;
        self.inflight = None;
        let ok = matches!(result, Ok(Ok(_)));
        match result {
            Ok(Ok(n)) => {
                self.done.increment(1);
                self.bytes.set(n as f64);
            }
            Ok(Err(e)) => {
                self.errors.increment(1);
                tracing::warn!(connector = id, error = %e, held = self.held.len(),
                    "order_kpi checkpoint failed; the acknowledgements of its batches stay held for the next one");
            }
            Err(e) => {
                self.errors.increment(1);
                tracing::warn!(connector = id, error = %e, held = self.held.len(),
                    "order_kpi checkpoint task failed; the acknowledgements of its batches stay held for the next one");
            }
        }
        if ok {
            self.held.release();
        } else {
            self.held.reopen();
        }
        self.failed = !ok;
        self.held_gauge.set(self.held.len() as f64);
    }

    /// Holds the acknowledgements of a batch the engine ingested.
    fn hold(&mut self, acks: Vec<bizpilot_core::Ack>) {
        self.held.hold(acks);
        self.held_gauge.set(self.held.len() as f64);
    }

    /// Fails what is held (the input ended without a checkpoint holding it, or the run was aborted): the sources
    /// may send it again.
    fn fail_held(&mut self, id: &str) {
        let n = self.held.fail_all();
        if n > 0 {
            tracing::warn!(
                connector = id,
                batches = n,
                "order_kpi: no checkpoint holds these batches; their acknowledgements are failed"
            );
        }
        self.held_gauge.set(0.0);
    }

    /// Checkpoints `engine` now and waits until it is written (at the end of input: what it could not write is
    /// failed).
    async fn run(&mut self, id: &str, engine: &Engine) {
        self.settle(id).await;
        self.start(id, engine);
        self.settle(id).await;
        self.fail_held(id);
    }
}

/// An `order_kpi` connector.
pub struct OrderKpiConnector {
    engine: Engine,
    checkpoint: Option<Checkpoint>,
}

impl Connector for OrderKpiConnector {
    fn into_stage(self: Box<Self>) -> Box<dyn Stage> {
        Box::new(Task {
            id: String::new(),
            engine: self.engine,
            checkpoint: self.checkpoint,
            metrics: false,
            logs: false,
            telemetry: None,
        })
    }
}

struct Telemetry {
    events: Vec<(&'static str, metrics::Counter)>,
    spans: Vec<(&'static str, metrics::Counter)>,
    open: metrics::Gauge,
    pending: metrics::Gauge,
    /// Per input ([`engine::Input::ALL`]): watermark, active, late items.
    inputs: Vec<(metrics::Gauge, metrics::Gauge, metrics::Counter)>,
    watermark: metrics::Gauge,
}

impl Telemetry {
    fn new(id: &str) -> Telemetry {
        let ev = |r: &'static str| {
            (
                r,
                metrics::counter!("bizpilot_connector_order_kpi_events_total", "connector" => id.to_string(), "result" => r),
            )
        };
        let sp = |r: &'static str| {
            (
                r,
                metrics::counter!("bizpilot_connector_order_kpi_spans_total", "connector" => id.to_string(), "result" => r),
            )
        };
        Telemetry {
            events: [
                "accepted",
                "ignored",
                "missing_order",
                "late",
                "duplicate",
                "out_of_order",
                "after_close",
                "refused",
            ]
            .into_iter()
            .map(ev)
            .collect(),
            spans: ["accepted", "late", "duplicate", "orphaned"]
                .into_iter()
                .map(sp)
                .collect(),
            open: metrics::gauge!("bizpilot_connector_order_kpi_open_orders", "connector" => id.to_string()),
            pending: metrics::gauge!("bizpilot_connector_order_kpi_pending_items", "connector" => id.to_string()),
            inputs: engine::Input::ALL
                .iter()
                .map(|i| {
                    let l = [("connector", id.to_string()), ("input", i.as_str().to_string())];
                    (
                        metrics::gauge!("bizpilot_connector_order_kpi_input_watermark_seconds", &l),
                        metrics::gauge!("bizpilot_connector_order_kpi_input_active", &l),
                        metrics::counter!("bizpilot_connector_order_kpi_late_items_total", &l),
                    )
                })
                .collect(),
            watermark: metrics::gauge!("bizpilot_connector_order_kpi_watermark_seconds", "connector" => id.to_string()),
        }
    }

    fn publish(&self, e: &Engine) {
        let s = e.stats();
        let ev = [
            s.events,
            s.events_ignored,
            s.events_missing_order,
            s.events_late,
            s.events_duplicate,
            s.events_out_of_order,
            s.events_after_close,
            s.orders_refused,
        ];
        for ((_, c), v) in self.events.iter().zip(ev) {
            c.absolute(v);
        }
        let sp = [s.spans, s.spans_late, s.spans_duplicate, s.spans_orphaned];
        for ((_, c), v) in self.spans.iter().zip(sp) {
            c.absolute(v);
        }
        self.open.set(e.open_orders() as f64);
        self.pending.set(e.pending() as f64);
        for ((watermark, active, late), i) in self.inputs.iter().zip(e.inputs()) {
            if let Some(w) = i.watermark {
                watermark.set(w as f64 / 1e9);
            }
            active.set(if i.active { 1.0 } else { 0.0 });
            late.absolute(i.late);
        }
        let w = e.watermark();
        if w > 0 {
            self.watermark.set(w as f64 / 1e9);
        }
    }
}

/// The connector's stage: ingests order events (logs) and spans, and emits what each batch
/// changed; with `storage`, checkpoints the engine every `checkpoint_interval` and once more when the
/// input closes, before the final evaluation.
struct Task {
    id: String,
    engine: Engine,
    checkpoint: Option<Checkpoint>,
    /// Whether a metrics (logs) pipeline receives from the connector.
    metrics: bool,
    logs: bool,
    telemetry: Option<Telemetry>,
}

impl Task {
    fn emit(&mut self, out: &mut Out) {
        if let Some(t) = &self.telemetry {
            t.publish(&self.engine);
        }
        let records = self.engine.take_logs();
        if !records.is_empty() && self.logs {
            out.send(Batch::new(Payload::Logs(Logs::from_message(output::logs_request(
                records,
            )))));
        }
        if let Some(req) = self.engine.take_metrics()
            && self.metrics
        {
            out.send(Batch::new(Payload::Metrics(Metrics::from_message(req))));
        }
    }
}

impl Stage for Task {
    fn start(&mut self, info: &StageInfo) {
        self.id = info.id.clone();
        self.metrics = info.outputs.contains(&Signal::Metrics);
        self.logs = info.outputs.contains(&Signal::Logs);
        self.telemetry = Some(Telemetry::new(&info.id));
        if let Some(c) = self.checkpoint.as_mut() {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + c.every, c.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            c.tick = Some(tick);
        }
    }

    fn on_batch(&mut self, mut batch: Batch, out: &mut Out) {
        // Partitions restored or moved away since the last batch (a rebalance): before any record of them.
        if let Some(c) = &self.checkpoint {
            c.partitions.apply(&mut self.engine);
        }
        let failed = match &mut batch.payload {
            Payload::Logs(l) => match l.message() {
                Ok(req) => {
                    self.engine.ingest_logs_at(req, tokio::time::Instant::now().into_std());
                    None
                }
                Err(e) => {
                    tracing::warn!(connector = %self.id, error = %e, "cannot decode logs; dropped");
                    Some(reason::ERROR)
                }
            },
            Payload::Traces(t) => match t.message() {
                Ok(req) => {
                    self.engine
                        .ingest_traces_at(req, tokio::time::Instant::now().into_std());
                    None
                }
                Err(e) => {
                    tracing::warn!(connector = %self.id, error = %e, "cannot decode traces; dropped");
                    Some(reason::ERROR)
                }
            },
            other => {
                tracing::warn!(connector = %self.id, signal = %other.signal(), "not logs or traces; dropped");
                Some(reason::UNSUPPORTED_SIGNAL)
            }
        };
        match failed {
            Some(r) => out.fail(batch, r),
            None => {
                // Aggregated. With `storage`, the batch is delivered once a checkpoint holding it is written;
                // without, when dropped.
                if let Some(c) = self.checkpoint.as_mut() {
                    c.hold(std::mem::take(&mut batch.acks));
                }
                out.consume(batch)
            }
        }
        // Wall time from the runtime's clock (idle inputs, `idle_timeout`).
        self.engine.advance_at(tokio::time::Instant::now().into_std());
        self.emit(out);
    }

    /// When an input that holds the watermark back goes idle (`idle_timeout`).
    fn deadline(&mut self) -> Option<tokio::time::Instant> {
        self.engine.idle_deadline().map(tokio::time::Instant::from_std)
    }

    /// An input went idle: the others move the watermark on.
    fn on_timer(&mut self, out: &mut Out) {
        self.engine.advance_at(tokio::time::Instant::now().into_std());
        self.emit(out);
    }

    /// The checkpoint interval: a snapshot's copy between batches, encoded and written off the async workers; at once when
    /// [`MAX_HELD`] acknowledgements wait for one (unless the last one failed).
    fn wake(&mut self) -> Wake<'_> {
        // Restored partitions show in the figures within a checkpoint interval even while no batch comes.
        if let Some(c) = &self.checkpoint {
            c.partitions.apply(&mut self.engine);
        }
        let (id, engine) = (&self.id, &self.engine);
        match self.checkpoint.as_mut() {
            Some(c) if c.tick.is_some() => Box::pin(async move {
                if c.inflight.is_none() {
                    if (c.held.len() < MAX_HELD || c.failed)
                        && let Some(t) = c.tick.as_mut()
                    {
                        t.tick().await;
                    }
                    c.start(id, engine);
                }
                c.settle(id).await;
            }),
            _ => Box::pin(std::future::pending()),
        }
    }

    /// Before the final evaluation, which settles what is still pending: the next start continues from here.
    fn finish(&mut self) -> Wake<'_> {
        let (id, engine) = (&self.id, &self.engine);
        match self.checkpoint.as_mut() {
            Some(c) => Box::pin(c.run(id, engine)),
            None => Box::pin(std::future::ready(())),
        }
    }

    fn on_drain(&mut self, out: &mut Out) {
        if let Some(c) = &self.checkpoint {
            c.partitions.apply(&mut self.engine);
        }
        self.engine.finish();
        self.emit(out);
    }

    /// The run ends early: no checkpoint will hold what is held.
    fn on_abort(&mut self, _out: &mut Out) {
        if let Some(c) = self.checkpoint.as_mut() {
            c.fail_held(&self.id);
        }
    }
}

#[cfg(test)]
mod tests;
