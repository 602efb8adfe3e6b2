//! OTLP span pieces written with the core protobuf writer ([`bizpilot_core::pb`]): fields are written in the
//! order prost uses, and empty fields are omitted as prost omits them, so decoding and re-encoding with prost
//! gives the same bytes.

pub use bizpilot_core::pb::{put_varint as varint, varint_len};

/// A length-delimited field: tag byte, length, bytes.
#[inline]
pub fn bytes_field(buf: &mut Vec<u8>, tag: u8, b: &[u8]) {
    buf.push(tag);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// An attribute key, pre-encoded as `KeyValue.key` (field 1).
#[derive(Debug, Clone)]
pub struct Key(Vec<u8>);

impl Key {
    pub fn new(k: &str) -> Key {
        let mut v = Vec::with_capacity(k.len() + 2);
        bytes_field(&mut v, 0x0a, k.as_bytes());
        Key(v)
    }
}

/// Tag of `Span.attributes` (field 9, length-delimited).
const ATTR: u8 = 0x4a;

#[inline]
fn kv_head(buf: &mut Vec<u8>, key: &Key, any_len: usize) {
    buf.push(ATTR);
    varint(buf, (key.0.len() + 1 + varint_len(any_len as u64) + any_len) as u64);
    buf.extend_from_slice(&key.0);
    buf.push(0x12);
    varint(buf, any_len as u64);
}

/// A string attribute.
#[inline]
pub fn attr_str(buf: &mut Vec<u8>, key: &Key, v: &str) {
    let any = 1 + varint_len(v.len() as u64) + v.len();
    kv_head(buf, key, any);
    bytes_field(buf, 0x0a, v.as_bytes());
}

/// An int attribute.
#[inline]
pub fn attr_int(buf: &mut Vec<u8>, key: &Key, v: i64) {
    kv_head(buf, key, 1 + varint_len(v as u64));
    buf.push(0x18);
    varint(buf, v as u64);
}

/// A bool attribute.
#[inline]
pub fn attr_bool(buf: &mut Vec<u8>, key: &Key, v: bool) {
    kv_head(buf, key, 2);
    buf.push(0x10);
    buf.push(u8::from(v));
}

/// A double attribute.
#[inline]
pub fn attr_double(buf: &mut Vec<u8>, key: &Key, v: f64) {
    kv_head(buf, key, 9);
    buf.push(0x21);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// The head of a span: ids, name (pre-encoded with [`bytes_field`] tag 0x2a), kind, times. Attributes and
/// status follow, then [`span_flags`] (prost writes fields in tag order; `flags` is field 16).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn span_head(
    buf: &mut Vec<u8>,
    trace_id: &[u8; 16],
    span_id: &[u8; 8],
    parent: Option<&[u8; 8]>,
    name: &[u8],
    kind: u8,
    start: u64,
    end: u64,
) {
    bytes_field(buf, 0x0a, trace_id);
    bytes_field(buf, 0x12, span_id);
    if let Some(p) = parent {
        bytes_field(buf, 0x22, p);
    }
    buf.extend_from_slice(name);
    buf.push(0x30);
    buf.push(kind);
    buf.push(0x39);
    buf.extend_from_slice(&start.to_le_bytes());
    buf.push(0x41);
    buf.extend_from_slice(&end.to_le_bytes());
}

/// `Span.flags` (field 16, fixed32): the last field of a span.
#[inline]
pub fn span_flags(buf: &mut Vec<u8>, flags: u32) {
    buf.extend_from_slice(&[0x85, 0x01]);
    buf.extend_from_slice(&flags.to_le_bytes());
}

/// `Span.status` (field 15) with code ERROR and `message`.
#[inline]
pub fn status_error(buf: &mut Vec<u8>, message: &str) {
    let mut inner = 2; // code: 0x18 0x02
    if !message.is_empty() {
        inner += 1 + varint_len(message.len() as u64) + message.len();
    }
    buf.push(0x7a);
    varint(buf, inner as u64);
    if !message.is_empty() {
        bytes_field(buf, 0x12, message.as_bytes());
    }
    buf.extend_from_slice(&[0x18, 0x02]);
}
