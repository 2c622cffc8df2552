//! [`SignalingServer`]: rooms over WebSocket. It relays offers and answers
//! between the peers of a room and tells who is present; it stores
//! nothing (a room lives while someone is in it) and never sees the data,
//! which flows peer to peer over DTLS.
//!
//! Hostile clients are bounded before and after they join: a connection cap
//! in total and per address, a deadline from TCP accept to a verified join,
//! a message size cap, a rate limit, an idle deadline, and a bounded queue
//! per member with a write deadline, so a member that stops reading is
//! dropped instead of buffered for or waited on.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn::{Error, Result};
use cairn_protocol::PeerId;
use ed25519_dalek::Signature;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::signal::{RoomCode, WireSignal, join_transcript};

/// Limits of a [`SignalingServer`]. Every one bounds what a client can
/// make the server hold or do; the defaults suit a public server.
#[derive(Debug, Clone)]
pub struct SignalingOptions {
    /// Most peers in one room (default 16).
    pub max_peers_per_room: usize,
    /// Most messages a client may send per second (default 50; a burst of
    /// as many is allowed). Over it, messages are dropped with a
    /// `rate_limited` error.
    pub messages_per_second: u32,
    /// Largest message accepted, in bytes (default 64 KiB). A larger one
    /// gets a `too_large` error and the connection is closed (close code
    /// 1009); it is never buffered whole.
    pub max_message: usize,
    /// Most rooms at once (default 10 000).
    pub max_rooms: usize,
    /// Most connections at once, joined or not (default 10 000). Over it,
    /// new TCP connections are closed at once.
    pub max_connections: usize,
    /// Most connections at once from one address, joined or not (default
    /// 32; IPv6 addresses count per /64). Over it, new TCP connections from
    /// that address are closed at once.
    pub max_connections_per_ip: usize,
    /// How long a new connection has, from TCP accept, to finish the
    /// WebSocket upgrade and send a join whose signature verifies (default
    /// 10 s). Cut off after it.
    pub join_timeout: Duration,
    /// How long a member may stay silent (default 60 s). Any message or
    /// WebSocket ping or pong from it counts; after half of it in silence
    /// the server sends a ping, which browsers and tungstenite answer by
    /// themselves, so only a dead or stuck member is dropped.
    pub idle_timeout: Duration,
    /// Longest a write to one member may take (default 10 s); a member
    /// whose socket stays full that long is dropped.
    pub write_timeout: Duration,
    /// Most bytes queued for one member, not yet written to its socket
    /// (default 1 MiB). A member that falls this far behind (it does not
    /// read) is dropped; nobody waits on it.
    pub member_queue_bytes: usize,
    /// Most messages queued for one member (default 256); likewise.
    pub member_queue_messages: usize,
}

impl Default for SignalingOptions {
    fn default() -> Self {
        SignalingOptions {
            max_peers_per_room: 16,
            messages_per_second: 50,
            max_message: 64 * 1024,
            max_rooms: 10_000,
            max_connections: 10_000,
            max_connections_per_ip: 32,
            join_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            member_queue_bytes: 1024 * 1024,
            member_queue_messages: 256,
        }
    }
}

/// A joined member, as the others reach it.
struct Member {
    conn: u64,
    tx: mpsc::Sender<String>,
    /// Bytes in `tx` not yet written.
    queued: Arc<AtomicUsize>,
    /// Cancelled to drop the member (it fell behind, or was replaced).
    kick: CancellationToken,
}

impl Member {
    /// Queue `text` for the member without waiting; a member whose queue is
    /// full is dropped instead.
    fn deliver(&self, text: String, max_bytes: usize) {
        let len = text.len();
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        if before.saturating_add(len) > max_bytes || self.tx.try_send(text).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            if !self.kick.is_cancelled() {
                warn!(conn = self.conn, "a member fell behind; dropping it");
            }
            self.kick.cancel();
        }
    }
}

struct Room {
    members: HashMap<PeerId, Member>,
}

struct Shared {
    opts: SignalingOptions,
    rooms: Mutex<HashMap<RoomCode, Room>>,
    next_conn: AtomicU64,
    connections: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    cancel: CancellationToken,
}

/// One connection's place in the caps; given back on drop.
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// The address a connection counts against: IPv4 as is, IPv6 by /64 (one
/// host usually holds a whole /64).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

impl Shared {
    /// Take a slot for a connection from `ip`, or `None` over a cap.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = ip_key(ip);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.connections.load(Ordering::Acquire) >= self.opts.max_connections {
            return None;
        }
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.opts.max_connections_per_ip {
            return None;
        }
        *n += 1;
        self.connections.fetch_add(1, Ordering::AcqRel);
        Some(Slot {
            shared: self.clone(),
            ip,
        })
    }
}

/// A signaling server. Dropping it stops it.
#[derive(Debug)]
pub struct SignalingServer {
    addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Drop for SignalingServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn json(msg: &WireSignal) -> String {
    serde_json::to_string(msg).unwrap_or_default()
}

fn error(code: &str, message: impl Into<String>) -> String {
    json(&WireSignal::Error {
        code: code.to_owned(),
        message: message.into(),
    })
}

impl SignalingServer {
    /// Listen on `addr` (port 0 picks one). Must be called inside a tokio
    /// runtime.
    pub async fn bind(addr: SocketAddr, opts: SignalingOptions) -> Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let shared = Arc::new(Shared {
            opts,
            rooms: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            cancel: cancel.clone(),
        });
        info!(%addr, "cairn signaling server listening");
        let t2 = tracker.clone();
        tracker.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shared.cancel.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((tcp, remote)) = accepted else {
                    // Out of file descriptors, most likely: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let Some(slot) = shared.admit(remote.ip()) else {
                    debug!(%remote, "connection cap reached; refusing");
                    drop(tcp);
                    continue;
                };
                let s = shared.clone();
                t2.spawn(async move {
                    if let Err(e) = serve(tcp, &s).await {
                        debug!(%remote, error = %e, "signaling connection ended");
                    }
                    drop(slot);
                });
            }
        });
        Ok(SignalingServer {
            addr,
            cancel,
            tracker,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://addr`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Close every connection and stop.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        info!(addr = %self.addr, "cairn signaling server stopped");
    }
}

fn io(e: impl std::fmt::Display) -> Error {
    Error::backend("signaling", true, std::io::Error::other(e.to_string()))
}

type Ws = WebSocketStream<TcpStream>;

/// Why a connection is being closed, as told to the client.
struct Refusal {
    code: &'static str,
    message: String,
    close: CloseCode,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            close: CloseCode::Policy,
        }
    }
}

/// Tell the client why, close, and never wait on it longer than the write
/// deadline.
async fn refuse(ws: &mut Ws, r: Refusal, write_timeout: Duration) -> Error {
    let msg = format!("{}: {}", r.code, r.message);
    let _ = tokio::time::timeout(write_timeout, async {
        ws.send(WsMessage::text(error(r.code, r.message))).await?;
        ws.send(WsMessage::Close(Some(CloseFrame {
            code: r.close,
            reason: r.code.into(),
        })))
        .await
    })
    .await;
    io(msg)
}

fn too_large(max: usize) -> Refusal {
    Refusal {
        code: "too_large",
        message: format!("messages are limited to {max} bytes"),
        close: CloseCode::Size,
    }
}

/// What a read from a client gave.
enum Read {
    Text(String),
    Other,
    Closed,
    TooLarge,
    Failed(WsError),
}

fn classify(m: Option<std::result::Result<WsMessage, WsError>>) -> Read {
    match m {
        Some(Ok(WsMessage::Text(t))) => Read::Text(t.as_str().to_owned()),
        Some(Ok(WsMessage::Close(_))) | None => Read::Closed,
        Some(Ok(_)) => Read::Other,
        Some(Err(WsError::Capacity(
            CapacityError::MessageTooLong { .. } | CapacityError::TooManyHeaders,
        ))) => Read::TooLarge,
        Some(Err(e)) => Read::Failed(e),
    }
}

/// From TCP accept to a verified join: upgrade, challenge, signed join.
async fn handshake(tcp: TcpStream, s: &Shared) -> Result<(Ws, RoomCode, PeerId)> {
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(s.opts.max_message);
    cfg.max_frame_size = Some(s.opts.max_message);
    // What waits for a slow reader is bounded too (a frame and a message).
    cfg.max_write_buffer_size = s.opts.max_message.saturating_mul(2).max(256 * 1024);
    let mut ws = tokio_tungstenite::accept_async_with_config(tcp, Some(cfg))
        .await
        .map_err(io)?;
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(io)?;
    let challenge = json(&WireSignal::Challenge {
        nonce: hex::encode(nonce),
    });
    ws.send(WsMessage::text(challenge)).await.map_err(io)?;
    let text = loop {
        match classify(ws.next().await) {
            Read::Text(t) => break t,
            Read::Other => continue,
            Read::Closed => return Err(io("closed before joining")),
            Read::TooLarge => {
                return Err(
                    refuse(&mut ws, too_large(s.opts.max_message), s.opts.write_timeout).await,
                );
            }
            Read::Failed(e) => return Err(io(e)),
        }
    };
    let wt = s.opts.write_timeout;
    let Ok(WireSignal::Join {
        room,
        peer,
        signature,
    }) = serde_json::from_str::<WireSignal>(&text)
    else {
        let r = Refusal::new("bad_request", "expected a join answering the challenge");
        return Err(refuse(&mut ws, r, wt).await);
    };
    let (room, peer) = match (room.parse::<RoomCode>(), peer.parse::<PeerId>()) {
        (Ok(r), Ok(p)) => (r, p),
        _ => {
            let r = Refusal::new("bad_request", "bad room code or peer id");
            return Err(refuse(&mut ws, r, wt).await);
        }
    };
    let sig: Option<[u8; 64]> = hex::decode(&signature).ok().and_then(|b| b.try_into().ok());
    let verified = match (sig, peer.verifying_key()) {
        (Some(sig), Some(key)) => key
            .verify_strict(
                &join_transcript(&nonce, &room),
                &Signature::from_bytes(&sig),
            )
            .is_ok(),
        _ => false,
    };
    if !verified {
        warn!(%room, %peer, "join refused: the signature does not prove the peer id");
        let r = Refusal::new(
            "bad_signature",
            format!("the join signature does not verify for peer {peer} and this challenge"),
        );
        return Err(refuse(&mut ws, r, wt).await);
    }
    Ok((ws, room, peer))
}

async fn serve(tcp: TcpStream, s: &Arc<Shared>) -> Result<()> {
    let hs = tokio::select! {
        _ = s.cancel.cancelled() => return Ok(()),
        r = tokio::time::timeout(s.opts.join_timeout, handshake(tcp, s)) => r,
    };
    let (mut ws, room, peer) = match hs {
        Ok(r) => r?,
        Err(_) => {
            return Err(io(format!(
                "no verified join within {:?}",
                s.opts.join_timeout
            )));
        }
    };
    let wt = s.opts.write_timeout;
    let conn = s.next_conn.fetch_add(1, Ordering::AcqRel);
    let (tx, mut rx) = mpsc::channel::<String>(s.opts.member_queue_messages.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    let kick = CancellationToken::new();
    // Join under the lock; answer outside it.
    let joined: std::result::Result<Vec<String>, Refusal> = {
        let mut rooms = s.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let full = rooms.len() >= s.opts.max_rooms;
        match rooms.get_mut(&room) {
            Some(r)
                if r.members.len() >= s.opts.max_peers_per_room
                    && !r.members.contains_key(&peer) =>
            {
                Err(Refusal::new(
                    "room_full",
                    format!(
                        "room {room} is full: at most {} peers per room",
                        s.opts.max_peers_per_room
                    ),
                ))
            }
            None if full => Err(Refusal::new(
                "room_full",
                format!("too many rooms: at most {}", s.opts.max_rooms),
            )),
            r => {
                let r = match r {
                    Some(r) => r,
                    None => rooms.entry(room.clone()).or_insert(Room {
                        members: HashMap::new(),
                    }),
                };
                let others: Vec<String> = r
                    .members
                    .keys()
                    .filter(|p| **p != peer)
                    .map(|p| p.to_hex())
                    .collect();
                let note = json(&WireSignal::Joined {
                    peer: peer.to_hex(),
                });
                for (p, m) in &r.members {
                    if *p != peer {
                        m.deliver(note.clone(), s.opts.member_queue_bytes);
                    }
                }
                // A rejoin (it proved the id again) replaces the old
                // connection.
                let old = r.members.insert(
                    peer,
                    Member {
                        conn,
                        tx: tx.clone(),
                        queued: queued.clone(),
                        kick: kick.clone(),
                    },
                );
                if let Some(old) = old {
                    old.kick.cancel();
                }
                Ok(others)
            }
        }
    };
    drop(tx);
    let others = match joined {
        Ok(o) => o,
        Err(refusal) => {
            warn!(%room, %peer, code = refusal.code, "join refused");
            return Err(refuse(&mut ws, refusal, wt).await);
        }
    };
    debug!(%room, %peer, present = others.len(), "peer joined");
    let welcome = json(&WireSignal::Welcome { peers: others });
    let r = match tokio::time::timeout(wt, ws.send(WsMessage::text(welcome))).await {
        Ok(Ok(())) => member(&mut ws, s, &room, peer, &mut rx, &queued, &kick).await,
        Ok(Err(e)) => Err(io(e)),
        Err(_) => Err(io("welcome not written in time")),
    };
    // Leave: forget the member (if not replaced) and the room when empty.
    {
        let mut rooms = s.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let mut empty = false;
        if let Some(r) = rooms.get_mut(&room) {
            if r.members.get(&peer).is_some_and(|m| m.conn == conn) {
                r.members.remove(&peer);
                let note = json(&WireSignal::Left {
                    peer: peer.to_hex(),
                });
                for m in r.members.values() {
                    m.deliver(note.clone(), s.opts.member_queue_bytes);
                }
            }
            empty = r.members.is_empty();
        }
        if empty {
            rooms.remove(&room);
        }
    }
    debug!(%room, %peer, "peer left");
    match &r {
        // Dropped for falling behind or going quiet: its socket may be
        // full, so do not wait on a closing handshake.
        Err(_) => {}
        Ok(()) => {
            let _ = tokio::time::timeout(wt, ws.close(None)).await;
        }
    }
    r
}

/// A joined member's loop: relay its signals, write what is queued for it,
/// ping it when quiet, and drop it when it is too slow or silent.
async fn member(
    ws: &mut Ws,
    s: &Arc<Shared>,
    room: &RoomCode,
    peer: PeerId,
    rx: &mut mpsc::Receiver<String>,
    queued: &AtomicUsize,
    kick: &CancellationToken,
) -> Result<()> {
    let wt = s.opts.write_timeout;
    let idle = s.opts.idle_timeout;
    let rate = f64::from(s.opts.messages_per_second.max(1));
    let mut tokens = rate;
    let mut last = Instant::now();
    let mut heard = Instant::now();
    let mut pinged = false;
    loop {
        let wake = if pinged {
            heard + idle
        } else {
            heard + idle / 2
        };
        // Every write below also ends when the member is dropped.
        let out: Option<WsMessage> = tokio::select! {
            _ = s.cancel.cancelled() => return Ok(()),
            _ = kick.cancelled() => return Err(io("dropped: fell behind, or replaced by a rejoin")),
            _ = tokio::time::sleep_until(wake) => {
                if pinged {
                    return Err(io(format!("silent for {idle:?}")));
                }
                pinged = true;
                Some(WsMessage::Ping(Default::default()))
            }
            m = rx.recv() => {
                let Some(text) = m else { return Ok(()) };
                queued.fetch_sub(text.len(), Ordering::AcqRel);
                Some(WsMessage::text(text))
            }
            m = ws.next() => {
                heard = Instant::now();
                pinged = false;
                match classify(m) {
                    Read::Text(text) => relay(s, room, peer, &text, &mut tokens, &mut last, rate),
                    Read::Other => None,
                    Read::Closed => return Ok(()),
                    Read::TooLarge => {
                        return Err(refuse(ws, too_large(s.opts.max_message), wt).await);
                    }
                    Read::Failed(e) => return Err(io(e)),
                }
            }
        };
        let Some(out) = out else { continue };
        tokio::select! {
            _ = kick.cancelled() => return Err(io("dropped while writing")),
            w = tokio::time::timeout(wt, ws.send(out)) => match w {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(io(e)),
                Err(_) => return Err(io(format!("a write took longer than {wt:?}"))),
            },
        }
    }
}

/// Handle one message from a member: forward a signal to its recipient's
/// queue; returns the reply for the member itself, if any.
fn relay(
    s: &Shared,
    room: &RoomCode,
    peer: PeerId,
    text: &str,
    tokens: &mut f64,
    last: &mut Instant,
    rate: f64,
) -> Option<WsMessage> {
    let now = Instant::now();
    *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
    *last = now;
    if *tokens < 1.0 {
        return Some(WsMessage::text(error("rate_limited", "too many messages")));
    }
    *tokens -= 1.0;
    let Ok(WireSignal::Signal {
        to: Some(to), data, ..
    }) = serde_json::from_str::<WireSignal>(text)
    else {
        return Some(WsMessage::text(error("bad_request", "expected a signal")));
    };
    let fwd = json(&WireSignal::Signal {
        to: None,
        from: Some(peer.to_hex()),
        data,
    });
    let rooms = s.rooms.lock().unwrap_or_else(|e| e.into_inner());
    let target = to
        .parse::<PeerId>()
        .ok()
        .and_then(|to| rooms.get(room).and_then(|r| r.members.get(&to)));
    match target {
        Some(m) => {
            m.deliver(fwd, s.opts.member_queue_bytes);
            None
        }
        None => Some(WsMessage::text(error(
            "unknown_peer",
            format!("no peer {to} in room {room}"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1"
            .parse()
            .unwrap_or(IpAddr::from([0; 4]));
        let b: IpAddr = "2001:db8:1:2:bbbb::2"
            .parse()
            .unwrap_or(IpAddr::from([0; 4]));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(ip_key(mapped), IpAddr::from([192, 0, 2, 7]));
    }
}
