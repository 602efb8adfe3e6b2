//! Message encodings: Kafka message bytes → pipeline data (receiver), pipeline data → Kafka
//! message bytes (exporter).

use bizpilot_core::pdata::proto::collector::logs::v1::ExportLogsServiceRequest;
use bizpilot_core::pdata::proto::common::v1::InstrumentationScope;
use bizpilot_core::pdata::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use bizpilot_core::{Logs, Payload, Signal};
use bytes::Bytes;
use serde::Deserialize;

use crate::business::{BusinessMapping, EventError, EventFields};
use crate::otel_demo::{self, OrderResultError};
use crate::pb::{self, DecodeProtoError, ReflectedMessage};
use crate::traceparent::TraceParent;

/// Scope name of the log records made from business events.
pub const SCOPE_NAME: &str = "bizpilot.kafka";

/// `encoding` of the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverEncoding {
    /// OTLP protobuf (`Export{Trace,Metrics,Logs}ServiceRequest`, as the Collector writes it).
    #[default]
    OtlpProto,
    /// OTLP/JSON.
    OtlpJson,
    /// One business event per message, JSON, read with the `business` field mapping.
    BusinessJson,
    /// One `bizpilot.v1.BusinessEvent` per message.
    BusinessProto,
    /// One message of a user schema (`protobuf.descriptor_set_file`, `protobuf.message`),
    /// read with the `business` field mapping.
    Protobuf,
    /// The OpenTelemetry Demo's `oteldemo.OrderResult` ([`crate::otel_demo`]).
    OtelDemoOrderResult,
}

impl ReceiverEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiverEncoding::OtlpProto => "otlp_proto",
            ReceiverEncoding::OtlpJson => "otlp_json",
            ReceiverEncoding::BusinessJson => "business_json",
            ReceiverEncoding::BusinessProto => "business_proto",
            ReceiverEncoding::Protobuf => "protobuf",
            ReceiverEncoding::OtelDemoOrderResult => "otel_demo_order_result",
        }
    }

    /// The signal of a business encoding (always logs); `None` for OTLP, which needs `signal`.
    pub fn fixed_signal(self) -> Option<Signal> {
        match self {
            ReceiverEncoding::OtlpProto | ReceiverEncoding::OtlpJson => None,
            _ => Some(Signal::Logs),
        }
    }
}

/// `encoding` of the exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExporterEncoding {
    #[default]
    OtlpProto,
    OtlpJson,
    /// Logs only: one JSON business event per event record (records naming no event are skipped).
    BusinessJson,
}

impl ExporterEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            ExporterEncoding::OtlpProto => "otlp_proto",
            ExporterEncoding::OtlpJson => "otlp_json",
            ExporterEncoding::BusinessJson => "business_json",
        }
    }
}

/// What the receiver knows about a message besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct MessageMeta {
    /// The message timestamp, Unix nanoseconds.
    pub timestamp_unix_nano: Option<u64>,
    /// The `traceparent` header, when present and valid.
    pub traceparent: Option<TraceParent>,
    /// Receive time, Unix nanoseconds.
    pub now_unix_nano: u64,
}

/// Why a message could not be read; `reason` labels `bizpilot_kafka_receiver_bad_messages_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub reason: &'static str,
    pub message: String,
}

impl DecodeError {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        DecodeError {
            reason,
            message: message.into(),
        }
    }
}

impl From<EventError> for DecodeError {
    fn from(e: EventError) -> Self {
        DecodeError::new("invalid_event", e.to_string())
    }
}

impl From<DecodeProtoError> for DecodeError {
    fn from(e: DecodeProtoError) -> Self {
        match e {
            DecodeProtoError::Protobuf(m) => DecodeError::new("invalid_protobuf", m),
            DecodeProtoError::Event(e) => e.into(),
        }
    }
}

/// Turns message bytes into pipeline data.
#[derive(Debug, Clone)]
pub enum Decoder {
    Otlp {
        signal: Signal,
        json: bool,
    },
    BusinessJson(BusinessMapping),
    BusinessProto,
    Protobuf {
        message: ReflectedMessage,
        mapping: BusinessMapping,
    },
    /// `oteldemo.OrderResult` ([`crate::otel_demo`]).
    OtelDemoOrderResult,
}

/// One log record as a logs payload.
pub fn single_record_logs(rec: LogRecord) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.into(),
                    ..Default::default()
                }),
                log_records: vec![rec],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn event_payload(mut ev: EventFields, meta: &MessageMeta) -> Payload {
    if let Some(tp) = meta.traceparent {
        ev.trace_id = tp.trace_id.to_vec();
        ev.span_id = tp.span_id.to_vec();
    }
    Payload::Logs(Logs::from_message(single_record_logs(
        ev.into_log_record(meta.now_unix_nano),
    )))
}

impl Decoder {
    /// The signal this decoder produces.
    pub fn signal(&self) -> Signal {
        match self {
            Decoder::Otlp { signal, .. } => *signal,
            _ => Signal::Logs,
        }
    }

    /// Decodes one message. A null or empty message is an error for the business encodings and
    /// an empty payload for OTLP.
    pub fn decode(&self, bytes: Option<&[u8]>, meta: &MessageMeta) -> Result<Payload, DecodeError> {
        let bytes = bytes.unwrap_or_default();
        match self {
            Decoder::Otlp { signal, json: false } => {
                let mut p = Payload::from_bytes(*signal, Bytes::copy_from_slice(bytes))
                    .map_err(|e| DecodeError::new("invalid_protobuf", e.to_string()))?;
                apply_traceparent(&mut p, meta);
                Ok(p)
            }
            Decoder::Otlp { signal, json: true } => {
                if bytes.is_empty() {
                    return Ok(Payload::empty(*signal));
                }
                let mut p =
                    Payload::from_json(*signal, bytes).map_err(|e| DecodeError::new("invalid_json", e.to_string()))?;
                apply_traceparent(&mut p, meta);
                Ok(p)
            }
            Decoder::BusinessJson(mapping) => {
                if bytes.is_empty() {
                    return Err(DecodeError::new("empty", "empty message"));
                }
                let json: serde_json::Value =
                    serde_json::from_slice(bytes).map_err(|e| DecodeError::new("invalid_json", e.to_string()))?;
                Ok(event_payload(mapping.read(&json, meta.timestamp_unix_nano)?, meta))
            }
            Decoder::BusinessProto => {
                if bytes.is_empty() {
                    return Err(DecodeError::new("empty", "empty message"));
                }
                Ok(event_payload(
                    pb::decode_business_event(bytes, meta.timestamp_unix_nano)?,
                    meta,
                ))
            }
            Decoder::Protobuf { message, mapping } => {
                if bytes.is_empty() {
                    return Err(DecodeError::new("empty", "empty message"));
                }
                let json = message.decode_json(bytes)?;
                Ok(event_payload(mapping.read(&json, meta.timestamp_unix_nano)?, meta))
            }
            Decoder::OtelDemoOrderResult => {
                if bytes.is_empty() {
                    return Err(DecodeError::new("empty", "empty message"));
                }
                let fields = otel_demo::decode_order_result(bytes, meta.timestamp_unix_nano).map_err(|e| match e {
                    OrderResultError::Protobuf(m) => DecodeError::new("invalid_protobuf", m),
                    other => DecodeError::new("invalid_event", format!("oteldemo.OrderResult: {other}")),
                })?;
                Ok(event_payload(fields, meta))
            }
        }
    }
}

/// Gives OTLP log records without a trace context the message's `traceparent`.
fn apply_traceparent(p: &mut Payload, meta: &MessageMeta) {
    let (Some(tp), Payload::Logs(logs)) = (meta.traceparent, p) else {
        return;
    };
    let Ok(msg) = logs.message_mut() else { return };
    for rec in msg
        .resource_logs
        .iter_mut()
        .flat_map(|r| r.scope_logs.iter_mut())
        .flat_map(|s| s.log_records.iter_mut())
    {
        if rec.trace_id.iter().all(|b| *b == 0) {
            rec.trace_id = tp.trace_id.to_vec();
            rec.span_id = tp.span_id.to_vec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::Traces;
    use bizpilot_core::pdata::proto::collector::trace::v1::ExportTraceServiceRequest;
    use bizpilot_core::pdata::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    fn meta() -> MessageMeta {
        MessageMeta {
            timestamp_unix_nano: Some(1_000),
            traceparent: TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            now_unix_nano: 2_000,
        }
    }

    fn logs_of(p: Payload) -> ExportLogsServiceRequest {
        match p {
            Payload::Logs(l) => l.into_message().unwrap(),
            other => panic!("not logs: {other:?}"),
        }
    }

    #[test]
    fn otlp_proto_keeps_bytes_and_rejects_garbage() {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        name: "s".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let bytes = req.encode_to_vec();
        let d = Decoder::Otlp {
            signal: Signal::Traces,
            json: false,
        };
        let p = d.decode(Some(&bytes), &meta()).unwrap();
        assert_eq!(p.items(), 1);
        let e = d.decode(Some(b"\x0a\xff\xff\xff\xff\x0f"), &meta()).unwrap_err();
        assert_eq!(e.reason, "invalid_protobuf");
        assert_eq!(
            d.decode(None, &meta()).unwrap().items(),
            0,
            "a null message is an empty request"
        );
        let j = Decoder::Otlp {
            signal: Signal::Traces,
            json: true,
        };
        let json = Payload::Traces(Traces::from_message(req)).to_json().unwrap();
        assert_eq!(j.decode(Some(&json), &meta()).unwrap().items(), 1);
        assert_eq!(j.decode(Some(b"{nope"), &meta()).unwrap_err().reason, "invalid_json");
    }

    #[test]
    fn traceparent_fills_log_records_without_context() {
        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        LogRecord::default(),
                        LogRecord {
                            trace_id: vec![9; 16],
                            span_id: vec![9; 8],
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let d = Decoder::Otlp {
            signal: Signal::Logs,
            json: false,
        };
        let out = logs_of(d.decode(Some(&logs.encode_to_vec()), &meta()).unwrap());
        let recs = &out.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(recs[0].trace_id[0], 0x4b);
        assert_eq!(recs[0].span_id[7], 0xb7);
        assert_eq!(recs[1].trace_id, vec![9; 16], "an existing context is kept");
    }

    #[test]
    fn business_json_makes_one_event_record() {
        let d = Decoder::BusinessJson(BusinessMapping::default());
        let out = logs_of(
            d.decode(
                Some(br#"{"type":"order.paid","order_id":"o-7","amount":"5.00","currency":"EUR"}"#),
                &meta(),
            )
            .unwrap(),
        );
        let rec = &out.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(rec.event_name, "order.paid");
        assert_eq!(rec.time_unix_nano, 1_000, "no event time: the message timestamp");
        assert_eq!(rec.observed_time_unix_nano, 2_000);
        assert_eq!(rec.trace_id[0], 0x4b);
        assert_eq!(
            out.resource_logs[0].scope_logs[0].scope.as_ref().unwrap().name,
            SCOPE_NAME
        );
        assert_eq!(d.decode(None, &meta()).unwrap_err().reason, "empty");
        assert_eq!(d.decode(Some(b"\xff"), &meta()).unwrap_err().reason, "invalid_json");
        assert_eq!(
            d.decode(Some(br#"{"amount":1}"#), &meta()).unwrap_err().reason,
            "invalid_event"
        );
    }

    #[test]
    fn business_proto_and_reflected_protobuf() {
        let ev = pb::v1::BusinessEvent {
            r#type: "order.shipped".into(),
            order_id: "o-1".into(),
            ..Default::default()
        };
        let bytes = ev.encode_to_vec();
        let out = logs_of(Decoder::BusinessProto.decode(Some(&bytes), &meta()).unwrap());
        assert_eq!(
            out.resource_logs[0].scope_logs[0].log_records[0].event_name,
            "order.shipped"
        );
        assert_eq!(
            Decoder::BusinessProto
                .decode(Some(b"\x0a\x05ab"), &meta())
                .unwrap_err()
                .reason,
            "invalid_protobuf"
        );
        let r = Decoder::Protobuf {
            message: ReflectedMessage::from_descriptor_set(pb::DESCRIPTOR_SET, "bizpilot.v1.BusinessEvent").unwrap(),
            mapping: BusinessMapping::default(),
        };
        let out = logs_of(r.decode(Some(&bytes), &meta()).unwrap());
        assert_eq!(
            out.resource_logs[0].scope_logs[0].log_records[0].event_name,
            "order.shipped"
        );
    }
}
