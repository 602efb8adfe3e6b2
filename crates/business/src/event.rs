//! Business events read from OTLP log records.
//!
//! A log record is a business event when it names one: the record's
//! `event_name` field (OTLP ≥ 1.5) or, failing that, its `event.name`
//! attribute (the attribute name is configurable). Every other record is not an
//! event and is ignored by the readers here.
//!
//! The event's fields are read from the record's attributes, then from its
//! body when the body is a map, under configurable names ([`EventMapping`]):
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `event_name_attribute` | `event.name` | attribute naming the event when the record's `event_name` is empty |
//! | `names` | `[]` | event names accepted (an entry ending in `*` is a prefix); empty accepts every named event |
//! | `order_id` | `order.id` | order key |
//! | `customer_id` | `customer.id` | customer key |
//! | `customer_tier` | `customer.tier` | customer tier (e.g. `gold`) |
//! | `amount` | `order.amount` | order amount: `"123.45"`, `"USD 123.45"`, a double, an int or a `{units, nanos, currency_code}` map |
//! | `currency` | `order.currency` | currency code for an amount without one |
//! | `default_currency` | `USD` | currency when neither the amount nor `currency` gives one |
//! | `items` | `order.items` | line items: an array of maps with `item_sku`, `item_quantity`, `item_unit_price`, or a JSON string holding such an array |
//! | `item_sku` | `sku` | key of the SKU inside a line item |
//! | `item_quantity` | `quantity` | key of the quantity inside a line item |
//! | `item_unit_price` | `unit_price` | key of the unit price inside a line item (money, as `amount`) |
//! | `item_count` | `order.items.count` | number of line items; without it, the line items are counted |
//! | `time` | — | an attribute holding the event time in Unix nanoseconds (else the record's `time_unix_nano`, else its observed time) |
//!
//! ```yaml
//! mapping:
//!   names: ["order.*", "cart.*", "payment.*"]
//!   order_id: shop.order_id
//!   amount: shop.total
//!   default_currency: EUR
//! ```

use bizpilot_core::{Currency, Money, MoneyError};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde::{Deserialize, Serialize};

use crate::amount;
use crate::attrs;

/// The lifecycle meaning of an event name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    OrderPlaced,
    OrderPaid,
    OrderPicked,
    OrderShipped,
    OrderDelivered,
    OrderCancelled,
    CartUpdated,
    PaymentFailed,
    Other,
}

impl EventKind {
    /// Classifies an event name: `order.placed`, `order_placed`, `OrderPlaced` and
    /// `shop.order.placed` are all [`EventKind::OrderPlaced`].
    pub fn from_name(name: &str) -> EventKind {
        let norm: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        const KINDS: [(&str, EventKind); 10] = [
            ("orderplaced", EventKind::OrderPlaced),
            ("ordercreated", EventKind::OrderPlaced),
            ("orderpaid", EventKind::OrderPaid),
            ("orderpicked", EventKind::OrderPicked),
            ("ordershipped", EventKind::OrderShipped),
            ("orderdelivered", EventKind::OrderDelivered),
            ("ordercancelled", EventKind::OrderCancelled),
            ("ordercanceled", EventKind::OrderCancelled),
            ("cartupdated", EventKind::CartUpdated),
            ("paymentfailed", EventKind::PaymentFailed),
        ];
        KINDS
            .iter()
            .find(|(k, _)| norm.ends_with(k))
            .map(|(_, v)| *v)
            .unwrap_or(EventKind::Other)
    }
}

/// One line of an order or cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: String,
    pub quantity: i64,
    pub unit_price: Option<Money>,
}

impl LineItem {
    /// `unit_price × quantity`, exactly; `None` without a price.
    pub fn total(&self) -> Option<Result<Money, MoneyError>> {
        self.unit_price.map(|p| p.checked_mul(self.quantity))
    }
}

/// A business fact: an order was placed, paid, shipped…; a cart changed; a payment failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusinessEvent {
    /// The event name as sent (`order.placed`).
    pub name: String,
    pub kind: EventKind,
    /// When it happened, Unix nanoseconds (0 when unknown).
    pub time_unix_nano: u64,
    pub order_id: Option<String>,
    pub customer_id: Option<String>,
    pub customer_tier: Option<String>,
    /// The order or cart amount as given by the event.
    pub amount: Option<Money>,
    pub items: Vec<LineItem>,
    /// The number of items as given by the event.
    pub item_count: Option<i64>,
}

impl BusinessEvent {
    /// A bare event of `name` at `time_unix_nano`.
    pub fn new(name: impl Into<String>, time_unix_nano: u64) -> Self {
        let name = name.into();
        BusinessEvent {
            kind: EventKind::from_name(&name),
            name,
            time_unix_nano,
            order_id: None,
            customer_id: None,
            customer_tier: None,
            amount: None,
            items: Vec::new(),
            item_count: None,
        }
    }

    /// Sum of the line items' totals; `None` when there are no items or one has no price.
    pub fn items_value(&self) -> Option<Result<Money, MoneyError>> {
        let first = self.items.first()?;
        let currency = first.unit_price?.currency();
        let mut total = Money::zero(currency);
        for it in &self.items {
            match it.total()? {
                Ok(t) => match total.checked_add(t) {
                    Ok(s) => total = s,
                    Err(e) => return Some(Err(e)),
                },
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(total))
    }

    /// The explicit item count, else the number of line items (if any), as the
    /// OpenTelemetry Demo's `*.items.count` attributes count them.
    pub fn items_count(&self) -> Option<i64> {
        self.item_count
            .or_else(|| (!self.items.is_empty()).then(|| i64::try_from(self.items.len()).unwrap_or(i64::MAX)))
    }
}

/// Why a named event could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event:?}: {field}: {message}")]
pub struct EventError {
    pub event: String,
    pub field: String,
    pub message: String,
}

/// Where a business event's fields are found in a log record. See the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventMapping {
    pub event_name_attribute: String,
    pub names: Vec<String>,
    pub order_id: String,
    pub customer_id: String,
    pub customer_tier: String,
    pub amount: String,
    pub currency: String,
    pub default_currency: Option<Currency>,
    pub items: String,
    pub item_sku: String,
    pub item_quantity: String,
    pub item_unit_price: String,
    pub item_count: String,
    pub time: Option<String>,
}

impl Default for EventMapping {
    fn default() -> Self {
        EventMapping {
            event_name_attribute: "event.name".into(),
            names: Vec::new(),
            order_id: "order.id".into(),
            customer_id: "customer.id".into(),
            customer_tier: "customer.tier".into(),
            amount: "order.amount".into(),
            currency: "order.currency".into(),
            default_currency: Some(Currency::USD),
            items: "order.items".into(),
            item_sku: "sku".into(),
            item_quantity: "quantity".into(),
            item_unit_price: "unit_price".into(),
            item_count: "order.items.count".into(),
            time: None,
        }
    }
}

/// A record's fields: its attributes, then its body if the body is a map.
struct Fields<'a> {
    attrs: &'a [KeyValue],
    body: &'a [KeyValue],
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        if key.is_empty() {
            return None;
        }
        attrs::get(self.attrs, key).or_else(|| attrs::get(self.body, key))
    }
}

impl EventMapping {
    /// Problems in the mapping, as `(field, message)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        for (field, v) in [
            ("event_name_attribute", &self.event_name_attribute),
            ("order_id", &self.order_id),
        ] {
            if v.trim().is_empty() {
                errs.push((field.to_string(), "must not be empty".to_string()));
            }
        }
        for (i, n) in self.names.iter().enumerate() {
            if n.trim().is_empty() {
                errs.push((
                    format!("names[{i}]"),
                    "must be an event name or a prefix ending in '*'".into(),
                ));
            }
        }
        errs
    }

    /// The event name of a record, if it names one (whatever `names` says).
    pub fn event_name<'a>(&self, rec: &'a LogRecord) -> Option<&'a str> {
        if !rec.event_name.is_empty() {
            return Some(&rec.event_name);
        }
        attrs::get_str(&rec.attributes, &self.event_name_attribute).filter(|s| !s.is_empty())
    }

    /// Whether `name` is accepted by `names`.
    pub fn accepts(&self, name: &str) -> bool {
        self.names.is_empty()
            || self.names.iter().any(|n| match n.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => n == name,
            })
    }

    /// Reads the business event in `rec`: `Ok(None)` when the record is not an
    /// accepted event, `Err` when it is one but a field cannot be read.
    pub fn parse(&self, rec: &LogRecord) -> Result<Option<BusinessEvent>, EventError> {
        let Some(name) = self.event_name(rec) else {
            return Ok(None);
        };
        if !self.accepts(name) {
            return Ok(None);
        }
        let body: &[KeyValue] = match rec.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(Value::KvlistValue(l)) => &l.values,
            _ => &[],
        };
        let f = Fields {
            attrs: &rec.attributes,
            body,
        };
        let err = |field: &str, message: String| EventError {
            event: name.to_string(),
            field: field.to_string(),
            message,
        };
        let time = match self.time.as_deref().and_then(|k| f.get(k)) {
            Some(v) => attrs::value_as_i64(v)
                .and_then(|t| u64::try_from(t).ok())
                .ok_or_else(|| {
                    err(
                        self.time.as_deref().unwrap_or(""),
                        "not a Unix time in nanoseconds".into(),
                    )
                })?,
            None if rec.time_unix_nano != 0 => rec.time_unix_nano,
            None => rec.observed_time_unix_nano,
        };
        let mut ev = BusinessEvent::new(name, time);
        let text = |key: &str| {
            f.get(key)
                .and_then(attrs::value_as_str)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        ev.order_id = text(&self.order_id);
        ev.customer_id = text(&self.customer_id);
        ev.customer_tier = text(&self.customer_tier);
        let currency = match f.get(&self.currency) {
            Some(Value::StringValue(c)) => Some(Currency::new(c).map_err(|e| err(&self.currency, e.to_string()))?),
            Some(other) => return Err(err(&self.currency, format!("not a currency code: {other:?}"))),
            None => self.default_currency,
        };
        if let Some(v) = f.get(&self.amount) {
            ev.amount = Some(amount::money_from_value(v, currency).map_err(|e| err(&self.amount, e.to_string()))?);
        }
        if let Some(v) = f.get(&self.item_count) {
            ev.item_count =
                Some(attrs::value_as_i64(v).ok_or_else(|| err(&self.item_count, format!("not an integer: {v:?}")))?);
        }
        match f.get(&self.items) {
            None => {}
            Some(Value::ArrayValue(arr)) => {
                for (i, item) in arr.values.iter().enumerate() {
                    let path = format!("{}[{i}]", self.items);
                    let Some(Value::KvlistValue(m)) = item.value.as_ref() else {
                        return Err(err(&path, "a line item must be a map".into()));
                    };
                    let sku = attrs::get(&m.values, &self.item_sku)
                        .and_then(attrs::value_as_str)
                        .map(|s| s.into_owned())
                        .ok_or_else(|| err(&path, format!("missing {}", self.item_sku)))?;
                    let quantity = match attrs::get(&m.values, &self.item_quantity) {
                        Some(q) => attrs::value_as_i64(q)
                            .ok_or_else(|| err(&path, format!("{} is not an integer", self.item_quantity)))?,
                        None => 1,
                    };
                    let unit_price = match attrs::get(&m.values, &self.item_unit_price) {
                        Some(p) => Some(
                            amount::money_from_value(p, currency)
                                .map_err(|e| err(&path, format!("{}: {e}", self.item_unit_price)))?,
                        ),
                        None => None,
                    };
                    ev.items.push(LineItem {
                        sku,
                        quantity,
                        unit_price,
                    });
                }
            }
            Some(Value::StringValue(json)) => {
                // Line items sent as a JSON string (an array of objects with the same keys).
                let arr: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(json)
                    .map_err(|e| err(&self.items, format!("invalid JSON line items: {e}")))?;
                for (i, m) in arr.iter().enumerate() {
                    let path = format!("{}[{i}]", self.items);
                    let text = |k: &str| match m.get(k) {
                        Some(serde_json::Value::String(s)) => Some(s.clone()),
                        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                        _ => None,
                    };
                    let sku = text(&self.item_sku).ok_or_else(|| err(&path, format!("missing {}", self.item_sku)))?;
                    let quantity = match m.get(&self.item_quantity) {
                        Some(q) => q
                            .as_i64()
                            .or_else(|| q.as_str().and_then(|s| s.trim().parse().ok()))
                            .ok_or_else(|| err(&path, format!("{} is not an integer", self.item_quantity)))?,
                        None => 1,
                    };
                    // Numbers are read from their JSON text, exactly.
                    let unit_price = match text(&self.item_unit_price) {
                        Some(p) => Some(
                            Money::parse(&p, currency)
                                .map_err(|e| err(&path, format!("{}: {e}", self.item_unit_price)))?,
                        ),
                        None => None,
                    };
                    ev.items.push(LineItem {
                        sku,
                        quantity,
                        unit_price,
                    });
                }
            }
            Some(other) => return Err(err(&self.items, format!("not an array: {other:?}"))),
        }
        Ok(Some(ev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs::{kv, kv_f64, kv_i64, kv_str};
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValueList};

    fn item(sku: &str, q: i64, price: &str) -> AnyValue {
        AnyValue {
            value: Some(Value::KvlistValue(KeyValueList {
                values: vec![kv_str("sku", sku), kv_i64("quantity", q), kv_str("unit_price", price)],
            })),
        }
    }

    #[test]
    fn parses_an_order_event_from_attributes() {
        let rec = LogRecord {
            event_name: "order.placed".into(),
            time_unix_nano: 42,
            attributes: vec![
                kv_str("order.id", "o-1"),
                kv_str("customer.id", "c-9"),
                kv_str("customer.tier", "gold"),
                kv_f64("order.amount", 59.97),
                kv_str("order.currency", "EUR"),
                kv(
                    "order.items",
                    Value::ArrayValue(ArrayValue {
                        values: vec![item("A", 2, "19.99"), item("B", 1, "EUR 20.00")],
                    }),
                ),
            ],
            ..Default::default()
        };
        let ev = EventMapping::default().parse(&rec).unwrap().unwrap();
        assert_eq!(ev.kind, EventKind::OrderPlaced);
        assert_eq!(ev.time_unix_nano, 42);
        assert_eq!(ev.order_id.as_deref(), Some("o-1"));
        assert_eq!(ev.customer_id.as_deref(), Some("c-9"));
        assert_eq!(ev.customer_tier.as_deref(), Some("gold"));
        assert_eq!(ev.amount.unwrap().to_string(), "EUR 59.97");
        assert_eq!(ev.items.len(), 2);
        assert_eq!(ev.items_value().unwrap().unwrap().to_string(), "EUR 59.98");
        assert_eq!(ev.items_count(), Some(2));
    }

    #[test]
    fn event_name_attribute_body_fields_and_filters() {
        let rec = LogRecord {
            observed_time_unix_nano: 7,
            attributes: vec![kv_str("event.name", "shop.order.shipped")],
            body: Some(AnyValue {
                value: Some(Value::KvlistValue(KeyValueList {
                    values: vec![kv_i64("order.id", 123), kv_str("order.amount", "USD 5")],
                })),
            }),
            ..Default::default()
        };
        let m = EventMapping::default();
        let ev = m.parse(&rec).unwrap().unwrap();
        assert_eq!(ev.kind, EventKind::OrderShipped);
        assert_eq!(ev.time_unix_nano, 7);
        assert_eq!(ev.order_id.as_deref(), Some("123"));
        assert_eq!(ev.amount.unwrap().to_string(), "USD 5.00");
        let only_carts = EventMapping {
            names: vec!["cart.*".into()],
            ..Default::default()
        };
        assert_eq!(only_carts.parse(&rec).unwrap(), None);
        assert_eq!(
            m.parse(&LogRecord::default()).unwrap(),
            None,
            "a plain log is not an event"
        );
    }

    #[test]
    fn line_items_as_a_json_string() {
        let rec = LogRecord {
            event_name: "order.paid".into(),
            attributes: vec![
                kv_str("order.id", "o"),
                kv_str("order.currency", "EUR"),
                kv_str(
                    "order.items",
                    r#"[{"sku":"A","quantity":2,"unit_price":"19.99"},{"sku":"B","quantity":1,"unit_price":0.1}]"#,
                ),
            ],
            ..Default::default()
        };
        let ev = EventMapping::default().parse(&rec).unwrap().unwrap();
        assert_eq!(ev.items.len(), 2);
        assert_eq!(ev.items[0].unit_price.unwrap().to_string(), "EUR 19.99");
        assert_eq!(ev.items_value().unwrap().unwrap().to_string(), "EUR 40.08");
        let bad = LogRecord {
            event_name: "order.paid".into(),
            attributes: vec![kv_str("order.items", "[{")],
            ..Default::default()
        };
        assert_eq!(EventMapping::default().parse(&bad).unwrap_err().field, "order.items");
    }

    #[test]
    fn malformed_fields_are_errors() {
        let rec = LogRecord {
            event_name: "order.paid".into(),
            attributes: vec![kv_str("order.id", "o"), kv_str("order.amount", "twelve")],
            ..Default::default()
        };
        let e = EventMapping::default().parse(&rec).unwrap_err();
        assert_eq!(e.field, "order.amount");
        assert_eq!(EventKind::from_name("OrderCancelled"), EventKind::OrderCancelled);
        assert_eq!(EventKind::from_name("browser.click"), EventKind::Other);
    }
}
