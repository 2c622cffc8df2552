//! Peer authentication bound to the DTLS session, and room passwords
//! proven inside it.
//!
//! The first data channel message each side sends is
//! `"CWA1" ‖ peer_id[32] ‖ roles:u8 ‖ signature[64] ‖ [room_proof[32]]`,
//! the signature being Ed25519 by `peer_id` over
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
//! characters). A peer that holds a room key sets roles bit 2
//! ([`ROLE_ROOM`]) and appends the room proof,
//! `blake3::keyed_hash(room_key, "cairn-webrtc/1 room password\0" ‖ own fingerprint ‖ peer's fingerprint)`:
//! the same transcript the signature covers, own fingerprint first. A peer
//! that holds a room key for the session refuses a peer whose proof is
//! missing or wrong ([`Error::Unauthorized`], "… room password …").
//!
//! The proof travels inside DTLS, so an eavesdropper never sees it; it
//! covers this session's two fingerprints, so nobody can replay it onto
//! another session; the signaling server sees neither the password nor
//! anything derived from it. A signaling operator that actively sits in
//! the middle (rewriting both SDPs and joining both halves with its own
//! key) does receive proofs, and can test guesses offline at the cost of
//! one Argon2id per guess: choose passwords accordingly (a PAKE would
//! close that; see the README's threat model).
//!
//! Which sessions need the room key: [`RoomKey::bind_sdp`] binds the key to
//! the DTLS fingerprint of an SDP this peer sends, and the handshake of the
//! channel with that fingerprint requires the proof. [`WsSignaling`] binds
//! every offer and answer it sends; a custom [`Signaling`] should do the
//! same. Bindings are process-wide and consumed by the handshake; at most
//! 65 536 wait at once, those older than 10 minutes are forgotten to make
//! room, and when none is that old `bind_sdp` fails (the SDP is not sent)
//! instead of dropping one.
//!
//! [`WsSignaling`]: crate::WsSignaling
//! [`Signaling`]: crate::Signaling

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cairn::{AuthorId, Error, Keypair, Result};
use ed25519_dalek::Signature;

use crate::signal::RoomCode;

/// Magic of the auth message.
pub const AUTH_MAGIC: [u8; 4] = *b"CWA1";
/// Signing context.
pub const AUTH_CONTEXT: &[u8] = b"cairn-webrtc/1 auth\0";
/// Length of the auth message without a room proof.
pub const AUTH_LEN: usize = 4 + 32 + 1 + 64;
/// Role bit: this side answers requests (serves its store).
pub const ROLE_SERVES: u8 = 0x01;
/// Role bit: this side sends requests.
pub const ROLE_CALLS: u8 = 0x02;
/// Role bit: a room proof ([`ROOM_PROOF_LEN`] bytes) follows the signature.
pub const ROLE_ROOM: u8 = 0x04;
/// Length of the room proof.
pub const ROOM_PROOF_LEN: usize = 32;
/// Context of the room proof (a keyed blake3 hash).
pub const ROOM_PROOF_CONTEXT: &[u8] = b"cairn-webrtc/1 room password\0";
/// Prefix of the Argon2id salt (the room code follows).
pub const ROOM_SALT_CONTEXT: &[u8] = b"cairn-webrtc/1 room key\0";
/// Argon2id memory cost of a [`RoomKey`], KiB.
pub const ROOM_KEY_MEMORY_KIB: u32 = 19 * 1024;
/// Argon2id passes of a [`RoomKey`].
pub const ROOM_KEY_PASSES: u32 = 2;

/// How long a [`RoomKey::bind_sdp`] binding is surely kept for its
/// handshake (channels open within `open_timeout`, 20 s by default); older
/// ones are forgotten only to make room.
const BINDING_TTL: Duration = Duration::from_secs(600);
/// Most bindings held at once; over it (after forgetting those older than
/// [`BINDING_TTL`]), new ones are refused, never evicted: an evicted
/// binding would open its session without the password.
const MAX_BINDINGS: usize = 65_536;

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

    /// Require this key of the session that will use the DTLS certificate
    /// of `sdp` (an offer or answer this peer is about to send). Fails on
    /// an SDP with no `a=fingerprint:sha-256` line, and (retryable) while
    /// 65 536 bindings younger than 10 minutes already wait for their
    /// handshake: do not send the SDP then.
    pub fn bind_sdp(&self, sdp: &str) -> Result<()> {
        let fp = sdp_fingerprint(sdp)?;
        let now = Instant::now();
        let mut b = bindings().lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= MAX_BINDINGS {
            b.retain(|_, (_, at)| now.duration_since(*at) < BINDING_TTL);
        }
        // Full: refuse (the SDP is not sent) rather than evict a binding,
        // which would let that session open without the password.
        if b.len() >= MAX_BINDINGS {
            return Err(Error::backend(
                "webrtc",
                true,
                std::io::Error::other(format!(
                    "{MAX_BINDINGS} password-room sessions already pending; try again later"
                )),
            ));
        }
        b.insert(fp, (self.clone(), now));
        Ok(())
    }

    fn proof(&self, first: &[u8], second: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.0, &transcript(ROOM_PROOF_CONTEXT, first, second))
    }
}

type Bindings = Mutex<HashMap<Vec<u8>, (RoomKey, Instant)>>;

fn bindings() -> &'static Bindings {
    static B: OnceLock<Bindings> = OnceLock::new();
    B.get_or_init(Bindings::default)
}

/// The room key bound to our DTLS fingerprint `local_fp`, if any (the
/// binding is consumed: one channel, one handshake).
pub(crate) fn bound_room_key(local_fp: &[u8]) -> Option<RoomKey> {
    let mut b = bindings().lock().unwrap_or_else(|e| e.into_inner());
    // However old: a binding is only ever forgotten to make room.
    b.remove(local_fp).map(|(key, _)| key)
}

/// The raw SHA-256 fingerprint of an SDP's DTLS certificate.
pub(crate) fn sdp_fingerprint(sdp: &str) -> Result<Vec<u8>> {
    let bad = || Error::invalid("the SDP has no a=fingerprint:sha-256 line");
    let line = sdp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a=fingerprint:"))
        .find_map(|l| {
            let (alg, fp) = l.split_once(' ')?;
            alg.eq_ignore_ascii_case("sha-256").then_some(fp.trim())
        })
        .ok_or_else(bad)?;
    let fp = hex::decode(line.replace(':', "")).map_err(|_| bad())?;
    if fp.len() != 32 {
        return Err(bad());
    }
    Ok(fp)
}

fn transcript(context: &[u8], first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut m = context.to_vec();
    m.extend_from_slice(first);
    m.extend_from_slice(second);
    m
}

/// Our auth message for a session with these fingerprints, with the room
/// proof when the session is bound to a room key.
pub(crate) fn auth_message(
    keypair: &Keypair,
    roles: u8,
    local_fp: &[u8],
    remote_fp: &[u8],
    room: Option<&RoomKey>,
) -> Vec<u8> {
    let sig = keypair.sign(&transcript(AUTH_CONTEXT, local_fp, remote_fp));
    let mut out = Vec::with_capacity(AUTH_LEN + ROOM_PROOF_LEN);
    out.extend_from_slice(&AUTH_MAGIC);
    out.extend_from_slice(keypair.author().as_bytes());
    match room {
        Some(_) => out.push(roles | ROLE_ROOM),
        None => out.push(roles & !ROLE_ROOM),
    }
    out.extend_from_slice(&sig.to_bytes());
    if let Some(k) = room {
        out.extend_from_slice(k.proof(local_fp, remote_fp).as_bytes());
    }
    out
}

fn unauth(reason: impl Into<String>) -> Error {
    Error::Unauthorized {
        reason: reason.into(),
    }
}

/// Check the peer's auth message (and its room proof when `room` is
/// given); returns its peer id and roles.
pub(crate) fn verify_auth(
    msg: &[u8],
    local_fp: &[u8],
    remote_fp: &[u8],
    room: Option<&RoomKey>,
) -> Result<(AuthorId, u8)> {
    let (Some(magic), Some(id), Some(&roles), Some(sig)) = (
        msg.get(..4),
        msg.get(4..36),
        msg.get(36),
        msg.get(37..AUTH_LEN),
    ) else {
        return Err(unauth("the peer did not authenticate"));
    };
    let proof = msg.get(AUTH_LEN..).unwrap_or_default();
    let has_proof = roles & ROLE_ROOM != 0;
    if magic != AUTH_MAGIC || proof.len() != if has_proof { ROOM_PROOF_LEN } else { 0 } {
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
    if let Some(k) = room {
        if !has_proof {
            return Err(unauth(format!(
                "peer {peer} did not prove the room password (it has none)"
            )));
        }
        let want = k.proof(remote_fp, local_fp);
        let got: [u8; 32] = proof
            .try_into()
            .map_err(|_| unauth("malformed room proof"))?;
        // blake3::Hash compares in constant time.
        if want != blake3::Hash::from_bytes(got) {
            return Err(unauth(format!(
                "peer {peer} does not know the room password"
            )));
        }
    }
    Ok((peer, roles))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn auth_roundtrip_and_binding() {
        let k = Keypair::generate();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let m = auth_message(&k, ROLE_SERVES | ROLE_CALLS, &a, &b, None);
        let (peer, roles) = verify_auth(&m, &b, &a, None).unwrap();
        assert_eq!(peer, k.author());
        assert_eq!(roles, 3);
        // Reflected, or relayed onto another session: refused.
        assert!(verify_auth(&m, &a, &b, None).is_err());
        assert!(verify_auth(&m, &b, &[3u8; 32], None).is_err());
        let mut bad = m.clone();
        bad[40] ^= 1;
        assert!(verify_auth(&bad, &b, &a, None).is_err());
        for n in 0..m.len() {
            assert!(verify_auth(&m[..n], &b, &a, None).is_err());
        }
    }

    #[test]
    fn room_proofs_bind_the_password_and_the_session() {
        let room: RoomCode = "ABC-DEF".parse().unwrap();
        let right = RoomKey::derive(&room, "secret").unwrap();
        let wrong = RoomKey::derive(&room, "guess").unwrap();
        let other_room = RoomKey::derive(&"ABC-DEG".parse().unwrap(), "secret").unwrap();
        let k = Keypair::generate();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let m = auth_message(&k, ROLE_CALLS, &a, &b, Some(&right));
        assert_eq!(m.len(), AUTH_LEN + ROOM_PROOF_LEN);
        let (_, roles) = verify_auth(&m, &b, &a, Some(&right)).unwrap();
        assert_eq!(roles, ROLE_CALLS | ROLE_ROOM);
        // A peer in no password room accepts it.
        verify_auth(&m, &b, &a, None).unwrap();
        for k2 in [&wrong, &other_room] {
            let e = verify_auth(&m, &b, &a, Some(k2)).unwrap_err();
            assert!(e.to_string().contains("room password"), "{e}");
        }
        // Reflected or moved to another session: refused.
        assert!(verify_auth(&m, &a, &b, Some(&right)).is_err());
        assert!(verify_auth(&m, &b, &[3u8; 32], Some(&right)).is_err());
        // No proof at all.
        let none = auth_message(&k, ROLE_CALLS, &a, &b, None);
        let e = verify_auth(&none, &b, &a, Some(&right)).unwrap_err();
        assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
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

    #[test]
    fn sdp_bindings_are_found_once() {
        let room: RoomCode = "ABC-DEF".parse().unwrap();
        let key = RoomKey::derive(&room, "pw").unwrap();
        let fp: Vec<u8> = (0u8..32).collect();
        let colons: Vec<String> = fp.iter().map(|b| format!("{b:02X}")).collect();
        let sdp = format!("v=0\r\na=fingerprint:sha-256 {}\r\n", colons.join(":"));
        assert_eq!(sdp_fingerprint(&sdp).unwrap(), fp);
        key.bind_sdp(&sdp).unwrap();
        assert!(bound_room_key(&fp).is_some());
        assert!(bound_room_key(&fp).is_none());
        assert!(key.bind_sdp("v=0\r\n").is_err());
        assert!(sdp_fingerprint("a=fingerprint:sha-256 zz").is_err());
    }
}
