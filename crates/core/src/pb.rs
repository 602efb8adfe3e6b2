//! The one protobuf wire writer of the workspace, and its varint reader: what the zero-copy views
//! rewrite with ([`crate::view`]), what the enrich processor patches spans with, and what the
//! simulators (`shopgen`, `loadgen`) and the KPI recording format write. Fields are written as
//! prost writes them, so prost decodes and re-encodes them to the same bytes.

/// Wire type of varint fields.
pub const VARINT: u8 = 0;
/// Wire type of fixed 64-bit fields.
pub const FIXED64: u8 = 1;
/// Wire type of length-delimited fields (strings, bytes, messages, packed repeats).
pub const LEN: u8 = 2;
/// Wire type of fixed 32-bit fields.
pub const FIXED32: u8 = 5;

/// Appends `v` as a base-128 varint.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes `v` takes as a varint.
#[inline]
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends the key of field `field` with wire type `wire_type`.
#[inline]
pub fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type & 7));
}

/// Appends a length-delimited field: key, length, `body`.
#[inline]
pub fn put_len_field(out: &mut Vec<u8>, field: u32, body: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// Bytes a length-delimited field `field` with a body of `body_len` bytes takes.
#[inline]
pub fn len_field_size(field: u32, body_len: usize) -> usize {
    varint_len((u64::from(field) << 3) | u64::from(LEN)) + varint_len(body_len as u64) + body_len
}

/// Writes `v` as a varint of exactly `width` bytes (padding with continuation bytes) at `buf[at..]`, so a
/// value can be patched in place. Returns false (and writes nothing) when `v` does not fit.
pub fn write_varint_fixed(buf: &mut [u8], at: usize, width: usize, v: u64) -> bool {
    let fits = width >= 10 || v >> (7 * width) == 0;
    if width == 0 || !fits || at.checked_add(width).is_none_or(|end| buf.len() < end) {
        return false;
    }
    let mut x = v;
    for i in 0..width {
        let mut b = (x & 0x7f) as u8;
        x >>= 7;
        if i + 1 < width {
            b |= 0x80;
        }
        buf[at + i] = b;
    }
    true
}

/// Reads a varint at `*pos`, not past `end`; `None` when truncated or longer than 10 bytes (or
/// overflowing a u64).
#[inline]
pub fn read_varint(buf: &[u8], pos: &mut usize, end: usize) -> Option<u64> {
    // Most keys and lengths fit in one byte.
    if *pos < end
        && let Some(&b) = buf.get(*pos)
        && b < 0x80
    {
        *pos += 1;
        return Some(u64::from(b));
    }
    let end = end.min(buf.len());
    let mut value: u64 = 0;
    let mut shift = 0u32;
    loop {
        if *pos >= end || shift > 63 {
            return None;
        }
        let b = buf[*pos];
        *pos += 1;
        // The tenth byte may only carry the top bit of a u64.
        if shift == 63 && b > 1 {
            return None;
        }
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(value);
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<u64> {
        let mut v = vec![
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ];
        v.extend((0..64).map(|i| 1u64 << i));
        v.extend((1..64).map(|i| (1u64 << i) - 1));
        v
    }

    /// prost's encoder is the reference: same bytes, same lengths, and our reader reads them back.
    #[test]
    fn varints_match_prost() {
        for v in samples() {
            let mut ours = Vec::new();
            put_varint(&mut ours, v);
            let mut theirs = Vec::new();
            prost::encoding::encode_varint(v, &mut theirs);
            assert_eq!(ours, theirs, "{v}");
            assert_eq!(varint_len(v), prost::encoding::encoded_len_varint(v), "{v}");
            let mut pos = 0;
            assert_eq!(read_varint(&ours, &mut pos, ours.len()), Some(v));
            assert_eq!(pos, ours.len());
            // Truncated: no value.
            let mut pos = 0;
            assert_eq!(read_varint(&ours, &mut pos, ours.len() - 1), None, "{v}");
        }
        // Eleven bytes, or a tenth byte above 1: not a u64.
        let mut pos = 0;
        assert_eq!(read_varint(&[0xff; 11], &mut pos, 11), None);
        let mut too_big = vec![0xff; 9];
        too_big.push(0x02);
        let mut pos = 0;
        assert_eq!(read_varint(&too_big, &mut pos, 10), None);
    }

    #[test]
    fn fields_match_prost() {
        use prost::Message;
        #[derive(Clone, PartialEq, prost::Message)]
        struct M {
            #[prost(string, tag = "1")]
            a: String,
            #[prost(bytes = "vec", tag = "20")]
            b: Vec<u8>,
            #[prost(uint64, tag = "3")]
            c: u64,
        }
        let m = M {
            a: "checkout".into(),
            b: vec![7; 300],
            c: 1_735_689_600_000_000_000,
        };
        let mut ours = Vec::new();
        put_len_field(&mut ours, 1, m.a.as_bytes());
        put_key(&mut ours, 3, VARINT);
        put_varint(&mut ours, m.c);
        put_len_field(&mut ours, 20, &m.b);
        assert_eq!(ours, m.encode_to_vec());
        assert_eq!(len_field_size(20, 300), 2 + 2 + 300);
        assert_eq!(len_field_size(1, 8), 1 + 1 + 8);
    }

    #[test]
    fn fixed_width_varints_read_back() {
        for v in samples() {
            for width in 1..=10 {
                let mut buf = vec![0u8; 12];
                let ok = write_varint_fixed(&mut buf, 1, width, v);
                assert_eq!(ok, varint_len(v) <= width, "{v} in {width}");
                if ok {
                    let mut pos = 1;
                    assert_eq!(read_varint(&buf, &mut pos, buf.len()), Some(v));
                    assert_eq!(pos, 1 + width);
                }
            }
        }
        assert!(!write_varint_fixed(&mut [0u8; 4], 2, 3, 1), "past the end");
        assert!(!write_varint_fixed(&mut [0u8; 4], 0, 0, 0), "no width");
    }
}
