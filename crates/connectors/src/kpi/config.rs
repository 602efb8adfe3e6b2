//! Config of the `order_kpi` connector (the table is in the module doc of [`super`]).

use serde::Deserialize;
use std::collections::BTreeMap;

use bizpilot_business::EventMapping;
use bizpilot_core::config::Duration;
use bizpilot_core::{ComponentConfig, ComponentId, FieldError};

/// One lifecycle stage and the event names that mark it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    pub name: String,
    /// Event names marking the stage; default `order.<name>`.
    #[serde(default)]
    pub events: Vec<String>,
}

impl StageConfig {
    pub fn new(name: &str) -> StageConfig {
        StageConfig {
            name: name.into(),
            events: vec![format!("order.{name}")],
        }
    }

    /// The event names, with the default applied.
    pub fn event_names(&self) -> Vec<String> {
        if self.events.is_empty() {
            vec![format!("order.{}", self.name)]
        } else {
            self.events.clone()
        }
    }
}

/// A KPI: reach stage `to` within `deadline` of stage `from`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiConfig {
    pub name: String,
    /// Default: the first stage.
    #[serde(default)]
    pub from: Option<String>,
    /// Default: the last stage.
    #[serde(default)]
    pub to: Option<String>,
    pub deadline: Duration,
}

/// A dimension read from a lookup table keyed by an event attribute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupDimension {
    /// A `lookup` extension.
    pub extension: ComponentId,
    /// Event attribute holding the table's key.
    #[serde(default = "default_key_attribute")]
    pub key_attribute: String,
    /// Column of the value; default: the dimension's name.
    #[serde(default)]
    pub column: Option<String>,
}

fn default_key_attribute() -> String {
    "customer.id".into()
}

/// A metric dimension of the order: an event attribute, or a lookup by an event attribute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum DimensionConfig {
    /// Just the attribute: the label is named like it.
    Attribute(String),
    Full {
        name: String,
        #[serde(default)]
        attribute: Option<String>,
        #[serde(default)]
        lookup: Option<LookupDimension>,
        #[serde(default)]
        default: Option<String>,
    },
}

impl DimensionConfig {
    pub fn name(&self) -> &str {
        match self {
            DimensionConfig::Attribute(a) => a,
            DimensionConfig::Full { name, .. } => name,
        }
    }
}

/// How the health of IT services is judged.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Trailing window of a service's current error rate and slow-span rate.
    pub window: Duration,
    /// Spans needed in the window before a service can be judged unhealthy.
    pub min_spans: u64,
    /// A service is unhealthy at or above this error rate…
    pub error_rate_threshold: f64,
    /// …or at or above this share of slow spans.
    pub slow_rate_threshold: f64,
    /// A span is slow when it lasts more than this many times its operation's baseline latency.
    pub slow_factor: f64,
    /// Baseline latency of an operation (service + span name): the lowest median over the last
    /// `baseline_windows` windows of `baseline_window` that saw at least `min_baseline_spans` spans.
    pub baseline_window: Duration,
    pub baseline_windows: usize,
    pub min_baseline_spans: u64,
    /// Absolute slow-span thresholds per service, instead of the learned baseline.
    pub latency_thresholds: BTreeMap<String, Duration>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            window: Duration::from_secs(15 * 60),
            min_spans: 10,
            error_rate_threshold: 0.1,
            slow_rate_threshold: 0.25,
            slow_factor: 5.0,
            baseline_window: Duration::from_secs(24 * 3600),
            baseline_windows: 7,
            min_baseline_spans: 30,
            latency_thresholds: BTreeMap::new(),
        }
    }
}

/// The breach predictor.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredictionConfig {
    /// An open order is at risk when its probability of missing the deadline is at least this.
    pub threshold: f64,
    /// Observations (exits + censored) a learned distribution needs before it is used.
    pub min_samples: f64,
    /// Observations lose half their weight after this much event time; `0` never forgets.
    pub half_life: Duration,
}

impl Default for PredictionConfig {
    fn default() -> Self {
        PredictionConfig {
            threshold: 0.93,
            min_samples: 30.0,
            half_life: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Most at-risk orders kept per KPI for the API (the most likely to breach).
    pub max_at_risk: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { max_at_risk: 10_000 }
    }
}

/// Config of the `order_kpi` connector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrderKpiConfig {
    /// Where events' names, order id and time are read (see `bizpilot_business::event`).
    pub events: EventMapping,
    pub stages: Vec<StageConfig>,
    pub cancel_events: Vec<String>,
    pub kpis: Vec<KpiConfig>,
    /// Span attributes holding an order id (first present wins).
    pub order_key_attributes: Vec<String>,
    /// Services (`service.name`) serving each stage.
    pub stage_services: BTreeMap<String, Vec<String>>,
    pub health: HealthConfig,
    pub prediction: PredictionConfig,
    pub allowed_lateness: Duration,
    /// Wall time without data after which an input (business events or spans) stops holding the watermark back
    /// until it sends again; `0`: an input never goes idle.
    pub idle_timeout: Duration,
    pub evaluation_interval: Duration,
    pub metrics_interval: Duration,
    pub dimensions: Vec<DimensionConfig>,
    pub max_series: usize,
    pub age_buckets: Vec<Duration>,
    pub max_open_orders: usize,
    pub max_order_age: Duration,
    pub max_pending: usize,
    pub closed_memory: Duration,
    pub max_closed: usize,
    pub max_pending_evidence: usize,
    pub api: ApiConfig,
    /// Id of a storage extension (`file_storage`) the state is restored from and checkpointed into.
    pub storage: Option<String>,
    pub checkpoint_interval: Duration,
}

impl Default for OrderKpiConfig {
    fn default() -> Self {
        OrderKpiConfig {
            events: EventMapping::default(),
            stages: ["placed", "paid", "shipped", "delivered"]
                .into_iter()
                .map(StageConfig::new)
                .collect(),
            cancel_events: vec!["order.cancelled".into()],
            kpis: vec![KpiConfig {
                name: "fulfilled_24h".into(),
                from: None,
                to: None,
                deadline: Duration::from_secs(24 * 3600),
            }],
            order_key_attributes: vec![
                "business.order.id".into(),
                "demo.order.id".into(),
                "app.order.id".into(),
            ],
            stage_services: BTreeMap::from([
                ("placed".to_string(), vec!["payment".to_string()]),
                ("paid".to_string(), vec!["shipping".to_string()]),
                ("shipped".to_string(), vec!["shipping".to_string()]),
            ]),
            health: HealthConfig::default(),
            prediction: PredictionConfig::default(),
            allowed_lateness: Duration::from_secs(5 * 60),
            idle_timeout: Duration::from_secs(5 * 60),
            evaluation_interval: Duration::from_secs(5 * 60),
            metrics_interval: Duration::from_secs(5 * 60),
            dimensions: Vec::new(),
            max_series: 1000,
            age_buckets: [1, 4, 12, 24].map(|h| Duration::from_secs(h * 3600)).to_vec(),
            max_open_orders: 1_000_000,
            max_order_age: Duration::from_secs(7 * 24 * 3600),
            max_pending: 1_000_000,
            closed_memory: Duration::from_secs(3600),
            max_closed: 200_000,
            max_pending_evidence: 100_000,
            api: ApiConfig::default(),
            storage: None,
            checkpoint_interval: Duration::from_secs(10),
        }
    }
}

fn ns(d: Duration) -> u128 {
    d.get().as_nanos()
}

impl ComponentConfig for OrderKpiConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        if self.checkpoint_interval.is_zero() {
            e.push(FieldError::new("checkpoint_interval", "must be greater than 0"));
        }
        if let Some(s) = &self.storage
            && s.parse::<bizpilot_core::ComponentId>().is_err()
        {
            e.push(FieldError::new(
                "storage",
                "must be a component id such as file_storage",
            ));
        }
        for (field, message) in self.events.validate() {
            e.push(FieldError::new(format!("events.{field}"), message));
        }
        if self.stages.len() < 2 {
            e.push(FieldError::new("stages", "at least two stages are needed"));
        }
        let mut stage_names: Vec<&str> = Vec::new();
        let mut event_names: BTreeMap<String, String> = BTreeMap::new();
        for (i, s) in self.stages.iter().enumerate() {
            let p = format!("stages[{i}]");
            if s.name.trim().is_empty() {
                e.push(FieldError::new(format!("{p}.name"), "required"));
            } else if stage_names.contains(&s.name.as_str()) {
                e.push(FieldError::new(
                    format!("{p}.name"),
                    format!("{:?} is defined twice", s.name),
                ));
            } else {
                stage_names.push(&s.name);
            }
            for (j, ev) in s.event_names().iter().enumerate() {
                let path = format!("{p}.events[{j}]");
                if ev.trim().is_empty() {
                    e.push(FieldError::new(path, "must not be empty"));
                } else if let Some(other) = event_names.insert(ev.clone(), path.clone()) {
                    e.push(FieldError::new(
                        path,
                        format!("event {ev:?} is already used by {other}"),
                    ));
                }
            }
        }
        for (j, ev) in self.cancel_events.iter().enumerate() {
            let path = format!("cancel_events[{j}]");
            if ev.trim().is_empty() {
                e.push(FieldError::new(path, "must not be empty"));
            } else if let Some(other) = event_names.insert(ev.clone(), path.clone()) {
                e.push(FieldError::new(
                    path,
                    format!("event {ev:?} is already used by {other}"),
                ));
            }
        }
        let pos = |n: &str| self.stages.iter().position(|s| s.name == n);
        if self.kpis.is_empty() {
            e.push(FieldError::new("kpis", "at least one KPI is required"));
        }
        let mut kpi_names: Vec<&str> = Vec::new();
        for (i, k) in self.kpis.iter().enumerate() {
            let p = format!("kpis[{i}]");
            if k.name.trim().is_empty() || k.name.contains('/') {
                e.push(FieldError::new(format!("{p}.name"), "required, without '/'"));
            } else if kpi_names.contains(&k.name.as_str()) {
                e.push(FieldError::new(
                    format!("{p}.name"),
                    format!("{:?} is defined twice", k.name),
                ));
            } else {
                kpi_names.push(&k.name);
            }
            let from = match &k.from {
                Some(f) => pos(f).or_else(|| {
                    e.push(FieldError::new(format!("{p}.from"), format!("unknown stage {f:?}")));
                    None
                }),
                None => Some(0),
            };
            let to = match &k.to {
                Some(t) => pos(t).or_else(|| {
                    e.push(FieldError::new(format!("{p}.to"), format!("unknown stage {t:?}")));
                    None
                }),
                None => self.stages.len().checked_sub(1),
            };
            if let (Some(f), Some(t)) = (from, to)
                && f >= t
            {
                e.push(FieldError::new(p.clone(), "`from` must be a stage before `to`"));
            }
            if k.deadline.is_zero() {
                e.push(FieldError::new(format!("{p}.deadline"), "must be > 0"));
            }
        }
        for (stage, services) in &self.stage_services {
            if pos(stage).is_none() {
                e.push(FieldError::new(format!("stage_services.{stage}"), "unknown stage"));
            }
            if services.iter().any(|s| s.trim().is_empty()) {
                e.push(FieldError::new(format!("stage_services.{stage}"), "empty service name"));
            }
        }
        if self.order_key_attributes.iter().any(|a| a.trim().is_empty()) {
            e.push(FieldError::new("order_key_attributes", "empty attribute name"));
        }
        let h = &self.health;
        for (f, v) in [
            ("health.error_rate_threshold", h.error_rate_threshold),
            ("health.slow_rate_threshold", h.slow_rate_threshold),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                e.push(FieldError::new(f, format!("must be in (0, 1], got {v}")));
            }
        }
        if !(h.slow_factor.is_finite() && h.slow_factor > 1.0) {
            e.push(FieldError::new("health.slow_factor", "must be > 1"));
        }
        if h.baseline_window.is_zero() {
            e.push(FieldError::new("health.baseline_window", "must be > 0"));
        }
        if h.baseline_windows == 0 || h.baseline_windows > 1000 {
            e.push(FieldError::new("health.baseline_windows", "must be in 1..=1000"));
        }
        if h.window < self.evaluation_interval {
            e.push(FieldError::new("health.window", "must be at least evaluation_interval"));
        }
        for (s, d) in &h.latency_thresholds {
            if d.is_zero() {
                e.push(FieldError::new(format!("health.latency_thresholds.{s}"), "must be > 0"));
            }
        }
        let pr = &self.prediction;
        if !(pr.threshold > 0.0 && pr.threshold <= 1.0) {
            e.push(FieldError::new(
                "prediction.threshold",
                format!("must be in (0, 1], got {}", pr.threshold),
            ));
        }
        if !(pr.min_samples.is_finite() && pr.min_samples >= 1.0) {
            e.push(FieldError::new("prediction.min_samples", "must be at least 1"));
        }
        if self.evaluation_interval.is_zero() {
            e.push(FieldError::new("evaluation_interval", "must be > 0"));
        } else if self.metrics_interval.is_zero()
            || !ns(self.metrics_interval).is_multiple_of(ns(self.evaluation_interval))
        {
            e.push(FieldError::new(
                "metrics_interval",
                "must be a positive multiple of evaluation_interval",
            ));
        }
        let mut dim_names: Vec<&str> = Vec::new();
        for (i, d) in self.dimensions.iter().enumerate() {
            let p = format!("dimensions[{i}]");
            let name = d.name();
            if name.trim().is_empty() {
                e.push(FieldError::new(p.clone(), "a dimension needs a name"));
            } else if dim_names.contains(&name) || ["kpi", "stage", "age", "outcome", "cause"].contains(&name) {
                e.push(FieldError::new(
                    p.clone(),
                    format!("label {name:?} is used twice or reserved"),
                ));
            } else {
                dim_names.push(name);
            }
            if let DimensionConfig::Full {
                attribute: Some(_),
                lookup: Some(_),
                ..
            } = d
            {
                e.push(FieldError::new(p, "give either attribute or lookup, not both"));
            }
        }
        if self.age_buckets.windows(2).any(|w| w[0] >= w[1]) || self.age_buckets.iter().any(|d| d.is_zero()) {
            e.push(FieldError::new("age_buckets", "must be increasing and > 0"));
        }
        for (f, v) in [
            ("max_series", self.max_series),
            ("max_open_orders", self.max_open_orders),
            ("max_pending", self.max_pending),
            ("max_closed", self.max_closed),
            ("max_pending_evidence", self.max_pending_evidence),
            ("api.max_at_risk", self.api.max_at_risk),
        ] {
            if v == 0 {
                e.push(FieldError::new(f, "must be > 0"));
            }
        }
        if self.max_order_age.is_zero() {
            e.push(FieldError::new("max_order_age", "must be > 0"));
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::parse_config;

    fn parse(yaml: &str) -> Result<OrderKpiConfig, Vec<FieldError>> {
        parse_config(&serde_yaml::from_str::<serde_yaml::Value>(yaml).unwrap())
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse("").unwrap();
        assert_eq!(c.stages.len(), 4);
        assert_eq!(c.kpis[0].name, "fulfilled_24h");
        let c = parse(
            r#"
stages:
  - {name: placed, events: [order.placed, order.created]}
  - {name: paid}
  - {name: delivered}
kpis: [{name: paid_1h, from: placed, to: paid, deadline: 1h}, {name: done, deadline: 48h}]
dimensions: [customer.tier, {name: region, lookup: {extension: lookup/customers, column: region}}]
stage_services: {placed: [payment]}
"#,
        )
        .unwrap();
        assert_eq!(c.stages[1].event_names(), vec!["order.paid".to_string()]);
        assert_eq!(c.dimensions[0].name(), "customer.tier");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let errs = parse(
            r#"
stages: [{name: placed}, {name: placed, events: [order.placed]}]
kpis: [{name: k, from: shipped, deadline: 0s}]
stage_services: {nowhere: [x]}
prediction: {threshold: 1.5}
metrics_interval: 7m
"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "stages[1].name",
            "stages[1].events[0]",
            "kpis[0].from",
            "kpis[0].deadline",
            "stage_services.nowhere",
            "prediction.threshold",
            "metrics_interval",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        let errs = parse("kpis: [{name: k, from: delivered, to: placed, deadline: 1h}]").unwrap_err();
        assert_eq!(errs[0].path, "kpis[0]");
        assert!(parse("unknown_key: 1").is_err());
    }
}
