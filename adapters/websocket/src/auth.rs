//! Both keys proven, fresh for this connection, before a protocol frame.
//!
//! Three binary WebSocket messages (byte by byte in `docs/protocol.md`,
//! "WebSocket"):
//!
//! 1. server → client, at once: `CHALLENGE` =
//!    `"CWS1" ‖ server_id[32] ‖ server_nonce[32]` (the id is a claim, proven
//!    in message 3; a client that pinned another key stops here and says so);
//! 2. client → server: `CLIENT_AUTH` =
//!    `"CWC1" ‖ client_id[32] ‖ client_nonce[32] ‖ signature[64]`, Ed25519
//!    by `client_id` over
//!    `"cairn-websocket/1 client\0" ‖ server_nonce ‖ client_nonce ‖ server_id`;
//! 3. server → client: `SERVER_AUTH` = `"CWS2" ‖ server_id[32] ‖ signature[64]`,
//!    Ed25519 by `server_id` over
//!    `"cairn-websocket/1 server\0" ‖ client_nonce ‖ server_nonce ‖ client_id`,
//!    or a refusal (an `ERROR` frame with id 0).
//!
//! Each side signs the other's fresh nonce, so no signature can be replayed
//! onto another connection; the client signs the server id it pinned, so a
//! server cannot pass a client's signature on to another server; the two
//! contexts differ, so neither signature can stand for the other. What the
//! handshake cannot stop on plain `ws://` is an active man in the middle
//! who relays it unchanged and then reads or alters the frames that follow:
//! use `wss://` with a certificate the client verifies (or a TLS-terminating
//! proxy on the server's host) on any network you do not control. Changes
//! stay signed and, in the tenant layer, encrypted end to end either way.

use cairn::{AuthorId, Error, Keypair, Result};
use ed25519_dalek::Signature;

/// Magic of the server's challenge.
pub const CHALLENGE_MAGIC: [u8; 4] = *b"CWS1";
/// Length of the challenge.
pub const CHALLENGE_LEN: usize = 4 + 32 + 32;
/// Magic of the client's auth message.
pub const CLIENT_AUTH_MAGIC: [u8; 4] = *b"CWC1";
/// Length of the client's auth message.
pub const CLIENT_AUTH_LEN: usize = 4 + 32 + 32 + 64;
/// Magic of the server's auth message.
pub const SERVER_AUTH_MAGIC: [u8; 4] = *b"CWS2";
/// Length of the server's auth message.
pub const SERVER_AUTH_LEN: usize = 4 + 32 + 64;
/// What the client signs after.
pub const CLIENT_CONTEXT: &[u8] = b"cairn-websocket/1 client\0";
/// What the server signs after.
pub const SERVER_CONTEXT: &[u8] = b"cairn-websocket/1 server\0";

/// The words an [`Error::Unauthorized`] starts with when the server's key
/// is not the one pinned.
pub(crate) const PIN_MISMATCH: &str = "the server's key is not the pinned peer id";

/// Whether `e` says the server's key is not the pinned peer id (the server
/// is someone else, or the URL names the wrong peer).
pub fn is_wrong_server_key(e: &Error) -> bool {
    matches!(e, Error::Unauthorized { reason } if reason.starts_with(PIN_MISMATCH))
}

/// A fresh 32-byte nonce.
pub(crate) fn nonce() -> Result<[u8; 32]> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).map_err(|e| {
        Error::Io(std::io::Error::other(format!(
            "no randomness for a handshake nonce: {e}"
        )))
    })?;
    Ok(n)
}

fn unauth(reason: impl Into<String>) -> Error {
    Error::Unauthorized {
        reason: reason.into(),
    }
}

fn transcript(context: &[u8], a: &[u8; 32], b: &[u8; 32], c: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(context.len() + 96);
    m.extend_from_slice(context);
    m.extend_from_slice(a);
    m.extend_from_slice(b);
    m.extend_from_slice(c);
    m
}

fn verify(signer: &AuthorId, msg: &[u8], sig: &[u8], what: &str) -> Result<()> {
    let key = signer
        .verifying_key()
        .ok_or_else(|| unauth(format!("{what}: {signer} is not a valid Ed25519 key")))?;
    let sig: [u8; 64] = sig
        .try_into()
        .map_err(|_| unauth(format!("{what}: malformed signature")))?;
    key.verify_strict(msg, &Signature::from_bytes(&sig))
        .map_err(|_| {
            unauth(format!(
                "{what}: the signature does not cover this connection"
            ))
        })
}

fn id_at(msg: &[u8], at: usize) -> Option<AuthorId> {
    let bytes: [u8; 32] = msg.get(at..at + 32)?.try_into().ok()?;
    Some(AuthorId::from_bytes(bytes))
}

/// The server's challenge: its (claimed) id and a fresh nonce.
pub(crate) fn challenge(server_id: &AuthorId, server_nonce: &[u8; 32]) -> Vec<u8> {
    let mut m = CHALLENGE_MAGIC.to_vec();
    m.extend_from_slice(server_id.as_bytes());
    m.extend_from_slice(server_nonce);
    m
}

/// The server nonce in a challenge from the server pinned as `pinned`.
///
/// A challenge claiming another id is refused at once as
/// [`is_wrong_server_key`]: nothing is signed for a server the client did
/// not mean to reach. (A claim of the pinned id proves nothing yet; the
/// server's auth message does.)
pub(crate) fn read_challenge(msg: &[u8], pinned: &AuthorId) -> Result<[u8; 32]> {
    if msg.len() != CHALLENGE_LEN || msg[..4] != CHALLENGE_MAGIC {
        return Err(Error::Protocol {
            reason: format!(
                "expected the server's {CHALLENGE_LEN}-byte challenge, got {} bytes (is this a Cairn WebSocket server?)",
                msg.len()
            ),
        });
    }
    let claimed = id_at(msg, 4).ok_or_else(|| unauth("challenge: no server id"))?;
    if &claimed != pinned {
        return Err(unauth(format!(
            "{PIN_MISMATCH}: it says it is {claimed}, the URL pins {pinned}"
        )));
    }
    let mut n = [0u8; 32];
    n.copy_from_slice(&msg[36..]);
    Ok(n)
}

/// The client's auth message, answering `server_nonce` for the server
/// pinned as `server_id`.
pub(crate) fn client_auth(
    keypair: &Keypair,
    server_nonce: &[u8; 32],
    client_nonce: &[u8; 32],
    server_id: &AuthorId,
) -> Vec<u8> {
    let sig = keypair.sign(&transcript(
        CLIENT_CONTEXT,
        server_nonce,
        client_nonce,
        server_id.as_bytes(),
    ));
    let mut m = CLIENT_AUTH_MAGIC.to_vec();
    m.extend_from_slice(keypair.author().as_bytes());
    m.extend_from_slice(client_nonce);
    m.extend_from_slice(&sig.to_bytes());
    m
}

/// Check a client's auth message against our challenge: the client's id
/// and nonce.
pub(crate) fn verify_client_auth(
    msg: &[u8],
    server_nonce: &[u8; 32],
    server_id: &AuthorId,
) -> Result<(AuthorId, [u8; 32])> {
    if msg.len() != CLIENT_AUTH_LEN || msg[..4] != CLIENT_AUTH_MAGIC {
        return Err(unauth(format!(
            "expected a {CLIENT_AUTH_LEN}-byte client auth message, got {} bytes",
            msg.len()
        )));
    }
    let client = id_at(msg, 4).ok_or_else(|| unauth("malformed client auth message"))?;
    let mut client_nonce = [0u8; 32];
    client_nonce.copy_from_slice(&msg[36..68]);
    let signed = transcript(
        CLIENT_CONTEXT,
        server_nonce,
        &client_nonce,
        server_id.as_bytes(),
    );
    verify(&client, &signed, &msg[68..], "client auth")?;
    Ok((client, client_nonce))
}

/// The server's auth message.
pub(crate) fn server_auth(
    keypair: &Keypair,
    client_nonce: &[u8; 32],
    server_nonce: &[u8; 32],
    client_id: &AuthorId,
) -> Vec<u8> {
    let sig = keypair.sign(&transcript(
        SERVER_CONTEXT,
        client_nonce,
        server_nonce,
        client_id.as_bytes(),
    ));
    let mut m = SERVER_AUTH_MAGIC.to_vec();
    m.extend_from_slice(keypair.author().as_bytes());
    m.extend_from_slice(&sig.to_bytes());
    m
}

/// Whether `msg` is shaped as a server auth message (anything else after
/// the client's auth is a framed refusal).
pub(crate) fn is_server_auth(msg: &[u8]) -> bool {
    msg.len() == SERVER_AUTH_LEN && msg[..4] == SERVER_AUTH_MAGIC
}

/// Check the server's auth message: it must come from the pinned key and
/// cover both nonces and our id.
pub(crate) fn verify_server_auth(
    msg: &[u8],
    pinned: &AuthorId,
    client_nonce: &[u8; 32],
    server_nonce: &[u8; 32],
    client_id: &AuthorId,
) -> Result<()> {
    if !is_server_auth(msg) {
        return Err(unauth("malformed server auth message"));
    }
    let server = id_at(msg, 4).ok_or_else(|| unauth("malformed server auth message"))?;
    if server != *pinned {
        return Err(unauth(format!(
            "{PIN_MISMATCH} (pinned {pinned}, the server proved {server})"
        )));
    }
    let signed = transcript(
        SERVER_CONTEXT,
        client_nonce,
        server_nonce,
        client_id.as_bytes(),
    );
    verify(&server, &signed, &msg[36..], "server auth")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn each_signature_covers_both_nonces_both_ids_and_its_role() {
        let (client, server, other) = (
            Keypair::generate(),
            Keypair::generate(),
            Keypair::generate(),
        );
        let (sn, cn) = ([1u8; 32], [2u8; 32]);
        let m = client_auth(&client, &sn, &cn, &server.author());
        assert_eq!(m.len(), CLIENT_AUTH_LEN);
        assert_eq!(
            verify_client_auth(&m, &sn, &server.author()).unwrap(),
            (client.author(), cn)
        );
        // Another challenge, or another server: refused.
        assert!(verify_client_auth(&m, &[3u8; 32], &server.author()).is_err());
        assert!(verify_client_auth(&m, &sn, &other.author()).is_err());
        // A flipped byte anywhere, a truncation, an extension: refused.
        for i in 0..m.len() {
            let mut bad = m.clone();
            bad[i] ^= 1;
            assert!(
                verify_client_auth(&bad, &sn, &server.author()).is_err(),
                "byte {i}"
            );
        }
        for n in 0..m.len() {
            assert!(verify_client_auth(&m[..n], &sn, &server.author()).is_err());
        }
        let mut long = m.clone();
        long.push(0);
        assert!(verify_client_auth(&long, &sn, &server.author()).is_err());

        let s = server_auth(&server, &cn, &sn, &client.author());
        assert!(is_server_auth(&s));
        verify_server_auth(&s, &server.author(), &cn, &sn, &client.author()).unwrap();
        // Someone else's key is named as such.
        let e = verify_server_auth(&s, &other.author(), &cn, &sn, &client.author()).unwrap_err();
        assert!(is_wrong_server_key(&e), "{e}");
        // Nonces swapped, another client: refused.
        assert!(verify_server_auth(&s, &server.author(), &sn, &cn, &client.author()).is_err());
        assert!(verify_server_auth(&s, &server.author(), &cn, &sn, &other.author()).is_err());
        for i in 36..s.len() {
            let mut bad = s.clone();
            bad[i] ^= 1;
            assert!(
                verify_server_auth(&bad, &server.author(), &cn, &sn, &client.author()).is_err()
            );
        }
        // A client signature cannot stand for a server's: other context.
        let mut reflected = SERVER_AUTH_MAGIC.to_vec();
        reflected.extend_from_slice(client.author().as_bytes());
        reflected.extend_from_slice(&m[68..]);
        assert!(
            verify_server_auth(&reflected, &client.author(), &cn, &sn, &client.author()).is_err()
        );
    }

    #[test]
    fn a_challenge_round_trips_and_anything_else_is_refused() {
        let n = [9u8; 32];
        let me = Keypair::generate().author();
        assert_eq!(read_challenge(&challenge(&me, &n), &me).unwrap(), n);
        assert!(read_challenge(b"HTTP/1.1 200 OK", &me).is_err());
        assert!(read_challenge(&challenge(&me, &n)[..CHALLENGE_LEN - 1], &me).is_err());
        // Another server's challenge is refused as such, before signing.
        let other = Keypair::generate().author();
        let e = read_challenge(&challenge(&other, &n), &me).unwrap_err();
        assert!(is_wrong_server_key(&e), "{e}");
    }
}
