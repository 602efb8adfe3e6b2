//! The `business_impact` engine's snapshot: its own state types (serde-derived), in CBOR, behind a header that
//! names the format and the configuration's fingerprint. The journal ([`super::durable`]) writes one every so
//! often and drops the records it covers; a restart loads it and re-applies the records after it.
//!
//! Layout: `format marker length (u8)`, `format marker` ([`FORMAT`]), `fingerprint (u64, big-endian)`, then the
//! CBOR of the engine's state ([`super::Engine::save`]). CBOR (`ciborium`, as `order_kpi`'s snapshot) because the
//! state has maps with non-string keys (span-id hashes, (operation, dimensions) series keys, trace ids).

use bizpilot_core::{Money, MoneyTotals};

/// The snapshot's format marker: the engine's state as a CBOR map of named fields ([`super::engine::State`]).
pub const FORMAT: &str = "business_impact/snapshot/2";
/// The previous format: the same fields as a positional tuple (still restored).
pub const FORMAT_V1: &str = "business_impact/snapshot/1";

/// Why a snapshot could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot could not be encoded: {0}")]
    Encode(String),
    #[error("snapshot unreadable: {0}")]
    Decode(String),
    #[error("snapshot of format {found:?}, this build reads {FORMAT:?} and {FORMAT_V1:?}")]
    Format { found: String },
    #[error("snapshot written under another configuration (fingerprint {found:x}, now {want:x})")]
    Fingerprint { found: u64, want: u64 },
    #[error("snapshot does not fit this configuration: {0}")]
    Shape(String),
}

/// Header + CBOR of `state`, in the current format.
pub fn encode<T: serde::Serialize>(fingerprint: u64, state: &T) -> Result<Vec<u8>, SnapshotError> {
    encode_as(FORMAT, fingerprint, state)
}

pub(super) fn encode_as<T: serde::Serialize>(
    format: &str,
    fingerprint: u64,
    state: &T,
) -> Result<Vec<u8>, SnapshotError> {
    encode_into(Vec::with_capacity(1 << 16), format, fingerprint, state)
}

/// Header + CBOR of `state` in the current format, in the journal's snapshot parts (no buffer regrown or copied).
pub fn encode_parts<T: serde::Serialize>(
    fingerprint: u64,
    state: &T,
) -> Result<bizpilot_core::storage::SnapshotParts, SnapshotError> {
    let mut out = bizpilot_core::storage::SnapshotParts::new();
    write_to(&mut out, FORMAT, fingerprint, state)?;
    Ok(out)
}

fn encode_into<T: serde::Serialize>(
    mut out: Vec<u8>,
    format: &str,
    fingerprint: u64,
    state: &T,
) -> Result<Vec<u8>, SnapshotError> {
    write_to(&mut out, format, fingerprint, state)?;
    Ok(out)
}

fn write_to<T: serde::Serialize, W: std::io::Write>(
    out: &mut W,
    format: &str,
    fingerprint: u64,
    state: &T,
) -> Result<(), SnapshotError> {
    let encode = |e: std::io::Error| SnapshotError::Encode(e.to_string());
    out.write_all(&[format.len() as u8]).map_err(encode)?;
    out.write_all(format.as_bytes()).map_err(encode)?;
    out.write_all(&fingerprint.to_be_bytes()).map_err(encode)?;
    ciborium::into_writer(state, out).map_err(|e| SnapshotError::Encode(e.to_string()))
}

/// A snapshot's body (its CBOR), by format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version<'a> {
    Current(&'a [u8]),
    V1(&'a [u8]),
}

/// Checks the header (a format this build reads, `fingerprint`) and returns the body.
pub fn version(fingerprint: u64, bytes: &[u8]) -> Result<Version<'_>, SnapshotError> {
    let short = || SnapshotError::Decode("cut short (header)".into());
    let n = usize::from(*bytes.first().ok_or_else(short)?);
    let format = bytes.get(1..1 + n).ok_or_else(short)?;
    let fp = bytes
        .get(1 + n..9 + n)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes);
    let known = format == FORMAT.as_bytes() || format == FORMAT_V1.as_bytes();
    if !known {
        return Err(SnapshotError::Format {
            found: String::from_utf8_lossy(format).into_owned(),
        });
    }
    let fp = fp.ok_or_else(short)?;
    if fp != fingerprint {
        return Err(SnapshotError::Fingerprint {
            found: fp,
            want: fingerprint,
        });
    }
    let body = &bytes[9 + n..];
    Ok(if format == FORMAT.as_bytes() {
        Version::Current(body)
    } else {
        Version::V1(body)
    })
}

/// Reads a CBOR body.
pub fn cbor<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, SnapshotError> {
    ciborium::from_reader(body).map_err(|e| SnapshotError::Decode(e.to_string()))
}

/// Checks the header (the current format, `fingerprint`) and reads the state.
pub fn decode<T: serde::de::DeserializeOwned>(fingerprint: u64, bytes: &[u8]) -> Result<T, SnapshotError> {
    match version(fingerprint, bytes)? {
        Version::Current(body) => cbor(body),
        Version::V1(_) => Err(SnapshotError::Format {
            found: FORMAT_V1.to_string(),
        }),
    }
}

/// A list shared with the snapshot's copy of the state (`Arc<[T]>`: copying the state bumps a count instead of
/// copying the list; a change makes a new list), written as the list itself (the same CBOR as a `Vec<T>`).
pub mod shared {
    use std::sync::Arc;

    pub fn serialize<S: serde::Serializer, T: serde::Serialize>(v: &Arc<[T]>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
        d: D,
    ) -> Result<Arc<[T]>, D::Error> {
        let v: Vec<T> = serde::Deserialize::deserialize(d)?;
        Ok(Arc::from(v))
    }
}

/// [`shared`], with no allocation for an empty list (`None`), written as the list (empty for `None`).
pub mod shared_or_empty {
    use std::sync::Arc;

    pub fn serialize<S: serde::Serializer, T: serde::Serialize>(v: &Option<Arc<[T]>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(l) => s.collect_seq(l.iter()),
            None => s.collect_seq(std::iter::empty::<&T>()),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Arc<[T]>>, D::Error> {
        let v: Vec<T> = serde::Deserialize::deserialize(d)?;
        Ok((!v.is_empty()).then(|| Arc::from(v)))
    }
}

/// `MoneyTotals` as its list of per-currency totals (exact amounts, see `Money`'s serde form).
pub mod money_totals {
    use super::*;

    pub fn serialize<S: serde::Serializer>(t: &MoneyTotals, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(t.iter())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<MoneyTotals, D::Error> {
        let list: Vec<Money> = serde::Deserialize::deserialize(d)?;
        let mut t = MoneyTotals::default();
        for m in list {
            t.add(m).map_err(serde::de::Error::custom)?;
        }
        Ok(t)
    }
}

/// An OTLP `AnyValue` as its protobuf encoding (exact for every value kind).
pub mod any_value {
    use bizpilot_core::view::AnyValueKind;
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use prost::Message;

    pub fn serialize<S: serde::Serializer>(v: &AnyValueKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&AnyValue { value: Some(v.clone()) }.encode_to_vec())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<AnyValueKind, D::Error> {
        let b: serde_bytes_like::Bytes = serde::Deserialize::deserialize(d)?;
        AnyValue::decode(b.0.as_slice())
            .map_err(serde::de::Error::custom)?
            .value
            .ok_or_else(|| serde::de::Error::custom("empty value"))
    }

    /// Bytes read from a CBOR byte string (or a sequence of integers).
    mod serde_bytes_like {
        pub struct Bytes(pub Vec<u8>);

        impl<'de> serde::Deserialize<'de> for Bytes {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                        Ok(Bytes(v.to_vec()))
                    }
                    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                        Ok(Bytes(v))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Bytes, A::Error> {
                        let mut out = Vec::new();
                        while let Some(b) = a.next_element::<u8>()? {
                            out.push(b);
                        }
                        Ok(Bytes(out))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_of_the_previous_format_is_recognised_and_a_foreign_one_refused() {
        let b = encode_as(FORMAT_V1, 7, &(1u64, "x")).unwrap();
        let Version::V1(body) = version(7, &b).unwrap() else {
            panic!("format 1 not recognised")
        };
        assert_eq!(cbor::<(u64, String)>(body).unwrap(), (1, "x".into()));
        let foreign = encode_as("business_impact/snapshot/9", 7, &1u64).unwrap();
        let err = version(7, &foreign).unwrap_err();
        assert!(
            err.to_string().contains("snapshot/9") && err.to_string().contains(FORMAT),
            "{err}"
        );
    }

    #[test]
    fn the_header_names_format_and_configuration() {
        let b = encode(7, &(1u64, "x")).unwrap();
        assert_eq!(decode::<(u64, String)>(7, &b).unwrap(), (1, "x".into()));
        assert_eq!(
            decode::<(u64, String)>(8, &b).unwrap_err(),
            SnapshotError::Fingerprint { found: 7, want: 8 }
        );
        let mut other = b.clone();
        other[1] = b'B';
        assert!(matches!(
            decode::<(u64, String)>(7, &other),
            Err(SnapshotError::Format { .. })
        ));
        for cut in 0..b.len() {
            assert!(decode::<(u64, String)>(7, &b[..cut]).is_err(), "cut at {cut}");
        }
    }
}
