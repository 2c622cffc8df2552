//! [`SignalingServer`]: rooms over WebSocket. It relays offers and answers
//! between the peers of a room and tells who is present; it stores
//! nothing (a room lives while someone is in it) and never sees the data,
//! which flows peer to peer over DTLS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::{Error, Result};
use cairn_protocol::PeerId;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::signal::{RoomCode, WireSignal};

/// Limits of a [`SignalingServer`].
#[derive(Debug, Clone)]
pub struct SignalingOptions {
    /// Most peers in one room (default 16).
    pub max_peers_per_room: usize,
    /// Most messages a client may send per second (default 50; a burst of
    /// as many is allowed). Over it, messages are dropped with a
    /// `rate_limited` error.
    pub messages_per_second: u32,
    /// Largest message accepted (default 64 KiB).
    pub max_message: usize,
    /// Most rooms at once (default 10 000).
    pub max_rooms: usize,
    /// Most connections at once (default 10 000).
    pub max_connections: usize,
    /// How long a new connection has to join (default 10 s).
    pub join_timeout: Duration,
}

impl Default for SignalingOptions {
    fn default() -> Self {
        SignalingOptions {
            max_peers_per_room: 16,
            messages_per_second: 50,
            max_message: 64 * 1024,
            max_rooms: 10_000,
            max_connections: 10_000,
            join_timeout: Duration::from_secs(10),
        }
    }
}

struct Member {
    conn: u64,
    tx: mpsc::UnboundedSender<String>,
}

struct Room {
    verifier: Option<String>,
    members: HashMap<PeerId, Member>,
}

struct Shared {
    opts: SignalingOptions,
    rooms: Mutex<HashMap<RoomCode, Room>>,
    next_conn: AtomicU64,
    connections: AtomicU64,
    cancel: CancellationToken,
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
            connections: AtomicU64::new(0),
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
                    continue;
                };
                if shared.connections.load(Ordering::Acquire) >= shared.opts.max_connections as u64
                {
                    warn!(%remote, "connection limit reached; refusing");
                    continue;
                }
                shared.connections.fetch_add(1, Ordering::AcqRel);
                let s = shared.clone();
                t2.spawn(async move {
                    if let Err(e) = serve(tcp, &s).await {
                        debug!(%remote, error = %e, "signaling connection ended");
                    }
                    s.connections.fetch_sub(1, Ordering::AcqRel);
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

async fn serve(tcp: TcpStream, s: &Arc<Shared>) -> Result<()> {
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(s.opts.max_message);
    cfg.max_frame_size = Some(s.opts.max_message);
    let mut ws = tokio_tungstenite::accept_async_with_config(tcp, Some(cfg))
        .await
        .map_err(io)?;
    let first = tokio::select! {
        _ = s.cancel.cancelled() => return Ok(()),
        f = tokio::time::timeout(s.opts.join_timeout, ws.next()) => f,
    };
    let Ok(Some(Ok(WsMessage::Text(text)))) = first else {
        return Err(io("no join"));
    };
    let Ok(WireSignal::Join {
        room,
        peer,
        password,
    }) = serde_json::from_str::<WireSignal>(text.as_str())
    else {
        let _ = ws
            .send(WsMessage::text(error("bad_request", "expected a join")))
            .await;
        return Err(io("bad join"));
    };
    let (room, peer) = match (room.parse::<RoomCode>(), peer.parse::<PeerId>()) {
        (Ok(r), Ok(p)) => (r, p),
        _ => {
            let _ = ws
                .send(WsMessage::text(error(
                    "bad_request",
                    "bad room code or peer id",
                )))
                .await;
            return Err(io("bad join"));
        }
    };
    let conn = s.next_conn.fetch_add(1, Ordering::AcqRel);
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    // Join under the lock; answer outside it.
    let joined: std::result::Result<Vec<String>, String> = {
        let mut rooms = s.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let full = rooms.len() >= s.opts.max_rooms;
        match rooms.get_mut(&room) {
            Some(r) if r.verifier != password => {
                Err(error("wrong_password", "wrong room password"))
            }
            Some(r)
                if r.members.len() >= s.opts.max_peers_per_room
                    && !r.members.contains_key(&peer) =>
            {
                Err(error(
                    "room_full",
                    format!("at most {} peers per room", s.opts.max_peers_per_room),
                ))
            }
            None if full => Err(error("room_full", "too many rooms")),
            r => {
                let r = match r {
                    Some(r) => r,
                    None => rooms.entry(room.clone()).or_insert(Room {
                        verifier: password,
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
                        let _ = m.tx.send(note.clone());
                    }
                }
                // A rejoin replaces the old connection.
                r.members.insert(
                    peer,
                    Member {
                        conn,
                        tx: tx.clone(),
                    },
                );
                Ok(others)
            }
        }
    };
    drop(tx);
    let others = match joined {
        Ok(o) => o,
        Err(refusal) => {
            warn!(%room, %peer, "join refused");
            let _ = ws.send(WsMessage::text(refusal)).await;
            let _ = ws.close(None).await;
            return Err(io("join refused"));
        }
    };
    debug!(%room, %peer, present = others.len(), "peer joined");
    ws.send(WsMessage::text(json(&WireSignal::Welcome {
        peers: others,
    })))
    .await
    .map_err(io)?;
    let rate = f64::from(s.opts.messages_per_second.max(1));
    let mut tokens = rate;
    let mut last = Instant::now();
    let r = loop {
        tokio::select! {
            _ = s.cancel.cancelled() => break Ok(()),
            m = rx.recv() => {
                let Some(text) = m else { break Ok(()) };
                if let Err(e) = ws.send(WsMessage::text(text)).await {
                    break Err(io(e));
                }
            }
            m = ws.next() => {
                let text = match m {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Close(_))) | None => break Ok(()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Err(io(e)),
                };
                let now = Instant::now();
                tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(rate);
                last = now;
                if tokens < 1.0 {
                    let _ = ws.send(WsMessage::text(error("rate_limited", "too many messages"))).await;
                    continue;
                }
                tokens -= 1.0;
                let Ok(WireSignal::Signal { to: Some(to), data, .. }) = serde_json::from_str::<WireSignal>(text.as_str()) else {
                    let _ = ws.send(WsMessage::text(error("bad_request", "expected a signal"))).await;
                    continue;
                };
                let target = to.parse::<PeerId>().ok().and_then(|to| {
                    let rooms = s.rooms.lock().unwrap_or_else(|e| e.into_inner());
                    rooms.get(&room).and_then(|r| r.members.get(&to)).map(|m| m.tx.clone())
                });
                let fwd = json(&WireSignal::Signal { to: None, from: Some(peer.to_hex()), data });
                match target {
                    Some(t) => { let _ = t.send(fwd); }
                    None => { let _ = ws.send(WsMessage::text(error("unknown_peer", "no such peer in the room"))).await; }
                }
            }
        }
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
                    let _ = m.tx.send(note.clone());
                }
            }
            empty = r.members.is_empty();
        }
        if empty {
            rooms.remove(&room);
        }
    }
    debug!(%room, %peer, "peer left");
    let _ = ws.close(None).await;
    r
}
