//! The `capacity_planner` connector (traces → metrics): learns how the business flow runs on IT from the
//! spans it sees and turns business goals (campaigns) into IT capacity (business semantics §5). Design,
//! formulas and uncertainty: `docs/capacity-planning.md`.
//!
//! # What it learns (continuously, from spans, over the sliding `window`)
//!
//! - **Funnel steps** (`steps[]`, in funnel order, matched like `business_impact`'s operations): occurrences,
//!   errors, and the conversion from each step to the next (occurrences of the step per occurrence of the
//!   previous one).
//! - **Routes**: a *call* is a span of a kind in `span_kinds` (server and consumer spans by default, so a
//!   client span and the server span it causes count once); its route is `service.name` + `http.route`
//!   (with the method) when the span carries one the name does not already hold, else the span name. Per
//!   route: calls, errors, arrival rate, the duration distribution (a quantile sketch with 1 % relative
//!   error), and concurrency by Little's law (sum of call durations / time observed = λW).
//! - **Fan-out**: each trace is attributed to its *entry step*, the earliest funnel step among its spans
//!   (traces matching no step are "background"), `trace_timeout` after its first span; the calls of every
//!   route in it (retries included) are counted against that step. Per route this gives the calls per
//!   trace of each step, and the share of its calls each step causes.
//! - **Load against latency and errors**: per full `resolution` bucket and service, the (rate, mean latency,
//!   error rate) point, and least-squares fits of 1/latency and of the error rate against the rate.
//! - **Replicas**: calls and concurrency per `service.instance.id` / `k8s.pod.name` (`replica_attributes`).
//!
//! # The plan (per campaign)
//!
//! - **Step multipliers**: every step ×`traffic`; the orders step and later ×`conversion`; a step in `steps`
//!   and later × its growth; an `orders_per_hour` target (or `revenue_per_hour` ÷ today's exact average
//!   order value) rescales the orders step and later (or, without `traffic`, everything) to hit it. Traffic
//!   of no step scales with `traffic`.
//! - Per route, multiplier = Σ over entry steps of (share of its calls) × (step multiplier); planned rate,
//!   peak rate (the busiest full bucket) and concurrency = today's × multiplier (latency as observed).
//! - Per service: capacity per replica from `limits` (`max_concurrency_per_replica` ÷ mean latency, or
//!   `max_rate_per_replica`, the smaller), else from observed saturation (1/latency falling linearly with the
//!   rate to 0; needs ≥ 5 full buckets over a 1.3× range of rates with r² ≥ 0.5); utilization now and planned,
//!   headroom (1 − utilization now), required replicas ⌈planned rate ÷ (capacity per replica × target
//!   utilization)⌉, and where it saturates: at which multiple of today's load and of the campaign. The first
//!   to saturate is the service saturating at the smallest fraction of the campaign.
//! - Fulfilment: orders per hour per stage and staff ⌈orders/h × 24 ÷ (orders per staff-hour × hours per day)⌉
//!   so that each day's orders are handled within the 24-hour KPI.
//! - Every figure is `{value, low, high, derivation}` (95 % band from the Poisson error of the counts and the
//!   standard error of mean latencies), or `{insufficient_data: "<what is missing>"}` when the data do not
//!   support it (fewer than `min_calls` calls, less than 1 s observed, no limit and no saturation seen, no
//!   replica count).
//!
//! # Metrics (gauges, emitted every `metrics_flush_interval`; names as Prometheus shows them)
//!
//! | OpenTelemetry | Prometheus | attributes |
//! |---|---|---|
//! | `business.capacity.required_replicas` | `business_capacity_required_replicas` | `service`, `campaign` |
//! | `business.capacity.replicas` | `business_capacity_replicas` | `service` (now) |
//! | `business.capacity.headroom` (1) | `business_capacity_headroom_ratio` | `service` (1 − utilization now) |
//! | `business.capacity.utilization` (1) | `business_capacity_utilization_ratio` | `service`, `campaign` (planned) |
//! | `business.capacity.rate` ({request}/s) | `business_capacity_rate_per_second` | `service` (now) |
//! | `business.capacity.planned_rate` ({request}/s) | `business_capacity_planned_rate_per_second` | `service`, `campaign` |
//! | `business.capacity.planned_concurrency` | `business_capacity_planned_concurrency` | `service`, `campaign` |
//! | `business.capacity.saturation_multiple` | `business_capacity_saturation_multiple` | `service` (load at saturation ÷ today's) |
//! | `business.capacity.planned_orders` ({order}/h) | `business_capacity_planned_orders_per_hour` | `campaign` |
//! | `business.capacity.staff_required` | `business_capacity_staff_required` | `stage`, `campaign` |
//!
//! A figure without data is not emitted.
//!
//! # HTTP API: `GET /api/v1/plan[?campaign=<name>&connector=<id>]`
//!
//! ```json
//! {
//!   "connector": "capacity_planner",
//!   "target_utilization": 0.7,
//!   "observed": {"from": "2026-01-01T00:00:00Z", "to": "…", "seconds": 600.0, "spans": 123456, "calls": 98765,
//!                "traces_attributed": 4321, "traces_pending": 12, "late_spans": 0, "dropped_routes": 0},
//!   "funnel": [{"step": "browse", "occurrences": 3000, "errors": 3, "multiplier": 1.5,
//!               "rate_per_s": FIGURE, "planned_rate_per_s": FIGURE, "conversion_from_previous": null | FIGURE}],
//!   "campaigns": [{
//!     "name": "spring_sale", "window_start": null, "window_seconds": 7200.0,
//!     "step_multipliers": {"browse": 1.5, "checkout": 1.8}, "background_multiplier": 1.5,
//!     "orders_per_hour_now": FIGURE, "orders_per_hour_planned": FIGURE, "orders_in_window": FIGURE | null,
//!     "average_order_value": {"currency": "USD", "amount": "123.45"} | null, "revenue_per_hour_planned": MONEY | null,
//!     "first_to_saturate": "payment" | null,
//!     "summary": "payment saturates at 1.34× today's checkout volume (402 per hour): needs 3 replicas instead of 2 for the campaign",
//!     "problems": ["…"],
//!     "services": [{                       // first to saturate first
//!       "service": "payment", "replicas_now": 2, "replicas_source": "configured (limits.replicas)",
//!       "replicas_seen": [{"replica": "payment-7d9f", "calls": 100, "rate_per_s": 0.17, "concurrency": 0.01}],
//!       "rate_now": FIGURE, "concurrency_now": FIGURE, "rate_planned": FIGURE, "peak_rate_planned": FIGURE,
//!       "concurrency_planned": FIGURE, "capacity_per_replica": FIGURE, "capacity_source": "…",
//!       "utilization_now": FIGURE, "headroom_ratio": FIGURE, "utilization_planned": FIGURE,
//!       "required_replicas": FIGURE,
//!       "saturation": {"multiple_of_today": 1.34, "fraction_of_campaign": 0.74, "step": "checkout",
//!                      "step_per_hour_at_saturation": 402.0, "sentence": "…"} | null,
//!       "load": {"points": [[rate, latency_s, error_rate], …], "slope": -0.1, "intercept": 20.0, "r2": 0.9,
//!                "error_slope": 0.0},
//!       "routes": [{"route": "grpc.oteldemo.PaymentService/Charge", "calls": 100, "error_rate": 0.01,
//!                   "fan_out": {"checkout": 1.02}, "multiplier": 1.8, "rate_now": FIGURE,
//!                   "latency_mean_s": FIGURE, "latency_p50_s": 0.05, "latency_p95_s": 0.2, "latency_p99_s": 0.3,
//!                   "concurrency_now": FIGURE, "rate_planned": FIGURE, "peak_rate_planned": FIGURE,
//!                   "concurrency_planned": FIGURE}]
//!     }],
//!     "fulfilment": [{"stage": "pick", "orders_per_hour_now": FIGURE, "orders_per_hour_planned": FIGURE,
//!                     "staff_now": 4, "staff_needed": FIGURE}]
//!   }]
//! }
//! ```
//!
//! where `FIGURE` is `{"value": 1.5, "low": 1.4, "high": 1.6, "derivation": "…"}` or
//! `{"insufficient_data": "only 12 calls of payment observed (min_calls = 30)"}`.
//!
//! # Config
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `steps[].name` | (required) | funnel step, in funnel order (`browse`, `cart`, `checkout`, `payment`, `shipping`) |
//! | `steps[].service` | — | `service.name` is this (or one of this list) |
//! | `steps[].span_name` | — | span name is exactly this (or one of this list) |
//! | `steps[].span_name_regex` | — | span name matches this regular expression |
//! | `orders_step` | the step named `checkout` | the step whose occurrences are orders |
//! | `value_attribute`, `currency_attribute` | `business.order.value`, `business.currency` | order value on the orders step (exact money; for `revenue_per_hour`) |
//! | `span_kinds` | `[server, consumer]` | span kinds that are calls to a service |
//! | `replica_attributes` | `[service.instance.id, k8s.pod.name]` | resource attributes naming a replica |
//! | `campaigns[].name` | (required) | campaign name |
//! | `campaigns[].traffic` | — | growth of traffic: `"+50%"`, `"1.5x"`, or a number of percent |
//! | `campaigns[].conversion` | — | growth of conversion into the orders step |
//! | `campaigns[].steps` | `{}` | growth of single steps (and the steps after them), by name |
//! | `campaigns[].orders_per_hour` | — | orders per hour to plan for |
//! | `campaigns[].revenue_per_hour` | — | revenue per hour to plan for (`"USD 1000000"`) |
//! | `campaigns[].window.start`, `.duration` | — | when and how long (orders over the window) |
//! | `limits.<service>.replicas` | distinct replicas seen | replicas running now |
//! | `limits.<service>.max_concurrency_per_replica` | — | requests one replica serves at once |
//! | `limits.<service>.max_rate_per_replica` | — | requests per second one replica serves |
//! | `target_utilization` | `0.7` | utilization the required replicas are sized for |
//! | `fulfilment.stages[]` | `[]` | `{name, orders_per_staff_hour, hours_per_day: 24, staff}` |
//! | `window` | `1h` | sliding observation window (event time) |
//! | `resolution` | `1m` | bucket width of rates, peaks and load points |
//! | `trace_timeout` | `30s` | a trace is attributed to its entry step this long after its first span |
//! | `max_routes` | `2000` | most (service, route) pairs; calls to further routes are counted and dropped |
//! | `max_traces` | `200000` | most traces waiting for attribution (beyond: the oldest are attributed early) |
//! | `max_replicas` | `256` | most replicas per service and bucket |
//! | `min_calls` | `30` | calls a figure needs; with fewer it says `insufficient_data` |
//! | `metrics_flush_interval` | `15s` | how often the gauges are emitted |
//!
//! Bad input is a config error naming the path: a campaign naming an unknown step
//! (`campaigns[0].steps.chekout: unknown step`), a negative growth (`campaigns[0].traffic: "-10%" is a
//! negative growth`), conversion or an orders target without an orders step, limits that are not positive.
//!
//! ```yaml
//! connectors:
//!   capacity_planner:
//!     steps:
//!       - {name: browse, service: frontend, span_name_regex: "^GET /api/products"}
//!       - {name: cart, service: cart, span_name: oteldemo.CartService/AddItem}
//!       - {name: checkout, service: checkout, span_name: oteldemo.CheckoutService/PlaceOrder}
//!       - {name: payment, service: payment, span_name: [grpc.oteldemo.PaymentService/Charge, oteldemo.PaymentService/Charge]}
//!       - {name: shipping, service: shipping, span_name_regex: "ShipOrder|/ship-order"}
//!     campaigns:
//!       - {name: spring_sale, traffic: "+50%", conversion: "+20%", window: {duration: 48h}}
//!       - {name: million_an_hour, revenue_per_hour: "USD 1000000"}
//!     limits:
//!       payment: {replicas: 2, max_concurrency_per_replica: 8}
//!       checkout: {replicas: 2, max_rate_per_replica: 40}
//!     fulfilment:
//!       stages:
//!         - {name: pick, orders_per_staff_hour: 30, hours_per_day: 16, staff: 6}
//!         - {name: ship, orders_per_staff_hour: 60, hours_per_day: 16, staff: 3}
//! service:
//!   pipelines:
//!     traces: {receivers: [otlp], exporters: [capacity_planner]}
//!     metrics/capacity: {receivers: [capacity_planner], exporters: [prometheus]}
//! ```
//!
//! Self-telemetry (label `connector`): `bizpilot_connector_capacity_planner_spans_total`,
//! `bizpilot_connector_capacity_planner_dropped_total{reason}` (`late`, `no_time`, `route_limit`),
//! `bizpilot_connector_capacity_planner_forced_traces_total`, and the gauge
//! `bizpilot_connector_capacity_planner_pending_traces`.

pub mod api;
pub mod config;
pub mod model;
pub mod planner;
pub mod sketch;

pub use config::CapacityPlannerConfig;
pub use model::{Model, Settings};
pub use planner::{Figure, Plan};

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

use bizpilot_business::attrs::{KeyValue, kv_str};
use bizpilot_core::stage::reason;
use bizpilot_core::{
    Batch, ComponentError, ComponentInfo, ComponentKind, Connector, ConnectorFactory, CreateContext, Metrics, Out,
    Payload, Signal, Stability, Stage, StageInfo,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::{Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::otlp_out::{Points, gauge, wall_ns};
use crate::tick::Ticker;

/// The component type name.
pub const TYPE: &str = "capacity_planner";

/// Makes `capacity_planner` connectors.
#[derive(Debug, Default, Clone, Copy)]
pub struct CapacityPlannerConnectorFactory;

impl ConnectorFactory for CapacityPlannerConnectorFactory {
    type Config = CapacityPlannerConfig;

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            type_name: TYPE,
            kind: ComponentKind::Connector,
            stability: Stability::Alpha,
            description: "Business goals to IT capacity: funnel, fan-out, load per service, replicas needed",
            signals: &[Signal::Traces, Signal::Metrics],
            connects: &[(Signal::Traces, Signal::Metrics)],
        }
    }

    fn create(
        &self,
        config: CapacityPlannerConfig,
        ctx: &CreateContext<'_>,
    ) -> Result<Box<dyn Connector>, ComponentError> {
        let wrong: BTreeSet<Signal> = ctx.signals.iter().copied().filter(|s| *s != Signal::Traces).collect();
        if !wrong.is_empty() {
            return Err(ComponentError::Config(format!(
                "{TYPE} reads traces only; it is an exporter of a {} pipeline",
                wrong.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        if ctx.output_signals.iter().any(|s| *s != Signal::Metrics) {
            return Err(ComponentError::Config(format!(
                "{TYPE} emits metrics only; only a metrics pipeline can receive from it"
            )));
        }
        let model = Arc::new(Mutex::new(Model::new(Settings::new(&config)?)));
        let config = Arc::new(config);
        let id = ctx.id.to_string();
        ctx.extensions
            .api()
            .register(Arc::new(api::PlanApi::new(id, config.clone(), model.clone())));
        Ok(Box::new(CapacityPlannerConnector { config, model }))
    }
}

/// A `capacity_planner` connector.
pub struct CapacityPlannerConnector {
    config: Arc<CapacityPlannerConfig>,
    model: Arc<Mutex<Model>>,
}

impl Connector for CapacityPlannerConnector {
    fn into_stage(self: Box<Self>) -> Box<dyn Stage> {
        Box::new(Task {
            id: String::new(),
            config: self.config,
            model: self.model,
            metrics: false,
            start_ns: 0,
            reported: Default::default(),
            ticker: None,
        })
    }
}

/// The connector's stage: ingests traces; on its tick completes idle traces and, every
/// `metrics_flush_interval`, emits the plan.
struct Task {
    id: String,
    config: Arc<CapacityPlannerConfig>,
    model: Arc<Mutex<Model>>,
    /// Whether a metrics pipeline receives from the connector.
    metrics: bool,
    start_ns: u64,
    reported: model::Counters,
    /// Set at start.
    ticker: Option<Ticker>,
}

/// The plan's gauges as an OTLP request (empty when no figure has data).
pub fn plan_metrics(plan: &Plan, start_ns: u64, now_ns: u64) -> ExportMetricsServiceRequest {
    let p = Points {
        start: start_ns,
        now: now_ns,
    };
    let mut series: Vec<(&str, &str, &str, Vec<NumberDataPoint>)> = vec![
        (
            "business.capacity.required_replicas",
            "Replicas a campaign needs at the target utilization",
            "{replica}",
            vec![],
        ),
        (
            "business.capacity.replicas",
            "Replicas now (configured or seen)",
            "{replica}",
            vec![],
        ),
        ("business.capacity.headroom", "1 - utilization now", "1", vec![]),
        (
            "business.capacity.utilization",
            "Utilization under a campaign",
            "1",
            vec![],
        ),
        ("business.capacity.rate", "Calls per second now", "{request}/s", vec![]),
        (
            "business.capacity.planned_rate",
            "Calls per second under a campaign",
            "{request}/s",
            vec![],
        ),
        (
            "business.capacity.planned_concurrency",
            "Calls in progress under a campaign (Little's law)",
            "{request}",
            vec![],
        ),
        (
            "business.capacity.saturation_multiple",
            "Load at saturation / load now",
            "",
            vec![],
        ),
        (
            "business.capacity.planned_orders",
            "Orders per hour under a campaign",
            "{order}/h",
            vec![],
        ),
        (
            "business.capacity.staff_required",
            "Staff a fulfilment stage needs under a campaign",
            "{person}",
            vec![],
        ),
    ];
    let mut put = |i: usize, attrs: Vec<KeyValue>, v: Option<f64>| {
        if let (Some(v), Some(s)) = (v, series.get_mut(i))
            && v.is_finite()
        {
            s.3.push(p.double(attrs, v));
        }
    };
    for (ci, c) in plan.campaigns.iter().enumerate() {
        for s in &c.services {
            let sc = || vec![kv_str("service", &s.service), kv_str("campaign", &c.name)];
            let sv = || vec![kv_str("service", &s.service)];
            put(0, sc(), s.required_replicas.value());
            put(3, sc(), s.utilization_planned.value());
            put(5, sc(), s.rate_planned.value());
            put(6, sc(), s.concurrency_planned.value());
            if ci == 0 {
                put(1, sv(), s.replicas_now.map(f64::from));
                put(2, sv(), s.headroom_ratio.value());
                put(4, sv(), s.rate_now.value());
                put(7, sv(), s.saturation.as_ref().map(|x| x.multiple_of_today));
            }
        }
        put(8, vec![kv_str("campaign", &c.name)], c.orders_per_hour_planned.value());
        for st in &c.fulfilment {
            put(
                9,
                vec![kv_str("stage", &st.stage), kv_str("campaign", &c.name)],
                st.staff_needed.value(),
            );
        }
    }
    let metrics: Vec<Metric> = series
        .into_iter()
        .filter(|s| !s.3.is_empty())
        .map(|(n, d, u, pts)| gauge(n, d, u, pts))
        .collect();
    if metrics.is_empty() {
        return ExportMetricsServiceRequest::default();
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", "bizpilot")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: format!("bizpilot/{TYPE}/{}", plan.connector),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

impl Task {
    fn self_telemetry(&mut self, c: &model::Counters, pending: usize) {
        let id = self.id.clone();
        let inc = |name: &'static str, reason: Option<&'static str>, now: u64, before: u64| {
            if now > before {
                match reason {
                    Some(r) => {
                        metrics::counter!(name, "connector" => id.clone(), "reason" => r).increment(now - before)
                    }
                    None => metrics::counter!(name, "connector" => id.clone()).increment(now - before),
                }
            }
        };
        let r = &self.reported;
        inc(
            "bizpilot_connector_capacity_planner_spans_total",
            None,
            c.spans,
            r.spans,
        );
        inc(
            "bizpilot_connector_capacity_planner_dropped_total",
            Some("late"),
            c.late_spans,
            r.late_spans,
        );
        inc(
            "bizpilot_connector_capacity_planner_dropped_total",
            Some("no_time"),
            c.no_time_spans,
            r.no_time_spans,
        );
        inc(
            "bizpilot_connector_capacity_planner_dropped_total",
            Some("route_limit"),
            c.dropped_routes,
            r.dropped_routes,
        );
        inc(
            "bizpilot_connector_capacity_planner_forced_traces_total",
            None,
            c.forced_traces,
            r.forced_traces,
        );
        metrics::gauge!("bizpilot_connector_capacity_planner_pending_traces", "connector" => id.clone())
            .set(pending as f64);
        self.reported = c.clone();
    }

    fn send_metrics(&mut self, out: &mut Out) {
        let (observed, pending) = {
            let m = self.model.lock().unwrap_or_else(PoisonError::into_inner);
            (m.observed(), m.pending())
        };
        self.self_telemetry(&observed.counters, pending);
        if !self.metrics {
            return;
        }
        let plan = planner::plan(&self.id, &self.config, &observed);
        let req = plan_metrics(&plan, self.start_ns, wall_ns());
        if req.resource_metrics.is_empty() {
            return;
        }
        out.send(Batch::new(Payload::Metrics(Metrics::from_message(req))));
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Stage for Task {
    fn start(&mut self, info: &StageInfo) {
        self.id = info.id.clone();
        self.metrics = info.outputs.contains(&Signal::Metrics);
        self.start_ns = wall_ns();
        let flush = self.config.metrics_flush_interval.get();
        let idle = self.config.trace_timeout.get();
        let step = flush.min(idle).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.ticker = Some(Ticker::new(step, flush));
    }

    fn on_batch(&mut self, mut batch: Batch, out: &mut Out) {
        if let Some(t) = self.ticker.as_mut() {
            t.arrived();
        }
        if let Payload::Traces(t) = &mut batch.payload {
            self.model().ingest(t);
            out.consume(batch);
        } else {
            tracing::warn!(connector = %self.id, signal = %batch.signal(), "not traces; dropped");
            out.fail(batch, reason::UNSUPPORTED_SIGNAL);
        }
    }

    fn deadline(&mut self) -> Option<Instant> {
        self.ticker.as_ref().map(Ticker::deadline)
    }

    fn on_timer(&mut self, out: &mut Out) {
        let Some(tick) = self.ticker.as_mut().map(Ticker::tick) else {
            return;
        };
        if tick.idle >= self.config.trace_timeout.get() {
            // No data for a while: every trace seen is complete.
            self.model().flush();
        }
        if tick.flush {
            self.send_metrics(out);
        }
    }

    fn on_drain(&mut self, out: &mut Out) {
        self.model().flush();
        self.send_metrics(out);
    }
}

#[cfg(test)]
mod tests;
