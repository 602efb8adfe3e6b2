//! Config of the `capacity_planner` connector (the table is in the module doc of [`super`]).

use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;

use bizpilot_core::config::Duration;
use bizpilot_core::{ComponentConfig, FieldError, Money};

use crate::impact::config::OneOrMany;

/// A funnel step: spans matching every given part are occurrences of the step.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StepConfig {
    pub name: String,
    /// `service.name` is this (or one of this list).
    pub service: Option<OneOrMany>,
    /// The span name is exactly this (or one of this list).
    pub span_name: Option<OneOrMany>,
    /// The span name matches this regular expression.
    pub span_name_regex: Option<String>,
}

/// A growth written as `"+50%"`, `"20%"`, `"1.5x"` or a number of percent (`50`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Growth {
    Percent(f64),
    Text(String),
}

impl Growth {
    /// The multiplier (`+50%` is 1.5), or why the growth is not one.
    pub fn multiplier(&self) -> Result<f64, String> {
        let m = match self {
            Growth::Percent(p) => 1.0 + p / 100.0,
            Growth::Text(s) => {
                let t = s.trim();
                if let Some(p) = t.strip_suffix('%') {
                    let p: f64 = p
                        .trim()
                        .trim_start_matches('+')
                        .parse()
                        .map_err(|_| format!("{s:?} is not a growth (write \"+50%\" or \"1.5x\")"))?;
                    if t.trim_start().starts_with('-') || p < 0.0 {
                        return Err(format!(
                            "{s:?} is a negative growth; a campaign plans for more business (use 0% for today's load)"
                        ));
                    }
                    1.0 + p / 100.0
                } else if let Some(x) = t.strip_suffix(['x', '×']) {
                    x.trim()
                        .parse()
                        .map_err(|_| format!("{s:?} is not a growth (write \"+50%\" or \"1.5x\")"))?
                } else {
                    return Err(format!("{s:?} is not a growth (write \"+50%\" or \"1.5x\")"));
                }
            }
        };
        if !m.is_finite() {
            return Err("the growth is not a finite number".into());
        }
        if m < 1.0 {
            return Err(format!(
                "a negative growth (×{m}); a campaign plans for more business (use 0% for today's load)"
            ));
        }
        Ok(m)
    }
}

/// The time window of a campaign.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// RFC 3339 start (informational: the plan is for the campaign's load whenever it runs).
    pub start: Option<String>,
    /// How long the campaign runs (orders and revenue over the window are derived from it).
    pub duration: Option<Duration>,
}

/// A campaign: business goals the plan is computed for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CampaignConfig {
    pub name: String,
    /// Growth of the traffic entering the funnel (every step).
    pub traffic: Option<Growth>,
    /// Growth of the conversion into `orders_step` (that step and every later one).
    pub conversion: Option<Growth>,
    /// Extra growth of single steps (and, like `conversion`, every later step), by step name.
    pub steps: BTreeMap<String, Growth>,
    /// Orders per hour to plan for (sets the rate of `orders_step`).
    pub orders_per_hour: Option<f64>,
    /// Revenue per hour to plan for (`"USD 1000000"`): orders per hour at today's average order value.
    pub revenue_per_hour: Option<String>,
    pub window: WindowConfig,
}

impl CampaignConfig {
    /// `revenue_per_hour` as exact money (`"USD 1000000"`, `"1000000 USD"`).
    pub fn revenue(&self) -> Option<Result<Money, String>> {
        self.revenue_per_hour.as_ref().map(|r| {
            Money::parse(r.trim_end_matches(" per hour").trim_end_matches("/h"), None)
                .map_err(|e| format!("{r:?}: {e} (write e.g. \"USD 1000000\")"))
        })
    }
}

/// Per-service limits and replicas.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitConfig {
    /// Replicas running now (else: the distinct `service.instance.id` / `k8s.pod.name` seen).
    pub replicas: Option<u32>,
    /// Requests one replica serves at once.
    pub max_concurrency_per_replica: Option<f64>,
    /// Requests per second one replica serves.
    pub max_rate_per_replica: Option<f64>,
}

/// A fulfilment stage.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageConfig {
    pub name: String,
    /// Orders one person handles per hour.
    pub orders_per_staff_hour: f64,
    /// Hours per day the stage works.
    pub hours_per_day: Option<f64>,
    /// People working the stage now.
    pub staff: Option<u32>,
}

/// Fulfilment capacity.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FulfilmentConfig {
    pub stages: Vec<StageConfig>,
}

/// Configuration of the `capacity_planner` connector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityPlannerConfig {
    pub steps: Vec<StepConfig>,
    /// The step whose occurrences are orders (default: the step named `checkout`, if any).
    pub orders_step: Option<String>,
    /// Attribute of the orders step holding the order value (for `revenue_per_hour`).
    pub value_attribute: String,
    /// Attribute holding the currency when the value has none.
    pub currency_attribute: String,
    /// Span kinds that are calls to a service: `server`, `consumer`, `internal`, `client`, `producer`, `unspecified`.
    pub span_kinds: Vec<String>,
    /// Attributes naming a replica, first found wins (span resource).
    pub replica_attributes: Vec<String>,
    pub campaigns: Vec<CampaignConfig>,
    pub limits: BTreeMap<String, LimitConfig>,
    pub target_utilization: f64,
    pub fulfilment: FulfilmentConfig,
    /// Observation window (sliding, event time).
    pub window: Duration,
    /// Width of the buckets rates and load points are kept in.
    pub resolution: Duration,
    /// How long after its first span a trace is attributed to its funnel step.
    pub trace_timeout: Duration,
    pub max_routes: usize,
    pub max_traces: usize,
    pub max_replicas: usize,
    /// Calls a route needs before its figures are given.
    pub min_calls: u64,
    pub metrics_flush_interval: Duration,
}

impl Default for CapacityPlannerConfig {
    fn default() -> Self {
        CapacityPlannerConfig {
            steps: Vec::new(),
            orders_step: None,
            value_attribute: "business.order.value".into(),
            currency_attribute: "business.currency".into(),
            span_kinds: vec!["server".into(), "consumer".into()],
            replica_attributes: vec!["service.instance.id".into(), "k8s.pod.name".into()],
            campaigns: Vec::new(),
            limits: BTreeMap::new(),
            target_utilization: 0.7,
            fulfilment: FulfilmentConfig::default(),
            window: Duration::from_secs(3600),
            resolution: Duration::from_secs(60),
            trace_timeout: Duration::from_secs(30),
            max_routes: 2000,
            max_traces: 200_000,
            max_replicas: 256,
            min_calls: 30,
            metrics_flush_interval: Duration::from_secs(15),
        }
    }
}

/// OTLP span kind numbers of the names in `span_kinds`.
pub fn kind_number(name: &str) -> Option<i32> {
    Some(match name {
        "unspecified" => 0,
        "internal" => 1,
        "server" => 2,
        "client" => 3,
        "producer" => 4,
        "consumer" => 5,
        _ => return None,
    })
}

impl CapacityPlannerConfig {
    /// The orders step's name, if any.
    pub fn orders_step_name(&self) -> Option<&str> {
        match &self.orders_step {
            Some(s) => Some(s.as_str()),
            None => self
                .steps
                .iter()
                .find(|s| s.name == "checkout")
                .map(|s| s.name.as_str()),
        }
    }
}

impl ComponentConfig for CapacityPlannerConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        if self.steps.is_empty() {
            e.push(FieldError::new("steps", "at least one funnel step is required"));
        }
        let mut names: Vec<&str> = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            let p = format!("steps[{i}]");
            if s.name.trim().is_empty() {
                e.push(FieldError::new(format!("{p}.name"), "required"));
            } else if names.contains(&s.name.as_str()) {
                e.push(FieldError::new(
                    format!("{p}.name"),
                    format!("{:?} is defined twice", s.name),
                ));
            } else {
                names.push(&s.name);
            }
            if s.service.is_none() && s.span_name.is_none() && s.span_name_regex.is_none() {
                e.push(FieldError::new(
                    p.clone(),
                    "needs a matcher: service, span_name or span_name_regex",
                ));
            }
            if let Some(re) = &s.span_name_regex
                && let Err(err) = Regex::new(re)
            {
                e.push(FieldError::new(format!("{p}.span_name_regex"), err.to_string()));
            }
        }
        let known = |n: &str| names.contains(&n);
        if let Some(o) = &self.orders_step
            && !known(o)
        {
            e.push(FieldError::new(
                "orders_step",
                format!("unknown step {o:?} (steps: {})", names.join(", ")),
            ));
        }
        for (i, k) in self.span_kinds.iter().enumerate() {
            if kind_number(k).is_none() {
                e.push(FieldError::new(
                    format!("span_kinds[{i}]"),
                    format!("unknown span kind {k:?} (server, consumer, internal, client, producer, unspecified)"),
                ));
            }
        }
        let orders = self.orders_step_name();
        let mut campaign_names: Vec<&str> = Vec::new();
        for (i, c) in self.campaigns.iter().enumerate() {
            let p = format!("campaigns[{i}]");
            if c.name.trim().is_empty() {
                e.push(FieldError::new(format!("{p}.name"), "required"));
            } else if campaign_names.contains(&c.name.as_str()) {
                e.push(FieldError::new(
                    format!("{p}.name"),
                    format!("{:?} is defined twice", c.name),
                ));
            } else {
                campaign_names.push(&c.name);
            }
            for (key, g) in [("traffic", &c.traffic), ("conversion", &c.conversion)] {
                if let Some(g) = g
                    && let Err(m) = g.multiplier()
                {
                    e.push(FieldError::new(format!("{p}.{key}"), m));
                }
            }
            for (step, g) in &c.steps {
                if !known(step) {
                    e.push(FieldError::new(
                        format!("{p}.steps.{step}"),
                        format!("unknown step {step:?} (steps: {})", names.join(", ")),
                    ));
                }
                if let Err(m) = g.multiplier() {
                    e.push(FieldError::new(format!("{p}.steps.{step}"), m));
                }
            }
            let needs_orders = c.conversion.is_some() || c.orders_per_hour.is_some() || c.revenue_per_hour.is_some();
            if needs_orders && orders.is_none() {
                e.push(FieldError::new(
                    p.clone(),
                    "conversion, orders_per_hour and revenue_per_hour need an orders step: set orders_step (or name a step `checkout`)",
                ));
            }
            if let Some(o) = c.orders_per_hour
                && !(o.is_finite() && o > 0.0)
            {
                e.push(FieldError::new(
                    format!("{p}.orders_per_hour"),
                    "must be a positive number",
                ));
            }
            match c.revenue() {
                Some(Ok(r)) if r.is_negative() || r.is_zero() => {
                    e.push(FieldError::new(format!("{p}.revenue_per_hour"), "must be positive"))
                }
                Some(Err(m)) => e.push(FieldError::new(format!("{p}.revenue_per_hour"), m)),
                _ => {}
            }
            if c.orders_per_hour.is_some() && c.revenue_per_hour.is_some() {
                e.push(FieldError::new(
                    p.clone(),
                    "give orders_per_hour or revenue_per_hour, not both",
                ));
            }
            if (c.orders_per_hour.is_some() || c.revenue_per_hour.is_some()) && c.conversion.is_some() {
                e.push(FieldError::new(
                    p.clone(),
                    "conversion and an orders or revenue target both set the orders rate; give one",
                ));
            }
            if c.window.duration.is_some_and(|d| d.is_zero()) {
                e.push(FieldError::new(
                    format!("{p}.window.duration"),
                    "must be greater than 0",
                ));
            }
        }
        for (svc, l) in &self.limits {
            let p = format!("limits.{svc}");
            if l.replicas == Some(0) {
                e.push(FieldError::new(format!("{p}.replicas"), "must be at least 1"));
            }
            for (k, v) in [
                ("max_concurrency_per_replica", l.max_concurrency_per_replica),
                ("max_rate_per_replica", l.max_rate_per_replica),
            ] {
                if let Some(v) = v
                    && !(v.is_finite() && v > 0.0)
                {
                    e.push(FieldError::new(format!("{p}.{k}"), "must be a positive number"));
                }
            }
        }
        if !(self.target_utilization > 0.0 && self.target_utilization <= 1.0) {
            e.push(FieldError::new("target_utilization", "must be in (0, 1]"));
        }
        for (i, s) in self.fulfilment.stages.iter().enumerate() {
            let p = format!("fulfilment.stages[{i}]");
            if s.name.trim().is_empty() {
                e.push(FieldError::new(format!("{p}.name"), "required"));
            }
            if !(s.orders_per_staff_hour.is_finite() && s.orders_per_staff_hour > 0.0) {
                e.push(FieldError::new(
                    format!("{p}.orders_per_staff_hour"),
                    "must be a positive number",
                ));
            }
            if let Some(h) = s.hours_per_day
                && !(h > 0.0 && h <= 24.0)
            {
                e.push(FieldError::new(format!("{p}.hours_per_day"), "must be in (0, 24]"));
            }
        }
        if !self.fulfilment.stages.is_empty() && orders.is_none() {
            e.push(FieldError::new("fulfilment", "needs an orders step: set orders_step"));
        }
        if self.resolution.is_zero() {
            e.push(FieldError::new("resolution", "must be greater than 0"));
        }
        if self.window < self.resolution {
            e.push(FieldError::new("window", "must be at least one resolution"));
        }
        for (k, v) in [
            ("max_routes", self.max_routes),
            ("max_traces", self.max_traces),
            ("max_replicas", self.max_replicas),
        ] {
            if v == 0 {
                e.push(FieldError::new(k, "must be at least 1"));
            }
        }
        if self.min_calls == 0 {
            e.push(FieldError::new("min_calls", "must be at least 1"));
        }
        if self.metrics_flush_interval.is_zero() {
            e.push(FieldError::new("metrics_flush_interval", "must be greater than 0"));
        }
        e
    }
}
