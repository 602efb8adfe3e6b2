//! The order-KPI engine: business events and spans in, order lifecycles, KPI figures, predictions and their
//! scores out. Synchronous and deterministic: its only clock is the event time of the data (see the module
//! doc of [`super`] for the semantics).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bizpilot_business::attrs;
use bizpilot_business::{EventMapping, Lookup};
use bizpilot_core::{ComponentError, ComponentId};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

use super::api::{AtRiskView, Book, EvidenceView, Expedite, KpiView, StageAction, StageView};
use super::config::{DimensionConfig, OrderKpiConfig};
use super::flow::StageFlow;
use super::health::{Health, Issue};
use super::model::{Condition, Model};
use super::sketch::{LogHistogram, Scale, TimeChange};

pub mod changelog;
mod cow;
mod snapshot;
pub use snapshot::{SnapshotCopy, SnapshotError};

fn ns(d: bizpilot_core::config::Duration) -> u64 {
    u64::try_from(d.get().as_nanos()).unwrap_or(u64::MAX)
}

/// Most services with evidence kept per order, and example trace ids per service.
pub const MAX_EVIDENCE_SERVICES: usize = 8;
pub const MAX_EXAMPLE_TRACES: usize = 3;
/// Most span ids remembered per order for duplicate detection.
pub const MAX_SEEN_SPANS: usize = 64;
/// The overflow series id.
pub const OVERFLOW: u32 = u32::MAX;

/// What an event name means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mark {
    Stage(u8),
    Cancel,
}

/// A KPI, compiled.
#[derive(Debug, Clone)]
pub struct Kpi {
    pub name: String,
    pub from: usize,
    pub to: usize,
    pub deadline: u64,
}

enum DimSource {
    Attribute(String),
    Lookup {
        table: Arc<Lookup>,
        key: String,
        column: String,
    },
}

struct Dim {
    name: String,
    source: DimSource,
    default: String,
}

/// The config, resolved.
pub struct Compiled {
    mapping: EventMapping,
    pub(super) stages: Vec<String>,
    marks: HashMap<String, Mark>,
    pub(super) kpis: Vec<Kpi>,
    key_attrs: Vec<String>,
    stage_services: Vec<Vec<String>>,
    dims: Vec<Dim>,
    pub(super) threshold: f64,
    lateness: u64,
    /// `idle_timeout`, `None` when 0 (an input never goes idle).
    idle: Option<std::time::Duration>,
    pub(super) eval: u64,
    metrics_every: u64,
    max_order_age: u64,
    closed_for: u64,
    pub(super) age_bounds: Vec<u64>,
    max_series: usize,
    max_open: usize,
    max_pending: usize,
    max_closed: usize,
    max_orphans: usize,
    pub(super) max_at_risk: usize,
    cfg: OrderKpiConfig,
}

impl Compiled {
    /// Resolves `cfg`; `lookup` gives the `lookup` extensions dimensions refer to.
    pub fn new(
        cfg: &OrderKpiConfig,
        lookup: impl Fn(&ComponentId) -> Result<Arc<Lookup>, String>,
    ) -> Result<Compiled, ComponentError> {
        let stages: Vec<String> = cfg.stages.iter().map(|s| s.name.clone()).collect();
        let pos = |n: &str| stages.iter().position(|s| s == n);
        let mut marks = HashMap::new();
        for (i, s) in cfg.stages.iter().enumerate() {
            for e in s.event_names() {
                marks.insert(e, Mark::Stage(u8::try_from(i).unwrap_or(u8::MAX)));
            }
        }
        for e in &cfg.cancel_events {
            marks.insert(e.clone(), Mark::Cancel);
        }
        let mut kpis = Vec::new();
        for k in &cfg.kpis {
            let from = k.from.as_deref().map_or(Some(0), pos);
            let to = k.to.as_deref().map_or(stages.len().checked_sub(1), pos);
            let (Some(from), Some(to)) = (from, to) else {
                return Err(ComponentError::Config(format!("kpi {}: unknown stage", k.name)));
            };
            kpis.push(Kpi {
                name: k.name.clone(),
                from,
                to,
                deadline: ns(k.deadline),
            });
        }
        let stage_services = stages
            .iter()
            .map(|s| cfg.stage_services.get(s).cloned().unwrap_or_default())
            .collect();
        let mut dims = Vec::new();
        for (i, d) in cfg.dimensions.iter().enumerate() {
            let (name, source, default) = match d {
                DimensionConfig::Attribute(a) => (a.clone(), DimSource::Attribute(a.clone()), None),
                DimensionConfig::Full {
                    name,
                    attribute,
                    lookup: Some(l),
                    default,
                } if attribute.is_none() => {
                    let table = lookup(&l.extension)
                        .map_err(|e| ComponentError::Config(format!("dimensions[{i}].lookup.extension: {e}")))?;
                    (
                        name.clone(),
                        DimSource::Lookup {
                            table,
                            key: l.key_attribute.clone(),
                            column: l.column.clone().unwrap_or_else(|| name.clone()),
                        },
                        default.clone(),
                    )
                }
                DimensionConfig::Full {
                    name,
                    attribute,
                    default,
                    ..
                } => (
                    name.clone(),
                    DimSource::Attribute(attribute.clone().unwrap_or_else(|| name.clone())),
                    default.clone(),
                ),
            };
            dims.push(Dim {
                name,
                source,
                default: default.unwrap_or_else(|| "unknown".into()),
            });
        }
        Ok(Compiled {
            mapping: cfg.events.clone(),
            stages,
            marks,
            kpis,
            key_attrs: cfg.order_key_attributes.clone(),
            stage_services,
            dims,
            threshold: cfg.prediction.threshold,
            lateness: ns(cfg.allowed_lateness),
            idle: (!cfg.idle_timeout.is_zero()).then(|| cfg.idle_timeout.get()),
            eval: ns(cfg.evaluation_interval).max(1),
            metrics_every: ns(cfg.metrics_interval).max(1),
            max_order_age: ns(cfg.max_order_age),
            closed_for: ns(cfg.closed_memory),
            age_bounds: cfg.age_buckets.iter().map(|d| ns(*d)).collect(),
            max_series: cfg.max_series,
            max_open: cfg.max_open_orders,
            max_pending: cfg.max_pending,
            max_closed: cfg.max_closed,
            max_orphans: cfg.max_pending_evidence,
            max_at_risk: cfg.api.max_at_risk,
            cfg: cfg.clone(),
        })
    }

    /// Dimension (label) names, in configured order.
    pub fn dimension_names(&self) -> impl Iterator<Item = &str> {
        self.dims.iter().map(|d| d.name.as_str())
    }
}

/// One prediction, kept for the evaluation's calibration figures when asked for
/// ([`Engine::record_predictions`]): the probability of missing the deadline given to an open order at an
/// evaluation on a whole hour.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub kpi: usize,
    pub order_id: Box<str>,
    pub time: u64,
    pub probability: f32,
    /// The probability before calibration ([`Model::calibrated`]), the order's stage and whether a stage on its
    /// way was slowed (the calibration regime).
    pub raw: f32,
    pub stage: u8,
    pub slowed: bool,
}

/// Why an order's KPI ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The goal was reached by the deadline.
    InTime,
    /// The deadline passed first.
    Breached,
    /// Cancelled before either: not counted.
    Cancelled,
    /// Dropped after `max_order_age` without either: not counted.
    Expired,
    /// The goal was reached but the start stage was never seen: not counted.
    NoStart,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::InTime => "in_time",
            Outcome::Breached => "breached",
            Outcome::Cancelled => "cancelled",
            Outcome::Expired => "expired",
            Outcome::NoStart => "no_start",
        }
    }
}

/// The end of one order's KPI, with its prediction (kept for evaluation when asked for).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub kpi: usize,
    pub order_id: Box<str>,
    pub outcome: Outcome,
    /// When the outcome was known (goal time, or the evaluation that saw the deadline pass).
    pub time: u64,
    pub deadline: Option<u64>,
    /// First evaluation at which the order was at risk.
    pub flagged_at: Option<u64>,
    /// The cause named when it was first flagged (`shipping latency`, …).
    pub flag_cause: Option<String>,
    /// The service of that cause.
    pub flag_service: Option<String>,
    /// The slowed stage named as (part of) the cause when it was first flagged.
    pub flag_cause_stage: Option<String>,
    /// The cause named at the latest evaluation while the order was at risk — what the at-risk API showed when
    /// its outcome came (the cause is re-evaluated at every evaluation: a slowdown that opens or closes after the
    /// first flag changes it) — or, if it was no longer at risk then, the cause of the first flag.
    pub last_cause: Option<String>,
    /// The service of that cause.
    pub last_service: Option<String>,
    /// The slowed stage of that cause.
    pub last_cause_stage: Option<String>,
    /// Every service whose failed or slow spans the explanation listed when it was first flagged.
    pub flag_services: Vec<String>,
    /// Stage and probability when first flagged.
    pub flag_stage: Option<String>,
    pub flag_probability: Option<f32>,
    pub max_probability: Option<f32>,
    /// When first flagged: the probability of a miss with the time the stage slowdowns cost the order given back
    /// (`None`: they cost it nothing). A stage is named as the cause only when it is below 0.5.
    pub flag_without_slowdowns: Option<f32>,
}

/// The service behind an order's risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Cause {
    pub service: Option<u16>,
    pub issue: Option<Issue>,
    /// From the order's own spans (`true`) or from the service's health (`false`).
    pub own: bool,
    /// The order's stage, when that stage is slowed for everybody (a cohort cause, see [`super::flow`]).
    pub stage: Option<u8>,
}

impl Cause {
    const NONE: Cause = Cause {
        service: None,
        issue: None,
        own: false,
        stage: None,
    };
}

/// Spans of one service that carried the order's key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    pub service: u16,
    pub spans: u32,
    pub errors: u32,
    pub slow: u32,
    /// End time of the latest failed or slow span (0: none).
    pub last_bad: u64,
    /// Trace ids of failed or slow spans (at most [`MAX_EXAMPLE_TRACES`]).
    pub traces: Vec<[u8; 16]>,
}

impl Evidence {
    fn bad(&self) -> u32 {
        self.errors + self.slow
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct KpiState {
    resolved: bool,
    goal: bool,
    flagged_at: Option<u64>,
    flag_cause: Option<Cause>,
    flag_stage: Option<u8>,
    flag_p: Option<f32>,
    #[serde(default)]
    flag_p0: Option<f32>,
    flag_services: Vec<u16>,
    p: Option<f32>,
    max_p: Option<f32>,
    at_risk: bool,
    cause: Option<Cause>,
    /// Calibration bins of the raw probabilities given to the order, per regime (see [`Model::calibrated`]).
    #[serde(default)]
    bins: [u32; 2],
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Order {
    /// Event time each stage was reached (0: not seen).
    reached: Box<[u64]>,
    stage: usize,
    first_seen: u64,
    dims: Box<[Option<Box<str>>]>,
    evidence: Vec<Evidence>,
    seen_spans: Vec<u64>,
    kpis: Box<[KpiState]>,
    cond: Condition,
    /// Series of its dimension values.
    sid: u32,
    /// Stage clock (ns of normal work in the current stage, see [`super::flow`]) as of `clock_at`.
    clock: f64,
    clock_at: u64,
    /// The latest stage whose slowdown cost this order at least `long_wait` (it ate the order's slack).
    hit: Option<u8>,
    /// Time (ns) lost in the current stage to the stage's slowdowns: `Σ elapsed × (1 − r)` while `r < 1`.
    #[serde(default)]
    lost: f64,
    /// The same over every stage the order went through.
    #[serde(default)]
    lost_total: f64,
    /// The order's value, from the latest event (by event time) that stated one.
    value: Option<bizpilot_core::Money>,
}

impl Order {
    fn entered(&self) -> u64 {
        self.reached.get(self.stage).copied().unwrap_or(0)
    }
}

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
struct Orphan {
    created: u64,
    evidence: Vec<Evidence>,
    seen: Vec<u64>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct SpanRec {
    order: Option<Box<str>>,
    service: u16,
    name: Box<str>,
    duration: u64,
    error: bool,
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
enum Item {
    Event {
        order: Box<str>,
        mark: Mark,
        dims: Box<[Option<Box<str>>]>,
        /// The order amount the event states (`events.amount`), if any.
        value: Option<bizpilot_core::Money>,
    },
    Span(Box<SpanRec>),
}

const RANK_CANCEL: u16 = 1000;
const RANK_SPAN: u16 = 2000;

/// An input of the engine, with a watermark of its own: business events (logs) or spans (traces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    Events,
    Spans,
}

impl Input {
    pub const ALL: [Input; 2] = [Input::Events, Input::Spans];

    /// The signal it arrives as: the `input` label of the connector's self-telemetry.
    pub fn as_str(self) -> &'static str {
        match self {
            Input::Events => "logs",
            Input::Spans => "traces",
        }
    }

    fn of(item: &Item) -> Input {
        match item {
            Item::Event { .. } => Input::Events,
            Item::Span(_) => Input::Spans,
        }
    }
}

/// One input's progress ([`Engine::inputs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputState {
    pub input: Input,
    /// The newest event time taken from it, minus `allowed_lateness` (`None`: nothing since the state began).
    pub watermark: Option<u64>,
    /// Whether it holds the engine's watermark back: it sent within `idle_timeout` (wall time).
    pub active: bool,
    /// Its items that came behind the last evaluation (applied at once, out of order).
    pub late: u64,
}

/// Counters of what the engine saw (self-telemetry).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub events: u64,
    pub events_ignored: u64,
    pub events_missing_order: u64,
    pub events_late: u64,
    pub events_duplicate: u64,
    pub events_out_of_order: u64,
    pub events_after_close: u64,
    pub orders_refused: u64,
    pub spans: u64,
    pub spans_late: u64,
    pub spans_duplicate: u64,
    pub spans_orphaned: u64,
    pub forced: u64,
    pub orders_expired: u64,
}

/// Cumulative figures of one KPI.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct KpiFigures {
    pub(super) by_series: BTreeMap<u32, [u64; 2]>,
    pub(super) breaches_by_cause: BTreeMap<String, u64>,
    pub(super) cancelled: u64,
    pub(super) expired: u64,
    pub(super) no_start: u64,
    /// true positive, false positive, false negative, true negative.
    pub(super) scores: [u64; 4],
    pub(super) lead: LogHistogram,
    pub(super) lead_buckets: Vec<u64>,
    pub(super) lead_sum: f64,
}

/// Lead-time histogram bounds, seconds.
pub const LEAD_BOUNDS: [f64; 10] = [
    900.0, 1800.0, 3600.0, 7200.0, 14400.0, 21600.0, 28800.0, 43200.0, 64800.0, 86400.0,
];

impl KpiFigures {
    fn new() -> Self {
        KpiFigures {
            by_series: BTreeMap::new(),
            breaches_by_cause: BTreeMap::new(),
            cancelled: 0,
            expired: 0,
            no_start: 0,
            scores: [0; 4],
            lead: LogHistogram::new(Scale::durations()),
            lead_buckets: vec![0; LEAD_BOUNDS.len() + 1],
            lead_sum: 0.0,
        }
    }

    pub(super) fn totals(&self) -> (u64, u64) {
        self.by_series.values().fold((0, 0), |(a, b), v| (a + v[0], b + v[1]))
    }

    pub(super) fn compliance(&self) -> Option<f64> {
        let (ok, bad) = self.totals();
        (ok + bad > 0).then(|| ok as f64 / (ok + bad) as f64)
    }

    pub(super) fn precision(&self) -> Option<f64> {
        let [tp, fp, _, _] = self.scores;
        (tp + fp > 0).then(|| tp as f64 / (tp + fp) as f64)
    }

    pub(super) fn recall(&self) -> Option<f64> {
        let [tp, _, fneg, _] = self.scores;
        (tp + fneg > 0).then(|| tp as f64 / (tp + fneg) as f64)
    }

    pub(super) fn lead_median(&self) -> Option<f64> {
        self.lead.quantile(0.5).map(|v| v / 1e9)
    }
}

/// Dimension values → series ids, at most `max` of them.
pub(super) struct SeriesTable {
    index: HashMap<Box<[Box<str>]>, u32>,
    pub(super) values: Vec<Box<[Box<str>]>>,
    max: usize,
    pub(super) overflowed: u64,
}

impl SeriesTable {
    fn id(&mut self, values: Box<[Box<str>]>) -> u32 {
        if let Some(&i) = self.index.get(&values) {
            return i;
        }
        if self.values.len() >= self.max {
            self.overflowed += 1;
            return OVERFLOW;
        }
        let i = self.values.len() as u32;
        self.values.push(values.clone());
        self.index.insert(values, i);
        i
    }
}

/// The engine.
pub struct Engine {
    pub(super) c: Compiled,
    pub(super) health: Health,
    stage_service_ids: Vec<Vec<u16>>,
    model: Model,
    pub(super) flows: Vec<StageFlow>,
    predictions: Option<Vec<Prediction>>,
    orders: cow::CowMap<Order>,
    orphans: cow::CowMap<Orphan>,
    orphan_queue: VecDeque<(u64, Box<str>)>,
    closed: cow::CowMap<u64>,
    closed_queue: VecDeque<(u64, Box<str>)>,
    pending: BTreeMap<(u64, u16, u64, u64), Item>,
    seq: u64,
    max_time: u64,
    /// Per [`Input`]: the newest event time taken from it (0: none since the state began), and when (wall time).
    input_time: [u64; 2],
    input_seen: [Option<std::time::Instant>; 2],
    /// The wall time of the latest call that passed one (`*_at`); an input's idleness is judged against it.
    wall: std::time::Instant,
    first_time: Option<u64>,
    pub(super) last_tick: Option<u64>,
    pub(super) first_tick: Option<u64>,
    pub(super) figures: Vec<KpiFigures>,
    pub(super) series: SeriesTable,
    logs: Vec<LogRecord>,
    metrics: Option<ExportMetricsServiceRequest>,
    resolutions: Option<Vec<Resolution>>,
    book: Arc<Mutex<Book>>,
    pub(super) stats: Stats,
    peak_open: usize,
}

fn span_hash(trace: &[u8; 16], span: &[u8; 8]) -> u64 {
    // FNV-1a over the 24 bytes: stable across runs and processes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in trace.iter().chain(span.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn str_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn text(v: &Value) -> Option<String> {
    attrs::value_as_str(v)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A record's fields: attributes, then body map, then resource attributes.
struct Fields<'a> {
    attrs: &'a [KeyValue],
    body: &'a [KeyValue],
    resource: &'a [KeyValue],
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        if key.is_empty() {
            return None;
        }
        attrs::get(self.attrs, key)
            .or_else(|| attrs::get(self.body, key))
            .or_else(|| attrs::get(self.resource, key))
    }
}

impl Engine {
    pub fn new(c: Compiled) -> Engine {
        let mut health = Health::new(&c.cfg.health, c.eval);
        let stage_service_ids = c
            .stage_services
            .iter()
            .map(|names| names.iter().filter_map(|n| health.intern(n)).collect())
            .collect();
        let model = Model::new(
            c.stages.len(),
            c.kpis.len(),
            c.cfg.prediction.min_samples,
            ns(c.cfg.prediction.half_life),
        );
        let figures = c.kpis.iter().map(|_| KpiFigures::new()).collect();
        let series = SeriesTable {
            index: HashMap::new(),
            values: Vec::new(),
            max: c.max_series,
            overflowed: 0,
        };
        Engine {
            health,
            stage_service_ids,
            flows: vec![StageFlow::default(); c.stages.len()],
            predictions: None,
            model,
            orders: Default::default(),
            orphans: Default::default(),
            orphan_queue: VecDeque::new(),
            closed: Default::default(),
            closed_queue: VecDeque::new(),
            pending: BTreeMap::new(),
            seq: 0,
            max_time: 0,
            input_time: [0; 2],
            input_seen: [None; 2],
            wall: std::time::Instant::now(),
            first_time: None,
            last_tick: None,
            first_tick: None,
            figures,
            series,
            logs: Vec::new(),
            metrics: None,
            resolutions: None,
            book: Arc::new(Mutex::new(Book::default())),
            stats: Stats::default(),
            peak_open: 0,
            c,
        }
    }

    /// The view the HTTP API serves, refreshed at every evaluation.
    pub fn book(&self) -> Arc<Mutex<Book>> {
        self.book.clone()
    }

    /// Keeps every [`Resolution`] for [`Engine::take_resolutions`] (evaluation and tests).
    pub fn record_predictions(&mut self) {
        self.predictions.get_or_insert_with(Vec::new);
    }

    /// The predictions recorded since the last call (see [`Prediction`]).
    pub fn take_predictions(&mut self) -> Vec<Prediction> {
        self.predictions.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Keeps every [`Resolution`] for [`Engine::take_resolutions`] (for evaluations).
    pub fn record_resolutions(&mut self) {
        self.resolutions.get_or_insert_with(Vec::new);
    }

    pub fn take_resolutions(&mut self) -> Vec<Resolution> {
        self.resolutions.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The `kpi.at_risk` log records produced since the last call.
    pub fn take_logs(&mut self) -> Vec<LogRecord> {
        std::mem::take(&mut self.logs)
    }

    /// The latest metrics snapshot due since the last call.
    pub fn take_metrics(&mut self) -> Option<ExportMetricsServiceRequest> {
        self.metrics.take()
    }

    pub fn kpis(&self) -> &[Kpi] {
        &self.c.kpis
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Open orders held.
    pub fn open_orders(&self) -> usize {
        self.orders.len()
    }

    /// Most open orders held at once.
    pub fn peak_open_orders(&self) -> usize {
        self.peak_open
    }

    /// Items waiting for the watermark.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Closed order ids remembered, and orders' span evidence waiting for its order.
    pub fn remembered(&self) -> (usize, usize) {
        (self.closed.len(), self.orphans.len())
    }

    /// Bytes held by the learned distributions (constant).
    pub fn model_bytes(&self) -> usize {
        self.model.memory_bytes()
    }

    /// The watermark: the oldest of the active inputs' newest event times, minus `allowed_lateness` (an input is
    /// active while it sent within `idle_timeout` of wall time); when none is active, the newest event time seen,
    /// minus `allowed_lateness`. An input that sent nothing since the state began holds nothing back.
    pub fn watermark(&self) -> u64 {
        (0..Input::ALL.len())
            .filter(|&i| self.active(i))
            .map(|i| self.input_time[i])
            .min()
            .unwrap_or(self.max_time)
            .saturating_sub(self.c.lateness)
    }

    /// Whether input `i` holds the watermark: it sent something, within `idle_timeout` of `wall`.
    fn active(&self, i: usize) -> bool {
        self.input_time[i] > 0
            && self.input_seen[i].is_some_and(|seen| {
                self.c
                    .idle
                    .is_none_or(|d| self.wall.saturating_duration_since(seen) < d)
            })
    }

    /// Each input's watermark, whether it is active, and its late items.
    pub fn inputs(&self) -> [InputState; 2] {
        Input::ALL.map(|input| {
            let i = input as usize;
            InputState {
                input,
                watermark: (self.input_time[i] > 0).then(|| self.input_time[i].saturating_sub(self.c.lateness)),
                active: self.active(i),
                late: match input {
                    Input::Events => self.stats.events_late,
                    Input::Spans => self.stats.spans_late,
                },
            }
        })
    }

    /// When (wall time) the next input that holds the watermark back goes idle, if one does: advance then
    /// ([`Engine::advance_at`]) to let the other inputs move it on.
    pub fn idle_deadline(&self) -> Option<std::time::Instant> {
        let d = self.c.idle?;
        (0..Input::ALL.len())
            .filter(|&i| self.active(i) && self.input_time[i] < self.max_time)
            .filter_map(|i| self.input_seen[i])
            .map(|seen| seen + d)
            .min()
    }

    /// After a restore: each input's newest event time from the snapshot (`None`, a snapshot of an earlier build:
    /// the newest time of all for each input that had sent something, which holds the watermark where it was), and
    /// every input that had sent counts as having sent now, so that it has `idle_timeout` to resume.
    fn restore_inputs(&mut self, newest: Option<[u64; 2]>) {
        let had = [self.stats.events > 0, self.stats.spans > 0];
        self.input_time = newest.unwrap_or(had.map(|h| if h { self.max_time } else { 0 }));
        self.wall = self.wall.max(std::time::Instant::now());
        self.input_seen = self.input_time.map(|t| (t > 0).then_some(self.wall));
    }

    /// The last evaluation time.
    pub fn now(&self) -> Option<u64> {
        self.last_tick
    }

    // ---------------------------------------------------------------------------------------------------------
    // Input.

    /// Reads the business events among `req`'s log records, received now.
    pub fn ingest_logs(&mut self, req: &ExportLogsServiceRequest) {
        self.ingest_logs_at(req, std::time::Instant::now());
    }

    /// Reads the business events among `req`'s log records, received at `now` (wall time).
    pub fn ingest_logs_at(&mut self, req: &ExportLogsServiceRequest, now: std::time::Instant) {
        self.wall = self.wall.max(now);
        for rl in &req.resource_logs {
            let resource: &[KeyValue] = rl.resource.as_ref().map_or(&[], |r| &r.attributes);
            for sl in &rl.scope_logs {
                for rec in &sl.log_records {
                    self.ingest_record(rec, resource);
                }
            }
        }
    }

    fn ingest_record(&mut self, rec: &LogRecord, resource: &[KeyValue]) {
        let m = &self.c.mapping;
        let Some(name) = m.event_name(rec) else { return };
        if !m.accepts(name) {
            return;
        }
        let Some(&mark) = self.c.marks.get(name) else {
            self.stats.events_ignored += 1;
            return;
        };
        let body: &[KeyValue] = match rec.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(Value::KvlistValue(l)) => &l.values,
            _ => &[],
        };
        let f = Fields {
            attrs: &rec.attributes,
            body,
            resource,
        };
        let Some(order) = f.get(&m.order_id).and_then(text) else {
            self.stats.events_missing_order += 1;
            return;
        };
        let time = match m.time.as_deref().and_then(|k| f.get(k)) {
            Some(v) => attrs::value_as_i64(v).and_then(|t| u64::try_from(t).ok()).unwrap_or(0),
            None if rec.time_unix_nano != 0 => rec.time_unix_nano,
            None => rec.observed_time_unix_nano,
        };
        if time == 0 {
            self.stats.events_ignored += 1;
            return;
        }
        let dims: Box<[Option<Box<str>>]> = self
            .c
            .dims
            .iter()
            .map(|d| match &d.source {
                DimSource::Attribute(a) => f.get(a).and_then(text).map(Into::into),
                DimSource::Lookup { table, key, column } => {
                    let k = f.get(key).and_then(text)?;
                    table
                        .with_row(&k, |row| row.get(column).map(|v| v.as_str().trim().to_string()))
                        .flatten()
                        .filter(|s| !s.is_empty())
                        .map(Into::into)
                }
            })
            .collect();
        // The order's value, when the event states one (an unreadable amount is left out: the KPI does not need it).
        let currency = match f.get(&m.currency) {
            Some(Value::StringValue(c)) => bizpilot_core::Currency::new(c).ok(),
            _ => m.default_currency,
        };
        let value = f
            .get(&m.amount)
            .and_then(|v| bizpilot_business::amount::money_from_value(v, currency).ok());
        self.stats.events += 1;
        let rank = match mark {
            Mark::Stage(i) => u16::from(i),
            Mark::Cancel => RANK_CANCEL,
        };
        self.push(
            time,
            rank,
            Item::Event {
                order: order.into(),
                mark,
                dims,
                value,
            },
        );
    }

    /// Reads the spans of `req` that carry an order key or serve a stage, received now.
    pub fn ingest_traces(&mut self, req: &ExportTraceServiceRequest) {
        self.ingest_traces_at(req, std::time::Instant::now());
    }

    /// Reads the spans of `req` that carry an order key or serve a stage, received at `now` (wall time).
    pub fn ingest_traces_at(&mut self, req: &ExportTraceServiceRequest, now: std::time::Instant) {
        self.wall = self.wall.max(now);
        for rs in &req.resource_spans {
            let resource: &[KeyValue] = rs.resource.as_ref().map_or(&[], |r| &r.attributes);
            let service_name = attrs::get_str(resource, "service.name").unwrap_or("unknown");
            let mut sid = self.health.id(service_name);
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    let order = self
                        .c
                        .key_attrs
                        .iter()
                        .find_map(|k| attrs::get(&span.attributes, k).and_then(text));
                    if sid.is_none() && order.is_some() {
                        sid = self.health.intern(service_name);
                    }
                    let Some(sid) = sid else { continue };
                    if order.is_none() && !self.stage_service_ids.iter().any(|v| v.contains(&sid)) {
                        continue;
                    }
                    let end = if span.end_time_unix_nano != 0 {
                        span.end_time_unix_nano
                    } else {
                        span.start_time_unix_nano
                    };
                    if end == 0 {
                        continue;
                    }
                    let error = span.status.as_ref().is_some_and(|s| s.code == StatusCode::Error as i32);
                    let mut trace_id = [0u8; 16];
                    let mut span_id = [0u8; 8];
                    if span.trace_id.len() == 16 {
                        trace_id.copy_from_slice(&span.trace_id);
                    }
                    if span.span_id.len() == 8 {
                        span_id.copy_from_slice(&span.span_id);
                    }
                    self.stats.spans += 1;
                    self.push(
                        end,
                        RANK_SPAN,
                        Item::Span(Box::new(SpanRec {
                            order: order.map(Into::into),
                            service: sid,
                            name: span.name.as_str().into(),
                            duration: end.saturating_sub(span.start_time_unix_nano),
                            error,
                            trace_id,
                            span_id,
                        })),
                    );
                }
            }
        }
    }

    fn push(&mut self, time: u64, rank: u16, item: Item) {
        self.max_time = self.max_time.max(time);
        let input = Input::of(&item) as usize;
        self.input_time[input] = self.input_time[input].max(time);
        self.input_seen[input] = Some(self.wall);
        if self.last_tick.is_some_and(|t| time <= t) {
            // Behind the last evaluation: applied at once, out of event-time order.
            match &item {
                Item::Event { .. } => self.stats.events_late += 1,
                Item::Span(_) => self.stats.spans_late += 1,
            }
            self.apply(time, item);
            return;
        }
        if self.last_tick.is_none() {
            self.first_time = Some(self.first_time.map_or(time, |f| f.min(time)));
        }
        // Ties in time and rank are broken by content (order id, span id), so that the order in which items
        // are applied does not depend on their arrival.
        let h = match &item {
            Item::Event { order, .. } => str_hash(order),
            Item::Span(s) => span_hash(&s.trace_id, &s.span_id),
        };
        self.seq += 1;
        self.pending.insert((time, rank, h, self.seq), item);
        while self.pending.len() > self.c.max_pending {
            // Too much waiting: the watermark jumps to the oldest item.
            let Some((&(t, _, _, _), _)) = self.pending.first_key_value() else {
                break;
            };
            self.stats.forced += 1;
            self.advance_to(t);
            if let Some(((t, _, _, _), item)) = self.pending.pop_first() {
                self.apply(t, item);
            }
        }
    }

    /// Evaluates every interval boundary the watermark has passed, now.
    pub fn advance(&mut self) {
        self.advance_at(std::time::Instant::now());
    }

    /// Evaluates every interval boundary the watermark has passed at `now` (wall time: inputs silent for
    /// `idle_timeout` by then no longer hold it back).
    pub fn advance_at(&mut self, now: std::time::Instant) {
        self.wall = self.wall.max(now);
        self.advance_to(self.watermark());
    }

    /// End of input: everything seen is final. Evaluates up to the newest event time and emits a last
    /// metrics snapshot.
    pub fn finish(&mut self) {
        let end = self.max_time;
        self.advance_to(end);
        if self.last_tick.is_none_or(|t| t < end) {
            while let Some(((t, _, _, _), item)) = self.pending.pop_first() {
                self.apply(t, item);
            }
            self.evaluate(end);
            self.last_tick = Some(end);
        }
        self.metrics = Some(self.metrics_request(self.last_tick.unwrap_or(end)));
    }

    fn advance_to(&mut self, w: u64) {
        loop {
            let b = match self.last_tick {
                Some(t) => t.saturating_add(self.c.eval),
                None => match self.first_time {
                    Some(f) => f.div_ceil(self.c.eval).saturating_mul(self.c.eval),
                    None => return,
                },
            };
            if b > w || b == u64::MAX {
                return;
            }
            while let Some(e) = self.pending.first_entry() {
                if e.key().0 > b {
                    break;
                }
                let ((t, _, _, _), item) = e.remove_entry();
                self.apply(t, item);
            }
            self.first_tick.get_or_insert(b);
            self.evaluate(b);
            self.last_tick = Some(b);
            if b.is_multiple_of(self.c.metrics_every) {
                self.metrics = Some(self.metrics_request(b));
            }
        }
    }

    // ---------------------------------------------------------------------------------------------------------
    // Applying items in event-time order.

    fn apply(&mut self, time: u64, item: Item) {
        match item {
            Item::Event {
                order,
                mark,
                dims,
                value,
            } => self.apply_event(time, order, mark, dims, value),
            Item::Span(s) => self.apply_span(time, *s),
        }
    }

    fn close(&mut self, id: Box<str>, time: u64) {
        if self.closed.insert(id.clone(), time).is_none() {
            self.closed_queue.push_back((time, id));
        }
        while self.closed.len() > self.c.max_closed {
            let Some((t, old)) = self.closed_queue.pop_front() else {
                break;
            };
            if self.closed.get(&old) == Some(&t) {
                self.closed.remove(&old);
            }
        }
    }

    fn apply_event(
        &mut self,
        time: u64,
        id: Box<str>,
        mark: Mark,
        dims: Box<[Option<Box<str>>]>,
        value: Option<bizpilot_core::Money>,
    ) {
        if self.closed.contains_key(&id) {
            self.stats.events_after_close += 1;
            return;
        }
        let j = match mark {
            Mark::Cancel => {
                if let Some(mut o) = self.orders.remove(&id) {
                    for k in 0..self.c.kpis.len() {
                        if !o.kpis[k].resolved {
                            self.resolve(&id, &mut o, k, Outcome::Cancelled, time);
                        }
                    }
                }
                self.close(id, time);
                return;
            }
            Mark::Stage(j) => usize::from(j),
        };
        let n_stages = self.c.stages.len();
        if j >= n_stages {
            return;
        }
        let is_new = !self.orders.contains_key(&id);
        if is_new {
            if self.orders.len() >= self.c.max_open {
                self.stats.orders_refused += 1;
                return;
            }
            let orphan = self.orphans.remove(&id).unwrap_or_default();
            let o = Order {
                reached: vec![0; n_stages].into_boxed_slice(),
                stage: j,
                first_seen: time,
                dims: vec![None; self.c.dims.len()].into_boxed_slice(),
                evidence: orphan.evidence,
                seen_spans: orphan.seen,
                kpis: vec![KpiState::default(); self.c.kpis.len()].into_boxed_slice(),
                cond: Condition::Healthy,
                sid: OVERFLOW,
                clock: 0.0,
                clock_at: time,
                hit: None,
                lost: 0.0,
                lost_total: 0.0,
                value: None,
            };
            self.orders.insert(id.clone(), o);
            self.peak_open = self.peak_open.max(self.orders.len());
        }
        let Some(mut o) = self.orders.remove(&id) else { return };
        if value.is_some() {
            // Events are applied in event-time order: the latest stated value wins.
            o.value = value;
        }
        let mut changed = is_new;
        for (slot, v) in o.dims.iter_mut().zip(dims.into_vec()) {
            if slot.is_none() && v.is_some() {
                *slot = v;
                changed = true;
            }
        }
        if changed {
            o.sid = self.series.id(self.dims_values(&o));
        }
        if o.reached[j] != 0 {
            self.stats.events_duplicate += 1;
            o.reached[j] = o.reached[j].min(time);
            self.orders.insert(id, o);
            return;
        }
        o.reached[j] = time;
        if !is_new {
            if j > o.stage {
                let prev = o.stage;
                let entered = o.entered();
                if entered != 0 && time >= entered {
                    let c = self.condition(&o, prev);
                    let rate = self.flows.get(prev).map_or(1.0, |f| f.rate);
                    let clock = o.clock + time.saturating_sub(o.clock_at) as f64 * rate;
                    self.model.stage_exit(prev, c, clock as u64);
                    if let Some(f) = self.flows.get_mut(prev) {
                        f.exited(entered);
                        if self.last_tick.is_some_and(|t| entered <= t) {
                            f.observed += 1.0;
                        }
                    }
                }
                o.stage = j;
                o.clock = 0.0;
                o.lost = 0.0;
                o.clock_at = time;
            } else {
                self.stats.events_out_of_order += 1;
            }
        }
        for k in 0..self.c.kpis.len() {
            let (from, to, deadline) = {
                let kp = &self.c.kpis[k];
                (kp.from, kp.to, kp.deadline)
            };
            if o.stage < to || o.kpis[k].goal {
                continue;
            }
            o.kpis[k].goal = true;
            let t_goal = if o.reached[to] != 0 { o.reached[to] } else { time };
            for m in from..to {
                let r = o.reached[m];
                if r != 0 && t_goal >= r {
                    self.model.goal_reached(k, m, t_goal - r);
                }
            }
            if !o.kpis[k].resolved {
                let outcome = match o.reached[from] {
                    0 => Outcome::NoStart,
                    start if t_goal <= start.saturating_add(deadline) => Outcome::InTime,
                    _ => Outcome::Breached,
                };
                self.resolve(&id, &mut o, k, outcome, t_goal);
            }
        }
        if o.stage + 1 >= n_stages {
            self.close(id, time);
        } else {
            self.orders.insert(id, o);
        }
    }

    fn apply_span(&mut self, end: u64, s: SpanRec) {
        let Some(order) = s.order else {
            self.health.observe(s.service, &s.name, end, s.duration, s.error);
            return;
        };
        if self.closed.contains_key(&order) {
            self.health.observe(s.service, &s.name, end, s.duration, s.error);
            return;
        }
        let h = span_hash(&s.trace_id, &s.span_id);
        let known = self.orders.contains_key(&order);
        if !known && !self.orphans.contains_key(&order) {
            if self.orphans.len() >= self.c.max_orphans {
                self.stats.spans_orphaned += 1;
                self.health.observe(s.service, &s.name, end, s.duration, s.error);
                return;
            }
            self.orphans.insert(
                order.clone(),
                Orphan {
                    created: end,
                    ..Default::default()
                },
            );
            self.orphan_queue.push_back((end, order.clone()));
        }
        let (evidence, seen) = match self.orders.get_mut(&order) {
            Some(o) => (&mut o.evidence, &mut o.seen_spans),
            None => match self.orphans.get_mut(&order) {
                Some(o) => (&mut o.evidence, &mut o.seen),
                None => return,
            },
        };
        if seen.contains(&h) {
            self.stats.spans_duplicate += 1;
            return;
        }
        if seen.len() < MAX_SEEN_SPANS {
            seen.push(h);
        }
        let slow = self.health.observe(s.service, &s.name, end, s.duration, s.error);
        let e = match evidence.iter().position(|e| e.service == s.service) {
            Some(i) => &mut evidence[i],
            None if evidence.len() < MAX_EVIDENCE_SERVICES => {
                evidence.push(Evidence {
                    service: s.service,
                    spans: 0,
                    errors: 0,
                    slow: 0,
                    last_bad: 0,
                    traces: Vec::new(),
                });
                let last = evidence.len() - 1;
                &mut evidence[last]
            }
            None => return,
        };
        e.spans += 1;
        e.errors += u32::from(s.error);
        e.slow += u32::from(slow);
        if s.error || slow {
            e.last_bad = e.last_bad.max(end);
        }
        if (s.error || slow) && e.traces.len() < MAX_EXAMPLE_TRACES && !e.traces.contains(&s.trace_id) {
            e.traces.push(s.trace_id);
        }
    }

    // ---------------------------------------------------------------------------------------------------------
    // Conditions and causes.

    fn condition(&self, o: &Order, stage: usize) -> Condition {
        condition_of(&self.health, &self.stage_service_ids, o, stage)
    }

    fn cause(&self, o: &Order) -> Cause {
        let slowed = self.flows.get(o.stage).is_some_and(StageFlow::slowed);
        cause_of(
            &self.health,
            &self.stage_service_ids,
            o,
            slowed,
            slowed || o.hit.is_some(),
            &self.medians(),
            long_wait(&self.c.kpis),
        )
    }

    fn medians(&self) -> Vec<f64> {
        medians_of(&self.model, self.c.stages.len())
    }

    /// `shipping latency`, `payment errors`, `paid stage slowdown` (a stage slowed for everybody, no IT
    /// service involved), or `none` (no cause found).
    pub fn cause_label(&self, c: &Cause) -> String {
        match (c.service, c.issue, c.stage) {
            (Some(s), Some(i), _) => format!("{} {}", self.health.name(s), i.as_str()),
            (_, _, Some(st)) => format!(
                "{} stage slowdown",
                self.c.stages.get(usize::from(st)).map_or("?", String::as_str)
            ),
            _ => "none".into(),
        }
    }

    fn cause_service(&self, c: &Cause) -> Option<String> {
        c.service.map(|s| self.health.name(s).to_string())
    }

    fn dims_values(&self, o: &Order) -> Box<[Box<str>]> {
        o.dims
            .iter()
            .zip(&self.c.dims)
            .map(|(v, d)| v.clone().unwrap_or_else(|| d.default.as_str().into()))
            .collect()
    }

    // ---------------------------------------------------------------------------------------------------------
    // Resolution and scoring.

    fn resolve(&mut self, id: &str, o: &mut Order, k: usize, outcome: Outcome, time: u64) {
        let st = &mut o.kpis[k];
        if st.resolved {
            return;
        }
        st.resolved = true;
        st.at_risk = false;
        let from = self.c.kpis[k].from;
        let start = o.reached[from];
        let deadline = (start != 0).then(|| start.saturating_add(self.c.kpis[k].deadline));
        let flagged_at = o.kpis[k].flagged_at;
        let flag_cause = o.kpis[k].flag_cause;
        let last_cause = o.kpis[k].cause.or(flag_cause);
        let max_p = o.kpis[k].max_p;
        let flag_stage = o.kpis[k].flag_stage;
        let flag_p = o.kpis[k].flag_p;
        let flag_p0 = o.kpis[k].flag_p0;
        let flag_services = std::mem::take(&mut o.kpis[k].flag_services);
        let bins = o.kpis[k].bins;
        match outcome {
            Outcome::InTime | Outcome::Breached => {
                self.model
                    .outcome(k, bins, outcome == Outcome::Breached, deadline.unwrap_or(time));
                let sid = o.sid;
                let fig = &mut self.figures[k];
                let slot = fig.by_series.entry(sid).or_insert([0, 0]);
                let breached = outcome == Outcome::Breached;
                slot[usize::from(breached)] += 1;
                let score = match (flagged_at.is_some(), breached) {
                    (true, true) => 0,
                    (true, false) => 1,
                    (false, true) => 2,
                    (false, false) => 3,
                };
                fig.scores[score] += 1;
                if let (0, Some(f), Some(d)) = (score, flagged_at, deadline) {
                    let lead = d.saturating_sub(f);
                    fig.lead.add(lead, 1.0);
                    let secs = lead as f64 / 1e9;
                    let i = LEAD_BOUNDS.partition_point(|b| *b < secs);
                    if let Some(c) = fig.lead_buckets.get_mut(i) {
                        *c += 1;
                    }
                    fig.lead_sum += secs;
                }
                if breached {
                    let cause = flag_cause.unwrap_or_else(|| self.cause(o));
                    let label = self.cause_label(&cause);
                    *self.figures[k].breaches_by_cause.entry(label).or_default() += 1;
                }
            }
            Outcome::Cancelled => self.figures[k].cancelled += 1,
            Outcome::Expired => self.figures[k].expired += 1,
            Outcome::NoStart => self.figures[k].no_start += 1,
        }
        if self.resolutions.is_some() {
            let r = Resolution {
                kpi: k,
                order_id: id.into(),
                outcome,
                time,
                deadline,
                flagged_at,
                flag_cause: flag_cause.map(|c| self.cause_label(&c)),
                flag_service: flag_cause.and_then(|c| self.cause_service(&c)),
                flag_cause_stage: flag_cause
                    .and_then(|c| c.stage)
                    .and_then(|s| self.c.stages.get(usize::from(s)).cloned()),
                last_cause: last_cause.map(|c| self.cause_label(&c)),
                last_service: last_cause.and_then(|c| self.cause_service(&c)),
                last_cause_stage: last_cause
                    .and_then(|c| c.stage)
                    .and_then(|s| self.c.stages.get(usize::from(s)).cloned()),
                flag_services: flag_services.iter().map(|s| self.health.name(*s).to_string()).collect(),
                flag_stage: flag_stage.and_then(|s| self.c.stages.get(usize::from(s)).cloned()),
                flag_probability: flag_p,
                flag_without_slowdowns: flag_p0,
                max_probability: max_p,
            };
            if let Some(v) = self.resolutions.as_mut() {
                v.push(r);
            }
        }
    }

    // ---------------------------------------------------------------------------------------------------------
    // Evaluation.

    fn evaluate(&mut self, b: u64) {
        self.model.begin(b);
        // Pass 0: the stages' flow over the interval that ends now (see [`super::flow`]).
        if let Some(last) = self.last_tick {
            let interval = b.saturating_sub(last).max(1);
            // The learned durations need a full deadline of data before a stage can be judged.
            let warm = self
                .first_tick
                .is_some_and(|f| b.saturating_sub(f) >= self.c.kpis.iter().map(|k| k.deadline).max().unwrap_or(0));
            for f in &mut self.flows {
                f.close_interval(b, interval);
                if !warm {
                    f.assume_normal();
                }
            }
        }
        let slowed = self.flows.iter().any(StageFlow::slowed);
        self.model.learn_outcomes(b, slowed);
        for f in &mut self.flows {
            f.backlog = 0;
        }
        // Pass 1: expiry, deadlines, conditions and the open orders' ages (censored observations).
        let mut expired: Vec<Box<str>> = Vec::new();
        let mut breached: Vec<(Box<str>, usize)> = Vec::new();
        {
            let Engine {
                orders,
                model,
                health,
                stage_service_ids,
                flows,
                c,
                ..
            } = self;
            let long = long_wait(&c.kpis) as f64;
            // How much later than a typical order an order of long but normal duration leaves each stage.
            let margins: Vec<Option<f64>> = (0..flows.len())
                .map(|s| {
                    let q = model.duration_quantile(s, Condition::Healthy, OVERTAKEN_QUANTILE)?;
                    Some(q - model.median_duration(s, Condition::Healthy)?)
                })
                .collect();
            for (id, o) in orders.iter_mut() {
                let rate = flows.get(o.stage).map_or(1.0, |f| f.rate);
                let elapsed = b.saturating_sub(o.clock_at) as f64;
                o.clock += elapsed * rate;
                if rate < 1.0 {
                    o.lost += elapsed * (1.0 - rate);
                    o.lost_total += elapsed * (1.0 - rate);
                }
                o.clock_at = o.clock_at.max(b);
                // Overtaken by the orders that entered the stage after it: the slowdown is not what keeps it (see
                // [`StageFlow::overtaken`]); its own work went on all along, so the time counted lost is given back.
                if o.lost > 0.0
                    && let (Some(f), Some(Some(margin))) = (flows.get(o.stage), margins.get(o.stage))
                    && f.serving()
                    && f.overtaken(o.entered(), *margin)
                {
                    o.clock += o.lost;
                    o.lost_total = (o.lost_total - o.lost).max(0.0);
                    o.lost = 0.0;
                    if o.hit == u8::try_from(o.stage).ok() {
                        o.hit = None;
                    }
                }
                if o.lost >= long {
                    o.hit = u8::try_from(o.stage).ok();
                }
                if b.saturating_sub(o.first_seen) > c.max_order_age {
                    expired.push(id.clone());
                    continue;
                }
                if let Some(f) = flows.get_mut(o.stage) {
                    f.backlog += 1;
                }
                let cond = condition_of(health, stage_service_ids, o, o.stage);
                o.cond = cond;
                model.open_in_stage(o.stage, cond, o.clock as u64);
                for (k, kp) in c.kpis.iter().enumerate() {
                    let Some(st) = o.kpis.get(k) else { continue };
                    if st.goal {
                        continue;
                    }
                    for m in kp.from..kp.to {
                        let r = o.reached.get(m).copied().unwrap_or(0);
                        if r != 0 && b >= r {
                            model.open_towards_goal(k, m, b - r);
                        }
                    }
                    let start = o.reached.get(kp.from).copied().unwrap_or(0);
                    if !st.resolved && start != 0 && b > start.saturating_add(kp.deadline) {
                        breached.push((id.clone(), k));
                    }
                }
            }
        }
        // Resolutions in a fixed order, whatever the map's.
        breached.sort_unstable();
        expired.sort_unstable();
        for (id, k) in breached {
            if let Some(mut o) = self.orders.remove(&id) {
                self.resolve(&id, &mut o, k, Outcome::Breached, b);
                self.orders.insert(id, o);
            }
        }
        for id in expired {
            if let Some(mut o) = self.orders.remove(&id) {
                self.stats.orders_expired += 1;
                self.model.stage_censored(o.stage, o.cond, o.clock as u64);
                for k in 0..self.c.kpis.len() {
                    let (from, to) = (self.c.kpis[k].from, self.c.kpis[k].to);
                    if !o.kpis[k].goal {
                        for m in from..to {
                            let r = o.reached[m];
                            if r != 0 && b >= r {
                                self.model.goal_censored(k, m, b - r);
                            }
                        }
                    }
                    if !o.kpis[k].resolved {
                        self.resolve(&id, &mut o, k, Outcome::Expired, b);
                    }
                }
                self.close(id, b);
            }
        }
        self.model.estimate();

        // Pass 2: predictions.
        let mut flagged: Vec<(usize, Box<str>, f32)> = Vec::new();
        let hourly = b.is_multiple_of(3_600_000_000_000);
        {
            let Engine {
                orders,
                model,
                health,
                stage_service_ids,
                flows,
                predictions,
                c,
                ..
            } = self;
            let interval = c.eval as f64;
            let changes: Vec<TimeChange> = flows.iter().map(|f| f.time_change(b)).collect();
            // The slowdowns seen to end, of every stage: what the connector knows of how long slowdowns last.
            let episodes: Vec<u64> = flows.iter().flat_map(|f| f.episodes.iter().copied()).collect();
            let mixtures: Vec<Vec<TimeChange>> = flows.iter().map(|f| f.time_changes(b, &episodes)).collect();
            // First come, first served: the entry times of the orders in each slowed stage, for "backlog ahead".
            let mut queues: Vec<Vec<u64>> = vec![Vec::new(); flows.len()];
            for o in orders.values() {
                if let Some(q) = queues.get_mut(o.stage)
                    && flows.get(o.stage).is_some_and(StageFlow::queueing)
                {
                    q.push(o.entered());
                }
            }
            for q in &mut queues {
                q.sort_unstable();
            }
            let medians = medians_of(model, c.stages.len());
            let slowed: Vec<bool> = flows.iter().map(StageFlow::slowed).collect();
            // Summed in fixed point (1e-9 of an order): integer sums do not depend on the map's order, so a
            // replay gives what the live run gave to the last bit.
            let mut expected = vec![0u64; flows.len()];
            for (id, o) in orders.iter_mut() {
                // A stalled stage holds its orders while their own work goes on: an order leaves at the later of
                // the stall's end and its own exit, which may already have come while it was held. So its own
                // duration is conditioned on its clock age (which stood still since the stall began), and the
                // time it has been held (`held`) counts towards its own work: see [`TimeChange::held_for`].
                let held = flows.get(o.stage).map_or(0, |f| f.held(o.entered(), b));
                let age = o.clock;
                let mixture = mixtures.get(o.stage).map_or(&[TimeChange::NORMAL][..], |v| &v[..]);
                let waits = queues.get(o.stage).filter(|q| !q.is_empty()).and_then(|q| {
                    flows
                        .get(o.stage)?
                        .queue_waits(q.partition_point(|e| *e < o.entered()), b, &episodes)
                });
                let stage_slowed = slowed.get(o.stage).copied().unwrap_or(false);
                if let Some(x) = model.exit_probability(o.stage, o.cond, o.clock, interval)
                    && let Some(e) = expected.get_mut(o.stage)
                {
                    *e += (x * 1e9).round() as u64;
                }
                // Stages after this one that are slowed now delay the order too, if it gets there before they
                // recover (it is taken to get there after the typical duration of its current stage).
                let typical = model.median_duration(o.stage, o.cond).unwrap_or(0.0);
                for (k, kp) in c.kpis.iter().enumerate() {
                    let start = o.reached.get(kp.from).copied().unwrap_or(0);
                    let Some(st) = o.kpis.get(k) else { continue };
                    if st.resolved || start == 0 || o.stage >= kp.to {
                        continue;
                    }
                    let deadline = start.saturating_add(kp.deadline);
                    if deadline <= b {
                        continue;
                    }
                    let later: f64 = changes
                        .iter()
                        .enumerate()
                        .filter(|(m, _)| *m > o.stage && *m < kp.to)
                        .map(|(_, t)| StageFlow::extra_delay_of(t, typical))
                        .sum();
                    let left = (deadline - b).saturating_sub(later as u64);
                    let ps: Option<Vec<f64>> = match &waits {
                        Some(w) => w
                            .iter()
                            .map(|w| model.miss_after_wait(k, o.stage, kp.to, *w, left))
                            .collect(),
                        None => mixture
                            .iter()
                            .map(|tc| {
                                let (tc, left) = tc.held_for(left, held);
                                model.miss_changed(k, o.stage, kp.to, o.cond, age, left, tc)
                            })
                            .collect(),
                    };
                    // The raw probability, then calibrated on the outcomes of the raw probabilities given before.
                    let regime = usize::from(waits.is_some() || mixture.len() > 1 || later > 0.0);
                    let raw = ps.map(|v| v.iter().sum::<f64>() / v.len().max(1) as f64);
                    let p = raw.map(|r| model.calibrated(k, regime, r) as f32);
                    if hourly && let (Some(v), Some(p)) = (predictions.as_mut(), p) {
                        v.push(Prediction {
                            kpi: k,
                            order_id: id.clone(),
                            time: b,
                            probability: p,
                            raw: raw.unwrap_or(0.0) as f32,
                            stage: u8::try_from(o.stage).unwrap_or(u8::MAX),
                            slowed: regime == 1,
                        });
                    }
                    let at_risk = p.is_some_and(|p| f64::from(p) >= c.threshold);
                    // Would the order make it without the time slowdowns cost it? If not, they are not its cause.
                    // (Its clock stood still while a stage was stalled: with the time lost given back, this is
                    // also the question for an order held by a stall, which may have been due since it began.)
                    let p0 = (at_risk && o.lost_total > 0.0)
                        .then(|| {
                            model.miss_changed(
                                k,
                                o.stage,
                                kp.to,
                                o.cond,
                                o.clock,
                                (deadline - b).saturating_add(o.lost_total as u64),
                                TimeChange::NORMAL,
                            )
                        })
                        .flatten();
                    let matters = p0.is_some_and(|p0| p0 < 0.5);
                    let cause = at_risk.then(|| {
                        cause_of(
                            health,
                            stage_service_ids,
                            o,
                            stage_slowed && matters,
                            matters,
                            &medians,
                            long_wait(&c.kpis),
                        )
                    });
                    let services: Vec<u16> = if at_risk && st.flagged_at.is_none() {
                        o.evidence.iter().filter(|e| e.bad() > 0).map(|e| e.service).collect()
                    } else {
                        Vec::new()
                    };
                    let stage = o.stage;
                    let Some(st) = o.kpis.get_mut(k) else { continue };
                    if let (Some(r), Some(mask)) = (raw, st.bins.get_mut(regime)) {
                        *mask |= 1 << crate::stats::calibration::bin(r);
                    }
                    st.p = p;
                    if let Some(p) = p {
                        st.max_p = Some(st.max_p.map_or(p, |m| m.max(p)));
                    }
                    st.at_risk = at_risk;
                    st.cause = cause;
                    if at_risk && st.flagged_at.is_none() {
                        st.flagged_at = Some(b);
                        st.flag_cause = cause;
                        st.flag_stage = u8::try_from(stage).ok();
                        st.flag_p = p;
                        st.flag_p0 = p0.map(|x| x as f32);
                        st.flag_services = services;
                        flagged.push((k, id.clone(), p.unwrap_or(1.0)));
                    }
                }
            }
            for (f, e) in flows.iter_mut().zip(expected) {
                f.expected_next += e as f64 / 1e9;
            }
        }
        flagged.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.total_cmp(&a.2)).then_with(|| a.1.cmp(&b.1)));
        for (k, id, _) in flagged {
            if let Some(rec) = self.orders.get(&id).map(|o| self.at_risk_log(k, &id, o, b)) {
                self.logs.push(rec);
            }
        }
        self.refresh_book(b);
        self.health.rotate(b);
        self.purge(b);
    }

    fn purge(&mut self, b: u64) {
        let keep = self.c.closed_for;
        while let Some((t, _)) = self.closed_queue.front() {
            if t.saturating_add(keep) >= b {
                break;
            }
            if let Some((t, id)) = self.closed_queue.pop_front()
                && self.closed.get(&id) == Some(&t)
            {
                self.closed.remove(&id);
            }
        }
        while let Some((t, _)) = self.orphan_queue.front() {
            if t.saturating_add(keep) >= b {
                break;
            }
            if let Some((t, id)) = self.orphan_queue.pop_front()
                && self.orphans.get(&id).is_some_and(|o| o.created == t)
            {
                self.orphans.remove(&id);
            }
        }
    }

    // ---------------------------------------------------------------------------------------------------------
    // Views.

    fn evidence_views(&self, o: &Order) -> Vec<EvidenceView> {
        let mut v: Vec<&Evidence> = o.evidence.iter().filter(|e| e.bad() > 0).collect();
        v.sort_by_key(|e| (std::cmp::Reverse(e.bad()), e.service));
        v.into_iter()
            .map(|e| EvidenceView {
                service: self.health.name(e.service).to_string(),
                spans: e.spans,
                errors: e.errors,
                slow: e.slow,
                trace_ids: e.traces.iter().map(|t| super::output::hex(t)).collect(),
            })
            .collect()
    }

    fn at_risk_view(&self, k: usize, id: &str, o: &Order, now: u64) -> AtRiskView {
        let kp = &self.c.kpis[k];
        let st = &o.kpis[k];
        let cause = st.cause.unwrap_or(Cause::NONE);
        let start = o.reached[kp.from];
        let services = self.stage_service_ids.get(o.stage).map_or(&[][..], |v| &v[..]);
        AtRiskView {
            order_id: id.to_string(),
            probability: f64::from(st.p.unwrap_or(0.0)),
            stage: self.c.stages[o.stage].clone(),
            stage_entered: o.entered(),
            stage_age_ns: now.saturating_sub(o.entered()),
            placed: start,
            deadline: start.saturating_add(kp.deadline),
            time_left_ns: start.saturating_add(kp.deadline).saturating_sub(now),
            flagged_at: st.flagged_at,
            condition: o.cond.as_str(),
            cause: self.cause_label(&cause),
            cause_service: self.cause_service(&cause),
            cause_issue: cause.issue.map(Issue::as_str),
            cause_from_order_spans: cause.own,
            dims: self
                .c
                .dims
                .iter()
                .zip(self.dims_values(o).iter())
                .map(|(d, v)| (d.name.clone(), v.to_string()))
                .collect(),
            evidence: self.evidence_views(o),
            stage_services: services.iter().map(|s| self.health.status(*s)).collect(),
            typical_stage_ns: self.model.median_duration(o.stage, Condition::Healthy),
            cause_stage: cause.stage.and_then(|s| self.c.stages.get(usize::from(s)).cloned()),
            cause_text: self.cause_text(&cause),
            action: self.order_action(k, o, &cause, now),
            value: o.value,
        }
    }

    /// "backlog in stage paid: 1,840 orders, throughput 35 % of normal since 2026-01-05T03:10:00Z".
    fn stage_cause_text(&self, stage: usize) -> Option<String> {
        let f = self.flows.get(stage)?;
        let since = f.slowed_since?;
        Some(format!(
            "backlog in stage {}: {} orders, throughput {:.0} % of normal since {}",
            self.c.stages.get(stage).map_or("?", String::as_str),
            thousands(f.backlog),
            100.0 * f.rate,
            super::output::rfc3339(since)
        ))
    }

    /// The cause in words: the slowed stage, then the service (or "no IT cause found").
    fn cause_text(&self, c: &Cause) -> String {
        let stage = c.stage.map(|s| {
            let s = usize::from(s);
            self.stage_cause_text(s).unwrap_or_else(|| {
                format!(
                    "stage {} was slowed while this order was in it",
                    self.c.stages.get(s).map_or("?", String::as_str)
                )
            })
        });
        let service = match (c.service, c.issue) {
            (Some(s), Some(i)) => format!(
                "{} {} ({})",
                self.health.name(s),
                i.as_str(),
                if c.own {
                    "on this order's own spans in its stage"
                } else {
                    "service-wide, now"
                }
            ),
            _ => "no IT cause found".to_string(),
        };
        match stage {
            Some(t) => format!("{t}; {service}"),
            None => service,
        }
    }

    /// The latest time order `o` can leave its stage and still make KPI `k`'s deadline (the typical remaining
    /// time after that stage taken off the deadline).
    fn latest_exit(&self, k: usize, o: &Order) -> u64 {
        let kp = &self.c.kpis[k];
        let deadline = o.reached[kp.from].saturating_add(kp.deadline);
        let rest = if o.stage + 1 >= kp.to {
            0.0
        } else {
            self.model.median_remaining(k, o.stage + 1).unwrap_or(0.0)
        };
        deadline.saturating_sub(rest as u64)
    }

    /// What to do about an at-risk order.
    fn order_action(&self, k: usize, o: &Order, c: &Cause, now: u64) -> String {
        let stage = self.c.stages.get(o.stage).map_or("?", String::as_str);
        let fix = match (c.service, c.issue) {
            (Some(s), Some(i)) => format!("fix {} {}; ", self.health.name(s), i.as_str()),
            _ => String::new(),
        };
        let latest = self.latest_exit(k, o);
        if latest <= now {
            return format!(
                "{fix}too late for the usual pace: expedite past stage {stage} at once (fastest shipping) or tell the customer"
            );
        }
        let flow = match self.flows.get(o.stage) {
            Some(f) if f.slowed() => format!(
                "; stage {stage} works at {:.0} % of normal: add capacity (see the stage's action)",
                100.0 * f.rate
            ),
            _ => String::new(),
        };
        format!(
            "{fix}expedite: must leave stage {stage} by {} to make its deadline{flow}",
            super::output::rfc3339(latest)
        )
    }

    /// The flow and the recommended action of each stage of KPI `k` (see [`StageView`]).
    pub(super) fn stage_views(&self, k: usize, b: u64) -> Vec<StageView> {
        let kp = &self.c.kpis[k];
        (kp.from..kp.to)
            .filter_map(|s| {
                let f = self.flows.get(s)?;
                let name = self.c.stages.get(s)?.clone();
                let action = f.slowed().then(|| {
                    let mut orders: Vec<(u64, f64, &str, Option<bizpilot_core::Money>)> = self
                        .orders
                        .iter()
                        .filter(|(_, o)| o.stage == s && o.kpis.get(k).is_some_and(|st| !st.goal && !st.resolved))
                        .map(|(id, o)| {
                            let p = o.kpis.get(k).and_then(|st| st.p).map_or(0.0, f64::from);
                            (self.latest_exit(k, o), p, &**id, o.value)
                        })
                        .collect();
                    orders.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(b.2)));
                    let n = orders.len().max(1) as f64;
                    let late = orders.iter().filter(|x| x.0 <= b).count();
                    let mut needed: f64 = 0.0;
                    // At the current pace, closest deadline first, the j-th order that can still make it leaves
                    // after (j + 1) / throughput hours: those that would leave after their latest exit need
                    // expediting.
                    let pace = f.observed_per_hour;
                    let mut behind = Vec::new();
                    for (j, o) in orders.iter().filter(|x| x.0 > b).enumerate() {
                        let hours = (o.0 - b) as f64 / 3.6e12;
                        needed = needed.max((j + 1) as f64 / hours.max(0.25));
                        if pace <= 0.0 || (j + 1) as f64 / pace > hours {
                            behind.push(o);
                        }
                    }
                    let extra = (needed - f.observed_per_hour).max(0.0);
                    let without = 1.0 - orders.iter().map(|x| x.1).sum::<f64>() / n;
                    let with = (orders.len() - late) as f64 / n;
                    // Expedite first the highest value among them (orders without a known value last), then the
                    // closest deadline.
                    behind.sort_by(|a, b| {
                        let value = |m: &Option<bizpilot_core::Money>| m.map(|m| (m.currency(), m.nanos()));
                        match (value(&a.3), value(&b.3)) {
                            (Some((ca, va)), Some((cb, vb))) if ca == cb => vb.cmp(&va),
                            (Some(_), None) => std::cmp::Ordering::Less,
                            (None, Some(_)) => std::cmp::Ordering::Greater,
                            _ => std::cmp::Ordering::Equal,
                        }
                        .then(a.0.cmp(&b.0))
                        .then_with(|| a.2.cmp(b.2))
                    });
                    let expedite_orders: Vec<Expedite> = behind
                        .iter()
                        .take(10)
                        .map(|x| Expedite {
                            order_id: x.2.to_string(),
                            value: x.3,
                            leave_by: x.0,
                        })
                        .collect();
                    let expedite: Vec<String> = expedite_orders.iter().map(|e| e.order_id.clone()).collect();
                    StageAction {
                        needed_per_hour: needed,
                        extra_per_hour: extra,
                        already_late: late as u64,
                        text: format!(
                            "stage {name}: complete {needed:.0} orders per hour ({extra:.0} more than now, normal {:.0}) \
                             closest deadline first to clear {} orders before their deadlines; expected compliance of \
                             these orders {:.0} % with the action, {:.0} % without; {late} cannot make it any more",
                            f.normal_per_hour,
                            thousands(orders.len() as u64),
                            100.0 * with,
                            100.0 * without
                        ),
                        expedite_first: expedite,
                        expedite: expedite_orders,
                        behind: behind.len() as u64,
                        compliance_without: without,
                        compliance_with: with,
                    }
                });
                Some(StageView {
                    stage: name,
                    backlog: f.backlog,
                    rate: f.rate,
                    normal_per_hour: f.normal_per_hour,
                    observed_per_hour: f.observed_per_hour,
                    slowed_since: f.slowed_since,
                    cause_text: self.stage_cause_text(s),
                    action,
                })
            })
            .collect()
    }

    fn refresh_book(&mut self, b: u64) {
        let mut views = Vec::with_capacity(self.c.kpis.len());
        for (k, kp) in self.c.kpis.iter().enumerate() {
            let mut risky: Vec<(f32, u64, &Box<str>)> = Vec::new();
            let mut causes: BTreeMap<Cause, u64> = BTreeMap::new();
            let mut open_by_stage = vec![0u64; self.c.stages.len()];
            let mut open = 0u64;
            for (id, o) in &self.orders {
                let st = &o.kpis[k];
                let start = o.reached[kp.from];
                if st.goal || start == 0 {
                    continue;
                }
                open += 1;
                open_by_stage[o.stage] += 1;
                if st.at_risk {
                    risky.push((st.p.unwrap_or(0.0), start.saturating_add(kp.deadline), id));
                    *causes.entry(st.cause.unwrap_or(Cause::NONE)).or_default() += 1;
                }
            }
            risky.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then_with(|| a.2.cmp(b.2)));
            let total = risky.len();
            let at_risk = risky
                .iter()
                .take(self.c.max_at_risk)
                .filter_map(|(_, _, id)| self.orders.get(*id).map(|o| self.at_risk_view(k, id, o, b)))
                .collect();
            let f = &self.figures[k];
            let (in_time, breached) = f.totals();
            let mut causes: Vec<(String, u64)> = causes.into_iter().map(|(c, n)| (self.cause_label(&c), n)).collect();
            causes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            views.push(KpiView {
                name: kp.name.clone(),
                from: self.c.stages[kp.from].clone(),
                to: self.c.stages[kp.to].clone(),
                deadline_ns: kp.deadline,
                threshold: self.c.threshold,
                in_time,
                breached,
                cancelled: f.cancelled,
                compliance: f.compliance(),
                open,
                open_by_stage: self
                    .c
                    .stages
                    .iter()
                    .zip(open_by_stage)
                    .filter(|(_, n)| *n > 0)
                    .map(|(s, n)| (s.clone(), n))
                    .collect(),
                at_risk_total: total,
                at_risk,
                causes,
                scores: f.scores,
                precision: f.precision(),
                recall: f.recall(),
                lead_median_s: f.lead_median(),
                breaches_by_cause: f.breaches_by_cause.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                stages: self.stage_views(k, b),
            });
        }
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        book.as_of = Some(b);
        book.kpis = views;
    }

    /// Open orders per KPI and stage, at-risk orders per KPI, series, stage and cause (for the metrics).
    pub(super) fn open_counts(&self, b: u64) -> OpenCounts {
        let mut open: BTreeMap<(usize, u32, usize, usize), u64> = BTreeMap::new();
        let mut risk: BTreeMap<(usize, u32, usize, String), u64> = BTreeMap::new();
        for o in self.orders.values() {
            let sid = o.sid;
            for (k, kp) in self.c.kpis.iter().enumerate() {
                let st = &o.kpis[k];
                let start = o.reached[kp.from];
                if st.goal || start == 0 {
                    continue;
                }
                let age = b.saturating_sub(start);
                let bucket = self.c.age_bounds.partition_point(|x| *x <= age);
                *open.entry((k, sid, o.stage, bucket)).or_default() += 1;
                if st.at_risk {
                    let label = self.cause_label(&st.cause.unwrap_or(Cause::NONE));
                    *risk.entry((k, sid, o.stage, label)).or_default() += 1;
                }
            }
        }
        OpenCounts { open, risk }
    }

    /// The at-risk orders (of every KPI) with their probability, for tests and the evaluation.
    pub fn at_risk(&self) -> Vec<(usize, String, f64)> {
        let mut v: Vec<(usize, String, f64)> = self
            .orders
            .iter()
            .flat_map(|(id, o)| {
                o.kpis
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.at_risk)
                    .map(move |(k, s)| (k, id.to_string(), f64::from(s.p.unwrap_or(0.0))))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.total_cmp(&a.2)).then_with(|| a.1.cmp(&b.1)));
        v
    }
}

/// The quantile of a stage's normal duration that bounds how late an order of long but normal duration leaves
/// compared with a typical one (see [`StageFlow::overtaken`]).
pub const OVERTAKEN_QUANTILE: f64 = 0.95;

/// A wait in a stage long enough for failures during it to count as the order's delay: 1/24 of the shortest
/// KPI deadline (1 h for 24 h).
fn long_wait(kpis: &[Kpi]) -> u64 {
    kpis.iter().map(|k| k.deadline).min().unwrap_or(0) / 24
}

/// Median (clock) duration of each stage, healthy orders (infinite while not learned).
fn medians_of(model: &Model, stages: usize) -> Vec<f64> {
    (0..stages)
        .map(|s| model.median_duration(s, Condition::Healthy).unwrap_or(f64::INFINITY))
        .collect()
}

/// The condition of `o` in `stage` (see "The model" in the module doc of [`super`]).
fn condition_of(health: &Health, stage_services: &[Vec<u16>], o: &Order, stage: usize) -> Condition {
    let Some(services) = stage_services.get(stage) else {
        return Condition::Healthy;
    };
    let mut has_own = false;
    for s in services {
        if let Some(e) = o.evidence.iter().find(|e| e.service == *s) {
            has_own = true;
            if e.bad() > 0 {
                return Condition::Degraded;
            }
        }
    }
    if !has_own && services.iter().any(|s| health.issue(*s).is_some()) {
        return Condition::Degraded;
    }
    Condition::Healthy
}

/// How long before an order entered its stage a failed or slow span of the stage's services still counts as
/// overlapping the order's current delay (the span that sent it into the stage, e.g. `ShipOrder` at checkout).
pub const EVIDENCE_OVERLAP_NS: u64 = 3_600_000_000_000;

/// The cause of `o`'s risk (see "The model" in the module doc of [`super`]): a service is named only when its
/// failures or slowness overlap the order's current delay in path (it serves the order's current stage) and
/// time (the order's own failed/slow span of it at most [`EVIDENCE_OVERLAP_NS`] before entering the stage or
/// later, or the service unhealthy now); the stage is named when it is slowed for everybody (`slowed`).
fn cause_of(
    health: &Health,
    stage_services: &[Vec<u16>],
    o: &Order,
    slowed: bool,
    matters: bool,
    medians: &[f64],
    long_wait: u64,
) -> Cause {
    let services = stage_services.get(o.stage).map_or(&[][..], |v| &v[..]);
    let stage = if slowed {
        u8::try_from(o.stage).ok()
    } else if matters {
        o.hit
    } else {
        None
    };
    let own = |e: &Evidence| Cause {
        service: Some(e.service),
        issue: Some(if e.errors > 0 { Issue::Errors } else { Issue::Latency }),
        own: true,
        stage,
    };
    // A failed call holds the order up until it is retried; a slow call that completed (in seconds) explains a delay
    // of hours only as the symptom of a stage slowdown that cost the order its deadline (`stage` named). A long
    // pick whose `ShipOrder` span happened to be slow is the order's own work, not the service's.
    let explains = |e: &Evidence| e.errors > 0 || (e.slow > 0 && stage.is_some());
    let since = o.entered().saturating_sub(EVIDENCE_OVERLAP_NS);
    for s in services {
        if let Some(e) = o
            .evidence
            .iter()
            .find(|e| e.service == *s && explains(e) && e.last_bad >= since)
        {
            return own(e);
        }
    }
    // An earlier stage the order waited unusually long in (≥ `long_wait` and ≥ 4 × its median), with failed or slow
    // spans of this order of a service serving it during that wait: that trouble is part of the delay.
    for m in (0..o.stage).rev() {
        let (start, end) = (
            o.reached[m],
            o.reached[(m + 1)..=o.stage].iter().copied().find(|t| *t != 0),
        );
        let (Some(end), true) = (end, start != 0) else { continue };
        let waited = end.saturating_sub(start);
        let typical = medians.get(m).copied().unwrap_or(f64::INFINITY);
        if waited < long_wait || (waited as f64) < 4.0 * typical {
            continue;
        }
        for s in stage_services.get(m).map_or(&[][..], |v| &v[..]) {
            if let Some(e) = o.evidence.iter().find(|e| {
                e.service == *s && explains(e) && e.last_bad + EVIDENCE_OVERLAP_NS >= start && e.last_bad <= end
            }) {
                return own(e);
            }
        }
    }
    // A service of the stage unhealthy now, unless the order's own spans of it were fine: then the service's
    // trouble did not touch this order (the same rule as [`condition_of`]).
    for s in services {
        if o.evidence.iter().any(|e| e.service == *s) {
            continue;
        }
        if let Some(issue) = health.issue(*s) {
            return Cause {
                service: Some(*s),
                issue: Some(issue),
                own: false,
                stage,
            };
        }
    }
    Cause { stage, ..Cause::NONE }
}

/// Counts behind the open-order and at-risk gauges.
pub(super) struct OpenCounts {
    /// (kpi, series, stage, age bucket) → orders.
    pub(super) open: BTreeMap<(usize, u32, usize, usize), u64>,
    /// (kpi, series, stage, cause) → orders.
    pub(super) risk: BTreeMap<(usize, u32, usize, String), u64>,
}

/// A private accessor used by the log-record builder.
impl Engine {
    fn at_risk_log(&self, k: usize, id: &str, o: &Order, now: u64) -> LogRecord {
        super::output::at_risk_log(
            &self.at_risk_view(k, id, o, now),
            &self.c.kpis[k].name,
            self.c.threshold,
            now,
        )
    }
}

/// `1840` → `1,840`.
fn thousands(n: u64) -> String {
    let d = n.to_string();
    let mut out = String::with_capacity(d.len() + d.len() / 3);
    for (i, ch) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod cause_tests {
    use super::super::config::HealthConfig;
    use super::*;

    const H: u64 = 3_600_000_000_000;

    /// An order in stage 1 (entered at 10 h) with its own spans of service 0, which serves that stage.
    fn order(lost_total: f64, errors: u32, slow: u32) -> Order {
        Order {
            reached: vec![H, 10 * H, 0].into_boxed_slice(),
            stage: 1,
            first_seen: H,
            dims: Vec::new().into_boxed_slice(),
            evidence: vec![Evidence {
                service: 0,
                spans: 1,
                errors,
                slow,
                last_bad: 10 * H,
                traces: Vec::new(),
            }],
            seen_spans: Vec::new(),
            kpis: Vec::new().into_boxed_slice(),
            cond: Condition::Healthy,
            sid: 0,
            clock: 0.0,
            clock_at: 0,
            hit: None,
            lost: lost_total,
            lost_total,
            value: None,
        }
    }

    #[test]
    fn a_slow_call_is_not_blamed_for_an_order_that_would_miss_without_the_slowdown() {
        let health = Health::new(&HealthConfig::default(), 300_000_000_000);
        let services = vec![Vec::new(), vec![0u16], Vec::new()];
        let medians = [H as f64; 3];
        let cause =
            |o: &Order, slowed: bool, matters: bool| cause_of(&health, &services, o, slowed, matters, &medians, H);
        // (The engine passes `slowed` = its stage is slowed and the slowdown matters, `matters` = with the time the
        // slowdowns cost it given back, the order would make it.)
        // A slowdown cost it 3 h, but it misses even with them given back (its own long pick): not the service.
        let c = cause(&order(3.0 * H as f64, 0, 1), false, false);
        assert_eq!((c.service, c.stage), (None, None), "{c:?}");
        // No slowdown at all: a slow call of seconds is no cause of a late order either.
        let c = cause(&order(0.0, 0, 1), false, false);
        assert_eq!((c.service, c.stage), (None, None), "{c:?}");
        // The slowdown cost it its deadline: the stage, with the slow service as its symptom.
        let c = cause(&order(3.0 * H as f64, 0, 1), true, true);
        assert_eq!((c.service, c.stage), (Some(0), Some(1)), "{c:?}");
        // A failed call holds the order up whatever the slowdowns: the service.
        let c = cause(&order(3.0 * H as f64, 1, 0), false, false);
        assert_eq!((c.service, c.issue), (Some(0), Some(Issue::Errors)), "{c:?}");
    }
}
