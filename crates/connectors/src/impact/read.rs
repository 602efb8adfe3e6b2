//! How the engine reads a span and its resource: from decoded `opentelemetry-proto` structs or through
//! zero-copy views over the encoded request. The traits are core's one span-access API
//! ([`bizpilot_core::span`]); the tests here check that values read alike in both forms.

pub(crate) use bizpilot_core::span::{ResRead, SpanRead};

#[cfg(test)]
mod tests {
    use bizpilot_business::amount;
    use bizpilot_business::attrs::{self, Value};
    use bizpilot_core::Currency;
    use bizpilot_core::view::ValueRef;
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
