//! Signaling: how two peers exchange offers and answers. A small trait,
//! a WebSocket client for [`SignalingServer`](crate::SignalingServer)
//! rooms, room codes and the wire messages (JSON).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use cairn::{Error, Keypair, Result};
use cairn_protocol::Backoff;
use cairn_protocol::PeerId;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, info, warn};

use crate::auth::RoomKey;

/// What a peer hears from its signaling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalEvent {
    /// On every (re)join: everyone else in the room. The joiner offers to
    /// each one it is not paired with.
    Present(Vec<PeerId>),
    /// A peer joined the room (it will send the offer).
    Joined(PeerId),
    /// A peer left the room.
    Left(PeerId),
    /// A message from a peer.
    Message {
        /// Who sent it (as the signaling claims; the channel proves it).
        from: PeerId,
        /// The message.
        message: SignalMessage,
    },
}

/// An offer or an answer (SDP text, candidates included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignalMessage {
    /// An SDP offer.
    Offer {
        /// The SDP.
        sdp: String,
    },
    /// An SDP answer.
    Answer {
        /// The SDP.
        sdp: String,
    },
}

/// A way to reach the other peers of a room. Implement it to carry
/// offers and answers over anything (a chat, a QR code, a server). For a
/// password room, return the room's [`RoomKey`] from
/// [`Signaling::room_key`], as [`WsSignaling`] does: every session paired
/// through this signaling then requires the peer's password proof.
#[async_trait]
pub trait Signaling: Send + 'static {
    /// The next event; `None` when the signaling is over for good.
    /// Must be cancel-safe.
    async fn recv(&mut self) -> Option<SignalEvent>;
    /// Send `message` to peer `to`. Best effort: a lost message is
    /// recovered by the pairing's timeout and retry.
    async fn send(&mut self, to: PeerId, message: SignalMessage) -> Result<()>;
    /// The key of a password room (its sessions must prove it both ways);
    /// `None` (the default) for a room without a password.
    fn room_key(&self) -> Option<RoomKey> {
        None
    }
}

/// The 32 characters of room codes: no I, O, 0 or 1.
pub const ROOM_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A room code: 6 characters of [`ROOM_ALPHABET`], read case-insensitively,
/// with an optional hyphen in the middle (`ABC-DEF`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomCode([u8; 6]);

impl RoomCode {
    /// A random room code (30 bits).
    pub fn random() -> Result<Self> {
        let mut b = [0u8; 6];
        getrandom::fill(&mut b)
            .map_err(|e| Error::backend("webrtc", false, std::io::Error::other(e.to_string())))?;
        Ok(RoomCode(b.map(|x| ROOM_ALPHABET[usize::from(x & 31)])))
    }

    /// The canonical form, six upper-case characters.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl FromStr for RoomCode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidInput {
            reason: format!(
                "bad room code {s:?}: 6 characters of {}, optionally ABC-DEF",
                std::str::from_utf8(ROOM_ALPHABET).unwrap_or("")
            ),
        };
        let s = s.trim();
        let chars: Vec<u8> = if s.len() == 7 && s.as_bytes()[3] == b'-' {
            s.bytes()
                .enumerate()
                .filter(|(i, _)| *i != 3)
                .map(|(_, c)| c)
                .collect()
        } else {
            s.bytes().collect()
        };
        if chars.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, c) in out.iter_mut().zip(chars) {
            let c = c.to_ascii_uppercase();
            if !ROOM_ALPHABET.contains(&c) {
                return Err(bad());
            }
            *o = c;
        }
        Ok(RoomCode(out))
    }
}

impl fmt::Display for RoomCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_str();
        write!(f, "{}-{}", &s[..3], &s[3..])
    }
}

impl fmt::Debug for RoomCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomCode({self})")
    }
}

/// Context of the join signature: a member signs
/// `JOIN_CONTEXT ‖ nonce[32] ‖ room code[6]` (the server's challenge, the
/// six canonical characters) with its peer key.
pub const JOIN_CONTEXT: &[u8] = b"cairn-webrtc/1 signal join\0";

/// The bytes a member signs to join `room` after challenge `nonce`.
pub fn join_transcript(nonce: &[u8], room: &RoomCode) -> Vec<u8> {
    let mut m = JOIN_CONTEXT.to_vec();
    m.extend_from_slice(nonce);
    m.extend_from_slice(room.as_str().as_bytes());
    m
}

/// Messages between a client and the signaling server (JSON text frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WireSignal {
    /// Server → client, first message: a fresh random challenge.
    Challenge {
        /// 32 random bytes, 64 hex characters.
        nonce: String,
    },
    /// Client → server, first message, answering the challenge.
    Join {
        /// Room code (any accepted spelling).
        room: String,
        /// The client's peer id, 64 hex characters.
        peer: String,
        /// Ed25519 signature by the peer id over [`join_transcript`]
        /// (128 hex characters): proves the client owns the id.
        signature: String,
    },
    /// Server → client: joined; the others present.
    Welcome {
        /// Peer ids of the others.
        peers: Vec<String>,
    },
    /// Server → client: a peer joined.
    Joined {
        /// Its peer id.
        peer: String,
    },
    /// Server → client: a peer left.
    Left {
        /// Its peer id.
        peer: String,
    },
    /// Client → server (`to`) and server → client (`from`): an offer or answer.
    Signal {
        /// Recipient (client → server).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        /// Sender (server → client).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// The offer or answer.
        data: SignalMessage,
    },
    /// Server → client: a refusal (`bad_signature`, `room_full`,
    /// `bad_request`, `too_large`, `rate_limited`, `unknown_peer`).
    Error {
        /// Machine-readable code.
        code: String,
        /// Human-readable text.
        message: String,
    },
}

fn ws_err(e: impl fmt::Display) -> Error {
    Error::backend("signaling", true, std::io::Error::other(e.to_string()))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A [`Signaling`] through a [`SignalingServer`](crate::SignalingServer)
/// room over WebSocket, reconnecting (and rejoining) with capped backoff
/// when the server goes away.
pub struct WsSignaling {
    events: mpsc::Receiver<SignalEvent>,
    out: mpsc::Sender<(PeerId, SignalMessage)>,
    room_key: Option<RoomKey>,
}

impl fmt::Debug for WsSignaling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsSignaling")
            .field("password", &self.room_key.is_some())
            .finish_non_exhaustive()
    }
}

struct Target {
    url: String,
    room: RoomCode,
    keypair: Keypair,
}

/// How long the server has to upgrade, send its challenge, then its
/// welcome.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);
/// A server silent this long (pinged after half of it) is taken as gone,
/// and the client reconnects.
const CLIENT_IDLE: Duration = Duration::from_secs(90);
/// Largest message accepted from the server.
const CLIENT_MAX_MESSAGE: usize = 1024 * 1024;

async fn next_text(ws: &mut Ws, what: &str) -> Result<String> {
    loop {
        let m = tokio::time::timeout(SERVER_TIMEOUT, ws.next())
            .await
            .map_err(|_| ws_err(format!("no {what} from the signaling server")))?;
        match m {
            Some(Ok(WsMessage::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(other)) => return Err(ws_err(format!("expected a {what}, got {other:?}"))),
            Some(Err(e)) => return Err(ws_err(e)),
            None => return Err(ws_err(format!("signaling server closed before the {what}"))),
        }
    }
}

fn refusal(code: &str, message: &str) -> Error {
    if code == "bad_signature" {
        Error::Unauthorized {
            reason: format!("signaling refused: {code}: {message}"),
        }
    } else {
        Error::backend(
            "signaling",
            code == "room_full" || code == "rate_limited",
            std::io::Error::other(format!("{code}: {message}")),
        )
    }
}

async fn connect_join(t: &Target) -> Result<(Ws, Vec<PeerId>)> {
    // What a server may make us hold: SDPs are a few KiB.
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(CLIENT_MAX_MESSAGE);
    cfg.max_frame_size = Some(CLIENT_MAX_MESSAGE);
    let connect = tokio_tungstenite::connect_async_with_config(t.url.as_str(), Some(cfg), false);
    let (mut ws, _) = tokio::time::timeout(SERVER_TIMEOUT, connect)
        .await
        .map_err(|_| {
            ws_err(format!(
                "{}: no WebSocket upgrade within {SERVER_TIMEOUT:?}",
                t.url
            ))
        })?
        .map_err(ws_err)?;
    let text = next_text(&mut ws, "challenge").await?;
    let nonce = match serde_json::from_str::<WireSignal>(&text) {
        Ok(WireSignal::Challenge { nonce }) => hex::decode(nonce)
            .ok()
            .filter(|n| n.len() == 32)
            .ok_or_else(|| ws_err("malformed challenge from the signaling server"))?,
        Ok(WireSignal::Error { code, message }) => return Err(refusal(&code, &message)),
        _ => return Err(ws_err("expected a challenge from the signaling server")),
    };
    let signature = t.keypair.sign(&join_transcript(&nonce, &t.room));
    let join = WireSignal::Join {
        room: t.room.as_str().to_owned(),
        peer: t.keypair.author().to_hex(),
        signature: hex::encode(signature.to_bytes()),
    };
    let join = serde_json::to_string(&join).map_err(ws_err)?;
    ws.send(WsMessage::text(join)).await.map_err(ws_err)?;
    let text = next_text(&mut ws, "welcome").await?;
    match serde_json::from_str::<WireSignal>(&text) {
        Ok(WireSignal::Welcome { peers }) => {
            Ok((ws, peers.iter().filter_map(|p| p.parse().ok()).collect()))
        }
        Ok(WireSignal::Error { code, message }) => Err(refusal(&code, &message)),
        _ => Err(ws_err("expected a welcome")),
    }
}

impl WsSignaling {
    /// Connect to `url` (`ws://host:port`) and join `room` as `keypair`'s
    /// peer id, signing the server's challenge to prove the id is ours.
    /// Fails if the server refuses (a bad signature:
    /// [`Error::Unauthorized`]; room full) or cannot be reached; later
    /// losses of the server are retried in the background.
    ///
    /// With a `password`, the room key ([`RoomKey::derive`], Argon2id) is
    /// bound to every offer and answer sent, so the peers of the room prove
    /// it to each other inside DTLS and refuse a peer that does not know it
    /// ([`Error::Unauthorized`] from the pairing). The server never sees the
    /// password, nor anything derived from it: it lets anyone into the room,
    /// and the peers keep the strangers out.
    pub async fn connect(
        url: &str,
        room: &RoomCode,
        password: Option<&str>,
        keypair: &Keypair,
    ) -> Result<Self> {
        let room_key = match password {
            Some(p) => {
                let (room, p) = (room.clone(), p.to_owned());
                Some(
                    tokio::task::spawn_blocking(move || RoomKey::derive(&room, &p))
                        .await
                        .map_err(ws_err)??,
                )
            }
            None => None,
        };
        let target = Target {
            url: url.to_owned(),
            room: room.clone(),
            keypair: keypair.clone(),
        };
        let (ws, present) = connect_join(&target).await?;
        info!(%room, "joined signaling room");
        let (ev_tx, events) = mpsc::channel(256);
        let (out, out_rx) = mpsc::channel(256);
        let _ = ev_tx.send(SignalEvent::Present(present)).await;
        tokio::spawn(run(target, ws, ev_tx, out_rx));
        Ok(WsSignaling {
            events,
            out,
            room_key,
        })
    }
}

async fn run(
    target: Target,
    ws: Ws,
    ev_tx: mpsc::Sender<SignalEvent>,
    mut out_rx: mpsc::Receiver<(PeerId, SignalMessage)>,
) {
    let mut ws = Some(ws);
    let mut attempt: u32 = 0;
    loop {
        if let Some(mut sock) = ws.take() {
            attempt = 0;
            let mut heard = tokio::time::Instant::now();
            let mut pinged = false;
            loop {
                // A server silent for CLIENT_IDLE, even to a ping, is gone.
                let wake = heard + if pinged { CLIENT_IDLE } else { CLIENT_IDLE / 2 };
                tokio::select! {
                    _ = ev_tx.closed() => return,
                    _ = tokio::time::sleep_until(wake) => {
                        if pinged {
                            debug!("the signaling server went silent");
                            break;
                        }
                        pinged = true;
                        let ping = sock.send(WsMessage::Ping(Default::default()));
                        if !matches!(tokio::time::timeout(SERVER_TIMEOUT, ping).await, Ok(Ok(()))) {
                            break;
                        }
                    }
                    m = sock.next() => {
                        heard = tokio::time::Instant::now();
                        pinged = false;
                        let text = match m {
                            Some(Ok(WsMessage::Text(t))) => t,
                            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                            Some(Ok(_)) => continue,
                        };
                        let ev = match serde_json::from_str::<WireSignal>(text.as_str()) {
                            Ok(WireSignal::Joined { peer }) => peer.parse().ok().map(SignalEvent::Joined),
                            Ok(WireSignal::Left { peer }) => peer.parse().ok().map(SignalEvent::Left),
                            Ok(WireSignal::Signal { from: Some(from), data, .. }) => from.parse().ok().map(|from| SignalEvent::Message { from, message: data }),
                            Ok(WireSignal::Error { code, message }) => { warn!(%code, %message, "signaling error"); None }
                            _ => None,
                        };
                        if let Some(ev) = ev && ev_tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                    o = out_rx.recv() => {
                        let Some((to, data)) = o else { return };
                        let msg = WireSignal::Signal { to: Some(to.to_hex()), from: None, data };
                        let Ok(text) = serde_json::to_string(&msg) else { continue };
                        let sent = tokio::time::timeout(SERVER_TIMEOUT, sock.send(WsMessage::text(text))).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            break;
                        }
                    }
                }
            }
            debug!("lost the signaling server; reconnecting");
        }
        attempt = attempt.saturating_add(1);
        // The first retry already waits 100 ms (attempt counts from 1 here).
        let delay = Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_secs(5),
        }
        .delay(attempt.saturating_add(1));
        tokio::select! {
            _ = ev_tx.closed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        match connect_join(&target).await {
            Ok((sock, present)) => {
                info!("rejoined the signaling room");
                if ev_tx.send(SignalEvent::Present(present)).await.is_err() {
                    return;
                }
                ws = Some(sock);
            }
            Err(e) => debug!(error = %e, attempt, "signaling reconnect failed"),
        }
        // Drop messages queued while offline: pairing retries resend them.
        while out_rx.try_recv().is_ok() {}
    }
}

#[async_trait]
impl Signaling for WsSignaling {
    async fn recv(&mut self) -> Option<SignalEvent> {
        self.events.recv().await
    }
    async fn send(&mut self, to: PeerId, message: SignalMessage) -> Result<()> {
        self.out
            .send((to, message))
            .await
            .map_err(|_| Error::Closed)
    }
    fn room_key(&self) -> Option<RoomKey> {
        self.room_key.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn room_codes_parse_case_insensitively_with_hyphen() {
        let a: RoomCode = "abc-def".parse().unwrap();
        let b: RoomCode = "ABCDEF".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "ABC-DEF");
        assert_eq!(a.as_str(), "ABCDEF");
        for bad in [
            "ABCDE", "ABCDEFG", "ABCDE0", "ABCDEI", "ABCDEO", "ABCDE1", "AB-CDEF", "ABC--EF",
        ] {
            assert!(bad.parse::<RoomCode>().is_err(), "{bad}");
        }
        let r = RoomCode::random().unwrap();
        assert_eq!(r.to_string().parse::<RoomCode>().unwrap(), r);
    }
}
