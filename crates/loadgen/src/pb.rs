//! A minimal protobuf wire reader: just enough to find the byte offsets the generator patches (ids, times,
//! the send-time stamp) and to read the stamp back in the sink, without decoding messages.

/// One field's value, with the absolute offset of its payload in the walked buffer.
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    /// A varint and the offset of its first byte.
    Varint(u64, usize),
    /// A fixed64 field's offset.
    Fixed64(usize),
    /// A fixed32 field (skipped).
    Fixed32,
    /// A length-delimited payload and its offset.
    Bytes(&'a [u8], usize),
}

pub use bizpilot_core::pb::write_varint_fixed;

/// Reads a varint at `*pos` (the core reader, bounded by the buffer).
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    bizpilot_core::pb::read_varint(buf, pos, buf.len())
}

/// Iterates the fields of one message. `base` is the offset of `buf` in the outermost buffer, so that the
/// offsets in [`Val`] are absolute. Stops at the end or at the first malformed field.
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
    bad: bool,
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8], base: usize) -> Self {
        Fields {
            buf,
            pos: 0,
            base,
            bad: false,
        }
    }

    /// True when the walk reached the end without meeting a malformed field.
    pub fn complete(&self) -> bool {
        !self.bad && self.pos >= self.buf.len()
    }

    fn fail(&mut self) -> Option<(u32, Val<'a>)> {
        self.bad = true;
        self.pos = self.buf.len();
        None
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (u32, Val<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let Some(tag) = read_varint(self.buf, &mut self.pos) else {
            return self.fail();
        };
        let field = (tag >> 3) as u32;
        let at = self.pos;
        let v = match tag & 7 {
            0 => match read_varint(self.buf, &mut self.pos) {
                Some(v) => Val::Varint(v, self.base + at),
                None => return self.fail(),
            },
            1 if at + 8 <= self.buf.len() => {
                self.pos += 8;
                Val::Fixed64(self.base + at)
            }
            5 if at + 4 <= self.buf.len() => {
                self.pos += 4;
                Val::Fixed32
            }
            2 => {
                let Some(len) = read_varint(self.buf, &mut self.pos) else {
                    return self.fail();
                };
                let start = self.pos;
                let Some(end) = start.checked_add(len as usize).filter(|&e| e <= self.buf.len()) else {
                    return self.fail();
                };
                self.pos = end;
                Val::Bytes(&self.buf[start..end], self.base + start)
            }
            _ => return self.fail(),
        };
        Some((field, v))
    }
}

/// The sub-messages in field `field` of `buf` (at absolute offset `base`).
pub fn submessages(buf: &[u8], base: usize, field: u32) -> impl Iterator<Item = (&[u8], usize)> {
    Fields::new(buf, base).filter_map(move |(f, v)| match v {
        Val::Bytes(b, at) if f == field => Some((b, at)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_varint_reads_back() {
        let mut buf = vec![0u8; 9];
        assert!(write_varint_fixed(&mut buf, 0, 9, 1_735_689_600_000_000_000));
        let mut pos = 0;
        assert_eq!(read_varint(&buf, &mut pos), Some(1_735_689_600_000_000_000));
        assert_eq!(pos, 9);
        // Small values are padded with continuation bytes and still decode.
        assert!(write_varint_fixed(&mut buf, 0, 9, 5));
        let mut pos = 0;
        assert_eq!(read_varint(&buf, &mut pos), Some(5));
        assert_eq!(pos, 9);
        assert!(!write_varint_fixed(&mut buf, 0, 2, 1 << 20));
    }
}
