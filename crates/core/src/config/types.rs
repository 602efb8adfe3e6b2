//! Value types used in component configs: durations, byte sizes, ids.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

use crate::pdata::Signal;

/// A duration written as in the OpenTelemetry Collector: `200ms`, `5s`, `1m30s`, `1h`, `1.5s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid duration {s:?} (expected e.g. \"500ms\", \"5s\", \"1m30s\")");
        let t = s.trim();
        if t == "0" {
            return Ok(Duration::default());
        }
        if t.is_empty() {
            return Err(bad());
        }
        let mut total_nanos: u128 = 0;
        let mut rest = t;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("invalid duration {s:?}: missing unit (ns, us, ms, s, m, h)"))?;
            if num_len == 0 {
                return Err(bad());
            }
            let (num, after) = rest.split_at(num_len);
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_len);
            let scale: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(bad()),
            };
            let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(bad());
            }
            let int: u128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| bad())?
            };
            let mut nanos = int.checked_mul(scale).ok_or_else(bad)?;
            if !frac_part.is_empty() {
                if frac_part.contains('.') {
                    return Err(bad());
                }
                let digits = frac_part.len().min(18) as u32;
                let frac: u128 = frac_part[..digits as usize].parse().map_err(|_| bad())?;
                nanos += frac * scale / 10u128.pow(digits);
            }
            total_nanos = total_nanos.checked_add(nanos).ok_or_else(bad)?;
            rest = next;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| bad())?;
        Ok(Duration(std::time::Duration::new(
            secs,
            (total_nanos % 1_000_000_000) as u32,
        )))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"5s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration::default())
                } else {
                    Err(E::custom(format!("invalid duration {v}: missing unit (e.g. \"{v}s\")")))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration::default())
                } else {
                    Err(E::custom(format!("invalid duration {v}: missing unit (e.g. \"{v}s\")")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A size in bytes: `1048576`, `512KiB`, `4MiB`, `1GiB`, `10MB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid size {s:?} (expected e.g. \"512KiB\", \"4MiB\", or a number of bytes)");
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        if split == 0 {
            return Err(bad());
        }
        let n: u64 = t[..split].parse().map_err(|_| bad())?;
        let mult: u64 = match t[split..].trim() {
            "" | "B" => 1,
            "KiB" | "Ki" => 1 << 10,
            "MiB" | "Mi" => 1 << 20,
            "GiB" | "Gi" => 1 << 30,
            "KB" | "kB" | "K" => 1_000,
            "MB" | "M" => 1_000_000,
            "GB" | "G" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b != 0 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b != 0 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"4MiB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A component id: `type` or `type/name`, e.g. `otlp`, `otlp/checkout`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentId {
    type_name: String,
    name: Option<String>,
}

impl ComponentId {
    pub fn new(type_name: impl Into<String>, name: Option<String>) -> Self {
        Self {
            type_name: type_name.into(),
            name,
        }
    }
    pub fn type_name(&self) -> &str {
        &self.type_name
    }
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

fn valid_type_name(t: &str) -> bool {
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl FromStr for ComponentId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (t, name) = match s.split_once('/') {
            Some((t, n)) => (t.trim(), Some(n.trim())),
            None => (s.trim(), None),
        };
        if !valid_type_name(t) {
            return Err(format!(
                "invalid component id {s:?}: the type must start with a letter and hold only letters, digits and '_'"
            ));
        }
        if let Some(n) = name {
            if n.is_empty() {
                return Err(format!("invalid component id {s:?}: empty name after '/'"));
            }
            if n.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("invalid component id {s:?}: the name must not contain spaces"));
            }
        }
        Ok(ComponentId {
            type_name: t.to_string(),
            name: name.map(str::to_string),
        })
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}/{}", self.type_name, n),
            None => f.write_str(&self.type_name),
        }
    }
}

impl<'de> Deserialize<'de> for ComponentId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl Serialize for ComponentId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A pipeline id: `traces`, `metrics/business`, `logs/impact`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PipelineId {
    pub signal: Signal,
    pub name: Option<String>,
}

impl FromStr for PipelineId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (sig, name) = match s.split_once('/') {
            Some((t, n)) => (t, Some(n)),
            None => (s, None),
        };
        let signal = Signal::parse(sig).ok_or_else(|| {
            format!("invalid pipeline id {s:?}: must start with traces, metrics or logs (e.g. \"traces/checkout\")")
        })?;
        if name.is_some_and(str::is_empty) {
            return Err(format!("invalid pipeline id {s:?}: empty name after '/'"));
        }
        Ok(PipelineId {
            signal,
            name: name.map(str::to_string),
        })
    }
}

impl fmt::Display for PipelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}/{}", self.signal, n),
            None => f.write_str(self.signal.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s: &str| s.parse::<Duration>().map(|d| d.0);
        assert_eq!(d("5s"), Ok(std::time::Duration::from_secs(5)));
        assert_eq!(d("200ms"), Ok(std::time::Duration::from_millis(200)));
        assert_eq!(d("1m30s"), Ok(std::time::Duration::from_secs(90)));
        assert_eq!(d("1.5s"), Ok(std::time::Duration::from_millis(1500)));
        assert_eq!(d("1h"), Ok(std::time::Duration::from_secs(3600)));
        assert_eq!(d("0"), Ok(std::time::Duration::ZERO));
        assert_eq!(
            d("5x"),
            Err("invalid duration \"5x\" (expected e.g. \"500ms\", \"5s\", \"1m30s\")".into())
        );
        assert!(d("5").is_err());
        assert!(d("").is_err());
        assert!(d("s").is_err());
        assert!(d("1..5s").is_err());
    }

    #[test]
    fn sizes() {
        let s = |x: &str| x.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(s("4MiB"), Ok(4 << 20));
        assert_eq!(s("512KiB"), Ok(512 << 10));
        assert_eq!(s("100"), Ok(100));
        assert_eq!(s("10MB"), Ok(10_000_000));
        assert!(s("4XB").is_err());
        assert!(s("MiB").is_err());
    }

    #[test]
    fn ids() {
        let id: ComponentId = "otlp/checkout".parse().unwrap();
        assert_eq!(id.type_name(), "otlp");
        assert_eq!(id.name(), Some("checkout"));
        assert_eq!(id.to_string(), "otlp/checkout");
        assert!("otlp/".parse::<ComponentId>().is_err());
        assert!("9otlp".parse::<ComponentId>().is_err());
        let p: PipelineId = "traces/checkout".parse().unwrap();
        assert_eq!(p.signal, Signal::Traces);
        assert!("spans/x".parse::<PipelineId>().is_err());
    }
}
