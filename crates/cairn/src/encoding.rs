//! The canonical encoding of a change: the header, the signing hash, the
//! metadata record, and the id that hashes it.
//!
//! # Format version 2
//!
//! All integers are big-endian; every variable-length field is preceded by
//! its length.
//!
//! **Header** (what the author signs):
//!
//! | field          | bytes | notes                                        |
//! |----------------|-------|----------------------------------------------|
//! | version        | 1     | `0x02`                                       |
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
//! **Signing hash**: `blake3::derive_key(`[`SIGNING_CONTEXT`]`, header)`,
//! 32 bytes. The author's Ed25519 signature is over these 32 bytes, so it
//! authenticates every header field and, through the payload hash, the
//! payload.
//!
//! **Signature section**: one flag byte, `0` (unsigned) or `1` (signed),
//! then the 64 signature bytes if signed.
//!
//! **Metadata record** = header ‖ signature section ([`encode_meta`]).
//!
//! **Id** = `blake3(record)`: the id covers everything a store keeps about a
//! change, the signature included. A copy of a change with its signature
//! removed, replaced or garbled is a *different* change with a different
//! id, so deduplication by id can never let one copy hide another. Ed25519
//! signing is deterministic, so an honest author always produces the same
//! id for the same header.
//!
//! [`decode_meta`] reads a record back and recomputes the id from its bytes,
//! so a stored or transmitted record cannot carry an id that does not match.
//! A version-1 record (whose id did not cover the signature) is refused with
//! [`Error::UnsupportedVersion`].

use crate::error::{Error, Result};
use crate::ids::{AuthorId, ChangeId, Digest, DocId, KeyId};
use crate::record::{ChangeKind, ChangeMeta};

/// The format version this library writes and reads.
pub const HEADER_VERSION: u8 = 2;

/// The blake3 key-derivation context of the signing hash.
pub const SIGNING_CONTEXT: &str = "cairn 2026 change v2 signing hash";

/// Most dependencies one change may list.
pub const MAX_DEPS: usize = 4096;

/// Write the canonical header of `meta` (everything but `id` and `signature`):
/// the bytes the author signs, through [`signing_hash`].
pub fn encode_header(meta: &ChangeMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(meta));
    write_header(meta, &mut out);
    out
}

/// Bytes [`write_header`] writes for `meta`.
fn header_len(meta: &ChangeMeta) -> usize {
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
        + 8
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

/// The 32 bytes the author signs: the blake3 key derivation of the header
/// under [`SIGNING_CONTEXT`].
pub fn signing_hash(meta: &ChangeMeta) -> [u8; 32] {
    blake3::derive_key(SIGNING_CONTEXT, &encode_header(meta))
}

/// The id `meta` should have: blake3 of its metadata record (header and
/// signature section).
pub fn compute_id(meta: &ChangeMeta) -> ChangeId {
    ChangeId::from_bytes(*blake3::hash(&encode_meta(meta)).as_bytes())
}

fn write_signature(meta: &ChangeMeta, out: &mut Vec<u8>) {
    match &meta.signature {
        None => out.push(0),
        Some(sig) => {
            out.push(1);
            out.extend_from_slice(&sig.to_bytes());
        }
    }
}

/// Encode metadata as a self-checking record: header, then signature
/// section. Its blake3 hash is the change id.
pub fn encode_meta(meta: &ChangeMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_meta_len(meta));
    encode_meta_into(meta, &mut out);
    debug_assert_eq!(
        out.len(),
        encoded_meta_len(meta),
        "encoded_meta_len is exact"
    );
    out
}

/// [`encode_meta`], appended to `out` (no buffer of its own).
pub fn encode_meta_into(meta: &ChangeMeta, out: &mut Vec<u8>) {
    write_header(meta, out);
    write_signature(meta, out);
}

/// The length of [`encode_meta`]`(meta)`, computed without encoding it (to
/// size a frame or a buffer).
pub fn encoded_meta_len(meta: &ChangeMeta) -> usize {
    header_len(meta) + 1 + if meta.signature.is_some() { 64 } else { 0 }
}

/// Decode a record written by [`encode_meta`]. The id is recomputed from the
/// record's bytes. A record of another format version is
/// [`Error::UnsupportedVersion`]; any other malformed input is
/// [`Error::Corrupt`]. It never panics.
pub fn decode_meta(bytes: &[u8]) -> Result<ChangeMeta> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let meta = read_header(&mut r)?;
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
    let id = ChangeId::from_bytes(*blake3::hash(bytes).as_bytes());
    Ok(ChangeMeta {
        id,
        signature,
        ..meta
    })
}

fn read_header(r: &mut Reader<'_>) -> Result<ChangeMeta> {
    let version = r.u8()?;
    if version != HEADER_VERSION {
        return Err(Error::UnsupportedVersion {
            what: "change record",
            found: u32::from(version),
            supported: u32::from(HEADER_VERSION),
            hint: if version == 1 {
                "format v1 ids do not cover the signature and cannot be converted; \
                 re-create this data from a peer or source that runs format v2"
            } else {
                "it was written by a newer version of Cairn; upgrade to read it"
            }
            .to_owned(),
        });
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

    fn fixed_meta() -> ChangeMeta {
        ChangeMeta {
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
        }
    }

    #[test]
    fn header_layout_is_stable() {
        // A fixed change must keep its id across releases: this is the wire
        // and disk contract. If this test fails, bump HEADER_VERSION instead.
        let meta = fixed_meta();
        let h = encode_header(&meta);
        assert_eq!(&h[..4], &[2, 2, 0, 3]);
        assert_eq!(&h[4..7], b"doc");
        assert_eq!(&h[7..11], &[0, 0, 0, 1]);
        assert_eq!(h.len(), 1 + 1 + 2 + 3 + 4 + 32 + 8 + 32 + 1 + 7 + 32 + 8);
        // Unsigned: the record is the header plus a zero flag; the id is
        // blake3 of the record.
        let rec = encode_meta(&meta);
        assert_eq!(rec.len(), h.len() + 1);
        assert_eq!(rec.last(), Some(&0));
        assert_eq!(
            compute_id(&meta).to_string(),
            blake3::hash(&rec).to_hex().to_string()
        );
        assert_eq!(
            compute_id(&meta).to_string(),
            PINNED_UNSIGNED_ID,
            "the unsigned example's id changed: that is a format change"
        );
        // Signed by the key of seed [3; 32]: flag 1, then the signature
        // over the signing hash; Ed25519 is deterministic, so the id is
        // fixed too.
        let kp = Keypair::from_seed([3; 32]);
        let mut signed = ChangeMeta {
            author: kp.author(),
            ..fixed_meta()
        };
        let sh = signing_hash(&signed);
        assert_eq!(
            sh,
            blake3::derive_key(SIGNING_CONTEXT, &encode_header(&signed))
        );
        signed.signature = Some(kp.sign(&sh));
        let rec = encode_meta(&signed);
        assert_eq!(rec.len(), h.len() + 65);
        assert_eq!(rec[h.len()], 1);
        assert_eq!(
            compute_id(&signed).to_string(),
            PINNED_SIGNED_ID,
            "the signed example's id changed: that is a format change"
        );
    }

    const PINNED_UNSIGNED_ID: &str =
        "c6a411852a342869743d4c6198f718cba525ae038c62f9a91902f1dd8a54f46b";
    const PINNED_SIGNED_ID: &str =
        "2ead32e35edcb4ca64124a75f228d93132b52fad21e1b84f4734e3dd68bdf023";

    #[test]
    fn version_1_records_are_refused_with_a_typed_error() {
        let mut rec = encode_meta(&fixed_meta());
        rec[0] = 1;
        match decode_meta(&rec) {
            Err(Error::UnsupportedVersion {
                found: 1,
                supported: 2,
                ..
            }) => {}
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
    }

    #[test]
    fn unsupported_versions_say_what_to_do() {
        // v1 cannot be converted; anything else is from a newer Cairn.
        let hint = |v: u8| {
            let mut rec = encode_meta(&fixed_meta());
            rec[0] = v;
            match decode_meta(&rec) {
                Err(Error::UnsupportedVersion { found, hint, .. }) => {
                    assert_eq!(found, u32::from(v));
                    hint
                }
                other => panic!("expected UnsupportedVersion, got {other:?}"),
            }
        };
        assert!(hint(1).contains("cannot be converted"), "{}", hint(1));
        for v in [0u8, 3, 255] {
            assert!(hint(v).contains("newer version"), "{v}: {}", hint(v));
        }
    }

    #[test]
    fn the_dep_count_limit_is_exact() {
        // MAX_DEPS deps decode; one more is refused by the count, before
        // any dep is read.
        let mut meta = fixed_meta();
        meta.deps = (0..MAX_DEPS)
            .map(|i| {
                let mut b = [0u8; 32];
                b[..8].copy_from_slice(&(i as u64).to_le_bytes());
                ChangeId::from_bytes(b)
            })
            .collect();
        meta.id = compute_id(&meta);
        let rec = encode_meta(&meta);
        assert_eq!(decode_meta(&rec).unwrap().deps.len(), MAX_DEPS);
        let count_at = 1 + 1 + 2 + 3; // version, kind, doc length, "doc"
        let mut over = rec[..count_at].to_vec();
        over.extend_from_slice(&(MAX_DEPS as u32 + 1).to_be_bytes());
        let err = decode_meta(&over).unwrap_err().to_string();
        assert!(err.contains("more than"), "{err}");
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

    #[test]
    fn encoded_meta_len_and_encode_meta_into_match_encode_meta() {
        let kp = Keypair::from_seed([7; 32]);
        let mut many = fixed_meta();
        many.deps = vec![ChangeId::from_bytes([4; 32]), ChangeId::from_bytes([5; 32])];
        let signed = ChangeBuilder::new(ChangeKind::Create, DocId::new("a-longer-doc").unwrap())
            .payload(b"x".to_vec())
            .sign(&kp)
            .unwrap()
            .meta;
        for meta in [fixed_meta(), many, signed] {
            let rec = encode_meta(&meta);
            assert_eq!(encoded_meta_len(&meta), rec.len());
            let mut out = vec![9u8];
            encode_meta_into(&meta, &mut out);
            assert_eq!(out[0], 9);
            assert_eq!(&out[1..], &rec[..]);
        }
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
