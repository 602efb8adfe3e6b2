//! Zero-copy views over encoded OTLP traces, and a rewriter that adds or removes
//! span attributes without decoding.
//!
//! A full decode into owned structs costs about 12× a walk over the bytes
//! (`../shared/docs/performance-notes.md`). Components on the hot path that read a
//! few fields per span (the business impact connector) or add a few attributes
//! (enrichment) use these views instead: nothing is allocated per span, strings
//! are borrowed from the request buffer.
//!
//! The views expect bytes that passed [`crate::Traces::from_bytes`]'s validating
//! walk; on malformed input they never panic, they stop early and return what
//! they read.

use crate::wire::read_varint;

/// One protobuf field value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// Iterates `(field number, value)` over a message's bytes.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Fields { buf, pos: 0 }
    }
}

impl<'a> Iterator for Fields<'a> {
    /// (field number, value, byte range of the whole field in the message)
    type Item = (u32, Wire<'a>, std::ops::Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        let end = self.buf.len();
        if self.pos >= end {
            return None;
        }
        let start = self.pos;
        let key = read_varint(self.buf, &mut self.pos, end)?;
        let tag = u32::try_from(key >> 3).ok()?;
        let value = match key & 7 {
            0 => Wire::Varint(read_varint(self.buf, &mut self.pos, end)?),
            1 => {
                let b = self.buf.get(self.pos..self.pos + 8)?;
                self.pos += 8;
                Wire::Fixed64(u64::from_le_bytes(b.try_into().ok()?))
            }
            5 => {
                let b = self.buf.get(self.pos..self.pos + 4)?;
                self.pos += 4;
                Wire::Fixed32(u32::from_le_bytes(b.try_into().ok()?))
            }
            2 => {
                let len = usize::try_from(read_varint(self.buf, &mut self.pos, end)?).ok()?;
                let b = self.buf.get(self.pos..self.pos.checked_add(len)?)?;
                self.pos += len;
                Wire::Bytes(b)
            }
            _ => {
                self.pos = end;
                return None;
            }
        };
        Some((tag, value, start..self.pos))
    }
}

fn str_of(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

/// An attribute value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AnyValueView<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// An array or key-value list, as its encoded message.
    Array(&'a [u8]),
    KvList(&'a [u8]),
    Empty,
}

impl<'a> AnyValueView<'a> {
    /// Parses an encoded `AnyValue`.
    pub fn parse(buf: &'a [u8]) -> Self {
        let mut v = AnyValueView::Empty;
        for (tag, w, _) in Fields::new(buf) {
            v = match (tag, w) {
                (1, Wire::Bytes(b)) => AnyValueView::Str(str_of(b)),
                (2, Wire::Varint(x)) => AnyValueView::Bool(x != 0),
                (3, Wire::Varint(x)) => AnyValueView::Int(x as i64),
                (4, Wire::Fixed64(x)) => AnyValueView::Double(f64::from_bits(x)),
                (5, Wire::Bytes(b)) => AnyValueView::Array(b),
                (6, Wire::Bytes(b)) => AnyValueView::KvList(b),
                (7, Wire::Bytes(b)) => AnyValueView::Bytes(b),
                _ => v,
            };
        }
        v
    }

    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            AnyValueView::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AnyValueView::Int(i) => Some(*i),
            AnyValueView::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// A `KeyValue`: the key and the encoded value.
#[derive(Debug, Clone, Copy)]
pub struct KeyValueView<'a> {
    pub key: &'a str,
    /// The encoded `AnyValue` (copy it verbatim to re-emit the value under another key).
    pub value_bytes: &'a [u8],
}

impl<'a> KeyValueView<'a> {
    fn parse(buf: &'a [u8]) -> Self {
        let mut kv = KeyValueView {
            key: "",
            value_bytes: &[],
        };
        for (tag, w, _) in Fields::new(buf) {
            match (tag, w) {
                (1, Wire::Bytes(b)) => kv.key = str_of(b),
                (2, Wire::Bytes(b)) => kv.value_bytes = b,
                _ => {}
            }
        }
        kv
    }

    pub fn value(&self) -> AnyValueView<'a> {
        AnyValueView::parse(self.value_bytes)
    }
}

/// The repeated `KeyValue` field `tag` of a message.
#[derive(Debug, Clone, Copy)]
pub struct AttributesView<'a> {
    msg: &'a [u8],
    tag: u32,
}

impl<'a> AttributesView<'a> {
    pub fn iter(&self) -> impl Iterator<Item = KeyValueView<'a>> + 'a {
        let tag = self.tag;
        Fields::new(self.msg).filter_map(move |(t, w, _)| match (t, w) {
            (t, Wire::Bytes(b)) if t == tag => Some(KeyValueView::parse(b)),
            _ => None,
        })
    }

    /// The value of attribute `key` (the first one, attribute keys being unique in OTLP).
    pub fn get(&self, key: &str) -> Option<AnyValueView<'a>> {
        self.iter().find(|kv| kv.key == key).map(|kv| kv.value())
    }

    /// The encoded value of attribute `key`.
    pub fn get_raw(&self, key: &str) -> Option<&'a [u8]> {
        self.iter().find(|kv| kv.key == key).map(|kv| kv.value_bytes)
    }
}

/// Status code of a span (`STATUS_CODE_ERROR` = 2).
pub const STATUS_ERROR: i32 = 2;

/// The fields of a span, read in one pass; attributes on demand.
#[derive(Debug, Clone, Copy)]
pub struct SpanView<'a> {
    pub raw: &'a [u8],
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    pub name: &'a str,
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub status_code: i32,
    pub status_message: &'a str,
}

impl<'a> SpanView<'a> {
    pub fn parse(raw: &'a [u8]) -> Self {
        let mut s = SpanView {
            raw,
            trace_id: &[],
            span_id: &[],
            parent_span_id: &[],
            name: "",
            kind: 0,
            start_time_unix_nano: 0,
            end_time_unix_nano: 0,
            status_code: 0,
            status_message: "",
        };
        for (tag, w, _) in Fields::new(raw) {
            match (tag, w) {
                (1, Wire::Bytes(b)) => s.trace_id = b,
                (2, Wire::Bytes(b)) => s.span_id = b,
                (4, Wire::Bytes(b)) => s.parent_span_id = b,
                (5, Wire::Bytes(b)) => s.name = str_of(b),
                (6, Wire::Varint(v)) => s.kind = v as i32,
                (7, Wire::Fixed64(v)) => s.start_time_unix_nano = v,
                (8, Wire::Fixed64(v)) => s.end_time_unix_nano = v,
                (15, Wire::Bytes(b)) => {
                    for (t, w, _) in Fields::new(b) {
                        match (t, w) {
                            (2, Wire::Bytes(m)) => s.status_message = str_of(m),
                            (3, Wire::Varint(c)) => s.status_code = c as i32,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        s
    }

    pub fn attributes(&self) -> AttributesView<'a> {
        AttributesView { msg: self.raw, tag: 9 }
    }

    pub fn is_error(&self) -> bool {
        self.status_code == STATUS_ERROR
    }
}

/// A resource: its attributes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceView<'a> {
    raw: &'a [u8],
}

impl<'a> ResourceView<'a> {
    pub fn attributes(&self) -> AttributesView<'a> {
        AttributesView { msg: self.raw, tag: 1 }
    }

    /// `service.name`, or `""`.
    pub fn service_name(&self) -> &'a str {
        self.attributes()
            .get("service.name")
            .and_then(|v| v.as_str())
            .unwrap_or("")
    }
}

/// Calls `f` with the resource of every span and the span, in order.
pub fn for_each_span<'a>(request: &'a [u8], mut f: impl FnMut(&ResourceView<'a>, &SpanView<'a>)) {
    for (tag, w, _) in Fields::new(request) {
        let (1, Wire::Bytes(rs)) = (tag, w) else { continue };
        let mut resource = ResourceView::default();
        for (t, w, _) in Fields::new(rs) {
            if let (1, Wire::Bytes(r)) = (t, w) {
                resource = ResourceView { raw: r };
            }
        }
        for (t, w, _) in Fields::new(rs) {
            let (2, Wire::Bytes(ss)) = (t, w) else { continue };
            for (t2, w2, _) in Fields::new(ss) {
                if let (2, Wire::Bytes(span)) = (t2, w2) {
                    f(&resource, &SpanView::parse(span));
                }
            }
        }
    }
}

// --- encoding helpers ---

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_len_field(out: &mut Vec<u8>, tag: u32, body: &[u8]) {
    put_varint(out, (u64::from(tag) << 3) | 2);
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

fn len_field_size(tag: u32, body_len: usize) -> usize {
    varint_len((u64::from(tag) << 3) | 2) + varint_len(body_len as u64) + body_len
}

/// Changes to one span's attributes, collected by a [`rewrite_spans`] callback.
#[derive(Debug, Default)]
pub struct SpanEdit {
    /// Encoded `KeyValue` fields (tag 9) to append.
    added: Vec<u8>,
    /// Keys of attributes to drop.
    removed: Vec<String>,
    /// Keys added so far (so a second add of the same key is ignored).
    added_keys: Vec<String>,
}

impl SpanEdit {
    fn clear(&mut self) {
        self.added.clear();
        self.removed.clear();
        self.added_keys.clear();
    }

    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }

    /// Whether `key` was added in this edit.
    pub fn has_added(&self, key: &str) -> bool {
        self.added_keys.iter().any(|k| k == key)
    }

    /// Adds attribute `key` with an encoded `AnyValue` (e.g. copied from another attribute).
    pub fn add_raw(&mut self, key: &str, any_value: &[u8]) {
        if self.has_added(key) {
            return;
        }
        let kv_len = len_field_size(1, key.len()) + len_field_size(2, any_value.len());
        put_varint(&mut self.added, (9 << 3) | 2);
        put_varint(&mut self.added, kv_len as u64);
        put_len_field(&mut self.added, 1, key.as_bytes());
        put_len_field(&mut self.added, 2, any_value);
        self.added_keys.push(key.to_string());
    }

    /// Adds a string attribute.
    pub fn add_str(&mut self, key: &str, value: &str) {
        let mut any = Vec::with_capacity(value.len() + 2);
        put_len_field(&mut any, 1, value.as_bytes());
        self.add_raw(key, &any);
    }

    /// Adds an integer attribute.
    pub fn add_int(&mut self, key: &str, value: i64) {
        let mut any = Vec::with_capacity(11);
        put_varint(&mut any, 3 << 3);
        put_varint(&mut any, value as u64);
        self.add_raw(key, &any);
    }

    /// Drops attribute `key` from the span.
    pub fn remove(&mut self, key: &str) {
        self.removed.push(key.to_string());
    }
}

/// Re-encodes a traces request, letting `edit` add or remove attributes of each span.
/// Spans without changes are copied byte for byte. Returns `None` when nothing changed
/// (the caller keeps the original bytes).
pub fn rewrite_spans(
    request: &[u8],
    mut edit: impl FnMut(&ResourceView<'_>, &SpanView<'_>, &mut SpanEdit),
) -> Option<Vec<u8>> {
    // First pass: collect each span's new encoding where it changes.
    // Changed spans are stored in `changed` as (span start pointer, new bytes).
    let mut changed: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut scratch = SpanEdit::default();
    let base = request.as_ptr() as usize;
    for_each_span(request, |res, span| {
        scratch.clear();
        edit(res, span, &mut scratch);
        if scratch.is_empty() {
            return;
        }
        let mut body = Vec::with_capacity(span.raw.len() + scratch.added.len());
        if scratch.removed.is_empty() {
            body.extend_from_slice(span.raw);
        } else {
            for (tag, w, range) in Fields::new(span.raw) {
                if tag == 9
                    && let Wire::Bytes(kv) = w
                    && scratch.removed.iter().any(|k| k == KeyValueView::parse(kv).key)
                {
                    continue;
                }
                body.extend_from_slice(span.raw.get(range).unwrap_or(&[]));
            }
        }
        body.extend_from_slice(&scratch.added);
        changed.push((span.raw.as_ptr() as usize - base, body));
    });
    if changed.is_empty() {
        return None;
    }
    let mut next = 0;
    let mut out = Vec::with_capacity(request.len() + changed.iter().map(|c| c.1.len()).sum::<usize>() / 4);
    // Second pass: copy, replacing changed spans and fixing the lengths around them.
    for (tag, w, range) in Fields::new(request) {
        match (tag, w) {
            (1, Wire::Bytes(rs)) => {
                let rs_body = rewrite_container(request, rs, 2, &changed, &mut next, |ss, changed, next| {
                    rewrite_container(request, ss, 2, changed, next, |_, _, _| None)
                });
                match rs_body {
                    Some(b) => put_len_field(&mut out, 1, &b),
                    None => out.extend_from_slice(request.get(range).unwrap_or(&[])),
                }
            }
            _ => out.extend_from_slice(request.get(range).unwrap_or(&[])),
        }
    }
    Some(out)
}

/// Rewrites message `msg` (a slice of `request`) whose repeated field `child_tag` holds children:
/// a child whose start is in `changed` is replaced; otherwise `inner` may rewrite it. Returns the
/// new encoding, or `None` when nothing inside changed.
fn rewrite_container(
    request: &[u8],
    msg: &[u8],
    child_tag: u32,
    changed: &[(usize, Vec<u8>)],
    next: &mut usize,
    inner: impl Fn(&[u8], &[(usize, Vec<u8>)], &mut usize) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    let base = request.as_ptr() as usize;
    let msg_start = msg.as_ptr() as usize - base;
    let msg_end = msg_start + msg.len();
    // Nothing changed inside this message: keep it.
    let first = changed.get(*next)?;
    if first.0 >= msg_end {
        return None;
    }
    let mut out = Vec::with_capacity(msg.len() + 256);
    for (tag, w, range) in Fields::new(msg) {
        match (tag, w) {
            (t, Wire::Bytes(child)) if t == child_tag => {
                let child_start = child.as_ptr() as usize - base;
                if let Some((pos, bytes)) = changed.get(*next)
                    && *pos == child_start
                {
                    put_len_field(&mut out, t, bytes);
                    *next += 1;
                    continue;
                }
                match inner(child, changed, next) {
                    Some(b) => put_len_field(&mut out, t, &b),
                    None => out.extend_from_slice(msg.get(range).unwrap_or(&[])),
                }
            }
            _ => out.extend_from_slice(msg.get(range).unwrap_or(&[])),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn request() -> ExportTraceServiceRequest {
        let span = |i: u8, err: bool| Span {
            trace_id: vec![i; 16],
            span_id: vec![i; 8],
            name: format!("span-{i}"),
            kind: 2,
            start_time_unix_nano: 10,
            end_time_unix_nano: 20 + u64::from(i),
            attributes: vec![
                kv("user.id", any_value::Value::StringValue(format!("cust-{i}"))),
                kv("demo.order.amount", any_value::Value::DoubleValue(12.5)),
                kv("n", any_value::Value::IntValue(-3)),
            ],
            status: Some(Status {
                code: if err { 2 } else { 1 },
                message: if err { "boom".into() } else { String::new() },
            }),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: (0..2)
                .map(|r| ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv("service.name", any_value::Value::StringValue(format!("svc{r}")))],
                        ..Default::default()
                    }),
                    scope_spans: vec![
                        ScopeSpans {
                            spans: vec![span(r * 10 + 1, false), span(r * 10 + 2, true)],
                            schema_url: "s".into(),
                            ..Default::default()
                        },
                        ScopeSpans {
                            spans: vec![span(r * 10 + 3, false)],
                            ..Default::default()
                        },
                    ],
                    schema_url: "r".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn views_read_what_prost_decodes() {
        let req = request();
        let bytes = req.encode_to_vec();
        let mut seen = Vec::new();
        for_each_span(&bytes, |res, s| {
            seen.push((
                res.service_name().to_string(),
                s.name.to_string(),
                s.is_error(),
                s.status_message.to_string(),
                s.end_time_unix_nano,
                s.attributes()
                    .get("user.id")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
                s.attributes().get("demo.order.amount"),
                s.attributes().get("n").and_then(|v| v.as_i64()),
                s.trace_id.to_vec(),
            ));
        });
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[1].0, "svc0");
        assert_eq!(seen[1].1, "span-2");
        assert!(seen[1].2);
        assert_eq!(seen[1].3, "boom");
        assert_eq!(seen[1].4, 22);
        assert_eq!(seen[1].5.as_deref(), Some("cust-2"));
        assert_eq!(seen[1].6, Some(AnyValueView::Double(12.5)));
        assert_eq!(seen[1].7, Some(-3));
        assert_eq!(seen[4].0, "svc1");
        assert_eq!(seen[4].8, vec![12u8; 16]);
    }

    #[test]
    fn rewrite_adds_and_removes_attributes_exactly_like_a_decode_would() {
        let req = request();
        let bytes = req.encode_to_vec();
        let out = rewrite_spans(&bytes, |res, s, e| {
            if s.is_error() {
                e.add_str(
                    "business.customer.id",
                    s.attributes().get("user.id").and_then(|v| v.as_str()).unwrap_or(""),
                );
                e.add_int("business.cart.items", 3);
                e.remove("n");
            }
            if res.service_name() == "svc1" && s.name == "span-13" {
                if let Some(raw) = s.attributes().get_raw("demo.order.amount") {
                    e.add_raw("business.order.value", raw);
                }
            }
        })
        .expect("changed");
        let got = ExportTraceServiceRequest::decode(out.as_slice()).expect("valid protobuf");
        // Build the expectation by editing the decoded form.
        let mut want = req.clone();
        for rs in &mut want.resource_spans {
            let svc = rs.resource.as_ref().map(|r| r.attributes[0].clone());
            for ss in &mut rs.scope_spans {
                for s in &mut ss.spans {
                    if s.status.as_ref().map(|st| st.code) == Some(2) {
                        let uid = s.attributes[0].value.clone();
                        s.attributes.retain(|a| a.key != "n");
                        s.attributes.push(KeyValue {
                            key: "business.customer.id".into(),
                            value: uid,
                            ..Default::default()
                        });
                        s.attributes
                            .push(kv("business.cart.items", any_value::Value::IntValue(3)));
                    }
                    if svc.as_ref().map(|k| k.value.clone())
                        == Some(Some(AnyValue {
                            value: Some(any_value::Value::StringValue("svc1".into())),
                        }))
                        && s.name == "span-13"
                    {
                        s.attributes
                            .push(kv("business.order.value", any_value::Value::DoubleValue(12.5)));
                    }
                }
            }
        }
        assert_eq!(got, want);
        assert!(
            crate::Traces::from_bytes(out.into()).is_ok(),
            "the walk accepts the rewrite"
        );
    }

    #[test]
    fn unchanged_requests_are_not_copied() {
        let bytes = request().encode_to_vec();
        assert!(rewrite_spans(&bytes, |_, _, _| {}).is_none());
    }

    #[test]
    fn garbage_never_panics() {
        let bytes = request().encode_to_vec();
        for cut in 0..bytes.len() {
            let b = &bytes[..cut];
            for_each_span(b, |_, s| {
                let _ = s.attributes().get("user.id");
            });
            let _ = rewrite_spans(b, |_, _, e| e.add_int("x", 1));
        }
    }
}
