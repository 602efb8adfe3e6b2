//! The event-time engine of the `business_impact` connector (no I/O, no clock of its own: the connector task
//! feeds it spans and tells it the time).
//!
//! Spans matching an operation become *pending operations*, ordered by event time (span end time). The
//! **watermark** is the newest event time seen minus `allowed_lateness` (or just past it when the input is idle,
//! see [`Engine::idle`], or when `max_pending_spans` is reached); pending operations older than the watermark are **finalized** one by one in event-time
//! order, and everything that depends on time (incident evaluations, affected-customer windows, revenue-at-risk
//! episodes, goal periods) advances with them. So the figures do not depend on arrival order: a span that arrives
//! late or out of order counts where it belongs, as long as it is not older than the watermark (then it is
//! dropped and counted as late). A span seen again (same trace id and span id) is dropped and counted as a
//! duplicate while its id is remembered: from arrival until its event time is `dedup_window` behind the
//! watermark (at most `dedup_max_spans` ids).

use std::collections::{BinaryHeap, HashMap, VecDeque};
// The engine's tests (`engine/tests.rs`) use it through `super::*`.
#[cfg(test)]
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bizpilot_business::attrs::{self, KeyValue};
use bizpilot_business::{BusinessState, KeyedHasher, LineItem, Lookup, amount};
use bizpilot_core::view::{self, ValueRef};
use bizpilot_core::{ComponentError, Currency, Money, MoneyTotals, Traces};
use metrics::{Counter, counter};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use regex::Regex;

use super::book::{
    Book, Cause, CloseReason, GoalSummary, ImpactRecord, Incident, IncidentKind, IncidentState, Provisional,
    WindowCount,
};
use super::compact::{self, Capture};
use super::config::{BusinessImpactConfig, CmpOp, Condition, Detection, Scalar, ValueConfig};
use super::incident::{
    BaselineDetector, BaselineParams, Detector, Evaluation, ThresholdDetector, Thresholds, Transition,
};
use super::output;
use super::pending::{OpRec, Packed, SpanIds};
use super::read::{ResRead, SpanRead};
use super::series::{MoneyKind, SeriesTable};
use super::sketch::Distinct;
use super::snapshot::{self, SnapshotError};
use super::trace::{self, TraceContext, TraceContextConfig};
use crate::stats::baseline::LogScale;

/// The attributes a trace's record keeps by default: those the connector reads.
fn trace_keys(cfg: &BusinessImpactConfig, ops: &[OpSpec]) -> Vec<String> {
    let mut keys = vec![
        cfg.business_key.clone(),
        cfg.tier_attribute.clone(),
        cfg.order_attribute.clone(),
        cfg.items_attribute.clone(),
    ];
    keys.extend(cfg.customer_attribute.clone());
    for o in ops {
        keys.push(o.key.clone());
        keys.push(o.value.attribute.clone());
        keys.push(o.value.currency_attribute.clone());
    }
    keys.extend(cfg.dimensions.iter().map(|d| d.parts().1));
    keys
}

fn ns(d: bizpilot_core::config::Duration) -> u64 {
    u64::try_from(d.get().as_nanos()).unwrap_or(u64::MAX / 4)
}

/// A compiled `failure.when` condition.
#[derive(Debug, Clone)]
struct CompiledCondition {
    attribute: String,
    op: CmpOp,
    text: String,
    number: Option<i128>,
}

impl CompiledCondition {
    fn new(c: Condition) -> Self {
        CompiledCondition {
            number: amount::parse_decimal_nanos(&c.value).ok(),
            attribute: c.attribute,
            op: c.op,
            text: c.value,
        }
    }

    fn holds(&self, v: Option<ValueRef<'_>>) -> bool {
        let Some(v) = v else { return false };
        let num = amount::decimal_nanos_ref(&v);
        match (self.op, num, self.number) {
            (CmpOp::Eq, Some(a), Some(b)) => a == b,
            (CmpOp::Ne, Some(a), Some(b)) => a != b,
            (CmpOp::Eq, _, _) => v.as_text().is_some_and(|s| s == self.text),
            (CmpOp::Ne, _, _) => v.as_text().is_none_or(|s| s != self.text),
            (op, Some(a), Some(b)) => match op {
                CmpOp::Ge => a >= b,
                CmpOp::Gt => a > b,
                CmpOp::Le => a <= b,
                CmpOp::Lt => a < b,
                CmpOp::Eq | CmpOp::Ne => false,
            },
            _ => false,
        }
    }
}

/// One operation, compiled.
#[derive(Debug)]
struct OpSpec {
    name: String,
    services: Vec<String>,
    span_names: Vec<String>,
    regex: Option<Regex>,
    attributes: Vec<(String, Scalar)>,
    on_error: bool,
    conditions: Vec<CompiledCondition>,
    value: ValueConfig,
    key: String,
}

fn scalar_eq(v: &ValueRef<'_>, s: &Scalar) -> bool {
    match (v, s) {
        (ValueRef::Bool(a), Scalar::Bool(b)) => a == b,
        (ValueRef::Int(a), Scalar::Int(b)) => a == b,
        (ValueRef::Double(a), Scalar::Float(b)) => a == b,
        (ValueRef::Double(a), Scalar::Int(b)) => *a == *b as f64,
        (ValueRef::Int(a), Scalar::Float(b)) => *a as f64 == *b,
        (v, s) => v.as_text().is_some_and(|t| t == s.to_string()),
    }
}

/// An attribute of the span, else of its resource.
fn attr<'a, S: SpanRead + ?Sized, R: ResRead + ?Sized>(span: &'a S, res: &'a R, key: &str) -> Option<ValueRef<'a>> {
    span.attr(key).or_else(|| res.attr(key))
}

fn attr_string<S: SpanRead + ?Sized, R: ResRead + ?Sized>(span: &S, res: &R, key: &str) -> Option<Box<str>> {
    attr(span, res, key)
        .and_then(|v| v.as_text())
        .filter(|s| !s.is_empty())
        .map(|s| Box::from(s.as_ref()))
}

impl OpSpec {
    fn matches<S: SpanRead + ?Sized, R: ResRead + ?Sized>(&self, span: &S, res: &R, service: &str) -> bool {
        (self.services.is_empty() || self.services.iter().any(|s| s == service))
            && (self.span_names.is_empty() || self.span_names.iter().any(|n| n == span.name()))
            && self.regex.as_ref().is_none_or(|r| r.is_match(span.name()))
            && self
                .attributes
                .iter()
                .all(|(k, want)| attr(span, res, k).is_some_and(|v| scalar_eq(&v, want)))
    }

    fn failed<S: SpanRead + ?Sized, R: ResRead + ?Sized>(&self, span: &S, res: &R) -> bool {
        (self.on_error && span.is_error()) || self.conditions.iter().any(|c| c.holds(attr(span, res, &c.attribute)))
    }
}

/// A goal, compiled.
#[derive(Debug)]
struct GoalSpec {
    name: String,
    op: usize,
    target: Money,
    period: u64,
}

/// The config with everything resolved: regexes, extensions, the hashing key.
pub struct Compiled {
    ops: Vec<OpSpec>,
    customer_attr: Option<String>,
    tier_attr: String,
    order_attr: String,
    items_attr: String,
    dims: Vec<(String, String, Option<String>)>,
    state: Option<Arc<BusinessState>>,
    prices: Option<(Arc<Lookup>, String)>,
    hasher: Option<KeyedHasher>,
    lateness: u64,
    dedup_window: u64,
    dedup_max: usize,
    max_pending: usize,
    max_keys: usize,
    exact_limit: usize,
    window: u64,
    thresholds: Thresholds,
    detection: Detection,
    baseline: BaselineParams,
    retry_window: u64,
    latency_factor: f64,
    latency_min_samples: u64,
    /// How far back unattributed failures are kept for an incident that opens later.
    recent_ns: u64,
    top_causes: usize,
    goals: Vec<GoalSpec>,
    buckets: Vec<f64>,
    max_series: usize,
    max_records: usize,
    max_incidents: usize,
    windows_retained: usize,
    /// `trace_context` and the attributes its records keep.
    trace: Option<(TraceContextConfig, Vec<String>)>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").field("operations", &self.ops.len()).finish()
    }
}

impl Compiled {
    /// Compiles a validated config. `state` and `prices` are the extensions it names, `hasher` the key for
    /// `redact_customer`.
    pub fn new(
        cfg: &BusinessImpactConfig,
        state: Option<Arc<BusinessState>>,
        prices: Option<Arc<Lookup>>,
        hasher: Option<KeyedHasher>,
    ) -> Result<Compiled, ComponentError> {
        let mut ops = Vec::new();
        for o in &cfg.operations {
            let regex = match &o.span_name_regex {
                Some(r) => Some(Regex::new(r).map_err(|e| ComponentError::Config(e.to_string()))?),
                None => None,
            };
            let mut conditions = Vec::new();
            for c in &o.failure.when {
                conditions.push(CompiledCondition::new(
                    Condition::parse(c).map_err(ComponentError::Config)?,
                ));
            }
            ops.push(OpSpec {
                name: o.name.clone(),
                services: o.service.as_ref().map(|s| s.to_vec()).unwrap_or_default(),
                span_names: o.span_name.as_ref().map(|s| s.to_vec()).unwrap_or_default(),
                regex,
                attributes: o.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                on_error: o.failure.on_status_error,
                conditions,
                value: o.value.clone().unwrap_or_else(|| cfg.value.clone()),
                key: o.business_key.clone().unwrap_or_else(|| cfg.business_key.clone()),
            });
        }
        let goals = cfg
            .goals
            .iter()
            .filter_map(|g| {
                Some(GoalSpec {
                    name: g.name.clone(),
                    op: cfg.operations.iter().position(|o| o.name == g.operation)?,
                    target: g.target.0,
                    period: ns(g.period).max(1),
                })
            })
            .collect();
        let interval = ns(cfg.incident.evaluation_interval).max(1);
        let trace = cfg.trace_context.enabled.then(|| {
            let keys = if cfg.trace_context.attributes.is_empty() {
                trace_keys(cfg, &ops)
            } else {
                cfg.trace_context.attributes.clone()
            };
            (cfg.trace_context.clone(), keys)
        });
        let inc = &cfg.incident;
        let baseline = BaselineParams {
            interval_ns: interval,
            h: inc.cusum_threshold,
            ratio: inc.detect_ratio,
            shift: inc.detect_shift,
            max_rate: 0.5,
            half_life_intervals: ns(inc.baseline_half_life) as f64 / interval as f64,
            prior_rate: inc.baseline_prior,
            prior_weight: inc.baseline_prior_operations,
            floor: inc.min_baseline,
            alpha: inc.interval_alpha,
            normal_alpha: 0.2,
            close_intervals: inc.close_intervals,
        };
        Ok(Compiled {
            detection: inc.detection,
            baseline,
            retry_window: ns(inc.retry_window),
            latency_factor: inc.latency_factor,
            latency_min_samples: inc.latency_min_samples,
            recent_ns: ns(inc.window).max(interval.saturating_mul(super::incident::HISTORY as u64)),
            ops,
            customer_attr: cfg.customer_attribute.clone(),
            tier_attr: cfg.tier_attribute.clone(),
            order_attr: cfg.order_attribute.clone(),
            items_attr: cfg.items_attribute.clone(),
            dims: cfg.dimensions.iter().map(|d| d.parts()).collect(),
            state,
            prices: prices.map(|p| (p, cfg.prices.as_ref().map(|p| p.column.clone()).unwrap_or_default())),
            hasher,
            lateness: ns(cfg.allowed_lateness),
            dedup_window: ns(cfg.dedup_window).max(1),
            dedup_max: cfg.dedup_max_spans.max(1),
            max_pending: cfg.max_pending_spans.max(1),
            max_keys: cfg.max_keys.max(1),
            exact_limit: cfg.distinct_exact_limit,
            window: ns(cfg.dedup_window).max(1),
            thresholds: Thresholds {
                interval_ns: interval,
                window_buckets: (ns(cfg.incident.window) / interval).max(1),
                open: cfg.incident.open_threshold,
                close: cfg.incident.close_threshold,
                min_operations: cfg.incident.min_operations,
            },
            top_causes: cfg.incident.top_causes,
            goals,
            buckets: cfg.duration_buckets.clone(),
            max_series: cfg.max_series.max(1),
            max_records: cfg.impact.max_records,
            max_incidents: cfg.incident.max_retained,
            windows_retained: cfg.impact.windows_retained,
            trace,
        })
    }

    fn detector(&self) -> Detector {
        match self.detection {
            Detection::Baseline => Detector::Baseline(Box::new(BaselineDetector::new(self.baseline))),
            Detection::Threshold => Detector::Threshold(ThresholdDetector::new(self.thresholds)),
        }
    }

    /// Names of the operations, in configured order.
    pub fn operation_names(&self) -> Vec<String> {
        self.ops.iter().map(|o| o.name.clone()).collect()
    }

    /// The dimension label names, in configured order.
    pub fn dimension_names(&self) -> impl Iterator<Item = &str> {
        self.dims.iter().map(|(n, _, _)| n.as_str())
    }
}

/// A counter kept locally (for tests and the API) and as self-telemetry.
#[derive(Debug, Clone)]
pub struct Count {
    local: u64,
    metric: Counter,
}

impl Count {
    fn new(name: &'static str, connector: &str, label: (&'static str, &'static str)) -> Self {
        Count {
            local: 0,
            metric: counter!(name, "connector" => connector.to_string(), label.0 => label.1),
        }
    }
    fn add(&mut self, n: u64) {
        if n > 0 {
            self.local += n;
            self.metric.increment(n);
        }
    }
    pub fn get(&self) -> u64 {
        self.local
    }
}

/// Self-telemetry of the engine.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Operations finalized.
    pub operations: Count,
    pub duplicates: Count,
    pub late: Count,
    /// Operations finalized early because `max_pending_spans` was reached.
    pub forced: Count,
    pub missing_key: Count,
    pub missing_value: Count,
    pub invalid_value: Count,
    /// Episodes forgotten because `max_keys` was reached (counted as lost).
    pub evicted_keys: Count,
    /// Span ids forgotten early because `dedup_max_spans` was reached.
    pub evicted_span_ids: Count,
    pub overflowed_points: Count,
}

/// Counters in [`Stats`].
const STATS: usize = 10;

impl Stats {
    fn all(&mut self) -> [&mut Count; STATS] {
        [
            &mut self.operations,
            &mut self.duplicates,
            &mut self.late,
            &mut self.forced,
            &mut self.missing_key,
            &mut self.missing_value,
            &mut self.invalid_value,
            &mut self.evicted_keys,
            &mut self.evicted_span_ids,
            &mut self.overflowed_points,
        ]
    }

    /// The counts, for a snapshot.
    fn counts(&self) -> [u64; STATS] {
        let mut s = self.clone();
        s.all().map(|c| c.local)
    }

    /// Adds a snapshot's counts (to the self-telemetry too, as re-applying the input would).
    fn restore(&mut self, counts: [u64; STATS]) {
        for (c, n) in self.all().into_iter().zip(counts) {
            c.add(n);
        }
    }

    fn new(connector: &str) -> Self {
        let dropped = "bizpilot_connector_business_impact_dropped_spans_total";
        let missing = "bizpilot_connector_business_impact_missing_total";
        let evicted = "bizpilot_connector_business_impact_evictions_total";
        Stats {
            operations: Count::new(
                "bizpilot_connector_business_impact_operations_total",
                connector,
                ("kind", "finalized"),
            ),
            duplicates: Count::new(dropped, connector, ("reason", "duplicate")),
            late: Count::new(dropped, connector, ("reason", "late")),
            forced: Count::new(
                "bizpilot_connector_business_impact_operations_total",
                connector,
                ("kind", "forced"),
            ),
            missing_key: Count::new(missing, connector, ("field", "business_key")),
            missing_value: Count::new(missing, connector, ("field", "value")),
            invalid_value: Count::new(missing, connector, ("field", "invalid_value")),
            evicted_keys: Count::new(evicted, connector, ("what", "business_key")),
            evicted_span_ids: Count::new(evicted, connector, ("what", "span_id")),
            overflowed_points: Count::new(
                "bizpilot_connector_business_impact_overflowed_points_total",
                connector,
                ("kind", "dimensions"),
            ),
        }
    }
}

pub(super) fn id16(b: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (d, s) in out.iter_mut().zip(b) {
        *d = *s;
    }
    out
}

pub(super) fn id8(b: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (d, s) in out.iter_mut().zip(b) {
        *d = *s;
    }
    out
}

/// A pending operation in the heap, ordered by (event time, arrival).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Pending(Packed);

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.0.time, self.0.seq) == (o.0.time, o.0.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    // Reversed: the heap's top is the oldest.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.0.time, o.0.seq).cmp(&(self.0.time, self.0.seq))
    }
}

/// An ERROR span, kept to find the root cause of a failure in the same trace.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ErrorSpan {
    span_id: [u8; 8],
    parent: [u8; 8],
    cause: Cause,
}

/// A trace's ERROR spans, shared with a snapshot's copy (a change makes a new list).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
struct ErrorSpans(#[serde(with = "super::snapshot::shared")] Arc<[ErrorSpan]>);

/// ERROR spans by trace, bounded.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct RootCauses {
    /// (newest time, its ERROR spans), the spans shared with a snapshot's copy.
    by_trace: HashMap<[u8; 16], (u64, ErrorSpans)>,
    order: VecDeque<[u8; 16]>,
}

const MAX_ERROR_TRACES: usize = 100_000;
const MAX_ERRORS_PER_TRACE: usize = 16;

impl RootCauses {
    fn observe(&mut self, trace: [u8; 16], time: u64, e: ErrorSpan) {
        let entry = self.by_trace.entry(trace).or_insert_with(|| {
            self.order.push_back(trace);
            (time, ErrorSpans(Arc::from([])))
        });
        entry.0 = entry.0.max(time);
        let errs = &mut entry.1.0;
        if errs.len() < MAX_ERRORS_PER_TRACE && !errs.iter().any(|x| x.span_id == e.span_id) {
            let mut more = Vec::with_capacity(errs.len() + 1);
            more.extend_from_slice(errs);
            more.push(e);
            *errs = Arc::from(more);
        }
        while self.by_trace.len() > MAX_ERROR_TRACES {
            let Some(t) = self.order.pop_front() else { break };
            self.by_trace.remove(&t);
        }
    }

    /// The deepest ERROR span of the trace: one that is no other ERROR span's parent.
    fn root(&self, trace: &[u8; 16]) -> Option<Cause> {
        let errs = &self.by_trace.get(trace)?.1.0;
        errs.iter()
            .find(|e| !errs.iter().any(|c| c.parent == e.span_id))
            .map(|e| e.cause.clone())
    }

    fn expire(&mut self, before: u64) {
        while let Some(t) = self.order.front() {
            match self.by_trace.get(t) {
                Some((time, _)) if *time >= before => break,
                _ => {
                    if let Some(t) = self.order.pop_front() {
                        self.by_trace.remove(&t);
                    }
                }
            }
        }
    }
}

/// A revenue-at-risk episode of one business key (see shopgen's ground truth for the definition).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Episode {
    epi: u64,
    end: u64,
    value: Option<Money>,
    series: u32,
    failures: u32,
    /// Event time of its latest failure (failures closer than `incident.retry_window` are retries).
    last_failure: u64,
    /// Impact records of the failures in it.
    records: Vec<u64>,
}

/// A finalized failure kept for the trailing incident window.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct FailureRec {
    time: u64,
    key: Box<str>,
    customer: Option<Box<str>>,
    tier: Option<Box<str>>,
    order: Option<Box<str>>,
    items: Option<i64>,
    value: Option<Money>,
    trace: [u8; 16],
    span: [u8; 8],
    failure: Cause,
    root: Option<Cause>,
    episode: u64,
}

/// A goal's current period.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GoalState {
    pub name: String,
    pub op: usize,
    pub target: Money,
    pub period: u64,
    pub period_start: Option<u64>,
    pub achieved: Money,
}

impl GoalState {
    /// (attainment so far, projected attainment at the period's end) at event time `now`.
    pub fn attainment(&self, now: u64) -> (f64, f64) {
        let target = self.target.nanos() as f64;
        if target <= 0.0 {
            return (0.0, 0.0);
        }
        let so_far = self.achieved.nanos() as f64 / target;
        let Some(start) = self.period_start else {
            return (0.0, 0.0);
        };
        let elapsed = now.saturating_sub(start).min(self.period);
        let projected = if elapsed == 0 {
            so_far
        } else {
            so_far * self.period as f64 / elapsed as f64
        };
        (so_far, projected)
    }

    /// Revenue projected at the period's end at event time `now`, exactly: achieved × period ÷ elapsed
    /// (the achieved revenue itself before the period has started or when the result does not fit).
    pub fn projected(&self, now: u64) -> Money {
        let Some(start) = self.period_start else {
            return self.achieved;
        };
        let elapsed = now.saturating_sub(start).min(self.period);
        if elapsed == 0 {
            return self.achieved;
        }
        let total = self.achieved.nanos() * i128::from(self.period) / i128::from(elapsed);
        let (units, nanos) = (total / 1_000_000_000, total % 1_000_000_000);
        match (i64::try_from(units), i32::try_from(nanos)) {
            (Ok(u), Ok(n)) => Money::from_units_nanos(u, n, self.achieved.currency()).unwrap_or(self.achieved),
            _ => self.achieved,
        }
    }
}

/// Per-operation state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OpState {
    pub operations: u64,
    pub successful: u64,
    pub failed: u64,
    #[serde(with = "super::snapshot::money_totals")]
    pub revenue: MoneyTotals,
    #[serde(with = "super::snapshot::money_totals")]
    pub at_risk: MoneyTotals,
    #[serde(with = "super::snapshot::money_totals")]
    pub recovered: MoneyTotals,
    #[serde(with = "super::snapshot::money_totals")]
    pub lost: MoneyTotals,
    episodes: HashMap<Box<str>, Episode>,
    expiry: VecDeque<(u64, Box<str>, u64)>,
    recently_recovered: HashMap<u64, u64>,
    recovered_order: VecDeque<(u64, u64)>,
    /// (window index, distinct affected customers).
    window: Option<(u64, Distinct)>,
    closed_windows: VecDeque<WindowCount>,
    detector: Detector,
    /// Failures no incident covered, with their impact record, for an incident that opens later.
    recent: VecDeque<(FailureRec, u64)>,
    incident: Option<u64>,
    /// Slow operations (latency incidents): the typical duration, the detector, the open incident.
    durations: LogScale,
    latency: Detector,
    latency_incident: Option<u64>,
    /// Figures of the operations still pending.
    prov: ProvState,
}

/// Pending operations' figures, kept as they are pushed and finalized.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProvState {
    pub operations: u64,
    pub failed: u64,
    #[serde(with = "super::snapshot::money_totals")]
    pub revenue: MoneyTotals,
    #[serde(with = "super::snapshot::money_totals")]
    pub at_risk: MoneyTotals,
    failed_keys: HashMap<Box<str>, u32>,
}

impl ProvState {
    /// Distinct customers with a pending failure.
    pub fn affected_customers(&self) -> u64 {
        self.failed_keys.len() as u64
    }
}

/// What a snapshot of the engine holds ([`Engine::state`]), by name (format `business_impact/snapshot/2`; format 1
/// was the same fields as a positional tuple, and still restores).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct State {
    watermark: u64,
    max_event: u64,
    seq: u64,
    last_eval: Option<u64>,
    next_gen: u64,
    next_record: u64,
    next_incident: u64,
    dirty: bool,
    pending: BinaryHeap<Pending>,
    dedup: SpanIds,
    series: SeriesTable,
    ops: Vec<OpState>,
    goals: Vec<GoalState>,
    causes: RootCauses,
    book: Book,
    counts: [u64; STATS],
    trace: Option<trace::Saved>,
}

impl State {
    /// The snapshot's bytes ([`super::snapshot`]) for the configuration of `fingerprint`.
    pub fn encode(&self, fingerprint: u64) -> Result<Vec<u8>, SnapshotError> {
        snapshot::encode(fingerprint, self)
    }

    /// [`State::encode`], in the journal's snapshot parts (stored as they are: no buffer regrown or copied).
    pub fn encode_parts(&self, fingerprint: u64) -> Result<bizpilot_core::storage::SnapshotParts, SnapshotError> {
        snapshot::encode_parts(fingerprint, self)
    }
}

/// The engine.
pub struct Engine {
    c: Compiled,
    /// Operations older than this are final.
    watermark: u64,
    max_event: u64,
    seq: u64,
    pending: BinaryHeap<Pending>,
    dedup: SpanIds,
    pub(super) series: SeriesTable,
    pub(super) ops: Vec<OpState>,
    pub(super) goals: Vec<GoalState>,
    causes: RootCauses,
    last_eval: Option<u64>,
    next_gen: u64,
    next_record: u64,
    next_incident: u64,
    book: Arc<Mutex<Book>>,
    logs: Vec<LogRecord>,
    now_ns: u64,
    stats: Stats,
    dirty: bool,
    trace: Option<TraceContext>,
    /// With a journal: what the engine reads of each request, as its record ([`super::compact`]).
    capture: Option<Capture>,
}

fn lock(b: &Mutex<Book>) -> MutexGuard<'_, Book> {
    b.lock().unwrap_or_else(PoisonError::into_inner)
}

fn add_totals(t: &mut MoneyTotals, m: Option<Money>) {
    if let Some(m) = m
        && t.add(m).is_err()
    {
        tracing::warn!("a money total of the business_impact connector overflowed; value dropped");
    }
}

impl Engine {
    pub fn new(c: Compiled, connector: &str) -> Self {
        let n = c.ops.len();
        let c_trace = c.trace.clone();
        let dedup = SpanIds::new(c.dedup_window);
        let book = Arc::new(Mutex::new(Book::new(
            c.operation_names(),
            c.max_records,
            c.max_incidents,
        )));
        let ops = (0..n)
            .map(|_| OpState {
                operations: 0,
                successful: 0,
                failed: 0,
                revenue: MoneyTotals::default(),
                at_risk: MoneyTotals::default(),
                recovered: MoneyTotals::default(),
                lost: MoneyTotals::default(),
                episodes: HashMap::new(),
                expiry: VecDeque::new(),
                recently_recovered: HashMap::new(),
                recovered_order: VecDeque::new(),
                window: None,
                closed_windows: VecDeque::new(),
                detector: c.detector(),
                recent: VecDeque::new(),
                incident: None,
                durations: LogScale::new(10_000, 2.0),
                latency: c.detector(),
                latency_incident: None,
                prov: ProvState::default(),
            })
            .collect();
        let goals = c
            .goals
            .iter()
            .map(|g| GoalState {
                name: g.name.clone(),
                op: g.op,
                target: g.target,
                period: g.period,
                period_start: None,
                achieved: Money::zero(g.target.currency()),
            })
            .collect();
        Engine {
            series: SeriesTable::new(n, c.max_series, c.buckets.clone()),
            c,
            watermark: 0,
            max_event: 0,
            seq: 0,
            pending: BinaryHeap::new(),
            dedup,
            ops,
            goals,
            causes: RootCauses::default(),
            last_eval: None,
            next_gen: 0,
            next_record: 1,
            next_incident: 1,
            book,
            logs: Vec::new(),
            now_ns: 0,
            stats: Stats::new(connector),
            dirty: true,
            trace: c_trace.map(|(cfg, keys)| TraceContext::new(&cfg, keys, connector)),
            capture: None,
        }
    }

    /// The attribute keys the engine may read of a span or its resource (a journal record keeps these only).
    pub(super) fn read_keys(&self) -> Vec<String> {
        let c = &self.c;
        let mut keys = Vec::new();
        for o in &c.ops {
            keys.extend(o.attributes.iter().map(|(k, _)| k.clone()));
            keys.extend(o.conditions.iter().map(|c| c.attribute.clone()));
            keys.push(o.key.clone());
            keys.push(o.value.attribute.clone());
            keys.push(o.value.currency_attribute.clone());
        }
        keys.extend(c.customer_attr.clone());
        keys.push(c.tier_attr.clone());
        keys.push(c.order_attr.clone());
        keys.push(c.items_attr.clone());
        keys.extend(c.dims.iter().map(|(_, src, _)| src.clone()));
        if let Some((_, tk)) = &c.trace {
            keys.extend(tk.iter().cloned());
        }
        compact::read_keys(keys)
    }

    /// From now on, records what the engine reads of each request ([`Engine::captured`]).
    pub fn capture_input(&mut self) {
        let trace_keys = self.trace.as_ref().map(|t| t.keys().to_vec()).unwrap_or_default();
        self.capture = Some(Capture::new(self.read_keys(), &trace_keys));
    }

    /// The record of the last request ingested (with [`Engine::capture_input`]); `None` when it changed nothing
    /// the engine reads.
    pub fn captured(&self) -> Option<&[u8]> {
        self.capture.as_ref().and_then(Capture::record)
    }

    /// The engine's state as a snapshot ([`super::snapshot`]), for the configuration of `fingerprint` (see
    /// [`Engine::state`]).
    pub fn save(&self, fingerprint: u64) -> Result<Vec<u8>, SnapshotError> {
        self.state().encode(fingerprint)
    }

    /// A copy of everything the engine's figures and its future depend on (pending operations, span ids, series,
    /// per-operation state, goals, root causes, the API's book, counters, trace records); not the configuration,
    /// the extensions, or the logs not yet taken. Taken on the connector's thread and encoded
    /// ([`State::encode`]) on another, so that a snapshot holds the connector only for the copy.
    pub fn state(&self) -> State {
        let book = lock(&self.book).clone();
        State {
            watermark: self.watermark,
            max_event: self.max_event,
            seq: self.seq,
            last_eval: self.last_eval,
            next_gen: self.next_gen,
            next_record: self.next_record,
            next_incident: self.next_incident,
            dirty: self.dirty,
            pending: self.pending.clone(),
            dedup: self.dedup.clone(),
            series: self.series.clone(),
            ops: self.ops.clone(),
            goals: self.goals.clone(),
            causes: self.causes.clone(),
            book,
            counts: self.stats.counts(),
            trace: self.trace.as_ref().map(TraceContext::save),
        }
    }

    /// The snapshot as format 1 wrote it (a positional tuple of the same state), to test that it still restores.
    #[cfg(test)]
    pub(super) fn save_v1(&self, fingerprint: u64) -> Result<Vec<u8>, SnapshotError> {
        let s = self.state();
        let scalars = (
            s.watermark,
            s.max_event,
            s.seq,
            s.last_eval,
            s.next_gen,
            s.next_record,
            s.next_incident,
            s.dirty,
        );
        snapshot::encode_as(
            snapshot::FORMAT_V1,
            fingerprint,
            &(
                scalars, s.pending, s.dedup, s.series, s.ops, s.goals, s.causes, s.book, s.counts, s.trace,
            ),
        )
    }

    /// Per part of [`Engine::state`]: (name, time to copy it, bytes of its CBOR), for the docs' breakdown.
    #[cfg(test)]
    pub(super) fn state_breakdown(&self) -> Vec<(&'static str, std::time::Duration, usize)> {
        fn part<T: Clone + serde::Serialize>(name: &'static str, v: &T) -> (&'static str, std::time::Duration, usize) {
            let t = std::time::Instant::now();
            let c = v.clone();
            let took = t.elapsed();
            let mut out = Vec::new();
            let _ = ciborium::into_writer(&c, &mut out);
            (name, took, out.len())
        }
        let book = lock(&self.book);
        vec![
            part("pending", &self.pending),
            part("dedup", &self.dedup),
            part("series", &self.series),
            part("ops", &self.ops),
            part("causes", &self.causes),
            part("book", &*book),
            part("trace", &self.trace.as_ref().map(TraceContext::save)),
        ]
    }

    /// Takes the state of a snapshot [`Engine::save`] wrote under the same configuration (`fingerprint`), of this
    /// format or the previous one (`business_impact/snapshot/1`, a positional tuple). On an error the engine is
    /// unchanged.
    pub fn load(&mut self, fingerprint: u64, bytes: &[u8]) -> Result<(), SnapshotError> {
        type SavedV1 = (
            (u64, u64, u64, Option<u64>, u64, u64, u64, bool),
            BinaryHeap<Pending>,
            SpanIds,
            SeriesTable,
            Vec<OpState>,
            Vec<GoalState>,
            RootCauses,
            Book,
            [u64; STATS],
            Option<trace::Saved>,
        );
        let state = match snapshot::version(fingerprint, bytes)? {
            snapshot::Version::V1(body) => {
                let (scalars, pending, dedup, series, ops, goals, causes, book, counts, trace): SavedV1 =
                    snapshot::cbor(body)?;
                let (watermark, max_event, seq, last_eval, next_gen, next_record, next_incident, dirty) = scalars;
                State {
                    watermark,
                    max_event,
                    seq,
                    last_eval,
                    next_gen,
                    next_record,
                    next_incident,
                    dirty,
                    pending,
                    dedup,
                    series,
                    ops,
                    goals,
                    causes,
                    book,
                    counts,
                    trace,
                }
            }
            snapshot::Version::Current(body) => snapshot::cbor(body)?,
        };
        if state.ops.len() != self.ops.len()
            || state.goals.len() != self.goals.len()
            || state.trace.is_some() != self.trace.is_some()
        {
            return Err(SnapshotError::Shape(format!(
                "{} operations, {} goals, trace_context {}",
                state.ops.len(),
                state.goals.len(),
                state.trace.is_some()
            )));
        }
        self.watermark = state.watermark;
        self.max_event = state.max_event;
        self.seq = state.seq;
        self.last_eval = state.last_eval;
        self.next_gen = state.next_gen;
        self.next_record = state.next_record;
        self.next_incident = state.next_incident;
        self.dirty = state.dirty;
        self.pending = state.pending;
        self.dedup = state.dedup;
        self.series = state.series;
        self.ops = state.ops;
        self.goals = state.goals;
        self.causes = state.causes;
        *lock(&self.book) = state.book;
        self.stats.restore(state.counts);
        if let (Some(t), Some(saved)) = (self.trace.as_mut(), state.trace) {
            t.load(saved);
        }
        Ok(())
    }

    /// Applies a request's record as [`Engine::ingest`] applied the request it came from. A record that cannot be
    /// read changes nothing.
    pub fn ingest_record(&mut self, record: &[u8], keys: &[String]) -> Result<(), compact::CompactError> {
        let req = compact::Request::parse(record, keys)?;
        let mut newest = self.max_event;
        for span in &req.spans {
            match span.res.and_then(|r| req.resources.get(r)) {
                Some(res) => self.observe(span, res, &res.service, &mut newest),
                None => self.observe_traced(span, &mut newest),
            }
        }
        self.finish_ingest(newest.max(req.newest));
        Ok(())
    }

    /// The findings shared with the HTTP API.
    pub fn book(&self) -> Arc<Mutex<Book>> {
        self.book.clone()
    }

    pub fn compiled(&self) -> &Compiled {
        &self.c
    }

    /// Counters of `trace_context` (when enabled).
    pub fn trace_stats(&self) -> Option<&trace::TraceStats> {
        self.trace.as_ref().map(|t| &t.stats)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Event time up to which everything is final.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// The newest event time seen.
    pub fn max_event_time(&self) -> u64 {
        self.max_event
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Span ids currently remembered for duplicate detection.
    pub fn remembered_span_ids(&self) -> usize {
        self.dedup.len()
    }

    /// Trace records `trace_context` holds (0 without it).
    pub fn trace_records(&self) -> usize {
        self.trace.as_ref().map_or(0, TraceContext::len)
    }

    /// Bytes held by the pending operations' records (their fixed parts and variable parts).
    pub fn pending_bytes(&self) -> usize {
        self.pending.iter().map(|p| p.0.bytes()).sum()
    }

    /// Business keys with an active episode, over all operations.
    pub fn active_keys(&self) -> usize {
        self.ops.iter().map(|o| o.episodes.len()).sum()
    }

    /// Wall-clock time (Unix ns) stamped on records as their observed time.
    pub fn set_now(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }

    /// Impact and incident records produced since the last call.
    pub fn take_logs(&mut self) -> Vec<LogRecord> {
        std::mem::take(&mut self.logs)
    }

    /// The currency of an operation's value.
    fn currency_of<S: SpanRead + ?Sized, R: ResRead + ?Sized>(
        spec: &ValueConfig,
        span: &S,
        res: &R,
    ) -> Option<Currency> {
        attr(span, res, &spec.currency_attribute)
            .and_then(|v| v.as_text())
            .and_then(|s| Currency::new(&s).ok())
            .or(spec.default_currency)
    }

    /// Reads the spans of one decoded request.
    pub fn ingest(&mut self, req: &ExportTraceServiceRequest) {
        let mut newest = self.max_event;
        if let Some(c) = self.capture.as_mut() {
            c.begin(newest);
        }
        for rs in &req.resource_spans {
            let res: &[KeyValue] = rs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]);
            let service = attrs::get_str(res, "service.name").unwrap_or("");
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    self.observe(span, res, service, &mut newest);
                }
            }
        }
        self.finish_ingest(newest);
    }

    /// Reads the spans of one encoded `ExportTraceServiceRequest` through zero-copy views
    /// ([`view::for_each_span`]), with exactly the semantics of [`Engine::ingest`]: a span is parsed
    /// in one walk over its fields, attributes are read only for matched operations and ERROR spans,
    /// and only what the engine keeps is allocated.
    pub fn ingest_encoded(&mut self, request: &[u8]) {
        let mut newest = self.max_event;
        if let Some(c) = self.capture.as_mut() {
            c.begin(newest);
        }
        let mut services = ServiceCache::default();
        view::for_each_span(request, |res, span| {
            let service = services.of(res);
            self.observe(span, res, service, &mut newest);
        });
        self.finish_ingest(newest);
    }

    /// Reads the spans of `t` by the cheaper path for the form it is held in: decoded structs when
    /// it holds them (e.g. from the OTLP/JSON receiver), else views over its encoding (never decoded).
    pub fn ingest_traces(&mut self, t: &mut Traces) {
        if let Some(req) = t.decoded() {
            self.ingest(req);
            return;
        }
        let mut newest = self.max_event;
        if let Some(c) = self.capture.as_mut() {
            c.begin(newest);
        }
        let mut services = ServiceCache::default();
        t.for_each_span(|res, span| {
            let service = services.of(res);
            self.observe(span, res, service, &mut newest);
        });
        self.finish_ingest(newest);
    }

    /// One span of a request: its event time, its root-cause record if ERROR, the operations it is.
    fn observe<S: SpanRead + ?Sized, R: ResRead + ?Sized>(
        &mut self,
        span: &S,
        res: &R,
        service: &str,
        newest: &mut u64,
    ) {
        let t = if span.end_time() != 0 {
            span.end_time()
        } else {
            span.start_time()
        };
        if t == 0 {
            return;
        }
        *newest = (*newest).max(t);
        if span.is_error() {
            self.causes.observe(
                id16(span.trace_id()),
                t,
                ErrorSpan {
                    span_id: id8(span.span_id()),
                    parent: id8(span.parent_span_id()),
                    cause: Cause {
                        service: service.to_string(),
                        span_name: span.name().to_string(),
                        status_message: span.status_message().to_string(),
                    },
                },
            );
        }
        if let Some(tc) = self.trace.as_mut() {
            match self.capture.as_mut() {
                // The journal records what the trace context reads, as it reads it.
                Some(c) => {
                    c.begin_span();
                    tc.observe_seen(span, t, |i, v| c.trace_attr(i, v));
                }
                None => tc.observe(span, t),
            }
        }
        let matched = self.ingest_span(span, res, service, t);
        if let Some(c) = self.capture.as_mut() {
            if matched || span.is_error() {
                c.span(span, res, service);
            } else if self.trace.is_some() {
                c.traced(span);
            }
        }
    }

    /// A span that is neither ERROR nor an operation, read back from the journal: only its trace's record reads
    /// it (what [`Engine::observe`] did with it).
    fn observe_traced<S: SpanRead + ?Sized>(&mut self, span: &S, newest: &mut u64) {
        let t = if span.end_time() != 0 {
            span.end_time()
        } else {
            span.start_time()
        };
        if t == 0 {
            return;
        }
        *newest = (*newest).max(t);
        if let Some(tc) = self.trace.as_mut() {
            tc.observe(span, t);
        }
    }

    /// After the spans of a request: move the watermark, bound the pending operations.
    fn finish_ingest(&mut self, newest: u64) {
        if let Some(c) = self.capture.as_mut() {
            c.finish(newest);
        }
        self.max_event = newest;
        self.advance_to(newest.saturating_sub(self.c.lateness));
        while self.pending.len() > self.c.max_pending {
            let Some(t) = self.pending.peek().map(|p| p.0.time) else {
                break;
            };
            let before = self.pending.len();
            self.advance_to(t.saturating_add(1));
            self.stats.forced.add((before - self.pending.len()) as u64);
        }
        self.sync_book();
    }

    /// Whether the span is an operation (whatever became of it).
    fn ingest_span<S: SpanRead + ?Sized, R: ResRead + ?Sized>(
        &mut self,
        span: &S,
        res: &R,
        service: &str,
        t: u64,
    ) -> bool {
        let mut checked = false;
        for i in 0..self.c.ops.len() {
            let spec = &self.c.ops[i];
            if !spec.matches(span, res, service) {
                continue;
            }
            let (trace_id, span_id) = (id16(span.trace_id()), id8(span.span_id()));
            let hash = self.dedup.hash(&trace_id, &span_id);
            if !checked {
                checked = true;
                // Older than the watermark: dropped either way; remembered ids only say why.
                if self.dedup.is_pending(hash)
                    || (t < self.watermark && self.dedup.was_finalized(t, hash, self.watermark))
                {
                    self.stats.duplicates.add(1);
                    return true;
                }
                if t < self.watermark {
                    self.stats.late.add(1);
                    return true;
                }
                self.dedup.insert_pending(hash);
            }
            let success = !spec.failed(span, res);
            let a = span;
            // With trace_context, the value, its currency and the dimensions are resolved at finalization.
            let unresolved = self.trace.is_some().then(|| {
                Box::new(trace::Unresolved {
                    trace: id16(span.trace_id()),
                    value: attr(a, res, &spec.value.attribute).map(|v| v.to_value()),
                    currency: attr_string(a, res, &spec.value.currency_attribute),
                    dims: self.c.dims.iter().map(|(_, src, _)| attr_string(a, res, src)).collect(),
                })
            });
            let mut key = attr_string(a, res, &spec.key);
            if key.is_none()
                && let (Some(tc), Some(u)) = (self.trace.as_ref(), unresolved.as_ref())
            {
                key = tc.text(&u.trace, &spec.key);
            }
            let customer = match &self.c.customer_attr {
                Some(k) => attr_string(a, res, k),
                None => key.clone(),
            };
            let value = match attr(a, res, &spec.value.attribute).filter(|_| unresolved.is_none()) {
                Some(v) => match amount::money_from_ref(&v, Self::currency_of(&spec.value, a, res)) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        self.stats.invalid_value.add(1);
                        None
                    }
                },
                None => None,
            };
            let dims: Box<[Box<str>]> = self
                .c
                .dims
                .iter()
                .map(|(_, src, default)| {
                    attr_string(a, res, src)
                        .or_else(|| default.as_deref().map(Box::from))
                        .unwrap_or_default()
                })
                .collect();
            let series = if unresolved.is_some() {
                0
            } else {
                self.series.resolve(i, dims)
            };
            let failure = (!success).then(|| {
                Box::new(Cause {
                    service: service.to_string(),
                    span_name: span.name().to_string(),
                    status_message: span.status_message().to_string(),
                })
            });
            let duration_ns = span.end_time().saturating_sub(span.start_time());
            let order = attr_string(a, res, &self.c.order_attr);
            let now = unresolved
                .as_ref()
                .and_then(|u| Self::trace_money(self.trace.as_ref(), spec, u))
                .and_then(Result::ok);
            let prov_value = value.or(now).or_else(|| {
                if spec.value.from_state {
                    self.state_value(order.as_deref(), spec.value.default_currency)
                } else {
                    None
                }
            });
            let has_episode = key.as_ref().is_some_and(|k| self.ops[i].episodes.contains_key(k));
            let prov = &mut self.ops[i].prov;
            prov.operations += 1;
            let mut prov_risk = false;
            if success {
                add_totals(&mut prov.revenue, prov_value);
            } else {
                prov.failed += 1;
                let first = match &key {
                    Some(k) => {
                        let n = prov.failed_keys.entry(k.clone()).or_default();
                        *n += 1;
                        *n == 1 && !has_episode
                    }
                    None => true,
                };
                if first && prov_value.is_some() {
                    prov_risk = true;
                    add_totals(&mut prov.at_risk, prov_value);
                }
            }
            self.seq += 1;
            self.pending.push(Pending(Packed::pack(OpRec {
                time: t,
                seq: self.seq,
                op: i,
                success,
                duration_ns,
                trace: trace_id,
                span: span_id,
                hash,
                key,
                customer,
                tier: attr_string(a, res, &self.c.tier_attr),
                order,
                items: attr(a, res, &self.c.items_attr).and_then(|v| v.as_i64()),
                value,
                series,
                failure,
                unresolved,
                prov_value,
                prov_risk,
            })));
        }
        checked
    }

    /// Called while no span arrives: after `idle_for` ≥ `idle_timeout`, everything seen is final (the watermark
    /// moves just past the newest span; it does not follow the wall clock, so replayed or simulated time is safe).
    pub fn idle(&mut self, idle_for: std::time::Duration, idle_timeout: std::time::Duration) {
        if idle_for < idle_timeout || self.max_event == 0 {
            return;
        }
        self.advance_to(self.max_event.saturating_add(1));
        self.sync_book();
    }

    /// Finalizes everything seen (at shutdown).
    pub fn flush(&mut self) {
        if self.max_event > 0 {
            self.advance_to(self.max_event.saturating_add(1));
        }
        self.sync_book();
    }

    /// Called while no span arrives: after `idle_for` ≥ `incident.idle_timeout` (wall clock), everything seen
    /// is final and open incidents close with `closed_reason` = `idle` (event time has stopped, so it cannot
    /// show the recovery).
    /// The last interval is evaluated first (the watermark moves to its end: nothing more is coming), so
    /// failures just before the input stopped still open an incident, which then closes at once.
    pub fn idle_close(&mut self, idle_for: std::time::Duration, incident_idle: std::time::Duration) {
        if idle_for < incident_idle || self.max_event == 0 {
            return;
        }
        let interval = self.c.thresholds.interval_ns;
        let next = self.max_event.saturating_add(1);
        let boundary = next.div_ceil(interval).saturating_mul(interval);
        if boundary > self.watermark {
            self.advance_to(boundary);
            self.sync_book();
        }
        if self.any_open() {
            self.close_all(CloseReason::Idle);
        }
    }

    /// Moves the watermark to `target`, finalizing every pending operation older than it.
    pub fn advance_to(&mut self, target: u64) {
        if target <= self.watermark {
            return;
        }
        while self.pending.peek().is_some_and(|p| p.0.time < target) {
            let Some(Pending(op)) = self.pending.pop() else { break };
            self.advance_time(op.time);
            self.finalize(op.unpack());
        }
        self.advance_time(target);
        self.watermark = target;
        // Span ids: forget those well behind the watermark, and the oldest beyond the bound.
        let evicted = self.dedup.expire(target, self.c.dedup_max);
        self.stats.evicted_span_ids.add(evicted);
        self.causes
            .expire(target.saturating_sub(self.c.lateness.max(self.c.thresholds.interval_ns)));
        if let Some(tc) = self.trace.as_mut() {
            tc.expire(target);
        }
        self.dirty = true;
    }

    /// Processes everything that happens at event times up to `t`: incident evaluations at interval boundaries
    /// `≤ t`, window and period ends, episode expiries. `t` never decreases.
    fn advance_time(&mut self, t: u64) {
        let interval = self.c.thresholds.interval_ns;
        let mut next = match self.last_eval {
            Some(l) => l.saturating_add(interval),
            None => {
                self.last_eval = Some(t - t % interval);
                u64::MAX
            }
        };
        while next <= t {
            if self
                .ops
                .iter()
                .all(|o| o.detector.is_idle() && o.latency.is_idle() && o.recent.is_empty())
            {
                // Nothing to evaluate until the next operation: jump.
                self.last_eval = Some(t - t % interval);
                break;
            }
            self.evaluate(next);
            self.last_eval = Some(next);
            next = next.saturating_add(interval);
        }
        let w = self.c.window;
        for i in 0..self.ops.len() {
            self.expire_episodes(i, t);
            let st = &mut self.ops[i];
            if let Some((k, d)) = &st.window
                && *k < t / w
            {
                let closed = WindowCount {
                    start: k * w,
                    end: (k + 1) * w,
                    customers: d.count(),
                    exact: d.is_exact(),
                };
                st.window = None;
                if closed.customers > 0 {
                    st.closed_windows.push_back(closed);
                    while st.closed_windows.len() > self.c.windows_retained.max(1) {
                        st.closed_windows.pop_front();
                    }
                }
            }
            while st
                .recovered_order
                .front()
                .is_some_and(|(rt, _)| rt.saturating_add(self.c.window) <= t)
            {
                if let Some((_, g)) = st.recovered_order.pop_front() {
                    st.recently_recovered.remove(&g);
                }
            }
        }
        for g in &mut self.goals {
            let start = t - t % g.period;
            if g.period_start != Some(start) && g.period_start.is_none_or(|s| s < start) {
                g.period_start = Some(start);
                g.achieved = Money::zero(g.target.currency());
            }
        }
    }

    fn expire_episodes(&mut self, i: usize, t: u64) {
        while let Some((end, _, _)) = self.ops[i].expiry.front() {
            if *end > t {
                break;
            }
            let Some((_, key, epi)) = self.ops[i].expiry.pop_front() else {
                break;
            };
            self.end_episode_lost(i, &key, epi);
        }
    }

    /// Removes the episode `epi` of `key` (if still active) and counts its value as lost.
    fn end_episode_lost(&mut self, i: usize, key: &str, epi: u64) {
        let st = &mut self.ops[i];
        if st.episodes.get(key).is_some_and(|e| e.epi == epi)
            && let Some(ep) = st.episodes.remove(key)
        {
            add_totals(&mut st.lost, ep.value);
            if let Some(v) = ep.value {
                self.series.add_money(ep.series, MoneyKind::Lost, v);
            }
        }
    }

    /// The order's value from the state extension: its stated amount, else its line items priced.
    fn state_value(&self, order: Option<&str>, currency_hint: Option<Currency>) -> Option<Money> {
        let ctx = self.c.state.as_ref()?.orders.peek(order?)?;
        ctx.value().or_else(|| self.price_items(ctx.items(), currency_hint))
    }

    fn unit_price(&self, item: &LineItem, currency: Option<Currency>) -> Option<Money> {
        item.unit_price.or_else(|| {
            let (lookup, column) = self.c.prices.as_ref()?;
            lookup
                .with_row(&item.sku, |row| {
                    row.get(column)
                        .and_then(|v| amount::money_from_value(&v.to_value(), currency.or(Some(Currency::USD))).ok())
                })
                .flatten()
        })
    }

    fn price_items(&self, items: &[LineItem], currency: Option<Currency>) -> Option<Money> {
        let mut total: Option<Money> = None;
        for it in items {
            let line = self.unit_price(it, currency)?.checked_mul(it.quantity).ok()?;
            total = Some(match total {
                None => line,
                Some(t) => t.checked_add(line).ok()?,
            });
        }
        total
    }

    /// Completes `op` from its trace's record (`trace_context`): what its span lacked.
    fn resolve_from_trace(&mut self, op: &mut OpRec, u: trace::Unresolved) {
        let Some(tc) = self.trace.as_mut() else { return };
        tc.finalizing(&u.trace);
        let tc = &*tc;
        let spec = &self.c.ops[op.op];
        let t = &u.trace;
        let fill = |f: &mut Option<Box<str>>, key: &str| {
            if f.is_none() {
                *f = tc.text(t, key);
            }
        };
        fill(&mut op.key, &spec.key);
        match &self.c.customer_attr {
            Some(k) => fill(&mut op.customer, k),
            None => op.customer = op.key.clone(),
        }
        fill(&mut op.tier, &self.c.tier_attr);
        fill(&mut op.order, &self.c.order_attr);
        if op.items.is_none() {
            op.items = tc.get(t, &self.c.items_attr).and_then(|v| v.as_i64());
        }
        let value = Self::trace_money(Some(tc), spec, &u);
        let dims: Box<[Box<str>]> = self
            .c
            .dims
            .iter()
            .zip(u.dims)
            .map(|((_, src, default), own)| {
                own.or_else(|| tc.text(t, src))
                    .or_else(|| default.as_deref().map(Box::from))
                    .unwrap_or_default()
            })
            .collect();
        op.value = match value {
            Some(Ok(m)) => Some(m),
            Some(Err(_)) => {
                self.stats.invalid_value.add(1);
                None
            }
            None => None,
        };
        op.series = self.series.resolve(op.op, dims);
    }

    /// The money value of an operation with `trace_context`: the span's value, else the trace's, in the span's
    /// currency, else the trace's, else the default.
    fn trace_money(
        tc: Option<&TraceContext>,
        spec: &OpSpec,
        u: &trace::Unresolved,
    ) -> Option<Result<Money, bizpilot_core::MoneyError>> {
        let t = &u.trace;
        let currency = u
            .currency
            .clone()
            .or_else(|| tc.and_then(|tc| tc.text(t, &spec.value.currency_attribute)))
            .and_then(|s| Currency::new(&s).ok())
            .or(spec.value.default_currency);
        let raw = u
            .value
            .as_ref()
            .map(ValueRef::from_value)
            .or_else(|| tc.and_then(|tc| tc.get(t, &spec.value.attribute)));
        raw.map(|v| amount::money_from_ref(&v, currency))
    }

    /// Takes a pending operation out of the provisional figures.
    fn unprovision(&mut self, op: &OpRec) {
        let prov = &mut self.ops[op.op].prov;
        prov.operations = prov.operations.saturating_sub(1);
        let sub = |t: &mut MoneyTotals, v: Option<Money>| {
            if let Some(v) = v
                && t.sub(v).is_err()
            {
                tracing::warn!("a provisional money total of the business_impact connector overflowed");
            }
        };
        if op.success {
            sub(&mut prov.revenue, op.prov_value);
            return;
        }
        prov.failed = prov.failed.saturating_sub(1);
        if op.prov_risk {
            sub(&mut prov.at_risk, op.prov_value);
        }
        if let Some(k) = &op.key
            && let Some(n) = prov.failed_keys.get_mut(k)
        {
            *n -= 1;
            if *n == 0 {
                prov.failed_keys.remove(k);
            }
        }
    }

    fn finalize(&mut self, mut op: OpRec) {
        // The provisional figures counted what was known at arrival: take that out before completing.
        self.unprovision(&op);
        if let Some(u) = op.unresolved.take() {
            self.resolve_from_trace(&mut op, *u);
        }
        let i = op.op;
        self.stats.operations.add(1);
        let value = op.value.or_else(|| {
            if self.c.ops[i].value.from_state {
                self.state_value(op.order.as_deref(), self.c.ops[i].value.default_currency)
            } else {
                None
            }
        });
        if value.is_none() {
            self.stats.missing_value.add(1);
        }
        if op.key.is_none() {
            self.stats.missing_key.add(1);
        }
        // Without a business key, an operation is its own key: never de-duplicated, never recovered.
        let key: Box<str> = match &op.key {
            Some(k) => k.clone(),
            None => format!("\u{0}{}", output::hex(&op.id())).into(),
        };
        let before = self.series.overflowed().get(i).copied().unwrap_or(0);
        self.series.count(op.series, op.success, op.duration_s());
        let after = self.series.overflowed().get(i).copied().unwrap_or(0);
        self.stats.overflowed_points.add(after - before);
        self.dedup.finalize(op.time, op.hash);
        let window = self.c.window;
        let retry_window = self.c.retry_window;
        let st = &mut self.ops[i];
        st.operations += 1;
        // A customer's failure soon after their previous one is a retry: the same incident seen again, not
        // new evidence (the baseline detector assumes independent operations).
        let retry = self.c.detection == Detection::Baseline
            && !op.success
            && op.key.is_some()
            && st
                .episodes
                .get(&key)
                .is_some_and(|e| op.time < e.end && op.time.saturating_sub(e.last_failure) < retry_window);
        if !retry {
            st.detector.record(op.time, !op.success);
        }
        if op.success && self.c.latency_factor > 0.0 && op.duration_s() > 0.0 {
            let learned = st.durations.count() >= self.c.latency_min_samples;
            let slow = learned
                && st
                    .durations
                    .typical()
                    .is_some_and(|t| op.duration_s() > self.c.latency_factor * t);
            if learned {
                st.latency.record(op.time, slow);
            }
            if !slow && st.latency_incident.is_none() {
                st.durations.learn(op.duration_s());
            }
        }
        // The active episode of the key, unless it has expired (it is then lost).
        let expired = st.episodes.get(&key).filter(|e| op.time >= e.end).map(|e| e.epi);
        if let Some(epi) = expired {
            self.end_episode_lost(i, &key, epi);
        }
        if op.success {
            let st = &mut self.ops[i];
            st.successful += 1;
            add_totals(&mut st.revenue, value);
            if let Some(v) = value {
                self.series.add_money(op.series, MoneyKind::Revenue, v);
                for g in self.goals.iter_mut().filter(|g| g.op == i) {
                    if let Ok(a) = g.achieved.checked_add(v) {
                        g.achieved = a;
                    }
                }
            }
            let st = &mut self.ops[i];
            if let Some(ep) = st.episodes.remove(&key) {
                add_totals(&mut st.recovered, ep.value);
                st.recently_recovered.insert(ep.epi, op.time);
                st.recovered_order.push_back((op.time, ep.epi));
                if let Some(v) = ep.value {
                    self.series.add_money(ep.series, MoneyKind::Recovered, v);
                }
                if !ep.records.is_empty() {
                    let mut book = lock(&self.book);
                    for r in &ep.records {
                        let Some(mut rec) = book.record_mut(*r) else { continue };
                        if rec.recovered.is_some() {
                            continue;
                        }
                        rec.set_recovered(op.time);
                        let (seq, v) = (rec.incident_seq, rec.cart_value);
                        if let Some(inc) = book.incident_mut(seq) {
                            add_totals(&mut inc.recovered_revenue, v);
                        }
                    }
                }
            }
            return;
        }
        // A failure.
        let st = &mut self.ops[i];
        st.failed += 1;
        let k = op.time / window;
        if st.window.as_ref().is_none_or(|(wk, _)| *wk != k) {
            st.window = Some((k, Distinct::new(self.c.exact_limit)));
        }
        if op.key.is_some()
            && let Some((_, d)) = st.window.as_mut()
        {
            d.insert(&key);
        }
        let epi = match st.episodes.get_mut(&key) {
            Some(ep) => {
                ep.failures += 1;
                ep.last_failure = op.time;
                ep.epi
            }
            None => {
                let epi = self.next_gen;
                self.next_gen += 1;
                let end = op.time.saturating_add(window);
                st.episodes.insert(
                    key.clone(),
                    Episode {
                        epi,
                        end,
                        value,
                        series: op.series,
                        failures: 1,
                        last_failure: op.time,
                        records: Vec::new(),
                    },
                );
                st.expiry.push_back((end, key.clone(), epi));
                add_totals(&mut st.at_risk, value);
                if let Some(v) = value {
                    self.series.add_money(op.series, MoneyKind::AtRisk, v);
                }
                // Bound the keys: forget the oldest episodes (counted as lost).
                while self.ops[i].episodes.len() > self.c.max_keys {
                    let Some((_, k, g)) = self.ops[i].expiry.pop_front() else {
                        break;
                    };
                    if self.ops[i].episodes.get(&k).is_some_and(|e| e.epi == g) {
                        self.stats.evicted_keys.add(1);
                    }
                    self.end_episode_lost(i, &k, g);
                }
                epi
            }
        };
        let rec = FailureRec {
            time: op.time,
            key,
            customer: op.customer,
            tier: op.tier,
            order: op.order,
            items: op.items,
            value,
            trace: op.trace,
            span: op.span,
            failure: op.failure.map(|b| *b).unwrap_or_else(|| Cause {
                service: String::new(),
                span_name: String::new(),
                status_message: String::new(),
            }),
            root: self.causes.root(&op.trace),
            episode: epi,
        };
        match self.ops[i].incident {
            Some(seq) => {
                self.attach(i, seq, &rec);
            }
            None => {
                // Every affected customer has a record at once; an incident that opens later names it.
                let rid = self.attach(i, 0, &rec);
                let st = &mut self.ops[i];
                st.recent.push_back((rec, rid));
                while st.recent.len() > self.c.max_pending {
                    st.recent.pop_front();
                }
            }
        }
    }

    /// An incident `seq` opened whose start covers failure `f`, which has the unattributed record `rid`: the
    /// failure counts in the incident, and the record names it (or, when the customer already has a record in
    /// it — an earlier episode of theirs — is merged into that one). Records are logged again when named.
    fn adopt(&mut self, seq: u64, f: &FailureRec, rid: u64) {
        let mut book = lock(&self.book);
        let cause = f.root.clone().unwrap_or_else(|| f.failure.clone());
        let Some(inc) = book.incident_mut(seq) else { return };
        inc.failed_operations += 1;
        *inc.causes.entry((cause.service, cause.status_message)).or_default() += 1;
        let incident_id = inc.id.clone();
        if book.record(rid).is_none_or(|r| r.incident_seq != 0) {
            // Already named (an earlier failure of the same record), or gone (merged, evicted).
            return;
        }
        if let Some(existing) = book.record_of(seq, &f.key) {
            let Some(merged) = book.remove_record(rid) else { return };
            if let Some(mut r) = book.record_mut(existing) {
                r.add_failed_attempts(merged.failed_attempts);
            }
            return;
        }
        let Some(r) = book.assign(rid, seq, &incident_id).cloned() else {
            return;
        };
        if let Some(inc) = book.incident_mut(seq) {
            inc.affected_customers += 1;
            add_totals(&mut inc.revenue_at_risk, r.cart_value);
            if r.recovered.is_some() {
                add_totals(&mut inc.recovered_revenue, r.cart_value);
            }
        }
        self.logs.push(output::impact_log(&r, self.now_ns));
    }

    /// Attributes a failure to incident `seq` (0: none yet): counts it, and creates or updates the customer's
    /// impact record (without an incident: the record of the same revenue-at-risk episode). Returns the record.
    fn attach(&mut self, i: usize, seq: u64, f: &FailureRec) -> u64 {
        let cause = f.root.clone().unwrap_or_else(|| f.failure.clone());
        let mut book = lock(&self.book);
        let (incident_id, existing) = if seq == 0 {
            let rid = book
                .unattributed_of(&self.c.ops[i].name, &f.key)
                .filter(|rid| book.record(*rid).is_some_and(|r| r.episode == f.episode));
            (String::new(), rid)
        } else {
            let Some(inc) = book.incident_mut(seq) else { return 0 };
            inc.failed_operations += 1;
            *inc.causes.entry((cause.service, cause.status_message)).or_default() += 1;
            let id = inc.id.clone();
            (id, book.record_of(seq, &f.key))
        };
        if let Some(rid) = existing {
            if let Some(mut r) = book.record_mut(rid) {
                r.add_failed_attempts(1);
            }
            return rid;
        }
        let st = &mut self.ops[i];
        let recovered = st.recently_recovered.get(&f.episode).copied();
        let id = self.next_record;
        self.next_record += 1;
        if recovered.is_none()
            && let Some(ep) = st.episodes.get_mut(&f.key)
            && ep.epi == f.episode
        {
            ep.records.push(id);
        }
        // The order by its id, else the order a business event of the same trace named (its
        // trace link: a `traceparent` on the event), for the record's items and tier.
        let order_ctx = match (&self.c.state, &f.order) {
            (Some(s), Some(o)) => s.orders.peek(o),
            (Some(s), None) => bizpilot_business::trace_key(&f.trace).and_then(|t| s.order_of_trace(&t)),
            _ => None,
        };
        let currency = f.value.map(|v| v.currency());
        let items: Vec<LineItem> = order_ctx
            .as_ref()
            .map(|o| {
                o.items()
                    .iter()
                    .map(|it| LineItem {
                        unit_price: self.unit_price(it, currency),
                        ..it.clone()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let item_count = f
            .items
            .or_else(|| order_ctx.as_ref().and_then(|o| o.item_count()))
            .or_else(|| (!items.is_empty()).then_some(items.len() as i64));
        let customer = f.customer.as_deref().map(|c| match &self.c.hasher {
            Some(h) => h.hash_hex(c.as_bytes()),
            None => c.to_string(),
        });
        let tier = f
            .tier
            .as_deref()
            .map(str::to_string)
            .or_else(|| order_ctx.as_ref().and_then(|o| o.customer_tier().map(str::to_string)));
        let record = ImpactRecord {
            id,
            operation: self.c.ops[i].name.clone(),
            incident_seq: seq,
            incident_id,
            episode: f.episode,
            key: f.key.clone(),
            customer,
            tier,
            cart_value: f.value.or_else(|| order_ctx.as_ref().and_then(|o| o.value())),
            items,
            item_count,
            order_id: f
                .order
                .as_deref()
                .map(str::to_string)
                .or_else(|| order_ctx.as_ref().map(|o| o.order_id.clone())),
            failure: f.failure.clone(),
            root_cause: f.root.clone(),
            trace_id: f.trace,
            span_id: f.span,
            time: f.time,
            failed_attempts: 1,
            recovered,
        };
        if let Some(inc) = book.incident_mut(seq) {
            inc.affected_customers += 1;
            add_totals(&mut inc.revenue_at_risk, f.value);
            if recovered.is_some() {
                add_totals(&mut inc.recovered_revenue, f.value);
            }
        }
        self.logs.push(output::impact_log(&record, self.now_ns));
        book.insert_record(record);
        id
    }

    /// Evaluates every operation's incident state at boundary `e`.
    fn evaluate(&mut self, e: u64) {
        for i in 0..self.ops.len() {
            let ev = self.ops[i].detector.evaluate(e);
            let from = e.saturating_sub(self.c.recent_ns);
            while self.ops[i].recent.front().is_some_and(|(f, _)| f.time < from) {
                self.ops[i].recent.pop_front();
            }
            self.apply(i, IncidentKind::Failures, &ev);
            let ev = self.ops[i].latency.evaluate(e);
            self.apply(i, IncidentKind::Latency, &ev);
        }
        self.dirty = true;
    }

    fn incident_slot(&mut self, i: usize, kind: IncidentKind) -> &mut Option<u64> {
        match kind {
            IncidentKind::Failures => &mut self.ops[i].incident,
            IncidentKind::Latency => &mut self.ops[i].latency_incident,
        }
    }

    /// Applies an evaluation of operation `i`'s detector of `kind`.
    fn apply(&mut self, i: usize, kind: IncidentKind, ev: &Evaluation) {
        match ev.transition {
            Transition::Quiet => {}
            Transition::Opened { start } => {
                let seq = self.next_incident;
                self.next_incident += 1;
                let name = self.c.ops[i].name.clone();
                let id = match kind {
                    IncidentKind::Failures => format!("{name}-{}-{seq}", start / 1_000_000_000),
                    IncidentKind::Latency => format!("{name}-latency-{}-{seq}", start / 1_000_000_000),
                };
                let incident = Incident {
                    seq,
                    id,
                    operation: name,
                    kind,
                    state: IncidentState::Open,
                    closed_reason: None,
                    baseline_rate: ev.baseline,
                    start,
                    end: None,
                    detected: ev.at,
                    last_evaluated: ev.at,
                    evaluations: 1,
                    failure_rate: ev.rate,
                    peak_failure_rate: ev.rate,
                    window_operations: ev.operations,
                    window_failed: ev.failed,
                    failed_operations: 0,
                    revenue_at_risk: MoneyTotals::default(),
                    recovered_revenue: MoneyTotals::default(),
                    affected_customers: 0,
                    causes: HashMap::new(),
                };
                lock(&self.book).insert_incident(incident);
                *self.incident_slot(i, kind) = Some(seq);
                if kind == IncidentKind::Failures {
                    let recent: Vec<(FailureRec, u64)> = self.ops[i].recent.drain(..).collect();
                    for (f, rid) in recent.iter().filter(|(f, _)| f.time >= start) {
                        self.adopt(seq, f, *rid);
                    }
                }
                self.incident_log(seq, "open");
            }
            Transition::Updated | Transition::Closed { .. } => {
                let Some(seq) = *self.incident_slot(i, kind) else {
                    return;
                };
                let closed = match ev.transition {
                    Transition::Closed { end } => Some(end),
                    _ => None,
                };
                {
                    let mut book = lock(&self.book);
                    if let Some(inc) = book.incident_mut(seq) {
                        inc.last_evaluated = ev.at;
                        inc.evaluations += 1;
                        inc.failure_rate = ev.rate;
                        inc.peak_failure_rate = inc.peak_failure_rate.max(ev.rate);
                        inc.window_operations = ev.operations;
                        inc.window_failed = ev.failed;
                    }
                }
                match closed {
                    Some(end) => self.close(i, kind, end, CloseReason::Recovered),
                    None => self.incident_log(seq, "update"),
                }
            }
        }
    }

    /// Closes the open incident of `kind` of operation `i`.
    fn close(&mut self, i: usize, kind: IncidentKind, end: u64, reason: CloseReason) {
        let Some(seq) = self.incident_slot(i, kind).take() else {
            return;
        };
        if let Some(inc) = lock(&self.book).incident_mut(seq) {
            inc.state = IncidentState::Closed;
            inc.end = Some(end.max(inc.start));
            inc.closed_reason = Some(reason);
        }
        self.incident_log(seq, "closed");
        self.dirty = true;
    }

    /// Closes every open incident now (`reason`: the input went idle, or the connector stops); each ends at
    /// the end of its last bad interval.
    pub fn close_all(&mut self, reason: CloseReason) {
        for i in 0..self.ops.len() {
            if let Some(end) = self.ops[i].detector.force_close() {
                self.close(i, IncidentKind::Failures, end, reason);
            }
            if let Some(end) = self.ops[i].latency.force_close() {
                self.close(i, IncidentKind::Latency, end, reason);
            }
        }
        self.sync_book();
    }

    /// True while some incident is open.
    pub fn any_open(&self) -> bool {
        self.ops
            .iter()
            .any(|o| o.incident.is_some() || o.latency_incident.is_some())
    }

    fn incident_log(&mut self, seq: u64, state: &str) {
        let book = lock(&self.book);
        if let Some(inc) = book.incident(seq) {
            self.logs
                .push(output::incident_log(inc, state, self.c.top_causes, self.now_ns));
        }
    }

    /// Copies the per-operation totals into the shared book.
    fn sync_book(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let w = self.c.window;
        let mut book = lock(&self.book);
        book.watermark = self.watermark;
        let ids: Vec<Option<String>> = self
            .ops
            .iter()
            .map(|st| st.incident.and_then(|s| book.incident(s).map(|i| i.id.clone())))
            .collect();
        for ((st, sum), id) in self.ops.iter().zip(book.operations.iter_mut()).zip(ids) {
            sum.operations = st.operations;
            sum.successful = st.successful;
            sum.failed = st.failed;
            sum.revenue = st.revenue.clone();
            sum.revenue_at_risk = st.at_risk.clone();
            sum.recovered_revenue = st.recovered.clone();
            sum.lost_revenue = st.lost.clone();
            let mut open = st.at_risk.clone();
            for m in st.recovered.iter().chain(st.lost.iter()) {
                if open.sub(*m).is_err() {
                    tracing::warn!("a money total of the business_impact connector overflowed");
                }
            }
            sum.open_at_risk = open;
            sum.current_window = st.window.as_ref().map(|(k, d)| WindowCount {
                start: k * w,
                end: (k + 1) * w,
                customers: d.count(),
                exact: d.is_exact(),
            });
            sum.windows = st.closed_windows.clone();
            sum.open_incident = id;
            sum.provisional = Provisional {
                operations: st.prov.operations,
                failed: st.prov.failed,
                revenue: st.prov.revenue.clone(),
                revenue_at_risk: st.prov.at_risk.clone(),
                affected_customers: st.prov.failed_keys.len() as u64,
                until: if st.prov.operations > 0 { self.max_event } else { 0 },
            };
        }
        let wm = self.watermark;
        book.goals = self
            .goals
            .iter()
            .map(|g| {
                let (attainment, projected_attainment) = g.attainment(wm);
                GoalSummary {
                    name: g.name.clone(),
                    operation: self.operation_name(g.op).to_string(),
                    target: g.target,
                    period: g.period,
                    period_start: g.period_start,
                    achieved: g.achieved,
                    projected: g.projected(wm),
                    attainment,
                    projected_attainment,
                }
            })
            .collect();
    }

    /// Distinct affected customers of the window holding the watermark and of the one before it:
    /// ((current, exact), (previous, exact)).
    pub fn affected_windows(&self, i: usize) -> ((u64, bool), (u64, bool)) {
        let w = self.c.window;
        let Some(st) = self.ops.get(i) else {
            return ((0, true), (0, true));
        };
        let cur_k = self.watermark / w;
        let current = match &st.window {
            Some((k, d)) if *k == cur_k => (d.count(), d.is_exact()),
            _ => (0, true),
        };
        let previous = match (&st.window, st.closed_windows.back()) {
            (Some((k, d)), _) if cur_k > 0 && *k == cur_k - 1 => (d.count(), d.is_exact()),
            (_, Some(c)) if cur_k > 0 && c.start / w == cur_k - 1 => (c.customers, c.exact),
            _ => (0, true),
        };
        (current, previous)
    }

    /// Value of the revenue-at-risk episodes of operation `i` still active (neither recovered nor lost yet).
    pub fn active_at_risk(&self, i: usize) -> MoneyTotals {
        let mut t = MoneyTotals::default();
        if let Some(st) = self.ops.get(i) {
            for ep in st.episodes.values() {
                add_totals(&mut t, ep.value);
            }
        }
        t
    }

    pub fn operation_name(&self, i: usize) -> &str {
        self.c.ops.get(i).map(|o| o.name.as_str()).unwrap_or("")
    }

    pub fn incident_open(&self, i: usize) -> bool {
        self.ops.get(i).is_some_and(|o| o.incident.is_some())
    }

    pub fn latency_incident_open(&self, i: usize) -> bool {
        self.ops.get(i).is_some_and(|o| o.latency_incident.is_some())
    }

    /// Provisional figures of operation `i` (operations not final yet).
    pub fn provisional(&self, i: usize) -> Option<&ProvState> {
        self.ops.get(i).map(|o| &o.prov)
    }
}

/// `service.name` of the resource of the previous span, remembered by the address of the resource's
/// bytes: the spans of one resource are read one after another.
#[derive(Default)]
struct ServiceCache<'a> {
    last: Option<(usize, usize, &'a str)>,
}

impl<'a> ServiceCache<'a> {
    fn of(&mut self, res: &view::ResourceView<'a>) -> &'a str {
        let id = (res.as_bytes().as_ptr() as usize, res.as_bytes().len());
        match self.last {
            Some((p, l, s)) if (p, l) == id => s,
            _ => {
                let s = res.service_name();
                self.last = Some((id.0, id.1, s));
                s
            }
        }
    }
}

#[cfg(test)]
mod tests;
