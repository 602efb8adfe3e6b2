//! Pipeline data: OTLP traces, metrics and logs.
//!
//! A payload is held encoded (the bytes a receiver got), decoded (owned
//! `opentelemetry-proto` structs), or both. Components reach it only through
//! this API: a forwarding pipeline never decodes, a component that reads
//! decodes once and keeps the bytes, a component that changes the data drops
//! the bytes and they are re-encoded once, at the exporter.

use bytes::{Bytes, BytesMut};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::fmt;

use crate::ack::Ack;
use crate::wire::{self, WireError};

pub use opentelemetry_proto::tonic as proto;

/// Work done on a whole request, counted so that tests can hold every stage to its budget ("one walk per
/// request", issue #15): per thread ([`work_on_this_thread`], for tests that drive a stage directly) and in the
/// self-telemetry counter `bizpilot_pdata_work_total{signal, op}` (for tests and operators of a running process).
///
/// | `op` | counted when |
/// |---|---|
/// | `validate` | a request's validating walk ([`Otlp::from_bytes`], [`Otlp::from_json`]) |
/// | `decode` | encoded data is decoded into owned structs |
/// | `encode` | owned structs are encoded |
/// | `walk` | a component walks an encoded request's spans or attributes through views (a rewrite included) |
/// | `copy` | a rewrite writes a new encoding of a request (spans or attributes changed) |
///
/// Not counted: the batch processor's appends (concatenations of encoded requests) and the exporters' own
/// encodings of other formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Validate = 0,
    Decode = 1,
    Encode = 2,
    Walk = 3,
    Copy = 4,
}

impl Work {
    pub const ALL: [Work; 5] = [Work::Validate, Work::Decode, Work::Encode, Work::Walk, Work::Copy];

    pub fn as_str(self) -> &'static str {
        match self {
            Work::Validate => "validate",
            Work::Decode => "decode",
            Work::Encode => "encode",
            Work::Walk => "walk",
            Work::Copy => "copy",
        }
    }
}

/// Counts of [`Work`], indexed by `Work as usize`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkCounts(pub [u64; 5]);

impl WorkCounts {
    pub fn get(&self, w: Work) -> u64 {
        self.0.get(w as usize).copied().unwrap_or(0)
    }

    /// What was counted since `earlier`.
    pub fn since(&self, earlier: &WorkCounts) -> WorkCounts {
        let mut d = [0u64; 5];
        for (i, x) in d.iter_mut().enumerate() {
            *x = self
                .0
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(earlier.0.get(i).copied().unwrap_or(0));
        }
        WorkCounts(d)
    }
}

thread_local! {
    static WORK: std::cell::Cell<[u64; 5]> = const { std::cell::Cell::new([0; 5]) };
}

/// Counts one piece of [`Work`] on data of `signal` (on this thread, and in the self-telemetry with labels
/// `signal` and `op`).
pub fn count_work(signal: Signal, w: Work) {
    WORK.with(|c| {
        let mut a = c.get();
        if let Some(x) = a.get_mut(w as usize) {
            *x += 1;
        }
        c.set(a);
    });
    metrics::counter!("bizpilot_pdata_work_total", "signal" => signal.as_str(), "op" => w.as_str()).increment(1);
}

/// The [`Work`] counted on this thread so far.
pub fn work_on_this_thread() -> WorkCounts {
    WorkCounts(WORK.with(|c| c.get()))
}

/// The three OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// The name used in pipeline ids (`traces`, `metrics`, `logs`).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// What one item of this signal is called in self-telemetry (`spans`, `metric_points`, `log_records`).
    pub fn item_name(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "metric_points",
            Signal::Logs => "log_records",
        }
    }

    pub fn parse(s: &str) -> Option<Signal> {
        match s {
            "traces" => Some(Signal::Traces),
            "metrics" => Some(Signal::Metrics),
            "logs" => Some(Signal::Logs),
            _ => None,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An OTLP export request type the pipeline carries.
pub trait OtlpMessage: Message + Default + Clone + PartialEq + Send + Sync + 'static {
    const SIGNAL: Signal;
    #[doc(hidden)]
    fn schema() -> &'static wire::Schema;
    /// Number of items (spans, data points, log records) in a decoded message.
    fn item_count(&self) -> usize;
    /// Moves all of `other`'s resources into `self`.
    fn append(&mut self, other: &mut Self);
    /// Moves items beyond the first `n` into a new message, keeping resource and scope.
    fn split_off_items(&mut self, n: usize) -> Self;
    /// Whether [`Otlp::split_off`] splits the encoding itself ([`crate::view::split_nested_at`]): the
    /// request is resources (field 1) of scopes (field 2) of items (field 2), one item each (traces, logs).
    const SPLITS_ENCODED: bool = false;
}

/// OTLP data of one signal, encoded or decoded.
#[derive(Clone)]
pub struct Otlp<M: OtlpMessage> {
    bytes: Option<Bytes>,
    msg: Option<M>,
    items: usize,
}

/// Errors reading pipeline data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("protobuf decode failed: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("invalid OTLP/JSON: {0}")]
    Json(String),
}

impl<M: OtlpMessage> Default for Otlp<M> {
    fn default() -> Self {
        Self::from_message(M::default())
    }
}

impl<M: OtlpMessage> fmt::Debug for Otlp<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Otlp")
            .field("signal", &M::SIGNAL)
            .field("items", &self.items)
            .field("encoded", &self.bytes.as_ref().map(|b| b.len()))
            .field("decoded", &self.msg.is_some())
            .finish()
    }
}

impl<M: OtlpMessage> Otlp<M> {
    /// Validates protobuf bytes (without decoding them) and wraps them.
    ///
    /// Bytes in which a singular message field occurs twice (valid protobuf, merged by a decoder;
    /// no exporter we know writes it) are decoded here, so that the zero-copy views used later
    /// never read them differently from a decoder.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, WireError> {
        count_work(M::SIGNAL, Work::Validate);
        let v = wire::validate(M::schema(), &bytes)?;
        if v.non_canonical {
            count_work(M::SIGNAL, Work::Decode);
            let msg = M::decode(bytes).map_err(|_| WireError {
                offset: 0,
                at: M::SIGNAL.as_str().to_string(),
                reason: "the decoder refused bytes the walk accepted",
            })?;
            return Ok(Self::from_message(msg));
        }
        let items = v.items;
        Ok(Self {
            bytes: Some(bytes),
            msg: None,
            items,
        })
    }

    pub fn from_message(msg: M) -> Self {
        let items = msg.item_count();
        Self {
            bytes: None,
            msg: Some(msg),
            items,
        }
    }

    /// Parses OTLP/JSON (hex ids, enums as integers, 64-bit integers as strings or numbers).
    pub fn from_json(json: &[u8]) -> Result<Self, DataError>
    where
        M: serde::de::DeserializeOwned,
    {
        let msg: M = serde_json::from_slice(json).map_err(|e| DataError::Json(e.to_string()))?;
        count_work(M::SIGNAL, Work::Encode);
        count_work(M::SIGNAL, Work::Validate);
        // The rules protobuf input is held to (id lengths, AnyValue nesting) hold for JSON too:
        // the same walk, over the message's encoding.
        wire::validate_and_count(M::schema(), &msg.encode_to_vec())
            .map_err(|e| DataError::Json(format!("{}: {}", e.at, e.reason)))?;
        Ok(Self::from_message(msg))
    }

    pub fn signal(&self) -> Signal {
        M::SIGNAL
    }

    /// Spans, metric data points or log records.
    pub fn items(&self) -> usize {
        self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// Length of the protobuf encoding.
    pub fn encoded_len(&self) -> usize {
        match (&self.bytes, &self.msg) {
            (Some(b), _) => b.len(),
            (None, Some(m)) => m.encoded_len(),
            (None, None) => 0,
        }
    }

    /// The protobuf encoding, encoding once and keeping the result.
    pub fn encoded(&mut self) -> Bytes {
        if let Some(b) = &self.bytes {
            return b.clone();
        }
        count_work(M::SIGNAL, Work::Encode);
        let b = Bytes::from(self.msg.as_ref().map(|m| m.encode_to_vec()).unwrap_or_default());
        self.bytes = Some(b.clone());
        b
    }

    /// The protobuf encoding without caching it (for shared references).
    pub fn to_bytes(&self) -> Bytes {
        match (&self.bytes, &self.msg) {
            (Some(b), _) => b.clone(),
            (None, Some(m)) => {
                count_work(M::SIGNAL, Work::Encode);
                Bytes::from(m.encode_to_vec())
            }
            (None, None) => Bytes::new(),
        }
    }

    /// The decoded message if it is held (no decoding). With [`Otlp::encoded_bytes`], lets a
    /// component pick the cheaper of two paths for data that arrives in either form.
    pub fn decoded(&self) -> Option<&M> {
        self.msg.as_ref()
    }

    /// A copy holding only the encoding (encoding once if needed): sharing the bytes, not walking them again
    /// and not copying a decoded message.
    pub fn encoded_copy(&mut self) -> Self {
        let bytes = self.encoded();
        Self {
            bytes: Some(bytes),
            msg: None,
            items: self.items,
        }
    }

    /// The encoding if it is held (no encoding).
    pub fn encoded_bytes(&self) -> Option<&Bytes> {
        self.bytes.as_ref()
    }

    /// The decoded message for reading; decodes once and keeps both forms.
    pub fn message(&mut self) -> Result<&M, DataError> {
        self.ensure_decoded()?;
        self.msg.as_ref().ok_or_else(|| DataError::Json("no data".into()))
    }

    /// The decoded message for changing; the cached encoding is dropped.
    pub fn message_mut(&mut self) -> Result<&mut M, DataError> {
        self.ensure_decoded()?;
        self.bytes = None;
        // The caller may add or remove items: recounted lazily by `recount`.
        self.msg.as_mut().ok_or_else(|| DataError::Json("no data".into()))
    }

    /// Recomputes the item count after changes made through [`Otlp::message_mut`].
    pub fn recount(&mut self) {
        if let Some(m) = &self.msg {
            self.items = m.item_count();
        }
    }

    pub fn into_message(mut self) -> Result<M, DataError> {
        self.ensure_decoded()?;
        Ok(self.msg.unwrap_or_default())
    }

    fn ensure_decoded(&mut self) -> Result<(), DataError> {
        if self.msg.is_none() {
            let m = match &self.bytes {
                Some(b) => {
                    count_work(M::SIGNAL, Work::Decode);
                    M::decode(b.as_ref())?
                }
                None => M::default(),
            };
            self.msg = Some(m);
        }
        Ok(())
    }

    /// Appends `other` to `self`. When either side is encoded, the other is encoded too and the
    /// two are joined by concatenating their bytes (a protobuf message's repeated fields
    /// concatenate): nothing is decoded. Only two payloads held decoded are appended decoded.
    pub fn append(&mut self, mut other: Self) -> Result<(), DataError> {
        if other.items == 0 && other.encoded_len() == 0 {
            return Ok(());
        }
        if self.items == 0 && self.encoded_len() == 0 {
            // Nothing held yet (`Default` holds an empty message): take `other` as it is, in
            // whichever form.
            *self = other;
            return Ok(());
        }
        if self.bytes.is_some() || other.bytes.is_some() {
            // Either side is encoded: join encoded. Encoding the decoded side (one pass, no
            // allocation per field) is cheaper than decoding the encoded one, the result is a fraction
            // of the decoded size, and the stages after a merge (business_impact) read encoded data.
            self.encoded();
            let b = other.encoded();
            self.msg = None;
            let a = self.bytes.take().unwrap_or_default();
            // Reuse our buffer when we own it, so repeated appends stay linear.
            let mut joined = match a.try_into_mut() {
                Ok(m) => m,
                Err(shared) => {
                    let mut m = BytesMut::with_capacity((shared.len() + b.len()) * 2);
                    m.extend_from_slice(&shared);
                    m
                }
            };
            joined.extend_from_slice(&b);
            self.bytes = Some(joined.freeze());
            self.items += other.items;
            return Ok(());
        }
        self.ensure_decoded()?;
        other.ensure_decoded()?;
        if let (Some(a), Some(b)) = (self.msg.as_mut(), other.msg.as_mut()) {
            a.append(b);
        }
        self.bytes = None;
        self.items += other.items;
        Ok(())
    }

    /// Joins `parts` in order into one encoded payload, each part's bytes copied once into a buffer of the
    /// exact total size (parts held only decoded are encoded first, once). What repeated [`Otlp::append`]s
    /// give, without their intermediate buffers and repeated copies: a protobuf message's repeated fields
    /// concatenate. Each part is dropped as soon as it is copied, so the batch is not held twice: the peak is
    /// the result plus one part, not the result plus all of them.
    pub fn concat(mut parts: Vec<Self>) -> Self {
        if parts.len() <= 1 {
            return parts.pop().unwrap_or_default();
        }
        let total: usize = parts.iter().map(Self::encoded_len).sum();
        let mut out = Vec::with_capacity(total);
        let mut items = 0;
        for mut p in parts {
            out.extend_from_slice(&p.encoded());
            items += p.items;
        }
        Self {
            bytes: Some(Bytes::from(out)),
            msg: None,
            items,
        }
    }

    /// Replaces or deletes fields anywhere in the encoding, in one pass ([`crate::view::FieldEdits`]):
    /// `collect` walks the encoded bytes and records its edits, which are then applied at once, copying
    /// the bytes once when there is any. The edits must not add or remove items (spans, data points, log
    /// records): the item count stays. Data held only decoded is encoded first. Returns the number of edits.
    pub fn edit_fields(&mut self, collect: impl FnOnce(&[u8], &mut crate::view::FieldEdits)) -> usize {
        if self.bytes.is_none() {
            self.encoded();
        }
        let Some(b) = &self.bytes else { return 0 };
        let mut edits = crate::view::FieldEdits::default();
        collect(b, &mut edits);
        let n = edits.len();
        if let Some(out) = edits.apply(b) {
            count_work(M::SIGNAL, Work::Copy);
            self.bytes = Some(Bytes::from(out));
            self.msg = None;
        }
        n
    }

    /// Splits off everything after the first `n` items. Encoded traces and logs are split on their encoding
    /// ([`crate::view::split_nested_at`]: one walk, each part written once, the resource and scope of the item
    /// split at kept on both sides, as the decoded split does); metrics, and data held only decoded, are
    /// split decoded.
    pub fn split_off(&mut self, n: usize) -> Result<Self, DataError> {
        if n >= self.items {
            return Ok(Self::default());
        }
        if M::SPLITS_ENCODED
            && self.msg.is_none()
            && let Some(b) = &self.bytes
        {
            count_work(M::SIGNAL, Work::Walk);
            count_work(M::SIGNAL, Work::Copy);
            let (head, tail) = crate::view::split_nested_at(b, n);
            let rest = self.items - n;
            self.bytes = Some(Bytes::from(head));
            self.items = n;
            return Ok(Self {
                bytes: Some(Bytes::from(tail)),
                msg: None,
                items: rest,
            });
        }
        self.ensure_decoded()?;
        let rest = match self.msg.as_mut() {
            Some(m) => m.split_off_items(n),
            None => M::default(),
        };
        self.bytes = None;
        // Metrics split at metric boundaries, so recount rather than assume `n`.
        self.recount();
        Ok(Self::from_message(rest))
    }
}

pub type Traces = Otlp<ExportTraceServiceRequest>;

impl Traces {
    /// A request written from parts of validated requests, with its span count: core's own splitter
    /// ([`crate::view::TraceGroup::into_traces`]), spans released from a join window with their resources and
    /// scopes. Valid by construction, not walked again.
    pub fn from_written(bytes: impl Into<Bytes>, items: usize) -> Traces {
        Traces {
            bytes: Some(bytes.into()),
            msg: None,
            items,
        }
    }

    /// Lets `edit` change each span on the encoding ([`crate::view::edit_spans`]: one walk, one edit list,
    /// the request written once when anything changed): add or remove attributes, or take the span out
    /// (the item count drops by the spans taken out, which is returned). Data held only decoded is encoded
    /// first.
    pub fn edit_spans(&mut self, mut edit: impl FnMut(&crate::view::SpanAt<'_>, &mut crate::view::SpanEdit)) -> usize {
        if self.bytes.is_none() {
            self.encoded();
        }
        let Some(b) = &self.bytes else { return 0 };
        let std::ops::ControlFlow::Continue(edited) = crate::view::edit_spans(b, |at, e| {
            edit(at, e);
            std::ops::ControlFlow::Continue(())
        }) else {
            return 0;
        };
        if let Some(out) = edited.bytes {
            self.bytes = Some(Bytes::from(out));
            self.msg = None;
            self.items = self.items.saturating_sub(edited.dropped);
        }
        edited.dropped
    }

    /// Calls `f` for every span through zero-copy views over the encoding (encoding once,
    /// cached, when the data is only held decoded). Nothing is allocated per span.
    pub fn for_each_span<'a>(&'a mut self, f: impl FnMut(&crate::view::ResourceView<'a>, &crate::view::SpanView<'a>)) {
        if self.bytes.is_none() {
            self.encoded();
        }
        if let Some(b) = &self.bytes {
            crate::view::for_each_span(b, f);
        }
    }

    /// Adds or removes span attributes on the encoding without decoding
    /// ([`crate::view::rewrite_spans`]); spans without changes are copied byte for byte.
    pub fn rewrite_spans(
        &mut self,
        mut edit: impl FnMut(&crate::view::ResourceView<'_>, &crate::view::SpanView<'_>, &mut crate::view::SpanEdit),
    ) {
        let _ = self.try_rewrite_spans(|r, s, e| {
            edit(r, s, e);
            std::ops::ControlFlow::Continue(())
        });
    }

    /// [`Traces::rewrite_spans`] that `edit` may stop by returning `ControlFlow::Break`
    /// ([`crate::view::try_rewrite_spans`]): the data is then left as it was and `Break` is returned,
    /// so that the caller can process this request another way (e.g. decoded).
    pub fn try_rewrite_spans(
        &mut self,
        edit: impl FnMut(
            &crate::view::ResourceView<'_>,
            &crate::view::SpanView<'_>,
            &mut crate::view::SpanEdit,
        ) -> std::ops::ControlFlow<()>,
    ) -> std::ops::ControlFlow<()> {
        if self.bytes.is_none() {
            self.encoded();
        }
        let Some(b) = &self.bytes else {
            return std::ops::ControlFlow::Continue(());
        };
        let out = crate::view::try_rewrite_spans(b, edit)?;
        if let Some(out) = out {
            // Attributes only change inside spans: the item count stays.
            self.bytes = Some(Bytes::from(out));
            self.msg = None;
        }
        std::ops::ControlFlow::Continue(())
    }

    /// [`Traces::rewrite_spans`] for a caller that reads each span itself
    /// ([`crate::view::try_rewrite_span_bytes`]): `edit` gets the encoded `Span` instead of a
    /// [`crate::view::SpanView`].
    pub fn rewrite_span_bytes(
        &mut self,
        mut edit: impl FnMut(&crate::view::ResourceView<'_>, &[u8], &mut crate::view::SpanEdit),
    ) {
        if self.bytes.is_none() {
            self.encoded();
        }
        let Some(b) = &self.bytes else { return };
        let out = crate::view::try_rewrite_span_bytes(b, |r, s, e| {
            edit(r, s, e);
            std::ops::ControlFlow::Continue(())
        });
        if let std::ops::ControlFlow::Continue(Some(out)) = out {
            self.bytes = Some(Bytes::from(out));
            self.msg = None;
        }
    }
}
pub type Metrics = Otlp<ExportMetricsServiceRequest>;
pub type Logs = Otlp<ExportLogsServiceRequest>;

/// Splits a list of `(container, items)` so that the first `n` items stay.
macro_rules! split_nested {
    ($self:expr, $n:expr, $res:ident, $scopes:ident, $items:ident, $ResT:ty, $ScopeT:ty) => {{
        let mut remaining = $n;
        let mut out: Vec<$ResT> = Vec::new();
        let mut keep: Vec<$ResT> = Vec::new();
        for mut rs in std::mem::take(&mut $self.$res) {
            if remaining == 0 {
                out.push(rs);
                continue;
            }
            let mut moved_scopes: Vec<$ScopeT> = Vec::new();
            let mut kept_scopes: Vec<$ScopeT> = Vec::new();
            for mut ss in std::mem::take(&mut rs.$scopes) {
                if remaining == 0 {
                    moved_scopes.push(ss);
                } else if ss.$items.len() <= remaining {
                    remaining -= ss.$items.len();
                    kept_scopes.push(ss);
                } else {
                    let tail = ss.$items.split_off(remaining);
                    remaining = 0;
                    let mut moved = ss.clone();
                    moved.$items = tail;
                    kept_scopes.push(ss);
                    moved_scopes.push(moved);
                }
            }
            if !moved_scopes.is_empty() {
                let mut moved = rs.clone();
                moved.$scopes = moved_scopes;
                out.push(moved);
            }
            rs.$scopes = kept_scopes;
            keep.push(rs);
        }
        $self.$res = keep;
        out
    }};
}

impl OtlpMessage for ExportTraceServiceRequest {
    const SIGNAL: Signal = Signal::Traces;
    const SPLITS_ENCODED: bool = true;
    fn schema() -> &'static wire::Schema {
        &wire::TRACES_REQUEST
    }
    fn item_count(&self) -> usize {
        self.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }
    fn append(&mut self, other: &mut Self) {
        self.resource_spans.append(&mut other.resource_spans);
    }
    fn split_off_items(&mut self, n: usize) -> Self {
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
        // Clone only the resource/scope headers of the container being split.
        let out = split_nested!(self, n, resource_spans, scope_spans, spans, ResourceSpans, ScopeSpans);
        Self { resource_spans: out }
    }
}

impl OtlpMessage for ExportLogsServiceRequest {
    const SIGNAL: Signal = Signal::Logs;
    const SPLITS_ENCODED: bool = true;
    fn schema() -> &'static wire::Schema {
        &wire::LOGS_REQUEST
    }
    fn item_count(&self) -> usize {
        self.resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum()
    }
    fn append(&mut self, other: &mut Self) {
        self.resource_logs.append(&mut other.resource_logs);
    }
    fn split_off_items(&mut self, n: usize) -> Self {
        use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
        let out = split_nested!(self, n, resource_logs, scope_logs, log_records, ResourceLogs, ScopeLogs);
        Self { resource_logs: out }
    }
}

/// Number of data points in a metric.
pub fn metric_points(m: &opentelemetry_proto::tonic::metrics::v1::Metric) -> usize {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

impl OtlpMessage for ExportMetricsServiceRequest {
    const SIGNAL: Signal = Signal::Metrics;
    fn schema() -> &'static wire::Schema {
        &wire::METRICS_REQUEST
    }
    fn item_count(&self) -> usize {
        self.resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(metric_points)
            .sum()
    }
    fn append(&mut self, other: &mut Self) {
        self.resource_metrics.append(&mut other.resource_metrics);
    }
    fn split_off_items(&mut self, n: usize) -> Self {
        // Metrics are split at metric boundaries: a metric's points stay together,
        // so the first part may hold slightly more than `n` points.
        let mut remaining = n;
        let mut out = Vec::new();
        let mut keep = Vec::new();
        for mut rm in std::mem::take(&mut self.resource_metrics) {
            if remaining == 0 {
                out.push(rm);
                continue;
            }
            let mut kept_scopes = Vec::new();
            let mut moved_scopes = Vec::new();
            for mut sm in std::mem::take(&mut rm.scope_metrics) {
                if remaining == 0 {
                    moved_scopes.push(sm);
                    continue;
                }
                let mut cut = sm.metrics.len();
                for (i, m) in sm.metrics.iter().enumerate() {
                    if remaining == 0 {
                        cut = i;
                        break;
                    }
                    remaining = remaining.saturating_sub(metric_points(m));
                }
                if cut < sm.metrics.len() {
                    let tail = sm.metrics.split_off(cut);
                    let mut moved = sm.clone();
                    moved.metrics = tail;
                    moved_scopes.push(moved);
                }
                kept_scopes.push(sm);
            }
            if !moved_scopes.is_empty() {
                let mut moved = rm.clone();
                moved.scope_metrics = moved_scopes;
                out.push(moved);
            }
            rm.scope_metrics = kept_scopes;
            keep.push(rm);
        }
        self.resource_metrics = keep;
        Self { resource_metrics: out }
    }
}

/// Data of any signal.
#[derive(Debug, Clone)]
pub enum Payload {
    Traces(Traces),
    Metrics(Metrics),
    Logs(Logs),
}

impl Payload {
    pub fn signal(&self) -> Signal {
        match self {
            Payload::Traces(_) => Signal::Traces,
            Payload::Metrics(_) => Signal::Metrics,
            Payload::Logs(_) => Signal::Logs,
        }
    }

    pub fn items(&self) -> usize {
        match self {
            Payload::Traces(d) => d.items(),
            Payload::Metrics(d) => d.items(),
            Payload::Logs(d) => d.items(),
        }
    }

    /// Whether the payload is held encoded.
    pub fn is_encoded(&self) -> bool {
        match self {
            Payload::Traces(d) => d.encoded_bytes().is_some(),
            Payload::Metrics(d) => d.encoded_bytes().is_some(),
            Payload::Logs(d) => d.encoded_bytes().is_some(),
        }
    }

    pub fn encoded_len(&self) -> usize {
        match self {
            Payload::Traces(d) => d.encoded_len(),
            Payload::Metrics(d) => d.encoded_len(),
            Payload::Logs(d) => d.encoded_len(),
        }
    }

    /// The protobuf encoding (cached).
    pub fn encoded(&mut self) -> Bytes {
        match self {
            Payload::Traces(d) => d.encoded(),
            Payload::Metrics(d) => d.encoded(),
            Payload::Logs(d) => d.encoded(),
        }
    }

    /// An empty payload of `signal`.
    pub fn empty(signal: Signal) -> Payload {
        match signal {
            Signal::Traces => Payload::Traces(Traces::default()),
            Signal::Metrics => Payload::Metrics(Metrics::default()),
            Signal::Logs => Payload::Logs(Logs::default()),
        }
    }

    /// Validates protobuf bytes of `signal`.
    pub fn from_bytes(signal: Signal, bytes: Bytes) -> Result<Payload, WireError> {
        Ok(match signal {
            Signal::Traces => Payload::Traces(Traces::from_bytes(bytes)?),
            Signal::Metrics => Payload::Metrics(Metrics::from_bytes(bytes)?),
            Signal::Logs => Payload::Logs(Logs::from_bytes(bytes)?),
        })
    }

    /// Parses OTLP/JSON of `signal`.
    pub fn from_json(signal: Signal, json: &[u8]) -> Result<Payload, DataError> {
        Ok(match signal {
            Signal::Traces => Payload::Traces(Traces::from_json(json)?),
            Signal::Metrics => Payload::Metrics(Metrics::from_json(json)?),
            Signal::Logs => Payload::Logs(Logs::from_json(json)?),
        })
    }

    /// OTLP/JSON encoding of the payload.
    pub fn to_json(&mut self) -> Result<Vec<u8>, DataError> {
        let r = match self {
            Payload::Traces(d) => serde_json::to_vec(d.message()?),
            Payload::Metrics(d) => serde_json::to_vec(d.message()?),
            Payload::Logs(d) => serde_json::to_vec(d.message()?),
        };
        r.map_err(|e| DataError::Json(e.to_string()))
    }

    /// Appends a payload of the same signal; a payload of another signal is returned unchanged.
    pub fn append(&mut self, other: Payload) -> Result<(), AppendError> {
        match (self, other) {
            (Payload::Traces(a), Payload::Traces(b)) => a.append(b).map_err(AppendError::Data),
            (Payload::Metrics(a), Payload::Metrics(b)) => a.append(b).map_err(AppendError::Data),
            (Payload::Logs(a), Payload::Logs(b)) => a.append(b).map_err(AppendError::Data),
            (_, other) => Err(AppendError::SignalMismatch(other)),
        }
    }

    /// Joins payloads of one signal in order, encoded ([`Otlp::concat`]: each part copied once). Parts of
    /// mixed signals are given back unchanged.
    pub fn concat(parts: Vec<Payload>) -> Result<Payload, Vec<Payload>> {
        let Some(signal) = parts.first().map(Payload::signal) else {
            return Err(parts);
        };
        if parts.iter().any(|p| p.signal() != signal) {
            return Err(parts);
        }
        macro_rules! join {
            ($v:ident) => {
                Payload::$v(Otlp::concat(
                    parts
                        .into_iter()
                        .filter_map(|p| match p {
                            Payload::$v(d) => Some(d),
                            _ => None,
                        })
                        .collect(),
                ))
            };
        }
        Ok(match signal {
            Signal::Traces => join!(Traces),
            Signal::Metrics => join!(Metrics),
            Signal::Logs => join!(Logs),
        })
    }

    /// Splits off everything after the first `n` items.
    pub fn split_off(&mut self, n: usize) -> Result<Payload, DataError> {
        Ok(match self {
            Payload::Traces(d) => Payload::Traces(d.split_off(n)?),
            Payload::Metrics(d) => Payload::Metrics(d.split_off(n)?),
            Payload::Logs(d) => Payload::Logs(d.split_off(n)?),
        })
    }
}

/// Why two payloads could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("cannot append: {0}")]
    Data(DataError),
    #[error("cannot append a payload of another signal")]
    SignalMismatch(Payload),
}

/// A unit of work moving through a pipeline: data plus the acknowledgements of
/// every source that contributed to it. When the last copy of a batch is
/// dropped, each source learns whether its data was delivered.
#[derive(Debug, Clone)]
pub struct Batch {
    pub payload: Payload,
    pub acks: Vec<Ack>,
}

impl Batch {
    pub fn new(payload: Payload) -> Self {
        Self {
            payload,
            acks: Vec::new(),
        }
    }

    pub fn with_ack(payload: Payload, ack: Ack) -> Self {
        Self {
            payload,
            acks: vec![ack],
        }
    }

    pub fn signal(&self) -> Signal {
        self.payload.signal()
    }

    pub fn items(&self) -> usize {
        self.payload.items()
    }

    /// Marks the batch as not delivered (permanent failure). Sources are told when the
    /// last copy is dropped.
    pub fn fail(&self) {
        for a in &self.acks {
            a.fail();
        }
    }

    /// Moves another batch's data and acknowledgements into this one.
    pub fn merge(&mut self, other: Batch) -> Result<(), DataError> {
        let Batch { payload, mut acks } = other;
        match self.payload.append(payload) {
            Ok(()) => {}
            Err(AppendError::Data(e)) => {
                for a in &acks {
                    a.fail();
                }
                return Err(e);
            }
            Err(AppendError::SignalMismatch(_)) => {
                for a in &acks {
                    a.fail();
                }
                return Err(DataError::Json("signal mismatch".into()));
            }
        }
        self.acks.append(&mut acks);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Delivery;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use std::sync::{Arc, Mutex};

    /// A `ResourceSpans` carrying its `resource` twice is valid protobuf: a decoder merges the two
    /// (attributes of both). `from_bytes` decodes such bytes, so the views see both attributes too.
    #[test]
    fn repeated_singular_message_is_read_as_a_decoder_reads_it() {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
        use opentelemetry_proto::tonic::resource::v1::Resource;
        let kv = |k: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("v".into())),
            }),
            ..Default::default()
        };
        let rs = |attr: &str, spans: usize| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(attr)],
                ..Default::default()
            }),
            scope_spans: traces(spans, "s").resource_spans.remove(0).scope_spans,
            ..Default::default()
        };
        // Concatenating two encodings of one ResourceSpans gives one message with every field twice.
        let mut body = rs("service.name", 1).encode_to_vec();
        body.extend(rs("tenant", 2).encode_to_vec());
        let mut req = Vec::new();
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut req);
        prost::encoding::encode_varint(body.len() as u64, &mut req);
        req.extend(&body);

        let v = wire::validate(&wire::TRACES_REQUEST, &req).unwrap();
        assert!(v.non_canonical);
        let decoded = ExportTraceServiceRequest::decode(&req[..]).unwrap();
        assert_eq!(decoded.resource_spans[0].resource.as_ref().unwrap().attributes.len(), 2);

        let mut t = Traces::from_bytes(Bytes::from(req)).unwrap();
        assert_eq!(t.items(), 3);
        let mut seen = Vec::new();
        t.for_each_span(|r, _| seen.push(r.attributes().iter().count()));
        assert_eq!(seen, vec![2, 2, 2]);

        // Canonical bytes stay encoded (zero-copy).
        let canonical = traces(2, "c").encode_to_vec();
        assert!(!wire::validate(&wire::TRACES_REQUEST, &canonical).unwrap().non_canonical);
        assert!(Traces::from_bytes(Bytes::from(canonical)).unwrap().decoded().is_none());
    }

    fn traces(n: usize, name: &str) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (0..n)
                        .map(|i| Span {
                            name: format!("{name}-{i}"),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn encoded_append_concatenates_without_decoding() {
        let mut a = Traces::from_bytes(traces(3, "a").encode_to_vec().into()).unwrap();
        let b = Traces::from_bytes(traces(2, "b").encode_to_vec().into()).unwrap();
        a.append(b).unwrap();
        assert_eq!(a.items(), 5);
        assert!(a.msg.is_none(), "append of two encoded payloads must not decode");
        let m = a.into_message().unwrap();
        assert_eq!(m.resource_spans.len(), 2);
        assert_eq!(m.item_count(), 5);
    }

    /// A decoded payload merged with encoded ones (the batch processor, after a stage that held data
    /// decoded) is encoded once and concatenated: nothing is decoded, in either order, and an empty
    /// accumulator takes the first payload as it is.
    #[test]
    fn mixed_append_encodes_the_decoded_side_and_never_decodes() {
        use super::{Work, work_on_this_thread};
        for decoded_first in [true, false] {
            let before = work_on_this_thread();
            let mut acc = Traces::default();
            let enc = || Traces::from_bytes(traces(2, "e").encode_to_vec().into()).unwrap();
            let dec = || Traces::from_message(traces(3, "d"));
            let (first, second) = if decoded_first { (dec(), enc()) } else { (enc(), dec()) };
            acc.append(first).unwrap();
            acc.append(second).unwrap();
            acc.append(enc()).unwrap();
            let work = work_on_this_thread().since(&before);
            assert_eq!(work.get(Work::Decode), 0, "decoded_first={decoded_first}");
            assert_eq!(work.get(Work::Encode), 1, "decoded_first={decoded_first}");
            assert!(acc.decoded().is_none());
            assert_eq!(acc.items(), 7);
            let names: Vec<String> = acc
                .into_message()
                .unwrap()
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .map(|s| s.name.clone())
                .collect();
            let (x, y) = if decoded_first { ("d", "e") } else { ("e", "d") };
            let mut want: Vec<String> = Vec::new();
            for (p, n) in [
                (x, if decoded_first { 3 } else { 2 }),
                (y, if decoded_first { 2 } else { 3 }),
                ("e", 2),
            ] {
                want.extend((0..n).map(|i| format!("{p}-{i}")));
            }
            assert_eq!(names, want, "order kept");
        }
    }

    /// `concat` gives the bytes repeated appends give, in one buffer of the exact size: encoded and decoded
    /// parts in any order, each decoded part encoded once, nothing decoded.
    #[test]
    fn concat_equals_repeated_appends_and_copies_once() {
        use super::{Work, work_on_this_thread};
        let enc = |n, p| Traces::from_bytes(traces(n, p).encode_to_vec().into()).unwrap();
        let dec = |n, p| Traces::from_message(traces(n, p));
        let parts = || vec![dec(3, "a"), enc(2, "b"), enc(4, "c"), dec(1, "d"), enc(5, "e")];
        let mut appended = Traces::default();
        for p in parts() {
            appended.append(p).unwrap();
        }
        let before = work_on_this_thread();
        let joined = Traces::concat(parts());
        let work = work_on_this_thread().since(&before);
        assert_eq!(
            (work.get(Work::Decode), work.get(Work::Encode)),
            (0, 2),
            "the two decoded parts encoded once"
        );
        assert_eq!(joined.items(), 15);
        let bytes = joined.encoded_bytes().unwrap();
        assert_eq!(bytes, appended.encoded_bytes().unwrap());
        let total: usize = parts().iter().map(Traces::encoded_len).sum();
        assert_eq!(bytes.len(), total);
        let mixed = Payload::concat(vec![Payload::Traces(enc(1, "x")), Payload::Logs(Logs::default())]);
        assert!(
            mixed.is_err_and(|given_back| given_back.len() == 2),
            "mixed signals are given back"
        );
    }

    #[test]
    fn split_keeps_first_n_items_in_order() {
        let mut a = Traces::from_message(traces(10, "x"));
        let rest = a.split_off(4).unwrap();
        assert_eq!(a.items(), 4);
        assert_eq!(rest.items(), 6);
        let first = a.into_message().unwrap();
        let second = rest.into_message().unwrap();
        assert_eq!(first.resource_spans[0].scope_spans[0].spans[3].name, "x-3");
        assert_eq!(second.resource_spans[0].scope_spans[0].spans[0].name, "x-4");
    }

    /// Encoded traces are split on the encoding: no decode, no encode, and the parts are what the decoded
    /// split gives.
    #[test]
    fn encoded_split_never_decodes() {
        let msg = traces(10, "x");
        let mut a = Traces::from_bytes(msg.encode_to_vec().into()).unwrap();
        let before = work_on_this_thread();
        let rest = a.split_off(4).unwrap();
        let work = work_on_this_thread().since(&before);
        assert_eq!((work.get(Work::Decode), work.get(Work::Encode)), (0, 0));
        assert!(a.decoded().is_none() && rest.decoded().is_none());
        assert_eq!((a.items(), rest.items()), (4, 6));
        let mut want = msg.clone();
        let want_rest = want.split_off_items(4);
        assert_eq!(a.into_message().unwrap(), want);
        assert_eq!(rest.into_message().unwrap(), want_rest);
    }

    #[test]
    fn json_round_trip_uses_hex_ids_and_string_ints() {
        let json =
            br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},
            "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
            "name":"GET","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
            "attributes":[{"key":"n","value":{"intValue":"42"}}]}]}]}]}"#;
        let mut p = Payload::from_json(Signal::Traces, json).unwrap();
        assert_eq!(p.items(), 1);
        let Payload::Traces(t) = &mut p else { unreachable!() };
        let span = &t.message().unwrap().resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id[0], 0x5b);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
        let out = String::from_utf8(p.to_json().unwrap()).unwrap();
        assert!(out.contains("5b8efff798038103d269b633813fc60c"), "{out}");
    }

    #[test]
    fn merged_batch_reports_to_every_source_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mk = |id: u32| {
            let seen = seen.clone();
            Ack::new(move |d| seen.lock().unwrap().push((id, d)))
        };
        let mut a = Batch::with_ack(Payload::Traces(Traces::from_message(traces(1, "a"))), mk(1));
        let b = Batch::with_ack(Payload::Traces(Traces::from_message(traces(1, "b"))), mk(2));
        a.merge(b).unwrap();
        let copy = a.clone();
        drop(a);
        assert!(seen.lock().unwrap().is_empty(), "a copy is still in flight");
        copy.fail();
        drop(copy);
        let mut got = seen.lock().unwrap().clone();
        got.sort_by_key(|x| x.0);
        assert_eq!(got, vec![(1, Delivery::Failed), (2, Delivery::Failed)]);
    }

    /// OTLP/JSON of one span with `trace_id`/`span_id` given as hex strings.
    fn json_span(trace_id: &str, span_id: &str) -> String {
        format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"{trace_id}","spanId":"{span_id}","name":"s"}}]}}]}}]}}"#
        )
    }

    #[test]
    fn json_ids_of_the_wrong_length_are_refused_naming_the_field() {
        let ok = Otlp::<ExportTraceServiceRequest>::from_json(json_span(&"ab".repeat(16), &"cd".repeat(8)).as_bytes());
        assert_eq!(ok.unwrap().items(), 1);
        for (trace, span, field) in [
            ("ab".repeat(15), "cd".repeat(8), "Span.trace_id"), // 30 hex characters
            ("ab".repeat(17), "cd".repeat(8), "Span.trace_id"), // 34
            ("ab".repeat(16), "cd".repeat(7), "Span.span_id"),
            ("ab".repeat(16), "cd".repeat(9), "Span.span_id"),
        ] {
            let e = Otlp::<ExportTraceServiceRequest>::from_json(json_span(&trace, &span).as_bytes()).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(field) && msg.contains("hex characters"), "{msg}");
        }
    }

    #[test]
    fn json_any_value_nesting_limit_matches_protobuf() {
        use crate::wire::{MAX_ANY_VALUE_DEPTH, tests::nested};
        use opentelemetry_proto::tonic::common::v1::KeyValue;
        for kvlist in [true, false] {
            let req = |levels| {
                let mut r = traces(1, "s");
                r.resource_spans[0].scope_spans[0].spans[0].attributes = vec![KeyValue {
                    key: "deep".into(),
                    value: Some(nested(levels, kvlist)),
                    ..Default::default()
                }];
                r
            };
            for (levels, ok) in [(MAX_ANY_VALUE_DEPTH, true), (MAX_ANY_VALUE_DEPTH + 1, false)] {
                let r = req(levels);
                let json = serde_json::to_vec(&r).unwrap();
                let from_json = Otlp::<ExportTraceServiceRequest>::from_json(&json);
                let from_pb = Otlp::<ExportTraceServiceRequest>::from_bytes(Bytes::from(r.encode_to_vec()));
                assert_eq!(from_json.is_ok(), ok, "JSON, {levels} levels, kvlist={kvlist}");
                assert_eq!(from_pb.is_ok(), ok, "protobuf, {levels} levels, kvlist={kvlist}");
                if !ok {
                    let msg = from_json.unwrap_err().to_string();
                    assert!(msg.contains("AnyValue nested deeper than"), "{msg}");
                }
            }
        }
    }
}
