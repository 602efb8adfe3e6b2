//! The pre-generated workload: a ring of encoded OTLP export requests built from shopgen, with the byte offsets
//! that are rewritten at send time (the send-time stamp; trace/span ids and timestamps on later laps of the ring,
//! so that a long run does not replay the same spans).

use bizpilot_shopgen::{EmissionKind, GroundTruth, LogBatcher, Shop, ShopConfig, TraceBatcher};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use std::sync::OnceLock;

use crate::pb::{self, Fields, Val, submessages};

/// Resource attribute (int, unix nanoseconds) carrying a request's send time.
pub const STAMP_KEY: &str = "loadgen.sent_unix_nano";
/// Placeholder written at build time: a value whose varint takes exactly [`STAMP_WIDTH`] bytes, as any
/// unix-nanosecond time after 1972 does.
const STAMP_PLACEHOLDER: i64 = 0x1a2b_3c4d_5e6f_7081;
pub const STAMP_WIDTH: usize = 9;
/// Length of the gRPC message prefix (compressed flag + big-endian length).
pub const GRPC_PREFIX: usize = 5;

/// The two signals the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Traces,
    Logs,
}

/// One export request, held gRPC-framed (the protobuf message starts at [`GRPC_PREFIX`]).
#[derive(Debug)]
pub struct Request {
    pub kind: Kind,
    /// Spans or log records.
    pub items: u32,
    /// gRPC prefix (uncompressed) + message.
    pub framed: Bytes,
    /// Offsets (in the message) of 16-byte trace ids.
    ids16: Vec<u32>,
    /// Offsets of 8-byte span ids.
    ids8: Vec<u32>,
    /// Offsets of fixed64 unix-nanosecond times.
    times: Vec<u32>,
    /// Offset of the stamp's varint.
    stamp: Option<u32>,
    /// The gzip-compressed message, made on first use.
    gz: OnceLock<(u32, Bytes)>,
}

impl Request {
    /// The protobuf message.
    pub fn message(&self) -> Bytes {
        self.framed.slice(GRPC_PREFIX..)
    }

    pub fn has_stamp(&self) -> bool {
        self.stamp.is_some()
    }

    /// The message as sent on lap `lap` of the ring with stamp `stamp` (unix ns), compressed at `gzip` level:
    /// `(message, framed)` where only the one the protocol needs is meaningful. Copies only when something
    /// must be rewritten.
    pub fn body(&self, lap: u64, period_ns: u64, stamp: Option<u64>, gzip: Option<u32>, grpc: bool) -> Bytes {
        let rewrite = lap > 0 || (stamp.is_some() && self.stamp.is_some());
        if !rewrite {
            return match gzip {
                None if grpc => self.framed.clone(),
                None => self.message(),
                Some(level) => {
                    let (lvl, gz) = self
                        .gz
                        .get_or_init(|| (level, Bytes::from(gzip_bytes(&self.framed[GRPC_PREFIX..], level))));
                    let gz = if *lvl == level {
                        gz.clone()
                    } else {
                        Bytes::from(gzip_bytes(&self.framed[GRPC_PREFIX..], level))
                    };
                    if grpc { frame(&gz, true) } else { gz }
                }
            };
        }
        let mut buf = self.framed.to_vec();
        {
            let msg = &mut buf[GRPC_PREFIX..];
            if lap > 0 {
                let mask = splitmix64(lap);
                let shift = lap.wrapping_mul(period_ns);
                for &at in &self.ids16 {
                    xor8(msg, at as usize, mask);
                }
                for &at in &self.ids8 {
                    xor8(msg, at as usize, mask);
                }
                for &at in &self.times {
                    let at = at as usize;
                    if let Some(b) = msg.get_mut(at..at + 8) {
                        let t = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
                        if t != 0 {
                            b.copy_from_slice(&t.wrapping_add(shift).to_le_bytes());
                        }
                    }
                }
            }
            if let (Some(at), Some(ns)) = (self.stamp, stamp) {
                pb::write_varint_fixed(msg, at as usize, STAMP_WIDTH, ns);
            }
        }
        match gzip {
            None if grpc => Bytes::from(buf),
            None => Bytes::from(buf).slice(GRPC_PREFIX..),
            Some(level) => {
                let gz = gzip_bytes(&buf[GRPC_PREFIX..], level);
                if grpc { frame(&gz, true) } else { Bytes::from(gz) }
            }
        }
    }
}

fn xor8(msg: &mut [u8], at: usize, mask: u64) {
    if let Some(b) = msg.get_mut(at..at + 8) {
        let v = u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) ^ mask;
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// A well-mixed non-zero 64-bit mask per lap.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

pub fn gzip_bytes(data: &[u8], level: u32) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 3 + 64),
        flate2::Compression::new(level.clamp(1, 9)),
    );
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// A gRPC length-prefixed message.
pub fn frame(msg: &[u8], compressed: bool) -> Bytes {
    let mut out = Vec::with_capacity(msg.len() + GRPC_PREFIX);
    out.push(u8::from(compressed));
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    Bytes::from(out)
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    pub shop: ShopConfig,
    /// Spans (log records) per request.
    pub batch_size: usize,
    /// Send business events as OTLP logs.
    pub logs: bool,
    /// Stop generating once the ring holds this many spans (ignored with `whole`).
    pub ring_spans: u64,
    /// Generate the whole workload (and its ground truth) and send it once.
    pub whole: bool,
    /// Add the send-time stamp resource attribute to each trace request.
    pub stamp: bool,
    /// Leave out what arrives in the first this many nanoseconds of simulated time (the shop's warm-up, while
    /// sessions have only started browsing); ignored with `whole`.
    pub skip_ns: u64,
}

/// The requests, in arrival order, and what laps need.
#[derive(Debug)]
pub struct Ring {
    pub requests: Vec<Request>,
    pub spans: u64,
    pub log_records: u64,
    pub bytes: u64,
    /// Span times cover `period_ns`; lap `n` shifts every time by `n × period_ns`.
    pub period_ns: u64,
    /// Spans in requests before index `i` (length `requests.len() + 1`).
    pub spans_before: Vec<u64>,
}

impl Ring {
    /// Spans scheduled before the `idx`-th request sent (the ring repeated).
    pub fn spans_before(&self, idx: u64) -> u64 {
        let n = self.requests.len() as u64;
        let laps = idx / n;
        laps * self.spans + self.spans_before[(idx % n) as usize]
    }
}

/// Builds the ring; with `spec.whole`, also the ground truth of exactly these requests.
pub fn build(spec: &Spec) -> anyhow::Result<(Ring, Option<GroundTruth>)> {
    let mut stream = if spec.whole {
        Shop::stream_with_truth(&spec.shop)
    } else {
        Shop::stream(&spec.shop)
    }
    .map_err(|e| anyhow::anyhow!("shop config: {e}"))?;
    let mut tb = TraceBatcher::new(spec.batch_size);
    let mut lb = LogBatcher::new(spec.batch_size);
    let mut traces: Vec<Vec<u8>> = Vec::new();
    let mut logs = Vec::new();
    let mut requests = Vec::new();
    let mut spans = 0u64;
    let (mut tmin, mut tmax) = (u64::MAX, 0u64);
    let mut first: Option<u64> = None;
    for e in stream.by_ref() {
        let base = *first.get_or_insert(e.arrival_unix_nano);
        if !spec.whole && e.arrival_unix_nano < base.saturating_add(spec.skip_ns) {
            continue;
        }
        match &e.kind {
            EmissionKind::Trace(t) => {
                spans += t.spans.len() as u64;
                tb.push(t, &mut traces);
            }
            EmissionKind::Event(ev) if spec.logs => lb.push(ev, &mut logs),
            EmissionKind::Event(_) => {}
        }
        for raw in traces.drain(..) {
            requests.push(trace_request(raw, spec.stamp)?);
        }
        for l in logs.drain(..) {
            requests.push(log_request(l.encode_to_vec()));
        }
        if !spec.whole && spans >= spec.ring_spans {
            break;
        }
    }
    if let Some(raw) = tb.finish() {
        requests.push(trace_request(raw, spec.stamp)?);
    }
    if let Some(l) = lb.finish() {
        requests.push(log_request(l.encode_to_vec()));
    }
    if requests.is_empty() {
        anyhow::bail!("the shop config generated nothing to send");
    }
    let truth = if spec.whole { stream.into_truth() } else { None };
    let mut spans_before = Vec::with_capacity(requests.len() + 1);
    let (mut s, mut l, mut bytes) = (0u64, 0u64, 0u64);
    for r in &requests {
        spans_before.push(s);
        match r.kind {
            Kind::Traces => s += u64::from(r.items),
            Kind::Logs => l += u64::from(r.items),
        }
        bytes += (r.framed.len() - GRPC_PREFIX) as u64;
        let msg = &r.framed[GRPC_PREFIX..];
        for &at in &r.times {
            let at = at as usize;
            let t = u64::from_le_bytes(msg[at..at + 8].try_into().unwrap_or([0; 8]));
            if t != 0 {
                tmin = tmin.min(t);
                tmax = tmax.max(t);
            }
        }
    }
    spans_before.push(s);
    let period_ns = if tmin <= tmax {
        tmax - tmin + 1_000_000_000
    } else {
        1_000_000_000
    };
    Ok((
        Ring {
            requests,
            spans: s,
            log_records: l,
            bytes,
            period_ns,
            spans_before,
        },
        truth,
    ))
}

fn trace_request(raw: Vec<u8>, stamp: bool) -> anyhow::Result<Request> {
    let raw = if stamp {
        let mut req = ExportTraceServiceRequest::decode(raw.as_slice())?;
        if let Some(rs) = req.resource_spans.first_mut() {
            let res = rs.resource.get_or_insert_with(Resource::default);
            res.attributes.insert(
                0,
                KeyValue {
                    key: STAMP_KEY.into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::IntValue(STAMP_PLACEHOLDER)),
                    }),
                    ..Default::default()
                },
            );
        }
        req.encode_to_vec()
    } else {
        raw
    };
    let mut r = Request {
        kind: Kind::Traces,
        items: 0,
        framed: frame(&raw, false),
        ids16: Vec::new(),
        ids8: Vec::new(),
        times: Vec::new(),
        stamp: None,
        gz: OnceLock::new(),
    };
    let msg = &r.framed[GRPC_PREFIX..];
    let (mut items, mut ids16, mut ids8, mut times) = (0u32, Vec::new(), Vec::new(), Vec::new());
    let mut stamp_at = None;
    for (rs, rs_at) in submessages(msg, 0, 1) {
        if stamp && stamp_at.is_none() {
            stamp_at = find_stamp(rs, rs_at).map(|(_, at)| at as u32);
        }
        for (ss, ss_at) in submessages(rs, rs_at, 2) {
            for (span, span_at) in submessages(ss, ss_at, 2) {
                items += 1;
                for (f, v) in Fields::new(span, span_at) {
                    match (f, v) {
                        (1, Val::Bytes(b, at)) if b.len() == 16 => ids16.push(at as u32),
                        (2 | 4, Val::Bytes(b, at)) if b.len() == 8 => ids8.push(at as u32),
                        (7 | 8, Val::Fixed64(at)) => times.push(at as u32),
                        (11, Val::Bytes(ev, ev_at)) => {
                            for (g, w) in Fields::new(ev, ev_at) {
                                if let (1, Val::Fixed64(at)) = (g, w) {
                                    times.push(at as u32);
                                }
                            }
                        }
                        (13, Val::Bytes(link, link_at)) => {
                            for (g, w) in Fields::new(link, link_at) {
                                match (g, w) {
                                    (1, Val::Bytes(b, at)) if b.len() == 16 => ids16.push(at as u32),
                                    (2, Val::Bytes(b, at)) if b.len() == 8 => ids8.push(at as u32),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    if stamp && stamp_at.is_none() {
        anyhow::bail!("internal: stamp placeholder not found in a trace request");
    }
    r.items = items;
    r.ids16 = ids16;
    r.ids8 = ids8;
    r.times = times;
    r.stamp = stamp_at;
    Ok(r)
}

fn log_request(raw: Vec<u8>) -> Request {
    let framed = frame(&raw, false);
    let msg = &framed[GRPC_PREFIX..];
    let (mut items, mut ids16, mut ids8, mut times) = (0u32, Vec::new(), Vec::new(), Vec::new());
    for (rl, rl_at) in submessages(msg, 0, 1) {
        for (sl, sl_at) in submessages(rl, rl_at, 2) {
            for (rec, rec_at) in submessages(sl, sl_at, 2) {
                items += 1;
                for (f, v) in Fields::new(rec, rec_at) {
                    match (f, v) {
                        (1 | 11, Val::Fixed64(at)) => times.push(at as u32),
                        (9, Val::Bytes(b, at)) if b.len() == 16 => ids16.push(at as u32),
                        (10, Val::Bytes(b, at)) if b.len() == 8 => ids8.push(at as u32),
                        _ => {}
                    }
                }
            }
        }
    }
    Request {
        kind: Kind::Logs,
        items,
        framed,
        ids16,
        ids8,
        times,
        stamp: None,
        gz: OnceLock::new(),
    }
}

/// The stamp in a `ResourceSpans` message: its value and the offset of its varint.
pub fn find_stamp(resource_spans: &[u8], base: usize) -> Option<(u64, usize)> {
    for (res, res_at) in submessages(resource_spans, base, 1) {
        for (kv, kv_at) in submessages(res, res_at, 1) {
            let mut key_ok = false;
            let mut found = None;
            for (f, v) in Fields::new(kv, kv_at) {
                match (f, v) {
                    (1, Val::Bytes(k, _)) => key_ok = k == STAMP_KEY.as_bytes(),
                    (2, Val::Bytes(any, any_at)) => {
                        for (g, w) in Fields::new(any, any_at) {
                            if let (3, Val::Varint(x, at)) = (g, w) {
                                found = Some((x, at));
                            }
                        }
                    }
                    _ => {}
                }
            }
            if key_ok && found.is_some() {
                return found;
            }
        }
    }
    None
}

/// Every stamp in an `ExportTraceServiceRequest` (one per original request a collector merged).
pub fn stamps(msg: &[u8]) -> Vec<u64> {
    submessages(msg, 0, 1)
        .filter_map(|(rs, at)| find_stamp(rs, at).map(|s| s.0))
        .collect()
}

/// The current time in unix nanoseconds.
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::Traces;

    fn spec(stamp: bool) -> Spec {
        let mut shop = ShopConfig {
            orders_per_sec: 20.0,
            duration: bizpilot_core::config::Duration::from_secs(3600),
            ..Default::default()
        };
        shop.fulfilment.enabled = false;
        Spec {
            shop,
            batch_size: 512,
            logs: true,
            ring_spans: 4096,
            whole: false,
            stamp,
            skip_ns: 0,
        }
    }

    #[test]
    fn laps_rewrite_ids_and_times_consistently_and_stamps_read_back() {
        let (ring, _) = build(&spec(true)).unwrap();
        assert!(ring.spans >= 4096);
        assert!(ring.requests.iter().any(|r| r.kind == Kind::Logs));
        let r = ring.requests.iter().find(|r| r.kind == Kind::Traces).unwrap();
        let lap0 = r.body(0, ring.period_ns, Some(1_800_000_000_000_000_000), None, false);
        let lap3 = r.body(3, ring.period_ns, Some(1_800_000_000_000_000_001), None, false);
        assert_eq!(stamps(&lap0), vec![1_800_000_000_000_000_000]);
        assert_eq!(stamps(&lap3), vec![1_800_000_000_000_000_001]);
        let a = Traces::from_bytes(lap0).unwrap().into_message().unwrap();
        let b = Traces::from_bytes(lap3).unwrap().into_message().unwrap();
        let sa: Vec<_> = a
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        let sb: Vec<_> = b
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        assert_eq!(sa.len(), r.items as usize);
        assert_eq!(sa.len(), sb.len());
        for (x, y) in sa.iter().zip(&sb) {
            assert_ne!(x.trace_id, y.trace_id);
            assert_ne!(x.span_id, y.span_id);
            assert_eq!(y.start_time_unix_nano - x.start_time_unix_nano, 3 * ring.period_ns);
            assert_eq!(x.name, y.name);
            assert_eq!(x.attributes, y.attributes);
        }
        // Parent links stay consistent: a child's parent id on lap 3 is its parent's span id on lap 3.
        let ids: std::collections::HashSet<_> = sb.iter().map(|s| s.span_id.clone()).collect();
        let ids0: std::collections::HashSet<_> = sa.iter().map(|s| s.span_id.clone()).collect();
        let linked0 = sa.iter().filter(|s| ids0.contains(&s.parent_span_id)).count();
        let linked3 = sb.iter().filter(|s| ids.contains(&s.parent_span_id)).count();
        assert!(linked0 > 0);
        assert_eq!(linked0, linked3);
        // gzip round trip, framed for gRPC.
        let gz = r.body(0, ring.period_ns, None, Some(1), true);
        assert_eq!(gz[0], 1);
        let mut out = Vec::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(&gz[GRPC_PREFIX..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, r.message());
    }

    #[test]
    fn whole_workload_has_truth_and_ring_bookkeeping() {
        let mut s = spec(false);
        s.whole = true;
        s.shop.duration = bizpilot_core::config::Duration::from_secs(20);
        let (ring, truth) = build(&s).unwrap();
        assert!(truth.is_some());
        assert_eq!(*ring.spans_before.last().unwrap(), ring.spans);
        assert_eq!(ring.spans_before(ring.requests.len() as u64), ring.spans);
        assert!(!ring.requests[0].has_stamp());
    }
}
