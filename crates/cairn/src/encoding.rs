//! The canonical header encoding that a [`ChangeId`] hashes, and a compact
//! record encoding for metadata.
//!
//! # Header, version 1
//!
//! All integers are big-endian; every variable-length field is preceded by
//! its length. The id of a change is `blake3(header)`.
//!
//! | field          | bytes | notes                                        |
//! |----------------|-------|----------------------------------------------|
//! | version        | 1     | `0x01`                                       |
//! | kind           | 1     | 1 create, 2 change, 3 snapshot, 4 delete     |
//! | doc id length  | 2     | 1..=1024                                     |
//! | doc id         | n     | UTF-8                                        |
//! | dep count      | 4     | 0..=[`MAX_DEPS`]                             |
//! | deps           | 32×n  | change ids, in the order the author gave     |
//! | created at     | 8     | milliseconds since the Unix epoch            |
//! | author         | 32    | Ed25519 public key                           |
//! | key id length  | 1     | 1..=255                                      |
//! | key id         | n     | UTF-8                                        |
//! | payload hash   | 32    | blake3 of the payload                        |
//! | payload length | 8     |                                              |
//!
//! The signature is not part of the header: it is an Ed25519 signature over
//! the 32 id bytes, so it authenticates every header field and, through the
//! payload hash, the payload.
//!
//! # Metadata record
//!
//! [`encode_meta`] writes the header followed by one flag byte (`0` no
//! signature, `1` signature) and, if flagged, the 64 signature bytes.
//! [`decode_meta`] reads it back and recomputes the id from the header, so a
//! stored or transmitted record cannot carry an id that does not match.

use crate::error::{Error, Result};
use crate::ids::{AuthorId, ChangeId, Digest, DocId, KeyId};
use crate::record::{ChangeKind, ChangeMeta};

/// The header version this library writes.
pub const HEADER_VERSION: u8 = 1;

/// Most dependencies one change may list.
pub const MAX_DEPS: usize = 4096;

/// Write the canonical header of `meta` (everything but `id` and `signature`).
pub fn encode_header(meta: &ChangeMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        1 + 1
            + 2
            + meta.doc_id.as_str().len()
            + 4
            + 32 * meta.deps.len()
            + 8
            + 32
            + 1
            + meta.key_id.as_str().len()
            + 32
            + 8,
    );
    write_header(meta, &mut out);
    out
}

fn write_header(meta: &ChangeMeta, out: &mut Vec<u8>) {
    out.push(HEADER_VERSION);
    out.push(meta.kind.code());
    let doc = meta.doc_id.as_str().as_bytes();
    // DocId and KeyId constructors bound these lengths; saturate defensively.
    out.extend_from_slice(&u16::try_from(doc.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(doc);
    out.extend_from_slice(
        &u32::try_from(meta.deps.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for d in &meta.deps {
        out.extend_from_slice(d.as_bytes());
    }
    out.extend_from_slice(&meta.created_at.to_be_bytes());
    out.extend_from_slice(meta.author.as_bytes());
    let key = meta.key_id.as_str().as_bytes();
    out.push(u8::try_from(key.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(key);
    out.extend_from_slice(meta.payload_hash.as_bytes());
    out.extend_from_slice(&meta.payload_len.to_be_bytes());
}

/// The id `meta` should have: blake3 of its canonical header.
pub fn compute_id(meta: &ChangeMeta) -> ChangeId {
    ChangeId::from_bytes(*blake3::hash(&encode_header(meta)).as_bytes())
}

/// Encode metadata as a self-checking record (header, signature flag, signature).
pub fn encode_meta(meta: &ChangeMeta) -> Vec<u8> {
    let mut out = encode_header(meta);
    match &meta.signature {
        None => out.push(0),
        Some(sig) => {
            out.push(1);
            out.extend_from_slice(&sig.to_bytes());
        }
    }
    out
}

/// Decode a record written by [`encode_meta`]. The id is recomputed from the
/// header. Any malformed input returns [`Error::Corrupt`]; it never panics.
pub fn decode_meta(bytes: &[u8]) -> Result<ChangeMeta> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let meta = read_header(&mut r)?;
    let header_len = r.pos;
    let signature = match r.u8()? {
        0 => None,
        1 => {
            let b = r.take(64)?;
            let mut arr = [0u8; 64];
            arr.copy_from_slice(b);
            Some(ed25519_dalek::Signature::from_bytes(&arr))
        }
        other => return Err(corrupt(format!("unknown signature flag {other}"))),
    };
    if r.pos != bytes.len() {
        return Err(corrupt(format!(
            "{} trailing bytes after the record",
            bytes.len() - r.pos
        )));
    }
    let id = ChangeId::from_bytes(*blake3::hash(&bytes[..header_len]).as_bytes());
    Ok(ChangeMeta {
        id,
        signature,
        ..meta
    })
}

fn read_header(r: &mut Reader<'_>) -> Result<ChangeMeta> {
    let version = r.u8()?;
    if version != HEADER_VERSION {
        return Err(corrupt(format!("unknown header version {version}")));
    }
    let kind =
        ChangeKind::from_code(r.u8()?).ok_or_else(|| corrupt("unknown change kind".to_owned()))?;
    let doc_len = usize::from(r.u16()?);
    let doc = std::str::from_utf8(r.take(doc_len)?)
        .map_err(|_| corrupt("document id is not UTF-8".to_owned()))?;
    let doc_id = DocId::new(doc).map_err(|e| corrupt(e.to_string()))?;
    let ndeps = r.u32()? as usize;
    if ndeps > MAX_DEPS {
        return Err(corrupt(format!("{ndeps} deps, more than {MAX_DEPS}")));
    }
    let mut deps = Vec::with_capacity(ndeps);
    for _ in 0..ndeps {
        deps.push(ChangeId::from_bytes(r.arr32()?));
    }
    let created_at = r.u64()?;
    let author = AuthorId::from_bytes(r.arr32()?);
    let key_len = usize::from(r.u8()?);
    let key = std::str::from_utf8(r.take(key_len)?)
        .map_err(|_| corrupt("key id is not UTF-8".to_owned()))?;
    let key_id = KeyId::new(key).map_err(|e| corrupt(e.to_string()))?;
    let payload_hash = Digest::from_bytes(r.arr32()?);
    let payload_len = r.u64()?;
    Ok(ChangeMeta {
        id: ChangeId::MIN,
        kind,
        doc_id,
        deps,
        created_at,
        author,
        key_id,
        payload_hash,
        payload_len,
        signature: None,
    })
}

fn corrupt(reason: String) -> Error {
    Error::Corrupt {
        store: "change record",
        reason,
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                corrupt(format!(
                    "truncated: needed {n} bytes at offset {}",
                    self.pos
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn arr32(&mut self) -> Result<[u8; 32]> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChangeBuilder, Keypair};
    use proptest::prelude::*;

    #[test]
    fn header_layout_is_stable() {
        // A fixed change must keep its id across releases: this is the wire
        // and disk contract. If this test fails, bump HEADER_VERSION instead.
        let meta = ChangeMeta {
            id: ChangeId::MIN,
            kind: ChangeKind::Change,
            doc_id: DocId::new("doc").unwrap(),
            deps: vec![ChangeId::from_bytes([1; 32])],
            created_at: 1_700_000_000_000,
            author: AuthorId::from_bytes([2; 32]),
            key_id: KeyId::default(),
            payload_hash: Digest::of(b"hello"),
            payload_len: 5,
            signature: None,
        };
        let h = encode_header(&meta);
        assert_eq!(&h[..4], &[1, 2, 0, 3]);
        assert_eq!(&h[4..7], b"doc");
        assert_eq!(&h[7..11], &[0, 0, 0, 1]);
        assert_eq!(h.len(), 1 + 1 + 2 + 3 + 4 + 32 + 8 + 32 + 1 + 7 + 32 + 8);
        assert_eq!(
            compute_id(&meta).to_string(),
            blake3::hash(&h).to_hex().to_string()
        );
    }

    #[test]
    fn meta_record_round_trips_with_and_without_signature() {
        let kp = Keypair::from_seed([9; 32]);
        let signed = ChangeBuilder::new(ChangeKind::Create, DocId::new("d").unwrap())
            .payload(b"x".to_vec())
            .created_at(5)
            .sign(&kp)
            .unwrap();
        let back = decode_meta(&encode_meta(&signed.meta)).unwrap();
        assert_eq!(back, signed.meta);
        let unsigned = ChangeBuilder::new(ChangeKind::Create, DocId::new("d").unwrap())
            .build()
            .unwrap();
        assert_eq!(
            decode_meta(&encode_meta(&unsigned.meta)).unwrap(),
            unsigned.meta
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_meta(&bytes);
        }

        #[test]
        fn truncation_is_an_error(cut in 0usize..200) {
            let c = ChangeBuilder::new(ChangeKind::Change, DocId::new("doc").unwrap())
                .deps([ChangeId::from_bytes([3; 32])])
                .payload(vec![1, 2, 3])
                .build()
                .unwrap();
            let rec = encode_meta(&c.meta);
            let cut = cut % rec.len();
            prop_assert!(decode_meta(&rec[..cut]).is_err());
        }
    }
}
