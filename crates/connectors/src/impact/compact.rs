//! What the engine read of a traces request, in a compact binary form: the journal's record of a request.
//!
//! The engine reads little of a request: the newest event time of all its spans, and of the spans that matter
//! to it (ERROR spans, spans matching an operation, and every span when `trace_context` is on) a few fields and
//! the attributes named in its configuration ([`read_keys`]). [`Capture`] writes exactly that while the engine
//! reads the request; [`Request::parse`] reads it back into spans the engine reads through the same
//! [`SpanRead`]/[`ResRead`] traits, answering every question the engine asks exactly as the original span did.
//! So replaying the records gives the identical engine, at a fraction of the request's size (the shop workload's
//! requests: see `docs/durable-state.md`).
//!
//! Layout (little-endian, lengths as LEB128 varints; the journal's format marker versions it):
//! `newest event time (u64)`, `spans (u32)`, then per span: `flags (u8: 1 = ERROR, 2 = same resource as the previous span,
//! 4 = read for its trace only)`, unless flag 2 or 4: `service (str)`, `resource attributes (list)`; then `start (u64)`,
//! `end (u64)`, `trace id`, `span id`, `parent span id` (bytes), unless flag 4: `name`, `status message` (str); then
//! `attributes (list)`. A span read for its trace only (`trace_context` on; neither ERROR nor an operation) keeps
//! just what the trace's record reads: no resource, no name or status, the `trace_context` attributes. A list is a count
//! and (key index in [`read_keys`], value) pairs; a value is `kind (u8: 0 string, 1 bool, 2 int, 3 double,
//! 4 other)` and its payload (other: an encoded OTLP `AnyValue`).

use bizpilot_core::pb::{put_varint, read_varint};
use bizpilot_core::view::{AnyValueKind, ValueRef};
use opentelemetry_proto::tonic::common::v1::AnyValue;
use prost::Message;

use super::read::{ResRead, SpanRead};

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    #[error("record cut short at byte {0}")]
    Short(usize),
    #[error("attribute key index {0} out of range ({1} keys)")]
    Key(u64, usize),
    #[error("value kind {0} unknown")]
    Kind(u8),
    #[error("text is not UTF-8")]
    Utf8,
    #[error("embedded value unreadable: {0}")]
    Value(String),
    #[error("{0} bytes after the last span")]
    Trailing(usize),
}

const ERROR: u8 = 1;
const SAME_RESOURCE: u8 = 2;
const TRACE_ONLY: u8 = 4;
/// Newest event time and span count.
const HEADER: usize = 12;

/// The attribute keys the engine may read, deduplicated, in a stable order (the indexes in records).
pub(super) fn read_keys(keys: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in keys {
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

fn put_value(buf: &mut Vec<u8>, v: &ValueRef<'_>) {
    match v {
        ValueRef::Str(s) => {
            buf.push(0);
            put_bytes(buf, s.as_bytes());
        }
        ValueRef::Bool(b) => {
            buf.push(1);
            buf.push(u8::from(*b));
        }
        ValueRef::Int(i) => {
            buf.push(2);
            buf.extend_from_slice(&i.to_le_bytes());
        }
        ValueRef::Double(d) => {
            buf.push(3);
            buf.extend_from_slice(&d.to_bits().to_le_bytes());
        }
        ValueRef::Other(k) => {
            buf.push(4);
            put_bytes(
                buf,
                &AnyValue {
                    value: Some(k.as_ref().clone()),
                }
                .encode_to_vec(),
            );
        }
    }
}

/// Writes the count `n` of a list at `at`, where one byte was reserved: a varint, one byte below 128.
fn set_count(out: &mut Vec<u8>, at: usize, n: u64) {
    if n < 0x80 {
        out[at] = n as u8;
    } else {
        let mut count = Vec::new();
        put_varint(&mut count, n);
        out.splice(at..at + 1, count);
    }
}

/// Writes the records of what the engine reads, request by request.
#[derive(Debug)]
pub(super) struct Capture {
    keys: Vec<String>,
    /// For each attribute `trace_context` keeps (in its order), its index in `keys`.
    trace_keys: Vec<usize>,
    /// The `trace_context` attributes of the span being read, as a list's entries, and how many.
    trace_attrs: Vec<u8>,
    trace_n: u64,
    buf: Vec<u8>,
    res: Vec<u8>,
    last_res: Vec<u8>,
    spans: usize,
    /// The newest event time before the request.
    before: u64,
    /// The record is complete and worth journaling.
    ready: bool,
}

impl Capture {
    /// `trace_keys`: the attributes `trace_context` keeps, in its order (each is in `keys`).
    pub(super) fn new(keys: Vec<String>, trace_keys: &[String]) -> Self {
        let trace_keys = trace_keys
            .iter()
            .map(|k| keys.iter().position(|x| x == k).unwrap_or(usize::MAX))
            .collect();
        Capture {
            keys,
            trace_keys,
            trace_attrs: Vec::new(),
            trace_n: 0,
            buf: Vec::new(),
            res: Vec::new(),
            last_res: Vec::new(),
            spans: 0,
            before: 0,
            ready: false,
        }
    }

    /// Starts the record of a request; `before` is the newest event time before it.
    pub(super) fn begin(&mut self, before: u64) {
        self.before = before;
        self.ready = false;
        self.buf.clear();
        self.buf.extend_from_slice(&[0; HEADER]);
        self.last_res.clear();
        self.spans = 0;
    }

    /// A span the engine read (and its resource).
    pub(super) fn span<S: SpanRead + ?Sized, R: ResRead + ?Sized>(&mut self, span: &S, res: &R, service: &str) {
        self.res.clear();
        put_bytes(&mut self.res, service.as_bytes());
        self.attrs(|k| res.attr(k), true);
        let same = self.spans > 0 && self.res == self.last_res;
        let mut flags = 0u8;
        if span.is_error() {
            flags |= ERROR;
        }
        if same {
            flags |= SAME_RESOURCE;
        }
        self.buf.push(flags);
        if !same {
            self.buf.extend_from_slice(&self.res);
            std::mem::swap(&mut self.res, &mut self.last_res);
        }
        self.buf.extend_from_slice(&span.start_time().to_le_bytes());
        self.buf.extend_from_slice(&span.end_time().to_le_bytes());
        put_bytes(&mut self.buf, span.trace_id());
        put_bytes(&mut self.buf, span.span_id());
        put_bytes(&mut self.buf, span.parent_span_id());
        put_bytes(&mut self.buf, span.name().as_bytes());
        put_bytes(&mut self.buf, span.status_message().as_bytes());
        self.attrs(|k| span.attr(k), false);
        self.spans += 1;
    }

    /// Before `trace_context` reads a span: forgets the attributes of the previous one.
    pub(super) fn begin_span(&mut self) {
        self.trace_attrs.clear();
        self.trace_n = 0;
    }

    /// An attribute `trace_context` read of the span (`i`: its index in the trace context's keys).
    pub(super) fn trace_attr(&mut self, i: usize, v: &ValueRef<'_>) {
        if let Some(&k) = self.trace_keys.get(i).filter(|k| **k != usize::MAX) {
            put_varint(&mut self.trace_attrs, k as u64);
            put_value(&mut self.trace_attrs, v);
            self.trace_n += 1;
        }
    }

    /// A span read for its trace only (`trace_context` on; neither ERROR nor an operation), with the attributes
    /// `trace_context` read of it ([`Capture::trace_attr`]).
    pub(super) fn traced<S: SpanRead + ?Sized>(&mut self, span: &S) {
        self.buf.push(TRACE_ONLY);
        self.buf.extend_from_slice(&span.start_time().to_le_bytes());
        self.buf.extend_from_slice(&span.end_time().to_le_bytes());
        put_bytes(&mut self.buf, span.trace_id());
        put_bytes(&mut self.buf, span.span_id());
        put_bytes(&mut self.buf, span.parent_span_id());
        put_varint(&mut self.buf, self.trace_n);
        self.buf.extend_from_slice(&self.trace_attrs);
        self.spans += 1;
    }

    /// The attributes named in `keys` that `get` finds, into the resource scratch (`res`) or the record.
    fn attrs<'a>(&mut self, get: impl Fn(&str) -> Option<ValueRef<'a>>, res: bool) {
        let out = if res { &mut self.res } else { &mut self.buf };
        let count_at = out.len();
        out.push(0);
        let mut n = 0u64;
        for (i, k) in self.keys.iter().enumerate() {
            if let Some(v) = get(k) {
                put_varint(out, i as u64);
                put_value(out, &v);
                n += 1;
            }
        }
        set_count(out, count_at, n);
    }

    /// Ends the record: `newest` is the newest event time after the request.
    pub(super) fn finish(&mut self, newest: u64) {
        if self.buf.len() < HEADER {
            return; // not begun
        }
        self.buf[..8].copy_from_slice(&newest.to_le_bytes());
        // A request holds far fewer than 2³² spans (the receivers' size limit); saturating keeps a record that
        // could not be right unreadable rather than misread.
        let n = u32::try_from(self.spans).unwrap_or(u32::MAX);
        self.buf[8..HEADER].copy_from_slice(&n.to_le_bytes());
        // A request that changed nothing the engine reads (no span read, no newer event time) needs no record.
        self.ready = self.spans > 0 || newest != self.before;
    }

    /// The record of the last request, when it needs one.
    pub(super) fn record(&self) -> Option<&[u8]> {
        self.ready.then_some(self.buf.as_slice())
    }
}

/// A value read back.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    Other(AnyValueKind),
}

impl Val {
    fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Val::Str(s) => ValueRef::Str(s),
            Val::Bool(b) => ValueRef::Bool(*b),
            Val::Int(i) => ValueRef::Int(*i),
            Val::Double(d) => ValueRef::Double(*d),
            Val::Other(k) => ValueRef::Other(std::borrow::Cow::Borrowed(k)),
        }
    }
}

type Attrs = Vec<(usize, Val)>;

fn find<'a>(attrs: &'a Attrs, keys: &[String], key: &str) -> Option<ValueRef<'a>> {
    attrs.iter().find(|(i, _)| keys[*i] == key).map(|(_, v)| v.as_ref())
}

/// A resource read back.
#[derive(Debug)]
pub(super) struct Res<'k> {
    pub(super) service: String,
    attrs: Attrs,
    keys: &'k [String],
}

impl ResRead for Res<'_> {
    fn attr(&self, key: &str) -> Option<ValueRef<'_>> {
        find(&self.attrs, self.keys, key)
    }
}

/// A span read back (only what the engine reads of it).
#[derive(Debug)]
pub(super) struct Span<'k> {
    /// Its resource; `None`: read for its trace only.
    pub(super) res: Option<usize>,
    error: bool,
    start: u64,
    end: u64,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    status: String,
    attrs: Attrs,
    keys: &'k [String],
}

impl SpanRead for Span<'_> {
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
        &self.parent
    }
    fn start_time(&self) -> u64 {
        self.start
    }
    fn end_time(&self) -> u64 {
        self.end
    }
    fn is_error(&self) -> bool {
        self.error
    }
    fn status_message(&self) -> &str {
        &self.status
    }
    fn attr(&self, key: &str) -> Option<ValueRef<'_>> {
        find(&self.attrs, self.keys, key)
    }
}

/// A request's record read back, whole (a record that cannot be read is not applied in part).
#[derive(Debug)]
pub(super) struct Request<'k> {
    pub(super) newest: u64,
    pub(super) resources: Vec<Res<'k>>,
    pub(super) spans: Vec<Span<'k>>,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CompactError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or(CompactError::Short(self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, CompactError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, CompactError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn varint(&mut self) -> Result<u64, CompactError> {
        let at = self.at;
        read_varint(self.b, &mut self.at, self.b.len()).ok_or(CompactError::Short(at))
    }
    fn bytes(&mut self) -> Result<&'a [u8], CompactError> {
        let n = usize::try_from(self.varint()?).map_err(|_| CompactError::Short(self.at))?;
        self.take(n)
    }
    fn str(&mut self) -> Result<String, CompactError> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_string)
            .map_err(|_| CompactError::Utf8)
    }
    fn value(&mut self) -> Result<Val, CompactError> {
        Ok(match self.u8()? {
            0 => Val::Str(self.str()?),
            1 => Val::Bool(self.u8()? != 0),
            2 => Val::Int(self.u64()? as i64),
            3 => Val::Double(f64::from_bits(self.u64()?)),
            4 => {
                let v = AnyValue::decode(self.bytes()?).map_err(|e| CompactError::Value(e.to_string()))?;
                Val::Other(v.value.ok_or_else(|| CompactError::Value("empty".into()))?)
            }
            k => return Err(CompactError::Kind(k)),
        })
    }
    fn attrs(&mut self, keys: usize) -> Result<Attrs, CompactError> {
        let n = self.varint()?;
        let mut out = Vec::new();
        for _ in 0..n {
            let i = self.varint()?;
            let i = usize::try_from(i)
                .ok()
                .filter(|i| *i < keys)
                .ok_or(CompactError::Key(i, keys))?;
            out.push((i, self.value()?));
        }
        Ok(out)
    }
}

impl<'k> Request<'k> {
    /// Reads a record written by [`Capture`] with the same `keys`.
    pub(super) fn parse(b: &[u8], keys: &'k [String]) -> Result<Self, CompactError> {
        let mut r = Reader { b, at: 0 };
        let newest = r.u64()?;
        let mut n = [0u8; 4];
        n.copy_from_slice(r.take(4)?);
        let n = u32::from_le_bytes(n);
        let mut resources: Vec<Res<'k>> = Vec::new();
        let mut spans = Vec::new();
        for _ in 0..n {
            let flags = r.u8()?;
            let traced = flags & TRACE_ONLY != 0;
            if !traced && (flags & SAME_RESOURCE == 0 || resources.is_empty()) {
                let service = r.str()?;
                let attrs = r.attrs(keys.len())?;
                resources.push(Res { service, attrs, keys });
            }
            let (start, end) = (r.u64()?, r.u64()?);
            let (trace_id, span_id, parent) = (r.bytes()?.to_vec(), r.bytes()?.to_vec(), r.bytes()?.to_vec());
            let (name, status) = if traced {
                (String::new(), String::new())
            } else {
                (r.str()?, r.str()?)
            };
            spans.push(Span {
                res: (!traced).then(|| resources.len() - 1),
                error: flags & ERROR != 0,
                start,
                end,
                trace_id,
                span_id,
                parent,
                name,
                status,
                attrs: r.attrs(keys.len())?,
                keys,
            });
        }
        if r.at != b.len() {
            return Err(CompactError::Trailing(b.len() - r.at));
        }
        Ok(Request {
            newest,
            resources,
            spans,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::KeyValueList;

    /// A span in decoded form, read through the traits.
    struct Plain {
        attrs: Vec<(String, AnyValueKind)>,
    }

    impl SpanRead for Plain {
        fn name(&self) -> &str {
            "checkout"
        }
        fn trace_id(&self) -> &[u8] {
            &[7; 16]
        }
        fn span_id(&self) -> &[u8] {
            &[8; 8]
        }
        fn parent_span_id(&self) -> &[u8] {
            &[]
        }
        fn start_time(&self) -> u64 {
            5
        }
        fn end_time(&self) -> u64 {
            9
        }
        fn is_error(&self) -> bool {
            true
        }
        fn status_message(&self) -> &str {
            "card declined"
        }
        fn attr(&self, key: &str) -> Option<ValueRef<'_>> {
            self.attrs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| ValueRef::from_value(v))
        }
    }

    impl ResRead for Plain {
        fn attr(&self, key: &str) -> Option<ValueRef<'_>> {
            SpanRead::attr(self, key)
        }
    }

    #[test]
    fn a_captured_span_reads_back_as_the_engine_read_it() {
        let keys = read_keys(["v", "c", "n", "missing", "c"].map(String::from));
        assert_eq!(keys.len(), 4, "deduplicated");
        let money = AnyValueKind::KvlistValue(KeyValueList {
            values: vec![bizpilot_business::attrs::kv_i64("units", 19)],
        });
        let span = Plain {
            attrs: vec![
                ("v".into(), money.clone()),
                ("c".into(), AnyValueKind::StringValue("EUR".into())),
                ("n".into(), AnyValueKind::DoubleValue(2.5)),
                ("unread".into(), AnyValueKind::IntValue(3)),
            ],
        };
        let res = Plain {
            attrs: vec![("n".into(), AnyValueKind::IntValue(-4))],
        };
        let mut c = Capture::new(keys.clone(), &["c".to_string()]);
        c.begin(10);
        c.finish(10);
        assert!(c.record().is_none(), "nothing read, no newer time: no record");
        c.begin(10);
        c.span(&span, &res, "shop");
        c.span(&span, &res, "shop");
        c.begin_span();
        c.trace_attr(0, &SpanRead::attr(&span, "c").unwrap());
        c.traced(&span);
        c.finish(42);
        let rec = c.record().unwrap().to_vec();
        let got = Request::parse(&rec, &keys).unwrap();
        assert_eq!(got.newest, 42);
        assert_eq!(got.resources.len(), 1, "the second span shares the resource");
        assert_eq!(got.spans.len(), 3);
        let t = &got.spans[2];
        assert_eq!(t.res, None, "read for its trace only");
        assert_eq!((t.start_time(), t.end_time(), t.trace_id()), (5, 9, &[7u8; 16][..]));
        assert_eq!(t.attr("c"), SpanRead::attr(&span, "c"));
        assert_eq!(t.attr("v"), None, "only the trace's attributes");
        let s = &got.spans[1];
        let r = &got.resources[s.res.unwrap()];
        assert_eq!(r.service, "shop");
        assert_eq!(ResRead::attr(r, "n"), Some(ValueRef::Int(-4)));
        assert_eq!(
            (s.name(), s.start_time(), s.end_time(), s.is_error(), s.status_message()),
            ("checkout", 5, 9, true, "card declined")
        );
        assert_eq!(
            (s.trace_id(), s.span_id(), s.parent_span_id()),
            (&[7u8; 16][..], &[8u8; 8][..], &[][..])
        );
        for k in ["v", "c", "n", "missing"] {
            assert_eq!(s.attr(k), SpanRead::attr(&span, k), "{k}");
        }
        assert_eq!(s.attr("unread"), None, "only the keys the engine reads are kept");
        // Cut anywhere, a record is an error, never a misread.
        for cut in 0..rec.len() {
            assert!(Request::parse(&rec[..cut], &keys).is_err(), "cut at {cut}");
        }
    }
}
