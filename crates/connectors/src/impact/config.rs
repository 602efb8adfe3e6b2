//! Config of the `business_impact` connector (the table is in the module doc of [`super`]).

use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

use bizpilot_core::config::Duration;
use bizpilot_core::{ComponentConfig, ComponentId, Currency, FieldError, Money};

/// One string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A scalar written in YAML: string, integer, float or boolean.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Str(s) => f.write_str(s),
        }
    }
}

/// How an operation's outcome is decided.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailureConfig {
    /// A span with status ERROR is a failure.
    pub on_status_error: bool,
    /// Conditions `"<attribute> <op> <value>"` (`op` one of `>=`, `>`, `<=`, `<`, `==`, `!=`); any true is a failure.
    pub when: Vec<String>,
}

impl Default for FailureConfig {
    fn default() -> Self {
        FailureConfig {
            on_status_error: true,
            when: Vec::new(),
        }
    }
}

/// Where an operation's money value comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValueConfig {
    /// Attribute holding the value (exact decimal string, `"USD 12.50"`, double, int or `{units, nanos, currency_code}`).
    pub attribute: String,
    /// Attribute holding the currency code when the value has none.
    pub currency_attribute: String,
    /// Currency when neither the value nor `currency_attribute` gives one.
    pub default_currency: Option<Currency>,
    /// When the attribute is absent: the order's value from the `state` extension (its stated amount, else its
    /// line items priced with their unit prices or the `prices` table).
    pub from_state: bool,
}

impl Default for ValueConfig {
    fn default() -> Self {
        ValueConfig {
            attribute: "business.order.value".into(),
            currency_attribute: "business.currency".into(),
            default_currency: None,
            from_state: true,
        }
    }
}

/// One business operation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperationConfig {
    pub name: String,
    /// `service.name` is one of these.
    pub service: Option<OneOrMany>,
    /// The span name is exactly one of these.
    pub span_name: Option<OneOrMany>,
    /// The span name matches this regular expression.
    pub span_name_regex: Option<String>,
    /// Span (or resource) attributes equal to these values.
    pub attributes: BTreeMap<String, Scalar>,
    pub failure: FailureConfig,
    /// Overrides the connector's `value` for this operation.
    pub value: Option<ValueConfig>,
    /// Overrides the connector's `business_key` for this operation.
    pub business_key: Option<String>,
}

/// A price table: a `lookup` extension keyed by SKU.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricesConfig {
    pub extension: ComponentId,
    #[serde(default = "default_price_column")]
    pub column: String,
}

fn default_price_column() -> String {
    "price".into()
}

/// A metric dimension: a label filled from a span (or resource) attribute.
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
        default: Option<String>,
    },
}

impl DimensionConfig {
    /// (label name, source attribute, value when absent)
    pub fn parts(&self) -> (String, String, Option<String>) {
        match self {
            DimensionConfig::Attribute(a) => (a.clone(), a.clone(), None),
            DimensionConfig::Full {
                name,
                attribute,
                default,
            } => (
                name.clone(),
                attribute.clone().unwrap_or_else(|| name.clone()),
                default.clone(),
            ),
        }
    }
}

/// How incidents are detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Detection {
    /// Relative to each operation's learned normal rate: a Bernoulli CUSUM (`docs/incident-detection.md`).
    #[default]
    Baseline,
    /// A fixed failure-rate share over a trailing window (`open_threshold`, `close_threshold`).
    Threshold,
}

/// Incident detection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentConfig {
    pub detection: Detection,
    pub window: Duration,
    pub evaluation_interval: Duration,
    pub open_threshold: f64,
    pub close_threshold: f64,
    pub min_operations: u64,
    /// CUSUM threshold `h` (baseline detection).
    pub cusum_threshold: f64,
    /// The alternative rate tested: `max(detect_ratio × baseline, baseline + detect_shift)`.
    pub detect_ratio: f64,
    pub detect_shift: f64,
    pub baseline_half_life: Duration,
    /// Cold start: the rate assumed before data, worth `baseline_prior_operations` operations.
    pub baseline_prior: f64,
    pub baseline_prior_operations: f64,
    pub min_baseline: f64,
    /// Significance below which an interval counts as bad (dating start and end).
    pub interval_alpha: f64,
    /// Consecutive intervals that are not bad that close an incident.
    pub close_intervals: u32,
    /// A failure of a customer whose previous failure is this recent is a retry: not new evidence.
    pub retry_window: Duration,
    /// Without new spans this long (wall clock), open incidents close (`closed_reason: idle`).
    pub idle_timeout: Duration,
    /// Latency incidents: an operation slower than this × its typical duration is slow (0 disables).
    pub latency_factor: f64,
    /// Operations learned before durations are judged.
    pub latency_min_samples: u64,
    pub top_causes: usize,
    pub max_retained: usize,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        IncidentConfig {
            detection: Detection::Baseline,
            window: Duration::from_secs(60),
            evaluation_interval: Duration::from_secs(10),
            open_threshold: 0.5,
            close_threshold: 0.2,
            min_operations: 10,
            cusum_threshold: 16.0,
            detect_ratio: 4.0,
            detect_shift: 0.02,
            baseline_half_life: Duration::from_secs(3600),
            baseline_prior: 0.01,
            baseline_prior_operations: 200.0,
            min_baseline: 0.001,
            interval_alpha: 0.01,
            close_intervals: 2,
            retry_window: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            latency_factor: 5.0,
            latency_min_samples: 200,
            top_causes: 5,
            max_retained: 100,
        }
    }
}

/// The impact list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImpactConfig {
    /// Most impact records kept for the HTTP API (the oldest go first).
    pub max_records: usize,
    /// Closed affected-customer windows kept for the HTTP API, per operation.
    pub windows_retained: usize,
}

impl Default for ImpactConfig {
    fn default() -> Self {
        ImpactConfig {
            max_records: 100_000,
            windows_retained: 48,
        }
    }
}

/// A money amount written `"USD 1000000"`, `"1000000 USD"` or `{currency: USD, amount: "1000000"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoneyConfig(pub Money);

impl<'de> Deserialize<'de> for MoneyConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Object(Money),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => Money::parse(&s, None)
                .map(MoneyConfig)
                .map_err(serde::de::Error::custom),
            Raw::Object(m) => Ok(MoneyConfig(m)),
        }
    }
}

/// A business goal: a revenue target of an operation per period.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalConfig {
    pub name: String,
    pub operation: String,
    pub target: MoneyConfig,
    pub period: Duration,
}

/// Config of the `business_impact` connector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusinessImpactConfig {
    pub operations: Vec<OperationConfig>,
    pub business_key: String,
    /// Attribute naming the customer in impact records; default: `business_key`.
    pub customer_attribute: Option<String>,
    pub tier_attribute: String,
    pub order_attribute: String,
    pub items_attribute: String,
    pub value: ValueConfig,
    /// A `business_state` extension: line items (and the fallback value) of `order_attribute`.
    pub state: Option<ComponentId>,
    pub prices: Option<PricesConfig>,
    pub dimensions: Vec<DimensionConfig>,
    pub max_series: usize,
    pub dedup_window: Duration,
    pub dedup_max_spans: usize,
    pub distinct_exact_limit: usize,
    pub allowed_lateness: Duration,
    pub idle_timeout: Option<Duration>,
    pub max_pending_spans: usize,
    pub max_keys: usize,
    pub metrics_flush_interval: Duration,
    pub duration_buckets: Vec<f64>,
    pub redact_customer: bool,
    pub hash_key_env: String,
    pub incident: IncidentConfig,
    pub impact: ImpactConfig,
    pub goals: Vec<GoalConfig>,
    /// Trace-aware operations: missing business context from other spans of the same trace ([`super::trace`]).
    pub trace_context: super::trace::TraceContextConfig,
    /// Id of a storage extension (`file_storage`): the connector's input is journaled into it (group commit every
    /// `checkpoint_interval`) and replayed at start; none: memory only.
    pub storage: Option<String>,
    /// How often the journal is committed (and the acknowledgements of the data in it released).
    pub checkpoint_interval: Duration,
    /// Journal written since the last snapshot that makes the next one due, at least (then also twice the last
    /// snapshot's size): bounds what is stored and the replay at start ([`super::durable::Snapshots::if_due`]).
    pub snapshot_min_journal: bizpilot_core::config::ByteSize,
}

/// Bucket bounds (seconds) of the duration histogram: the OpenTelemetry semantic conventions' advice for
/// durations in seconds.
pub const DEFAULT_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

impl Default for BusinessImpactConfig {
    fn default() -> Self {
        BusinessImpactConfig {
            operations: Vec::new(),
            business_key: "business.customer.id".into(),
            customer_attribute: None,
            tier_attribute: "business.customer.tier".into(),
            order_attribute: "business.order.id".into(),
            items_attribute: "business.cart.items".into(),
            value: ValueConfig::default(),
            state: None,
            prices: None,
            dimensions: vec![DimensionConfig::Full {
                name: "customer.tier".into(),
                attribute: Some("business.customer.tier".into()),
                default: Some("unknown".into()),
            }],
            max_series: 1000,
            dedup_window: Duration::from_secs(3600),
            dedup_max_spans: 1_000_000,
            distinct_exact_limit: 10_000,
            allowed_lateness: Duration::from_secs(30),
            idle_timeout: None,
            max_pending_spans: 1_000_000,
            max_keys: 1_000_000,
            metrics_flush_interval: Duration::from_secs(15),
            duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            redact_customer: false,
            hash_key_env: "BIZPILOT_HASH_KEY".into(),
            incident: IncidentConfig::default(),
            impact: ImpactConfig::default(),
            goals: Vec::new(),
            trace_context: super::trace::TraceContextConfig::default(),
            storage: None,
            checkpoint_interval: Duration::from_millis(200),
            snapshot_min_journal: bizpilot_core::config::ByteSize(super::durable::SNAPSHOT_MIN_JOURNAL_BYTES),
        }
    }
}

impl BusinessImpactConfig {
    /// A fingerprint of what shapes the state (not where or how often it is journaled or snapshotted, nor how often metrics
    /// are emitted): a journal written under another fingerprint is not replayed.
    pub fn fingerprint(&self) -> u64 {
        let mut cfg = self.clone();
        cfg.storage = None;
        cfg.checkpoint_interval = Duration::default();
        cfg.snapshot_min_journal = bizpilot_core::config::ByteSize(0);
        cfg.metrics_flush_interval = Duration::default();
        bizpilot_core::storage::fingerprint(&format!("{cfg:?}"))
    }
}

/// A comparison of an attribute against a constant.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub attribute: String,
    pub op: CmpOp,
    pub value: String,
}

/// Comparison operators of a [`Condition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
    Ne,
}

impl Condition {
    /// Parses `"<attribute> <op> <value>"`; the value may be quoted.
    pub fn parse(s: &str) -> Result<Condition, String> {
        const OPS: [(&str, CmpOp); 6] = [
            (">=", CmpOp::Ge),
            ("<=", CmpOp::Le),
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            (">", CmpOp::Gt),
            ("<", CmpOp::Lt),
        ];
        let (pos, len, op) = OPS
            .iter()
            .filter_map(|(t, op)| s.find(t).map(|p| (p, t.len(), *op)))
            .min_by_key(|(p, len, _)| (*p, usize::MAX - len))
            .ok_or_else(|| format!("{s:?}: expected \"<attribute> <op> <value>\" with op one of >= > <= < == !="))?;
        let attribute = s[..pos].trim().to_string();
        let mut value = s[pos + len..].trim().to_string();
        if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"')) || (value.starts_with('\'') && value.ends_with('\'')))
        {
            value = value[1..value.len() - 1].to_string();
        }
        if attribute.is_empty() || attribute.contains(char::is_whitespace) {
            return Err(format!("{s:?}: missing or invalid attribute name"));
        }
        if value.is_empty() {
            return Err(format!("{s:?}: missing value"));
        }
        Ok(Condition { attribute, op, value })
    }
}

fn nanos(d: Duration) -> u128 {
    d.get().as_nanos()
}

impl ComponentConfig for BusinessImpactConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        if self.operations.is_empty() {
            e.push(FieldError::new("operations", "at least one operation is required"));
        }
        let mut names: Vec<&str> = Vec::new();
        for (i, op) in self.operations.iter().enumerate() {
            let p = format!("operations[{i}]");
            if op.name.trim().is_empty() {
                e.push(FieldError::new(format!("{p}.name"), "required"));
            } else if names.contains(&op.name.as_str()) {
                e.push(FieldError::new(
                    format!("{p}.name"),
                    format!("{:?} is defined twice", op.name),
                ));
            } else {
                names.push(&op.name);
            }
            if op.service.is_none()
                && op.span_name.is_none()
                && op.span_name_regex.is_none()
                && op.attributes.is_empty()
            {
                e.push(FieldError::new(
                    p.clone(),
                    "needs a matcher: service, span_name, span_name_regex or attributes",
                ));
            }
            if let Some(re) = &op.span_name_regex
                && let Err(err) = Regex::new(re)
            {
                e.push(FieldError::new(format!("{p}.span_name_regex"), err.to_string()));
            }
            for (j, c) in op.failure.when.iter().enumerate() {
                if let Err(err) = Condition::parse(c) {
                    e.push(FieldError::new(format!("{p}.failure.when[{j}]"), err));
                }
            }
            if !op.failure.on_status_error && op.failure.when.is_empty() {
                e.push(FieldError::new(
                    format!("{p}.failure"),
                    "no failure condition: set on_status_error or add a `when` condition",
                ));
            }
            if let Some(v) = &op.value
                && v.attribute.trim().is_empty()
                && !v.from_state
            {
                e.push(FieldError::new(
                    format!("{p}.value.attribute"),
                    "required unless from_state",
                ));
            }
            if op.business_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
                e.push(FieldError::new(format!("{p}.business_key"), "must not be empty"));
            }
        }
        if self.business_key.trim().is_empty() {
            e.push(FieldError::new("business_key", "must not be empty"));
        }
        let mut labels: Vec<String> = Vec::new();
        for (i, d) in self.dimensions.iter().enumerate() {
            let (name, attr, _) = d.parts();
            if name.trim().is_empty() || attr.trim().is_empty() {
                e.push(FieldError::new(
                    format!("dimensions[{i}]"),
                    "name and attribute must not be empty",
                ));
            } else if matches!(
                name.as_str(),
                "operation" | "outcome" | "currency" | "otel.metric.overflow" | "window" | "goal"
            ) {
                e.push(FieldError::new(
                    format!("dimensions[{i}].name"),
                    format!("{name:?} is reserved"),
                ));
            } else if labels.contains(&name) {
                e.push(FieldError::new(
                    format!("dimensions[{i}].name"),
                    format!("{name:?} is used twice"),
                ));
            } else {
                labels.push(name);
            }
        }
        if self.max_series == 0 {
            e.push(FieldError::new("max_series", "must be at least 1"));
        }
        if self.dedup_window.is_zero() {
            e.push(FieldError::new("dedup_window", "must be greater than 0"));
        }
        if self.dedup_max_spans == 0 {
            e.push(FieldError::new("dedup_max_spans", "must be at least 1"));
        }
        if self.max_pending_spans == 0 {
            e.push(FieldError::new("max_pending_spans", "must be at least 1"));
        }
        if self.max_keys == 0 {
            e.push(FieldError::new("max_keys", "must be at least 1"));
        }
        if self.metrics_flush_interval.is_zero() {
            e.push(FieldError::new("metrics_flush_interval", "must be greater than 0"));
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            e.push(FieldError::new("idle_timeout", "must be greater than 0"));
        }
        if self.duration_buckets.iter().any(|b| !b.is_finite())
            || self.duration_buckets.windows(2).any(|w| w[0] >= w[1])
        {
            e.push(FieldError::new(
                "duration_buckets",
                "must be finite and strictly increasing",
            ));
        }
        if self.redact_customer && self.hash_key_env.trim().is_empty() {
            e.push(FieldError::new("hash_key_env", "required with redact_customer"));
        }
        let inc = &self.incident;
        if inc.evaluation_interval.is_zero() {
            e.push(FieldError::new(
                "incident.evaluation_interval",
                "must be greater than 0",
            ));
        } else if inc.window.is_zero() || !nanos(inc.window).is_multiple_of(nanos(inc.evaluation_interval)) {
            e.push(FieldError::new(
                "incident.window",
                "must be a positive multiple of incident.evaluation_interval",
            ));
        } else if nanos(inc.window) / nanos(inc.evaluation_interval) > 10_000 {
            e.push(FieldError::new("incident.window", "at most 10000 evaluation intervals"));
        }
        for (k, v) in [
            ("incident.open_threshold", inc.open_threshold),
            ("incident.close_threshold", inc.close_threshold),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                e.push(FieldError::new(k, "must be in (0, 1]"));
            }
        }
        if inc.close_threshold > inc.open_threshold {
            e.push(FieldError::new(
                "incident.close_threshold",
                "must not exceed incident.open_threshold",
            ));
        }
        if !(inc.cusum_threshold.is_finite() && inc.cusum_threshold > 0.0) {
            e.push(FieldError::new("incident.cusum_threshold", "must be greater than 0"));
        }
        if !(inc.detect_ratio.is_finite() && inc.detect_ratio > 1.0) {
            e.push(FieldError::new("incident.detect_ratio", "must be greater than 1"));
        }
        if !(inc.detect_shift >= 0.0 && inc.detect_shift < 1.0) {
            e.push(FieldError::new("incident.detect_shift", "must be in [0, 1)"));
        }
        for (k, v) in [
            ("incident.baseline_prior", inc.baseline_prior),
            ("incident.min_baseline", inc.min_baseline),
            ("incident.interval_alpha", inc.interval_alpha),
        ] {
            if !(v > 0.0 && v < 1.0) {
                e.push(FieldError::new(k, "must be in (0, 1)"));
            }
        }
        if !(inc.baseline_prior_operations.is_finite() && inc.baseline_prior_operations >= 0.0) {
            e.push(FieldError::new(
                "incident.baseline_prior_operations",
                "must be at least 0",
            ));
        }
        if inc.baseline_half_life.is_zero() {
            e.push(FieldError::new("incident.baseline_half_life", "must be greater than 0"));
        }
        if inc.idle_timeout.is_zero() {
            e.push(FieldError::new("incident.idle_timeout", "must be greater than 0"));
        }
        if !(inc.latency_factor == 0.0 || (inc.latency_factor.is_finite() && inc.latency_factor > 1.0)) {
            e.push(FieldError::new(
                "incident.latency_factor",
                "must be 0 (off) or greater than 1",
            ));
        }
        if inc.max_retained == 0 {
            e.push(FieldError::new("incident.max_retained", "must be at least 1"));
        }
        if self.impact.max_records == 0 {
            e.push(FieldError::new("impact.max_records", "must be at least 1"));
        }
        let mut goal_names: Vec<&str> = Vec::new();
        for (i, g) in self.goals.iter().enumerate() {
            let p = format!("goals[{i}]");
            if g.name.trim().is_empty() {
                e.push(FieldError::new(format!("{p}.name"), "required"));
            } else if goal_names.contains(&g.name.as_str()) {
                e.push(FieldError::new(
                    format!("{p}.name"),
                    format!("{:?} is defined twice", g.name),
                ));
            } else {
                goal_names.push(&g.name);
            }
            if !self.operations.iter().any(|o| o.name == g.operation) {
                e.push(FieldError::new(
                    format!("{p}.operation"),
                    format!("no operation named {:?}", g.operation),
                ));
            }
            if g.period.is_zero() {
                e.push(FieldError::new(format!("{p}.period"), "must be greater than 0"));
            }
            if g.target.0.is_zero() || g.target.0.is_negative() {
                e.push(FieldError::new(format!("{p}.target"), "must be greater than 0"));
            }
        }
        e.extend(bizpilot_core::storage::validate_config(
            self.storage.as_deref(),
            self.checkpoint_interval,
        ));
        if self.trace_context.enabled && self.trace_context.max_traces == 0 {
            e.push(FieldError::new("trace_context.max_traces", "must be at least 1"));
        }
        for (j, a) in self.trace_context.attributes.iter().enumerate() {
            if a.trim().is_empty() {
                e.push(FieldError::new(
                    format!("trace_context.attributes[{j}]"),
                    "empty attribute name",
                ));
            }
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::component::parse_config;

    fn parse(yaml: &str) -> Result<BusinessImpactConfig, Vec<FieldError>> {
        let raw: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        parse_config(&raw)
    }

    #[test]
    fn conditions_parse() {
        let c = Condition::parse("http.response.status_code >= 500").unwrap();
        assert_eq!(
            (c.attribute.as_str(), c.op, c.value.as_str()),
            ("http.response.status_code", CmpOp::Ge, "500")
        );
        let c = Condition::parse("rpc.grpc.status_code!='0'").unwrap();
        assert_eq!((c.op, c.value.as_str()), (CmpOp::Ne, "0"));
        assert_eq!(Condition::parse("a > 1").unwrap().op, CmpOp::Gt);
        assert_eq!(Condition::parse("a<=1").unwrap().op, CmpOp::Le);
        assert!(Condition::parse("a 1").is_err());
        assert!(Condition::parse(">= 1").is_err());
        assert!(Condition::parse("a >=").is_err());
    }

    #[test]
    fn a_full_config_parses() {
        let cfg = parse(
            r#"
operations:
  - name: checkout
    span_name: oteldemo.CheckoutService/PlaceOrder
  - name: api
    service: [frontend]
    span_name_regex: "^POST "
    failure: {when: ["http.response.status_code >= 500"]}
    value: {attribute: demo.payment.amount, default_currency: USD, from_state: false}
dimensions: [business.customer.tier, {name: region, attribute: business.customer.region, default: unknown}]
goals:
  - {name: sales_per_hour, operation: checkout, target: "USD 1000000", period: 1h}
incident: {window: 30s, evaluation_interval: 10s}
"#,
        )
        .unwrap();
        assert_eq!(cfg.operations.len(), 2);
        assert_eq!(cfg.goals[0].target.0, Money::parse("USD 1000000", None).unwrap());
        assert_eq!(cfg.dimensions[0].parts().0, "business.customer.tier");
        assert_eq!(
            cfg.dimensions[1].parts(),
            (
                "region".into(),
                "business.customer.region".into(),
                Some("unknown".into())
            )
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let errs = parse(
            r#"
operations:
  - name: a
  - name: a
    span_name: x
    span_name_regex: "("
    failure: {on_status_error: false}
dimensions: [operation]
incident: {window: 25s, evaluation_interval: 10s, open_threshold: 0.1, close_threshold: 0.5}
goals: [{name: g, operation: nope, target: "USD 0", period: 0s}]
max_series: 0
"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "operations[0]",
            "operations[1].name",
            "operations[1].span_name_regex",
            "operations[1].failure",
            "dimensions[0].name",
            "incident.window",
            "incident.close_threshold",
            "goals[0].operation",
            "goals[0].period",
            "goals[0].target",
            "max_series",
        ] {
            assert!(paths.contains(&p), "{p} missing in {paths:?}");
        }
        assert!(parse("{}").unwrap_err().iter().any(|e| e.path == "operations"));
        assert_eq!(parse("{operations: [], nonsense: 1}").unwrap_err()[0].path, "nonsense");
    }
}
