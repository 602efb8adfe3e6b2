//! Trace-aware operations (`trace_context`): an operation takes the business context its own span lacks —
//! order value, currency, customer, tier, order id, items, dimension values — from any other span of the
//! same trace (parent, child or sibling). In the OpenTelemetry Demo a failed `PlaceOrder` carries no amount
//! (the payment server span has it), the payment server span carries no customer and no currency (the checkout
//! span has them), and the customer tier sits on the payment service's internal child span `charge`.
//!
//! # How
//!
//! - **Compact records, not spans.** For every span, the configured `attributes` are looked up through the
//!   span's zero-copy view (nothing is decoded); when one is present, its value is kept in the trace's record
//!   (a few dozen bytes per attribute). Only the attributes are kept, never the span. When several spans of
//!   a trace carry the same attribute, the one that *started first* wins (then the smaller span id), so the
//!   result does not depend on arrival order: the outermost span's view of the business context.
//! - **When.** An operation already waits for the watermark (`allowed_lateness` behind the newest span) before
//!   it is counted; its missing fields are filled from its trace's record then, at finalization. So the
//!   context of every span that arrived within `allowed_lateness` of the operation is used — the analogue of the
//!   Collector's `groupbytrace` `wait_duration` / `tailsampling` `decision_wait`, measured in event time. An
//!   operation finalized before its trace's root span (a span without parent) was seen is counted as
//!   *released incomplete* (`bizpilot_connector_business_impact_trace_context_total{event="incomplete"}`): its
//!   context may lack what the rest of the trace would have brought.
//! - **Bounded.** A trace's record is kept until its newest span is `wait` behind the watermark (then no
//!   operation of it can still be finalized: later spans of it are late), and at most `max_traces` records are
//!   held; beyond, the oldest are evicted (`event="evicted"`). A span with context that arrives after an
//!   operation of its trace was finalized is counted (`event="late"`), as the connector counts late spans.
//! - **Precedence.** The operation's own span (and resource) first, then the trace. The money value and its
//!   currency are resolved together at finalization: the value from the span or else the trace, the currency
//!   from the span, else the trace, else `value.default_currency`.
//!
//! Pitfalls of the Collector's processors this avoids (their issue trackers): memory that grows with whole
//! spans held per trace (here: only the configured attributes); decisions that depend on which span arrived
//! first (here: earliest start wins); late spans silently re-opening a trace (here: counted). Like theirs,
//! it needs every span of a trace in one process: behind a load balancer, route by trace id (the Collector's
//! `loadbalancing` exporter with `routing_key: traceID`) or scale out over Kafka keyed by trace or order.
//!
//! # Config (`trace_context:` in the connector)
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `enabled` | `false` | fill operations' missing fields from their trace |
//! | `wait` | `30s` | how long (event time, behind the watermark) a trace's record is kept after its newest span |
//! | `max_traces` | `100000` | most trace records held; the oldest are evicted beyond |
//! | `attributes` | the attributes the connector reads | which attributes a trace's record keeps: by default `business_key`, `customer_attribute`, `tier_attribute`, `order_attribute`, `items_attribute`, every operation's `value.attribute` and `value.currency_attribute`, and the dimensions' attributes |
//!
//! ```yaml
//! connectors:
//!   business_impact:
//!     trace_context: {enabled: true, wait: 30s, max_traces: 100000}
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bizpilot_core::config::Duration;
use bizpilot_core::view::{AnyValueKind, ValueRef};
use metrics::{Counter, counter};
use serde::Deserialize;

use super::engine::{id8, id16};
use super::read::SpanRead;

/// Config of trace-aware operations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceContextConfig {
    pub enabled: bool,
    pub wait: Duration,
    pub max_traces: usize,
    /// Attributes kept per trace; empty: the attributes the connector reads.
    pub attributes: Vec<String>,
}

impl Default for TraceContextConfig {
    fn default() -> Self {
        TraceContextConfig {
            enabled: false,
            wait: Duration::from_secs(30),
            max_traces: 100_000,
            attributes: Vec::new(),
        }
    }
}

/// Records per chunk of the queue: a chunk is shared with a snapshot until the connector changes one of its
/// records (then that chunk alone is copied), so a snapshot copies nothing up front.
const CHUNK: usize = 512;

/// One trace's record, in the queue of traces in the order they were first seen (or re-queued on expiry).
#[derive(Debug, Clone)]
struct Slot {
    trace: [u8; 16],
    /// The trace's newest time when it was queued (re-checked on expiry).
    queued: u64,
    newest: u64,
    /// The attributes found, encoded ([`Vals`]); `None` when none was (a trace seen only through spans without
    /// them, such as its root, costs no allocation).
    vals: Option<Arc<[u8]>>,
    root: bool,
    finalized: bool,
}

/// A trace's attributes as one buffer: per attribute found, its index in the keys (u16, little-endian), the start
/// time (u64, little-endian) and span id of the earliest-starting span that carries it, the length of its value
/// (varint) and the value as an encoded `AnyValue` (the same bytes as the snapshot's `any_value`).
struct Vals<'a>(&'a [u8]);

/// One attribute of [`Vals`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry<'a> {
    key: u16,
    start: u64,
    span: [u8; 8],
    value: &'a [u8],
}

impl<'a> Iterator for Vals<'a> {
    type Item = Entry<'a>;
    fn next(&mut self) -> Option<Entry<'a>> {
        let b = self.0;
        let key = u16::from_le_bytes(b.get(0..2)?.try_into().ok()?);
        let start = u64::from_le_bytes(b.get(2..10)?.try_into().ok()?);
        let span: [u8; 8] = b.get(10..18)?.try_into().ok()?;
        let mut rest = b.get(18..)?;
        let len = usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?;
        let value = rest.get(..len)?;
        self.0 = rest.get(len..)?;
        Some(Entry {
            key,
            start,
            span,
            value,
        })
    }
}

fn push_entry(out: &mut Vec<u8>, key: u16, start: u64, span: [u8; 8], value: &[u8]) {
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&span);
    prost::encoding::encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// Appends `v` as an encoded `AnyValue` (byte for byte what prost writes for `AnyValue { value: Some(v) }`),
/// without building the decoded value for the common kinds.
fn encode_value(v: &ValueRef<'_>, out: &mut Vec<u8>) {
    use prost::encoding::encode_varint;
    match v {
        ValueRef::Str(s) => {
            out.push(0x0a);
            encode_varint(s.len() as u64, out);
            out.extend_from_slice(s.as_bytes());
        }
        ValueRef::Bool(b) => out.extend_from_slice(&[0x10, u8::from(*b)]),
        ValueRef::Int(i) => {
            out.push(0x18);
            encode_varint(*i as u64, out);
        }
        ValueRef::Double(d) => {
            out.push(0x21);
            out.extend_from_slice(&d.to_le_bytes());
        }
        ValueRef::Other(v) => bizpilot_core::view::encode_any_value(v, out),
    }
}

/// The queue of trace records, oldest first, in chunks shared with snapshots (copy on write).
#[derive(Debug, Clone, Default)]
struct Queue {
    chunks: VecDeque<Arc<Vec<Slot>>>,
    /// Records of `chunks[0]` already taken off the front.
    head: usize,
    /// The sequence number of the front record (wrapping; a record's number stays while it is queued).
    first: u32,
    len: usize,
}

fn chunk_mut(c: &mut Arc<Vec<Slot>>) -> &mut Vec<Slot> {
    if Arc::get_mut(c).is_none() {
        // Shared with a snapshot: copy this chunk only, at its full capacity (it may still grow).
        let mut v = Vec::with_capacity(CHUNK);
        v.extend(c.iter().cloned());
        *c = Arc::new(v);
    }
    Arc::make_mut(c)
}

impl Queue {
    fn position(&self, seq: u32) -> Option<(usize, usize)> {
        let i = seq.wrapping_sub(self.first) as usize;
        (i < self.len).then(|| {
            let p = self.head + i;
            (p / CHUNK, p % CHUNK)
        })
    }

    fn get(&self, seq: u32) -> Option<&Slot> {
        let (c, i) = self.position(seq)?;
        self.chunks.get(c)?.get(i)
    }

    fn get_mut(&mut self, seq: u32) -> Option<&mut Slot> {
        let (c, i) = self.position(seq)?;
        chunk_mut(self.chunks.get_mut(c)?).get_mut(i)
    }

    fn front(&self) -> Option<&Slot> {
        self.get(self.first)
    }

    /// Appends `s`, returning its sequence number.
    fn push(&mut self, s: Slot) -> u32 {
        if self.chunks.back().is_none_or(|c| c.len() >= CHUNK) {
            self.chunks.push_back(Arc::new(Vec::with_capacity(CHUNK)));
        }
        if let Some(last) = self.chunks.back_mut() {
            chunk_mut(last).push(s);
        }
        let seq = self.first.wrapping_add(self.len as u32);
        self.len += 1;
        seq
    }

    fn pop_front(&mut self) -> Option<Slot> {
        if self.len == 0 {
            return None;
        }
        let head = self.head;
        let front = self.chunks.front_mut()?;
        let slot = match Arc::get_mut(front) {
            // Not shared: move the values out instead of counting another reference.
            Some(c) => {
                let s = &mut c[head];
                Slot {
                    vals: s.vals.take(),
                    ..s.clone()
                }
            }
            None => front[head].clone(),
        };
        self.head += 1;
        self.first = self.first.wrapping_add(1);
        self.len -= 1;
        if self.len == 0 {
            self.chunks.clear();
            self.head = 0;
        } else if self.head == CHUNK {
            self.chunks.pop_front();
            self.head = 0;
        }
        Some(slot)
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.chunks
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.get(if i == 0 { self.head } else { 0 }..).unwrap_or_default())
    }

    /// Heap bytes held (chunks at their capacity, values with their reference counts), not counting what a
    /// snapshot shares.
    fn heap_bytes(&self) -> usize {
        let chunks = self.chunks.len() * CHUNK * std::mem::size_of::<Slot>();
        let vals: usize = self.iter().filter_map(|s| s.vals.as_ref()).map(|v| v.len() + 16).sum();
        chunks + vals + self.chunks.capacity() * std::mem::size_of::<Arc<Vec<Slot>>>()
    }
}

/// Counters of the trace context.
#[derive(Debug, Clone)]
pub struct TraceStats {
    pub incomplete: u64,
    pub evicted: u64,
    pub late: u64,
    incomplete_m: Counter,
    evicted_m: Counter,
    late_m: Counter,
}

/// The records of the traces in flight.
#[derive(Debug)]
pub struct TraceContext {
    keys: Vec<String>,
    /// Each trace's record, by its sequence number in `queue`.
    index: HashMap<[u8; 16], u32>,
    /// The records, in the order their traces were first seen (re-queued with their newest time on expiry).
    queue: Queue,
    /// The attributes found on the span being observed ([`Vals`] entries), and one value's encoding (reused).
    found: Vec<u8>,
    value: Vec<u8>,
    wait: u64,
    max: usize,
    pub stats: TraceStats,
}

/// What an operation read from its own span, to be completed from its trace at finalization.
#[derive(Debug)]
pub struct Unresolved {
    pub trace: [u8; 16],
    /// The raw value of `value.attribute` on the span.
    pub value: Option<AnyValueKind>,
    /// The currency code on the span (`value.currency_attribute`).
    pub currency: Option<Box<str>>,
    /// The dimension values on the span (`None`: absent).
    pub dims: Box<[Option<Box<str>>]>,
}

/// What a snapshot keeps of a [`TraceContext`]: the records in flight in their order (the queue's chunks,
/// shared with the connector until it changes them), and the counters.
///
/// Written as format 2 of the snapshot always wrote it — `(records by trace id, the order, counters)`, a record
/// being `{vals: [(key index, {start, span, value})], root, newest, finalized}` — so snapshots of either layout
/// restore.
#[derive(Debug, Clone)]
pub(super) struct Saved {
    queue: Queue,
    counts: [u64; 3],
}

mod saved {
    //! [`super::Saved`]'s serde form: the layout of `(HashMap<[u8; 16], Rec>, VecDeque<([u8; 16], u64)>,
    //! [u64; 3])` with the record types the trace context had before its queue was chunked.
    use std::collections::{HashMap, VecDeque};

    use serde::ser::{SerializeMap, SerializeSeq, SerializeTuple};
    use serde::{Deserialize, Serialize, Serializer};

    use super::{Entry, Queue, Saved, Slot, Vals, push_entry};
    use bizpilot_core::view::{AnyValueKind, encode_any_value};

    #[derive(Deserialize)]
    struct Found {
        start: u64,
        span: [u8; 8],
        #[serde(with = "super::super::snapshot::any_value")]
        value: AnyValueKind,
    }

    #[derive(Deserialize)]
    struct Rec {
        vals: Vec<(u16, Found)>,
        root: bool,
        newest: u64,
        finalized: bool,
    }

    #[derive(Serialize)]
    struct FoundOut<'a> {
        start: u64,
        span: [u8; 8],
        #[serde(with = "serde_bytes_out")]
        value: &'a [u8],
    }

    mod serde_bytes_out {
        pub fn serialize<S: serde::Serializer>(v: &&[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
    }

    struct ValsOut<'a>(Option<&'a [u8]>);

    impl Serialize for ValsOut<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let entries = || Vals(self.0.unwrap_or_default());
            let mut seq = s.serialize_seq(Some(entries().count()))?;
            for Entry {
                key,
                start,
                span,
                value,
            } in entries()
            {
                seq.serialize_element(&(key, FoundOut { start, span, value }))?;
            }
            seq.end()
        }
    }

    #[derive(Serialize)]
    struct RecOut<'a> {
        vals: ValsOut<'a>,
        root: bool,
        newest: u64,
        finalized: bool,
    }

    struct Records<'a>(&'a Queue);

    impl Serialize for Records<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(self.0.len))?;
            for r in self.0.iter() {
                m.serialize_entry(
                    &r.trace,
                    &RecOut {
                        vals: ValsOut(r.vals.as_deref()),
                        root: r.root,
                        newest: r.newest,
                        finalized: r.finalized,
                    },
                )?;
            }
            m.end()
        }
    }

    struct Order<'a>(&'a Queue);

    impl Serialize for Order<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.len))?;
            for r in self.0.iter() {
                seq.serialize_element(&(&r.trace, r.queued))?;
            }
            seq.end()
        }
    }

    impl Serialize for Saved {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut t = s.serialize_tuple(3)?;
            t.serialize_element(&Records(&self.queue))?;
            t.serialize_element(&Order(&self.queue))?;
            t.serialize_element(&self.counts)?;
            t.end()
        }
    }

    fn slot(trace: [u8; 16], queued: u64, r: Rec) -> Slot {
        let mut buf = Vec::new();
        let mut value = Vec::new();
        for (key, f) in r.vals {
            value.clear();
            encode_any_value(&f.value, &mut value);
            push_entry(&mut buf, key, f.start, f.span, &value);
        }
        Slot {
            trace,
            queued,
            newest: r.newest,
            vals: (!buf.is_empty()).then(|| buf.into()),
            root: r.root,
            finalized: r.finalized,
        }
    }

    impl<'de> Deserialize<'de> for Saved {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            type Old = (HashMap<[u8; 16], Rec>, VecDeque<([u8; 16], u64)>, [u64; 3]);
            let (mut recs, order, counts): Old = Deserialize::deserialize(d)?;
            let mut queue = Queue::default();
            for (trace, queued) in order {
                if let Some(r) = recs.remove(&trace) {
                    queue.push(slot(trace, queued, r));
                }
            }
            // A record missing from the order (no snapshot writes one): queued behind the others.
            for (trace, r) in recs {
                let newest = r.newest;
                queue.push(slot(trace, newest, r));
            }
            Ok(Saved { queue, counts })
        }
    }
}

impl TraceContext {
    /// The state a snapshot keeps: the queue's chunks are shared, not copied (the connector copies a chunk
    /// when it next changes one of its records while the snapshot still holds it).
    pub(super) fn save(&self) -> Saved {
        let s = &self.stats;
        Saved {
            queue: self.queue.clone(),
            counts: [s.incomplete, s.evicted, s.late],
        }
    }

    /// Takes the state of a snapshot (the counters are added, to the self-telemetry too).
    pub(super) fn load(&mut self, Saved { queue, counts }: Saved) {
        self.index = HashMap::with_capacity(queue.len);
        let mut seq = queue.first;
        for s in queue.iter() {
            self.index.insert(s.trace, seq);
            seq = seq.wrapping_add(1);
        }
        self.queue = queue;
        let s = &mut self.stats;
        s.incomplete += counts[0];
        s.evicted += counts[1];
        s.late += counts[2];
        s.incomplete_m.increment(counts[0]);
        s.evicted_m.increment(counts[1]);
        s.late_m.increment(counts[2]);
    }

    /// `keys`: the attributes to keep (deduplicated here).
    pub fn new(cfg: &TraceContextConfig, keys: Vec<String>, connector: &str) -> Self {
        let mut uniq: Vec<String> = Vec::new();
        for k in keys {
            if !k.is_empty() && !uniq.contains(&k) {
                uniq.push(k);
            }
        }
        let name = "bizpilot_connector_business_impact_trace_context_total";
        let c = |event: &'static str| counter!(name, "connector" => connector.to_string(), "event" => event);
        TraceContext {
            keys: uniq,
            index: HashMap::new(),
            queue: Queue::default(),
            found: Vec::new(),
            value: Vec::new(),
            wait: u64::try_from(cfg.wait.get().as_nanos()).unwrap_or(u64::MAX / 4),
            max: cfg.max_traces.max(1),
            stats: TraceStats {
                incomplete: 0,
                evicted: 0,
                late: 0,
                incomplete_m: c("incomplete"),
                evicted_m: c("evicted"),
                late_m: c("late"),
            },
        }
    }

    /// Traces held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Heap bytes the records hold (the index at its capacity, the queue's chunks, the values), for the memory
    /// docs and tests.
    pub fn heap_bytes(&self) -> usize {
        // hashbrown: one control byte per bucket, buckets a power of two ≥ 8/7 of the capacity.
        let buckets = if self.index.capacity() == 0 {
            0
        } else {
            (self.index.capacity() * 8 / 7).next_power_of_two()
        };
        buckets * (std::mem::size_of::<([u8; 16], u32)>() + 1)
            + self.queue.heap_bytes()
            + self.found.capacity()
            + self.value.capacity()
    }

    /// Records what `span` (ending at event time `t`) tells about its trace.
    pub(crate) fn observe<S: SpanRead + ?Sized>(&mut self, span: &S, t: u64) {
        self.observe_seen(span, t, |_, _| {});
    }

    /// The attributes the records keep, in the order of the indexes [`TraceContext::observe_seen`] reports.
    pub(crate) fn keys(&self) -> &[String] {
        &self.keys
    }

    /// [`TraceContext::observe`], telling `seen` every attribute it read of the span (its index in
    /// [`TraceContext::keys`], its value): the journal records them without reading them again.
    pub(crate) fn observe_seen<S: SpanRead + ?Sized>(
        &mut self,
        span: &S,
        t: u64,
        mut seen: impl FnMut(usize, &ValueRef<'_>),
    ) {
        if span.trace_id().is_empty() {
            return;
        }
        let trace = id16(span.trace_id());
        let root = span.parent_span_id().is_empty();
        let start = span.start_time();
        let sid = id8(span.span_id());
        let mut found = std::mem::take(&mut self.found);
        let mut value = std::mem::take(&mut self.value);
        found.clear();
        for (i, k) in self.keys.iter().enumerate() {
            if let Some(v) = span.attr(k) {
                seen(i, &v);
                let Ok(i) = u16::try_from(i) else { continue };
                value.clear();
                encode_value(&v, &mut value);
                push_entry(&mut found, i, start, sid, &value);
            }
        }
        self.record(trace, root, t, &found);
        self.found = found;
        self.value = value;
    }

    /// Adds what a span of `trace` told (`found`: [`Vals`] entries) to its record.
    fn record(&mut self, trace: [u8; 16], root: bool, t: u64, found: &[u8]) {
        let seq = match self.index.get(&trace) {
            Some(&seq) => seq,
            None if !root && found.is_empty() => return, // Nothing to keep, and no record to date.
            None => {
                while self.index.len() >= self.max {
                    let Some(old) = self.queue.pop_front() else { break };
                    if self.index.remove(&old.trace).is_some() {
                        self.stats.evicted += 1;
                        self.stats.evicted_m.increment(1);
                    }
                }
                let seq = self.queue.push(Slot {
                    trace,
                    queued: t,
                    newest: 0,
                    vals: None,
                    root: false,
                    finalized: false,
                });
                self.index.insert(trace, seq);
                seq
            }
        };
        let Some(rec) = self.queue.get_mut(seq) else { return };
        rec.newest = rec.newest.max(t);
        rec.root |= root;
        if rec.finalized && !found.is_empty() {
            self.stats.late += 1;
            self.stats.late_m.increment(1);
        }
        if found.is_empty() {
            return;
        }
        // The earliest-starting span (then the smaller span id) wins each attribute.
        let old = rec.vals.as_deref().unwrap_or_default();
        let wins = |n: &Entry<'_>| match Vals(old).find(|o| o.key == n.key) {
            Some(o) => (n.start, n.span) < (o.start, o.span),
            None => true,
        };
        if !Vals(found).any(|n| wins(&n)) {
            return;
        }
        let mut merged = Vec::with_capacity(old.len() + found.len());
        for o in Vals(old) {
            let e = Vals(found).find(|n| n.key == o.key && wins(n)).unwrap_or(o);
            push_entry(&mut merged, e.key, e.start, e.span, e.value);
        }
        for n in Vals(found).filter(|n| !Vals(old).any(|o| o.key == n.key)) {
            push_entry(&mut merged, n.key, n.start, n.span, n.value);
        }
        rec.vals = Some(merged.into());
    }

    /// The value of `key` in `trace`'s record.
    pub fn get(&self, trace: &[u8; 16], key: &str) -> Option<ValueRef<'_>> {
        let i = u16::try_from(self.keys.iter().position(|k| k == key)?).ok()?;
        let seq = *self.index.get(trace)?;
        let vals = self.queue.get(seq)?.vals.as_deref()?;
        Vals(vals)
            .find(|e| e.key == i)
            .and_then(|e| ValueRef::from_encoded(e.value))
    }

    /// The text of `key` in `trace`'s record.
    pub fn text(&self, trace: &[u8; 16], key: &str) -> Option<Box<str>> {
        self.get(trace, key)
            .and_then(|v| v.as_text().map(|c| Box::from(c.as_ref())))
    }

    /// An operation of `trace` is being finalized: counts it as incomplete when the root was not seen.
    pub fn finalizing(&mut self, trace: &[u8; 16]) {
        let root = match self.index.get(trace).copied().and_then(|seq| self.queue.get_mut(seq)) {
            Some(r) => {
                r.finalized = true;
                r.root
            }
            None => false,
        };
        if !root {
            self.stats.incomplete += 1;
            self.stats.incomplete_m.increment(1);
        }
    }

    /// Forgets the traces whose newest span is more than `wait` behind `watermark`.
    pub fn expire(&mut self, watermark: u64) {
        let horizon = watermark.saturating_sub(self.wait);
        while self.queue.front().is_some_and(|s| s.queued < horizon) {
            let Some(mut s) = self.queue.pop_front() else { break };
            if s.newest >= horizon {
                s.queued = s.newest;
                let trace = s.trace;
                let seq = self.queue.push(s);
                self.index.insert(trace, seq);
            } else {
                self.index.remove(&s.trace);
            }
        }
        if self.index.is_empty() && self.index.capacity() > 0 {
            // Idle: give the table back (it is sized for the busiest moment otherwise).
            self.index = HashMap::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_business::attrs;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn span(trace: u8, id: u8, parent: u8, start: u64, kv: Vec<attrs::KeyValue>) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            start_time_unix_nano: start,
            end_time_unix_nano: start + 10,
            attributes: kv,
            ..Default::default()
        }
    }

    fn ctx(max: usize) -> TraceContext {
        let cfg = TraceContextConfig {
            enabled: true,
            wait: Duration::from_secs(1),
            max_traces: max,
            attributes: vec![],
        };
        TraceContext::new(&cfg, vec!["a".into(), "b".into(), "a".into()], "t")
    }

    #[test]
    fn the_earliest_started_span_wins_whatever_the_arrival_order() {
        let early = span(1, 2, 1, 100, vec![attrs::kv_str("a", "outer")]);
        let late = span(1, 3, 2, 200, vec![attrs::kv_str("a", "inner"), attrs::kv_str("b", "x")]);
        for order in [[&early, &late], [&late, &early]] {
            let mut c = ctx(10);
            for s in order {
                c.observe(s, s.end_time_unix_nano);
            }
            assert_eq!(c.text(&[1; 16], "a").as_deref(), Some("outer"));
            assert_eq!(c.text(&[1; 16], "b").as_deref(), Some("x"));
            assert_eq!(c.text(&[2; 16], "a"), None);
        }
    }

    /// The demo's failed checkout: PlaceOrder (customer, currency, ERROR, no amount) → payment server span
    /// (amount) → `charge` (tier), spans of each service in their own request, children first. Both operations
    /// get the value in EUR, the customer and the tier, on the decoded path and through views alike.
    #[test]
    fn operations_take_value_currency_customer_and_tier_from_their_trace() {
        use super::super::config::BusinessImpactConfig;
        use super::super::engine::{Compiled, Engine};
        use bizpilot_core::component::parse_config;
        use bizpilot_core::{Currency, Money, Traces};
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};

        let raw: serde_yaml::Value = serde_yaml::from_str(
            r#"
operations:
  - {name: checkout, span_name: PlaceOrder}
  - {name: payment, span_name: Charge}
dimensions: [{name: customer.tier, attribute: business.customer.tier, default: unknown}]
allowed_lateness: 10s
trace_context: {enabled: true}
"#,
        )
        .unwrap();
        let cfg: BusinessImpactConfig = parse_config(&raw).unwrap();
        let err = Some(Status {
            code: 2,
            message: "declined".into(),
        });
        let mut place = span(5, 1, 0, 1_000, vec![attrs::kv_str("business.customer.id", "c-1")]);
        place.attributes.push(attrs::kv_str("business.currency", "EUR"));
        place.status = err.clone();
        let mut charge_server = span(5, 2, 1, 2_000, vec![attrs::kv_str("business.order.value", "12.34")]);
        charge_server.name = "Charge".into();
        charge_server.status = err.clone();
        let mut charge = span(5, 3, 2, 3_000, vec![attrs::kv_str("business.customer.tier", "gold")]);
        charge.name = "charge".into();
        charge.status = err;
        place.name = "PlaceOrder".into();
        place.end_time_unix_nano = 10_000;
        let req = |spans: Vec<Span>| ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let requests = [req(vec![charge, charge_server]), req(vec![place])];
        for views in [false, true] {
            let mut e = Engine::new(Compiled::new(&cfg, None, None, None).unwrap(), "t");
            for r in &requests {
                if views {
                    let mut t = Traces::from_bytes(prost::Message::encode_to_vec(r).into()).unwrap();
                    e.ingest_traces(&mut t);
                    assert!(t.decoded().is_none());
                } else {
                    e.ingest(r);
                }
            }
            e.flush();
            let eur = Money::parse_amount("12.34", Currency::EUR).unwrap();
            for op in 0..2 {
                assert_eq!(e.ops[op].failed, 1, "views {views} op {op}");
                assert_eq!(e.ops[op].at_risk.get(Currency::EUR), eur, "views {views} op {op}");
                let tiers: Vec<String> = e
                    .series
                    .iter()
                    .filter(|s| s.op == op && s.failed > 0)
                    .filter_map(|s| s.dims.as_ref().and_then(|d| d.first()).map(|t| t.to_string()))
                    .collect();
                assert_eq!(tiers, ["gold"], "views {views} op {op}");
            }
            let stats = e.trace_stats().unwrap();
            assert_eq!((stats.incomplete, stats.evicted, stats.late), (0, 0, 0));
        }
    }

    /// The trace context as it was before its queue was chunked (a map of records and a queue of ids), as
    /// the reference the chunked one must equal: same values, same counters, same traces held after any
    /// sequence of spans, finalizations and expiries.
    /// A reference record: (attributes by key index with (start, span id, value), root, newest, finalized).
    type RefRec = (Vec<(u16, (u64, [u8; 8], String))>, bool, u64, bool);

    #[derive(Default)]
    struct Reference {
        traces: HashMap<[u8; 16], RefRec>,
        order: VecDeque<([u8; 16], u64)>,
        counts: [u64; 3],
    }

    impl Reference {
        fn observe(&mut self, max: usize, trace: [u8; 16], root: bool, t: u64, found: &[(u16, u64, [u8; 8], String)]) {
            if !root && found.is_empty() && !self.traces.contains_key(&trace) {
                return;
            }
            if !self.traces.contains_key(&trace) {
                while self.traces.len() >= max {
                    let Some((old, _)) = self.order.pop_front() else { break };
                    if self.traces.remove(&old).is_some() {
                        self.counts[1] += 1;
                    }
                }
                self.order.push_back((trace, t));
            }
            let rec = self.traces.entry(trace).or_default();
            rec.2 = rec.2.max(t);
            rec.1 |= root;
            if rec.3 && !found.is_empty() {
                self.counts[2] += 1;
            }
            for (k, start, sid, v) in found {
                match rec.0.iter().position(|(key, _)| key == k) {
                    Some(at) if (*start, *sid) < (rec.0[at].1.0, rec.0[at].1.1) => {
                        rec.0[at].1 = (*start, *sid, v.clone())
                    }
                    Some(_) => {}
                    None => rec.0.push((*k, (*start, *sid, v.clone()))),
                }
            }
        }

        fn finalizing(&mut self, trace: &[u8; 16]) {
            let root = self.traces.get_mut(trace).map(|r| {
                r.3 = true;
                r.1
            });
            if root != Some(true) {
                self.counts[0] += 1;
            }
        }

        fn expire(&mut self, horizon: u64) {
            while let Some(&(trace, t)) = self.order.front() {
                if t >= horizon {
                    break;
                }
                self.order.pop_front();
                match self.traces.get(&trace) {
                    Some(r) if r.2 >= horizon => self.order.push_back((trace, r.2)),
                    Some(_) => {
                        self.traces.remove(&trace);
                    }
                    None => {}
                }
            }
        }
    }

    /// Random spans over a few dozen traces (two attributes, random start times and span ids, roots), with
    /// finalizations, expiries and snapshots taken and restored on the way: the chunked records equal the
    /// reference after every step, and a snapshot taken earlier still encodes the state of its moment.
    #[test]
    fn equals_the_map_and_queue_it_replaced_under_random_traffic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for max in [3usize, 40, 2_000] {
            let mut c = ctx(max);
            let mut r = Reference::default();
            let mut t = 0u64;
            let mut saved: Vec<(Saved, Vec<u8>)> = Vec::new();
            for step in 0..6_000u64 {
                t += rnd(50_000_000);
                let tr = [rnd(60) as u8; 16];
                match rnd(20) {
                    0 => {
                        c.finalizing(&tr);
                        r.finalizing(&tr);
                    }
                    1 => {
                        let wm = t.saturating_sub(rnd(2_000_000_000));
                        c.expire(wm);
                        r.expire(wm.saturating_sub(1_000_000_000));
                    }
                    2 => {
                        let s = c.save();
                        let mut b = Vec::new();
                        ciborium::into_writer(&s, &mut b).unwrap();
                        saved.push((s, b));
                        if saved.len() > 3 {
                            saved.remove(0);
                        }
                    }
                    3 => {
                        // Restore what was just written (the counters restart from the snapshot's).
                        let mut b = Vec::new();
                        ciborium::into_writer(&c.save(), &mut b).unwrap();
                        let mut fresh = ctx(max);
                        fresh.load(ciborium::from_reader::<Saved, _>(b.as_slice()).unwrap());
                        c = fresh;
                    }
                    _ => {
                        let (id, parent) = (rnd(250) as u8 + 1, rnd(4) as u8);
                        let start = t.saturating_sub(rnd(1_000_000_000));
                        let mut kv = Vec::new();
                        let mut found = Vec::new();
                        for (i, key) in ["a", "b"].into_iter().enumerate() {
                            if rnd(3) == 0 {
                                let v = format!("{key}{}", rnd(1_000));
                                kv.push(attrs::kv_str(key, v.as_str()));
                                found.push((i as u16, start, [id; 8], v));
                            }
                        }
                        let s = span(tr[0], id, parent, start, kv);
                        c.observe(&s, t);
                        r.observe(max, tr, parent == 0, t, &found);
                    }
                }
                assert_eq!(c.len(), r.traces.len(), "max {max} step {step}");
                let counts = [c.stats.incomplete, c.stats.evicted, c.stats.late];
                assert_eq!(counts, r.counts, "max {max} step {step}");
                for (id, rec) in &r.traces {
                    for (k, name) in [(0u16, "a"), (1, "b")] {
                        let want = rec.0.iter().find(|(key, _)| *key == k).map(|(_, v)| v.2.as_str());
                        assert_eq!(c.text(id, name).as_deref(), want, "max {max} step {step}");
                    }
                }
                let order: Vec<_> = c.queue.iter().map(|s| (s.trace, s.queued)).collect();
                assert_eq!(
                    order,
                    r.order.iter().copied().collect::<Vec<_>>(),
                    "max {max} step {step}"
                );
            }
            // A snapshot is the state of its moment, whatever changed since.
            for (s, b) in &saved {
                let mut again = Vec::new();
                ciborium::into_writer(s, &mut again).unwrap();
                assert_eq!(&again, b, "max {max}");
            }
        }
    }

    /// The previous layout's snapshot (a map of records with decoded values, and a queue of ids) restores into
    /// the chunked one, and the chunked one is written in that layout.
    #[test]
    fn snapshots_keep_the_layout_of_format_2() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Found {
            start: u64,
            span: [u8; 8],
            #[serde(with = "super::super::snapshot::any_value")]
            value: AnyValueKind,
        }
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Rec {
            vals: Vec<(u16, Found)>,
            root: bool,
            newest: u64,
            finalized: bool,
        }
        type Old = (HashMap<[u8; 16], Rec>, VecDeque<([u8; 16], u64)>, [u64; 3]);
        let found = |start, v: AnyValueKind| Found {
            start,
            span: [7; 8],
            value: v,
        };
        let mut recs = HashMap::new();
        recs.insert(
            [1; 16],
            Rec {
                vals: vec![
                    (1, found(5, AnyValueKind::StringValue("gold".into()))),
                    (0, found(6, AnyValueKind::DoubleValue(12.5))),
                ],
                root: true,
                newest: 40,
                finalized: true,
            },
        );
        recs.insert(
            [2; 16],
            Rec {
                vals: vec![],
                root: true,
                newest: 30,
                finalized: false,
            },
        );
        let old: Old = (recs, VecDeque::from([([2; 16], 30), ([1; 16], 35)]), [4, 5, 6]);
        let mut b = Vec::new();
        ciborium::into_writer(&old, &mut b).unwrap();
        let mut c = ctx(10);
        c.load(ciborium::from_reader::<Saved, _>(b.as_slice()).unwrap());
        assert_eq!(c.len(), 2);
        assert_eq!(c.text(&[1; 16], "b").as_deref(), Some("gold"));
        assert!(matches!(c.get(&[1; 16], "a"), Some(ValueRef::Double(d)) if d == 12.5));
        assert_eq!(c.get(&[2; 16], "a"), None);
        assert_eq!((c.stats.incomplete, c.stats.evicted, c.stats.late), (4, 5, 6));
        let order: Vec<_> = c.queue.iter().map(|s| (s.trace, s.queued)).collect();
        assert_eq!(order, [([2; 16], 30), ([1; 16], 35)]);
        // Written back: the same layout, read as the old types.
        let mut again = Vec::new();
        ciborium::into_writer(&c.save(), &mut again).unwrap();
        let back: Old = ciborium::from_reader(again.as_slice()).unwrap();
        assert_eq!(back, old);
    }

    /// A snapshot shares the records' chunks instead of copying them; the connector copies a chunk only when it
    /// changes a record the snapshot still holds. Prints the bytes per trace record for docs/impact-memory.md.
    #[test]
    fn records_are_compact_and_a_snapshot_shares_them() {
        let n = 20_000u32;
        let mut c = ctx(n as usize);
        for i in 0..n {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            let customer = format!("{:08x}-5b1c-4d2e-9f3a-{:012x}", i, i);
            for (sid, parent, kv) in [(1u8, 0u8, vec![]), (2, 1, vec![attrs::kv_str("a", &customer)])] {
                let mut s = span(0, sid, parent, u64::from(i), kv);
                s.trace_id = id.to_vec();
                c.observe(&s, u64::from(i) + 10);
            }
        }
        assert_eq!(c.len(), n as usize);
        let per = c.heap_bytes() as f64 / f64::from(n);
        println!(
            "trace_context: {n} traces (root + one span with a 36-character attribute): {per:.1} heap bytes per trace"
        );
        // The map of records and queue of ids it replaced held about 250 bytes per such trace: 80 of table (a
        // 48-byte entry and a control byte, buckets a power of two), 39 of queue, and for the attribute a 56-byte
        // slot in a shared list with its 16-byte header and the string's own allocation.
        assert!(per < 180.0, "{per} bytes per trace record");
        let saved = c.save();
        let shared = |c: &TraceContext| {
            c.queue
                .chunks
                .iter()
                .zip(&saved.queue.chunks)
                .filter(|(a, b)| Arc::ptr_eq(a, b))
                .count()
        };
        let chunks = c.queue.chunks.len();
        assert_eq!(shared(&c), chunks, "saving copies no record");
        let mut last = [0u8; 16];
        last[..4].copy_from_slice(&(n - 1).to_le_bytes());
        c.finalizing(&last);
        assert_eq!(shared(&c), chunks - 1, "one change copies one chunk");
        assert!(
            !saved.queue.iter().any(|s| s.finalized),
            "the snapshot keeps its moment"
        );
    }

    #[test]
    fn bounded_counted_and_expired() {
        let mut c = ctx(2);
        for t in 1..=3u8 {
            c.observe(
                &span(t, 1, 9, u64::from(t), vec![attrs::kv_str("a", "v")]),
                u64::from(t),
            );
        }
        assert_eq!((c.len(), c.stats.evicted), (2, 1));
        // A span without the attributes of an unknown trace keeps nothing.
        c.observe(&span(7, 1, 9, 5, vec![attrs::kv_str("z", "v")]), 5);
        assert_eq!(c.len(), 2);
        // No root seen: incomplete; then a late context span is counted.
        c.finalizing(&[3; 16]);
        c.observe(&span(3, 4, 9, 4, vec![attrs::kv_str("b", "v")]), 4);
        assert_eq!((c.stats.incomplete, c.stats.late), (1, 1));
        c.observe(&span(3, 5, 0, 1, vec![]), 6);
        c.finalizing(&[3; 16]);
        assert_eq!(c.stats.incomplete, 1, "the root was seen");
        c.expire(6 + 1_000_000_000);
        assert_eq!(c.len(), 1, "trace 3's newest span is 6, not more than wait behind");
        c.expire(7 + 1_000_000_000);
        assert_eq!(c.len(), 0);
    }
}
