//! Reading exact money out of OTLP attribute values.
//!
//! Accepted forms ([`money_from_value`]):
//!
//! | value | example | result |
//! | --- | --- | --- |
//! | string, amount only | `"123.45"` | in the default currency (an error without one) |
//! | string with currency | `"USD 123.45"`, `"123.45 USD"` | that currency |
//! | int | `123` | 123 units of the default currency |
//! | double | `19.99` | see below |
//! | map (`google.type.Money`) | `{units: 19, nanos: 990000000, currency_code: "USD"}` | exact; `currency_code` optional |
//!
//! **Doubles** are read through their *shortest decimal representation*: the
//! shortest decimal string that parses back to the same `f64` (what Rust's
//! `Display` prints and what most JSON encoders emit), e.g. the double nearest
//! to 19.99 reads as exactly `19.99`, not `19.989999999999998436805981327779591083526611328125`.
//! That string is then parsed exactly; a representation with more than nine
//! decimals (`0.1 + 0.2` = `0.30000000000000004`) is rounded half-to-even to nine
//! decimals (nano-units). No float arithmetic is ever done on the amount.
//!
//! A pair of attributes holding `units` and `nanos` is read with [`money_from_units_nanos`].

use bizpilot_core::view::ValueRef;
use bizpilot_core::{Currency, Money, MoneyError};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

const NANOS: i128 = 1_000_000_000;

/// The currency used when only a bare number has to be compared (thresholds).
fn neutral() -> Currency {
    Currency::new("XXX").unwrap_or(Currency::USD)
}

/// Money from an integer count of nano-units.
pub fn money_from_nanos(nanos: i128, currency: Currency) -> Result<Money, MoneyError> {
    let units = i64::try_from(nanos / NANOS).map_err(|_| MoneyError::Overflow)?;
    let frac = i32::try_from(nanos % NANOS).map_err(|_| MoneyError::Overflow)?;
    Money::from_units_nanos(units, frac, currency)
}

/// Nano-units of a double, through its shortest decimal representation (rounded
/// half-to-even to nine decimals when longer). NaN and infinities are errors.
pub fn nanos_from_f64(f: f64) -> Result<i128, MoneyError> {
    if !f.is_finite() {
        return Err(MoneyError::Amount(f.to_string()));
    }
    // `Display` for f64 prints the shortest round-trip decimal, never in exponent form.
    let s = f.to_string();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.as_str()),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int_v: i128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| MoneyError::Overflow)?
    };
    let (head, tail) = frac.split_at(frac.len().min(9));
    let mut frac_v: i128 = if head.is_empty() {
        0
    } else {
        head.parse::<i128>().map_err(|_| MoneyError::Amount(s.clone()))? * 10i128.pow(9 - head.len() as u32)
    };
    if !tail.is_empty() {
        // Round half to even on the dropped digits.
        let first = tail.as_bytes().first().copied().unwrap_or(b'0');
        let rest_nonzero = tail.bytes().skip(1).any(|b| b != b'0');
        let round_up = match first.cmp(&b'5') {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => rest_nonzero || (frac_v & 1) == 1,
        };
        if round_up {
            frac_v += 1;
        }
    }
    let v = int_v
        .checked_mul(NANOS)
        .and_then(|x| x.checked_add(frac_v))
        .ok_or(MoneyError::Overflow)?;
    Ok(if neg { -v } else { v })
}

/// Money from a double, through its shortest decimal representation (see the module doc).
pub fn money_from_f64(f: f64, currency: Currency) -> Result<Money, MoneyError> {
    money_from_nanos(nanos_from_f64(f)?, currency)
}

/// Money from an OTLP value in any accepted form (see the module doc).
pub fn money_from_value(v: &Value, default_currency: Option<Currency>) -> Result<Money, MoneyError> {
    let need_currency = || default_currency.ok_or_else(|| MoneyError::Currency("missing".into()));
    match v {
        Value::StringValue(s) => Money::parse(s, default_currency),
        Value::IntValue(i) => Money::from_units_nanos(*i, 0, need_currency()?),
        Value::DoubleValue(d) => money_from_f64(*d, need_currency()?),
        Value::KvlistValue(list) => money_from_kvlist(&list.values, default_currency),
        other => Err(MoneyError::Amount(format!("{other:?}"))),
    }
}

/// A `google.type.Money`-shaped map: `units`, `nanos`, `currency_code` (or `currencyCode`, `currency`).
fn money_from_kvlist(values: &[KeyValue], default_currency: Option<Currency>) -> Result<Money, MoneyError> {
    let get = |k: &str| {
        values
            .iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    };
    let currency = match get("currency_code")
        .or_else(|| get("currencyCode"))
        .or_else(|| get("currency"))
    {
        Some(Value::StringValue(c)) => Currency::new(c)?,
        Some(other) => return Err(MoneyError::Currency(format!("{other:?}"))),
        None => default_currency.ok_or_else(|| MoneyError::Currency("missing".into()))?,
    };
    let units = get("units").ok_or_else(|| MoneyError::Amount("map without units".into()))?;
    money_from_units_nanos(units, get("nanos"), currency)
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::IntValue(i) => Some(*i),
        Value::StringValue(s) => s.trim().parse().ok(),
        Value::DoubleValue(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Some(*d as i64),
        _ => None,
    }
}

/// Money from `units` and optional `nanos` values (ints, or strings holding ints),
/// as in `google.type.Money`.
pub fn money_from_units_nanos(units: &Value, nanos: Option<&Value>, currency: Currency) -> Result<Money, MoneyError> {
    let u = int_of(units).ok_or_else(|| MoneyError::Amount(format!("units {units:?}")))?;
    let n = match nanos {
        Some(v) => int_of(v).ok_or_else(|| MoneyError::Amount(format!("nanos {v:?}")))?,
        None => 0,
    };
    let n = i32::try_from(n).map_err(|_| MoneyError::Amount(format!("nanos {n}")))?;
    Money::from_units_nanos(u, n, currency)
}

/// A decimal number in nano-units, for comparisons against thresholds: a decimal
/// string (a currency code in it is ignored), an int or a double (shortest form).
pub fn decimal_nanos(v: &Value) -> Option<i128> {
    match v {
        Value::StringValue(s) => parse_decimal_nanos(s).ok(),
        Value::IntValue(i) => i128::from(*i).checked_mul(NANOS),
        Value::DoubleValue(d) => nanos_from_f64(*d).ok(),
        Value::KvlistValue(l) => money_from_kvlist(&l.values, Some(neutral())).ok().map(|m| m.nanos()),
        _ => None,
    }
}

/// Parses a decimal string (`"12.5"`, `"USD 12.5"`) into nano-units.
pub fn parse_decimal_nanos(s: &str) -> Result<i128, MoneyError> {
    Money::parse(s, Some(neutral())).map(|m| m.nanos())
}

/// [`decimal_nanos`] of a value read through a zero-copy view.
pub fn decimal_nanos_ref(v: &ValueRef<'_>) -> Option<i128> {
    match v {
        ValueRef::Str(s) => parse_decimal_nanos(s).ok(),
        ValueRef::Int(i) => i128::from(*i).checked_mul(NANOS),
        ValueRef::Double(d) => nanos_from_f64(*d).ok(),
        ValueRef::Bool(_) => None,
        ValueRef::Other(v) => decimal_nanos(v),
    }
}

/// [`money_from_value`] of a value read through a zero-copy view.
pub fn money_from_ref(v: &ValueRef<'_>, default_currency: Option<Currency>) -> Result<Money, MoneyError> {
    let need_currency = || default_currency.ok_or_else(|| MoneyError::Currency("missing".into()));
    match v {
        ValueRef::Str(s) => Money::parse(s, default_currency),
        ValueRef::Int(i) => Money::from_units_nanos(*i, 0, need_currency()?),
        ValueRef::Double(d) => money_from_f64(*d, need_currency()?),
        ValueRef::Bool(b) => Err(MoneyError::Amount(format!("BoolValue({b})"))),
        ValueRef::Other(v) => money_from_value(v, default_currency),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValueList};

    fn usd(s: &str) -> Money {
        Money::parse_amount(s, Currency::USD).unwrap()
    }

    #[test]
    fn doubles_read_through_shortest_decimal() {
        assert_eq!(money_from_f64(19.99, Currency::USD).unwrap(), usd("19.99"));
        assert_eq!(money_from_f64(0.1 + 0.2, Currency::USD).unwrap(), usd("0.3"));
        assert_eq!(money_from_f64(1234567.89, Currency::USD).unwrap(), usd("1234567.89"));
        assert_eq!(money_from_f64(-5.5, Currency::USD).unwrap(), usd("-5.5"));
        assert_eq!(money_from_f64(1e-10, Currency::USD).unwrap(), usd("0"));
        assert_eq!(
            nanos_from_f64(0.0000000015).unwrap(),
            2,
            "half to even rounds 1.5 up to 2"
        );
        assert_eq!(
            nanos_from_f64(0.0000000025).unwrap(),
            2,
            "half to even rounds 2.5 down to 2"
        );
        assert!(money_from_f64(f64::NAN, Currency::USD).is_err());
        assert!(money_from_f64(f64::INFINITY, Currency::USD).is_err());
        // Every cent value up to 10k round-trips exactly.
        for cents in (0..1_000_000i64).step_by(7) {
            let f = cents as f64 / 100.0;
            assert_eq!(
                money_from_f64(f, Currency::USD).unwrap(),
                Money::from_minor(cents, Currency::USD)
            );
        }
    }

    #[test]
    fn value_forms() {
        let s = |x: &str| Value::StringValue(x.into());
        assert_eq!(money_from_value(&s("USD 1.5"), None).unwrap(), usd("1.5"));
        assert_eq!(money_from_value(&s("1.5"), Some(Currency::USD)).unwrap(), usd("1.5"));
        assert!(money_from_value(&s("1.5"), None).is_err());
        assert_eq!(
            money_from_value(&Value::IntValue(7), Some(Currency::USD)).unwrap(),
            usd("7")
        );
        let map = Value::KvlistValue(KeyValueList {
            values: vec![
                crate::attrs::kv_i64("units", 19),
                crate::attrs::kv_i64("nanos", 990_000_000),
                crate::attrs::kv_str("currency_code", "EUR"),
            ],
        });
        assert_eq!(money_from_value(&map, None).unwrap().to_string(), "EUR 19.99");
        assert!(money_from_value(&Value::BoolValue(true), Some(Currency::USD)).is_err());
        let _ = AnyValue::default();
    }

    #[test]
    fn units_nanos_pairs_and_decimals() {
        let m = money_from_units_nanos(&Value::IntValue(3), Some(&Value::IntValue(50_000_000)), Currency::USD);
        assert_eq!(m.unwrap(), usd("3.05"));
        let m = money_from_units_nanos(&Value::StringValue("12".into()), None, Currency::USD);
        assert_eq!(m.unwrap(), usd("12"));
        assert_eq!(
            decimal_nanos(&Value::StringValue("USD 2.5".into())),
            Some(2_500_000_000)
        );
        assert_eq!(decimal_nanos(&Value::IntValue(3)), Some(3_000_000_000));
        assert_eq!(decimal_nanos(&Value::DoubleValue(0.25)), Some(250_000_000));
        assert_eq!(decimal_nanos(&Value::StringValue("abc".into())), None);
        assert_eq!(money_from_nanos(-1_500_000_000, Currency::USD).unwrap(), usd("-1.5"));
    }
}
