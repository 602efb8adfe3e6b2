//! Helpers over OTLP attribute lists (`Vec<KeyValue>`): typed getters, setters
//! and deletion.
//!
//! OTLP allows a key to appear more than once; readers here take the first
//! occurrence, [`set`] replaces the first one (and removes later duplicates),
//! and [`delete`] removes them all.
//!
//! Typed getters are lenient where the meaning is clear: [`get_i64`] reads an
//! integer, an integral double or a decimal string; [`get_string`] renders a
//! scalar of any type as text. Money is read with [`get_money`] (see
//! [`crate::amount`] for the accepted forms).

use std::borrow::Cow;

use bizpilot_core::{Currency, Money, MoneyError};
pub use opentelemetry_proto::tonic::common::v1::any_value::Value;
pub use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, KeyValueList};

use crate::amount;

/// A `KeyValue` from a key and a value.
pub fn kv(key: impl Into<String>, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A string `KeyValue`.
pub fn kv_str(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

/// An integer `KeyValue`.
pub fn kv_i64(key: impl Into<String>, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

/// A double `KeyValue`.
pub fn kv_f64(key: impl Into<String>, value: f64) -> KeyValue {
    kv(key, Value::DoubleValue(value))
}

/// Index of the first attribute named `key`.
#[inline]
pub fn position(attrs: &[KeyValue], key: &str) -> Option<usize> {
    attrs.iter().position(|kv| kv.key == key)
}

/// True when an attribute named `key` is present (whatever its value).
#[inline]
pub fn contains(attrs: &[KeyValue], key: &str) -> bool {
    attrs.iter().any(|kv| kv.key == key)
}

/// The value of the first attribute named `key`, if it has one.
#[inline]
pub fn get<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// The first attribute named `key` if it is a string.
#[inline]
pub fn get_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match get(attrs, key)? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// A scalar value as text: strings borrowed, integers, doubles (shortest
/// round-trip form) and booleans rendered. Arrays, maps and bytes give `None`.
pub fn value_as_str(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::StringValue(s) => Some(Cow::Borrowed(s)),
        Value::IntValue(i) => Some(Cow::Owned(i.to_string())),
        Value::DoubleValue(d) if d.is_finite() => Some(Cow::Owned(d.to_string())),
        Value::BoolValue(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// The first attribute named `key` as text (see [`value_as_str`]).
pub fn get_string<'a>(attrs: &'a [KeyValue], key: &str) -> Option<Cow<'a, str>> {
    value_as_str(get(attrs, key)?)
}

/// A value as an integer: an int, an integral double, or a string holding an integer.
pub fn value_as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::IntValue(i) => Some(*i),
        Value::DoubleValue(d) if d.fract() == 0.0 && d.is_finite() && d.abs() < 9.0e15 => Some(*d as i64),
        Value::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The first attribute named `key` as an integer (see [`value_as_i64`]).
pub fn get_i64(attrs: &[KeyValue], key: &str) -> Option<i64> {
    value_as_i64(get(attrs, key)?)
}

/// A value as a float: a double, an int, or a string holding a number. Not for money.
pub fn value_as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::DoubleValue(d) => Some(*d),
        Value::IntValue(i) => Some(*i as f64),
        Value::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The first attribute named `key` as a float (see [`value_as_f64`]). Not for money.
pub fn get_f64(attrs: &[KeyValue], key: &str) -> Option<f64> {
    value_as_f64(get(attrs, key)?)
}

/// The first attribute named `key` as money; `None` when absent, `Some(Err)` when
/// present but not money. Accepted forms: see [`amount::money_from_value`].
pub fn get_money(
    attrs: &[KeyValue],
    key: &str,
    default_currency: Option<Currency>,
) -> Option<Result<Money, MoneyError>> {
    get(attrs, key).map(|v| amount::money_from_value(v, default_currency))
}

/// Sets `key` to `value`, replacing the first attribute of that name and removing
/// any later duplicates, or appending it.
pub fn set(attrs: &mut Vec<KeyValue>, key: &str, value: Value) {
    match position(attrs, key) {
        Some(i) => {
            if let Some(kv) = attrs.get_mut(i) {
                kv.value = Some(AnyValue { value: Some(value) });
            }
            let mut seen = 0usize;
            attrs.retain(|kv| {
                if kv.key == key {
                    seen += 1;
                    seen == 1
                } else {
                    true
                }
            });
        }
        None => attrs.push(kv(key, value)),
    }
}

/// Sets a string attribute.
pub fn set_str(attrs: &mut Vec<KeyValue>, key: &str, value: impl Into<String>) {
    set(attrs, key, Value::StringValue(value.into()));
}

/// Sets an integer attribute.
pub fn set_i64(attrs: &mut Vec<KeyValue>, key: &str, value: i64) {
    set(attrs, key, Value::IntValue(value));
}

/// Sets a double attribute.
pub fn set_f64(attrs: &mut Vec<KeyValue>, key: &str, value: f64) {
    set(attrs, key, Value::DoubleValue(value));
}

/// Sets a boolean attribute.
pub fn set_bool(attrs: &mut Vec<KeyValue>, key: &str, value: bool) {
    set(attrs, key, Value::BoolValue(value));
}

/// Adds `key` = `value` unless an attribute named `key` exists. Returns whether it was added.
pub fn insert_if_absent(attrs: &mut Vec<KeyValue>, key: &str, value: Value) -> bool {
    if contains(attrs, key) {
        return false;
    }
    attrs.push(kv(key, value));
    true
}

/// Removes every attribute named `key`; returns the first removed value.
pub fn delete(attrs: &mut Vec<KeyValue>, key: &str) -> Option<AnyValue> {
    let i = position(attrs, key)?;
    let first = attrs.remove(i).value;
    attrs.retain(|kv| kv.key != key);
    Some(first.unwrap_or_default())
}

/// Renames the first attribute `from` to `to` (removing other `from`s). When `to` already
/// exists it is kept unless `overwrite`, and `from` is removed either way. Returns whether
/// `to` got `from`'s value.
pub fn rename(attrs: &mut Vec<KeyValue>, from: &str, to: &str, overwrite: bool) -> bool {
    if from == to {
        return false;
    }
    let Some(value) = delete(attrs, from) else {
        return false;
    };
    if contains(attrs, to) && !overwrite {
        return false;
    }
    match value.value {
        Some(v) => set(attrs, to, v),
        None => {
            attrs.retain(|kv| kv.key != to);
            attrs.push(KeyValue {
                key: to.to_string(),
                value: Some(AnyValue::default()),
                ..Default::default()
            });
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<KeyValue> {
        vec![
            kv_str("s", "abc"),
            kv_i64("i", 42),
            kv_f64("d", 19.99),
            kv_str("n", " 17 "),
            kv("b", Value::BoolValue(true)),
            kv_str("m", "USD 12.50"),
        ]
    }

    #[test]
    fn getters() {
        let a = sample();
        assert_eq!(get_str(&a, "s"), Some("abc"));
        assert_eq!(get_str(&a, "i"), None);
        assert_eq!(get_string(&a, "i").as_deref(), Some("42"));
        assert_eq!(get_string(&a, "d").as_deref(), Some("19.99"));
        assert_eq!(get_string(&a, "b").as_deref(), Some("true"));
        assert_eq!(get_i64(&a, "n"), Some(17));
        assert_eq!(get_i64(&a, "d"), None);
        assert_eq!(get_f64(&a, "i"), Some(42.0));
        assert_eq!(get_money(&a, "m", None).unwrap().unwrap().to_string(), "USD 12.50");
        assert_eq!(
            get_money(&a, "d", Some(Currency::EUR)).unwrap().unwrap().to_string(),
            "EUR 19.99"
        );
        assert!(get_money(&a, "s", Some(Currency::USD)).unwrap().is_err());
        assert!(get_money(&a, "missing", None).is_none());
    }

    #[test]
    fn set_replaces_and_dedups() {
        let mut a = sample();
        a.push(kv_str("s", "dup"));
        set_str(&mut a, "s", "new");
        assert_eq!(get_str(&a, "s"), Some("new"));
        assert_eq!(a.iter().filter(|k| k.key == "s").count(), 1);
        set_i64(&mut a, "fresh", 1);
        assert_eq!(get_i64(&a, "fresh"), Some(1));
        assert!(!insert_if_absent(&mut a, "fresh", Value::IntValue(2)));
        assert_eq!(get_i64(&a, "fresh"), Some(1));
    }

    #[test]
    fn delete_and_rename() {
        let mut a = sample();
        a.push(kv_str("i", "again"));
        assert!(delete(&mut a, "i").is_some());
        assert!(!contains(&a, "i"));
        assert!(delete(&mut a, "i").is_none());
        assert!(rename(&mut a, "s", "t", false));
        assert_eq!(get_str(&a, "t"), Some("abc"));
        assert!(!contains(&a, "s"));
        // Existing target kept without overwrite; source removed.
        assert!(!rename(&mut a, "n", "t", false));
        assert_eq!(get_str(&a, "t"), Some("abc"));
        assert!(!contains(&a, "n"));
        assert!(rename(&mut a, "m", "t", true));
        assert_eq!(get_str(&a, "t"), Some("USD 12.50"));
    }
}
