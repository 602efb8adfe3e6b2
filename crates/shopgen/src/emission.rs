//! What the workload emits, and packing it into OTLP export requests.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::sync::Arc;

use crate::event::{BusinessEvent, kv_str};
use crate::pb;
use crate::spans::{ServiceResource, ServiceSpan};

/// One item as a client would send it, at `arrival_unix_nano` (simulated). A stream yields emissions in
/// non-decreasing arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct Emission {
    pub arrival_unix_nano: u64,
    pub kind: EmissionKind,
}

/// A trace or a business event.
#[derive(Debug, Clone, PartialEq)]
pub enum EmissionKind {
    Trace(TraceData),
    Event(BusinessEvent),
}

impl Emission {
    /// When it happened: a trace's root span start, an event's time.
    pub fn event_unix_nano(&self) -> u64 {
        match &self.kind {
            EmissionKind::Trace(t) => t.event_unix_nano,
            EmissionKind::Event(e) => e.time_unix_nano,
        }
    }

    pub fn as_trace(&self) -> Option<&TraceData> {
        match &self.kind {
            EmissionKind::Trace(t) => Some(t),
            EmissionKind::Event(_) => None,
        }
    }

    pub fn as_event(&self) -> Option<&BusinessEvent> {
        match &self.kind {
            EmissionKind::Event(e) => Some(e),
            EmissionKind::Trace(_) => None,
        }
    }
}

/// The spans of one trace, each with its service instance.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceData {
    pub trace_id: [u8; 16],
    /// Start of the root span.
    pub event_unix_nano: u64,
    /// This emission is a re-delivery of an earlier one (same ids and content). A receiver cannot see this flag:
    /// it is for the tests' bookkeeping.
    pub duplicate: bool,
    pub spans: Vec<ServiceSpan>,
}

impl TraceData {
    /// The trace alone as an export request.
    pub fn to_request(&self) -> ExportTraceServiceRequest {
        pack_traces(std::iter::once(self), usize::MAX).pop().unwrap_or_default()
    }

    /// The spans as owned structs, with their service instance.
    pub fn decode_spans(&self) -> Vec<(Arc<ServiceResource>, Span)> {
        self.spans.iter().map(|s| (s.resource.clone(), s.decode())).collect()
    }
}

/// Packs spans into protobuf-encoded `ExportTraceServiceRequest`s of exactly `max_spans` spans (the last one
/// fewer), one `ResourceSpans` (with one `ScopeSpans`) per service instance present in a request, in order of
/// first appearance, spans in the order pushed. A trace may straddle two requests, as with an SDK's batch
/// exporter. Works on the encoded bytes (no decoding, one copy of each span); decoding and re-encoding an output
/// with prost gives the same bytes.
#[derive(Debug)]
pub struct TraceBatcher {
    max_spans: usize,
    /// Per resource id: its resource and the encoded `ScopeSpans.spans` entries so far.
    groups: Vec<Option<(Arc<ServiceResource>, Vec<u8>)>>,
    order: Vec<usize>,
    n: usize,
}

impl TraceBatcher {
    pub fn new(max_spans: usize) -> TraceBatcher {
        TraceBatcher {
            max_spans: max_spans.max(1),
            groups: Vec::new(),
            order: Vec::new(),
            n: 0,
        }
    }

    /// Adds a trace's spans; full requests (encoded) are appended to `out`.
    pub fn push(&mut self, trace: &TraceData, out: &mut Vec<Vec<u8>>) {
        for s in &trace.spans {
            if self.n >= self.max_spans
                && let Some(r) = self.finish()
            {
                out.push(r);
            }
            let id = s.resource.id as usize;
            if self.groups.len() <= id {
                self.groups.resize_with(id + 1, || None);
            }
            let g = self.groups[id].get_or_insert_with(|| (s.resource.clone(), Vec::with_capacity(64 * 1024)));
            if g.1.is_empty() {
                self.order.push(id);
            }
            pb::bytes_field(&mut g.1, 0x12, &s.encoded);
            self.n += 1;
        }
    }

    /// Spans waiting in the current request.
    pub fn pending(&self) -> usize {
        self.n
    }

    /// The current request (encoded), if it holds any span.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if self.n == 0 {
            return None;
        }
        let mut out = Vec::with_capacity(
            self.order
                .iter()
                .filter_map(|&i| self.groups[i].as_ref())
                .map(|g| g.1.len() + g.0.resource_pb.len() + g.0.scope_pb.len() + 24)
                .sum(),
        );
        for &i in &self.order {
            let Some((r, spans)) = self.groups[i].as_mut() else {
                continue;
            };
            let scope_field = 1 + pb::varint_len(r.scope_pb.len() as u64) + r.scope_pb.len();
            let scope_spans = scope_field + spans.len();
            let rs = 1
                + pb::varint_len(r.resource_pb.len() as u64)
                + r.resource_pb.len()
                + 1
                + pb::varint_len(scope_spans as u64)
                + scope_spans;
            out.push(0x0a);
            pb::varint(&mut out, rs as u64);
            pb::bytes_field(&mut out, 0x0a, &r.resource_pb);
            out.push(0x12);
            pb::varint(&mut out, scope_spans as u64);
            pb::bytes_field(&mut out, 0x0a, &r.scope_pb);
            out.extend_from_slice(spans);
            spans.clear();
        }
        self.order.clear();
        self.n = 0;
        Some(out)
    }
}

/// Packs traces into encoded requests of `max_spans` spans (see [`TraceBatcher`]).
pub fn pack_traces_encoded<'a>(traces: impl IntoIterator<Item = &'a TraceData>, max_spans: usize) -> Vec<Vec<u8>> {
    let mut b = TraceBatcher::new(max_spans);
    let mut out = Vec::new();
    for t in traces {
        b.push(t, &mut out);
    }
    out.extend(b.finish());
    out
}

/// Packs traces into decoded requests of `max_spans` spans (see [`TraceBatcher`]).
pub fn pack_traces<'a>(
    traces: impl IntoIterator<Item = &'a TraceData>,
    max_spans: usize,
) -> Vec<ExportTraceServiceRequest> {
    pack_traces_encoded(traces, max_spans)
        .iter()
        .map(|b| ExportTraceServiceRequest::decode(b.as_slice()).unwrap_or_default())
        .collect()
}

/// The resource of business-event log records: `service.name` = `shop-orders`.
pub fn event_resource() -> Resource {
    Resource {
        attributes: vec![
            kv_str("service.name", "shop-orders"),
            kv_str("service.namespace", "opentelemetry-demo"),
            kv_str("deployment.environment", "production"),
        ],
        ..Default::default()
    }
}

/// Packs business events, as log records ([`BusinessEvent::to_log_record`]), into [`ExportLogsServiceRequest`]s of
/// `max_records` records under one resource ([`event_resource`]) and scope `shop.business_events`.
#[derive(Debug)]
pub struct LogBatcher {
    max_records: usize,
    records: Vec<opentelemetry_proto::tonic::logs::v1::LogRecord>,
}

impl LogBatcher {
    pub fn new(max_records: usize) -> LogBatcher {
        LogBatcher {
            max_records: max_records.max(1),
            records: Vec::new(),
        }
    }

    /// Adds an event; a full request is appended to `out`.
    pub fn push(&mut self, event: &BusinessEvent, out: &mut Vec<ExportLogsServiceRequest>) {
        if self.records.len() >= self.max_records
            && let Some(r) = self.finish()
        {
            out.push(r);
        }
        self.records.push(event.to_log_record());
    }

    /// The current request, if it holds any record.
    pub fn finish(&mut self) -> Option<ExportLogsServiceRequest> {
        if self.records.is_empty() {
            return None;
        }
        Some(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(event_resource()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "shop.business_events".into(),
                        ..Default::default()
                    }),
                    log_records: std::mem::take(&mut self.records),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        })
    }
}

/// Packs events into log requests of `max_records` records (see [`LogBatcher`]).
pub fn pack_events<'a>(
    events: impl IntoIterator<Item = &'a BusinessEvent>,
    max_records: usize,
) -> Vec<ExportLogsServiceRequest> {
    let mut b = LogBatcher::new(max_records);
    let mut out = Vec::new();
    for e in events {
        b.push(e, &mut out);
    }
    out.extend(b.finish());
    out
}
