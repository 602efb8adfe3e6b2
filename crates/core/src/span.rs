//! One way to read a span and its resource in either form: decoded `opentelemetry-proto` structs or the
//! zero-copy views over the encoded request ([`crate::view`]). Both answer the same (the tests below check
//! it field by field on the same span); the view path allocates nothing. Components that read spans
//! (`business_impact`, the enrich processor's decoded items) are written once, against these traits.

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};

use crate::view::{ResourceView, SpanView, ValueRef};

/// The fields of a span that components read.
pub trait SpanRead {
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
pub trait ResRead {
    fn attr(&self, key: &str) -> Option<ValueRef<'_>>;
}

/// The value of the first attribute named `key` in decoded attributes (`None` when absent or without a
/// value), read as the views read encoded ones.
pub fn attr_of<'a>(attributes: &'a [KeyValue], key: &str) -> Option<ValueRef<'a>> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(ValueRef::from_value)
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
        attr_of(&self.attributes, key)
    }
}

impl ResRead for [KeyValue] {
    fn attr(&self, key: &str) -> Option<ValueRef<'_>> {
        attr_of(self, key)
    }
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
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};
    use prost::Message;

    fn kv(k: &str, v: Option<Value>) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: v }),
            ..Default::default()
        }
    }

    fn spans() -> Vec<Span> {
        let attrs = vec![
            kv("a", Some(Value::StringValue("x".into()))),
            kv("a", Some(Value::StringValue("second".into()))),
            kv("n", Some(Value::IntValue(-7))),
            kv("d", Some(Value::DoubleValue(19.99))),
            kv("b", Some(Value::BoolValue(true))),
            kv("empty", None),
        ];
        vec![
            Span {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                parent_span_id: vec![3; 8],
                name: "oteldemo.CheckoutService/PlaceOrder".into(),
                start_time_unix_nano: 1_735_689_600_000_000_000,
                end_time_unix_nano: 1_735_689_600_250_000_000,
                attributes: attrs,
                status: Some(Status {
                    message: "failed to charge card".into(),
                    code: StatusCode::Error as i32,
                }),
                ..Default::default()
            },
            Span {
                name: "ok".into(),
                status: Some(Status {
                    message: String::new(),
                    code: StatusCode::Ok as i32,
                }),
                ..Default::default()
            },
            Span::default(),
        ]
    }

    fn text(v: Option<ValueRef<'_>>) -> Option<(Option<String>, Option<i64>)> {
        v.map(|v| (v.as_text().map(|t| t.into_owned()), v.as_i64()))
    }

    /// Every method answers the same on the decoded span and on the view over its encoding.
    #[test]
    fn decoded_and_view_read_alike() {
        let resource = vec![kv("service.name", Some(Value::StringValue("checkout".into())))];
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: resource.clone(),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: spans(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let bytes = req.encode_to_vec();
        let decoded = spans();
        let mut i = 0;
        crate::view::for_each_span(&bytes, |res, view| {
            let d = &decoded[i];
            i += 1;
            assert_eq!(SpanRead::name(view), d.name());
            assert_eq!(SpanRead::trace_id(view), d.trace_id());
            assert_eq!(SpanRead::span_id(view), d.span_id());
            assert_eq!(SpanRead::parent_span_id(view), d.parent_span_id());
            assert_eq!(SpanRead::start_time(view), d.start_time());
            assert_eq!(SpanRead::end_time(view), d.end_time());
            assert_eq!(SpanRead::is_error(view), d.is_error());
            assert_eq!(SpanRead::status_message(view), d.status_message());
            for key in ["a", "n", "d", "b", "empty", "absent"] {
                assert_eq!(text(SpanRead::attr(view, key)), text(d.attr(key)), "{key}");
            }
            assert_eq!(
                text(ResRead::attr(res, "service.name")),
                text(resource.as_slice().attr("service.name"))
            );
        });
        assert_eq!(i, decoded.len());
        let first = &decoded[0];
        assert!(first.is_error() && !decoded[1].is_error() && !decoded[2].is_error());
        assert_eq!(
            text(first.attr("a")),
            Some((Some("x".into()), None)),
            "the first of a repeated key"
        );
        assert!(first.attr("empty").is_none() && first.attr("absent").is_none());
    }
}
