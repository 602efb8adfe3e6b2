//! How the engine reads a span and its resource: from decoded `opentelemetry-proto` structs or through
//! zero-copy views over the encoded request ([`bizpilot_core::view`]). Both give the same answers; the
//! view path allocates only for what the engine keeps (the fields of matched operations and of ERROR
//! spans).

use bizpilot_business::attrs::KeyValue;
use bizpilot_core::view::{ResourceView, SpanView, ValueRef};

use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};

/// The fields of a span the engine reads.
pub(crate) trait SpanRead {
    fn name(&self) -> &str;
    fn trace_id(&self) -> &[u8];
    fn span_id(&self) -> &[u8];
    fn parent_span_id(&self) -> &[u8];
    fn start_time(&self) -> u64;
    fn end_time(&self) -> u64;
    /// Status ERROR.
    fn is_error(&self) -> bool;
    /// The status message (`""` without a status).
    fn status_message(&self) -> &str;
    /// The value of attribute `key` (the first one; `None` when absent or without a value).
    fn attr(&self, key: &str) -> Option<ValueRef<'_>>;
}

/// The attributes of a resource.
pub(crate) trait ResRead {
    fn attr(&self, key: &str) -> Option<ValueRef<'_>>;
}

impl SpanRead for Span {
    fn name(&self) -> &str {
        &self.name
    }
    fn trace_id(&self) -> &[u8] {
        &self.trace_id
    }
    fn span_id(&self) -> &[u8] {
        &self.span_id
    }
    fn parent_span_id(&self) -> &[u8] {
        &self.parent_span_id
    }
    fn start_time(&self) -> u64 {
        self.start_time_unix_nano
    }
    fn end_time(&self) -> u64 {
        self.end_time_unix_nano
    }
    fn is_error(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.code == StatusCode::Error as i32)
    }
    fn status_message(&self) -> &str {
        self.status.as_ref().map(|s| s.message.as_str()).unwrap_or("")
    }
    fn attr(&self, key: &str) -> Option<ValueRef<'_>> {
        decoded_attr(&self.attributes, key)
    }
}

impl ResRead for [KeyValue] {
    fn attr(&self, key: &str) -> Option<ValueRef<'_>> {
        decoded_attr(self, key)
    }
}

fn decoded_attr<'a>(a: &'a [KeyValue], key: &str) -> Option<ValueRef<'a>> {
    bizpilot_business::attrs::get(a, key).map(ValueRef::from_value)
}

impl SpanRead for SpanView<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn trace_id(&self) -> &[u8] {
        self.trace_id
    }
    fn span_id(&self) -> &[u8] {
        self.span_id
    }
    fn parent_span_id(&self) -> &[u8] {
        self.parent_span_id
    }
    fn start_time(&self) -> u64 {
        self.start_time_unix_nano
    }
    fn end_time(&self) -> u64 {
        self.end_time_unix_nano
    }
    fn is_error(&self) -> bool {
        SpanView::is_error(self)
    }
    fn status_message(&self) -> &str {
        self.status_message
    }
    fn attr(&self, key: &str) -> Option<ValueRef<'_>> {
        self.attributes().get_raw(key).and_then(ValueRef::from_encoded)
    }
}

impl ResRead for ResourceView<'_> {
    fn attr(&self, key: &str) -> Option<ValueRef<'_>> {
        self.attributes().get_raw(key).and_then(ValueRef::from_encoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_business::amount;
    use bizpilot_business::attrs::{self, Value};
    use bizpilot_core::Currency;
    use prost::Message;

    /// Every value form reads the same from a decoded value and from its encoding.
    #[test]
    fn decoded_and_encoded_values_read_alike() {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValueList};
        let values = vec![
            Value::StringValue("USD 12.50".into()),
            Value::StringValue(" 42 ".into()),
            Value::StringValue("12.5".into()),
            Value::IntValue(-7),
            Value::DoubleValue(19.99),
            Value::DoubleValue(3.0),
            Value::DoubleValue(f64::NAN),
            Value::BoolValue(true),
            Value::BytesValue(vec![1, 2]),
            Value::KvlistValue(KeyValueList {
                values: vec![
                    attrs::kv_i64("units", 19),
                    attrs::kv_i64("nanos", 990_000_000),
                    attrs::kv_str("currency_code", "EUR"),
                ],
            }),
        ];
        for v in &values {
            let bytes = AnyValue { value: Some(v.clone()) }.encode_to_vec();
            let a = ValueRef::from_value(v);
            let Some(b) = ValueRef::from_encoded(&bytes) else {
                panic!("{v:?} reads from bytes")
            };
            assert_eq!(a.as_text(), b.as_text(), "{v:?}");
            assert_eq!(
                a.as_text().map(|c| c.into_owned()),
                attrs::value_as_str(v).map(|c| c.into_owned())
            );
            assert_eq!(a.as_i64(), attrs::value_as_i64(v), "{v:?}");
            assert_eq!(b.as_i64(), attrs::value_as_i64(v), "{v:?}");
            assert_eq!(amount::decimal_nanos_ref(&b), amount::decimal_nanos(v), "{v:?}");
            for cur in [None, Some(Currency::USD)] {
                assert_eq!(
                    amount::money_from_ref(&b, cur).ok(),
                    amount::money_from_value(v, cur).ok(),
                    "{v:?} {cur:?}"
                );
            }
        }
        assert!(ValueRef::from_encoded(&AnyValue { value: None }.encode_to_vec()).is_none());
    }
}
