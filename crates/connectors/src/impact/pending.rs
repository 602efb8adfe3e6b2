//! Compact state of the `business_impact` engine: what it keeps per operation waiting for the watermark
//! ([`Packed`]) and the span ids it remembers to drop duplicates ([`SpanIds`]).
//!
//! # Pending operations
//!
//! A matched span becomes one [`Packed`] record: a fixed part of 80 bytes (event time, arrival sequence,
//! duration, trace and span id, the hash of the two, operation, series, outcome) and one allocation holding
//! what only some operations have, length-prefixed: business key, customer (one byte when it is the key),
//! tier, order id, item count, value, the value counted provisionally, the failure (service, span name, status
//! message: failures only) and, with `trace_context`, the raw value, currency and dimension values the span had
//! (the raw value as its protobuf encoding). Never the span. The OpenTelemetry Demo's checkout operation packs
//! into about 80 + 100 bytes (two 36-character ids, a decimal amount, a currency); see
//! `docs/impact-memory.md` for the figures per span/s and per minute of lateness.
//!
//! # Duplicate span ids
//!
//! A span is identified by a 64-bit keyed hash (SipHash-2-4 with a random 128-bit key drawn when the engine
//! starts empty and kept in its snapshot, so a restored engine hashes as the one that saved it) of its trace id
//! and span id. Two kinds of memory:
//!
//! - **Pending** operations (event time at or after the watermark): an exact set of their hashes, 8 bytes
//!   each (plus the table's control bytes and slack). A new span whose hash is in it is a duplicate. Two
//!   different spans share a hash with probability about n² / 2⁶⁵ for n pending operations (3·10⁻⁸ for a
//!   million): the only way a genuine operation could be dropped.
//! - **Finalized** operations (older than the watermark): a span older than the watermark is dropped whatever
//!   its id (counted as `late`), so this memory only decides whether such a span is counted as a `duplicate` or
//!   as `late`; no figure depends on it. It is kept in buckets of event time (width `dedup_window` / 4096)
//!   holding 32 bits of each hash, 4 bytes per id; a re-sent span is looked up in the bucket of its own end
//!   time. Exact eviction by window: an id is remembered while its event time is within `dedup_window` of the
//!   watermark (checked at lookup; whole buckets are freed once behind). At most `dedup_max_spans` ids
//!   (pending and finalized) are remembered; beyond, the oldest finalized ids are forgotten first and counted
//!   (`evictions_total{what="span_id"}`, for the buckets not yet behind the window). A late span that is not a
//!   duplicate is counted as a duplicate with probability (ids in its bucket) / 2³² (under 10⁻⁶ at 4,000
//!   operations per bucket).
//!
//! The one behaviour this gives up against remembering every id exactly: a span re-sent with the same ids
//! but a *different* end time, after the first one was finalized, is judged by its own time (counted if it is
//! still within the lateness) instead of being dropped as a duplicate.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};

use bizpilot_core::{Currency, Money};
use opentelemetry_proto::tonic::common::v1::AnyValue;
use prost::Message;

use super::book::Cause;
use super::trace;

/// Passes a 64-bit hash through (the keys are already SipHash outputs).
#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// Buckets of event time per `dedup_window`.
const BUCKETS: u64 = 4096;

/// Span ids remembered for dropping duplicates (see the module docs).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct SpanIds {
    /// The hash key (k0, k1).
    key: (u64, u64),
    pending: IdSet,
    /// Finalized ids: 32 bits of their hash, in buckets of event time `width`; `buckets[i]` holds slot
    /// `first_slot + i`; the front bucket's first `front_start` entries are already forgotten.
    buckets: VecDeque<Vec<u32>>,
    first_slot: u64,
    front_start: usize,
    width: u64,
    window: u64,
    finalized: usize,
}

impl SpanIds {
    pub(super) fn new(window: u64) -> Self {
        let window = window.max(1);
        SpanIds {
            key: {
                let r = RandomState::new();
                (r.hash_one(0u8), r.hash_one(1u8))
            },
            pending: IdSet::default(),
            buckets: VecDeque::new(),
            first_slot: 0,
            front_start: 0,
            width: (window / BUCKETS).max(1),
            window,
            finalized: 0,
        }
    }

    /// The 64-bit id of a span.
    pub(super) fn hash(&self, trace: &[u8; 16], span: &[u8; 8]) -> u64 {
        #[allow(deprecated)] // SipHasher (2-4) is the std's only keyed hasher whose key can be saved
        let mut h = std::hash::SipHasher::new_with_keys(self.key.0, self.key.1);
        (trace, span).hash(&mut h);
        h.finish()
    }

    /// Ids remembered (pending and finalized, including finalized ids of a bucket partly behind the window).
    pub(super) fn len(&self) -> usize {
        self.pending.len() + self.finalized
    }

    pub(super) fn is_pending(&self, h: u64) -> bool {
        self.pending.contains(&h)
    }

    pub(super) fn insert_pending(&mut self, h: u64) {
        self.pending.insert(h);
    }

    /// Whether a finalized span with id `h` ending at `t` is remembered, `watermark` being the current one.
    pub(super) fn was_finalized(&self, t: u64, h: u64, watermark: u64) -> bool {
        if t < watermark.saturating_sub(self.window) {
            return false;
        }
        let slot = t / self.width;
        let Some(i) = slot.checked_sub(self.first_slot).and_then(|i| usize::try_from(i).ok()) else {
            return false;
        };
        let Some(b) = self.buckets.get(i) else {
            return false;
        };
        let from = if i == 0 { self.front_start.min(b.len()) } else { 0 };
        b[from..].contains(&fingerprint(h))
    }

    /// The pending operation `h` ending at `t` is finalized (event times arrive in order).
    pub(super) fn finalize(&mut self, t: u64, h: u64) {
        self.pending.remove(&h);
        let slot = t / self.width;
        // Buckets a whole window before `t` are behind the watermark already: free them before filling a gap.
        let behind = slot.saturating_sub(self.window.div_ceil(self.width) + 1);
        while self.first_slot < behind && !self.buckets.is_empty() {
            self.pop_front();
        }
        if self.buckets.is_empty() {
            self.first_slot = slot;
            self.front_start = 0;
        }
        let Some(i) = slot.checked_sub(self.first_slot) else {
            // Never: finalization is in event-time order. Remember it in the oldest bucket rather than lose it.
            if let Some(b) = self.buckets.front_mut() {
                b.push(fingerprint(h));
                self.finalized += 1;
            }
            return;
        };
        while (self.buckets.len() as u64) <= i {
            if let Some(last) = self.buckets.back_mut() {
                last.shrink_to_fit();
            }
            self.buckets.push_back(Vec::new());
        }
        if let Some(b) = self.buckets.back_mut() {
            b.push(fingerprint(h));
            self.finalized += 1;
        }
    }

    fn pop_front(&mut self) -> usize {
        let n = self
            .buckets
            .pop_front()
            .map(|b| b.len().saturating_sub(self.front_start))
            .unwrap_or(0);
        self.first_slot += 1;
        self.front_start = 0;
        self.finalized -= n.min(self.finalized);
        n
    }

    /// The watermark moved to `watermark`: forgets the buckets wholly behind the window, then the oldest
    /// finalized ids while more than `max` are remembered. Returns how many ids within the window were forgotten
    /// for the bound.
    pub(super) fn expire(&mut self, watermark: u64, max: usize) -> u64 {
        let horizon = watermark.saturating_sub(self.window);
        while !self.buckets.is_empty() && self.first_slot.saturating_add(1).saturating_mul(self.width) <= horizon {
            self.pop_front();
        }
        let mut evicted = 0u64;
        while self.len() > max && self.finalized > 0 {
            let over = self.len() - max;
            let Some(front) = self.buckets.front() else { break };
            let left = front.len().saturating_sub(self.front_start);
            if left <= over {
                evicted += self.pop_front() as u64;
            } else {
                self.front_start += over;
                self.finalized -= over;
                evicted += over as u64;
            }
        }
        if self.buckets.front().is_some_and(|b| b.len() <= self.front_start) {
            self.pop_front();
        }
        evicted
    }
}

fn fingerprint(h: u64) -> u32 {
    (h >> 32) as u32
}

impl std::fmt::Debug for IdHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdHasher")
    }
}

/// A matched span, in full: what the engine reads at ingest and uses at finalization. Kept packed
/// ([`Packed`]) while it waits.
#[derive(Debug)]
pub(super) struct OpRec {
    pub time: u64,
    pub seq: u64,
    pub op: usize,
    pub success: bool,
    pub duration_ns: u64,
    pub trace: [u8; 16],
    pub span: [u8; 8],
    pub hash: u64,
    pub key: Option<Box<str>>,
    pub customer: Option<Box<str>>,
    pub tier: Option<Box<str>>,
    pub order: Option<Box<str>>,
    pub items: Option<i64>,
    pub value: Option<Money>,
    pub series: u32,
    /// (service, span name, status message) of a failure.
    pub failure: Option<Box<Cause>>,
    /// With `trace_context`: what the span had, completed from its trace at finalization.
    pub unresolved: Option<Box<trace::Unresolved>>,
    /// The value counted in the provisional figures, and whether it counted as at risk there.
    pub prov_value: Option<Money>,
    pub prov_risk: bool,
}

impl OpRec {
    /// The trace id and span id, as one 24-byte id.
    pub fn id(&self) -> [u8; 24] {
        let mut id = [0u8; 24];
        id[..16].copy_from_slice(&self.trace);
        id[16..].copy_from_slice(&self.span);
        id
    }

    pub fn duration_s(&self) -> f64 {
        self.duration_ns as f64 / 1e9
    }
}

const SUCCESS: u8 = 1;
const PROV_RISK: u8 = 2;

/// A pending operation, packed: 80 bytes and one allocation for its variable part.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Packed {
    pub time: u64,
    pub seq: u64,
    pub hash: u64,
    duration_ns: u64,
    trace: [u8; 16],
    span: [u8; 8],
    series: u32,
    op: u16,
    flags: u8,
    #[serde(with = "super::snapshot::shared")]
    cold: std::sync::Arc<[u8]>,
}

impl Packed {
    /// Packs `r` (its operation index must fit 16 bits: the config has far fewer operations).
    pub fn pack(r: OpRec) -> Packed {
        let mut w = Writer(Vec::with_capacity(64));
        w.opt_str(r.key.as_deref());
        match (&r.customer, &r.key) {
            (Some(c), Some(k)) if c == k => w.varint(1),
            (Some(c), _) => {
                w.varint(c.len() as u64 + 2);
                w.0.extend_from_slice(c.as_bytes());
            }
            (None, _) => w.varint(0),
        }
        w.opt_str(r.tier.as_deref());
        w.opt_str(r.order.as_deref());
        match r.items {
            Some(n) => {
                w.varint(1);
                w.varint(zigzag(n));
            }
            None => w.varint(0),
        }
        w.opt_money(r.value);
        if r.prov_value.is_some() && r.prov_value == r.value {
            w.varint(2);
        } else {
            w.opt_money(r.prov_value);
        }
        match &r.failure {
            Some(c) => {
                w.varint(1);
                w.str(&c.service);
                w.str(&c.span_name);
                w.str(&c.status_message);
            }
            None => w.varint(0),
        }
        match &r.unresolved {
            Some(u) => {
                w.varint(1);
                match &u.value {
                    Some(v) => {
                        let bytes = AnyValue { value: Some(v.clone()) }.encode_to_vec();
                        w.varint(bytes.len() as u64 + 1);
                        w.0.extend_from_slice(&bytes);
                    }
                    None => w.varint(0),
                }
                w.opt_str(u.currency.as_deref());
                w.varint(u.dims.len() as u64);
                for d in u.dims.iter() {
                    w.opt_str(d.as_deref());
                }
            }
            None => w.varint(0),
        }
        Packed {
            time: r.time,
            seq: r.seq,
            hash: r.hash,
            duration_ns: r.duration_ns,
            trace: r.trace,
            span: r.span,
            series: r.series,
            op: u16::try_from(r.op).unwrap_or(u16::MAX),
            flags: if r.success { SUCCESS } else { 0 } | if r.prov_risk { PROV_RISK } else { 0 },
            cold: std::sync::Arc::from(w.0),
        }
    }

    /// The record as it was packed.
    pub fn unpack(self) -> OpRec {
        let mut r = Reader { b: &self.cold, at: 0 };
        let key = r.opt_str();
        let customer = match r.varint() {
            0 => None,
            1 => key.clone(),
            n => r.bytes((n - 2) as usize).map(str_of),
        };
        let tier = r.opt_str();
        let order = r.opt_str();
        let items = match r.varint() {
            0 => None,
            _ => Some(unzigzag(r.varint())),
        };
        let value = r.opt_money();
        let prov_value = match r.peek() {
            Some(2) => {
                r.at += 1;
                value
            }
            _ => r.opt_money(),
        };
        let failure = match r.varint() {
            0 => None,
            _ => Some(Box::new(Cause {
                service: r.str(),
                span_name: r.str(),
                status_message: r.str(),
            })),
        };
        let unresolved = match r.varint() {
            0 => None,
            _ => {
                let value = match r.varint() {
                    0 => None,
                    n => r
                        .bytes((n - 1) as usize)
                        .and_then(|b| AnyValue::decode(b).ok())
                        .and_then(|v| v.value),
                };
                let currency = r.opt_str();
                let n = r.varint();
                let dims = (0..n).map(|_| r.opt_str()).collect();
                Some(Box::new(trace::Unresolved {
                    trace: self.trace,
                    value,
                    currency,
                    dims,
                }))
            }
        };
        OpRec {
            time: self.time,
            seq: self.seq,
            op: usize::from(self.op),
            success: self.flags & SUCCESS != 0,
            duration_ns: self.duration_ns,
            trace: self.trace,
            span: self.span,
            hash: self.hash,
            key,
            customer,
            tier,
            order,
            items,
            value,
            series: self.series,
            failure,
            unresolved,
            prov_value,
            prov_risk: self.flags & PROV_RISK != 0,
        }
    }

    /// Bytes held (the fixed part and the variable part's allocation).
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Packed>() + self.cold.len()
    }
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn str_of(b: &[u8]) -> Box<str> {
    String::from_utf8_lossy(b).into()
}

struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, v: u64) {
        bizpilot_core::pb::put_varint(&mut self.0, v);
    }

    fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    /// 0: none; else length + 1, then the bytes.
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.varint(s.len() as u64 + 1);
                self.0.extend_from_slice(s.as_bytes());
            }
            None => self.varint(0),
        }
    }

    /// 0: none; 1, then 16 bytes of nanos (little-endian) and the 3-letter currency.
    fn opt_money(&mut self, m: Option<Money>) {
        match m {
            Some(m) => {
                self.varint(1);
                self.0.extend_from_slice(&m.nanos().to_le_bytes());
                self.0.extend_from_slice(m.currency().as_str().as_bytes());
            }
            None => self.varint(0),
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn varint(&mut self) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(b) = self.peek() else { break };
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                break;
            }
        }
        v
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let b = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(b)
    }

    fn str(&mut self) -> String {
        let n = self.varint() as usize;
        self.bytes(n)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    }

    fn opt_str(&mut self) -> Option<Box<str>> {
        match self.varint() {
            0 => None,
            n => self.bytes((n - 1) as usize).map(str_of),
        }
    }

    fn opt_money(&mut self) -> Option<Money> {
        match self.varint() {
            0 => None,
            _ => {
                let nanos = i128::from_le_bytes(self.bytes(16)?.try_into().ok()?);
                let cur = Currency::new(std::str::from_utf8(self.bytes(3)?).ok()?).ok()?;
                Some(Money::from_nanos(nanos, cur))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::view::AnyValueKind;

    fn rec(i: u64) -> OpRec {
        OpRec {
            time: 1_000 + i,
            seq: i,
            op: 1,
            success: i.is_multiple_of(2),
            duration_ns: 123_456_789,
            trace: [i as u8; 16],
            span: [7; 8],
            hash: i * 31,
            key: Some("9a1b7c2e-0000-4000-8000-000000000001".into()),
            customer: Some("9a1b7c2e-0000-4000-8000-000000000001".into()),
            tier: None,
            order: Some("order-1".into()),
            items: Some(-3),
            value: None,
            series: 9,
            failure: None,
            unresolved: None,
            prov_value: Some(Money::parse_amount("12.34", Currency::EUR).unwrap()),
            prov_risk: true,
        }
    }

    /// Every field comes back exactly as packed, in all its forms.
    #[test]
    fn packing_round_trips_every_field() {
        let mut variants = vec![rec(0), rec(1)];
        let mut r = rec(2);
        r.customer = Some("someone else".into());
        r.tier = Some("gold".into());
        r.items = None;
        r.value = Some(Money::from_nanos(i128::MAX - 5, Currency::USD));
        r.prov_value = r.value;
        r.failure = Some(Box::new(Cause {
            service: "payment".into(),
            span_name: "charge".into(),
            status_message: "declined ✗".into(),
        }));
        r.unresolved = Some(Box::new(trace::Unresolved {
            trace: r.trace,
            value: Some(AnyValueKind::DoubleValue(19.99)),
            currency: Some("EUR".into()),
            dims: vec![None, Some("".into()), Some("x".into())].into(),
        }));
        variants.push(r);
        let mut r = rec(3);
        r.key = None;
        r.customer = None;
        r.prov_value = None;
        r.unresolved = Some(Box::new(trace::Unresolved {
            trace: r.trace,
            value: None,
            currency: None,
            dims: Box::new([]),
        }));
        variants.push(r);
        let mut r = rec(4);
        r.key = None;
        r.customer = Some("c".into());
        variants.push(r);
        for r in variants {
            let want = format!("{r:?}");
            let p = Packed::pack(r);
            assert!(p.bytes() < 250, "{}", p.bytes());
            assert_eq!(format!("{:?}", p.unpack()), want);
        }
        assert_eq!(std::mem::size_of::<Packed>(), 80);
    }

    #[test]
    fn finalized_ids_are_remembered_within_the_window_and_bounded() {
        let s = 1_000_000_000u64;
        let mut ids = SpanIds::new(100 * s);
        let h: Vec<u64> = (0..10u64).map(|i| ids.hash(&[i as u8; 16], &[1; 8])).collect();
        assert_ne!(h[0], h[1]);
        for (i, h) in h.iter().enumerate() {
            ids.insert_pending(*h);
            assert!(ids.is_pending(*h));
            ids.finalize((1000 + i as u64 * 10) * s, *h);
            assert!(!ids.is_pending(*h));
        }
        assert_eq!(ids.len(), 10);
        let wm = 1100 * s;
        assert!(ids.was_finalized(1000 * s, h[0], wm));
        assert!(!ids.was_finalized(1010 * s, h[0], wm), "looked up at its own time");
        assert!(!ids.was_finalized(1000 * s, h[0], 1100 * s + 1), "behind the window");
        // Buckets (100 s / 4096 wide) are freed once wholly behind the window.
        assert_eq!(ids.expire(1100 * s + 1, 100), 0);
        assert_eq!(ids.len(), 10, "the first bucket reaches past the horizon");
        assert_eq!(ids.expire(1101 * s, 100), 0);
        assert_eq!(ids.len(), 9, "the first bucket is behind the window");
        // The bound: the oldest go first, counted.
        assert_eq!(ids.expire(1101 * s, 4), 5);
        assert_eq!(ids.len(), 4);
        assert!(!ids.was_finalized(1050 * s, h[5], wm));
        assert!(ids.was_finalized(1060 * s, h[6], wm));
        // A jump far ahead frees what is behind without filling the gap.
        ids.insert_pending(h[0]);
        ids.finalize(10_000_000 * s, h[0]);
        assert!(ids.buckets.len() <= BUCKETS as usize + 3, "{}", ids.buckets.len());
        assert!(ids.was_finalized(10_000_000 * s, h[0], 10_000_000 * s + 1));
    }
}
