//! Symmetric keys and payload encryption (XChaCha20-Poly1305).
//!
//! # Envelope, version 1
//!
//! | field | bytes |
//! |---|---|
//! | version | 1 (`0x01`) |
//! | key version | 4, big-endian |
//! | nonce | 24, random per payload |
//! | ciphertext and tag | n + 16 |
//!
//! The associated data binds the ciphertext to its place:
//! `"cairn-tenant/v1" ‖ u16 len ‖ tenant ‖ u16 len ‖ doc id ‖ u8 len ‖ key id ‖ u32 key version`,
//! so a payload moved to another document, tenant or key fails to decrypt.

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TenantError};
use cairn::{ChangeId, DocId, KeyId};

const ENVELOPE_VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 24;

/// A 256-bit symmetric key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymmetricKey([u8; 32]);

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SymmetricKey(…)")
    }
}

impl SymmetricKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self> {
        Ok(SymmetricKey(random()?))
    }

    /// Wrap raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SymmetricKey(bytes)
    }
}

/// Named keys, each with versions; the newest version encrypts, every
/// version decrypts. `default` is the tenant key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    keys: BTreeMap<KeyId, Vec<SymmetricKey>>,
}

impl KeyRing {
    /// A ring holding a fresh tenant key (`default`, version 1).
    pub fn new() -> Result<Self> {
        let mut ring = KeyRing::default();
        ring.rotate(&KeyId::default())?;
        Ok(ring)
    }

    /// Add a new version of `key_id` (creating the key if new); returns the
    /// new version number. Older versions keep decrypting.
    pub fn rotate(&mut self, key_id: &KeyId) -> Result<u32> {
        let key = SymmetricKey::generate()?;
        let versions = self.keys.entry(key_id.clone()).or_default();
        versions.push(key);
        Ok(versions.len() as u32)
    }

    /// Add a key version received from elsewhere (for example an invite).
    pub fn insert(&mut self, key_id: KeyId, key: SymmetricKey) -> u32 {
        let versions = self.keys.entry(key_id).or_default();
        versions.push(key);
        versions.len() as u32
    }

    /// The newest version of `key_id`.
    pub fn current(&self, key_id: &KeyId) -> Option<(u32, &SymmetricKey)> {
        let v = self.keys.get(key_id)?;
        v.last().map(|k| (v.len() as u32, k))
    }

    /// A specific version (1-based).
    pub fn get(&self, key_id: &KeyId, version: u32) -> Option<&SymmetricKey> {
        let idx = usize::try_from(version).ok()?.checked_sub(1)?;
        self.keys.get(key_id)?.get(idx)
    }

    /// Whether the ring has any version of `key_id`.
    pub fn contains(&self, key_id: &KeyId) -> bool {
        self.keys.contains_key(key_id)
    }

    /// Encrypt `plaintext` for `doc` with the newest version of `key_id`.
    pub fn seal(
        &self,
        tenant: &str,
        doc: &DocId,
        key_id: &KeyId,
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let (version, key) = self
            .current(key_id)
            .ok_or_else(|| TenantError::UnknownKey {
                key_id: key_id.clone(),
                version: 0,
            })?;
        let cipher = XChaCha20Poly1305::new_from_slice(&key.0)
            .map_err(|e| TenantError::Invalid(format!("key: {e}")))?;
        let nonce: [u8; 24] = random()?;
        let aad = aad(tenant, doc, key_id, version);
        let ct = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| TenantError::Invalid("encryption failed".into()))?;
        let mut out = Vec::with_capacity(HEADER + ct.len());
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypt a payload sealed by [`KeyRing::seal`]. `id` is only for errors.
    pub fn open(
        &self,
        tenant: &str,
        doc: &DocId,
        key_id: &KeyId,
        id: ChangeId,
        envelope: &[u8],
    ) -> Result<Vec<u8>> {
        let bad = |reason: &str| TenantError::Decrypt {
            id,
            reason: reason.to_owned(),
        };
        if envelope.len() < HEADER + 16 {
            return Err(bad("payload too short for an envelope"));
        }
        if envelope[0] != ENVELOPE_VERSION {
            return Err(bad("unknown envelope version"));
        }
        let mut vb = [0u8; 4];
        vb.copy_from_slice(&envelope[1..5]);
        let version = u32::from_be_bytes(vb);
        let key = self
            .get(key_id, version)
            .ok_or_else(|| TenantError::UnknownKey {
                key_id: key_id.clone(),
                version,
            })?;
        let cipher =
            XChaCha20Poly1305::new_from_slice(&key.0).map_err(|_| bad("bad key length"))?;
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&envelope[5..HEADER]);
        let aad = aad(tenant, doc, key_id, version);
        cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &envelope[HEADER..],
                    aad: &aad,
                },
            )
            .map_err(|_| bad("authentication failed (wrong key or tampered payload)"))
    }
}

/// Random bytes from the OS. A key or nonce from anything weaker would
/// silently destroy secrecy, so failure is an error, never a fallback.
fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out)
        .map_err(|e| TenantError::Invalid(format!("the OS random source failed: {e}")))?;
    Ok(out)
}

fn aad(tenant: &str, doc: &DocId, key_id: &KeyId, version: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(64);
    a.extend_from_slice(b"cairn-tenant/v1");
    for part in [tenant.as_bytes(), doc.as_str().as_bytes()] {
        a.extend_from_slice(&(part.len().min(u16::MAX as usize) as u16).to_be_bytes());
        a.extend_from_slice(part);
    }
    a.push(key_id.as_str().len().min(255) as u8);
    a.extend_from_slice(key_id.as_str().as_bytes());
    a.extend_from_slice(&version.to_be_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let ring = KeyRing::new().unwrap();
        let doc = DocId::new("d").unwrap();
        let k = KeyId::default();
        let env = ring.seal("t", &doc, &k, b"secret").unwrap();
        assert!(!env.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            ring.open("t", &doc, &k, ChangeId::MIN, &env).unwrap(),
            b"secret"
        );
        // Bound to tenant and document.
        assert!(ring.open("u", &doc, &k, ChangeId::MIN, &env).is_err());
        assert!(
            ring.open("t", &DocId::new("e").unwrap(), &k, ChangeId::MIN, &env)
                .is_err()
        );
        // Tampering is detected; garbage never panics.
        let mut t = env.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(ring.open("t", &doc, &k, ChangeId::MIN, &t).is_err());
        for n in 0..env.len() {
            assert!(ring.open("t", &doc, &k, ChangeId::MIN, &env[..n]).is_err());
        }
    }

    #[test]
    fn rotation_keeps_old_versions_readable() {
        let mut ring = KeyRing::new().unwrap();
        let doc = DocId::new("d").unwrap();
        let k = KeyId::default();
        let old = ring.seal("t", &doc, &k, b"v1").unwrap();
        assert_eq!(ring.rotate(&k).unwrap(), 2);
        let new = ring.seal("t", &doc, &k, b"v2").unwrap();
        assert_eq!(u32::from_be_bytes([new[1], new[2], new[3], new[4]]), 2);
        assert_eq!(
            ring.open("t", &doc, &k, ChangeId::MIN, &old).unwrap(),
            b"v1"
        );
        assert_eq!(
            ring.open("t", &doc, &k, ChangeId::MIN, &new).unwrap(),
            b"v2"
        );
        let stranger = KeyRing::new().unwrap();
        assert!(stranger.open("t", &doc, &k, ChangeId::MIN, &old).is_err());
    }
}
