//! Business events and their three encodings.
//!
//! # JSON (the default field mapping)
//!
//! ```json
//! {"type":"order.placed","time":"2025-01-01T00:00:01.234Z","order_id":"6f1c…","customer_id":"cust-000042",
//!  "amount":"123.45","currency":"USD","shipping":"5.99",
//!  "items":[{"sku":"SKU-0001","quantity":2,"unit_price":"19.99"}]}
//! ```
//!
//! | field | meaning |
//! |---|---|
//! | `type` | event type: `order.placed`, `order.paid`, `order.shipped`, `order.delivered`, `order.cancelled`, `payment.failed` |
//! | `time` | event time, RFC 3339 in UTC (`Z`), millisecond precision |
//! | `order_id` | the order (UUID, same as the span attribute `demo.order.id`) |
//! | `customer_id` | the customer (`cust-000042`, same as `user.id`) |
//! | `amount` | the order value as an exact decimal string: Σ quantity × unit price + shipping |
//! | `currency` | ISO 4217 code of `amount`, `shipping` and every `unit_price` |
//! | `shipping` | shipping cost, exact decimal string |
//! | `items` | line items: `sku`, `quantity` (integer), `unit_price` (exact decimal string) |
//!
//! Every event of an order carries the same amount and items.
//!
//! # OTLP log record
//!
//! `event_name` and the attribute `event.name` hold the type; `time_unix_nano` (and `observed_time_unix_nano`) the
//! event time; severity INFO; no body. Attributes:
//!
//! | attribute | type | value |
//! |---|---|---|
//! | `event.name` | string | `order.placed`, … |
//! | `order.id` | string | order id |
//! | `customer.id` | string | customer id |
//! | `order.amount` | string | order value, exact decimal (`"123.45"`) |
//! | `order.currency` | string | `USD` |
//! | `order.shipping.amount` | string | shipping cost, exact decimal |
//! | `order.items.count` | int | number of line items |
//! | `order.items` | string | the line items as a **JSON string**, the same array as the JSON mapping's `items` |

use bizpilot_core::money::{Currency, Money, MoneyError};
pub use bizpilot_core::time::{parse_rfc3339, rfc3339};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// The kinds of business events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    OrderPlaced,
    OrderPaid,
    OrderShipped,
    OrderDelivered,
    OrderCancelled,
    PaymentFailed,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::OrderPlaced,
        EventType::OrderPaid,
        EventType::OrderShipped,
        EventType::OrderDelivered,
        EventType::OrderCancelled,
        EventType::PaymentFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderPlaced => "order.placed",
            EventType::OrderPaid => "order.paid",
            EventType::OrderShipped => "order.shipped",
            EventType::OrderDelivered => "order.delivered",
            EventType::OrderCancelled => "order.cancelled",
            EventType::PaymentFailed => "payment.failed",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One line of a cart or order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineItem {
    pub sku: String,
    pub quantity: u32,
    pub unit_price: Money,
}

impl LineItem {
    /// `unit_price × quantity`, exact.
    pub fn total(&self) -> Result<Money, MoneyError> {
        self.unit_price.checked_mul(i64::from(self.quantity))
    }
}

#[derive(Serialize, Deserialize)]
struct ItemJson<'a> {
    sku: std::borrow::Cow<'a, str>,
    quantity: u32,
    unit_price: std::borrow::Cow<'a, str>,
}

impl Serialize for LineItem {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ItemJson {
            sku: self.sku.as_str().into(),
            quantity: self.quantity,
            unit_price: self.unit_price.amount_string().into(),
        }
        .serialize(s)
    }
}

/// A business fact about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusinessEvent {
    pub event_type: EventType,
    /// Event time (unix nanoseconds, a whole number of milliseconds).
    pub time_unix_nano: u64,
    pub order_id: String,
    pub customer_id: String,
    /// The order value: Σ quantity × unit price + shipping.
    pub amount: Money,
    pub shipping: Money,
    pub items: Vec<LineItem>,
}

/// A malformed encoded event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("invalid event JSON: {0}")]
    Json(String),
    #[error("unknown event type {0:?}")]
    Type(String),
    #[error("invalid time {0:?}")]
    Time(String),
    #[error(transparent)]
    Money(#[from] MoneyError),
    #[error("missing or mistyped log record attribute {0:?}")]
    Attribute(&'static str),
}

#[derive(Serialize, Deserialize)]
struct EventJson<'a> {
    #[serde(rename = "type")]
    ty: std::borrow::Cow<'a, str>,
    time: String,
    order_id: std::borrow::Cow<'a, str>,
    customer_id: std::borrow::Cow<'a, str>,
    amount: String,
    currency: std::borrow::Cow<'a, str>,
    shipping: String,
    #[serde(borrow)]
    items: Vec<ItemJson<'a>>,
}

fn items_json(items: &[LineItem]) -> Vec<ItemJson<'_>> {
    items
        .iter()
        .map(|i| ItemJson {
            sku: i.sku.as_str().into(),
            quantity: i.quantity,
            unit_price: i.unit_price.amount_string().into(),
        })
        .collect()
}

fn parse_items(items: Vec<ItemJson<'_>>, currency: Currency) -> Result<Vec<LineItem>, EventError> {
    items
        .into_iter()
        .map(|i| {
            Ok(LineItem {
                sku: i.sku.into_owned(),
                quantity: i.quantity,
                unit_price: Money::parse_amount(&i.unit_price, currency)?,
            })
        })
        .collect()
}

impl BusinessEvent {
    pub fn currency(&self) -> Currency {
        self.amount.currency()
    }

    /// The JSON encoding (see the module documentation for the field mapping).
    pub fn to_json(&self) -> String {
        let j = EventJson {
            ty: self.event_type.as_str().into(),
            time: rfc3339(self.time_unix_nano),
            order_id: self.order_id.as_str().into(),
            customer_id: self.customer_id.as_str().into(),
            amount: self.amount.amount_string(),
            currency: std::borrow::Cow::Owned(self.currency().as_str().to_string()),
            shipping: self.shipping.amount_string(),
            items: items_json(&self.items),
        };
        serde_json::to_string(&j).unwrap_or_default()
    }

    /// Parses the JSON encoding.
    pub fn from_json(s: &str) -> Result<BusinessEvent, EventError> {
        let j: EventJson<'_> = serde_json::from_str(s).map_err(|e| EventError::Json(e.to_string()))?;
        let event_type = EventType::parse(&j.ty).ok_or_else(|| EventError::Type(j.ty.to_string()))?;
        let currency = Currency::new(&j.currency)?;
        Ok(BusinessEvent {
            event_type,
            time_unix_nano: parse_rfc3339(&j.time).ok_or_else(|| EventError::Time(j.time.clone()))?,
            order_id: j.order_id.into_owned(),
            customer_id: j.customer_id.into_owned(),
            amount: Money::parse_amount(&j.amount, currency)?,
            shipping: Money::parse_amount(&j.shipping, currency)?,
            items: parse_items(j.items, currency)?,
        })
    }

    /// The OTLP log record encoding (see the module documentation for the attributes).
    pub fn to_log_record(&self) -> LogRecord {
        let items = serde_json::to_string(&items_json(&self.items)).unwrap_or_default();
        LogRecord {
            time_unix_nano: self.time_unix_nano,
            observed_time_unix_nano: self.time_unix_nano,
            severity_number: SeverityNumber::Info as i32,
            severity_text: "INFO".into(),
            event_name: self.event_type.as_str().into(),
            attributes: vec![
                kv_str("event.name", self.event_type.as_str()),
                kv_str("order.id", &self.order_id),
                kv_str("customer.id", &self.customer_id),
                kv_str("order.amount", self.amount.amount_string()),
                kv_str("order.currency", self.currency().as_str()),
                kv_str("order.shipping.amount", self.shipping.amount_string()),
                kv_int("order.items.count", self.items.len() as i64),
                kv_str("order.items", items),
            ],
            ..Default::default()
        }
    }

    /// Parses the OTLP log record encoding.
    pub fn from_log_record(r: &LogRecord) -> Result<BusinessEvent, EventError> {
        let s = |k: &'static str| -> Result<&str, EventError> {
            r.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.as_str()),
                    _ => None,
                })
                .ok_or(EventError::Attribute(k))
        };
        let name = if r.event_name.is_empty() {
            s("event.name")?
        } else {
            r.event_name.as_str()
        };
        let event_type = EventType::parse(name).ok_or_else(|| EventError::Type(name.to_string()))?;
        let currency = Currency::new(s("order.currency")?)?;
        let items: Vec<ItemJson<'_>> =
            serde_json::from_str(s("order.items")?).map_err(|e| EventError::Json(e.to_string()))?;
        Ok(BusinessEvent {
            event_type,
            time_unix_nano: r.time_unix_nano,
            order_id: s("order.id")?.to_string(),
            customer_id: s("customer.id")?.to_string(),
            amount: Money::parse_amount(s("order.amount")?, currency)?,
            shipping: Money::parse_amount(s("order.shipping.amount")?, currency)?,
            items: parse_items(items, currency)?,
        })
    }
}

pub(crate) fn kv_str(k: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

pub(crate) fn kv_int(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        for ns in [
            0u64,
            1_735_689_600_000_000_000,
            1_735_689_601_234_000_000,
            1_709_210_096_000_001_000,
            4_102_444_799_999_999_999,
        ] {
            let s = rfc3339(ns);
            assert_eq!(parse_rfc3339(&s), Some(ns), "{s}");
        }
        assert_eq!(rfc3339(1_735_689_601_234_000_000), "2025-01-01T00:00:01.234Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(
            parse_rfc3339("2025-01-01T02:00:00+02:00"),
            Some(1_735_689_600_000_000_000)
        );
        assert_eq!(parse_rfc3339("2025-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2025-01-01T00:00:00"), None);
    }
}
