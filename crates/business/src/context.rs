//! What is known about an order and a customer, built from business events.
//!
//! Events may arrive out of order and more than once. Applying them is
//! idempotent and order-independent per field: each field keeps the value from
//! the *latest* event (by event time) that carried it; an equal time lets the
//! later arrival win. So `placed(amount=10)` then a late duplicate of an older
//! `cart.updated(amount=8)` leaves the value at 10.
//!
//! An order's value is the amount an event states; when no event stated one,
//! the sum of the latest line items (if all are priced) stands in.

use bizpilot_core::Money;
use serde::{Deserialize, Serialize};

use crate::event::{BusinessEvent, EventKind, LineItem};

/// A field with the event time of the value it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Timed<T> {
    value: Option<T>,
    time: u64,
}

impl<T> Default for Timed<T> {
    fn default() -> Self {
        Timed { value: None, time: 0 }
    }
}

impl<T> Timed<T> {
    fn offer(&mut self, value: Option<T>, time: u64) {
        if let Some(v) = value
            && (self.value.is_none() || time >= self.time)
        {
            self.value = Some(v);
            self.time = time;
        }
    }
}

/// An order as known from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderContext {
    pub order_id: String,
    customer_id: Timed<String>,
    customer_tier: Timed<String>,
    amount: Timed<Money>,
    items: Timed<Vec<LineItem>>,
    item_count: Timed<i64>,
    status: Timed<(EventKind, String)>,
    /// Earliest and latest event times seen (Unix ns).
    pub first_event_unix_nano: u64,
    pub last_event_unix_nano: u64,
    /// Events applied, duplicates included.
    pub events: u64,
}

impl OrderContext {
    pub fn new(order_id: impl Into<String>) -> Self {
        OrderContext {
            order_id: order_id.into(),
            customer_id: Timed::default(),
            customer_tier: Timed::default(),
            amount: Timed::default(),
            items: Timed::default(),
            item_count: Timed::default(),
            status: Timed::default(),
            first_event_unix_nano: 0,
            last_event_unix_nano: 0,
            events: 0,
        }
    }

    /// Folds an event into the context (see the module doc for the rules).
    pub fn apply(&mut self, ev: &BusinessEvent) {
        let t = ev.time_unix_nano;
        self.customer_id.offer(ev.customer_id.clone(), t);
        self.customer_tier.offer(ev.customer_tier.clone(), t);
        self.amount.offer(ev.amount, t);
        self.items.offer((!ev.items.is_empty()).then(|| ev.items.clone()), t);
        self.item_count.offer(ev.items_count(), t);
        self.status.offer(Some((ev.kind, ev.name.clone())), t);
        if self.events == 0 || t < self.first_event_unix_nano {
            self.first_event_unix_nano = t;
        }
        self.last_event_unix_nano = self.last_event_unix_nano.max(t);
        self.events += 1;
    }

    pub fn customer_id(&self) -> Option<&str> {
        self.customer_id.value.as_deref()
    }

    /// Gives the order a customer and tier that no event stated (from its trace's spans); an
    /// event's own values are kept. Returns whether the customer was filled in.
    pub fn fill_customer(&mut self, customer: Option<&str>, tier: Option<&str>) -> bool {
        let t = self.last_event_unix_nano;
        if self.customer_tier.value.is_none()
            && let Some(tier) = tier
        {
            self.customer_tier = Timed {
                value: Some(tier.to_string()),
                time: t,
            };
        }
        match customer {
            Some(c) if self.customer_id.value.is_none() => {
                self.customer_id = Timed {
                    value: Some(c.to_string()),
                    time: t,
                };
                true
            }
            _ => false,
        }
    }

    /// The customer's tier if an event about this order stated one.
    pub fn customer_tier(&self) -> Option<&str> {
        self.customer_tier.value.as_deref()
    }

    /// The order value: the latest stated amount, else the latest line items' sum.
    pub fn value(&self) -> Option<Money> {
        self.amount.value.or_else(|| {
            let items = self.items.value.as_ref()?;
            let first = items.first()?.unit_price?;
            let mut total = Money::zero(first.currency());
            for it in items {
                total = total.checked_add(it.total()?.ok()?).ok()?;
            }
            Some(total)
        })
    }

    /// The latest line items.
    pub fn items(&self) -> &[LineItem] {
        self.items.value.as_deref().unwrap_or(&[])
    }

    /// Number of items: the latest stated count, else the quantities of the latest line items.
    pub fn item_count(&self) -> Option<i64> {
        self.item_count.value
    }

    /// The latest event's kind and name.
    pub fn status(&self) -> Option<(EventKind, &str)> {
        self.status.value.as_ref().map(|(k, n)| (*k, n.as_str()))
    }
}

/// What the spans and events of one trace said about its customer and order (the join of an
/// event without a customer, such as the OpenTelemetry Demo's `OrderResult`, to its trace).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceLink {
    pub customer_id: Option<String>,
    pub customer_tier: Option<String>,
    pub order_id: Option<String>,
}

/// A customer as known from events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerContext {
    pub customer_id: String,
    tier: Timed<String>,
    last_order_id: Timed<String>,
    pub last_event_unix_nano: u64,
    pub events: u64,
}

impl CustomerContext {
    pub fn new(customer_id: impl Into<String>) -> Self {
        CustomerContext {
            customer_id: customer_id.into(),
            tier: Timed::default(),
            last_order_id: Timed::default(),
            last_event_unix_nano: 0,
            events: 0,
        }
    }

    pub fn apply(&mut self, ev: &BusinessEvent) {
        let t = ev.time_unix_nano;
        self.tier.offer(ev.customer_tier.clone(), t);
        self.last_order_id.offer(ev.order_id.clone(), t);
        self.last_event_unix_nano = self.last_event_unix_nano.max(t);
        self.events += 1;
    }

    pub fn tier(&self) -> Option<&str> {
        self.tier.value.as_deref()
    }

    pub fn last_order_id(&self) -> Option<&str> {
        self.last_order_id.value.as_deref()
    }
}

/// A flat, serializable view of an order (for APIs and debugging).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderSummary {
    pub order_id: String,
    pub customer_id: Option<String>,
    pub value: Option<Money>,
    pub item_count: Option<i64>,
    pub status: Option<String>,
}

impl From<&OrderContext> for OrderSummary {
    fn from(o: &OrderContext) -> Self {
        OrderSummary {
            order_id: o.order_id.clone(),
            customer_id: o.customer_id().map(str::to_string),
            value: o.value(),
            item_count: o.item_count(),
            status: o.status().map(|(_, n)| n.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::Currency;

    fn ev(name: &str, t: u64, amount: Option<&str>) -> BusinessEvent {
        let mut e = BusinessEvent::new(name, t);
        e.order_id = Some("o".into());
        e.amount = amount.map(|a| Money::parse_amount(a, Currency::USD).unwrap());
        e
    }

    #[test]
    fn latest_event_wins_per_field_in_any_order() {
        let events = [
            ev("cart.updated", 1, Some("8")),
            ev("order.placed", 2, Some("10")),
            ev("order.shipped", 3, None),
        ];
        let perms: [[usize; 3]; 6] = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        for p in perms {
            let mut o = OrderContext::new("o");
            for i in p {
                o.apply(&events[i]);
                o.apply(&events[i]); // duplicates change nothing but the count
            }
            assert_eq!(o.value().unwrap().amount_string(), "10.00", "{p:?}");
            assert_eq!(o.status().unwrap().0, EventKind::OrderShipped, "{p:?}");
            assert_eq!((o.first_event_unix_nano, o.last_event_unix_nano), (1, 3));
            assert_eq!(o.events, 6);
        }
    }

    #[test]
    fn value_falls_back_to_line_items() {
        let mut e = ev("order.placed", 1, None);
        e.items = vec![
            LineItem {
                sku: "a".into(),
                quantity: 3,
                unit_price: Some(Money::parse_amount("19.99", Currency::USD).unwrap()),
            },
            LineItem {
                sku: "b".into(),
                quantity: 1,
                unit_price: Some(Money::parse_amount("0.03", Currency::USD).unwrap()),
            },
        ];
        let mut o = OrderContext::new("o");
        o.apply(&e);
        assert_eq!(o.value().unwrap().amount_string(), "60.00");
        assert_eq!(o.item_count(), Some(2), "line items, as the demo counts them");
        let s = OrderSummary::from(&o);
        assert_eq!(s.status.as_deref(), Some("order.placed"));
    }
}
