//! The OpenTelemetry Demo's Kafka side, for tests: `oteldemo.OrderResult` messages as the demo's
//! checkout publishes them, with their ground truth computed the demo's way.
//!
//! Pinned to demo release 3.0.0 (`open-telemetry/opentelemetry-demo`):
//! - schema `pb/demo.proto`: `OrderResult {order_id = 1, shipping_tracking_id = 2, shipping_cost = 3
//!   (Money), shipping_address = 4 (Address), items = 5 (repeated OrderItem)}`, `OrderItem {item = 1
//!   (CartItem), cost = 2 (Money)}`, `CartItem {product_id = 1, quantity = 2 (int32)}`, `Money
//!   {currency_code = 1, units = 2 (int64), nanos = 3 (int32)}`, `Address {street_address = 1, city = 2,
//!   state = 3, country = 4, zip_code = 5}`;
//! - producer `src/checkout/main.go` (`sendToPostProcessor`: topic `orders`, no key, the value is the
//!   marshalled OrderResult; `createProducerSpan` injects the W3C `traceparent` of the `orders publish`
//!   producer span into the headers) and `src/checkout/kafka/producer.go` (topic name);
//! - money `src/checkout/money/money.go` (`Sum`, `MultiplySlow`) and the span attribute
//!   `demo.order.amount` (`PlaceOrder`: `"%d.%02d"` of the total's units and nanos / 10^7, as a float64).
//!
//! The messages are encoded here by hand from the schema's field numbers (not with bizpilot's own types),
//! and totals are computed with the demo's `(units, nanos)` algorithm (not with `bizpilot_core::Money`), so
//! what a test compares with bizpilot's output is independent of bizpilot's code.
#![allow(dead_code)]

/// A demo `Money`: `(currency code, units, nanos)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoMoney {
    pub currency: String,
    pub units: i64,
    pub nanos: i32,
}

impl DemoMoney {
    pub fn new(currency: &str, units: i64, nanos: i32) -> Self {
        DemoMoney {
            currency: currency.into(),
            units,
            nanos,
        }
    }

    /// money.go `Sum` (both valid, same currency).
    pub fn sum(&self, r: &DemoMoney) -> DemoMoney {
        assert_eq!(self.currency, r.currency, "money.go refuses mismatching currencies");
        const MOD: i64 = 1_000_000_000;
        let mut units = self.units + r.units;
        let mut nanos = i64::from(self.nanos) + i64::from(r.nanos);
        if (units == 0 && nanos == 0) || (units > 0 && nanos >= 0) || (units < 0 && nanos <= 0) {
            units += nanos / MOD;
            nanos %= MOD;
        } else if units > 0 {
            units -= 1;
            nanos += MOD;
        } else {
            units += 1;
            nanos -= MOD;
        }
        DemoMoney {
            currency: self.currency.clone(),
            units,
            nanos: nanos as i32,
        }
    }

    /// money.go `MultiplySlow`: repeated `Sum`.
    pub fn times(&self, n: u32) -> DemoMoney {
        let mut out = self.clone();
        for _ in 1..n {
            out = out.sum(self);
        }
        out
    }

    /// The amount in nano-units.
    pub fn nanos(&self) -> i128 {
        i128::from(self.units) * 1_000_000_000 + i128::from(self.nanos)
    }

    /// The exact decimal text of the amount (no trailing zeros).
    pub fn decimal(&self) -> String {
        let neg = self.units < 0 || self.nanos < 0;
        let (u, n) = (self.units.unsigned_abs(), self.nanos.unsigned_abs());
        let sign = if neg { "-" } else { "" };
        if n == 0 {
            return format!("{sign}{u}");
        }
        let f = format!("{n:09}");
        format!("{sign}{u}.{}", f.trim_end_matches('0'))
    }

    /// The checkout's `demo.order.amount` for this total (3.0.0 `src/checkout/main.go`).
    pub fn span_amount(&self) -> f64 {
        format!("{}.{:02}", self.units, self.nanos / 10_000_000)
            .parse()
            .expect("a float")
    }
}

/// One line of an order: product, quantity, unit cost in the user's currency.
#[derive(Debug, Clone)]
pub struct Line {
    pub product: String,
    pub quantity: u32,
    pub cost: DemoMoney,
}

/// An order as the demo's checkout completes it.
#[derive(Debug, Clone)]
pub struct DemoOrder {
    pub order_id: String,
    pub tracking_id: String,
    pub shipping: DemoMoney,
    pub lines: Vec<Line>,
}

impl DemoOrder {
    /// The checkout's total (`PlaceOrder`): zero in the user's currency, + shipping, + each line's
    /// `MultiplySlow(cost, quantity)`, in that order.
    pub fn total(&self) -> DemoMoney {
        let mut t = DemoMoney::new(&self.shipping.currency, 0, 0).sum(&self.shipping);
        for l in &self.lines {
            t = t.sum(&l.cost.times(l.quantity));
        }
        t
    }

    /// The marshalled `oteldemo.OrderResult`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        field_str(&mut out, 1, &self.order_id);
        field_str(&mut out, 2, &self.tracking_id);
        field_msg(&mut out, 3, &money(&self.shipping));
        let mut addr = Vec::new();
        field_str(&mut addr, 1, "1600 Amphitheatre Parkway");
        field_str(&mut addr, 2, "Mountain View");
        field_str(&mut addr, 3, "CA");
        field_str(&mut addr, 4, "United States");
        field_str(&mut addr, 5, "94043");
        field_msg(&mut out, 4, &addr);
        for l in &self.lines {
            let mut cart = Vec::new();
            field_str(&mut cart, 1, &l.product);
            field_varint(&mut cart, 2, u64::from(l.quantity));
            let mut item = Vec::new();
            field_msg(&mut item, 1, &cart);
            field_msg(&mut item, 2, &money(&l.cost));
            field_msg(&mut out, 5, &item);
        }
        out
    }
}

/// The W3C `traceparent` header value the demo's producer injects.
pub fn traceparent(trace_id: &[u8], span_id: &[u8]) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("00-{}-{}-01", hex(trace_id), hex(span_id))
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        varint(out, u64::from(tag << 3));
        varint(out, v);
    }
}

fn field_str(out: &mut Vec<u8>, tag: u32, s: &str) {
    if !s.is_empty() {
        field_msg(out, tag, s.as_bytes());
    }
}

fn field_msg(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
    varint(out, u64::from(tag << 3 | 2));
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn money(m: &DemoMoney) -> Vec<u8> {
    let mut out = Vec::new();
    field_str(&mut out, 1, &m.currency);
    // proto3 int64/int32: negative values as 10-byte two's complement varints.
    field_varint(&mut out, 2, m.units as u64);
    field_varint(&mut out, 3, i64::from(m.nanos) as u64);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_go_arithmetic() {
        let m = DemoMoney::new("USD", 1, 750_000_000);
        assert_eq!(m.times(3), DemoMoney::new("USD", 5, 250_000_000));
        assert_eq!(
            DemoMoney::new("USD", -1, -750_000_000).sum(&DemoMoney::new("USD", 2, 0)),
            DemoMoney::new("USD", 0, 250_000_000)
        );
        assert_eq!(DemoMoney::new("EUR", 12, 345_000_001).decimal(), "12.345000001");
        assert_eq!(DemoMoney::new("EUR", 12, 349_999_999).span_amount(), 12.34);
    }
}
