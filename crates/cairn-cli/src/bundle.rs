//! The bundle file of `cairn export` / `cairn import` (docs/cli.md):
//! changes of one store, checked as a whole by a blake3 trailer and one by
//! one by their ids; optionally sealed to one peer.
//!
//! Sealing: an ephemeral X25519 key agreement with the recipient's Ed25519
//! peer id taken to its X25519 form (the standard birational map,
//! `VerifyingKey::to_montgomery`, and on the recipient's side
//! `SigningKey::to_scalar_bytes`), a key derived with blake3, and the body
//! encrypted with ChaCha20-Poly1305 in 64 KiB chunks (the STREAM
//! construction: a counter and a last-chunk flag in each nonce, so chunks
//! cannot be reordered, dropped or cut off). Like a sealed box it hides the
//! contents from everyone but the recipient; it does not prove who made it
//! (each change's own signature does that).

use cairn::{AuthorId, Change, Keypair, StoreId};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use curve25519_dalek::montgomery::MontgomeryPoint;

use crate::error::{Result, fail};

/// The first bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"CAIRNBDL";
/// The format version this build writes and reads.
pub const VERSION: u8 = 1;
const FLAG_SEALED: u8 = 1;
const CHUNK: usize = 64 * 1024;
const KDF_CONTEXT: &str = "cairn bundle v1 x25519 chacha20poly1305 key";

/// What a bundle holds.
pub struct Bundle {
    /// The store the changes come from.
    pub store_id: StoreId,
    /// The changes, in the order exported (arrival order).
    pub changes: Vec<Change>,
}

/// Encode `bundle`, sealed to `to` if given.
pub fn encode(bundle: &Bundle, to: Option<&AuthorId>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let sid = bundle.store_id.as_str().as_bytes();
    body.extend_from_slice(&(sid.len() as u16).to_be_bytes());
    body.extend_from_slice(sid);
    body.extend_from_slice(&(bundle.changes.len() as u64).to_be_bytes());
    for c in &bundle.changes {
        let meta = cairn::encoding::encode_meta(&c.meta);
        body.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        body.extend_from_slice(&meta);
        body.extend_from_slice(&(c.payload.len() as u64).to_be_bytes());
        body.extend_from_slice(&c.payload);
    }
    let hash = blake3::hash(&body);
    body.extend_from_slice(hash.as_bytes());
    let mut out = MAGIC.to_vec();
    out.push(VERSION);
    match to {
        None => {
            out.push(0);
            out.extend_from_slice(&body);
        }
        Some(peer) => {
            out.push(FLAG_SEALED);
            seal(&mut out, peer, &body)?;
        }
    }
    Ok(out)
}

/// The recipient a bundle is sealed to, if it is sealed.
pub fn sealed_to(bytes: &[u8]) -> Result<Option<AuthorId>> {
    let (flags, rest) = header(bytes)?;
    if flags & FLAG_SEALED == 0 {
        return Ok(None);
    }
    let Some(to) = rest.get(..32) else {
        return fail("the bundle is cut short (no recipient)");
    };
    Ok(Some(
        AuthorId::from_slice(to).map_err(|e| crate::error::CliError::new(e.to_string()))?,
    ))
}

fn header(bytes: &[u8]) -> Result<(u8, &[u8])> {
    if bytes.len() < 10 || &bytes[..8] != MAGIC {
        return fail("not a cairn bundle (made by `cairn export`)");
    }
    if bytes[8] != VERSION {
        return fail(format!(
            "bundle format version {}; this cairn reads version {VERSION}",
            bytes[8]
        ));
    }
    Ok((bytes[9], &bytes[10..]))
}

/// Decode and verify a bundle; `key` opens a sealed one.
pub fn decode(bytes: &[u8], key: Option<&Keypair>) -> Result<Bundle> {
    let (flags, rest) = header(bytes)?;
    let opened;
    let body = if flags & FLAG_SEALED != 0 {
        let Some(key) = key else {
            return fail("the bundle is sealed; opening it needs your identity");
        };
        opened = open(rest, key)?;
        &opened[..]
    } else {
        rest
    };
    let Some(split) = body.len().checked_sub(32) else {
        return fail("the bundle is cut short");
    };
    let (content, trailer) = body.split_at(split);
    if blake3::hash(content).as_bytes() != trailer {
        return fail("the bundle is damaged or cut short (its checksum does not match)");
    }
    let mut r = Reader(content);
    let sid_len = usize::from(u16::from_be_bytes(r.take_array()?));
    let sid = std::str::from_utf8(r.take(sid_len)?)
        .map_err(|_| crate::error::CliError::new("the bundle's store id is not UTF-8"))?;
    let store_id = StoreId::new(sid)
        .map_err(|e| crate::error::CliError::new(format!("the bundle's store id: {e}")))?;
    let count = u64::from_be_bytes(r.take_array()?);
    let mut changes = Vec::new();
    for i in 0..count {
        let meta_len = u32::from_be_bytes(r.take_array()?) as usize;
        let meta = cairn::encoding::decode_meta(r.take(meta_len)?).map_err(|e| {
            crate::error::CliError::new(format!(
                "change {i} of the bundle: {}",
                crate::error::cause(&e)
            ))
        })?;
        let len = usize::try_from(u64::from_be_bytes(r.take_array()?))
            .map_err(|_| crate::error::CliError::new("a payload length does not fit in memory"))?;
        let payload = r.take(len)?.to_vec();
        changes.push(Change {
            meta,
            payload: payload.into(),
        });
    }
    if !r.0.is_empty() {
        return fail("the bundle has bytes after its last change");
    }
    Ok(Bundle { store_id, changes })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.0.len() {
            return fail("the bundle is malformed (a length points past its end)");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

fn nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::from(n)
}

fn cipher(
    shared: &MontgomeryPoint,
    eph: &MontgomeryPoint,
    to: &MontgomeryPoint,
) -> Result<ChaCha20Poly1305> {
    if shared.as_bytes() == &[0u8; 32] {
        return fail("the recipient key is not usable for encryption");
    }
    let mut material = Vec::with_capacity(96);
    material.extend_from_slice(shared.as_bytes());
    material.extend_from_slice(eph.as_bytes());
    material.extend_from_slice(to.as_bytes());
    let key = blake3::derive_key(KDF_CONTEXT, &material);
    ChaCha20Poly1305::new_from_slice(&key)
        .map_err(|_| crate::error::CliError::new("cannot set up the cipher"))
}

fn seal(out: &mut Vec<u8>, to: &AuthorId, body: &[u8]) -> Result<()> {
    let Some(vk) = to.verifying_key() else {
        return fail(format!("--to {to}: not a valid Ed25519 peer id"));
    };
    let to_mont = vk.to_montgomery();
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| {
        crate::error::CliError::new(format!("no randomness for the ephemeral key: {e}"))
    })?;
    let eph = MontgomeryPoint::mul_base_clamped(secret);
    let shared = to_mont.mul_clamped(secret);
    let c = cipher(&shared, &eph, &to_mont)?;
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(eph.as_bytes());
    let chunks: Vec<&[u8]> = if body.is_empty() {
        vec![&[][..]]
    } else {
        body.chunks(CHUNK).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let ct = c
            .encrypt(&nonce(i as u64, last), *chunk)
            .map_err(|_| crate::error::CliError::new("encryption failed"))?;
        out.push(u8::from(last));
        out.extend_from_slice(&(ct.len() as u32).to_be_bytes());
        out.extend_from_slice(&ct);
    }
    Ok(())
}

fn open(rest: &[u8], key: &Keypair) -> Result<Vec<u8>> {
    let mut r = Reader(rest);
    let to = AuthorId::from_slice(r.take(32)?)
        .map_err(|e| crate::error::CliError::new(e.to_string()))?;
    if to != key.author() {
        return fail(format!(
            "the bundle is sealed to peer {to}, not to you ({}); open it with that identity (--key)",
            key.author()
        ));
    }
    let eph = MontgomeryPoint(r.take_array()?);
    let me = key.signing_key();
    let to_mont = me.verifying_key().to_montgomery();
    let shared = eph.mul_clamped(me.to_scalar_bytes());
    let c = cipher(&shared, &eph, &to_mont)?;
    let mut body = Vec::new();
    let mut counter = 0u64;
    loop {
        let last = match r.take(1)?[0] {
            0 => false,
            1 => true,
            _ => return fail("the sealed bundle is malformed"),
        };
        let len = u32::from_be_bytes(r.take_array()?) as usize;
        let pt = c
            .decrypt(&nonce(counter, last), r.take(len)?)
            .map_err(|_| {
                crate::error::CliError::new(
                    "the sealed bundle does not decrypt: damaged, or not sealed to this key",
                )
            })?;
        body.extend_from_slice(&pt);
        counter += 1;
        if last {
            break;
        }
    }
    if !r.0.is_empty() {
        return fail("the sealed bundle has bytes after its last chunk");
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn::{ChangeBuilder, ChangeKind, DocId};

    fn sample(n: usize, len: usize) -> Bundle {
        let k = Keypair::generate();
        Bundle {
            store_id: StoreId::new("a/b").unwrap(),
            changes: (0..n)
                .map(|i| {
                    ChangeBuilder::new(ChangeKind::Create, DocId::new(format!("d{i}")).unwrap())
                        .payload(vec![i as u8; len])
                        .sign(&k)
                        .unwrap()
                })
                .collect(),
        }
    }

    #[test]
    fn round_trips_plain_and_sealed_and_detects_damage() {
        let b = sample(5, 100_000);
        let plain = encode(&b, None).unwrap();
        let back = decode(&plain, None).unwrap();
        assert_eq!(back.changes, b.changes);
        assert_eq!(back.store_id, b.store_id);
        let bob = Keypair::generate();
        let sealed = encode(&b, Some(&bob.author())).unwrap();
        assert_eq!(sealed_to(&sealed).unwrap(), Some(bob.author()));
        assert_eq!(decode(&sealed, Some(&bob)).unwrap().changes, b.changes);
        assert!(decode(&sealed, Some(&Keypair::generate())).is_err());
        assert!(decode(&sealed, None).is_err());
        for cut in [plain.len() - 1, plain.len() / 2, 12] {
            assert!(decode(&plain[..cut], None).is_err(), "{cut}");
        }
        for cut in [sealed.len() - 1, sealed.len() - 70_000, 80] {
            assert!(decode(&sealed[..cut], Some(&bob)).is_err(), "{cut}");
        }
        let mut flipped = sealed.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 1;
        assert!(decode(&flipped, Some(&bob)).is_err());
        let empty = Bundle {
            store_id: StoreId::new("a/b").unwrap(),
            changes: vec![],
        };
        let e = encode(&empty, Some(&bob.author())).unwrap();
        assert!(decode(&e, Some(&bob)).unwrap().changes.is_empty());
    }
}
