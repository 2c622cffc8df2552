//! Big-endian primitives shared by every message.

use cairn::{ChangeId, Error, Result};

/// A bounds-checked reader over one frame body. Every failure is an
/// [`Error::Protocol`]; nothing here panics.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

pub(crate) fn proto(reason: impl Into<String>) -> Error {
    Error::Protocol {
        reason: reason.into(),
    }
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                proto(format!(
                    "truncated message: needed {n} bytes at offset {}, {} left",
                    self.pos,
                    self.remaining()
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(proto(format!("invalid boolean byte {b}"))),
        }
    }

    pub(crate) fn id(&mut self) -> Result<ChangeId> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(ChangeId::from_bytes(a))
    }

    /// A `u16`-length-prefixed UTF-8 string.
    pub(crate) fn str16(&mut self) -> Result<&'a str> {
        let n = usize::from(self.u16()?);
        std::str::from_utf8(self.take(n)?).map_err(|_| proto("string is not valid UTF-8"))
    }

    /// A `u32` list count, checked against the bytes left so that a lying
    /// count cannot make the receiver allocate more than the frame holds.
    pub(crate) fn count(&mut self, min_item: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item.max(1)) > self.remaining() {
            return Err(proto(format!(
                "list of {n} items cannot fit in the {} bytes left",
                self.remaining()
            )));
        }
        Ok(n)
    }

    pub(crate) fn finish(&self) -> Result<()> {
        if self.pos != self.buf.len() {
            return Err(proto(format!(
                "{} trailing bytes after the message",
                self.buf.len() - self.pos
            )));
        }
        Ok(())
    }
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Longest string the protocol writes in a `str16` field that is free text
/// (error messages and reasons); longer text is cut at a character boundary.
pub(crate) const MAX_TEXT: usize = 1024;

/// Write a `u16`-length-prefixed string, cut to `max` bytes at a character
/// boundary.
pub(crate) fn put_str16(out: &mut Vec<u8>, s: &str, max: usize) {
    let mut end = s.len().min(max).min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_u16(out, end as u16);
    out.extend_from_slice(&s.as_bytes()[..end]);
}
