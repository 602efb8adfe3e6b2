//! A validating walk over OTLP protobuf bytes that allocates nothing.
//!
//! Receivers hand encoded requests to the pipeline without decoding them into
//! owned structs (see `docs` in `../shared/docs/performance-notes.md`: a full
//! decode costs about 12× this walk). The walk checks everything a full prost
//! decode would check for the OTLP schema — tags, wire types, lengths, UTF-8 of
//! strings, nesting depth — so that a later decode of the same bytes cannot
//! fail, and counts the items (spans, metric data points, log records) on the
//! way.

use std::fmt;

use crate::pb::read_varint;

/// How a field is encoded on the wire.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// A nested message, validated recursively.
    Msg(&'static Schema),
    /// A singular nested message (or a oneof member). Protobuf merges repeated occurrences of
    /// such a field, which a zero-copy view cannot do: the walk reports the request as not
    /// canonical and [`crate::pdata::Otlp::from_bytes`] decodes it, so that every later reading
    /// sees what a decoder sees.
    One(&'static Schema),
    /// A UTF-8 string.
    Str,
    /// Opaque bytes.
    Bytes,
    /// A trace id (16 bytes) or span id (8 bytes): empty (absent) or exactly that long.
    Id(IdKind),
    /// varint (int32/int64/uint32/uint64/bool/enum/sint*).
    Varint,
    /// fixed64/sfixed64/double.
    Fixed64,
    /// fixed32/sfixed32/float.
    Fixed32,
    /// repeated packed fixed64/double (also accepted unpacked).
    PackedFixed64,
    /// repeated packed varint (also accepted unpacked).
    PackedVarint,
}

/// The two OTLP id types and the lengths the specification gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdKind {
    Trace,
    Span,
}

impl IdKind {
    fn len(self) -> usize {
        match self {
            IdKind::Trace => 16,
            IdKind::Span => 8,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            IdKind::Trace => "a trace id must be 16 bytes (32 hex characters in OTLP/JSON) or empty",
            IdKind::Span => "a span id must be 8 bytes (16 hex characters in OTLP/JSON) or empty",
        }
    }
}

/// A field of a message schema.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    pub tag: u32,
    pub name: &'static str,
    pub kind: Kind,
    /// Occurrences of this field are the items the walk counts.
    pub counted: bool,
}

/// The fields of one protobuf message that the walk knows.
#[derive(Debug)]
pub struct Schema {
    pub(crate) name: &'static str,
    pub(crate) fields: &'static [Field],
    /// Field index + 1 by field number, for the field numbers OTLP uses (all below 32).
    by_tag: [u8; 32],
}

impl Schema {
    const fn new(name: &'static str, fields: &'static [Field]) -> Self {
        let mut by_tag = [0u8; 32];
        let mut i = 0;
        while i < fields.len() {
            let tag = fields[i].tag as usize;
            if tag < 32 {
                by_tag[tag] = (i + 1) as u8;
            }
            i += 1;
        }
        Schema { name, fields, by_tag }
    }

    #[inline]
    fn field(&self, tag: u32) -> Option<&Field> {
        match self.by_tag.get(tag as usize) {
            Some(&i) if i > 0 => self.fields.get(usize::from(i) - 1),
            Some(_) => None,
            None => self.fields.iter().find(|f| f.tag == tag),
        }
    }
}

const fn f(tag: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        tag,
        name,
        kind,
        counted: false,
    }
}

const fn counted(tag: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        tag,
        name,
        kind,
        counted: true,
    }
}

use Kind::*;

// --- common.v1 / resource.v1 ---
pub(crate) static ANY_VALUE: Schema = Schema::new(
    "AnyValue",
    &[
        f(1, "string_value", Str),
        f(2, "bool_value", Varint),
        f(3, "int_value", Varint),
        f(4, "double_value", Fixed64),
        f(5, "array_value", One(&ARRAY_VALUE)),
        f(6, "kvlist_value", One(&KEY_VALUE_LIST)),
        f(7, "bytes_value", Bytes),
        f(8, "string_value_strindex", Varint),
    ],
);
pub(crate) static ARRAY_VALUE: Schema = Schema::new("ArrayValue", &[f(1, "values", Msg(&ANY_VALUE))]);
pub(crate) static KEY_VALUE_LIST: Schema = Schema::new("KeyValueList", &[f(1, "values", Msg(&KEY_VALUE))]);
pub(crate) static KEY_VALUE: Schema = Schema::new(
    "KeyValue",
    &[
        f(1, "key", Str),
        f(2, "value", One(&ANY_VALUE)),
        f(3, "key_strindex", Varint),
    ],
);
static SCOPE: Schema = Schema::new(
    "InstrumentationScope",
    &[
        f(1, "name", Str),
        f(2, "version", Str),
        f(3, "attributes", Msg(&KEY_VALUE)),
        f(4, "dropped_attributes_count", Varint),
    ],
);
static ENTITY_REF: Schema = Schema::new(
    "EntityRef",
    &[
        f(1, "schema_url", Str),
        f(2, "type", Str),
        f(3, "id_keys", Str),
        f(4, "description_keys", Str),
    ],
);
static RESOURCE: Schema = Schema::new(
    "Resource",
    &[
        f(1, "attributes", Msg(&KEY_VALUE)),
        f(2, "dropped_attributes_count", Varint),
        f(3, "entity_refs", Msg(&ENTITY_REF)),
    ],
);

// --- trace.v1 ---
static SPAN_EVENT: Schema = Schema::new(
    "Span.Event",
    &[
        f(1, "time_unix_nano", Fixed64),
        f(2, "name", Str),
        f(3, "attributes", Msg(&KEY_VALUE)),
        f(4, "dropped_attributes_count", Varint),
    ],
);
static SPAN_LINK: Schema = Schema::new(
    "Span.Link",
    &[
        f(1, "trace_id", Id(IdKind::Trace)),
        f(2, "span_id", Id(IdKind::Span)),
        f(3, "trace_state", Str),
        f(4, "attributes", Msg(&KEY_VALUE)),
        f(5, "dropped_attributes_count", Varint),
        f(6, "flags", Fixed32),
    ],
);
static STATUS: Schema = Schema::new("Status", &[f(2, "message", Str), f(3, "code", Varint)]);
pub(crate) static SPAN: Schema = Schema::new(
    "Span",
    &[
        f(1, "trace_id", Id(IdKind::Trace)),
        f(2, "span_id", Id(IdKind::Span)),
        f(3, "trace_state", Str),
        f(4, "parent_span_id", Id(IdKind::Span)),
        f(16, "flags", Fixed32),
        f(5, "name", Str),
        f(6, "kind", Varint),
        f(7, "start_time_unix_nano", Fixed64),
        f(8, "end_time_unix_nano", Fixed64),
        f(9, "attributes", Msg(&KEY_VALUE)),
        f(10, "dropped_attributes_count", Varint),
        f(11, "events", Msg(&SPAN_EVENT)),
        f(12, "dropped_events_count", Varint),
        f(13, "links", Msg(&SPAN_LINK)),
        f(14, "dropped_links_count", Varint),
        f(15, "status", One(&STATUS)),
    ],
);
static SCOPE_SPANS: Schema = Schema::new(
    "ScopeSpans",
    &[
        f(1, "scope", One(&SCOPE)),
        counted(2, "spans", Msg(&SPAN)),
        f(3, "schema_url", Str),
    ],
);
static RESOURCE_SPANS: Schema = Schema::new(
    "ResourceSpans",
    &[
        f(1, "resource", One(&RESOURCE)),
        f(2, "scope_spans", Msg(&SCOPE_SPANS)),
        f(3, "schema_url", Str),
    ],
);
/// `ExportTraceServiceRequest` (and `TracesData`, which has the same shape).
pub(crate) static TRACES_REQUEST: Schema = Schema::new(
    "ExportTraceServiceRequest",
    &[f(1, "resource_spans", Msg(&RESOURCE_SPANS))],
);

// --- logs.v1 ---
static LOG_RECORD: Schema = Schema::new(
    "LogRecord",
    &[
        f(1, "time_unix_nano", Fixed64),
        f(11, "observed_time_unix_nano", Fixed64),
        f(2, "severity_number", Varint),
        f(3, "severity_text", Str),
        f(5, "body", One(&ANY_VALUE)),
        f(6, "attributes", Msg(&KEY_VALUE)),
        f(7, "dropped_attributes_count", Varint),
        f(8, "flags", Fixed32),
        f(9, "trace_id", Id(IdKind::Trace)),
        f(10, "span_id", Id(IdKind::Span)),
        f(12, "event_name", Str),
    ],
);
static SCOPE_LOGS: Schema = Schema::new(
    "ScopeLogs",
    &[
        f(1, "scope", One(&SCOPE)),
        counted(2, "log_records", Msg(&LOG_RECORD)),
        f(3, "schema_url", Str),
    ],
);
static RESOURCE_LOGS: Schema = Schema::new(
    "ResourceLogs",
    &[
        f(1, "resource", One(&RESOURCE)),
        f(2, "scope_logs", Msg(&SCOPE_LOGS)),
        f(3, "schema_url", Str),
    ],
);
/// `ExportLogsServiceRequest` (and `LogsData`).
pub(crate) static LOGS_REQUEST: Schema = Schema::new(
    "ExportLogsServiceRequest",
    &[f(1, "resource_logs", Msg(&RESOURCE_LOGS))],
);

// --- metrics.v1 ---
static EXEMPLAR: Schema = Schema::new(
    "Exemplar",
    &[
        f(7, "filtered_attributes", Msg(&KEY_VALUE)),
        f(2, "time_unix_nano", Fixed64),
        f(3, "as_double", Fixed64),
        f(6, "as_int", Fixed64),
        f(4, "span_id", Id(IdKind::Span)),
        f(5, "trace_id", Id(IdKind::Trace)),
    ],
);
static NUMBER_POINT: Schema = Schema::new(
    "NumberDataPoint",
    &[
        f(7, "attributes", Msg(&KEY_VALUE)),
        f(2, "start_time_unix_nano", Fixed64),
        f(3, "time_unix_nano", Fixed64),
        f(4, "as_double", Fixed64),
        f(6, "as_int", Fixed64),
        f(5, "exemplars", Msg(&EXEMPLAR)),
        f(8, "flags", Varint),
    ],
);
static HISTOGRAM_POINT: Schema = Schema::new(
    "HistogramDataPoint",
    &[
        f(9, "attributes", Msg(&KEY_VALUE)),
        f(2, "start_time_unix_nano", Fixed64),
        f(3, "time_unix_nano", Fixed64),
        f(4, "count", Fixed64),
        f(5, "sum", Fixed64),
        f(6, "bucket_counts", PackedFixed64),
        f(7, "explicit_bounds", PackedFixed64),
        f(8, "exemplars", Msg(&EXEMPLAR)),
        f(10, "flags", Varint),
        f(11, "min", Fixed64),
        f(12, "max", Fixed64),
    ],
);
static EXP_BUCKETS: Schema = Schema::new(
    "ExponentialHistogramDataPoint.Buckets",
    &[f(1, "offset", Varint), f(2, "bucket_counts", PackedVarint)],
);
static EXP_HISTOGRAM_POINT: Schema = Schema::new(
    "ExponentialHistogramDataPoint",
    &[
        f(1, "attributes", Msg(&KEY_VALUE)),
        f(2, "start_time_unix_nano", Fixed64),
        f(3, "time_unix_nano", Fixed64),
        f(4, "count", Fixed64),
        f(5, "sum", Fixed64),
        f(6, "scale", Varint),
        f(7, "zero_count", Fixed64),
        f(8, "positive", One(&EXP_BUCKETS)),
        f(9, "negative", One(&EXP_BUCKETS)),
        f(10, "flags", Varint),
        f(11, "exemplars", Msg(&EXEMPLAR)),
        f(12, "min", Fixed64),
        f(13, "max", Fixed64),
        f(14, "zero_threshold", Fixed64),
    ],
);
static VALUE_AT_QUANTILE: Schema = Schema::new(
    "SummaryDataPoint.ValueAtQuantile",
    &[f(1, "quantile", Fixed64), f(2, "value", Fixed64)],
);
static SUMMARY_POINT: Schema = Schema::new(
    "SummaryDataPoint",
    &[
        f(7, "attributes", Msg(&KEY_VALUE)),
        f(2, "start_time_unix_nano", Fixed64),
        f(3, "time_unix_nano", Fixed64),
        f(4, "count", Fixed64),
        f(5, "sum", Fixed64),
        f(6, "quantile_values", Msg(&VALUE_AT_QUANTILE)),
        f(8, "flags", Varint),
    ],
);
static GAUGE: Schema = Schema::new("Gauge", &[counted(1, "data_points", Msg(&NUMBER_POINT))]);
static SUM: Schema = Schema::new(
    "Sum",
    &[
        counted(1, "data_points", Msg(&NUMBER_POINT)),
        f(2, "aggregation_temporality", Varint),
        f(3, "is_monotonic", Varint),
    ],
);
static HISTOGRAM: Schema = Schema::new(
    "Histogram",
    &[
        counted(1, "data_points", Msg(&HISTOGRAM_POINT)),
        f(2, "aggregation_temporality", Varint),
    ],
);
static EXP_HISTOGRAM: Schema = Schema::new(
    "ExponentialHistogram",
    &[
        counted(1, "data_points", Msg(&EXP_HISTOGRAM_POINT)),
        f(2, "aggregation_temporality", Varint),
    ],
);
static SUMMARY: Schema = Schema::new("Summary", &[counted(1, "data_points", Msg(&SUMMARY_POINT))]);
static METRIC: Schema = Schema::new(
    "Metric",
    &[
        f(1, "name", Str),
        f(2, "description", Str),
        f(3, "unit", Str),
        f(5, "gauge", One(&GAUGE)),
        f(7, "sum", One(&SUM)),
        f(9, "histogram", One(&HISTOGRAM)),
        f(10, "exponential_histogram", One(&EXP_HISTOGRAM)),
        f(11, "summary", One(&SUMMARY)),
        f(12, "metadata", Msg(&KEY_VALUE)),
    ],
);
static SCOPE_METRICS: Schema = Schema::new(
    "ScopeMetrics",
    &[
        f(1, "scope", One(&SCOPE)),
        f(2, "metrics", Msg(&METRIC)),
        f(3, "schema_url", Str),
    ],
);
static RESOURCE_METRICS: Schema = Schema::new(
    "ResourceMetrics",
    &[
        f(1, "resource", One(&RESOURCE)),
        f(2, "scope_metrics", Msg(&SCOPE_METRICS)),
        f(3, "schema_url", Str),
    ],
);
/// `ExportMetricsServiceRequest` (and `MetricsData`).
pub(crate) static METRICS_REQUEST: Schema = Schema::new(
    "ExportMetricsServiceRequest",
    &[f(1, "resource_metrics", Msg(&RESOURCE_METRICS))],
);

/// Deepest message nesting the walk accepts: below prost's recursion limit (100), so that a
/// later decode of bytes the walk accepted cannot fail. [`MAX_ANY_VALUE_DEPTH`] binds first.
pub const MAX_DEPTH: usize = 90;

/// Deepest `AnyValue` nesting accepted, counted in `AnyValue` levels (an attribute's value is
/// level 1; a value inside its `array_value` or `kvlist_value` level 2; arrays and kvlists
/// alike), the same for protobuf and OTLP/JSON (JSON input is checked by this walk too).
///
/// 25 is the deepest every decoder on the way handles wherever an `AnyValue` sits. The deepest
/// place is an exemplar's filtered attribute: 25 kvlist levels there are 80 protobuf message
/// levels (prost refuses beyond 100) and 113 JSON levels (serde_json refuses beyond 128). A
/// request one level deeper is refused whole (400 / `INVALID_ARGUMENT`) naming the field.
pub const MAX_ANY_VALUE_DEPTH: usize = 25;
const ANY_VALUE_TOO_DEEP: &str = "AnyValue nested deeper than 25 levels (arrays and kvlists alike)";

/// Why bytes are not a valid OTLP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct WireError {
    /// Byte offset in the outermost message where the problem was found.
    pub offset: usize,
    /// The message and field being read, e.g. `Span.name`.
    pub at: String,
    pub reason: &'static str,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid protobuf at byte {} ({}): {}",
            self.offset, self.at, self.reason
        )
    }
}

struct Walker<'a> {
    buf: &'a [u8],
    items: usize,
    /// A singular message field occurred twice in one message (or two members of `Metric.data`).
    non_canonical: bool,
}

impl<'a> Walker<'a> {
    fn err(&self, at: usize, schema: &Schema, field: Option<&str>, reason: &'static str) -> WireError {
        WireError {
            offset: at,
            at: match field {
                Some(f) => format!("{}.{}", schema.name, f),
                None => schema.name.to_string(),
            },
            reason,
        }
    }

    fn walk(
        &mut self,
        schema: &'static Schema,
        start: usize,
        end: usize,
        depth: usize,
        any_depth: usize,
    ) -> Result<(), WireError> {
        if depth > MAX_DEPTH {
            return Err(self.err(start, schema, None, "nesting too deep"));
        }
        let mut pos = start;
        // Singular message fields seen in this message, by field number (all below 32).
        let mut seen_one: u32 = 0;
        while pos < end {
            let tag_at = pos;
            let key = read_varint(self.buf, &mut pos, end)
                .ok_or_else(|| self.err(tag_at, schema, None, "truncated field key"))?;
            let wire_type = (key & 7) as u8;
            let tag = key >> 3;
            if tag == 0 || tag > u64::from(u32::MAX >> 3) {
                return Err(self.err(tag_at, schema, None, "invalid field number 0"));
            }
            let field = schema.field(tag as u32);
            let name = field.map(|f| f.name);
            match wire_type {
                0 => {
                    read_varint(self.buf, &mut pos, end)
                        .ok_or_else(|| self.err(tag_at, schema, name, "truncated varint"))?;
                    if let Some(fd) = field
                        && !matches!(fd.kind, Varint | PackedVarint)
                    {
                        return Err(self.err(tag_at, schema, name, "wrong wire type (varint)"));
                    }
                }
                1 => {
                    if end - pos < 8 {
                        return Err(self.err(tag_at, schema, name, "truncated fixed64"));
                    }
                    pos += 8;
                    if let Some(fd) = field
                        && !matches!(fd.kind, Fixed64 | PackedFixed64)
                    {
                        return Err(self.err(tag_at, schema, name, "wrong wire type (fixed64)"));
                    }
                }
                5 => {
                    if end - pos < 4 {
                        return Err(self.err(tag_at, schema, name, "truncated fixed32"));
                    }
                    pos += 4;
                    if let Some(fd) = field
                        && !matches!(fd.kind, Fixed32)
                    {
                        return Err(self.err(tag_at, schema, name, "wrong wire type (fixed32)"));
                    }
                }
                2 => {
                    let len = read_varint(self.buf, &mut pos, end)
                        .ok_or_else(|| self.err(tag_at, schema, name, "truncated length"))?;
                    let len =
                        usize::try_from(len).map_err(|_| self.err(tag_at, schema, name, "length out of range"))?;
                    if len > end - pos {
                        return Err(self.err(tag_at, schema, name, "length exceeds message"));
                    }
                    let body = pos;
                    pos += len;
                    if let Some(fd) = field {
                        match fd.kind {
                            Msg(inner) | One(inner) => {
                                if let One(_) = fd.kind {
                                    let bit = 1u32 << (fd.tag % 32);
                                    // `Metric.data` is a oneof: protobuf keeps the last member, the
                                    // walk has counted the points of both.
                                    let other_member = std::ptr::eq(schema, &METRIC) && seen_one & !bit != 0;
                                    if seen_one & bit != 0 || other_member {
                                        self.non_canonical = true;
                                    }
                                    seen_one |= bit;
                                }
                                if fd.counted {
                                    self.items += 1;
                                }
                                let any_depth = any_depth + usize::from(std::ptr::eq(inner, &ANY_VALUE));
                                if any_depth > MAX_ANY_VALUE_DEPTH {
                                    return Err(self.err(tag_at, schema, name, ANY_VALUE_TOO_DEEP));
                                }
                                self.walk(inner, body, pos, depth + 1, any_depth)?;
                            }
                            Str => {
                                if std::str::from_utf8(&self.buf[body..pos]).is_err() {
                                    return Err(self.err(body, schema, name, "string is not valid UTF-8"));
                                }
                            }
                            Bytes => {}
                            Id(kind) => {
                                if len != 0 && len != kind.len() {
                                    return Err(self.err(tag_at, schema, name, kind.reason()));
                                }
                            }
                            PackedFixed64 => {
                                if len % 8 != 0 {
                                    return Err(self.err(
                                        body,
                                        schema,
                                        name,
                                        "packed fixed64 length not a multiple of 8",
                                    ));
                                }
                            }
                            PackedVarint => {
                                let mut p = body;
                                while p < pos {
                                    read_varint(self.buf, &mut p, pos)
                                        .ok_or_else(|| self.err(p, schema, name, "truncated packed varint"))?;
                                }
                            }
                            Varint | Fixed64 | Fixed32 => {
                                return Err(self.err(tag_at, schema, name, "wrong wire type (length-delimited)"));
                            }
                        }
                    }
                }
                3 | 4 => {
                    return Err(self.err(tag_at, schema, name, "groups are not supported"));
                }
                _ => return Err(self.err(tag_at, schema, name, "invalid wire type")),
            }
        }
        if pos != end {
            return Err(self.err(end, schema, None, "field overruns its message"));
        }
        Ok(())
    }
}

/// Validates `buf` as the message described by `schema` and returns the number of counted items.
pub(crate) fn validate_and_count(schema: &'static Schema, buf: &[u8]) -> Result<usize, WireError> {
    validate(schema, buf).map(|v| v.items)
}

/// What the validating walk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validated {
    /// Spans, data points or log records.
    pub items: usize,
    /// A singular message field occurs more than once in some message (valid protobuf: a decoder
    /// merges the occurrences). Zero-copy views read such bytes differently from a decoder, so
    /// the caller decodes them.
    pub non_canonical: bool,
}

/// Validates `buf` as the message described by `schema`.
pub(crate) fn validate(schema: &'static Schema, buf: &[u8]) -> Result<Validated, WireError> {
    let mut w = Walker {
        buf,
        items: 0,
        non_canonical: false,
    };
    w.walk(schema, 0, buf.len(), 0, 0)?;
    Ok(Validated {
        items: w.items,
        non_canonical: w.non_canonical,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    fn request(spans_per_scope: &[usize]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: spans_per_scope
                    .iter()
                    .map(|&n| ScopeSpans {
                        spans: (0..n)
                            .map(|i| Span {
                                name: format!("span-{i}"),
                                trace_id: vec![1; 16],
                                span_id: vec![2; 8],
                                attributes: vec![KeyValue {
                                    key: "k".into(),
                                    value: Some(AnyValue {
                                        value: Some(any_value::Value::IntValue(-5)),
                                    }),
                                    ..Default::default()
                                }],
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn counts_spans_across_scopes() {
        let bytes = request(&[3, 0, 7]).encode_to_vec();
        assert_eq!(validate_and_count(&TRACES_REQUEST, &bytes), Ok(10));
    }

    #[test]
    fn empty_message_is_valid() {
        assert_eq!(validate_and_count(&TRACES_REQUEST, &[]), Ok(0));
    }

    #[test]
    fn rejects_truncation_everywhere() {
        let bytes = request(&[2]).encode_to_vec();
        for cut in 1..bytes.len() {
            let r = validate_and_count(&TRACES_REQUEST, &bytes[..cut]);
            // Every strict prefix either fails or is itself a valid message that prost accepts.
            if r.is_ok() {
                assert!(ExportTraceServiceRequest::decode(&bytes[..cut]).is_ok(), "cut {cut}");
            }
        }
    }

    #[test]
    fn rejects_invalid_utf8_in_span_name() {
        let mut req = request(&[1]);
        req.resource_spans[0].scope_spans[0].spans[0].name = "abcd".into();
        let mut bytes = req.encode_to_vec();
        let at = bytes.windows(4).position(|w| w == b"abcd").unwrap_or(0);
        bytes[at] = 0xff;
        let err = validate_and_count(&TRACES_REQUEST, &bytes).unwrap_err();
        assert_eq!(err.at, "Span.name");
        assert!(ExportTraceServiceRequest::decode(bytes.as_slice()).is_err());
    }

    #[test]
    fn garbage_is_rejected() {
        let garbage = b"this is not protobuf at all, just text";
        assert!(validate_and_count(&TRACES_REQUEST, garbage).is_err());
    }

    #[test]
    fn agrees_with_prost_on_random_mutations() {
        use rand::{Rng, SeedableRng};
        let base = request(&[4, 2]).encode_to_vec();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..5000 {
            let mut b = base.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            let ours = validate_and_count(&TRACES_REQUEST, &b);
            if ours.is_ok() {
                // When the walk accepts, prost must be able to decode (the reverse need not hold:
                // prost ignores unknown wire types less strictly than we do in some cases).
                assert!(ExportTraceServiceRequest::decode(b.as_slice()).is_ok(), "{b:?}");
            }
        }
    }

    /// An `AnyValue` nested `levels` deep (level 1 is the value itself), through kvlists or arrays.
    pub(crate) fn nested(levels: usize, kvlist: bool) -> AnyValue {
        use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
        let mut v = AnyValue {
            value: Some(any_value::Value::StringValue("leaf".into())),
        };
        for _ in 1..levels {
            v = AnyValue {
                value: Some(if kvlist {
                    any_value::Value::KvlistValue(KeyValueList {
                        values: vec![KeyValue {
                            key: "k".into(),
                            value: Some(v),
                            ..Default::default()
                        }],
                    })
                } else {
                    any_value::Value::ArrayValue(ArrayValue { values: vec![v] })
                }),
            };
        }
        v
    }

    fn with_attribute(value: AnyValue) -> ExportTraceServiceRequest {
        let mut r = request(&[1]);
        r.resource_spans[0].scope_spans[0].spans[0].attributes[0].value = Some(value);
        r
    }

    #[test]
    fn any_value_nesting_limit_is_the_same_for_arrays_and_kvlists() {
        for kvlist in [true, false] {
            let at = with_attribute(nested(MAX_ANY_VALUE_DEPTH, kvlist)).encode_to_vec();
            assert_eq!(validate_and_count(&TRACES_REQUEST, &at), Ok(1), "kvlist={kvlist}");
            assert!(ExportTraceServiceRequest::decode(at.as_slice()).is_ok());
            let over = with_attribute(nested(MAX_ANY_VALUE_DEPTH + 1, kvlist)).encode_to_vec();
            let e = validate_and_count(&TRACES_REQUEST, &over).unwrap_err();
            assert_eq!(e.reason, ANY_VALUE_TOO_DEEP, "kvlist={kvlist}");
            assert!(e.at == "KeyValue.value" || e.at == "ArrayValue.values", "{e}");
        }
        assert!(ANY_VALUE_TOO_DEEP.contains(&format!(" {MAX_ANY_VALUE_DEPTH} levels")));
    }

    #[test]
    fn deepest_accepted_any_value_decodes_wherever_it_sits() {
        // The deepest place for an AnyValue: an exemplar's filtered attribute. At the limit, prost
        // still decodes it and serde_json still reads its OTLP/JSON.
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::{
            Exemplar, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
        };
        let req = |levels| ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "m".into(),
                        data: Some(metric::Data::Sum(Sum {
                            data_points: vec![NumberDataPoint {
                                exemplars: vec![Exemplar {
                                    filtered_attributes: vec![KeyValue {
                                        key: "k".into(),
                                        value: Some(nested(levels, true)),
                                        ..Default::default()
                                    }],
                                    ..Default::default()
                                }],
                                ..Default::default()
                            }],
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let at = req(MAX_ANY_VALUE_DEPTH);
        let bytes = at.encode_to_vec();
        assert_eq!(validate_and_count(&METRICS_REQUEST, &bytes), Ok(1));
        assert_eq!(ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap(), at);
        let json = serde_json::to_vec(&at).unwrap();
        let back: ExportMetricsServiceRequest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, at);
        let over = req(MAX_ANY_VALUE_DEPTH + 1).encode_to_vec();
        assert!(validate_and_count(&METRICS_REQUEST, &over).is_err());
    }

    #[test]
    fn ids_of_the_wrong_length_are_refused_naming_the_field() {
        use opentelemetry_proto::tonic::trace::v1::span::Link;
        let check = |edit: &dyn Fn(&mut Span), at: &str, ok: bool| {
            let mut r = request(&[1]);
            edit(&mut r.resource_spans[0].scope_spans[0].spans[0]);
            let got = validate_and_count(&TRACES_REQUEST, &r.encode_to_vec());
            if ok {
                assert_eq!(got, Ok(1), "{at}");
            } else {
                let e = got.unwrap_err();
                assert_eq!(e.at, at, "{e}");
                assert!(e.reason.contains("must be"), "{e}");
            }
        };
        check(&|s| s.trace_id = vec![1; 15], "Span.trace_id", false);
        check(&|s| s.trace_id = vec![1; 17], "Span.trace_id", false);
        check(&|s| s.trace_id = vec![], "Span.trace_id", true);
        check(&|s| s.span_id = vec![2; 7], "Span.span_id", false);
        check(&|s| s.span_id = vec![2; 16], "Span.span_id", false);
        check(&|s| s.parent_span_id = vec![3; 9], "Span.parent_span_id", false);
        check(&|s| s.parent_span_id = vec![3; 8], "Span.parent_span_id", true);
        let link = |t: usize, sp: usize| Link {
            trace_id: vec![4; t],
            span_id: vec![5; sp],
            ..Default::default()
        };
        check(&|s| s.links = vec![link(16, 8)], "Span.Link.trace_id", true);
        check(&|s| s.links = vec![link(15, 8)], "Span.Link.trace_id", false);
        check(&|s| s.links = vec![link(16, 9)], "Span.Link.span_id", false);
    }

    #[test]
    fn log_and_exemplar_ids_are_checked_too() {
        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
        use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        let logs = |t: usize, sp: usize| {
            ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: vec![LogRecord {
                            trace_id: vec![1; t],
                            span_id: vec![2; sp],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec()
        };
        assert_eq!(validate_and_count(&LOGS_REQUEST, &logs(16, 8)), Ok(1));
        assert_eq!(validate_and_count(&LOGS_REQUEST, &logs(0, 0)), Ok(1));
        assert_eq!(
            validate_and_count(&LOGS_REQUEST, &logs(15, 8)).unwrap_err().at,
            "LogRecord.trace_id"
        );
        assert_eq!(
            validate_and_count(&LOGS_REQUEST, &logs(16, 4)).unwrap_err().at,
            "LogRecord.span_id"
        );
    }
}
