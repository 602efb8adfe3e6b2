//! Business events as Kafka messages and as OTLP log records.
//!
//! A business event read from Kafka (JSON, bizpilot's protobuf, or a user protobuf read by
//! reflection) becomes one OTLP log record that `bizpilot-business` reads as an event:
//!
//! | log record | from |
//! |---|---|
//! | `event_name`, attribute `event.name` | the event type |
//! | `time_unix_nano` | the event time (else the Kafka message timestamp); `observed_time_unix_nano` = receive time |
//! | `order.id`, `customer.id`, `customer.tier` | strings |
//! | `order.amount`, `order.shipping.amount` | exact decimal strings (`"123.45"`) |
//! | `order.currency` | ISO 4217 code |
//! | `order.items` | array of maps `{sku, quantity (int), unit_price (decimal string)}` |
//! | `order.items.count` | number of line items |
//! | `trace_id`, `span_id` | the message's `traceparent` header |
//! | other attributes | every other top-level field of the event, under its own name |
//!
//! The JSON field names are the [`BusinessMapping`] (`business` in the receiver's and the
//! exporter's config); the defaults read the JSON `bizpilot-shopgen` writes:
//!
//! ```json
//! {"type":"order.placed","time":"2025-01-01T00:00:01.234Z","order_id":"o-1","customer_id":"cust-000042",
//!  "amount":"123.45","currency":"USD","shipping":"5.99",
//!  "items":[{"sku":"SKU-0001","quantity":2,"unit_price":"19.99"}]}
//! ```
//!
//! The exporter's `business_json` encoding writes the inverse: one JSON object per event
//! record, with the same field names, so a record survives Kafka → bizpilot → Kafka unchanged.

pub use bizpilot_core::time::{parse_rfc3339, rfc3339};
use bizpilot_core::{Currency, Money};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use bizpilot_core::FieldError;

/// Log record attribute names, as `bizpilot-business` reads them by default.
pub mod attr {
    pub const EVENT_NAME: &str = "event.name";
    pub const ORDER_ID: &str = "order.id";
    pub const CUSTOMER_ID: &str = "customer.id";
    pub const CUSTOMER_TIER: &str = "customer.tier";
    pub const AMOUNT: &str = "order.amount";
    pub const CURRENCY: &str = "order.currency";
    pub const SHIPPING: &str = "order.shipping.amount";
    pub const ITEMS: &str = "order.items";
    pub const ITEMS_COUNT: &str = "order.items.count";
    /// Keys inside one line item.
    pub const ITEM_SKU: &str = "sku";
    pub const ITEM_QUANTITY: &str = "quantity";
    pub const ITEM_UNIT_PRICE: &str = "unit_price";
}

/// Where the event's fields are in a JSON (or reflected protobuf) message. An empty name
/// means the field is not read. A name is looked up as a key first, then as a dotted path
/// into nested objects (`order.id` finds `{"order":{"id":…}}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusinessMapping {
    /// The event type (`order.placed`).
    pub event_type: String,
    /// Type used when a message has none; empty = such a message is bad.
    pub default_event_type: String,
    /// Event time: RFC 3339 string, or a number of Unix seconds, milliseconds, microseconds or
    /// nanoseconds (told apart by magnitude).
    pub time: String,
    pub order_id: String,
    pub customer_id: String,
    pub customer_tier: String,
    /// Decimal string (`"123.45"`, `"USD 123.45"`), number, or `{units, nanos, currency_code}`.
    pub amount: String,
    pub currency: String,
    /// Currency when neither the amount nor `currency` gives one; empty = none.
    pub default_currency: String,
    pub shipping: String,
    /// Array of line items.
    pub items: String,
    pub item_sku: String,
    pub item_quantity: String,
    pub item_unit_price: String,
    /// Keep the message's other top-level fields as attributes under their own names.
    pub keep_other_fields: bool,
}

impl Default for BusinessMapping {
    fn default() -> Self {
        BusinessMapping {
            event_type: "type".into(),
            default_event_type: String::new(),
            time: "time".into(),
            order_id: "order_id".into(),
            customer_id: "customer_id".into(),
            customer_tier: "customer_tier".into(),
            amount: "amount".into(),
            currency: "currency".into(),
            default_currency: String::new(),
            shipping: "shipping".into(),
            items: "items".into(),
            item_sku: "sku".into(),
            item_quantity: "quantity".into(),
            item_unit_price: "unit_price".into(),
            keep_other_fields: true,
        }
    }
}

impl BusinessMapping {
    /// Problems, with paths under `prefix`.
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut e = Vec::new();
        if self.event_type.trim().is_empty() && self.default_event_type.trim().is_empty() {
            e.push(FieldError::new(
                format!("{prefix}.event_type"),
                "must name the event type field (or set default_event_type)",
            ));
        }
        if !self.items.is_empty() && self.item_sku.trim().is_empty() {
            e.push(FieldError::new(
                format!("{prefix}.item_sku"),
                "must not be empty when items are read",
            ));
        }
        if !self.default_currency.is_empty()
            && let Err(err) = Currency::new(&self.default_currency)
        {
            e.push(FieldError::new(format!("{prefix}.default_currency"), err.to_string()));
        }
        e
    }

    fn named(&self) -> [&str; 9] {
        [
            &self.event_type,
            &self.time,
            &self.order_id,
            &self.customer_id,
            &self.customer_tier,
            &self.amount,
            &self.currency,
            &self.shipping,
            &self.items,
        ]
    }
}

/// Why a message is not a readable business event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("not a JSON object")]
    NotAnObject,
    #[error("missing {0}")]
    Missing(String),
    #[error("field {field}: {message}")]
    Field { field: String, message: String },
}

fn field_err(field: &str, message: impl Into<String>) -> EventError {
    EventError::Field {
        field: field.to_string(),
        message: message.into(),
    }
}

/// One line item, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub sku: String,
    pub quantity: i64,
    /// Exact decimal string.
    pub unit_price: Option<String>,
}

/// A business event's fields, normalised (exact decimal strings for money).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFields {
    pub event_type: String,
    pub time_unix_nano: Option<u64>,
    pub order_id: Option<String>,
    pub customer_id: Option<String>,
    pub customer_tier: Option<String>,
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub shipping: Option<String>,
    pub items: Option<Vec<Item>>,
    /// Other attributes, in message order.
    pub extra: Vec<KeyValue>,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
}

/// A string attribute.
pub fn kv_str(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}

/// An attribute.
pub fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

impl EventFields {
    /// The log record, observed at `observed_unix_nano`.
    pub fn into_log_record(self, observed_unix_nano: u64) -> LogRecord {
        let mut attributes = Vec::with_capacity(10 + self.extra.len());
        attributes.push(kv_str(attr::EVENT_NAME, self.event_type.clone()));
        let opt = |attrs: &mut Vec<KeyValue>, k: &str, v: Option<String>| {
            if let Some(v) = v {
                attrs.push(kv_str(k, v));
            }
        };
        opt(&mut attributes, attr::ORDER_ID, self.order_id);
        opt(&mut attributes, attr::CUSTOMER_ID, self.customer_id);
        opt(&mut attributes, attr::CUSTOMER_TIER, self.customer_tier);
        opt(&mut attributes, attr::AMOUNT, self.amount);
        opt(&mut attributes, attr::CURRENCY, self.currency);
        opt(&mut attributes, attr::SHIPPING, self.shipping);
        if let Some(items) = self.items {
            let count = i64::try_from(items.len()).unwrap_or(i64::MAX);
            let values = items
                .into_iter()
                .map(|it| {
                    let mut m = vec![
                        kv_str(attr::ITEM_SKU, it.sku),
                        kv(attr::ITEM_QUANTITY, Value::IntValue(it.quantity)),
                    ];
                    if let Some(p) = it.unit_price {
                        m.push(kv_str(attr::ITEM_UNIT_PRICE, p));
                    }
                    AnyValue {
                        value: Some(Value::KvlistValue(KeyValueList { values: m })),
                    }
                })
                .collect();
            attributes.push(kv(attr::ITEMS, Value::ArrayValue(ArrayValue { values })));
            attributes.push(kv(attr::ITEMS_COUNT, Value::IntValue(count)));
        }
        attributes.extend(self.extra);
        LogRecord {
            time_unix_nano: self.time_unix_nano.unwrap_or(0),
            observed_time_unix_nano: observed_unix_nano,
            severity_number: SeverityNumber::Info as i32,
            severity_text: "INFO".into(),
            event_name: self.event_type,
            attributes,
            trace_id: self.trace_id,
            span_id: self.span_id,
            ..Default::default()
        }
    }
}

/// Looks `path` up in `obj`: as a key, else as a dotted path. Returns the value and the
/// top-level key it was found under.
fn lookup<'a>(obj: &'a Map<String, Json>, path: &str) -> Option<(&'a Json, &'a str)> {
    if path.is_empty() {
        return None;
    }
    if let Some((k, v)) = obj.get_key_value(path) {
        return Some((v, k.as_str()));
    }
    let mut parts = path.split('.');
    let first = parts.next()?;
    let (top_key, mut cur) = obj.get_key_value(first)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some((cur, top_key.as_str()))
}

/// A scalar as text (strings as they are, numbers and booleans as JSON writes them).
fn scalar_text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.trim().to_string()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn as_i64(v: &Json) -> Option<i64> {
    match v {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn placeholder() -> Currency {
    Currency::new("XXX").unwrap_or(Currency::USD)
}

/// Normalises a money value: `(exact decimal string, currency it names)`.
pub fn money_value(v: &Json, field: &str) -> Result<(String, Option<String>), EventError> {
    match v {
        Json::String(s) => {
            let t = s.trim();
            if t.contains(char::is_whitespace) {
                let m = Money::parse(t, None).map_err(|e| field_err(field, e.to_string()))?;
                let amount = t
                    .split_whitespace()
                    .find(|p| !p.chars().all(|c| c.is_ascii_alphabetic()))
                    .unwrap_or_default()
                    .to_string();
                Ok((amount, Some(m.currency().as_str().to_string())))
            } else {
                Money::parse_amount(t, placeholder()).map_err(|e| field_err(field, e.to_string()))?;
                Ok((t.to_string(), None))
            }
        }
        Json::Number(n) => {
            let t = n.to_string();
            Money::parse_amount(&t, placeholder()).map_err(|e| field_err(field, e.to_string()))?;
            Ok((t, None))
        }
        Json::Object(o) => {
            let units = o.get("units").map(as_i64).unwrap_or(Some(0));
            let nanos = o.get("nanos").map(as_i64).unwrap_or(Some(0));
            let (Some(units), Some(nanos)) = (units, nanos) else {
                return Err(field_err(field, "units and nanos must be integers"));
            };
            let nanos = i32::try_from(nanos).map_err(|_| field_err(field, "nanos out of range"))?;
            let code = o
                .get("currency_code")
                .or_else(|| o.get("currencyCode"))
                .and_then(Json::as_str)
                .map(str::trim)
                .filter(|c| !c.is_empty());
            let currency = match code {
                Some(c) => Some(Currency::new(c).map_err(|e| field_err(field, e.to_string()))?),
                None => None,
            };
            let m = Money::from_units_nanos(units, nanos, currency.unwrap_or_else(placeholder))
                .map_err(|e| field_err(field, e.to_string()))?;
            Ok((decimal(m.nanos()), currency.map(|c| c.as_str().to_string())))
        }
        _ => Err(field_err(field, format!("not an amount: {v}"))),
    }
}

/// An exact decimal string of an amount in nano-units, without trailing zeros.
pub fn decimal(nanos: i128) -> String {
    let neg = nanos < 0;
    let abs = nanos.unsigned_abs();
    let units = abs / 1_000_000_000;
    let frac = abs % 1_000_000_000;
    let sign = if neg { "-" } else { "" };
    if frac == 0 {
        return format!("{sign}{units}");
    }
    let f = format!("{frac:09}");
    format!("{sign}{units}.{}", f.trim_end_matches('0'))
}

/// A time value: RFC 3339, or a Unix number whose magnitude tells its unit.
pub fn time_value(v: &Json, field: &str) -> Result<u64, EventError> {
    match v {
        Json::String(s) => {
            let t = s.trim();
            if let Some(ns) = parse_rfc3339(t) {
                return Ok(ns);
            }
            t.parse::<u64>()
                .map(unix_to_nanos)
                .map_err(|_| field_err(field, format!("not an RFC 3339 time or Unix number: {t:?}")))
        }
        Json::Number(n) => match n.as_u64() {
            Some(x) => Ok(unix_to_nanos(x)),
            None => match n.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 => Ok((f * 1e9) as u64),
                _ => Err(field_err(field, format!("not a Unix time: {n}"))),
            },
        },
        _ => Err(field_err(field, format!("not a time: {v}"))),
    }
}

/// Seconds, milliseconds, microseconds or nanoseconds since the epoch, told apart by magnitude.
pub fn unix_to_nanos(x: u64) -> u64 {
    if x < 100_000_000_000 {
        x.saturating_mul(1_000_000_000)
    } else if x < 100_000_000_000_000 {
        x.saturating_mul(1_000_000)
    } else if x < 100_000_000_000_000_000 {
        x.saturating_mul(1_000)
    } else {
        x
    }
}

/// A JSON value as an OTLP attribute value (`null` gives `None`).
pub fn json_to_any(v: &Json) -> Option<Value> {
    Some(match v {
        Json::Null => return None,
        Json::Bool(b) => Value::BoolValue(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::IntValue(i),
            None => Value::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::StringValue(s.clone()),
        Json::Array(a) => Value::ArrayValue(ArrayValue {
            values: a.iter().map(|x| AnyValue { value: json_to_any(x) }).collect(),
        }),
        Json::Object(o) => Value::KvlistValue(KeyValueList {
            values: o.iter().filter_map(|(k, x)| json_to_any(x).map(|v| kv(k, v))).collect(),
        }),
    })
}

/// An OTLP attribute value as JSON (bytes as lower-case hex).
pub fn any_to_json(v: &AnyValue) -> Json {
    match &v.value {
        None => Json::Null,
        Some(Value::StringValue(s)) => Json::String(s.clone()),
        Some(Value::BoolValue(b)) => Json::Bool(*b),
        Some(Value::IntValue(i)) => Json::from(*i),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(*d).map_or(Json::Null, Json::Number),
        Some(Value::BytesValue(b)) => Json::String(crate::traceparent::hex(b)),
        Some(Value::ArrayValue(a)) => Json::Array(a.values.iter().map(any_to_json).collect()),
        Some(Value::KvlistValue(l)) => Json::Object(
            l.values
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(Json::Null, any_to_json)))
                .collect(),
        ),
        #[allow(unreachable_patterns)]
        Some(_) => Json::Null,
    }
}

impl BusinessMapping {
    /// Reads an event from a parsed JSON message. `fallback_time` (the Kafka message
    /// timestamp) is used when the event has no time.
    pub fn read(&self, msg: &Json, fallback_time: Option<u64>) -> Result<EventFields, EventError> {
        let obj = msg.as_object().ok_or(EventError::NotAnObject)?;
        let mut used: Vec<&str> = Vec::new();
        let mut get = |path: &str| -> Option<&Json> {
            let (v, top) = lookup(obj, path)?;
            used.push(top);
            (!v.is_null()).then_some(v)
        };
        let text = |v: Option<&Json>, field: &str| -> Result<Option<String>, EventError> {
            match v {
                None => Ok(None),
                Some(v) => scalar_text(v)
                    .map(Some)
                    .ok_or_else(|| field_err(field, format!("not a string or number: {v}"))),
            }
        };
        let mut ev = EventFields {
            event_type: match text(get(&self.event_type), &self.event_type)? {
                Some(t) if !t.is_empty() => t,
                _ if !self.default_event_type.is_empty() => self.default_event_type.clone(),
                _ => return Err(EventError::Missing(format!("event type ({})", self.event_type))),
            },
            ..Default::default()
        };
        ev.time_unix_nano = match get(&self.time) {
            Some(v) => Some(time_value(v, &self.time)?),
            None => fallback_time,
        };
        ev.order_id = text(get(&self.order_id), &self.order_id)?.filter(|s| !s.is_empty());
        ev.customer_id = text(get(&self.customer_id), &self.customer_id)?.filter(|s| !s.is_empty());
        ev.customer_tier = text(get(&self.customer_tier), &self.customer_tier)?.filter(|s| !s.is_empty());
        let mut currency = match get(&self.currency) {
            Some(Json::String(c)) if !c.trim().is_empty() => {
                Some(Currency::new(c).map_err(|e| field_err(&self.currency, e.to_string()))?)
            }
            Some(Json::String(_)) | None => None,
            Some(other) => return Err(field_err(&self.currency, format!("not a currency code: {other}"))),
        };
        let mut money_currency = |found: Option<String>| {
            if currency.is_none() {
                currency = found.and_then(|c| Currency::new(&c).ok());
            }
        };
        if let Some(v) = get(&self.amount) {
            let (a, c) = money_value(v, &self.amount)?;
            ev.amount = Some(a);
            money_currency(c);
        }
        if let Some(v) = get(&self.shipping) {
            let (a, c) = money_value(v, &self.shipping)?;
            ev.shipping = Some(a);
            money_currency(c);
        }
        if let Some(v) = get(&self.items) {
            let arr = v
                .as_array()
                .ok_or_else(|| field_err(&self.items, format!("not an array: {v}")))?;
            let mut items = Vec::with_capacity(arr.len());
            for (i, it) in arr.iter().enumerate() {
                let path = format!("{}[{i}]", self.items);
                let m = it
                    .as_object()
                    .ok_or_else(|| field_err(&path, "a line item must be an object"))?;
                let sku = lookup(m, &self.item_sku)
                    .and_then(|(v, _)| scalar_text(v))
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| field_err(&path, format!("missing {}", self.item_sku)))?;
                let quantity = match lookup(m, &self.item_quantity).map(|(v, _)| v) {
                    None | Some(Json::Null) => 1,
                    Some(q) => as_i64(q)
                        .ok_or_else(|| field_err(&path, format!("{} is not an integer", self.item_quantity)))?,
                };
                let unit_price = match lookup(m, &self.item_unit_price).map(|(v, _)| v) {
                    None | Some(Json::Null) => None,
                    Some(p) => {
                        let (a, c) = money_value(p, &format!("{path}.{}", self.item_unit_price))?;
                        money_currency(c);
                        Some(a)
                    }
                };
                items.push(Item {
                    sku,
                    quantity,
                    unit_price,
                });
            }
            ev.items = Some(items);
        }
        if currency.is_none() && !self.default_currency.is_empty() {
            currency = Currency::new(&self.default_currency).ok();
        }
        ev.currency = currency.map(|c| c.as_str().to_string());
        if self.keep_other_fields {
            for (k, v) in obj {
                if used.contains(&k.as_str()) || self.named().contains(&k.as_str()) {
                    continue;
                }
                if let Some(val) = json_to_any(v) {
                    ev.extra.push(kv(k, val));
                }
            }
        }
        Ok(ev)
    }

    /// The JSON of an event record (the inverse of [`BusinessMapping::read`]), or `None` when
    /// the record names no event.
    pub fn write(&self, rec: &LogRecord) -> Option<Map<String, Json>> {
        let name = if rec.event_name.is_empty() {
            rec.attributes
                .iter()
                .find(|a| a.key == attr::EVENT_NAME)
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) if !s.is_empty() => Some(s.clone()),
                    _ => None,
                })?
        } else {
            rec.event_name.clone()
        };
        let mut out = Map::new();
        let put = |out: &mut Map<String, Json>, key: &str, v: Json| {
            if !key.is_empty() {
                out.insert(key.to_string(), v);
            }
        };
        put(&mut out, &self.event_type, Json::String(name));
        let t = if rec.time_unix_nano != 0 {
            rec.time_unix_nano
        } else {
            rec.observed_time_unix_nano
        };
        if t != 0 {
            put(&mut out, &self.time, Json::String(rfc3339(t)));
        }
        let has_items = rec.attributes.iter().any(|a| a.key == attr::ITEMS);
        for a in &rec.attributes {
            let Some(v) = a.value.as_ref() else { continue };
            let target = match a.key.as_str() {
                attr::EVENT_NAME => continue,
                attr::ITEMS_COUNT if has_items => continue,
                attr::ORDER_ID => self.order_id.as_str(),
                attr::CUSTOMER_ID => self.customer_id.as_str(),
                attr::CUSTOMER_TIER => self.customer_tier.as_str(),
                attr::AMOUNT => self.amount.as_str(),
                attr::CURRENCY => self.currency.as_str(),
                attr::SHIPPING => self.shipping.as_str(),
                attr::ITEMS => {
                    put(&mut out, &self.items, self.items_json(v));
                    continue;
                }
                other => other,
            };
            let j = match (&v.value, a.key.as_str()) {
                // Money stays an exact decimal string.
                (Some(Value::DoubleValue(_) | Value::IntValue(_)), attr::AMOUNT | attr::SHIPPING) => {
                    Json::String(scalar_text(&any_to_json(v)).unwrap_or_default())
                }
                _ => any_to_json(v),
            };
            put(&mut out, target, j);
        }
        Some(out)
    }

    /// Line items as JSON objects with the mapping's keys (from an array of maps, or a JSON string).
    fn items_json(&self, v: &AnyValue) -> Json {
        let arr: Vec<Json> = match &v.value {
            Some(Value::StringValue(s)) => match serde_json::from_str::<Json>(s) {
                Ok(Json::Array(a)) => a,
                _ => return Json::String(s.clone()),
            },
            _ => match any_to_json(v) {
                Json::Array(a) => a,
                other => return other,
            },
        };
        Json::Array(
            arr.into_iter()
                .map(|it| match it {
                    Json::Object(m) => {
                        let mut o = Map::new();
                        for (k, val) in m {
                            let key = match k.as_str() {
                                attr::ITEM_SKU => self.item_sku.clone(),
                                attr::ITEM_QUANTITY => self.item_quantity.clone(),
                                attr::ITEM_UNIT_PRICE => self.item_unit_price.clone(),
                                _ => k,
                            };
                            let val = match (key == self.item_unit_price, val) {
                                (true, Json::Number(n)) => Json::String(n.to_string()),
                                (_, v) => v,
                            };
                            o.insert(key, val);
                        }
                        Json::Object(o)
                    }
                    other => other,
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attr<'a>(rec: &'a LogRecord, k: &str) -> Option<&'a Value> {
        rec.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn reads_the_default_json_shape() {
        let msg = json!({"type":"order.placed","time":"2025-01-01T00:00:01.234Z","order_id":"o-1",
            "customer_id":"cust-000042","amount":"123.45","currency":"USD","shipping":"5.99",
            "items":[{"sku":"SKU-0001","quantity":2,"unit_price":"19.99"},{"sku":"B","quantity":"1","unit_price":0.1}],
            "channel":"web","coupon":null});
        let ev = BusinessMapping::default().read(&msg, None).unwrap();
        assert_eq!(ev.event_type, "order.placed");
        assert_eq!(ev.time_unix_nano, Some(1_735_689_601_234_000_000));
        assert_eq!(ev.amount.as_deref(), Some("123.45"));
        assert_eq!(ev.currency.as_deref(), Some("USD"));
        let items = ev.items.clone().unwrap();
        assert_eq!(items[1].quantity, 1);
        assert_eq!(items[1].unit_price.as_deref(), Some("0.1"));
        let rec = ev.into_log_record(7);
        assert_eq!(rec.event_name, "order.placed");
        assert_eq!(rec.observed_time_unix_nano, 7);
        assert_eq!(attr(&rec, "order.id"), Some(&Value::StringValue("o-1".into())));
        assert_eq!(attr(&rec, "order.items.count"), Some(&Value::IntValue(2)));
        assert_eq!(attr(&rec, "channel"), Some(&Value::StringValue("web".into())));
        assert_eq!(attr(&rec, "coupon"), None, "null fields are dropped");
    }

    #[test]
    fn custom_mapping_with_nested_paths_and_money_objects() {
        let m = BusinessMapping {
            event_type: "kind".into(),
            time: "ts".into(),
            order_id: "order.id".into(),
            amount: "order.total".into(),
            items: "order.lines".into(),
            item_sku: "product".into(),
            keep_other_fields: false,
            ..Default::default()
        };
        let msg = json!({"kind":"OrderPaid","ts":1735689601234u64,
            "order":{"id":42,"total":{"units":"12","nanos":500000000,"currency_code":"EUR"},
                     "lines":[{"product":"P1"}]},
            "other":"dropped"});
        let ev = m.read(&msg, None).unwrap();
        assert_eq!(ev.order_id.as_deref(), Some("42"));
        assert_eq!(
            ev.time_unix_nano,
            Some(1_735_689_601_234_000_000),
            "milliseconds by magnitude"
        );
        assert_eq!(ev.amount.as_deref(), Some("12.5"));
        assert_eq!(ev.currency.as_deref(), Some("EUR"), "currency from the money object");
        assert_eq!(ev.items.unwrap()[0].quantity, 1, "quantity defaults to 1");
        assert!(ev.extra.is_empty());
    }

    #[test]
    fn bad_events_say_which_field() {
        let m = BusinessMapping::default();
        let e = |v: Json| m.read(&v, None).unwrap_err().to_string();
        assert_eq!(e(json!([1])), "not a JSON object");
        assert!(e(json!({"order_id":"x"})).contains("event type"));
        assert!(e(json!({"type":"t","amount":"twelve"})).starts_with("field amount"));
        assert!(e(json!({"type":"t","time":"yesterday"})).starts_with("field time"));
        assert!(e(json!({"type":"t","currency":"EURO"})).starts_with("field currency"));
        assert!(e(json!({"type":"t","items":{"sku":"a"}})).starts_with("field items"));
        assert!(e(json!({"type":"t","items":[{"quantity":1}]})).contains("missing sku"));
        assert!(e(json!({"type":"t","items":[{"sku":"a","quantity":"two"}]})).contains("not an integer"));
        let with_default = BusinessMapping {
            default_event_type: "order.updated".into(),
            ..Default::default()
        };
        assert_eq!(
            with_default.read(&json!({}), Some(5)).unwrap().event_type,
            "order.updated"
        );
        assert_eq!(with_default.read(&json!({}), Some(5)).unwrap().time_unix_nano, Some(5));
    }

    #[test]
    fn write_inverts_read() {
        let m = BusinessMapping::default();
        let msg = json!({"type":"order.paid","time":"2025-01-01T00:00:01.234Z","order_id":"o-1","customer_id":"c",
            "amount":"10.50","currency":"EUR","items":[{"sku":"A","quantity":3,"unit_price":"3.50"}],"channel":"app"});
        let rec = m.read(&msg, None).unwrap().into_log_record(1);
        let back = Json::Object(m.write(&rec).unwrap());
        assert_eq!(back, msg);
        assert!(m.write(&LogRecord::default()).is_none(), "a plain log is not an event");
    }

    #[test]
    fn rfc3339_round_trip() {
        for ns in [
            0u64,
            1_735_689_601_234_000_000,
            1_709_210_096_000_001_000,
            951_782_400_000_000_000,
        ] {
            assert_eq!(parse_rfc3339(&rfc3339(ns)), Some(ns), "{}", rfc3339(ns));
        }
        assert_eq!(
            parse_rfc3339("2025-01-01T02:00:00+02:00"),
            Some(1_735_689_600_000_000_000)
        );
        assert_eq!(
            parse_rfc3339("2025-01-01T00:00:00.123456789123Z"),
            Some(1_735_689_600_123_456_789)
        );
        assert_eq!(parse_rfc3339("2025-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2025-01-01T00:00:00"), None);
        assert_eq!(parse_rfc3339("2025-01-01"), None);
        assert_eq!(decimal(-1_500_000_000), "-1.5");
        assert_eq!(decimal(3_000_000_000), "3");
        assert_eq!(unix_to_nanos(1_735_689_601), 1_735_689_601_000_000_000);
    }
}
