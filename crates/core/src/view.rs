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

use crate::pb::{len_field_size, put_len_field, put_varint, read_varint, varint_len};
use crate::pdata::{Signal, Work, count_work};
use std::ops::Range;

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
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Fields { buf, pos: 0 }
    }
}

impl<'a> Iterator for Fields<'a> {
    /// (field number, value, byte range of the whole field in the message)
    type Item = (u32, Wire<'a>, std::ops::Range<usize>);

    // Always inlined: the walks over spans and attributes call it for every field, and inlined
    // into them the tuple is never materialised.
    #[inline(always)]
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
                // `string_value_strindex` (field 8) is a member of the same oneof that the view does not
                // read: as in protobuf, the last member present wins, so it replaces what came before and
                // readers that need it decode the value (found by the `view_equivalence` fuzz target).
                (8, _) => AnyValueView::Empty,
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

/// The key and the encoded value (empty when absent) of an encoded `KeyValue`, as bytes: what
/// [`KeyValueView::parse`] reads, without checking that the key is UTF-8 (the validating walk did).
/// The usual layout (key, then value, nothing else) is read without a general field walk.
#[inline]
pub fn split_key_value(kv: &[u8]) -> (&[u8], &[u8]) {
    // Fast path: 0x0a <len < 128> key 0x12 <len> value, and nothing after.
    if let [0x0a, klen, rest @ ..] = kv
        && *klen < 0x80
        && let Some((key, rest)) = rest.split_at_checked(usize::from(*klen))
    {
        match rest {
            [] => return (key, &[]),
            [0x12, vlen, value @ ..] if *vlen < 0x80 && value.len() == usize::from(*vlen) => return (key, value),
            _ => {}
        }
    }
    let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
    for (tag, w, _) in Fields::new(kv) {
        match (tag, w) {
            (1, Wire::Bytes(b)) => key = b,
            (2, Wire::Bytes(b)) => value = b,
            _ => {}
        }
    }
    (key, value)
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
        self.get_raw(key).map(AnyValueView::parse)
    }

    /// The encoded value of attribute `key` (the first one; empty when it has no value). Keys are
    /// compared as bytes, without decoding the others.
    pub fn get_raw(&self, key: &str) -> Option<&'a [u8]> {
        let needle = key.as_bytes();
        for (t, w, _) in Fields::new(self.msg) {
            if let Wire::Bytes(kv) = w
                && t == self.tag
            {
                let (k, v) = split_key_value(kv);
                if k == needle {
                    return Some(v);
                }
            }
        }
        None
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
    /// The encoded `Resource` (empty when the request has none). Two spans of the same
    /// `ResourceSpans` get views over the same bytes, so components can cache what they derive
    /// from a resource by the address and length of these bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

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
    count_work(Signal::Traces, Work::Walk);
    for (tag, w, _) in Fields::new(request) {
        let (1, Wire::Bytes(rs)) = (tag, w) else { continue };
        let resource = resource_of(rs);
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

// --- values ---

/// An attribute value as the rules of a component read it, from either representation: borrowed from a
/// decoded `AnyValue` ([`ValueRef::from_value`]) or read from an encoded one ([`ValueRef::from_encoded`]).
///
/// Scalars (the values business attributes hold) are borrowed or copied; arrays, maps and bytes are
/// decoded into an owned value when read from bytes (rare, and allocating). The text and integer
/// readings have exactly the semantics of `bizpilot_business::attrs::value_as_str` and `value_as_i64`,
/// so a component gives the same answer on either path.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueRef<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    /// Anything else (array, key-value list, bytes, string index), decoded.
    Other(std::borrow::Cow<'a, AnyValueKind>),
}

/// The decoded `AnyValue` oneof (`opentelemetry_proto::tonic::common::v1::any_value::Value`).
pub type AnyValueKind = opentelemetry_proto::tonic::common::v1::any_value::Value;

impl<'a> ValueRef<'a> {
    /// Borrows a decoded value.
    pub fn from_value(v: &'a AnyValueKind) -> Self {
        match v {
            AnyValueKind::StringValue(s) => ValueRef::Str(s),
            AnyValueKind::BoolValue(b) => ValueRef::Bool(*b),
            AnyValueKind::IntValue(i) => ValueRef::Int(*i),
            AnyValueKind::DoubleValue(d) => ValueRef::Double(*d),
            other => ValueRef::Other(std::borrow::Cow::Borrowed(other)),
        }
    }

    /// Reads an encoded `AnyValue`; `None` when it holds no value (as a decoded `AnyValue { value: None }`,
    /// which readers of decoded attributes treat as absent).
    pub fn from_encoded(any_value: &'a [u8]) -> Option<Self> {
        match AnyValueView::parse(any_value) {
            AnyValueView::Str(s) => Some(ValueRef::Str(s)),
            AnyValueView::Bool(b) => Some(ValueRef::Bool(b)),
            AnyValueView::Int(i) => Some(ValueRef::Int(i)),
            AnyValueView::Double(d) => Some(ValueRef::Double(d)),
            // Arrays, maps, bytes and kinds the view does not know: decode.
            _ => decode_any_value(any_value).map(|v| ValueRef::Other(std::borrow::Cow::Owned(v))),
        }
    }

    /// The value as text: strings borrowed; integers, finite doubles (shortest round-trip form) and
    /// booleans rendered; anything else `None` (as `attrs::value_as_str`).
    pub fn as_text(&self) -> Option<std::borrow::Cow<'a, str>> {
        use std::borrow::Cow;
        match self {
            ValueRef::Str(s) => Some(Cow::Borrowed(s)),
            ValueRef::Int(i) => Some(Cow::Owned(i.to_string())),
            ValueRef::Double(d) if d.is_finite() => Some(Cow::Owned(d.to_string())),
            ValueRef::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            ValueRef::Double(_) => None,
            ValueRef::Other(v) => match v.as_ref() {
                AnyValueKind::StringValue(s) => Some(Cow::Owned(s.clone())),
                _ => None,
            },
        }
    }

    /// The value if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ValueRef::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an integer: an int, an integral double, or a string holding an integer
    /// (as `attrs::value_as_i64`).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            ValueRef::Int(i) => Some(*i),
            ValueRef::Double(d) if d.fract() == 0.0 && d.is_finite() && d.abs() < 9.0e15 => Some(*d as i64),
            ValueRef::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The owned decoded value (allocates for strings).
    pub fn to_value(&self) -> AnyValueKind {
        match self {
            ValueRef::Str(s) => AnyValueKind::StringValue((*s).to_string()),
            ValueRef::Bool(b) => AnyValueKind::BoolValue(*b),
            ValueRef::Int(i) => AnyValueKind::IntValue(*i),
            ValueRef::Double(d) => AnyValueKind::DoubleValue(*d),
            ValueRef::Other(v) => v.as_ref().clone(),
        }
    }
}

/// Decodes an encoded `AnyValue` into its oneof; `None` when no value is set or the bytes are not valid.
pub fn decode_any_value(any_value: &[u8]) -> Option<AnyValueKind> {
    use prost::Message;
    opentelemetry_proto::tonic::common::v1::AnyValue::decode(any_value)
        .ok()
        .and_then(|v| v.value)
}

/// Appends the encoding of an `AnyValue` holding `v` (the body, without a tag or length) to `out`.
pub fn encode_any_value(v: &AnyValueKind, out: &mut Vec<u8>) {
    v.encode(out);
}

/// Changes to one span's attributes, collected by a [`rewrite_spans`] callback.
///
/// Everything is written into buffers that the rewriter reuses from span to span: adding or removing
/// attributes allocates nothing once they have grown.
#[derive(Debug, Default)]
pub struct SpanEdit {
    /// Encoded `KeyValue` fields (tag 9) to append.
    added: Vec<u8>,
    /// Keys of attributes to drop, as ranges of `keys`.
    removed: Vec<std::ops::Range<usize>>,
    /// Keys added so far (so a second add of the same key is ignored), as ranges of `keys`.
    added_keys: Vec<std::ops::Range<usize>>,
    /// The bytes of the keys in `removed` and `added_keys`.
    keys: Vec<u8>,
    /// The span leaves the request ([`SpanEdit::drop_span`]).
    dropped: bool,
}

impl SpanEdit {
    /// Forgets every change (keeping the buffers).
    pub fn clear(&mut self) {
        self.added.clear();
        self.removed.clear();
        self.added_keys.clear();
        self.keys.clear();
        self.dropped = false;
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && !self.dropped
    }

    /// Takes the span out of the request ([`edit_spans`]): its other changes are forgotten. A caller that
    /// keeps the span (e.g. held in a join window) writes it first with [`SpanEdit::apply_to`].
    pub fn drop_span(&mut self) {
        self.clear();
        self.dropped = true;
    }

    /// The body of span `raw` (an encoded `Span`) with these changes: its fields but the removed
    /// attributes, byte for byte, then the added attributes. The request around it is not touched.
    pub fn apply_to(&self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len() + self.added.len());
        for (tag, w, range) in Fields::new(raw) {
            if tag == 9
                && let Wire::Bytes(kv) = w
                && self.is_removed(KeyValueView::parse(kv).key)
            {
                continue;
            }
            out.extend_from_slice(raw.get(range).unwrap_or(&[]));
        }
        out.extend_from_slice(&self.added);
        out
    }

    fn key_at(&self, r: &std::ops::Range<usize>) -> &[u8] {
        self.keys.get(r.clone()).unwrap_or(&[])
    }

    fn push_key(&mut self, key: &str) -> std::ops::Range<usize> {
        let start = self.keys.len();
        self.keys.extend_from_slice(key.as_bytes());
        start..self.keys.len()
    }

    fn is_removed(&self, key: &str) -> bool {
        self.removed.iter().any(|r| self.key_at(r) == key.as_bytes())
    }

    /// Whether `key` was added in this edit.
    pub fn has_added(&self, key: &str) -> bool {
        self.added_keys.iter().any(|r| self.key_at(r) == key.as_bytes())
    }

    /// Appends a `KeyValue` field whose `AnyValue` body has `any_len` bytes, written by `body`.
    fn add_with(&mut self, key: &str, any_len: usize, body: impl FnOnce(&mut Vec<u8>)) {
        if self.has_added(key) {
            return;
        }
        let kv_len = len_field_size(1, key.len()) + len_field_size(2, any_len);
        put_varint(&mut self.added, (9 << 3) | 2);
        put_varint(&mut self.added, kv_len as u64);
        put_len_field(&mut self.added, 1, key.as_bytes());
        put_varint(&mut self.added, (2 << 3) | 2);
        put_varint(&mut self.added, any_len as u64);
        body(&mut self.added);
        let r = self.push_key(key);
        self.added_keys.push(r);
    }

    /// Adds attribute `key` with an encoded `AnyValue` (e.g. copied from another attribute).
    pub fn add_raw(&mut self, key: &str, any_value: &[u8]) {
        self.add_with(key, any_value.len(), |out| out.extend_from_slice(any_value));
    }

    /// Adds a string attribute.
    pub fn add_str(&mut self, key: &str, value: &str) {
        self.add_with(key, len_field_size(1, value.len()), |out| {
            put_len_field(out, 1, value.as_bytes())
        });
    }

    /// Adds an integer attribute.
    pub fn add_int(&mut self, key: &str, value: i64) {
        let v = value as u64;
        self.add_with(key, 1 + varint_len(v), |out| {
            put_varint(out, 3 << 3);
            put_varint(out, v);
        });
    }

    /// Drops attribute `key` from the span (every occurrence of it among the span's own attributes).
    pub fn remove(&mut self, key: &str) {
        if !self.is_removed(key) {
            let r = self.push_key(key);
            self.removed.push(r);
        }
    }
}

/// Offset of `inner` (a slice of `outer`) in `outer`.
fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    (inner.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize)
}

/// Re-encodes a traces request, letting `edit` add or remove attributes of each span.
/// Spans without changes are copied byte for byte. Returns `None` when nothing changed
/// (the caller keeps the original bytes).
pub fn rewrite_spans<'a>(
    request: &'a [u8],
    mut edit: impl FnMut(&ResourceView<'a>, &SpanView<'a>, &mut SpanEdit),
) -> Option<Vec<u8>> {
    match try_rewrite_spans(request, |r, s, e| {
        edit(r, s, e);
        std::ops::ControlFlow::Continue(())
    }) {
        std::ops::ControlFlow::Continue(out) => out,
        std::ops::ControlFlow::Break(()) => None,
    }
}

/// [`rewrite_spans`] that `edit` may stop (`ControlFlow::Break`): then nothing is rewritten and
/// `Break` is returned, so that the caller can take another path for this request.
pub fn try_rewrite_spans<'a>(
    request: &'a [u8],
    mut edit: impl FnMut(&ResourceView<'a>, &SpanView<'a>, &mut SpanEdit) -> std::ops::ControlFlow<()>,
) -> std::ops::ControlFlow<(), Option<Vec<u8>>> {
    try_rewrite_span_bytes(request, |r, raw, e| edit(r, &SpanView::parse(raw), e))
}

/// [`try_rewrite_spans`] for a caller that reads each span itself in one walk (e.g. indexing its
/// attributes): `edit` gets the encoded `Span` (its body, a slice of `request`) instead of a
/// [`SpanView`], which saves parsing every span's fields twice.
pub fn try_rewrite_span_bytes<'a>(
    request: &'a [u8],
    mut edit: impl FnMut(&ResourceView<'a>, &'a [u8], &mut SpanEdit) -> std::ops::ControlFlow<()>,
) -> std::ops::ControlFlow<(), Option<Vec<u8>>> {
    let edited = edit_spans(request, |at, e| edit(&at.resource, at.span, e))?;
    std::ops::ControlFlow::Continue(edited.bytes)
}

/// Where a span sits in an encoded traces request ([`edit_spans`]).
#[derive(Debug, Clone, Copy)]
pub struct SpanAt<'a> {
    /// The span's resource.
    pub resource: ResourceView<'a>,
    /// The body of the span's `ResourceSpans`.
    pub resource_spans: &'a [u8],
    /// The body of the span's `ScopeSpans`.
    pub scope_spans: &'a [u8],
    /// The span's body.
    pub span: &'a [u8],
}

/// The fields of a container message (`ResourceSpans`, `ScopeSpans`) other than its list (field
/// `list_tag`: the scopes, the spans), byte for byte, and the offset in them of the first field numbered
/// above the list: a container rewritten as `header[..mid]`, its list, `header[mid..]` keeps a canonical
/// encoding canonical. What a held span keeps of its resource and scope.
pub fn container_header(body: &[u8], list_tag: u32) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut mid = None;
    for (tag, _, range) in Fields::new(body) {
        if tag == list_tag {
            continue;
        }
        if tag > list_tag && mid.is_none() {
            mid = Some(out.len());
        }
        out.extend_from_slice(body.get(range).unwrap_or(&[]));
    }
    let mid = mid.unwrap_or(out.len());
    (out, mid)
}

/// What [`edit_spans`] did.
#[derive(Debug, Default)]
pub struct EditedSpans {
    /// The new encoding; `None` when nothing changed.
    pub bytes: Option<Vec<u8>>,
    /// Spans taken out of the request ([`SpanEdit::drop_span`]).
    pub dropped: usize,
}

/// One walk over a traces request that lets `edit` change each span: add or remove attributes
/// ([`SpanEdit`]), or take the span out of the request. The changes become one [`FieldEdits`] list, applied
/// in one pass: the request is written once, into a buffer of the final size, unchanged spans byte for byte
/// and the lengths of the scopes and resources around changed ones fixed. `edit` may stop the walk
/// (`ControlFlow::Break`): nothing is written then.
pub fn edit_spans<'a>(
    request: &'a [u8],
    mut edit: impl FnMut(&SpanAt<'a>, &mut SpanEdit) -> std::ops::ControlFlow<()>,
) -> std::ops::ControlFlow<(), EditedSpans> {
    let mut edits = FieldEdits::default();
    let mut scratch = SpanEdit::default();
    let mut dropped = 0usize;
    count_work(Signal::Traces, Work::Walk);
    for (tag, w, _) in Fields::new(request) {
        let (1, Wire::Bytes(rs)) = (tag, w) else { continue };
        let resource = resource_of(rs);
        for (t, w, _) in Fields::new(rs) {
            let (2, Wire::Bytes(ss)) = (t, w) else { continue };
            let ss_base = offset_in(request, ss);
            for (t2, w2, r2) in Fields::new(ss) {
                let (2, Wire::Bytes(raw)) = (t2, w2) else { continue };
                scratch.clear();
                let at = SpanAt {
                    resource,
                    resource_spans: rs,
                    scope_spans: ss,
                    span: raw,
                };
                edit(&at, &mut scratch)?;
                if scratch.is_empty() {
                    continue;
                }
                let field = ss_base + r2.start..ss_base + r2.end;
                if scratch.dropped {
                    edits.delete(field);
                    dropped += 1;
                    continue;
                }
                if !scratch.removed.is_empty() {
                    let base = offset_in(request, raw);
                    for (tag, w, range) in Fields::new(raw) {
                        if tag == 9
                            && let Wire::Bytes(kv) = w
                            && scratch.is_removed(KeyValueView::parse(kv).key)
                        {
                            edits.delete(base + range.start..base + range.end);
                        }
                    }
                }
                if !scratch.added.is_empty() {
                    edits.append_to(field, |out| out.extend_from_slice(&scratch.added));
                }
            }
        }
    }
    let bytes = edits.apply(request);
    if bytes.is_some() {
        count_work(Signal::Traces, Work::Copy);
    }
    std::ops::ControlFlow::Continue(EditedSpans { bytes, dropped })
}

/// One request per trace id, split from an encoded traces request without decoding it (the Kafka
/// exporter's `partition_traces_by_id`, as the Collector's `batchpersignal.SplitTraces`).
///
/// Returns `(trace id, encoded ExportTraceServiceRequest)` per distinct trace id, in order of first
/// appearance ([`split_traces`]); `None` when the request holds one trace id only (or no span): the caller
/// forwards its bytes as they are.
pub fn split_by_trace_id(request: &[u8]) -> Option<Vec<(&[u8], Vec<u8>)>> {
    match split_traces(request) {
        TraceSplit::One(_) => None,
        TraceSplit::Many(groups) => Some(groups.into_iter().map(|g| (g.trace_id, g.request)).collect()),
    }
}

/// What [`split_traces`] found.
#[derive(Debug)]
pub enum TraceSplit<'a> {
    /// Every span has this trace id (empty: no span, or spans without a trace id): nothing to split.
    One(&'a [u8]),
    /// The spans of each trace id, as a request of their own, in order of first appearance.
    Many(Vec<TraceGroup<'a>>),
}

/// The spans of one trace id, split from a request by [`split_traces`].
#[derive(Debug)]
pub struct TraceGroup<'a> {
    trace_id: &'a [u8],
    spans: usize,
    request: Vec<u8>,
}

impl<'a> TraceGroup<'a> {
    /// The trace id (empty for spans whose trace id is empty or all zeros).
    pub fn trace_id(&self) -> &'a [u8] {
        self.trace_id
    }

    /// The number of spans.
    pub fn spans(&self) -> usize {
        self.spans
    }

    /// The encoded request.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// The group as pipeline data, without walking it again: it was written from a validated request, with
    /// its spans counted on the way.
    pub fn into_traces(self) -> crate::Traces {
        crate::Traces::from_written(bytes::Bytes::from(self.request), self.spans)
    }
}

/// One walk over an encoded traces request that splits it per trace id, without decoding it.
///
/// Each group's request keeps, for its spans, their `ResourceSpans` and `ScopeSpans` headers (every field but
/// the span lists, copied byte for byte), and the spans in input order, each copied once. Spans whose trace id
/// is empty or all zeros form one group under an empty id. A request of one trace id only (or no span) is not
/// copied ([`TraceSplit::One`]).
pub fn split_traces(request: &[u8]) -> TraceSplit<'_> {
    use std::collections::HashMap;
    // A span: (resource index, scope index, encoded span).
    type Entry<'a> = (usize, usize, &'a [u8]);
    let mut index: HashMap<&[u8], usize> = HashMap::new();
    let mut groups: Vec<(&[u8], Vec<Entry<'_>>)> = Vec::new();
    // Header fields (raw, tag included) of each resource, and of each scope per resource.
    let mut rs_heads: Vec<Vec<&[u8]>> = Vec::new();
    let mut ss_heads: Vec<Vec<Vec<&[u8]>>> = Vec::new();
    count_work(Signal::Traces, Work::Walk);
    for (tag, w, _) in Fields::new(request) {
        let (1, Wire::Bytes(rs)) = (tag, w) else { continue };
        let ri = rs_heads.len();
        let mut head = Vec::new();
        let mut scopes = Vec::new();
        for (t, w, range) in Fields::new(rs) {
            let (2, Wire::Bytes(ss)) = (t, w) else {
                head.push(rs.get(range).unwrap_or(&[]));
                continue;
            };
            let si = scopes.len();
            let mut shead = Vec::new();
            for (t2, w2, r2) in Fields::new(ss) {
                let (2, Wire::Bytes(span)) = (t2, w2) else {
                    shead.push(ss.get(r2).unwrap_or(&[]));
                    continue;
                };
                let mut id: &[u8] = &[];
                for (t3, w3, _) in Fields::new(span) {
                    if let (1, Wire::Bytes(b)) = (t3, w3) {
                        id = b;
                    }
                }
                if id.iter().all(|b| *b == 0) {
                    id = &[];
                }
                let n = groups.len();
                let g = *index.entry(id).or_insert(n);
                if g == n {
                    groups.push((id, Vec::new()));
                }
                if let Some((_, entries)) = groups.get_mut(g) {
                    entries.push((ri, si, span));
                }
            }
            scopes.push(shead);
        }
        rs_heads.push(head);
        ss_heads.push(scopes);
    }
    if groups.len() <= 1 {
        return TraceSplit::One(groups.first().map_or(&[][..], |g| g.0));
    }
    count_work(Signal::Traces, Work::Copy);
    let empty: Vec<&[u8]> = Vec::new();
    let mut out = Vec::with_capacity(groups.len());
    let (mut rs_body, mut ss_body) = (Vec::new(), Vec::new());
    for (id, entries) in groups {
        let mut req = Vec::new();
        let mut i = 0;
        // Runs of the same resource, within them runs of the same scope (entries are in input order).
        while let Some(&(ri, _, _)) = entries.get(i) {
            rs_body.clear();
            for f in rs_heads.get(ri).unwrap_or(&empty) {
                rs_body.extend_from_slice(f);
            }
            while let Some(&(r, si, _)) = entries.get(i)
                && r == ri
            {
                ss_body.clear();
                for f in ss_heads.get(ri).and_then(|s| s.get(si)).unwrap_or(&empty) {
                    ss_body.extend_from_slice(f);
                }
                while let Some(&(r2, s2, span)) = entries.get(i)
                    && r2 == ri
                    && s2 == si
                {
                    put_len_field(&mut ss_body, 2, span);
                    i += 1;
                }
                put_len_field(&mut rs_body, 2, &ss_body);
            }
            put_len_field(&mut req, 1, &rs_body);
        }
        out.push(TraceGroup {
            trace_id: id,
            spans: entries.len(),
            request: req,
        });
    }
    TraceSplit::Many(out)
}

/// Splits an encoded request of resources (field 1) of scopes (field 2) of items (field 2) — a traces or a
/// logs request — after its first `n` items, without decoding: `(head, tail)`, each written once. As the
/// decoded split (`OtlpMessage::split_off_items`): whole resources and scopes go to the side of their items;
/// the resource and the scope the split falls in are kept on both sides (their other fields copied). Other
/// fields of the request stay in the head.
pub fn split_nested_at(request: &[u8], n: usize) -> (Vec<u8>, Vec<u8>) {
    let mut head = Vec::with_capacity(request.len());
    let mut tail = Vec::new();
    let mut remaining = n;
    for (tag, w, range) in Fields::new(request) {
        let field = request.get(range).unwrap_or(&[]);
        let (1, Wire::Bytes(rs)) = (tag, w) else {
            head.extend_from_slice(field);
            continue;
        };
        if remaining == 0 {
            tail.extend_from_slice(field);
            continue;
        }
        let items_in = |ss: &[u8]| {
            Fields::new(ss)
                .filter(|(t, w, _)| *t == 2 && matches!(w, Wire::Bytes(_)))
                .count()
        };
        let count: usize = Fields::new(rs)
            .filter_map(|(t, w, _)| match (t, w) {
                (2, Wire::Bytes(ss)) => Some(items_in(ss)),
                _ => None,
            })
            .sum();
        if count < remaining {
            remaining -= count;
            head.extend_from_slice(field);
            continue;
        }
        // The split falls in this resource (or at its last item: its scopes after that one go to the tail, as
        // the decoded split moves them): its other fields go to both sides.
        let (mut rs_head, mut rs_tail) = (Vec::new(), Vec::new());
        let mut moved_scopes = false;
        for (t, w, r) in Fields::new(rs) {
            let f = rs.get(r).unwrap_or(&[]);
            let (2, Wire::Bytes(ss)) = (t, w) else {
                rs_head.extend_from_slice(f);
                rs_tail.extend_from_slice(f);
                continue;
            };
            if remaining == 0 {
                rs_tail.extend_from_slice(f);
                moved_scopes = true;
                continue;
            }
            let k = items_in(ss);
            if k <= remaining {
                remaining -= k;
                rs_head.extend_from_slice(f);
                continue;
            }
            let (mut ss_head, mut ss_tail) = (Vec::new(), Vec::new());
            for (t2, w2, r2) in Fields::new(ss) {
                let f2 = ss.get(r2).unwrap_or(&[]);
                match (t2, w2) {
                    (2, Wire::Bytes(_)) if remaining > 0 => {
                        remaining -= 1;
                        ss_head.extend_from_slice(f2);
                    }
                    (2, Wire::Bytes(_)) => ss_tail.extend_from_slice(f2),
                    _ => {
                        ss_head.extend_from_slice(f2);
                        ss_tail.extend_from_slice(f2);
                    }
                }
            }
            put_len_field(&mut rs_head, 2, &ss_head);
            put_len_field(&mut rs_tail, 2, &ss_tail);
            moved_scopes = true;
        }
        put_len_field(&mut head, 1, &rs_head);
        if moved_scopes {
            put_len_field(&mut tail, 1, &rs_tail);
        }
    }
    (head, tail)
}

// --- field edits: replace or delete fields at any depth, applied in one pass ---

/// Replacements and deletions of whole fields anywhere in an encoded message, collected during a walk over
/// it and applied in one pass ([`FieldEdits::apply`]): the message is copied once, fields without an edit
/// byte for byte, and the length of every message around an edited field is fixed on the way. Nothing is
/// decoded. The redaction processor deletes and rewrites attributes with it.
///
/// An edit names a field by its byte range in the message, tag and length included (what [`Fields`]
/// yields, offset to the message's start); the replacement is any number of encoded fields (none: the field
/// is deleted). An edit inside another edit's field is dropped (the outer one wins); a range that is not
/// a field of the message is ignored.
#[derive(Debug, Default)]
pub struct FieldEdits {
    edits: Vec<Edit>,
    arena: Vec<u8>,
    /// New body lengths of the messages around edits, in the order `apply` meets them.
    lens: Vec<usize>,
}

/// One edit: the field's range in the message, and its replacement's range in the arena, or (`append`) what
/// is appended to the body of the message the field holds.
#[derive(Debug, Clone)]
struct Edit {
    field: Range<usize>,
    rep: Range<usize>,
    append: bool,
}

impl FieldEdits {
    pub fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }

    /// Number of edits recorded.
    pub fn len(&self) -> usize {
        self.edits.len()
    }

    /// Forgets every edit (keeping the buffers).
    pub fn clear(&mut self) {
        self.edits.clear();
        self.arena.clear();
        self.lens.clear();
    }

    /// Deletes the field at `field`.
    pub fn delete(&mut self, field: Range<usize>) {
        self.replace_with(field, |_| {});
    }

    /// Replaces the field at `field` by what `write` appends (encoded fields, tags included).
    pub fn replace_with(&mut self, field: Range<usize>, write: impl FnOnce(&mut Vec<u8>)) {
        let from = self.arena.len();
        write(&mut self.arena);
        self.edits.push(Edit {
            field,
            rep: from..self.arena.len(),
            append: false,
        });
    }

    /// Replaces the field at `field` by the length-delimited field `tag` holding `body`.
    pub fn replace_len_field(&mut self, field: Range<usize>, tag: u32, body: &[u8]) {
        self.replace_with(field, |out| put_len_field(out, tag, body));
    }

    /// Appends what `write` writes (encoded fields, tags included) to the body of the message held by the
    /// length-delimited field at `field` (e.g. attributes at the end of a span). Edits inside that message
    /// still apply; appends to the same message keep their order. A replacement or deletion of the field
    /// itself, or of a field around it, wins.
    pub fn append_to(&mut self, field: Range<usize>, write: impl FnOnce(&mut Vec<u8>)) {
        let from = self.arena.len();
        write(&mut self.arena);
        self.edits.push(Edit {
            field,
            rep: from..self.arena.len(),
            append: true,
        });
    }

    /// The edited encoding of `msg` (written in one pass into a buffer of the final size), or `None`
    /// without edits. The edits are consumed.
    pub fn apply(&mut self, msg: &[u8]) -> Option<Vec<u8>> {
        if self.edits.is_empty() {
            return None;
        }
        // By position, outer fields first, and for one field its appends (in the order given) before a
        // replacement; a stable sort keeps the order of appends to one message.
        self.edits
            .sort_by_key(|e| (e.field.start, std::cmp::Reverse(e.field.end), !e.append));
        let mut end = 0usize;
        self.edits.retain(|e| {
            let keep = e.field.start >= end && e.field.start < e.field.end && e.field.end <= msg.len();
            if keep && !e.append {
                end = e.field.end;
            }
            keep
        });
        // An append to a field that is itself replaced (the replacement sorts right after its appends) is dropped.
        let mut replaced: Option<Range<usize>> = None;
        for e in self.edits.iter_mut().rev() {
            if !e.append {
                replaced = Some(e.field.clone());
            } else if replaced.as_ref() == Some(&e.field) {
                e.field = 0..0;
            }
        }
        self.edits.retain(|e| e.field.start < e.field.end);
        if self.edits.is_empty() {
            return None;
        }
        self.lens.clear();
        let n = measure_edited(msg, 0, &self.edits, &mut self.lens);
        let mut out = Vec::with_capacity(n);
        let mut next = 0;
        write_edited(msg, 0, &self.edits, &self.arena, &self.lens, &mut next, &mut out);
        self.edits.clear();
        self.arena.clear();
        Some(out)
    }
}

/// The edits (`edits[i..j]`) that fall inside the field at `f` (absolute), after skipping those before it
/// (misplaced: not on a field boundary).
#[inline]
fn edits_in(edits: &[Edit], i: &mut usize, f: &Range<usize>) -> Range<usize> {
    while edits.get(*i).is_some_and(|e| e.field.start < f.start) {
        *i += 1;
    }
    let mut j = *i;
    while edits.get(j).is_some_and(|e| e.field.end <= f.end) {
        j += 1;
    }
    *i..j
}

/// How the field at `f` is edited, given the edits inside it.
enum FieldEdit<'e> {
    /// Copied as it is.
    Keep,
    /// Replaced by this arena range.
    Replace(Range<usize>),
    /// A message whose body gets `inner` edits, then the appends `appended` (edits of this field).
    Body { inner: &'e [Edit], appended: &'e [Edit] },
}

fn field_edit<'e>(sub: &'e [Edit], f: &Range<usize>, is_message: bool) -> FieldEdit<'e> {
    match sub {
        [] => FieldEdit::Keep,
        [e] if e.field == *f && !e.append => FieldEdit::Replace(e.rep.clone()),
        _ if is_message => {
            let k = sub.iter().take_while(|e| e.field == *f && e.append).count();
            FieldEdit::Body {
                inner: sub.get(k..).unwrap_or(&[]),
                appended: sub.get(..k).unwrap_or(&[]),
            }
        }
        _ => FieldEdit::Keep,
    }
}

/// The length of `msg` (at `base` in the whole message) once `edits` (inside it, sorted) are applied;
/// pushes the new body length of every message entered, in pre-order.
fn measure_edited(msg: &[u8], base: usize, edits: &[Edit], lens: &mut Vec<usize>) -> usize {
    let mut len = 0usize;
    let mut i = 0usize;
    for (tag, w, r) in Fields::new(msg) {
        let f = base + r.start..base + r.end;
        let inner = edits_in(edits, &mut i, &f);
        i = inner.end;
        let sub = edits.get(inner).unwrap_or(&[]);
        match (field_edit(sub, &f, matches!(w, Wire::Bytes(_))), w) {
            (FieldEdit::Replace(rep), _) => len += rep.len(),
            (FieldEdit::Body { inner, appended }, Wire::Bytes(body)) => {
                let at = lens.len();
                lens.push(0);
                // Only appends (enrich's common case): the body stays as it is, not walked.
                let kept = if inner.is_empty() {
                    body.len()
                } else {
                    measure_edited(body, base + offset_in(msg, body), inner, lens)
                };
                let n = kept + appended.iter().map(|e| e.rep.len()).sum::<usize>();
                if let Some(l) = lens.get_mut(at) {
                    *l = n;
                }
                len += len_field_size(tag, n);
            }
            _ => len += r.len(),
        }
    }
    len
}

/// Writes `msg` with `edits` applied, taking the new body lengths [`measure_edited`] pushed.
fn write_edited(
    msg: &[u8],
    base: usize,
    edits: &[Edit],
    arena: &[u8],
    lens: &[usize],
    next: &mut usize,
    out: &mut Vec<u8>,
) {
    let mut i = 0usize;
    for (tag, w, r) in Fields::new(msg) {
        let f = base + r.start..base + r.end;
        let inner = edits_in(edits, &mut i, &f);
        i = inner.end;
        let sub = edits.get(inner).unwrap_or(&[]);
        match (field_edit(sub, &f, matches!(w, Wire::Bytes(_))), w) {
            (FieldEdit::Replace(rep), _) => out.extend_from_slice(arena.get(rep).unwrap_or(&[])),
            (FieldEdit::Body { inner, appended }, Wire::Bytes(body)) => {
                let n = lens.get(*next).copied().unwrap_or(0);
                *next += 1;
                put_varint(out, (u64::from(tag) << 3) | 2);
                put_varint(out, n as u64);
                if inner.is_empty() {
                    out.extend_from_slice(body);
                } else {
                    write_edited(body, base + offset_in(msg, body), inner, arena, lens, next, out);
                }
                for e in appended {
                    out.extend_from_slice(arena.get(e.rep.clone()).unwrap_or(&[]));
                }
            }
            _ => out.extend_from_slice(msg.get(r).unwrap_or(&[])),
        }
    }
}

/// Where an attribute sits in a traces request (or, for [`AttrPlace::Status`], a span's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrPlace {
    Resource,
    Scope,
    Span,
    Event,
    Link,
    /// Not an attribute: a span's `Status` message.
    Status,
}

impl AttrPlace {
    /// The field number of the attributes in the message holding them (`Resource.attributes` = 1, …).
    pub fn field(self) -> u32 {
        match self {
            AttrPlace::Resource => 1,
            AttrPlace::Scope | AttrPlace::Event => 3,
            AttrPlace::Link => 4,
            AttrPlace::Span => 9,
            AttrPlace::Status => 15,
        }
    }
}

/// One walk over a traces request that calls `f` with every attribute (the encoded `KeyValue`) of its
/// resources, scopes, spans, span events and span links, and with every span's encoded `Status`
/// ([`AttrPlace::Status`]), each with the byte range of its field in `request` (tag included: what a
/// [`FieldEdits`] edit names). The order is the encoding's: for a canonical encoding, a resource's
/// attributes, then per scope its attributes and per span its attributes, events, links and status.
pub fn for_each_trace_attribute<'a>(request: &'a [u8], mut f: impl FnMut(AttrPlace, &'a [u8], Range<usize>)) {
    count_work(Signal::Traces, Work::Walk);
    // The attributes (field `tag`) of message `m`.
    fn attrs_of<'a>(
        request: &'a [u8],
        place: AttrPlace,
        m: &'a [u8],
        f: &mut impl FnMut(AttrPlace, &'a [u8], Range<usize>),
    ) {
        let base = offset_in(request, m);
        let tag = place.field();
        for (t, w, r) in Fields::new(m) {
            if let (true, Wire::Bytes(kv)) = (t == tag, w) {
                f(place, kv, base + r.start..base + r.end);
            }
        }
    }
    for (tag, w, _) in Fields::new(request) {
        let (1, Wire::Bytes(rs)) = (tag, w) else { continue };
        for (t, w, _) in Fields::new(rs) {
            match (t, w) {
                (1, Wire::Bytes(res)) => attrs_of(request, AttrPlace::Resource, res, &mut f),
                (2, Wire::Bytes(ss)) => {
                    for (t2, w2, _) in Fields::new(ss) {
                        match (t2, w2) {
                            (1, Wire::Bytes(scope)) => attrs_of(request, AttrPlace::Scope, scope, &mut f),
                            (2, Wire::Bytes(span)) => {
                                let base = offset_in(request, span);
                                for (t3, w3, r3) in Fields::new(span) {
                                    let range = base + r3.start..base + r3.end;
                                    match (t3, w3) {
                                        (9, Wire::Bytes(kv)) => f(AttrPlace::Span, kv, range),
                                        (11, Wire::Bytes(ev)) => attrs_of(request, AttrPlace::Event, ev, &mut f),
                                        (13, Wire::Bytes(link)) => attrs_of(request, AttrPlace::Link, link, &mut f),
                                        (15, Wire::Bytes(st)) => f(AttrPlace::Status, st, range),
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// The resource of an encoded `ResourceSpans` (the last one, as a decoder keeps).
fn resource_of(rs: &[u8]) -> ResourceView<'_> {
    let mut resource = ResourceView::default();
    for (t, w, _) in Fields::new(rs) {
        if let (1, Wire::Bytes(r)) = (t, w) {
            resource = ResourceView { raw: r };
        }
    }
    resource
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
            if res.service_name() == "svc1"
                && s.name == "span-13"
                && let Some(raw) = s.attributes().get_raw("demo.order.amount")
            {
                e.add_raw("business.order.value", raw);
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

    /// A small deterministic PRNG (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
        }
    }

    /// A random traces request: 0–3 resources (with or without attributes and a schema URL), each with 0–3
    /// scopes (with or without a schema URL) of 0–5 spans, each span (named uniquely) with 0–4 attributes
    /// whose keys and values reach `long` bytes, so that lengths need multi-byte varints.
    fn random_request(rng: &mut Rng, round: usize, long: u64) -> ExportTraceServiceRequest {
        let mut req = ExportTraceServiceRequest::default();
        for r in 0..rng.below(4) {
            let mut rs = ResourceSpans {
                resource: (rng.below(3) > 0).then(|| Resource {
                    attributes: vec![kv("service.name", any_value::Value::StringValue(format!("svc{r}")))],
                    ..Default::default()
                }),
                schema_url: if rng.below(2) == 0 {
                    String::new()
                } else {
                    format!("https://s/{r}")
                },
                ..Default::default()
            };
            for sc in 0..rng.below(4) {
                let mut ss = ScopeSpans {
                    schema_url: if rng.below(2) == 0 {
                        String::new()
                    } else {
                        format!("https://sc/{sc}")
                    },
                    ..Default::default()
                };
                for i in 0..rng.below(6) {
                    let n = rng.below(5);
                    ss.spans.push(Span {
                        name: format!("s{round}-{r}-{sc}-{i}"),
                        span_id: vec![i as u8; 8],
                        attributes: (0..n)
                            .map(|a| {
                                let text = "x".repeat(rng.below(long) as usize);
                                kv(&format!("k{a}{text}"), any_value::Value::StringValue(text.clone()))
                            })
                            .collect(),
                        ..Default::default()
                    });
                }
                rs.scope_spans.push(ss);
            }
            req.resource_spans.push(rs);
        }
        req
    }

    /// Random requests (resources, scopes and spans of every count, including none; attributes
    /// with long keys and values, so that lengths need multi-byte varints) and random edits: the
    /// rewrite decodes to what editing the decoded request gives.
    #[test]
    fn random_rewrites_match_decoded_edits() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let req = random_request(&mut rng, round, 300);
            let bytes = req.encode_to_vec();
            // Decide the edits per span up front (by name), then apply them both ways.
            let mut plan: Vec<(String, Option<String>, bool)> = Vec::new();
            for s in req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
            {
                let add = (rng.below(2) == 0).then(|| "v".repeat(rng.below(200) as usize));
                let remove_first = rng.below(3) == 0;
                plan.push((s.name.clone(), add, remove_first));
            }
            let out = rewrite_spans(&bytes, |_, s, e| {
                let Some((_, add, remove_first)) = plan.iter().find(|p| p.0 == s.name) else {
                    return;
                };
                if *remove_first && let Some(first) = s.attributes().iter().next() {
                    e.remove(first.key);
                }
                if let Some(v) = add {
                    e.add_str("added", v);
                    e.add_int("added.n", -(v.len() as i64));
                }
            });
            let mut want = req.clone();
            for s in want
                .resource_spans
                .iter_mut()
                .flat_map(|r| &mut r.scope_spans)
                .flat_map(|s| &mut s.spans)
            {
                let Some((_, add, remove_first)) = plan.iter().find(|p| p.0 == s.name) else {
                    continue;
                };
                if *remove_first && !s.attributes.is_empty() {
                    let k = s.attributes[0].key.clone();
                    s.attributes.retain(|a| a.key != k);
                }
                if let Some(v) = add {
                    s.attributes.push(kv("added", any_value::Value::StringValue(v.clone())));
                    s.attributes
                        .push(kv("added.n", any_value::Value::IntValue(-(v.len() as i64))));
                }
            }
            match out {
                Some(out) => {
                    assert_eq!(
                        ExportTraceServiceRequest::decode(out.as_slice()).expect("valid"),
                        want,
                        "round {round}"
                    );
                    assert!(crate::Traces::from_bytes(out.into()).is_ok(), "round {round}");
                }
                None => assert_eq!(req, want, "round {round}: nothing to change"),
            }
        }
    }

    /// A random request with attributes in every place `for_each_trace_attribute` visits (long keys and
    /// values, so that lengths need multi-byte varints), and status messages.
    fn random_attr_request(rng: &mut Rng, round: u64) -> ExportTraceServiceRequest {
        use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
        use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
        let attrs = |rng: &mut Rng, max: u64| -> Vec<KeyValue> {
            (0..rng.below(max))
                .map(|a| {
                    let long = "x".repeat(rng.below(200) as usize);
                    kv(
                        &format!("k{a}{long}"),
                        any_value::Value::StringValue(format!("{round}{long}")),
                    )
                })
                .collect()
        };
        let mut req = ExportTraceServiceRequest::default();
        for _ in 0..rng.below(4) {
            let mut rs = ResourceSpans {
                resource: (rng.below(3) > 0).then(|| Resource {
                    attributes: attrs(rng, 4),
                    ..Default::default()
                }),
                schema_url: "r".into(),
                ..Default::default()
            };
            for _ in 0..rng.below(4) {
                let mut ss = ScopeSpans {
                    scope: (rng.below(2) > 0).then(|| InstrumentationScope {
                        name: "lib".into(),
                        attributes: attrs(rng, 3),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                for i in 0..rng.below(5) {
                    ss.spans.push(Span {
                        name: format!("s{round}-{i}"),
                        span_id: vec![i as u8; 8],
                        attributes: attrs(rng, 5),
                        events: (0..rng.below(3))
                            .map(|_| Event {
                                name: "e".into(),
                                attributes: attrs(rng, 3),
                                ..Default::default()
                            })
                            .collect(),
                        links: (0..rng.below(2))
                            .map(|_| Link {
                                span_id: vec![9; 8],
                                attributes: attrs(rng, 3),
                                ..Default::default()
                            })
                            .collect(),
                        status: (rng.below(2) > 0).then(|| Status {
                            message: "m".repeat(rng.below(150) as usize),
                            code: 2,
                        }),
                        ..Default::default()
                    });
                }
                rs.scope_spans.push(ss);
            }
            req.resource_spans.push(rs);
        }
        req
    }

    /// Every attribute list of a decoded request, in the order `for_each_trace_attribute` visits them
    /// on its (canonical) encoding, with the span's status after its lists.
    fn visit_decoded(
        req: &mut ExportTraceServiceRequest,
        mut list: impl FnMut(AttrPlace, &mut Vec<KeyValue>),
        mut status: impl FnMut(&mut Status),
    ) {
        for rs in &mut req.resource_spans {
            if let Some(r) = rs.resource.as_mut() {
                list(AttrPlace::Resource, &mut r.attributes);
            }
            for ss in &mut rs.scope_spans {
                if let Some(sc) = ss.scope.as_mut() {
                    list(AttrPlace::Scope, &mut sc.attributes);
                }
                for sp in &mut ss.spans {
                    list(AttrPlace::Span, &mut sp.attributes);
                    for e in &mut sp.events {
                        list(AttrPlace::Event, &mut e.attributes);
                    }
                    for l in &mut sp.links {
                        list(AttrPlace::Link, &mut l.attributes);
                    }
                    if let Some(st) = sp.status.as_mut() {
                        status(st);
                    }
                }
            }
        }
    }

    /// Random deletions and replacements of attributes and statuses at every depth, applied through
    /// `FieldEdits` on the encoding, decode to what the same edits give on the decoded request.
    #[test]
    fn field_edits_match_decoded_edits() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut edited_rounds = 0;
        for round in 0..400 {
            let req = random_attr_request(&mut rng, round);
            let bytes = req.encode_to_vec();
            // Per visited attribute: 0 keep, 1 delete, 2 replace the value; per status: keep or replace.
            let mut plan: Vec<u64> = Vec::new();
            let mut edits = FieldEdits::default();
            let mut places = Vec::new();
            for_each_trace_attribute(&bytes, |place, field, range| {
                if place == AttrPlace::Status {
                    let n = rng.below(2) * (1 + rng.below(200));
                    plan.push(n);
                    if n > 0 {
                        let st = Status {
                            message: "z".repeat(n as usize),
                            code: 1,
                        };
                        edits.replace_len_field(range, 15, &st.encode_to_vec());
                    }
                    return;
                }
                let (key, _) = split_key_value(field);
                assert_eq!(
                    bytes.get(range.clone()).map(|f| f.len()),
                    Some(len_field_size(place.field(), field.len()))
                );
                places.push(place);
                let action = rng.below(3);
                plan.push(action);
                match action {
                    1 => edits.delete(range),
                    2 => {
                        let key = std::str::from_utf8(key).unwrap().to_string();
                        let value = "v".repeat(rng.below(300) as usize);
                        plan.push(value.len() as u64);
                        let kv = kv(&key, any_value::Value::StringValue(value));
                        edits.replace_len_field(range, place.field(), &kv.encode_to_vec());
                    }
                    _ => {}
                }
            });
            let any = !edits.is_empty();
            let out = edits.apply(&bytes);
            assert_eq!(out.is_some(), any, "round {round}");
            let mut want = req.clone();
            let step = std::cell::RefCell::new(plan.iter().copied());
            let mut seen = Vec::new();
            visit_decoded(
                &mut want,
                |place, attrs| {
                    let mut kept = Vec::new();
                    for mut a in std::mem::take(attrs) {
                        seen.push(place);
                        let action = step.borrow_mut().next();
                        match action {
                            Some(1) => continue,
                            Some(2) => {
                                let n = step.borrow_mut().next().unwrap_or(0) as usize;
                                a.value = Some(AnyValue {
                                    value: Some(any_value::Value::StringValue("v".repeat(n))),
                                });
                            }
                            _ => {}
                        }
                        kept.push(a);
                    }
                    *attrs = kept;
                },
                |st| {
                    let n = step.borrow_mut().next().unwrap_or(0);
                    if n > 0 {
                        st.message = "z".repeat(n as usize);
                        st.code = 1;
                    }
                },
            );
            assert_eq!(seen, places, "round {round}: visited in the decoded order");
            assert!(step.borrow_mut().next().is_none(), "round {round}");
            match out {
                Some(out) => {
                    edited_rounds += 1;
                    assert_eq!(
                        ExportTraceServiceRequest::decode(out.as_slice()).expect("valid"),
                        want,
                        "round {round}"
                    );
                    assert!(crate::Traces::from_bytes(out.into()).is_ok(), "round {round}");
                }
                None => assert_eq!(req, want, "round {round}: nothing to change"),
            }
        }
        assert!(edited_rounds > 200, "{edited_rounds}");
    }

    #[test]
    fn a_stopped_rewrite_changes_nothing() {
        let bytes = request().encode_to_vec();
        let mut seen = 0;
        let r = try_rewrite_spans(&bytes, |_, _, e| {
            seen += 1;
            e.add_int("x", 1);
            if seen == 3 {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        });
        assert_eq!(r, std::ops::ControlFlow::Break(()));
        assert_eq!(seen, 3, "stops at once");
    }

    #[test]
    fn key_values_split_like_the_general_parse() {
        let long = "k".repeat(200);
        let cases: Vec<Vec<u8>> = vec![
            kv("a", any_value::Value::IntValue(1)).encode_to_vec(),
            kv(&long, any_value::Value::StringValue("v".repeat(300))).encode_to_vec(),
            KeyValue {
                key: "only".into(),
                value: None,
                ..Default::default()
            }
            .encode_to_vec(),
            // Value before key, and a repeated key (the last wins).
            vec![0x12, 0x02, 0x18, 0x05, 0x0a, 0x01, b'a', 0x0a, 0x01, b'b'],
            Vec::new(),
        ];
        for c in &cases {
            let (k, v) = split_key_value(c);
            let p = KeyValueView::parse(c);
            assert_eq!((k, v), (p.key.as_bytes(), p.value_bytes), "{c:?}");
        }
        assert_eq!(ValueRef::from_encoded(&[]), None, "no value");
        assert_eq!(ValueRef::from_encoded(&AnyValue::default().encode_to_vec()), None);
        let arr = AnyValue {
            value: Some(any_value::Value::BytesValue(vec![1, 2])),
        };
        assert_eq!(
            ValueRef::from_encoded(&arr.encode_to_vec()).map(|v| v.to_value()),
            arr.value
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

    /// The split equals filtering the decoded request by trace id (prost on both sides): every span once,
    /// under its own resource and scope (headers kept), in input order; empty and zero ids together.
    #[test]
    fn split_by_trace_id_equals_filtering_the_decoded_request() {
        let mut req = request();
        // Interleave three traces across both resources and scopes, and give two spans no trace id.
        let ids: [Vec<u8>; 4] = [vec![7; 16], vec![8; 16], vec![0; 16], Vec::new()];
        let mut k = 0;
        for rs in &mut req.resource_spans {
            for ss in &mut rs.scope_spans {
                ss.scope = Some(opentelemetry_proto::tonic::common::v1::InstrumentationScope {
                    name: format!("scope-{k}"),
                    ..Default::default()
                });
                for sp in &mut ss.spans {
                    sp.trace_id = ids[[0, 1, 0, 2, 1, 3][k % 6]].clone();
                    k += 1;
                }
            }
        }
        let bytes = req.encode_to_vec();
        let split = split_by_trace_id(&bytes).expect("three trace ids");
        let got: Vec<(Vec<u8>, ExportTraceServiceRequest)> = split
            .iter()
            .map(|(id, b)| (id.to_vec(), ExportTraceServiceRequest::decode(b.as_slice()).unwrap()))
            .collect();
        let want_ids: Vec<Vec<u8>> = vec![vec![7; 16], vec![8; 16], Vec::new()];
        assert_eq!(got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(), want_ids);
        for (id, r) in &got {
            let mut want = req.clone();
            for rs in &mut want.resource_spans {
                for ss in &mut rs.scope_spans {
                    ss.spans
                        .retain(|sp| sp.trace_id == *id || (id.is_empty() && sp.trace_id.iter().all(|b| *b == 0)));
                }
                rs.scope_spans.retain(|ss| !ss.spans.is_empty());
            }
            want.resource_spans.retain(|rs| !rs.scope_spans.is_empty());
            assert_eq!(r, &want, "trace {id:?}");
        }
        let total: usize = got
            .iter()
            .flat_map(|(_, r)| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        assert_eq!(total, 6);
        // One trace: nothing to split; malformed input never panics.
        let one = ExportTraceServiceRequest {
            resource_spans: vec![request().resource_spans[0].clone()],
        };
        let mut one = one;
        for ss in &mut one.resource_spans[0].scope_spans {
            for sp in &mut ss.spans {
                sp.trace_id = vec![9; 16];
            }
        }
        assert!(split_by_trace_id(&one.encode_to_vec()).is_none());
        assert!(split_by_trace_id(&bytes[..bytes.len() / 2]).is_none_or(|v| !v.is_empty()));
    }

    /// Random requests (schema URLs on resources and scopes or not) and random span edits through
    /// [`edit_spans`]: spans taken out, attributes removed and added. The result decodes to what the same
    /// edits give on the decoded request, in one walk and one copy; the dropped count is right; and a
    /// container's [`container_header`] with its list put back between its halves is its canonical encoding.
    #[test]
    fn edit_spans_with_dropped_spans_match_decoded_edits() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for round in 0..300 {
            let req = random_request(&mut rng, round, 200);
            let bytes = req.encode_to_vec();
            // Per span by name: (drop, add, remove the first attribute).
            let mut plan: std::collections::HashMap<String, (bool, Option<String>, bool)> =
                std::collections::HashMap::new();
            for s in req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
            {
                let drop = rng.below(3) == 0;
                let add = (rng.below(2) == 0).then(|| "v".repeat(rng.below(200) as usize));
                plan.insert(s.name.clone(), (drop, add, rng.below(3) == 0));
            }
            let before = crate::pdata::work_on_this_thread();
            let std::ops::ControlFlow::Continue(edited) = edit_spans(&bytes, |at, e| {
                let name = SpanView::parse(at.span).name;
                let Some((drop, add, remove_first)) = plan.get(name) else {
                    return std::ops::ControlFlow::Continue(());
                };
                if *remove_first && let Some(first) = SpanView::parse(at.span).attributes().iter().next() {
                    e.remove(first.key);
                }
                if let Some(v) = add {
                    e.add_str("added", v);
                }
                if *drop {
                    e.drop_span();
                }
                std::ops::ControlFlow::Continue(())
            }) else {
                panic!("not stopped")
            };
            let work = crate::pdata::work_on_this_thread().since(&before);
            assert_eq!(work.get(Work::Walk), 1);
            assert_eq!(work.get(Work::Copy), u64::from(edited.bytes.is_some()));
            let mut want = req.clone();
            let mut dropped = 0;
            for ss in want.resource_spans.iter_mut().flat_map(|r| &mut r.scope_spans) {
                ss.spans.retain_mut(|s| {
                    let (drop, add, remove_first) = plan.get(&s.name).cloned().unwrap_or_default();
                    if drop {
                        dropped += 1;
                        return false;
                    }
                    if remove_first && !s.attributes.is_empty() {
                        let k = s.attributes[0].key.clone();
                        s.attributes.retain(|a| a.key != k);
                    }
                    if let Some(v) = add {
                        s.attributes.push(kv("added", any_value::Value::StringValue(v)));
                    }
                    true
                });
            }
            assert_eq!(edited.dropped, dropped, "round {round}");
            match edited.bytes {
                Some(out) => assert_eq!(
                    ExportTraceServiceRequest::decode(out.as_slice()).expect("valid"),
                    want,
                    "round {round}"
                ),
                None => assert_eq!(want, req, "round {round}: nothing changed"),
            }
            // Headers: a resource's and a scope's other fields, with the list put back in between.
            for (rs_raw, rs) in Fields::new(&bytes)
                .filter_map(|(_, w, _)| if let Wire::Bytes(b) = w { Some(b) } else { None })
                .zip(&req.resource_spans)
            {
                let (h, mid) = container_header(rs_raw, 2);
                let mut back = h[..mid].to_vec();
                for ss in &rs.scope_spans {
                    put_len_field(&mut back, 2, &ss.encode_to_vec());
                }
                back.extend_from_slice(&h[mid..]);
                assert_eq!(back, rs.encode_to_vec(), "round {round}");
            }
        }
    }

    /// Appends to a message keep its inner edits and their order; a replacement of the message wins.
    #[test]
    fn field_edits_append_inside_and_replacement_wins() {
        let span = Span {
            name: "s".into(),
            attributes: vec![
                kv("a", any_value::Value::IntValue(1)),
                kv("b", any_value::Value::IntValue(2)),
            ],
            ..Default::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span.clone(), span.clone()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let bytes = req.encode_to_vec();
        let mut fields: Vec<Range<usize>> = Vec::new();
        let mut first_attr: Vec<Range<usize>> = Vec::new();
        let _ = edit_spans(&bytes, |at, _| {
            let base = offset_in(&bytes, at.scope_spans);
            let span_base = offset_in(&bytes, at.span);
            for (t, w, r) in Fields::new(at.scope_spans) {
                if let (2, Wire::Bytes(b)) = (t, w)
                    && b.as_ptr() == at.span.as_ptr()
                {
                    fields.push(base + r.start..base + r.end);
                }
            }
            if let Some((_, _, r)) = Fields::new(at.span).find(|(t, _, _)| *t == 9) {
                first_attr.push(span_base + r.start..span_base + r.end);
            }
            std::ops::ControlFlow::Continue(())
        });
        let mut edits = FieldEdits::default();
        let add =
            |out: &mut Vec<u8>, k: &str| put_len_field(out, 9, &kv(k, any_value::Value::IntValue(9)).encode_to_vec());
        edits.append_to(fields[0].clone(), |o| add(o, "x"));
        edits.delete(first_attr[0].clone());
        edits.append_to(fields[0].clone(), |o| add(o, "y"));
        edits.append_to(fields[1].clone(), |o| add(o, "z"));
        edits.replace_with(fields[1].clone(), |_| {});
        let out = ExportTraceServiceRequest::decode(edits.apply(&bytes).unwrap().as_slice()).unwrap();
        let spans = &out.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 1, "the second span deleted, its append dropped");
        let keys: Vec<&str> = spans[0].attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["b", "x", "y"]);
    }

    /// The encoded split equals the decoded split at every point of random requests (traces; logs share the
    /// layout), and each part's item count is exact.
    #[test]
    fn split_nested_at_equals_the_decoded_split() {
        use crate::pdata::OtlpMessage;
        let mut rng = Rng(0x51_7cc1_b727_220a);
        for round in 0..200 {
            let req = random_request(&mut rng, round, 40);
            let bytes = req.encode_to_vec();
            let total = req.item_count();
            for n in 1..total {
                let (head, tail) = split_nested_at(&bytes, n);
                let mut want_head = req.clone();
                let want_tail = want_head.split_off_items(n);
                let got_head = ExportTraceServiceRequest::decode(head.as_slice()).expect("valid head");
                let got_tail = ExportTraceServiceRequest::decode(tail.as_slice()).expect("valid tail");
                let shape = |r: &ExportTraceServiceRequest| {
                    r.resource_spans
                        .iter()
                        .map(|rs| {
                            rs.scope_spans
                                .iter()
                                .map(|ss| ss.spans.iter().map(|s| s.name.clone()).collect::<Vec<_>>())
                                .collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    (shape(&got_head), shape(&got_tail)),
                    (shape(&want_head), shape(&want_tail)),
                    "round {round}, n {n}"
                );
                assert_eq!((&got_head, &got_tail), (&want_head, &want_tail), "round {round}, n {n}");
                assert_eq!((got_head.item_count(), got_tail.item_count()), (n, total - n));
                assert_eq!(head, want_head.encode_to_vec(), "canonical stays canonical");
            }
        }
    }
}
