//! Signatures already checked, so that loading a document or listing a
//! database does not verify the same Ed25519 signature every time (it was
//! most of a load's time).

use std::collections::HashSet;
use std::sync::Mutex;

use cairn::ChangeMeta;

/// Most signatures remembered; when full, the memory starts over (a
/// database larger than this verifies as before, never worse).
const CAP: usize = 1 << 17;

/// The memory: a digest of (signing hash, signature, author) for each
/// signature found valid. The signing hash covers every field the
/// signature covers, so an entry is exactly "this signature by this key
/// over this header verified"; a different header, signature or key is a
/// different entry. Only valid results are kept.
#[derive(Debug, Default)]
pub(crate) struct Verified {
    seen: Mutex<HashSet<[u8; 32]>>,
}

impl Verified {
    /// [`ChangeMeta::signature_valid`], remembered.
    pub(crate) fn check(&self, m: &ChangeMeta) -> bool {
        let Some(sig) = &m.signature else {
            return false;
        };
        let hash = cairn::encoding::signing_hash(m);
        let mut h = blake3::Hasher::new();
        h.update(&hash);
        h.update(&sig.to_bytes());
        h.update(m.author.as_bytes());
        let key = *h.finalize().as_bytes();
        if self.lock().contains(&key) {
            return true;
        }
        let ok = m
            .author
            .verifying_key()
            .is_some_and(|k| k.verify_strict(&hash, sig).is_ok());
        if ok {
            let mut seen = self.lock();
            if seen.len() >= CAP {
                seen.clear();
            }
            seen.insert(key);
        }
        ok
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn::{ChangeBuilder, ChangeKind, DocId, Keypair};

    #[test]
    fn a_remembered_signature_does_not_vouch_for_a_changed_header_or_signature() {
        let v = Verified::default();
        let kp = Keypair::generate();
        let c = ChangeBuilder::new(ChangeKind::Create, DocId::new("d").unwrap())
            .payload(b"x".to_vec())
            .sign(&kp)
            .unwrap();
        assert!(v.check(&c.meta));
        assert!(v.check(&c.meta), "remembered");
        // Same signature, another header.
        let mut other = c.meta.clone();
        other.created_at += 1;
        assert!(!v.check(&other));
        // Same header, another author's key.
        let mut other = c.meta.clone();
        other.author = Keypair::generate().author();
        assert!(!v.check(&other));
        // Same header, a different (valid-looking) signature.
        let mut other = c.meta.clone();
        let mut bytes = other.signature.unwrap().to_bytes();
        bytes[0] ^= 1;
        other.signature = Some(ed25519_dalek::Signature::from_bytes(&bytes));
        assert!(!v.check(&other));
        // No signature.
        let mut other = c.meta.clone();
        other.signature = None;
        assert!(!v.check(&other));
        assert_eq!(v.lock().len(), 1, "only the valid one is kept");
    }
}
