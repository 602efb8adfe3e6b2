//! The OpenTelemetry Demo's `oteldemo.OrderResult` (receiver encoding `otel_demo_order_result`).
//!
//! The demo's checkout service publishes one `oteldemo.OrderResult` per **successful** order on
//! the topic `orders`: protobuf, no key, a W3C `traceparent` header naming the checkout's
//! `orders publish` producer span (a child of `oteldemo.CheckoutService/PlaceOrder`). Pinned to
//! demo release **3.0.0** (`open-telemetry/opentelemetry-demo`): the schema is `pb/demo.proto`
//! (`OrderResult`, `OrderItem`, `CartItem`, `Money`, `Address`), the producer
//! `src/checkout/main.go` (`sendToPostProcessor`, `createProducerSpan`) and
//! `src/checkout/kafka/producer.go` (topic `orders`); the demo's consumers are `src/accounting`
//! and `src/fraud-detection`. The message types below are written from that schema (same field
//! numbers and types), so no descriptor file is needed.
//!
//! One message becomes one business event (log record, see [`crate::business`]):
//!
//! | record attribute | from the OrderResult |
//! |---|---|
//! | event name | `order.placed` (the demo publishes only orders that were charged and shipped) |
//! | `order.id` | `order_id` |
//! | `order.amount` | Σ `items[].cost` × `items[].item.quantity` + `shipping_cost`, exact (nano-units) |
//! | `order.currency` | the currency of the costs (the user's currency: EUR stays EUR) |
//! | `order.shipping.amount` | `shipping_cost` |
//! | `order.items` | `{sku: item.product_id, quantity: item.quantity, unit_price: cost}` per line |
//! | `order.shipping.tracking_id` | `shipping_tracking_id` |
//! | `trace_id`, `span_id` | the `traceparent` header |
//! | time | the Kafka message timestamp |
//!
//! There is no customer in an OrderResult: the `business_events` exporter takes it from the
//! trace the `traceparent` names (the `PlaceOrder` span's `user.id`, the payment `charge` span's
//! tier), see `docs/order-result-join.md`. The shipping address is personal data and is not read.
//!
//! **Money** follows the demo's `src/checkout/money/money.go`: a `Money` is valid when
//! `|nanos| ≤ 999,999,999` and `nanos` has the sign of `units` (or either is zero); sums need one
//! currency code. The checkout sums with those rules too, so the value here is the exact total it
//! charged. Its span attribute `demo.order.amount` is that total **truncated** to cents
//! (`"%d.%02d"` of `units` and `nanos / 10^7`, then a float64): where the converted prices have
//! sub-cent nanos the OrderResult value is the more exact one. An invalid amount, a missing or
//! mismatched currency code or a quantity below 1 makes the message bad (counted, logged,
//! dead-lettered as configured), never a wrong figure.
//!
//! ```yaml
//! receivers:
//!   kafka/demo_orders:
//!     brokers: [kafka:9092]
//!     topics: [orders]
//!     encoding: otel_demo_order_result
//! ```

use bizpilot_core::{Currency, Money, MoneyError};

use crate::business::{EventFields, Item, kv_str};

/// The event name an OrderResult becomes.
pub const EVENT_TYPE: &str = "order.placed";

/// The topic the demo's checkout publishes to (`src/checkout/kafka/producer.go`).
pub const TOPIC: &str = "orders";

/// `oteldemo.Money` (`pb/demo.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DemoMoney {
    #[prost(string, tag = "1")]
    pub currency_code: String,
    #[prost(int64, tag = "2")]
    pub units: i64,
    #[prost(int32, tag = "3")]
    pub nanos: i32,
}

/// `oteldemo.CartItem`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CartItem {
    #[prost(string, tag = "1")]
    pub product_id: String,
    #[prost(int32, tag = "2")]
    pub quantity: i32,
}

/// `oteldemo.OrderItem`: a cart line and its unit cost in the user's currency.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrderItem {
    #[prost(message, optional, tag = "1")]
    pub item: Option<CartItem>,
    #[prost(message, optional, tag = "2")]
    pub cost: Option<DemoMoney>,
}

/// `oteldemo.Address` (read only to skip it: personal data).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    #[prost(string, tag = "1")]
    pub street_address: String,
    #[prost(string, tag = "2")]
    pub city: String,
    #[prost(string, tag = "3")]
    pub state: String,
    #[prost(string, tag = "4")]
    pub country: String,
    #[prost(string, tag = "5")]
    pub zip_code: String,
}

/// `oteldemo.OrderResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrderResult {
    #[prost(string, tag = "1")]
    pub order_id: String,
    #[prost(string, tag = "2")]
    pub shipping_tracking_id: String,
    #[prost(message, optional, tag = "3")]
    pub shipping_cost: Option<DemoMoney>,
    #[prost(message, optional, tag = "4")]
    pub shipping_address: Option<Address>,
    #[prost(message, repeated, tag = "5")]
    pub items: Vec<OrderItem>,
}

/// Why an OrderResult cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderResultError {
    #[error("invalid protobuf: {0}")]
    Protobuf(String),
    #[error("missing order_id")]
    NoOrderId,
    #[error("{field}: {source}")]
    Money { field: String, source: MoneyError },
    #[error("{field}: missing currency_code")]
    NoCurrency { field: String },
    #[error("{field}: quantity {quantity} is not positive")]
    Quantity { field: String, quantity: i32 },
    #[error("{field}: missing")]
    Missing { field: String },
}

impl DemoMoney {
    /// Builds a demo `Money` from an exact amount, as the demo writes it (`nanos` with the sign
    /// of `units`).
    pub fn from_money(m: Money) -> DemoMoney {
        let n = m.nanos();
        DemoMoney {
            currency_code: m.currency().as_str().to_string(),
            units: i64::try_from(n / 1_000_000_000).unwrap_or(i64::MAX),
            nanos: i32::try_from(n % 1_000_000_000).unwrap_or(0),
        }
    }

    /// The exact amount; errors as the demo's `money.IsValid` and a currency code are required.
    pub fn to_money(&self, field: &str) -> Result<Money, OrderResultError> {
        if self.currency_code.trim().is_empty() {
            return Err(OrderResultError::NoCurrency { field: field.into() });
        }
        let money_err = |source| OrderResultError::Money {
            field: field.into(),
            source,
        };
        let c = Currency::new(&self.currency_code).map_err(money_err)?;
        Money::from_units_nanos(self.units, self.nanos, c).map_err(money_err)
    }
}

/// An order as its OrderResult states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderValue {
    pub order_id: String,
    /// Σ cost × quantity + shipping, exact, in the order's currency.
    pub total: Money,
    pub shipping: Option<Money>,
    /// `(product id, quantity, unit cost)`.
    pub items: Vec<(String, i64, Money)>,
    pub tracking_id: String,
}

impl OrderResult {
    /// The order's value and lines, with the demo's money rules (see the module doc).
    pub fn value(&self) -> Result<OrderValue, OrderResultError> {
        if self.order_id.trim().is_empty() {
            return Err(OrderResultError::NoOrderId);
        }
        let shipping = self
            .shipping_cost
            .as_ref()
            .map(|m| m.to_money("shipping_cost"))
            .transpose()?;
        let mut total: Option<Money> = shipping;
        let mut items = Vec::with_capacity(self.items.len());
        for (i, it) in self.items.iter().enumerate() {
            let field = format!("items[{i}]");
            let cart = it.item.as_ref().ok_or_else(|| OrderResultError::Missing {
                field: format!("{field}.item"),
            })?;
            let cost = it
                .cost
                .as_ref()
                .ok_or_else(|| OrderResultError::Missing {
                    field: format!("{field}.cost"),
                })?
                .to_money(&format!("{field}.cost"))?;
            if cart.quantity < 1 {
                return Err(OrderResultError::Quantity {
                    field: format!("{field}.item.quantity"),
                    quantity: cart.quantity,
                });
            }
            let money_err = |source| OrderResultError::Money {
                field: field.clone(),
                source,
            };
            let line = cost.checked_mul(i64::from(cart.quantity)).map_err(money_err)?;
            total = Some(match total {
                None => line,
                Some(t) => t.checked_add(line).map_err(money_err)?,
            });
            items.push((cart.product_id.clone(), i64::from(cart.quantity), cost));
        }
        let total = total.ok_or_else(|| OrderResultError::Missing {
            field: "items and shipping_cost".into(),
        })?;
        Ok(OrderValue {
            order_id: self.order_id.clone(),
            total,
            shipping,
            items,
            tracking_id: self.shipping_tracking_id.clone(),
        })
    }
}

/// Reads one OrderResult message as a business event (`time` = the Kafka message timestamp).
pub fn decode_order_result(bytes: &[u8], time: Option<u64>) -> Result<EventFields, OrderResultError> {
    let msg = <OrderResult as prost::Message>::decode(bytes).map_err(|e| OrderResultError::Protobuf(e.to_string()))?;
    let v = msg.value()?;
    let mut extra = Vec::new();
    if !v.tracking_id.is_empty() {
        extra.push(kv_str("order.shipping.tracking_id", v.tracking_id.clone()));
    }
    Ok(EventFields {
        event_type: EVENT_TYPE.into(),
        time_unix_nano: time,
        order_id: Some(v.order_id),
        amount: Some(v.total.amount_string()),
        currency: Some(v.total.currency().as_str().to_string()),
        shipping: v.shipping.map(|s| s.amount_string()),
        items: Some(
            v.items
                .into_iter()
                .map(|(sku, quantity, price)| Item {
                    sku,
                    quantity,
                    unit_price: Some(price.amount_string()),
                })
                .collect(),
        ),
        extra,
        ..Default::default()
    })
}

/// The checkout span's `demo.order.amount` for an exact total, as demo 3.0.0's
/// `src/checkout/main.go` writes it: `"%d.%02d"` of `units` and `nanos / 10^7` (truncated to
/// cents, toward zero), parsed as a float64. Returned as that text (totals are never negative).
pub fn span_order_amount(total: Money) -> String {
    let m = DemoMoney::from_money(total);
    format!("{}.{:02}", m.units, m.nanos / 10_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn money(code: &str, units: i64, nanos: i32) -> Option<DemoMoney> {
        Some(DemoMoney {
            currency_code: code.into(),
            units,
            nanos,
        })
    }

    fn line(product: &str, quantity: i32, cost: Option<DemoMoney>) -> OrderItem {
        OrderItem {
            item: Some(CartItem {
                product_id: product.into(),
                quantity,
            }),
            cost,
        }
    }

    fn order(items: Vec<OrderItem>, shipping: Option<DemoMoney>) -> OrderResult {
        OrderResult {
            order_id: "3c1a2b52-9f1e-11ef-8f7a-0242ac120007".into(),
            shipping_tracking_id: "7b4c2e1a-…".into(),
            shipping_cost: shipping,
            shipping_address: Some(Address {
                street_address: "1600 Amphitheatre Parkway".into(),
                city: "Mountain View".into(),
                state: "CA".into(),
                country: "United States".into(),
                zip_code: "94043".into(),
            }),
            items,
        }
    }

    #[test]
    fn value_is_items_times_quantity_plus_shipping_exactly() {
        // EUR prices as the currency service converts them: sub-cent nanos.
        let o = order(
            vec![
                line("OLJCESPC7Z", 3, money("EUR", 92, 456_789_123)),
                line("66VCHSJNUP", 1, money("EUR", 0, 999_999_999)),
            ],
            money("EUR", 8, 990_000_001),
        );
        let f = decode_order_result(&o.encode_to_vec(), Some(7)).unwrap();
        // 3 × 92.456789123 = 277.370367369; + 0.999999999 + 8.990000001 = 287.360367369
        assert_eq!(f.amount.as_deref(), Some("287.360367369"));
        assert_eq!(f.currency.as_deref(), Some("EUR"), "EUR stays EUR");
        assert_eq!(f.shipping.as_deref(), Some("8.990000001"));
        assert_eq!(f.order_id.as_deref(), Some("3c1a2b52-9f1e-11ef-8f7a-0242ac120007"));
        assert_eq!(f.time_unix_nano, Some(7));
        let items = f.items.unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            (items[0].sku.as_str(), items[0].quantity, items[0].unit_price.as_deref()),
            ("OLJCESPC7Z", 3, Some("92.456789123"))
        );
        assert!(f.customer_id.is_none(), "an OrderResult names no customer");
        // The span's attribute truncates to cents.
        let v = o.value().unwrap();
        assert_eq!(span_order_amount(v.total), "287.36");
    }

    #[test]
    fn demo_money_rules() {
        // Negative amounts carry negative nanos (money.go: -1.75 = units -1, nanos -750000000).
        let m = DemoMoney {
            currency_code: "USD".into(),
            units: -1,
            nanos: -750_000_000,
        };
        assert_eq!(m.to_money("x").unwrap().amount_string(), "-1.75");
        assert_eq!(DemoMoney::from_money(m.to_money("x").unwrap()), m);
        let zero_units = DemoMoney {
            currency_code: "USD".into(),
            units: 0,
            nanos: -5,
        };
        assert_eq!(zero_units.to_money("x").unwrap().nanos(), -5);
        for (units, nanos) in [(1, -1), (-1, 1), (0, 1_000_000_000), (0, -1_000_000_000)] {
            let bad = DemoMoney {
                currency_code: "USD".into(),
                units,
                nanos,
            };
            assert!(
                matches!(bad.to_money("c"), Err(OrderResultError::Money { .. })),
                "{units} {nanos}"
            );
        }
        let none = DemoMoney {
            currency_code: String::new(),
            units: 1,
            nanos: 0,
        };
        assert_eq!(
            none.to_money("cost").unwrap_err(),
            OrderResultError::NoCurrency { field: "cost".into() }
        );
    }

    #[test]
    fn bad_orders_are_errors_not_figures() {
        let dec = |o: OrderResult| decode_order_result(&o.encode_to_vec(), None).unwrap_err();
        let mixed = order(vec![line("A", 1, money("USD", 1, 0))], money("EUR", 1, 0));
        assert!(dec(mixed).to_string().contains("items[0]"));
        assert!(matches!(
            dec(order(vec![line("A", 0, money("USD", 1, 0))], None)),
            OrderResultError::Quantity { .. }
        ));
        assert!(matches!(
            dec(order(vec![line("A", 1, None)], None)),
            OrderResultError::Missing { .. }
        ));
        assert!(matches!(dec(order(vec![], None)), OrderResultError::Missing { .. }));
        let mut no_id = order(vec![line("A", 1, money("USD", 1, 0))], None);
        no_id.order_id.clear();
        assert_eq!(dec(no_id), OrderResultError::NoOrderId);
        assert!(matches!(
            decode_order_result(b"\xff\xff\xff", None),
            Err(OrderResultError::Protobuf(_))
        ));
    }

    #[test]
    fn span_amount_truncates_like_the_checkout() {
        let usd = |s: &str| Money::parse_amount(s, Currency::USD).unwrap();
        assert_eq!(span_order_amount(usd("123.456")), "123.45");
        assert_eq!(span_order_amount(usd("5.05")), "5.05");
        assert_eq!(span_order_amount(usd("7")), "7.00");
        assert_eq!(span_order_amount(usd("0.009999999")), "0.00");
    }
}
