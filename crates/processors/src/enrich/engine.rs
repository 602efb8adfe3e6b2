//! The compiled rule engine of the `enrich` processor: rules, the state join and
//! the lookup joins, applied synchronously to OTLP requests, on two paths with the
//! same semantics:
//!
//! - **encoded** ([`Engine::apply_encoded`], the processor's hot path): spans are read
//!   through zero-copy views over the request bytes and the attributes the rules add or
//!   remove, and the spans that wait in the join window, are written through one edit list
//!   ([`bizpilot_core::Traces::edit_spans`]); a request is never decoded nor re-encoded, only
//!   changed spans are re-written (see [`super::target`]), held spans are kept encoded;
//! - **decoded** ([`Engine::apply_traces`]): owned structs changed in place; used for log
//!   records and for data that arrived decoded (OTLP/JSON).
//!
//! Everything is compiled once ([`Engine::new`]): regexes, attribute names (with their
//! slots in the engine's vocabulary), thresholds. Per item, a rule whose condition fails or
//! whose source attribute is absent costs a few comparisons and allocates nothing.

use metrics::{Counter, Gauge, counter, gauge};
use regex::Regex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bizpilot_business::attrs::{self, KeyValue, Value};
use bizpilot_business::{BusinessState, Lookup, LookupTable, amount};
use bizpilot_core::pb;
use bizpilot_core::pdata::{Work, count_work};
use bizpilot_core::view::{self, SpanEdit, ValueRef};
use bizpilot_core::{Ack, Batch, Currency, Extensions, MoneyError, Payload, Signal, Traces, parse_config};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use super::config::{
    ClassifyConfig, EnrichConfig, JoinAttributes, ParseMoneyConfig, RuleConfig, ScalarConfig, WhenConfig,
    default_target, threshold_nanos,
};
use super::hold::{HeldSpan, Holder, ResHeader, ScopeHeader};
use super::target::{self, Decoded, Key, NewValue, Scratch, Target, Vocab};

/// What the engine reads and writes on a span or a log record.
pub trait Item {
    /// The span name; for a log record, its event name.
    fn name(&self) -> &str;
    fn attributes(&self) -> &[KeyValue];
    fn attributes_mut(&mut self) -> &mut Vec<KeyValue>;
    /// The trace id (empty when none).
    fn trace_id(&self) -> &[u8];
}

impl Item for Span {
    fn name(&self) -> &str {
        &self.name
    }
    fn attributes(&self) -> &[KeyValue] {
        &self.attributes
    }
    fn attributes_mut(&mut self) -> &mut Vec<KeyValue> {
        &mut self.attributes
    }
    fn trace_id(&self) -> &[u8] {
        &self.trace_id
    }
}

impl Item for LogRecord {
    fn name(&self) -> &str {
        &self.event_name
    }
    fn attributes(&self) -> &[KeyValue] {
        &self.attributes
    }
    fn attributes_mut(&mut self) -> &mut Vec<KeyValue> {
        &mut self.attributes
    }
    fn trace_id(&self) -> &[u8] {
        &self.trace_id
    }
}

/// A configured scalar, with its text form for comparisons across types.
#[derive(Debug, Clone)]
struct Scalar {
    kind: ScalarConfig,
    text: String,
}

impl Scalar {
    fn new(c: &ScalarConfig) -> Self {
        let text = match c {
            ScalarConfig::Bool(b) => b.to_string(),
            ScalarConfig::Int(i) => i.to_string(),
            ScalarConfig::Float(f) => f.to_string(),
            ScalarConfig::Str(s) => s.clone(),
        };
        Scalar { kind: c.clone(), text }
    }

    fn to_value(&self) -> Value {
        match &self.kind {
            ScalarConfig::Bool(b) => Value::BoolValue(*b),
            ScalarConfig::Int(i) => Value::IntValue(*i),
            ScalarConfig::Float(f) => Value::DoubleValue(*f),
            ScalarConfig::Str(s) => Value::StringValue(s.clone()),
        }
    }

    /// Equality of an attribute value with this scalar: same type compares
    /// natively (numbers numerically), different types compare as text.
    fn matches(&self, v: &ValueRef<'_>) -> bool {
        match (v, &self.kind) {
            (ValueRef::Str(s), _) => *s == self.text,
            (ValueRef::Int(i), ScalarConfig::Int(j)) => i == j,
            (ValueRef::Int(i), ScalarConfig::Float(f)) => (*i as f64) == *f,
            (ValueRef::Double(d), ScalarConfig::Float(f)) => d == f,
            (ValueRef::Double(d), ScalarConfig::Int(j)) => *d == (*j as f64),
            (ValueRef::Bool(a), ScalarConfig::Bool(b)) => a == b,
            (other, ScalarConfig::Str(t)) => other.as_text().is_some_and(|s| s == t.as_str()),
            _ => false,
        }
    }
}

/// A compiled `when`.
#[derive(Debug)]
struct Condition {
    services: Vec<String>,
    resource: Vec<(String, Scalar)>,
    names: Vec<String>,
    name_regex: Option<Regex>,
    attributes: Vec<(Key, Scalar)>,
    exists: Vec<Key>,
}

impl Condition {
    fn compile(w: &WhenConfig, vocab: &mut Vocab) -> Result<Condition, String> {
        Ok(Condition {
            services: w.service.as_ref().map(|s| s.to_vec()).unwrap_or_default(),
            resource: w.resource.iter().map(|(k, v)| (k.clone(), Scalar::new(v))).collect(),
            names: w.span_name.as_ref().map(|s| s.to_vec()).unwrap_or_default(),
            name_regex: match &w.span_name_regex {
                Some(r) => Some(Regex::new(r).map_err(|e| format!("span_name_regex: {e}"))?),
                None => None,
            },
            attributes: w
                .attributes
                .iter()
                .map(|(k, v)| (vocab.key(k), Scalar::new(v)))
                .collect(),
            exists: w.exists.iter().map(|k| vocab.key(k)).collect(),
        })
    }

    fn has_resource_part(&self) -> bool {
        !self.services.is_empty() || !self.resource.is_empty()
    }

    /// Whether the resource whose attributes `get` reads matches.
    fn resource_matches<'r>(&self, get: &impl Fn(&str) -> Option<ValueRef<'r>>) -> bool {
        if !self.services.is_empty() {
            let svc = get("service.name");
            let Some(svc) = svc.as_ref().and_then(|v| v.as_str()) else {
                return false;
            };
            if !self.services.iter().any(|s| s == svc) {
                return false;
            }
        }
        self.resource.iter().all(|(k, v)| get(k).is_some_and(|x| v.matches(&x)))
    }

    fn item_matches<T: Target>(&self, item: &T) -> bool {
        if !self.names.is_empty() && !self.names.iter().any(|n| n == item.name()) {
            return false;
        }
        if let Some(re) = &self.name_regex
            && !re.is_match(item.name())
        {
            return false;
        }
        self.exists.iter().all(|k| item.contains(k))
            && self
                .attributes
                .iter()
                .all(|(k, v)| item.get(k).is_some_and(|x| v.matches(&x)))
    }
}

#[derive(Debug)]
enum MoneySource {
    Value(Key),
    UnitsNanos(Key, Option<Key>),
}

#[derive(Debug)]
struct ParseMoney {
    source: MoneySource,
    currency_from: Option<Key>,
    default_currency: Option<Currency>,
    to: Key,
    currency_to: Key,
    overwrite: bool,
}

#[derive(Debug)]
struct Classify {
    from: Key,
    to: Key,
    /// Ascending (lower bound in nano-units, label).
    thresholds: Vec<(i128, String)>,
    otherwise: Option<String>,
    overwrite: bool,
}

#[derive(Debug)]
enum Action {
    Copy { from: Key, to: Key, overwrite: bool },
    Rename { from: Key, to: Key, overwrite: bool },
    ParseMoney(ParseMoney),
    Set { key: Key, value: Value, overwrite: bool },
    Classify(Classify),
    Delete(Vec<Key>),
}

#[derive(Debug)]
struct Rule {
    cond: Option<Condition>,
    /// Index into the per-resource match mask when the condition has a resource part.
    res_slot: Option<usize>,
    action: Action,
}

/// Whether `key` may be written: it is named and absent, or overwriting is allowed.
#[inline]
fn writable<T: Target>(a: &T, key: &Key, overwrite: bool) -> bool {
    !key.name.is_empty() && (overwrite || !a.contains(key))
}

impl Rule {
    fn compile(r: &RuleConfig, res_slots: &mut usize, vocab: &mut Vocab) -> Result<Rule, String> {
        let cond = r.when.as_ref().map(|w| Condition::compile(w, vocab)).transpose()?;
        let res_slot = match &cond {
            Some(c) if c.has_resource_part() => {
                *res_slots += 1;
                Some(*res_slots - 1)
            }
            _ => None,
        };
        let action = if let Some(c) = &r.copy {
            Action::Copy {
                from: vocab.key(&c.from),
                to: vocab.key(&c.to.clone().unwrap_or_else(|| default_target(&c.from))),
                overwrite: c.overwrite,
            }
        } else if let Some(c) = &r.rename {
            Action::Rename {
                from: vocab.key(&c.from),
                to: vocab.key(&c.to.clone().unwrap_or_else(|| default_target(&c.from))),
                overwrite: c.overwrite,
            }
        } else if let Some(m) = &r.parse_money {
            Action::ParseMoney(compile_money(m, vocab)?)
        } else if let Some(s) = &r.set {
            Action::Set {
                key: vocab.key(&s.key),
                value: Scalar::new(&s.value).to_value(),
                overwrite: s.overwrite,
            }
        } else if let Some(c) = &r.classify {
            Action::Classify(compile_classify(c, vocab)?)
        } else if let Some(d) = &r.delete {
            Action::Delete(d.to_vec().iter().map(|k| vocab.key(k)).collect())
        } else {
            return Err("a rule needs one action".into());
        };
        Ok(Rule { cond, res_slot, action })
    }

    #[inline]
    fn applies<T: Target>(&self, res_mask: &[bool], item: &T) -> bool {
        if let Some(slot) = self.res_slot
            && !res_mask.get(slot).copied().unwrap_or(false)
        {
            return false;
        }
        self.cond.as_ref().is_none_or(|c| c.item_matches(item))
    }

    /// Applies the action; returns whether the item changed.
    fn apply<T: Target>(&self, a: &mut T, c: &mut Counts) -> bool {
        match &self.action {
            Action::Copy { from, to, overwrite } => {
                if from.slot == to.slot || !writable(a, to, *overwrite) {
                    return false;
                }
                a.copy(from, to)
            }
            Action::Rename { from, to, overwrite } => {
                if !a.contains(from) {
                    return false;
                }
                a.rename(from, to, *overwrite);
                true
            }
            Action::ParseMoney(m) => m.apply(a, c),
            Action::Set { key, value, overwrite } => {
                if !writable(a, key, *overwrite) {
                    return false;
                }
                a.set(key, NewValue::Value(value));
                true
            }
            Action::Classify(k) => k.apply(a),
            Action::Delete(keys) => {
                let mut changed = false;
                for k in keys {
                    changed |= a.delete(k);
                }
                changed
            }
        }
    }
}

fn compile_money(m: &ParseMoneyConfig, vocab: &mut Vocab) -> Result<ParseMoney, String> {
    let source = match (&m.from, &m.units) {
        (Some(f), None) => MoneySource::Value(vocab.key(f)),
        (None, Some(u)) => MoneySource::UnitsNanos(vocab.key(u), m.nanos.as_deref().map(|n| vocab.key(n))),
        _ => return Err("parse_money needs either from or units".into()),
    };
    Ok(ParseMoney {
        source,
        currency_from: m.currency_from.as_deref().map(|k| vocab.key(k)),
        default_currency: m.default_currency,
        to: vocab.key(&m.to),
        currency_to: vocab.key(&m.currency_to),
        overwrite: m.overwrite,
    })
}

impl ParseMoney {
    fn apply<T: Target>(&self, a: &mut T, c: &mut Counts) -> bool {
        if !writable(a, &self.to, self.overwrite) {
            return false;
        }
        let source_present = match &self.source {
            MoneySource::Value(k) => a.contains(k),
            MoneySource::UnitsNanos(u, _) => a.contains(u),
        };
        if !source_present {
            return false;
        }
        // The currency attribute counts only as a string.
        let currency = self
            .currency_from
            .as_ref()
            .and_then(|k| a.get(k))
            .and_then(|v| v.as_str().and_then(|s| Currency::new(s).ok()))
            .or(self.default_currency);
        let parsed = match &self.source {
            MoneySource::Value(k) => match a.get(k) {
                Some(v) => amount::money_from_ref(&v, currency),
                None => return false,
            },
            MoneySource::UnitsNanos(u, n) => match (a.get(u), currency) {
                (Some(uv), Some(cur)) => {
                    let nv = n.as_ref().and_then(|n| a.get(n));
                    target::money_from_units_nanos(&uv, nv.as_ref(), cur)
                }
                (Some(_), None) => Err(MoneyError::Currency("missing".into())),
                (None, _) => return false,
            },
        };
        match parsed {
            Ok(m) => {
                a.set(&self.to, NewValue::Str(&m.amount_string()));
                if writable(a, &self.currency_to, self.overwrite) {
                    a.set(&self.currency_to, NewValue::Str(m.currency().as_str()));
                }
                true
            }
            Err(_) => {
                c.parse_errors += 1;
                false
            }
        }
    }
}

fn compile_classify(c: &ClassifyConfig, vocab: &mut Vocab) -> Result<Classify, String> {
    let thresholds = c
        .thresholds
        .iter()
        .map(|t| threshold_nanos(&t.min).map(|n| (n, t.label.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Classify {
        from: vocab.key(&c.from),
        to: vocab.key(&c.to),
        thresholds,
        otherwise: c.otherwise.clone(),
        overwrite: c.overwrite,
    })
}

impl Classify {
    fn apply<T: Target>(&self, a: &mut T) -> bool {
        if !writable(a, &self.to, self.overwrite) {
            return false;
        }
        let Some(n) = a.get(&self.from).and_then(|v| amount::decimal_nanos_ref(&v)) else {
            return false;
        };
        let label = self
            .thresholds
            .iter()
            .rev()
            .find(|(min, _)| n >= *min)
            .map(|(_, l)| l)
            .or(self.otherwise.as_ref());
        match label {
            Some(l) => {
                a.set(&self.to, NewValue::Str(l));
                true
            }
            None => false,
        }
    }
}

/// Result of one key lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Found {
    #[default]
    NoKey,
    Hit,
    Miss,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JoinOutcome {
    pub changed: bool,
    pub order: Found,
    pub customer: Found,
}

/// The attributes the state join writes, compiled.
#[derive(Debug)]
struct JoinKeys {
    customer_id: Key,
    customer_tier: Key,
    order_value: Key,
    currency: Key,
    cart_items: Key,
}

#[derive(Debug)]
struct StateJoin {
    state: Arc<BusinessState>,
    order_key: Key,
    customer_key: Key,
    to: JoinKeys,
    link_traces: bool,
}

/// Adds a string attribute unless `key` is present (or not named).
fn put_str<T: Target>(a: &mut T, key: &Key, v: &str) -> bool {
    if !writable(a, key, false) {
        return false;
    }
    a.set(key, NewValue::Str(v));
    true
}

impl StateJoin {
    fn compile(
        state: Arc<BusinessState>,
        order_key: &str,
        customer_key: &str,
        to: &JoinAttributes,
        vocab: &mut Vocab,
        link_traces: bool,
    ) -> Self {
        StateJoin {
            state,
            link_traces,
            order_key: vocab.key(order_key),
            customer_key: vocab.key(customer_key),
            to: JoinKeys {
                customer_id: vocab.key(&to.customer_id),
                customer_tier: vocab.key(&to.customer_tier),
                order_value: vocab.key(&to.order_value),
                currency: vocab.key(&to.currency),
                cart_items: vocab.key(&to.cart_items),
            },
        }
    }

    fn join<T: Target>(&self, a: &mut T) -> JoinOutcome {
        let mut out = JoinOutcome::default();
        let order = if self.order_key.name.is_empty() {
            None
        } else {
            match a.get(&self.order_key).as_ref().and_then(target::text) {
                None => None,
                Some(k) => {
                    let o = self.state.orders.get(&k);
                    out.order = if o.is_some() { Found::Hit } else { Found::Miss };
                    o
                }
            }
        };
        if let Some(o) = order {
            if let Some(c) = o.customer_id() {
                out.changed |= put_str(a, &self.to.customer_id, c);
            }
            if let Some(v) = o.value() {
                if writable(a, &self.to.order_value, false) {
                    a.set(&self.to.order_value, NewValue::Str(&v.amount_string()));
                    out.changed = true;
                }
                out.changed |= put_str(a, &self.to.currency, v.currency().as_str());
            }
            if let Some(n) = o.item_count()
                && writable(a, &self.to.cart_items, false)
            {
                a.set(&self.to.cart_items, NewValue::Int(n));
                out.changed = true;
            }
            if let Some(t) = o.customer_tier() {
                out.changed |= put_str(a, &self.to.customer_tier, t);
            }
        }
        if !self.customer_key.name.is_empty() {
            let customer = a
                .get(&self.customer_key)
                .as_ref()
                .and_then(target::text)
                .map(|k| self.state.customers.get(&k));
            match customer {
                None => {}
                Some(None) => out.customer = Found::Miss,
                Some(Some(c)) => {
                    out.customer = Found::Hit;
                    if let Some(t) = c.tier() {
                        out.changed |= put_str(a, &self.to.customer_tier, t);
                    }
                }
            }
        }
        if self.link_traces {
            self.link_trace(a);
        }
        out
    }

    /// Records the item's customer and tier as its trace's (see `join.link_traces`).
    fn link_trace<T: Target>(&self, a: &T) {
        let customer = a.get(&self.customer_key).as_ref().and_then(target::text);
        let tier = a.get(&self.to.customer_tier).as_ref().and_then(target::text);
        if customer.is_none() && tier.is_none() {
            return;
        }
        if let Some(trace) = bizpilot_business::trace_key(a.trace_id()) {
            self.state.link_span(&trace, customer.as_deref(), tier.as_deref());
        }
    }
}

#[derive(Debug)]
struct LookupJoin {
    lookup: Arc<Lookup>,
    key: Key,
    columns: Vec<(String, Key)>,
    overwrite: bool,
}

impl LookupJoin {
    fn join<T: Target>(&self, table: &LookupTable, a: &mut T) -> (Found, bool) {
        let row = match a.get(&self.key).as_ref().and_then(target::text) {
            None => return (Found::NoKey, false),
            Some(k) => table.get(&k),
        };
        let Some(row) = row else {
            return (Found::Miss, false);
        };
        let mut changed = false;
        for (col, attr) in &self.columns {
            if let Some(v) = row.get(col)
                && writable(a, attr, self.overwrite)
            {
                a.set(attr, NewValue::Lookup(v));
                changed = true;
            }
        }
        (Found::Hit, changed)
    }
}

/// Counts of one batch, added to the totals once.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub items: u64,
    pub enriched: u64,
    pub order_hits: u64,
    pub order_misses: u64,
    pub customer_hits: u64,
    pub customer_misses: u64,
    pub lookup_hits: u64,
    pub lookup_misses: u64,
    pub held: u64,
    pub hold_overflow: u64,
    pub released_arrival: u64,
    pub released_timeout: u64,
    pub released_shutdown: u64,
    pub parse_errors: u64,
}

impl Counts {
    fn join(&mut self, j: JoinOutcome) {
        match j.order {
            Found::Hit => self.order_hits += 1,
            Found::Miss => self.order_misses += 1,
            Found::NoKey => {}
        }
        match j.customer {
            Found::Hit => self.customer_hits += 1,
            Found::Miss => self.customer_misses += 1,
            Found::NoKey => {}
        }
    }
}

/// Totals of an engine since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnrichStats {
    /// Spans and log records seen.
    pub items: u64,
    /// Items that got at least one attribute added, changed or removed.
    pub enriched: u64,
    pub order_hits: u64,
    pub order_misses: u64,
    pub customer_hits: u64,
    pub customer_misses: u64,
    pub lookup_hits: u64,
    pub lookup_misses: u64,
    /// Spans held in the join window.
    pub held: u64,
    /// Spans that could not be held because `max_held_spans` were waiting.
    pub hold_overflow: u64,
    pub released_on_arrival: u64,
    pub released_by_timeout: u64,
    pub released_on_shutdown: u64,
    /// Values `parse_money` could not read.
    pub parse_errors: u64,
}

struct Stat {
    local: AtomicU64,
    metric: Counter,
}

impl Stat {
    fn new(c: Counter) -> Self {
        Stat {
            local: AtomicU64::new(0),
            metric: c,
        }
    }
    fn add(&self, n: u64) {
        if n > 0 {
            self.local.fetch_add(n, Ordering::Relaxed);
            self.metric.increment(n);
        }
    }
    fn get(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }
}

struct Stats {
    items: Stat,
    enriched: Stat,
    order_hits: Stat,
    order_misses: Stat,
    customer_hits: Stat,
    customer_misses: Stat,
    lookup_hits: Stat,
    lookup_misses: Stat,
    held: Stat,
    hold_overflow: Stat,
    released_arrival: Stat,
    released_timeout: Stat,
    released_shutdown: Stat,
    parse_errors: Stat,
    held_now: Gauge,
}

impl Stats {
    fn new(processor: &str, pipeline: &str) -> Stats {
        let l = |name: &'static str| {
            Stat::new(counter!(name, "processor" => processor.to_string(), "pipeline" => pipeline.to_string()))
        };
        let ls = |name: &'static str, source: &'static str| {
            Stat::new(
                counter!(name, "processor" => processor.to_string(), "pipeline" => pipeline.to_string(), "source" => source),
            )
        };
        let lr = |reason: &'static str| {
            Stat::new(
                counter!("bizpilot_processor_enrich_released_spans_total", "processor" => processor.to_string(), "pipeline" => pipeline.to_string(), "reason" => reason),
            )
        };
        Stats {
            items: l("bizpilot_processor_enrich_items_total"),
            enriched: l("bizpilot_processor_enrich_enriched_items_total"),
            order_hits: ls("bizpilot_processor_enrich_join_hits_total", "order"),
            order_misses: ls("bizpilot_processor_enrich_join_misses_total", "order"),
            customer_hits: ls("bizpilot_processor_enrich_join_hits_total", "customer"),
            customer_misses: ls("bizpilot_processor_enrich_join_misses_total", "customer"),
            lookup_hits: ls("bizpilot_processor_enrich_join_hits_total", "lookup"),
            lookup_misses: ls("bizpilot_processor_enrich_join_misses_total", "lookup"),
            held: l("bizpilot_processor_enrich_held_spans_total"),
            hold_overflow: l("bizpilot_processor_enrich_hold_overflow_spans_total"),
            released_arrival: lr("arrival"),
            released_timeout: lr("timeout"),
            released_shutdown: lr("shutdown"),
            parse_errors: l("bizpilot_processor_enrich_parse_errors_total"),
            held_now: gauge!("bizpilot_processor_enrich_held_spans", "processor" => processor.to_string(), "pipeline" => pipeline.to_string()),
        }
    }

    fn add(&self, c: &Counts) {
        self.items.add(c.items);
        self.enriched.add(c.enriched);
        self.order_hits.add(c.order_hits);
        self.order_misses.add(c.order_misses);
        self.customer_hits.add(c.customer_hits);
        self.customer_misses.add(c.customer_misses);
        self.lookup_hits.add(c.lookup_hits);
        self.lookup_misses.add(c.lookup_misses);
        self.held.add(c.held);
        self.hold_overflow.add(c.hold_overflow);
        self.released_arrival.add(c.released_arrival);
        self.released_timeout.add(c.released_timeout);
        self.released_shutdown.add(c.released_shutdown);
        self.parse_errors.add(c.parse_errors);
    }
}

/// Why held spans are released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    Arrival,
    Timeout,
    Shutdown,
}

/// Where spans go when their order is not yet known (the processor's join window).
pub(crate) struct HoldCtx<'a> {
    pub holder: &'a mut Holder,
    pub batch_acks: &'a [Ack],
    pub acks: Option<Arc<Vec<Ack>>>,
    pub now: tokio::time::Instant,
}

/// The compiled rules and joins of an `enrich` processor.
pub struct Engine {
    before: Vec<Rule>,
    after: Vec<Rule>,
    res_slots: usize,
    state: Option<StateJoin>,
    lookups: Vec<LookupJoin>,
    window: Option<std::time::Duration>,
    max_held: usize,
    /// Every attribute name the rules and joins read or write (slots of the view path).
    vocab: Vocab,
    stats: Stats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &(self.before.len() + self.after.len()))
            .field("state_join", &self.state.is_some())
            .field("lookups", &self.lookups.len())
            .field("window", &self.window)
            .finish()
    }
}

/// A view of a resource for rule conditions.
struct ResView<'a> {
    mask: &'a [bool],
}

impl Engine {
    /// Compiles `cfg`, resolving its extensions. `processor` and `pipeline` label the metrics.
    pub fn new(cfg: &EnrichConfig, extensions: &Extensions, processor: &str, pipeline: &str) -> Result<Engine, String> {
        let mut res_slots = 0;
        let mut vocab = Vocab::default();
        let mut before = Vec::new();
        let mut after = Vec::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            let rule = Rule::compile(r, &mut res_slots, &mut vocab).map_err(|e| format!("rules[{i}]: {e}"))?;
            if r.after_join {
                after.push(rule);
            } else {
                before.push(rule);
            }
        }
        let state = match &cfg.join.state {
            Some(id) => Some(StateJoin::compile(
                extensions
                    .get::<BusinessState>(id)
                    .map_err(|e| format!("join.state: {e}"))?,
                &cfg.join.order_key,
                &cfg.join.customer_key,
                &cfg.join.attributes,
                &mut vocab,
                cfg.join.link_traces,
            )),
            None => None,
        };
        let mut lookups = Vec::new();
        for (i, l) in cfg.lookups.iter().enumerate() {
            let id = l
                .extension
                .as_ref()
                .ok_or_else(|| format!("lookups[{i}].extension: required"))?;
            lookups.push(LookupJoin {
                lookup: extensions
                    .get::<Lookup>(id)
                    .map_err(|e| format!("lookups[{i}].extension: {e}"))?,
                key: vocab.key(&l.key),
                columns: l.attributes.iter().map(|(c, a)| (c.clone(), vocab.key(a))).collect(),
                overwrite: l.overwrite,
            });
        }
        let window = (state.is_some() && !cfg.join.window.is_zero()).then(|| cfg.join.window.get());
        Ok(Engine {
            before,
            after,
            res_slots,
            state,
            lookups,
            window,
            max_held: cfg.join.max_held_spans,
            vocab,
            stats: Stats::new(processor, pipeline),
        })
    }

    /// Parses the processor's YAML config (as under `processors.enrich`) and compiles it.
    /// For benchmarks and tests: `apply_traces` then runs it synchronously.
    pub fn from_yaml(yaml: &str, extensions: &Extensions) -> Result<Engine, String> {
        let raw: serde_yaml::Value = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        let cfg: EnrichConfig = parse_config(&raw).map_err(|errs| {
            errs.iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Engine::new(&cfg, extensions, "enrich", "bench")
    }

    /// Totals since the engine was built.
    pub fn stats(&self) -> EnrichStats {
        let s = &self.stats;
        EnrichStats {
            items: s.items.get(),
            enriched: s.enriched.get(),
            order_hits: s.order_hits.get(),
            order_misses: s.order_misses.get(),
            customer_hits: s.customer_hits.get(),
            customer_misses: s.customer_misses.get(),
            lookup_hits: s.lookup_hits.get(),
            lookup_misses: s.lookup_misses.get(),
            held: s.held.get(),
            hold_overflow: s.hold_overflow.get(),
            released_on_arrival: s.released_arrival.get(),
            released_by_timeout: s.released_timeout.get(),
            released_on_shutdown: s.released_shutdown.get(),
            parse_errors: s.parse_errors.get(),
        }
    }

    /// The join window, when spans may be held.
    pub fn window(&self) -> Option<std::time::Duration> {
        self.window
    }

    pub(crate) fn max_held(&self) -> usize {
        self.max_held
    }

    /// The state joined with, if any.
    pub fn state(&self) -> Option<&Arc<BusinessState>> {
        self.state.as_ref().map(|s| &s.state)
    }

    pub(crate) fn set_held_gauge(&self, n: usize) {
        self.stats.held_now.set(n as f64);
    }

    fn tables(&self) -> Vec<Arc<LookupTable>> {
        self.lookups.iter().map(|l| l.lookup.table()).collect()
    }

    /// Which resource-conditioned rules match the resource whose attributes `get` reads.
    fn resource_mask<'r>(&self, get: impl Fn(&str) -> Option<ValueRef<'r>>, mask: &mut Vec<bool>) {
        mask.clear();
        if self.res_slots == 0 {
            return;
        }
        mask.resize(self.res_slots, false);
        for r in self.before.iter().chain(self.after.iter()) {
            if let (Some(slot), Some(c)) = (r.res_slot, &r.cond)
                && let Some(m) = mask.get_mut(slot)
            {
                *m = c.resource_matches(&get);
            }
        }
    }

    fn run_rules<T: Target>(rules: &[Rule], rv: &ResView<'_>, item: &mut T, c: &mut Counts) -> bool {
        let mut changed = false;
        for r in rules {
            if r.applies(rv.mask, item) {
                changed |= r.apply(item, c);
            }
        }
        changed
    }

    /// Rules before the join, then the state join.
    fn first_half<T: Target>(&self, rv: &ResView<'_>, item: &mut T, c: &mut Counts) -> (bool, JoinOutcome) {
        let changed = Self::run_rules(&self.before, rv, item, c);
        let j = match &self.state {
            Some(s) => s.join(item),
            None => JoinOutcome::default(),
        };
        (changed | j.changed, j)
    }

    /// Lookups, then the rules after the join.
    fn second_half<T: Target>(
        &self,
        rv: &ResView<'_>,
        tables: &[Arc<LookupTable>],
        item: &mut T,
        c: &mut Counts,
    ) -> bool {
        let mut changed = false;
        for (l, t) in self.lookups.iter().zip(tables) {
            let (found, ch) = l.join(t, item);
            changed |= ch;
            match found {
                Found::Hit => c.lookup_hits += 1,
                Found::Miss => c.lookup_misses += 1,
                Found::NoKey => {}
            }
        }
        changed | Self::run_rules(&self.after, rv, item, c)
    }

    fn whole<T: Target>(&self, rv: &ResView<'_>, tables: &[Arc<LookupTable>], item: &mut T, c: &mut Counts) {
        c.items += 1;
        let (mut changed, j) = self.first_half(rv, item, c);
        changed |= self.second_half(rv, tables, item, c);
        c.join(j);
        c.enriched += u64::from(changed);
    }

    /// Enriches every span of a decoded `req` in place, without holding any (a span whose order
    /// is unknown counts as a miss). Returns the number of spans changed.
    pub fn apply_traces(&self, req: &mut ExportTraceServiceRequest) -> u64 {
        self.process_traces(req, None).enriched
    }

    /// Enriches every span of `t` on its encoding, through views, without decoding it and without
    /// holding any span (the view path of the processor; data held only decoded is encoded once
    /// first). Same semantics as [`Engine::apply_traces`] up to the order of attributes (an
    /// attribute of the span's own that a rule replaces moves to the end). Returns the number of
    /// spans changed.
    pub fn apply_encoded(&self, t: &mut Traces) -> u64 {
        self.process_encoded(t, None).enriched
    }

    /// Enriches every log record of `req` in place. Returns the number of records changed.
    pub fn apply_logs(&self, req: &mut ExportLogsServiceRequest) -> u64 {
        let tables = self.tables();
        let mut c = Counts::default();
        let mut mask = Vec::new();
        for rl in &mut req.resource_logs {
            let res: &[KeyValue] = rl.resource.as_ref().map(|r| &r.attributes[..]).unwrap_or(&[]);
            self.resource_mask(|k| target::decoded_get(res, k), &mut mask);
            let rv = ResView { mask: &mask };
            for sl in &mut rl.scope_logs {
                for rec in &mut sl.log_records {
                    self.whole(&rv, &tables, &mut Decoded(rec), &mut c);
                }
            }
        }
        self.stats.add(&c);
        c.enriched
    }

    /// Enriches the spans of `t` on its encoding ([`Traces::edit_spans`]): each span is read through a
    /// view, the rules and joins run on an [`target::Overlay`] of its attributes, and only spans that
    /// changed are re-written, in one pass at the end. Nothing is allocated per span beyond what the
    /// rules produce (e.g. a parsed amount's text).
    ///
    /// With `hold` (the processor's join window), a span whose order key is not (yet) in the state waits
    /// while the holder has room: it is written as the rules before the join left it into the holder,
    /// with its resource's and scope's other fields (shared by the spans held from them), and taken out
    /// of the request in the same pass. Nothing is decoded.
    pub(crate) fn process_encoded(&self, t: &mut Traces, mut hold: Option<HoldCtx<'_>>) -> Counts {
        let tables = self.tables();
        let mut c = Counts::default();
        let mut mask = Vec::new();
        let mut last_res: Option<(usize, usize)> = None;
        let mut scratch = Scratch::new(&self.vocab);
        // The headers of the resource and the scope of the last span held, by where they are in the request.
        let mut res_header: Option<(usize, Arc<ResHeader>)> = None;
        let mut scope_header: Option<(usize, Arc<ScopeHeader>)> = None;
        t.edit_spans(|at, edit| {
            let res = &at.resource;
            let id = (res.as_bytes().as_ptr() as usize, res.as_bytes().len());
            if last_res != Some(id) {
                let attrs = res.attributes();
                self.resource_mask(|k| attrs.get_raw(k).and_then(ValueRef::from_encoded), &mut mask);
                last_res = Some(id);
            }
            let rv = ResView { mask: &mask };
            let mut item = scratch.overlay(&self.vocab, at.span);
            let (mut changed, j) = self.first_half(&rv, &mut item, &mut c);
            if j.order == Found::Miss
                && let Some(h) = hold.as_mut()
            {
                if h.holder.has_room(1) {
                    let key = self
                        .state
                        .as_ref()
                        .and_then(|s| {
                            item.get(&s.order_key)
                                .as_ref()
                                .and_then(target::text)
                                .map(|k| k.into_owned())
                        })
                        .unwrap_or_default();
                    item.emit(edit);
                    let span = if edit.is_empty() {
                        at.span.to_vec()
                    } else {
                        edit.apply_to(at.span)
                    };
                    edit.drop_span();
                    let rs_at = at.resource_spans.as_ptr() as usize;
                    let rh = match &res_header {
                        Some((p, r)) if *p == rs_at => r.clone(),
                        _ => {
                            let (header, mid) = view::container_header(at.resource_spans, 2);
                            let r = Arc::new(ResHeader {
                                header,
                                mid,
                                mask: mask.clone(),
                            });
                            res_header = Some((rs_at, r.clone()));
                            r
                        }
                    };
                    let ss_at = at.scope_spans.as_ptr() as usize;
                    let sh = match &scope_header {
                        Some((p, s)) if *p == ss_at => s.clone(),
                        _ => {
                            let (header, mid) = view::container_header(at.scope_spans, 2);
                            let s = Arc::new(ScopeHeader { header, mid });
                            scope_header = Some((ss_at, s.clone()));
                            s
                        }
                    };
                    let acks = h.acks.get_or_insert_with(|| Arc::new(h.batch_acks.to_vec())).clone();
                    h.holder.push(
                        &key,
                        HeldSpan {
                            res: rh,
                            scope: sh,
                            span,
                            changed,
                            acks,
                        },
                        h.now,
                    );
                    c.held += 1;
                    return;
                }
                c.hold_overflow += 1;
            }
            c.items += 1;
            changed |= self.second_half(&rv, &tables, &mut item, &mut c);
            c.join(j);
            c.enriched += u64::from(changed);
            item.emit(edit);
        });
        self.stats.add(&c);
        c
    }

    /// Enriches spans; with a hold context, spans whose order is not yet in the state are
    /// moved out of `req` into the holder (while it has room).
    pub(crate) fn process_traces(&self, req: &mut ExportTraceServiceRequest, mut hold: Option<HoldCtx<'_>>) -> Counts {
        let tables = self.tables();
        let mut c = Counts::default();
        let mut mask = Vec::new();
        for rs in &mut req.resource_spans {
            let ResourceSpans {
                resource,
                scope_spans,
                schema_url,
            } = rs;
            let res: &[KeyValue] = resource.as_ref().map(|r| &r.attributes[..]).unwrap_or(&[]);
            self.resource_mask(|k| target::decoded_get(res, k), &mut mask);
            let rv = ResView { mask: &mask };
            let mut res_header: Option<Arc<ResHeader>> = None;
            for ss in scope_spans.iter_mut() {
                // (index, changed before the hold) of spans to hold; allocates only when used.
                let mut to_hold: Vec<(usize, bool)> = Vec::new();
                for (i, span) in ss.spans.iter_mut().enumerate() {
                    let span = &mut Decoded(span);
                    let (changed, j) = self.first_half(&rv, span, &mut c);
                    if j.order == Found::Miss
                        && let Some(h) = hold.as_ref()
                    {
                        if h.holder.has_room(to_hold.len() + 1) {
                            to_hold.push((i, changed));
                            continue;
                        }
                        c.hold_overflow += 1;
                    }
                    c.items += 1;
                    let changed = changed | self.second_half(&rv, &tables, span, &mut c);
                    c.join(j);
                    c.enriched += u64::from(changed);
                }
                if to_hold.is_empty() {
                    continue;
                }
                let Some(h) = hold.as_mut() else { continue };
                let rh = res_header
                    .get_or_insert_with(|| {
                        let rs = ResourceSpans {
                            resource: resource.clone(),
                            schema_url: schema_url.clone(),
                            scope_spans: Vec::new(),
                        };
                        let (header, mid) = view::container_header(&rs.encode_to_vec(), 2);
                        Arc::new(ResHeader {
                            header,
                            mid,
                            mask: mask.clone(),
                        })
                    })
                    .clone();
                let scope = ScopeSpans {
                    scope: ss.scope.clone(),
                    schema_url: ss.schema_url.clone(),
                    spans: Vec::new(),
                };
                let (header, mid) = view::container_header(&scope.encode_to_vec(), 2);
                let sh = Arc::new(ScopeHeader { header, mid });
                let acks = h.acks.get_or_insert_with(|| Arc::new(h.batch_acks.to_vec())).clone();
                let spans = std::mem::take(&mut ss.spans);
                ss.spans.reserve(spans.len().saturating_sub(to_hold.len()));
                let mut next = to_hold.iter().peekable();
                for (i, span) in spans.into_iter().enumerate() {
                    match next.peek() {
                        Some((hi, changed)) if *hi == i => {
                            let changed = *changed;
                            next.next();
                            let key = self
                                .state
                                .as_ref()
                                .and_then(|s| attrs::get_string(&span.attributes, &s.order_key.name))
                                .map(|k| k.into_owned())
                                .unwrap_or_default();
                            h.holder.push(
                                &key,
                                HeldSpan {
                                    res: rh.clone(),
                                    scope: sh.clone(),
                                    span: span.encode_to_vec(),
                                    changed,
                                    acks: acks.clone(),
                                },
                                h.now,
                            );
                            c.held += 1;
                        }
                        _ => ss.spans.push(span),
                    }
                }
            }
        }
        self.stats.add(&c);
        c
    }

    /// Finishes held spans (the state join again, lookups, rules after the join) on their encoding and
    /// gathers them into one request (written once, grouped by the resources and scopes they came with)
    /// carrying their sources' acknowledgements.
    pub(crate) fn release(&self, spans: Vec<HeldSpan>, why: Release) -> Option<Batch> {
        if spans.is_empty() {
            return None;
        }
        let n = spans.len();
        let tables = self.tables();
        let mut c = Counts::default();
        let mut scratch = Scratch::new(&self.vocab);
        let mut edit = SpanEdit::default();
        let mut groups: Vec<HeldGroup> = Vec::new();
        let mut acks: Vec<Arc<Vec<Ack>>> = Vec::new();
        for h in spans {
            let rv = ResView { mask: &h.res.mask };
            c.items += 1;
            edit.clear();
            let mut item = scratch.overlay(&self.vocab, &h.span);
            let j = match &self.state {
                Some(s) => s.join(&mut item),
                None => JoinOutcome::default(),
            };
            let changed = h.changed | j.changed | self.second_half(&rv, &tables, &mut item, &mut c);
            item.emit(&mut edit);
            c.join(j);
            c.enriched += u64::from(changed);
            match why {
                Release::Arrival => c.released_arrival += 1,
                Release::Timeout => c.released_timeout += 1,
                Release::Shutdown => c.released_shutdown += 1,
            }
            if !acks.iter().any(|a| Arc::ptr_eq(a, &h.acks)) {
                acks.push(h.acks.clone());
            }
            let span = if edit.is_empty() {
                h.span
            } else {
                edit.apply_to(&h.span)
            };
            let gi = match groups.iter().position(|(r, _)| Arc::ptr_eq(r, &h.res)) {
                Some(i) => i,
                None => {
                    groups.push((h.res.clone(), Vec::new()));
                    groups.len() - 1
                }
            };
            if let Some((_, scopes)) = groups.get_mut(gi) {
                match scopes.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &h.scope)) {
                    Some((_, v)) => v.push(span),
                    None => scopes.push((h.scope.clone(), vec![span])),
                }
            }
        }
        self.stats.add(&c);
        // A new encoding written (the released spans' request): counted as a copy.
        count_work(Signal::Traces, Work::Copy);
        Some(Batch {
            payload: Payload::Traces(Traces::from_written(write_held(&groups), n)),
            acks: acks.iter().flat_map(|a| a.iter().cloned()).collect(),
        })
    }
}

/// Held spans of one resource, by scope.
type HeldGroup = (Arc<ResHeader>, Vec<(Arc<ScopeHeader>, Vec<Vec<u8>>)>);

/// The traces request of released spans: per resource its header's fields, its scopes (each its header's
/// fields and its spans), in field order, written once into a buffer of the final size.
fn write_held(groups: &[HeldGroup]) -> Vec<u8> {
    fn halves(h: &[u8], mid: usize) -> (&[u8], &[u8]) {
        (h.get(..mid).unwrap_or(h), h.get(mid..).unwrap_or(&[]))
    }
    let scope_len = |s: &ScopeHeader, spans: &[Vec<u8>]| {
        s.header.len() + spans.iter().map(|b| pb::len_field_size(2, b.len())).sum::<usize>()
    };
    let res_len = |r: &ResHeader, scopes: &[(Arc<ScopeHeader>, Vec<Vec<u8>>)]| {
        r.header.len()
            + scopes
                .iter()
                .map(|(s, spans)| pb::len_field_size(2, scope_len(s, spans)))
                .sum::<usize>()
    };
    let total: usize = groups
        .iter()
        .map(|(r, scopes)| pb::len_field_size(1, res_len(r, scopes)))
        .sum();
    let mut out = Vec::with_capacity(total);
    for (r, scopes) in groups {
        pb::put_key(&mut out, 1, 2);
        pb::put_varint(&mut out, res_len(r, scopes) as u64);
        let (r_before, r_after) = halves(&r.header, r.mid);
        out.extend_from_slice(r_before);
        for (s, spans) in scopes {
            pb::put_key(&mut out, 2, 2);
            pb::put_varint(&mut out, scope_len(s, spans) as u64);
            let (s_before, s_after) = halves(&s.header, s.mid);
            out.extend_from_slice(s_before);
            for span in spans {
                pb::put_len_field(&mut out, 2, span);
            }
            out.extend_from_slice(s_after);
        }
        out.extend_from_slice(r_after);
    }
    out
}
