//! Symmetric keys and payload encryption (XChaCha20-Poly1305).
//!
//! # Envelope, version 2
//!
//! | field | bytes |
//! |---|---|
//! | version | 1 (`0x02`) |
//! | key version | 8: the key's fingerprint, see [`KeyVersion`] |
//! | nonce | 24, random per payload |
//! | ciphertext and tag | n + 16 |
//!
//! The associated data binds the ciphertext to its place:
//! `"cairn-tenant/v2" ‖ u16 len ‖ tenant ‖ u16 len ‖ store id ‖ u16 len ‖ doc id ‖ u8 len ‖ key id ‖ key version[8]`,
//! so a payload moved to another tenant, database (store), document or key
//! fails to decrypt.
//!
//! A key version is not a position in a list (which two devices that
//! rotate or receive keys independently would number differently) but the
//! key's own fingerprint, so every device names a key the same way.

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TenantError};
use cairn::{ChangeId, DocId, KeyId, StoreId};

const ENVELOPE_VERSION: u8 = 2;
const HEADER: usize = 1 + 8 + 24;
const FINGERPRINT_CONTEXT: &str = "cairn-tenant 2026 key version v1";

/// Which version of a key sealed a payload: the first 8 bytes of a blake3
/// key derivation of the key itself. Stable across devices, whatever order
/// they rotated or received keys in. Shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyVersion([u8; 8]);

impl KeyVersion {
    /// The version's 8 bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyVersion({self})")
    }
}

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

    /// This key's version (fingerprint).
    pub fn version(&self) -> KeyVersion {
        let d = blake3::derive_key(FINGERPRINT_CONTEXT, &self.0);
        let mut v = [0u8; 8];
        v.copy_from_slice(&d[..8]);
        KeyVersion(v)
    }
}

/// Named keys, each with versions; the newest version this ring got
/// encrypts, every version decrypts. `default` is the tenant key.
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
    /// new version. Older versions keep decrypting.
    pub fn rotate(&mut self, key_id: &KeyId) -> Result<KeyVersion> {
        let key = SymmetricKey::generate()?;
        Ok(self.insert(key_id.clone(), key))
    }

    /// Add a key version received from elsewhere (for example an invite);
    /// it becomes the version that encrypts. Adding a version the ring
    /// holds already changes nothing but that.
    pub fn insert(&mut self, key_id: KeyId, key: SymmetricKey) -> KeyVersion {
        let version = key.version();
        let versions = self.keys.entry(key_id).or_default();
        versions.retain(|k| k.version() != version);
        versions.push(key);
        version
    }

    /// The version that encrypts new payloads for `key_id`.
    pub fn current(&self, key_id: &KeyId) -> Option<(KeyVersion, &SymmetricKey)> {
        let v = self.keys.get(key_id)?;
        v.last().map(|k| (k.version(), k))
    }

    /// A specific version.
    pub fn get(&self, key_id: &KeyId, version: KeyVersion) -> Option<&SymmetricKey> {
        self.keys
            .get(key_id)?
            .iter()
            .find(|k| k.version() == version)
    }

    /// The versions held of `key_id`, oldest first.
    pub fn versions(&self, key_id: &KeyId) -> Vec<KeyVersion> {
        self.keys
            .get(key_id)
            .map(|v| v.iter().map(SymmetricKey::version).collect())
            .unwrap_or_default()
    }

    /// Whether the ring has any version of `key_id`.
    pub fn contains(&self, key_id: &KeyId) -> bool {
        self.keys.contains_key(key_id)
    }

    /// Encrypt `plaintext` for `doc` in the store `store` of `tenant` with
    /// the current version of `key_id`.
    pub fn seal(
        &self,
        tenant: &str,
        store: &StoreId,
        doc: &DocId,
        key_id: &KeyId,
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let (version, key) = self
            .current(key_id)
            .ok_or_else(|| TenantError::UnknownKey {
                key_id: key_id.clone(),
                version: None,
            })?;
        let cipher = XChaCha20Poly1305::new_from_slice(&key.0)
            .map_err(|e| TenantError::Invalid(format!("key: {e}")))?;
        let nonce: [u8; 24] = random()?;
        let aad = aad(tenant, store, doc, key_id, version);
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
        out.extend_from_slice(&version.0);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypt a payload sealed by [`KeyRing::seal`] for the same tenant,
    /// store, document and key. `id` is only for errors.
    pub fn open(
        &self,
        tenant: &str,
        store: &StoreId,
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
            return Err(bad(&format!(
                "envelope version {}; this version reads version {ENVELOPE_VERSION}",
                envelope[0]
            )));
        }
        let mut vb = [0u8; 8];
        vb.copy_from_slice(&envelope[1..9]);
        let version = KeyVersion(vb);
        let key = self
            .get(key_id, version)
            .ok_or_else(|| TenantError::UnknownKey {
                key_id: key_id.clone(),
                version: Some(version),
            })?;
        let cipher =
            XChaCha20Poly1305::new_from_slice(&key.0).map_err(|_| bad("bad key length"))?;
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&envelope[9..HEADER]);
        let aad = aad(tenant, store, doc, key_id, version);
        cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &envelope[HEADER..],
                    aad: &aad,
                },
            )
            .map_err(|_| {
                bad("authentication failed (wrong key, another tenant, database or document, or a tampered payload)")
            })
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

fn aad(tenant: &str, store: &StoreId, doc: &DocId, key_id: &KeyId, version: KeyVersion) -> Vec<u8> {
    let mut a = Vec::with_capacity(96);
    a.extend_from_slice(b"cairn-tenant/v2");
    for part in [
        tenant.as_bytes(),
        store.as_str().as_bytes(),
        doc.as_str().as_bytes(),
    ] {
        a.extend_from_slice(&(part.len().min(u16::MAX as usize) as u16).to_be_bytes());
        a.extend_from_slice(part);
    }
    a.push(key_id.as_str().len().min(255) as u8);
    a.extend_from_slice(key_id.as_str().as_bytes());
    a.extend_from_slice(&version.0);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> StoreId {
        StoreId::new(s).unwrap()
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let ring = KeyRing::new().unwrap();
        let doc = DocId::new("d").unwrap();
        let (t, db) = ("t", sid("t/db/a"));
        let k = KeyId::default();
        let env = ring.seal(t, &db, &doc, &k, b"secret").unwrap();
        assert!(!env.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            ring.open(t, &db, &doc, &k, ChangeId::MIN, &env).unwrap(),
            b"secret"
        );
        // Bound to tenant, database and document.
        assert!(ring.open("u", &db, &doc, &k, ChangeId::MIN, &env).is_err());
        assert!(
            ring.open(t, &sid("t/db/b"), &doc, &k, ChangeId::MIN, &env)
                .is_err()
        );
        assert!(
            ring.open(t, &db, &DocId::new("e").unwrap(), &k, ChangeId::MIN, &env)
                .is_err()
        );
        // Tampering is detected; garbage never panics.
        let mut tampered = env.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(
            ring.open(t, &db, &doc, &k, ChangeId::MIN, &tampered)
                .is_err()
        );
        for n in 0..env.len() {
            assert!(
                ring.open(t, &db, &doc, &k, ChangeId::MIN, &env[..n])
                    .is_err()
            );
        }
    }

    #[test]
    fn rotation_keeps_old_versions_readable() {
        let mut ring = KeyRing::new().unwrap();
        let doc = DocId::new("d").unwrap();
        let db = sid("t/db/a");
        let k = KeyId::default();
        let old = ring.seal("t", &db, &doc, &k, b"v1").unwrap();
        let v2 = ring.rotate(&k).unwrap();
        let new = ring.seal("t", &db, &doc, &k, b"v2").unwrap();
        assert_eq!(&new[1..9], &v2.to_bytes());
        assert_eq!(
            ring.open("t", &db, &doc, &k, ChangeId::MIN, &old).unwrap(),
            b"v1"
        );
        assert_eq!(
            ring.open("t", &db, &doc, &k, ChangeId::MIN, &new).unwrap(),
            b"v2"
        );
        let stranger = KeyRing::new().unwrap();
        assert!(matches!(
            stranger.open("t", &db, &doc, &k, ChangeId::MIN, &old),
            Err(TenantError::UnknownKey { .. })
        ));
    }

    #[test]
    fn key_versions_are_the_same_on_every_device_whatever_the_order() {
        let k = KeyId::default();
        let (a, b) = (
            SymmetricKey::generate().unwrap(),
            SymmetricKey::generate().unwrap(),
        );
        let mut one = KeyRing::default();
        one.insert(k.clone(), a.clone());
        one.insert(k.clone(), b.clone());
        let mut two = KeyRing::default();
        two.insert(k.clone(), b.clone());
        two.insert(k.clone(), a.clone());
        two.insert(k.clone(), a.clone()); // received twice: held once
        assert_eq!(two.versions(&k).len(), 2);
        // Device one seals with b (its newest), device two with a: each
        // opens the other's payloads, because a version names the key.
        let db = sid("t/db/a");
        let doc = DocId::new("d").unwrap();
        let from_one = one.seal("t", &db, &doc, &k, b"1").unwrap();
        let from_two = two.seal("t", &db, &doc, &k, b"2").unwrap();
        assert_eq!(&from_one[1..9], &b.version().to_bytes());
        assert_eq!(&from_two[1..9], &a.version().to_bytes());
        assert_eq!(
            two.open("t", &db, &doc, &k, ChangeId::MIN, &from_one)
                .unwrap(),
            b"1"
        );
        assert_eq!(
            one.open("t", &db, &doc, &k, ChangeId::MIN, &from_two)
                .unwrap(),
            b"2"
        );
    }
}
