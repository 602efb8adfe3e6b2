//! Config of the `enrich` processor (see the module doc of [`super`] for the table).

use serde::Deserialize;
use std::collections::BTreeMap;

use bizpilot_core::config::Duration;
use bizpilot_core::{ComponentConfig, ComponentId, Currency, FieldError};

/// A scalar written in YAML: string, integer, float or boolean.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ScalarConfig {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// One string or a list of strings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// When a rule applies. Every given part must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhenConfig {
    /// `service.name` is one of these.
    pub service: Option<OneOrMany>,
    /// Resource attributes equal to these values.
    pub resource: BTreeMap<String, ScalarConfig>,
    /// The span name (for log records: the event name) is exactly one of these.
    pub span_name: Option<OneOrMany>,
    /// The span name (event name) matches this regular expression.
    pub span_name_regex: Option<String>,
    /// Item attributes equal to these values.
    pub attributes: BTreeMap<String, ScalarConfig>,
    /// Item attributes that must be present.
    pub exists: Vec<String>,
}

/// `copy` and `rename`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CopyConfig {
    pub from: String,
    /// Default: `business.` + `from` without a leading `demo.` or `app.`.
    pub to: Option<String>,
    pub overwrite: bool,
}

/// `parse_money`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParseMoneyConfig {
    /// Attribute holding the amount (string, double, int or `{units, nanos, currency_code}` map).
    pub from: Option<String>,
    /// Attribute holding whole units (with `nanos`), instead of `from`.
    pub units: Option<String>,
    /// Attribute holding nano-units (with `units`).
    pub nanos: Option<String>,
    /// Attribute holding the currency code when the amount has none.
    pub currency_from: Option<String>,
    /// Currency when neither the amount nor `currency_from` gives one.
    pub default_currency: Option<Currency>,
    pub to: String,
    /// Where the currency code goes; empty to not write it.
    pub currency_to: String,
    pub overwrite: bool,
}

impl Default for ParseMoneyConfig {
    fn default() -> Self {
        ParseMoneyConfig {
            from: None,
            units: None,
            nanos: None,
            currency_from: None,
            default_currency: None,
            to: "business.order.value".into(),
            currency_to: "business.currency".into(),
            overwrite: false,
        }
    }
}

/// `set`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    pub key: String,
    pub value: ScalarConfig,
    #[serde(default)]
    pub overwrite: bool,
}

/// One `classify` threshold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConfig {
    /// Inclusive lower bound (a number or a decimal string).
    pub min: ScalarConfig,
    pub label: String,
}

/// `classify`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifyConfig {
    pub from: String,
    pub to: String,
    /// Ascending lower bounds: the label of the last one the value reaches wins.
    pub thresholds: Vec<ThresholdConfig>,
    /// Label for a value below every threshold (none: the attribute is not set).
    pub otherwise: Option<String>,
    pub overwrite: bool,
}

/// One rule: an optional condition and exactly one action.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// A name for logs and metrics.
    pub name: Option<String>,
    pub when: Option<WhenConfig>,
    /// Run after the joins (to classify joined values, say) instead of before.
    pub after_join: bool,
    pub copy: Option<CopyConfig>,
    pub rename: Option<CopyConfig>,
    pub parse_money: Option<ParseMoneyConfig>,
    pub set: Option<SetConfig>,
    pub classify: Option<ClassifyConfig>,
    pub delete: Option<OneOrMany>,
}

/// Attributes the state join writes; an empty name turns one off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JoinAttributes {
    pub customer_id: String,
    pub customer_tier: String,
    pub order_value: String,
    pub currency: String,
    pub cart_items: String,
}

impl Default for JoinAttributes {
    fn default() -> Self {
        JoinAttributes {
            customer_id: "business.customer.id".into(),
            customer_tier: "business.customer.tier".into(),
            order_value: "business.order.value".into(),
            currency: "business.currency".into(),
            cart_items: "business.cart.items".into(),
        }
    }
}

/// The join with the `business_state` extension.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JoinConfig {
    /// Id of a `business_state` extension; none: no state join.
    pub state: Option<ComponentId>,
    pub order_key: String,
    pub customer_key: String,
    /// How long a span whose order is not yet known may wait for it; `0` = never wait.
    pub window: Duration,
    /// Most spans waiting at once; beyond it spans go on at once (counted).
    pub max_held_spans: usize,
    pub attributes: JoinAttributes,
    /// Record each trace's customer and tier in the state, for business events of the same trace
    /// that name no customer (the OpenTelemetry Demo's `OrderResult`).
    pub link_traces: bool,
}

impl Default for JoinConfig {
    fn default() -> Self {
        JoinConfig {
            state: None,
            order_key: "business.order.id".into(),
            customer_key: "business.customer.id".into(),
            window: Duration::default(),
            max_held_spans: 10_000,
            attributes: JoinAttributes::default(),
            link_traces: false,
        }
    }
}

/// A join with a `lookup` extension.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupJoinConfig {
    /// Id of a `lookup` extension.
    pub extension: Option<ComponentId>,
    /// The attribute whose value is looked up.
    pub key: String,
    /// Table column → attribute.
    pub attributes: BTreeMap<String, String>,
    pub overwrite: bool,
}

/// Config of the `enrich` processor.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    pub rules: Vec<RuleConfig>,
    pub join: JoinConfig,
    pub lookups: Vec<LookupJoinConfig>,
}

/// The default target of `copy`/`rename`.
pub fn default_target(from: &str) -> String {
    let rest = from
        .strip_prefix("demo.")
        .or_else(|| from.strip_prefix("app."))
        .unwrap_or(from);
    format!("business.{rest}")
}

impl RuleConfig {
    fn actions(&self) -> usize {
        usize::from(self.copy.is_some())
            + usize::from(self.rename.is_some())
            + usize::from(self.parse_money.is_some())
            + usize::from(self.set.is_some())
            + usize::from(self.classify.is_some())
            + usize::from(self.delete.is_some())
    }
}

fn empty(s: &str) -> bool {
    s.trim().is_empty()
}

/// Nano-units of a threshold.
pub fn threshold_nanos(v: &ScalarConfig) -> Result<i128, String> {
    use bizpilot_business::amount;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let r = match v {
        ScalarConfig::Int(i) => amount::decimal_nanos(&Value::IntValue(*i)),
        ScalarConfig::Float(f) => amount::nanos_from_f64(*f).ok(),
        ScalarConfig::Str(s) => amount::parse_decimal_nanos(s).ok(),
        ScalarConfig::Bool(_) => None,
    };
    r.ok_or_else(|| format!("{v:?} is not a number"))
}

impl ComponentConfig for EnrichConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let p = format!("rules[{i}]");
            match r.actions() {
                1 => {}
                0 => errs.push(FieldError::new(
                    &p,
                    "needs one action: copy, rename, parse_money, set, classify or delete",
                )),
                _ => errs.push(FieldError::new(
                    &p,
                    "has more than one action; split it into several rules",
                )),
            }
            if let Some(w) = &r.when
                && let Some(re) = &w.span_name_regex
                && let Err(e) = regex::Regex::new(re)
            {
                errs.push(FieldError::new(format!("{p}.when.span_name_regex"), e.to_string()));
            }
            for (name, c) in [("copy", &r.copy), ("rename", &r.rename)] {
                if let Some(c) = c {
                    if empty(&c.from) {
                        errs.push(FieldError::new(format!("{p}.{name}.from"), "required"));
                    }
                    if c.to.as_deref().is_some_and(empty) {
                        errs.push(FieldError::new(format!("{p}.{name}.to"), "must not be empty"));
                    }
                }
            }
            if let Some(m) = &r.parse_money {
                match (&m.from, &m.units) {
                    (Some(_), Some(_)) => errs.push(FieldError::new(
                        format!("{p}.parse_money"),
                        "give either from or units (with nanos), not both",
                    )),
                    (None, None) => errs.push(FieldError::new(
                        format!("{p}.parse_money.from"),
                        "required (or units and nanos)",
                    )),
                    _ => {}
                }
                if m.nanos.is_some() && m.units.is_none() {
                    errs.push(FieldError::new(format!("{p}.parse_money.nanos"), "needs units"));
                }
                if empty(&m.to) {
                    errs.push(FieldError::new(format!("{p}.parse_money.to"), "must not be empty"));
                }
            }
            if let Some(s) = &r.set
                && empty(&s.key)
            {
                errs.push(FieldError::new(format!("{p}.set.key"), "required"));
            }
            if let Some(c) = &r.classify {
                if empty(&c.from) {
                    errs.push(FieldError::new(format!("{p}.classify.from"), "required"));
                }
                if empty(&c.to) {
                    errs.push(FieldError::new(format!("{p}.classify.to"), "required"));
                }
                if c.thresholds.is_empty() {
                    errs.push(FieldError::new(
                        format!("{p}.classify.thresholds"),
                        "needs at least one threshold",
                    ));
                }
                let mut prev: Option<i128> = None;
                for (j, t) in c.thresholds.iter().enumerate() {
                    match threshold_nanos(&t.min) {
                        Ok(n) => {
                            if prev.is_some_and(|pv| n <= pv) {
                                errs.push(FieldError::new(
                                    format!("{p}.classify.thresholds[{j}].min"),
                                    "thresholds must be in strictly ascending order",
                                ));
                            }
                            prev = Some(n);
                        }
                        Err(e) => errs.push(FieldError::new(format!("{p}.classify.thresholds[{j}].min"), e)),
                    }
                }
            }
            if let Some(d) = &r.delete
                && d.to_vec().iter().any(|k| empty(k))
            {
                errs.push(FieldError::new(
                    format!("{p}.delete"),
                    "attribute names must not be empty",
                ));
            }
        }
        let j = &self.join;
        if j.state.is_some() {
            if empty(&j.order_key) && empty(&j.customer_key) {
                errs.push(FieldError::new(
                    "join.order_key",
                    "order_key or customer_key is required",
                ));
            }
            if !j.window.is_zero() && j.max_held_spans == 0 {
                errs.push(FieldError::new(
                    "join.max_held_spans",
                    "must be at least 1 when a join window is set",
                ));
            }
            if !j.window.is_zero() && empty(&j.order_key) {
                errs.push(FieldError::new("join.window", "a join window needs join.order_key"));
            }
        } else if !j.window.is_zero() {
            errs.push(FieldError::new("join.window", "a join window needs join.state"));
        }
        for (i, l) in self.lookups.iter().enumerate() {
            if l.extension.is_none() {
                errs.push(FieldError::new(
                    format!("lookups[{i}].extension"),
                    "required: the id of a lookup extension",
                ));
            }
            if empty(&l.key) {
                errs.push(FieldError::new(format!("lookups[{i}].key"), "required"));
            }
            if l.attributes.is_empty() {
                errs.push(FieldError::new(
                    format!("lookups[{i}].attributes"),
                    "map at least one column to an attribute",
                ));
            }
        }
        errs
    }
}
