//! Protobuf business events: bizpilot's own schema `bizpilot.v1` (compiled at build time from
//! `proto/bizpilot/v1/business_event.proto`), and user schemas read by reflection from a
//! descriptor set file.

use bizpilot_core::{Currency, Money};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::Value as Json;

use crate::business::{EventError, EventFields, Item, decimal, kv_str};

/// Types generated from `proto/bizpilot/v1/business_event.proto`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/bizpilot.v1.rs"));
}

/// The encoded `FileDescriptorSet` of `bizpilot.v1` (for tools and tests that need a descriptor file).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bizpilot_v1_descriptor.bin"));

fn money(m: &v1::Money, field: &str) -> Result<(String, Option<String>), EventError> {
    let err = |message: String| EventError::Field {
        field: field.to_string(),
        message,
    };
    let currency = if m.currency_code.trim().is_empty() {
        None
    } else {
        Some(Currency::new(&m.currency_code).map_err(|e| err(e.to_string()))?)
    };
    let v =
        Money::from_units_nanos(m.units, m.nanos, currency.unwrap_or(Currency::USD)).map_err(|e| err(e.to_string()))?;
    Ok((decimal(v.nanos()), currency.map(|c| c.as_str().to_string())))
}

/// Reads a `bizpilot.v1.BusinessEvent` message.
pub fn decode_business_event(bytes: &[u8], fallback_time: Option<u64>) -> Result<EventFields, DecodeProtoError> {
    let ev = v1::BusinessEvent::decode(bytes).map_err(|e| DecodeProtoError::Protobuf(e.to_string()))?;
    event_fields(ev, fallback_time).map_err(DecodeProtoError::Event)
}

/// Why a protobuf message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeProtoError {
    #[error("invalid protobuf: {0}")]
    Protobuf(String),
    #[error(transparent)]
    Event(EventError),
}

/// The fields of a decoded `bizpilot.v1.BusinessEvent`.
pub fn event_fields(ev: v1::BusinessEvent, fallback_time: Option<u64>) -> Result<EventFields, EventError> {
    if ev.r#type.trim().is_empty() {
        return Err(EventError::Missing("type".into()));
    }
    let mut currency: Option<String> = None;
    let mut note = |c: Option<String>| {
        if currency.is_none() {
            currency = c;
        }
    };
    let amount = match &ev.amount {
        Some(m) => {
            let (a, c) = money(m, "amount")?;
            note(c);
            Some(a)
        }
        None => None,
    };
    let shipping = match &ev.shipping {
        Some(m) => {
            let (a, c) = money(m, "shipping")?;
            note(c);
            Some(a)
        }
        None => None,
    };
    let mut items = Vec::with_capacity(ev.items.len());
    for (i, it) in ev.items.iter().enumerate() {
        if it.sku.trim().is_empty() {
            return Err(EventError::Field {
                field: format!("items[{i}]"),
                message: "missing sku".into(),
            });
        }
        let unit_price = match &it.unit_price {
            Some(m) => {
                let (a, c) = money(m, &format!("items[{i}].unit_price"))?;
                note(c);
                Some(a)
            }
            None => None,
        };
        items.push(Item {
            sku: it.sku.clone(),
            quantity: it.quantity,
            unit_price,
        });
    }
    let nonzero = |b: &Vec<u8>, n: usize| b.len() == n && b.iter().any(|x| *x != 0);
    let (trace_id, span_id) = if nonzero(&ev.trace_id, 16) && nonzero(&ev.span_id, 8) {
        (ev.trace_id, ev.span_id)
    } else {
        (Vec::new(), Vec::new())
    };
    let text = |s: String| (!s.trim().is_empty()).then_some(s);
    Ok(EventFields {
        event_type: ev.r#type,
        time_unix_nano: if ev.time_unix_nano == 0 {
            fallback_time
        } else {
            Some(ev.time_unix_nano)
        },
        order_id: text(ev.order_id),
        customer_id: text(ev.customer_id),
        customer_tier: text(ev.customer_tier),
        amount,
        currency,
        shipping,
        items: (!items.is_empty()).then_some(items),
        extra: ev.attributes.iter().map(|(k, v)| kv_str(k, v.clone())).collect(),
        trace_id,
        span_id,
    })
}

/// A user protobuf message type, read by reflection and seen as JSON (proto field names,
/// 64-bit integers as numbers, default values omitted) for the business field mapping.
#[derive(Debug, Clone)]
pub struct ReflectedMessage {
    desc: MessageDescriptor,
}

impl ReflectedMessage {
    /// Loads `message` (a full name, `shop.v1.OrderEvent`) from an encoded `FileDescriptorSet`.
    pub fn from_descriptor_set(bytes: &[u8], message: &str) -> Result<Self, String> {
        let pool = DescriptorPool::decode(bytes).map_err(|e| format!("invalid descriptor set: {e}"))?;
        let desc = pool
            .get_message_by_name(message.trim_start_matches('.'))
            .ok_or_else(|| {
                let mut known: Vec<String> = pool.all_messages().map(|m| m.full_name().to_string()).collect();
                known.sort();
                known.truncate(20);
                format!(
                    "message {message:?} is not in the descriptor set (it has: {})",
                    known.join(", ")
                )
            })?;
        Ok(ReflectedMessage { desc })
    }

    /// Reads the descriptor set from a file (`protoc --descriptor_set_out`, `buf build -o`).
    pub fn from_file(path: &str, message: &str) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        Self::from_descriptor_set(&bytes, message)
    }

    pub fn full_name(&self) -> &str {
        self.desc.full_name()
    }

    /// Decodes one message as JSON.
    pub fn decode_json(&self, bytes: &[u8]) -> Result<Json, DecodeProtoError> {
        let msg =
            DynamicMessage::decode(self.desc.clone(), bytes).map_err(|e| DecodeProtoError::Protobuf(e.to_string()))?;
        let opts = SerializeOptions::new()
            .use_proto_field_name(true)
            .stringify_64_bit_integers(false)
            .skip_default_fields(true);
        msg.serialize_with_options(serde_json::value::Serializer, &opts)
            .map_err(|e| DecodeProtoError::Protobuf(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::business::BusinessMapping;

    fn sample() -> v1::BusinessEvent {
        v1::BusinessEvent {
            r#type: "order.placed".into(),
            time_unix_nano: 1_735_689_601_234_000_000,
            order_id: "o-1".into(),
            customer_id: "c-9".into(),
            amount: Some(v1::Money {
                currency_code: "EUR".into(),
                units: 59,
                nanos: 970_000_000,
            }),
            items: vec![v1::LineItem {
                sku: "A".into(),
                quantity: 3,
                unit_price: Some(v1::Money {
                    currency_code: String::new(),
                    units: 19,
                    nanos: 990_000_000,
                }),
            }],
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: [("channel".to_string(), "web".to_string())].into_iter().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn business_proto_to_fields() {
        let f = decode_business_event(&sample().encode_to_vec(), None).unwrap();
        assert_eq!(f.amount.as_deref(), Some("59.97"));
        assert_eq!(f.currency.as_deref(), Some("EUR"));
        assert_eq!(f.items.as_ref().unwrap()[0].unit_price.as_deref(), Some("19.99"));
        assert_eq!(f.trace_id, vec![1; 16]);
        assert_eq!(f.extra.len(), 1);
        assert!(matches!(
            decode_business_event(b"\xff\xff", None),
            Err(DecodeProtoError::Protobuf(_))
        ));
        let untyped = v1::BusinessEvent::default().encode_to_vec();
        assert!(matches!(
            decode_business_event(&untyped, None),
            Err(DecodeProtoError::Event(_))
        ));
        let bad_money = v1::BusinessEvent {
            amount: Some(v1::Money {
                currency_code: "USD".into(),
                units: 1,
                nanos: -5,
            }),
            ..sample()
        };
        assert!(decode_business_event(&bad_money.encode_to_vec(), None).is_err());
    }

    #[test]
    fn reflection_reads_any_message_as_json() {
        let r = ReflectedMessage::from_descriptor_set(DESCRIPTOR_SET, "bizpilot.v1.BusinessEvent").unwrap();
        let json = r.decode_json(&sample().encode_to_vec()).unwrap();
        assert_eq!(json["order_id"], "o-1");
        assert_eq!(json["amount"]["units"], 59);
        let f = BusinessMapping::default().read(&json, None).unwrap();
        assert_eq!(f.amount.as_deref(), Some("59.97"));
        assert_eq!(f.currency.as_deref(), Some("EUR"));
        let e = ReflectedMessage::from_descriptor_set(DESCRIPTOR_SET, "nope.Missing").unwrap_err();
        assert!(e.contains("bizpilot.v1.BusinessEvent"), "{e}");
        assert!(ReflectedMessage::from_descriptor_set(b"\x01\x02", "x").is_err());
    }
}
