//! Exact money.
//!
//! An amount is an integer count of nano-units (10⁻⁹ of the currency's major
//! unit, as in `google.type.Money`'s `units` + `nanos`) in an `i128`, with an
//! ISO 4217 currency code. Sums, differences and multiplication by quantities
//! are exact integer arithmetic; there is no floating point anywhere. Rounding
//! happens only when an amount is *shown* with the currency's minor units, and
//! a float exists only at the Prometheus edge ([`Money::to_f64_lossy`]).

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

const NANOS: i128 = 1_000_000_000;

/// An ISO 4217 currency code such as `USD`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    pub const USD: Currency = Currency(*b"USD");
    pub const EUR: Currency = Currency(*b"EUR");

    pub fn new(code: &str) -> Result<Self, MoneyError> {
        let b = code.trim().as_bytes();
        if b.len() != 3 || !b.iter().all(u8::is_ascii_alphabetic) {
            return Err(MoneyError::Currency(code.to_string()));
        }
        Ok(Currency([
            b[0].to_ascii_uppercase(),
            b[1].to_ascii_uppercase(),
            b[2].to_ascii_uppercase(),
        ]))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// Digits after the decimal point when shown (ISO 4217 minor units).
    pub fn minor_digits(&self) -> u32 {
        match &self.0 {
            b"JPY" | b"KRW" | b"VND" | b"CLP" | b"ISK" | b"HUF" | b"XOF" | b"XAF" | b"UGX" | b"PYG" | b"RWF" => 0,
            b"BHD" | b"KWD" | b"OMR" | b"JOD" | b"TND" | b"LYD" | b"IQD" => 3,
            _ => 2,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Errors parsing or combining money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("invalid currency code {0:?}")]
    Currency(String),
    #[error("invalid amount {0:?}")]
    Amount(String),
    #[error("more than 9 decimal places in {0:?}")]
    Precision(String),
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount out of range")]
    Overflow,
}

/// An exact amount of money.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    nanos: i128,
    currency: Currency,
}

impl Money {
    pub fn zero(currency: Currency) -> Self {
        Money { nanos: 0, currency }
    }

    /// From minor units (cents for USD): `Money::from_minor(12345, USD)` is 123.45.
    pub fn from_minor(minor: i64, currency: Currency) -> Self {
        let scale = 10i128.pow(9 - currency.minor_digits());
        Money {
            nanos: i128::from(minor) * scale,
            currency,
        }
    }

    /// From an amount in nano-units of `currency` (what [`Money::nanos`] returns).
    pub const fn from_nanos(nanos: i128, currency: Currency) -> Self {
        Money { nanos, currency }
    }

    /// From `google.type.Money`-style units and nanos (the OpenTelemetry Demo's `Money`).
    pub fn from_units_nanos(units: i64, nanos: i32, currency: Currency) -> Result<Self, MoneyError> {
        if nanos.unsigned_abs() >= 1_000_000_000 || (units > 0 && nanos < 0) || (units < 0 && nanos > 0) {
            return Err(MoneyError::Amount(format!("units={units} nanos={nanos}")));
        }
        Ok(Money {
            nanos: i128::from(units) * NANOS + i128::from(nanos),
            currency,
        })
    }

    /// Parses a decimal amount (`"123.45"`, `"-0.5"`, `"1e3"` is rejected) in `currency`.
    pub fn parse_amount(s: &str, currency: Currency) -> Result<Self, MoneyError> {
        Ok(Money {
            nanos: parse_decimal_nanos(s)?,
            currency,
        })
    }

    /// Parses `"USD 123.45"`, `"123.45 USD"` or, with a default currency, `"123.45"`.
    pub fn parse(s: &str, default_currency: Option<Currency>) -> Result<Self, MoneyError> {
        let t = s.trim();
        let mut parts = t.split_whitespace();
        let (a, b) = (parts.next(), parts.next());
        if parts.next().is_some() {
            return Err(MoneyError::Amount(s.to_string()));
        }
        match (a, b) {
            (Some(x), Some(y)) => {
                if x.chars().all(|c| c.is_ascii_alphabetic()) {
                    Money::parse_amount(y, Currency::new(x)?)
                } else {
                    Money::parse_amount(x, Currency::new(y)?)
                }
            }
            (Some(x), None) => match default_currency {
                Some(c) => Money::parse_amount(x, c),
                None => Err(MoneyError::Currency(format!("missing in {s:?}"))),
            },
            _ => Err(MoneyError::Amount(s.to_string())),
        }
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The amount in nano-units of the currency.
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        Ok(Money {
            nanos: self.nanos.checked_add(other.nanos).ok_or(MoneyError::Overflow)?,
            currency: self.currency,
        })
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        Ok(Money {
            nanos: self.nanos.checked_sub(other.nanos).ok_or(MoneyError::Overflow)?,
            currency: self.currency,
        })
    }

    /// Multiplies by an integer quantity (a line item: unit price × quantity).
    pub fn checked_mul(self, quantity: i64) -> Result<Money, MoneyError> {
        Ok(Money {
            nanos: self
                .nanos
                .checked_mul(i128::from(quantity))
                .ok_or(MoneyError::Overflow)?,
            currency: self.currency,
        })
    }

    /// Compares amounts of the same currency.
    pub fn cmp_amount(&self, other: &Money) -> Option<Ordering> {
        (self.currency == other.currency).then(|| self.nanos.cmp(&other.nanos))
    }

    /// The amount in minor units, rounded half to even (for display and integer exports).
    pub fn to_minor_rounded(&self) -> i128 {
        let scale = 10i128.pow(9 - self.currency.minor_digits());
        let q = self.nanos.div_euclid(scale);
        let r = self.nanos.rem_euclid(scale);
        match (2 * r).cmp(&scale) {
            Ordering::Less => q,
            Ordering::Greater => q + 1,
            Ordering::Equal => q + (q & 1),
        }
    }

    /// The exact decimal amount without trailing zeros beyond the currency's minor digits
    /// (`"123.45"`, `"0.125"` when sub-cent precision is present).
    pub fn amount_string(&self) -> String {
        let neg = self.nanos < 0;
        let abs = self.nanos.unsigned_abs();
        let units = abs / NANOS as u128;
        let frac = abs % NANOS as u128;
        let mut frac_s = format!("{frac:09}");
        let min = self.currency.minor_digits() as usize;
        while frac_s.len() > min && frac_s.ends_with('0') {
            frac_s.pop();
        }
        let sign = if neg { "-" } else { "" };
        if frac_s.is_empty() {
            format!("{sign}{units}")
        } else {
            format!("{sign}{units}.{frac_s}")
        }
    }

    /// A float for metric exports only. Never sum these.
    pub fn to_f64_lossy(&self) -> f64 {
        let units = (self.nanos / NANOS) as f64;
        let frac = (self.nanos % NANOS) as f64 / 1e9;
        units + frac
    }
}

fn parse_decimal_nanos(s: &str) -> Result<i128, MoneyError> {
    let t = s.trim();
    let bad = || MoneyError::Amount(s.to_string());
    let (neg, digits) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    let is_digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit() || b == b'_' || b == b',');
    if !is_digits(int) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if frac.len() > 9 {
        // Extra digits are allowed only if they are zeros.
        if frac[9..].bytes().any(|b| b != b'0') {
            return Err(MoneyError::Precision(s.to_string()));
        }
    }
    let int_clean: String = int.chars().filter(|c| c.is_ascii_digit()).collect();
    let int_v: i128 = if int_clean.is_empty() {
        0
    } else {
        int_clean.parse().map_err(|_| MoneyError::Overflow)?
    };
    let frac9 = &frac[..frac.len().min(9)];
    let frac_v: i128 = if frac9.is_empty() {
        0
    } else {
        frac9.parse::<i128>().map_err(|_| bad())? * 10i128.pow(9 - frac9.len() as u32)
    };
    let v = int_v
        .checked_mul(NANOS)
        .and_then(|x| x.checked_add(frac_v))
        .ok_or(MoneyError::Overflow)?;
    Ok(if neg { -v } else { v })
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.currency, self.amount_string())
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Money({self})")
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, MoneyError> {
        Money::parse(s, None)
    }
}

/// JSON form: `{"currency":"USD","amount":"123.45"}` — the amount as a string, never a float.
#[derive(Serialize, Deserialize)]
struct MoneyJson {
    currency: Currency,
    amount: String,
}

impl Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        MoneyJson {
            currency: self.currency,
            amount: self.amount_string(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = MoneyJson::deserialize(d)?;
        Money::parse_amount(&j.amount, j.currency).map_err(serde::de::Error::custom)
    }
}

/// A running total per currency: sums of several currencies are kept apart, never converted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoneyTotals {
    totals: Vec<Money>,
}

impl MoneyTotals {
    pub fn add(&mut self, m: Money) -> Result<(), MoneyError> {
        match self.totals.iter_mut().find(|t| t.currency == m.currency) {
            Some(t) => *t = t.checked_add(m)?,
            None => self.totals.push(m),
        }
        Ok(())
    }
    pub fn sub(&mut self, m: Money) -> Result<(), MoneyError> {
        match self.totals.iter_mut().find(|t| t.currency == m.currency) {
            Some(t) => *t = t.checked_sub(m)?,
            None => self.totals.push(Money::zero(m.currency).checked_sub(m)?),
        }
        Ok(())
    }
    pub fn get(&self, c: Currency) -> Money {
        self.totals
            .iter()
            .find(|t| t.currency == c)
            .copied()
            .unwrap_or_else(|| Money::zero(c))
    }
    pub fn iter(&self) -> impl Iterator<Item = &Money> {
        self.totals.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Money {
        Money::parse_amount(s, Currency::USD).unwrap()
    }

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(Money::parse("USD 123.45", None).unwrap(), usd("123.45"));
        assert_eq!(Money::parse("123.45 usd", None).unwrap(), usd("123.45"));
        assert_eq!(Money::parse("123.45", Some(Currency::USD)).unwrap(), usd("123.45"));
        assert_eq!(
            Money::from_units_nanos(123, 450_000_000, Currency::USD).unwrap(),
            usd("123.45")
        );
        assert_eq!(Money::from_minor(12345, Currency::USD), usd("123.45"));
        assert_eq!(usd("-0.5").amount_string(), "-0.50");
        assert!(Money::parse("123.45", None).is_err());
        assert!(Money::parse_amount("1e3", Currency::USD).is_err());
        assert!(Money::parse_amount("0.0000000001", Currency::USD).is_err());
        assert!(Money::parse_amount("", Currency::USD).is_err());
        assert!(Currency::new("US").is_err());
    }

    #[test]
    fn sums_are_exact_where_floats_drift() {
        // 0.1 + 0.2 ten million times: floats drift, integers do not.
        let mut total = Money::zero(Currency::USD);
        let mut float = 0.0f64;
        for _ in 0..10_000_000 {
            total = total.checked_add(usd("0.1")).unwrap();
            float += 0.1;
        }
        assert_eq!(total.amount_string(), "1000000.00");
        assert_ne!(float, 1_000_000.0, "the float sum drifted, as expected");
    }

    #[test]
    fn currencies_never_mix() {
        let eur = Money::parse("EUR 1", None).unwrap();
        assert!(usd("1").checked_add(eur).is_err());
        let mut t = MoneyTotals::default();
        t.add(usd("1.25")).unwrap();
        t.add(eur).unwrap();
        t.add(usd("2.75")).unwrap();
        assert_eq!(t.get(Currency::USD), usd("4"));
        assert_eq!(t.get(Currency::EUR).amount_string(), "1.00");
    }

    #[test]
    fn line_items_and_rounding() {
        let line = usd("19.99").checked_mul(3).unwrap();
        assert_eq!(line, usd("59.97"));
        assert_eq!(usd("0.125").to_minor_rounded(), 12, "half to even");
        assert_eq!(usd("0.135").to_minor_rounded(), 14);
        assert_eq!(usd("0.125").amount_string(), "0.125", "exact value kept");
        let jpy = Money::parse("JPY 1500", None).unwrap();
        assert_eq!(jpy.amount_string(), "1500");
    }

    #[test]
    fn json_uses_strings() {
        let j = serde_json::to_string(&usd("10.10")).unwrap();
        assert_eq!(j, r#"{"currency":"USD","amount":"10.10"}"#);
        let back: Money = serde_json::from_str(&j).unwrap();
        assert_eq!(back, usd("10.1"));
    }
}
