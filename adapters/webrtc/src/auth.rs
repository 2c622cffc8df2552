//! Peer authentication bound to the DTLS session, and room passwords
//! proven inside it.
//!
//! The first data channel message each side sends is
//! `"CWA1" ‖ peer_id[32] ‖ roles:u8 ‖ signature[64]`, the signature being
//! Ed25519 by `peer_id` over
//! `"cairn-webrtc/1 auth\0" ‖ sha256(own DTLS cert) ‖ sha256(peer's DTLS cert)`.
//! DTLS has already checked each certificate against the fingerprint in the
//! SDP, so a signaling server that swapped the SDP (to sit in the middle)
//! gets a signature over fingerprints that are not those of the session it
//! relays on, and the peer refuses it. Putting the signer's own fingerprint
//! first stops a signature from being reflected back.
//!
//! # Room passwords
//!
//! A room password never leaves the peer, not even hashed. Each peer
//! derives a [`RoomKey`] from it: Argon2id (v0x13, m = 19 MiB, t = 2,
//! p = 1, 32 bytes) of the password, salted with
//! `"cairn-webrtc/1 room key\0" ‖ room code` (the six canonical
//! characters). A peer that holds a room key for the session sets roles
//! bit 2 ([`ROLE_ROOM`]) in its auth message and, once it has verified
//! the peer's auth message and its policy admits the peer, sends the room
//! proof, alone in the next data channel message (before its `HELLO`):
//! `"CWP1" ‖ blake3::keyed_hash(room_key, "cairn-webrtc/1 room password\0" ‖ own fingerprint ‖ peer's fingerprint)`,
//! the same transcript the signature covers, own fingerprint first. A peer
//! that holds a room key refuses a peer without roles bit 2 at once, and a
//! peer whose proof is wrong or missing ([`Error::Unauthorized`],
//! "… room password …"); a peer without one skips a proof it receives.
//!
//! The proof travels inside DTLS, so an eavesdropper never sees it; it
//! covers this session's two fingerprints, so nobody can replay it onto
//! another session; the signaling server sees neither the password nor
//! anything derived from it. It goes only to a peer that proved its id and
//! that the policy admits: a signaling operator that actively sits in the
//! middle (rewriting both SDPs and joining both halves with its own key)
//! gets no proof from a peer whose ACL names the peers it expects. With an
//! open ACL it does, and can test guesses offline at the cost of one
//! Argon2id per guess: choose passwords accordingly (a PAKE would close
//! that; see the README's threat model).
//!
//! Which sessions need the room key: those paired through a
//! [`Signaling`] whose [`room_key`](crate::Signaling::room_key) is set, as
//! [`WsSignaling`]'s is when it joins with a password. Manual pairing
//! carries no room key (its strings travel out of band).
//!
//! [`WsSignaling`]: crate::WsSignaling
//! [`Signaling`]: crate::Signaling

use std::fmt;
use std::sync::Arc;

use cairn::{AuthorId, Error, Keypair, Result};
use ed25519_dalek::Signature;

use crate::signal::RoomCode;

/// Magic of the auth message.
pub const AUTH_MAGIC: [u8; 4] = *b"CWA1";
/// Signing context.
pub const AUTH_CONTEXT: &[u8] = b"cairn-webrtc/1 auth\0";
/// Length of the auth message.
pub const AUTH_LEN: usize = 4 + 32 + 1 + 64;
/// Role bit: this side answers requests (serves its store).
pub const ROLE_SERVES: u8 = 0x01;
/// Role bit: this side sends requests.
pub const ROLE_CALLS: u8 = 0x02;
/// Role bit: this side holds a room key and sends a room proof.
pub const ROLE_ROOM: u8 = 0x04;
/// Magic of the room proof message.
pub const ROOM_PROOF_MAGIC: [u8; 4] = *b"CWP1";
/// Length of the room proof message (magic and keyed hash).
pub const ROOM_PROOF_LEN: usize = 4 + 32;
/// Context of the room proof (a keyed blake3 hash).
pub const ROOM_PROOF_CONTEXT: &[u8] = b"cairn-webrtc/1 room password\0";
/// Prefix of the Argon2id salt (the room code follows).
pub const ROOM_SALT_CONTEXT: &[u8] = b"cairn-webrtc/1 room key\0";
/// Argon2id memory cost of a [`RoomKey`], KiB.
pub const ROOM_KEY_MEMORY_KIB: u32 = 19 * 1024;
/// Argon2id passes of a [`RoomKey`].
pub const ROOM_KEY_PASSES: u32 = 2;

/// A room's key, derived from its password with Argon2id (v0x13,
/// m = 19 MiB, t = 2, p = 1; salt [`ROOM_SALT_CONTEXT`] ‖ room code). Peers
/// of a password room prove it to each other inside DTLS, bound to both
/// DTLS fingerprints (the crate doc's "Auth" step); it never goes to the
/// signaling server.
#[derive(Clone)]
pub struct RoomKey(Arc<[u8; 32]>);

impl fmt::Debug for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoomKey(..)")
    }
}

impl RoomKey {
    /// Derive the key of `room` with `password` (Argon2id, 19 MiB, about
    /// 50 ms of CPU: call it off the async executor, as
    /// [`WsSignaling::connect`](crate::WsSignaling::connect) does).
    pub fn derive(room: &RoomCode, password: &str) -> Result<Self> {
        if password.is_empty() {
            return Err(Error::invalid(format!(
                "empty password for room {room}: pass no password instead"
            )));
        }
        let params = argon2::Params::new(ROOM_KEY_MEMORY_KIB, ROOM_KEY_PASSES, 1, Some(32))
            .map_err(|e| Error::invalid(format!("argon2 parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut salt = ROOM_SALT_CONTEXT.to_vec();
        salt.extend_from_slice(room.as_str().as_bytes());
        let mut key = [0u8; 32];
        argon
            .hash_password_into(password.as_bytes(), &salt, &mut key)
            .map_err(|e| Error::invalid(format!("room {room}: cannot derive the room key: {e}")))?;
        Ok(RoomKey(Arc::new(key)))
    }

    fn proof(&self, first: &[u8], second: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.0, &transcript(ROOM_PROOF_CONTEXT, first, second))
    }
}

fn transcript(context: &[u8], first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut m = context.to_vec();
    m.extend_from_slice(first);
    m.extend_from_slice(second);
    m
}

/// Our auth message for a session with these fingerprints; `room` says
/// whether we hold a room key for it (and will send a proof).
pub(crate) fn auth_message(
    keypair: &Keypair,
    roles: u8,
    local_fp: &[u8],
    remote_fp: &[u8],
    room: bool,
) -> Vec<u8> {
    let sig = keypair.sign(&transcript(AUTH_CONTEXT, local_fp, remote_fp));
    let mut out = Vec::with_capacity(AUTH_LEN);
    out.extend_from_slice(&AUTH_MAGIC);
    out.extend_from_slice(keypair.author().as_bytes());
    out.push(if room {
        roles | ROLE_ROOM
    } else {
        roles & !ROLE_ROOM
    });
    out.extend_from_slice(&sig.to_bytes());
    out
}

fn unauth(reason: impl Into<String>) -> Error {
    Error::Unauthorized {
        reason: reason.into(),
    }
}

/// Check the peer's auth message; returns its peer id and roles.
pub(crate) fn verify_auth(msg: &[u8], local_fp: &[u8], remote_fp: &[u8]) -> Result<(AuthorId, u8)> {
    let (Some(magic), Some(id), Some(&roles), Some(sig)) =
        (msg.get(..4), msg.get(4..36), msg.get(36), msg.get(37..))
    else {
        return Err(unauth("the peer did not authenticate"));
    };
    if msg.len() != AUTH_LEN || magic != AUTH_MAGIC {
        return Err(unauth("the peer did not authenticate"));
    }
    if local_fp.is_empty() || remote_fp.is_empty() || local_fp == remote_fp {
        return Err(unauth("no DTLS fingerprints to bind the peer id to"));
    }
    let peer = AuthorId::from_slice(id).map_err(|_| unauth("malformed peer id"))?;
    let sig: [u8; 64] = sig.try_into().map_err(|_| unauth("malformed signature"))?;
    let key = peer
        .verifying_key()
        .ok_or_else(|| unauth("peer id is not an Ed25519 key"))?;
    key.verify_strict(
        &transcript(AUTH_CONTEXT, remote_fp, local_fp),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| unauth("peer signature does not cover this DTLS session"))?;
    Ok((peer, roles))
}

/// The refusal of a peer that holds no key for our password room.
pub(crate) fn no_room_key(peer: &AuthorId) -> Error {
    unauth(format!(
        "peer {peer} did not prove the room password (it has none)"
    ))
}

/// Our room proof message for this session.
pub(crate) fn room_proof(key: &RoomKey, local_fp: &[u8], remote_fp: &[u8]) -> Vec<u8> {
    let mut out = ROOM_PROOF_MAGIC.to_vec();
    out.extend_from_slice(key.proof(local_fp, remote_fp).as_bytes());
    out
}

/// Whether `msg` is a room proof message (and not, say, a refusal frame).
pub(crate) fn is_room_proof(msg: &[u8]) -> bool {
    msg.len() == ROOM_PROOF_LEN && msg.get(..4) == Some(&ROOM_PROOF_MAGIC[..])
}

/// Check the peer's room proof message against our room key.
pub(crate) fn verify_room_proof(
    key: &RoomKey,
    msg: &[u8],
    local_fp: &[u8],
    remote_fp: &[u8],
    peer: &AuthorId,
) -> Result<()> {
    let got: Option<[u8; 32]> = msg
        .get(4..)
        .filter(|_| is_room_proof(msg))
        .and_then(|p| p.try_into().ok());
    let Some(got) = got else {
        return Err(unauth(format!(
            "peer {peer} did not send its room password proof"
        )));
    };
    // blake3::Hash compares in constant time.
    if key.proof(remote_fp, local_fp) != blake3::Hash::from_bytes(got) {
        return Err(unauth(format!(
            "peer {peer} does not know the room password"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn auth_roundtrip_and_binding() {
        let k = Keypair::generate();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let m = auth_message(&k, ROLE_SERVES | ROLE_CALLS, &a, &b, false);
        let (peer, roles) = verify_auth(&m, &b, &a).unwrap();
        assert_eq!(peer, k.author());
        assert_eq!(roles, 3);
        // Reflected, or relayed onto another session: refused.
        assert!(verify_auth(&m, &a, &b).is_err());
        assert!(verify_auth(&m, &b, &[3u8; 32]).is_err());
        let mut bad = m.clone();
        bad[40] ^= 1;
        assert!(verify_auth(&bad, &b, &a).is_err());
        for n in 0..m.len() {
            assert!(verify_auth(&m[..n], &b, &a).is_err());
        }
        let mut long = m.clone();
        long.push(0);
        assert!(verify_auth(&long, &b, &a).is_err());
        let with_room = auth_message(&k, ROLE_CALLS, &a, &b, true);
        assert_eq!(
            verify_auth(&with_room, &b, &a).unwrap().1,
            ROLE_CALLS | ROLE_ROOM
        );
    }

    #[test]
    fn room_proofs_bind_the_password_and_the_session() {
        let room: RoomCode = "ABC-DEF".parse().unwrap();
        let right = RoomKey::derive(&room, "secret").unwrap();
        let wrong = RoomKey::derive(&room, "guess").unwrap();
        let other_room = RoomKey::derive(&"ABC-DEG".parse().unwrap(), "secret").unwrap();
        let peer = Keypair::generate().author();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let m = room_proof(&right, &a, &b);
        assert_eq!(m.len(), ROOM_PROOF_LEN);
        assert!(is_room_proof(&m));
        verify_room_proof(&right, &m, &b, &a, &peer).unwrap();
        for k2 in [&wrong, &other_room] {
            let e = verify_room_proof(k2, &m, &b, &a, &peer).unwrap_err();
            assert!(e.to_string().contains("room password"), "{e}");
        }
        // Reflected or moved to another session: refused.
        assert!(verify_room_proof(&right, &m, &a, &b, &peer).is_err());
        assert!(verify_room_proof(&right, &m, &b, &[3u8; 32], &peer).is_err());
        // Not a proof at all (a frame, a truncated proof).
        for bad in [&m[..20], &[0u8; 36][..], &[][..]] {
            assert!(!is_room_proof(bad));
            let e = verify_room_proof(&right, bad, &b, &a, &peer).unwrap_err();
            assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
        }
        assert!(RoomKey::derive(&room, "").is_err());
    }

    #[test]
    fn room_key_known_answer() {
        // The same bytes as examples/browser/cairn.js (noble's argon2id).
        let room: RoomCode = "ABC-DEF".parse().unwrap();
        let k = RoomKey::derive(&room, "secret").unwrap();
        assert_eq!(
            hex::encode(*k.0),
            "00b8ad8ce440d3a9cd90b84470bf9df19ab188cb0eeb0d08530f11f54920633f"
        );
    }
}
