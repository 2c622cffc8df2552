//! Peer authentication bound to the DTLS session.
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

use cairn::{AuthorId, Error, Keypair, Result};
use ed25519_dalek::Signature;

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

fn signed(first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut m = AUTH_CONTEXT.to_vec();
    m.extend_from_slice(first);
    m.extend_from_slice(second);
    m
}

/// Our auth message for a session with these fingerprints.
pub(crate) fn auth_message(
    keypair: &Keypair,
    roles: u8,
    local_fp: &[u8],
    remote_fp: &[u8],
) -> Vec<u8> {
    let sig = keypair.sign(&signed(local_fp, remote_fp));
    let mut out = Vec::with_capacity(AUTH_LEN);
    out.extend_from_slice(&AUTH_MAGIC);
    out.extend_from_slice(keypair.author().as_bytes());
    out.push(roles);
    out.extend_from_slice(&sig.to_bytes());
    out
}

fn unauth(reason: &str) -> Error {
    Error::Unauthorized {
        reason: reason.to_owned(),
    }
}

/// Check the peer's auth message; returns its peer id and roles.
pub(crate) fn verify_auth(msg: &[u8], local_fp: &[u8], remote_fp: &[u8]) -> Result<(AuthorId, u8)> {
    if msg.len() != AUTH_LEN || msg[..4] != AUTH_MAGIC {
        return Err(unauth("the peer did not authenticate"));
    }
    if local_fp.is_empty() || remote_fp.is_empty() || local_fp == remote_fp {
        return Err(unauth("no DTLS fingerprints to bind the peer id to"));
    }
    let peer = AuthorId::from_slice(&msg[4..36]).map_err(|_| unauth("malformed peer id"))?;
    let roles = msg[36];
    let sig: [u8; 64] = msg[37..]
        .try_into()
        .map_err(|_| unauth("malformed signature"))?;
    let key = peer
        .verifying_key()
        .ok_or_else(|| unauth("peer id is not an Ed25519 key"))?;
    key.verify_strict(&signed(remote_fp, local_fp), &Signature::from_bytes(&sig))
        .map_err(|_| unauth("peer signature does not cover this DTLS session"))?;
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
        let m = auth_message(&k, ROLE_SERVES | ROLE_CALLS, &a, &b);
        let (peer, roles) = verify_auth(&m, &b, &a).unwrap();
        assert_eq!(peer, k.author());
        assert_eq!(roles, 3);
        // Reflected, or relayed onto another session: refused.
        assert!(verify_auth(&m, &a, &b).is_err());
        assert!(verify_auth(&m, &b, &[3u8; 32]).is_err());
        let mut bad = m.clone();
        bad[40] ^= 1;
        assert!(verify_auth(&bad, &b, &a).is_err());
    }
}
