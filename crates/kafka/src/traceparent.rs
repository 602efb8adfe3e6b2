//! W3C Trace Context `traceparent` headers: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.

/// A parsed `traceparent`: trace id, parent span id and trace flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decode_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = hex_val(*pair.first()?)?;
        let lo = hex_val(*pair.get(1)?)?;
        *out.get_mut(i)? = (hi << 4) | lo;
    }
    Some(out)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

impl TraceParent {
    /// Parses a header value. Invalid values (wrong length, version `ff`, all-zero ids) give `None`.
    /// Versions above `00` are accepted when they start with the version-00 fields, as the spec asks.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        let v = value.trim_ascii();
        if v.len() < 55 {
            return None;
        }
        let version = decode_hex::<1>(v.get(0..2)?)?[0];
        if version == 0xff || (version == 0 && v.len() != 55) {
            return None;
        }
        if v.get(2) != Some(&b'-') || v.get(35) != Some(&b'-') || v.get(52) != Some(&b'-') {
            return None;
        }
        if version != 0 && v.len() > 55 && v.get(55) != Some(&b'-') {
            return None;
        }
        let trace_id = decode_hex::<16>(v.get(3..35)?)?;
        let span_id = decode_hex::<8>(v.get(36..52)?)?;
        let flags = decode_hex::<1>(v.get(53..55)?)?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A header for ids as OTLP carries them (16 and 8 bytes); `None` when either is missing or zero.
    pub fn from_ids(trace_id: &[u8], span_id: &[u8], flags: u8) -> Option<TraceParent> {
        let trace_id: [u8; 16] = trace_id.try_into().ok()?;
        let span_id: [u8; 8] = span_id.try_into().ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The header value.
    pub fn to_header(&self) -> String {
        format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.span_id), self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let h = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::parse(h).unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.span_id[7], 0xb7);
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.to_header().as_bytes(), h);
        assert_eq!(
            TraceParent::parse(b" 00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-00 ")
                .unwrap()
                .trace_id,
            tp.trace_id
        );
    }

    #[test]
    fn rejects_invalid_values() {
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // A future version may append fields.
        assert!(TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what").is_some());
        assert_eq!(TraceParent::from_ids(&[0; 16], &[1; 8], 1), None);
        assert_eq!(TraceParent::from_ids(&[1; 3], &[1; 8], 1), None);
    }
}
