//! The Cairn protocol over one data channel, in both directions at once
//! (a [`Session`] once the handshake is done).
//!
//! The auth messages (and room proofs) are those of `auth.rs`. After the auth messages each side sends one `HELLO`
//! (its store id, capabilities, head, frame limit) or an `ERROR` with id 0
//! (refused) and closes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn::{DynAppendOnlyStore, Error, Keypair, Result, StoreId};
pub(crate) use cairn_protocol::Delivered;
use cairn_protocol::{
    AccessPolicy, Call, FrameDecoder, MIN_MAX_FRAME, Message, Permission, Request, Response,
    ServeOptions, Session, SessionConfig, SessionPeer, check_hello, encode, error_reply,
    server_hello,
};
use tracing::{debug, warn};

use crate::auth::{
    ROLE_ROOM, RoomKey, auth_message, is_room_proof, no_room_key, room_proof, verify_auth,
    verify_room_proof,
};
use crate::rtc::Channel;

/// Settings of a connection.
#[derive(Clone)]
pub(crate) struct ConnConfig {
    pub(crate) keypair: Keypair,
    pub(crate) roles: u8,
    pub(crate) store: Arc<DynAppendOnlyStore>,
    pub(crate) serve: ServeOptions,
    pub(crate) policy: Arc<dyn AccessPolicy>,
    pub(crate) max_frame: u32,
    pub(crate) max_message: u64,
    pub(crate) handshake_timeout: Duration,
    /// How long a request waits for its answer (plus a second per MiB it
    /// carries) before it fails with a timeout.
    pub(crate) request_timeout: Duration,
    /// The room key both sides must prove (a password room), if any.
    pub(crate) room_key: Option<RoomKey>,
    /// Changes not to notify the peer of, because our outbox delivers them
    /// to it anyway (without this, a local append would travel twice: once
    /// delivered, once fetched after the notification).
    pub(crate) delivered: Option<Delivered>,
}

/// One authenticated, greeted connection: a [`Session`], and the roles the
/// peer claimed in its auth message.
pub(crate) struct Conn {
    session: Arc<Session>,
    /// The peer's roles (auth message).
    pub(crate) roles: u8,
    /// The (local, remote) addresses ICE chose, if known.
    pub(crate) path: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
}

impl std::ops::Deref for Conn {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("peer", &self.peer()).finish()
    }
}

#[async_trait]
impl Call for Conn {
    async fn call(&self, request: Request) -> Result<Response> {
        self.session.call(request).await
    }
}

fn closed() -> Error {
    Error::Closed
}

async fn next_msg(
    ch: &mut Channel,
    dec: &mut FrameDecoder,
    deadline: tokio::time::Instant,
) -> Result<Message> {
    loop {
        if let Some(m) = dec.pop()? {
            return Ok(m);
        }
        match tokio::time::timeout_at(deadline, ch.rx.recv()).await {
            Ok(Some(bytes)) => dec.push(&bytes),
            Ok(None) => return Err(closed()),
            Err(_) => {
                return Err(Error::backend(
                    "webrtc",
                    true,
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"),
                ));
            }
        }
    }
}

/// Longest a refusing side keeps the channel open for its refusal to be read.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Send a refusal (an `ERROR` with id 0), then keep the channel open until
/// the peer hangs up or a short linger passes. Closing at once can tear the
/// connection down before the refusal is delivered, and the peer would see
/// a timeout instead of the reason.
async fn refuse(ch: &mut Channel, e: &Error, deadline: tokio::time::Instant) {
    if ch.tx.send(error_reply(0, e, MIN_MAX_FRAME)).await.is_err() {
        return;
    }
    let until = deadline.min(tokio::time::Instant::now() + REFUSAL_LINGER);
    // Bounded by `until`; ends early when the peer closes the channel.
    while let Ok(Some(_)) = tokio::time::timeout_at(until, ch.rx.recv()).await {}
}

impl Conn {
    /// Authenticate both ways, check the policy, exchange hellos, then serve
    /// and route in a background task.
    pub(crate) async fn establish(mut ch: Channel, cfg: ConnConfig) -> Result<Arc<Conn>> {
        let deadline = tokio::time::Instant::now() + cfg.handshake_timeout;
        // A session whose SDP was sent for a password room must prove the
        // room key both ways (auth.rs).
        let room = cfg.room_key.clone();
        let auth = auth_message(
            &cfg.keypair,
            cfg.roles,
            &ch.local_fp,
            &ch.remote_fp,
            room.is_some(),
        );
        ch.tx.send(auth).await.map_err(|_| closed())?;
        let first = match tokio::time::timeout_at(deadline, ch.rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(closed()),
            Err(_) => {
                return Err(Error::Unauthorized {
                    reason: "the peer did not authenticate in time".into(),
                });
            }
        };
        let (peer, roles) = match verify_auth(&first, &ch.local_fp, &ch.remote_fp) {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "peer failed authentication");
                refuse(&mut ch, &e, deadline).await;
                return Err(e);
            }
        };
        let store_id: StoreId = cfg.store.store_id().clone();
        let perm = cfg.policy.permission(&peer, &store_id);
        if perm == Permission::None {
            let e = Error::Unauthorized {
                reason: format!("peer {peer} may not access store {store_id}"),
            };
            warn!(%peer, store = %store_id, "refusing a peer the policy does not allow");
            refuse(&mut ch, &e, deadline).await;
            return Err(e);
        }
        // Our room proof goes only to a peer that proved its id, that the
        // policy admits, and that holds a room key too.
        if let Some(k) = &room {
            if roles & ROLE_ROOM == 0 {
                let e = no_room_key(&peer);
                warn!(%peer, "refusing a peer without the room password");
                refuse(&mut ch, &e, deadline).await;
                return Err(e);
            }
            ch.tx
                .send(room_proof(k, &ch.local_fp, &ch.remote_fp))
                .await
                .map_err(|_| closed())?;
        }
        let mine = server_hello(&*cfg.store, cfg.max_frame).await?;
        ch.tx
            .send(encode(&Message::Hello(mine), MIN_MAX_FRAME)?)
            .await
            .map_err(|_| closed())?;
        let mut dec = FrameDecoder::new(cfg.max_frame).with_max_message(cfg.max_message);
        // The peer's room proof, if it said it would send one: alone in the
        // next message. Anything else (its refusal, most likely) is framed.
        let mut proven = room.is_none();
        if roles & ROLE_ROOM != 0 {
            let next = match tokio::time::timeout_at(deadline, ch.rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(closed()),
                Err(_) => {
                    return Err(Error::Unauthorized {
                        reason: format!("peer {peer} sent no room password proof in time"),
                    });
                }
            };
            if is_room_proof(&next) {
                if let Some(k) = &room {
                    if let Err(e) = verify_room_proof(k, &next, &ch.local_fp, &ch.remote_fp, &peer)
                    {
                        warn!(%peer, error = %e, "refusing a peer with the wrong room password");
                        refuse(&mut ch, &e, deadline).await;
                        return Err(e);
                    }
                    proven = true;
                }
            } else {
                dec.push(&next);
            }
        }
        let hello = next_msg(&mut ch, &mut dec, deadline)
            .await
            .and_then(|m| check_hello(m, Some(&store_id)));
        let hello = match hello {
            Ok(h) if !proven => {
                drop(h);
                let e = Error::Unauthorized {
                    reason: format!("peer {peer} did not send its room password proof"),
                };
                refuse(&mut ch, &e, deadline).await;
                return Err(e);
            }
            Ok(h) => h,
            Err(e) => {
                debug!(%peer, error = %e, "handshake refused");
                if !matches!(e, Error::Unauthorized { .. } | Error::Closed) {
                    refuse(&mut ch, &e, deadline).await;
                }
                return Err(e);
            }
        };
        let session_cfg = SessionConfig {
            transport: "webrtc",
            store: Some(cfg.store),
            serve: cfg.serve,
            request_timeout: cfg.request_timeout,
            delivered: cfg.delivered,
        };
        let peer = SessionPeer { peer, perm, hello };
        let path = ch.path;
        let session = Session::start(ch.tx, ch.rx, dec, peer, session_cfg);
        let conn = Arc::new(Conn {
            session,
            roles,
            path,
        });
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::auth::{AUTH_LEN, ROLE_CALLS, ROLE_SERVES, RoomKey};
    use crate::signal::RoomCode;
    use cairn_protocol::Acl;
    use tokio::sync::mpsc;

    /// A channel pair over memory, with made-up fingerprints; returns ours
    /// (for `establish`) and the far end's halves.
    fn pipe(
        local_fp: Vec<u8>,
        remote_fp: Vec<u8>,
    ) -> (Channel, mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
        let (to_us, rx) = mpsc::channel(16);
        let (tx, from_us) = mpsc::channel(16);
        (
            Channel {
                tx,
                rx,
                local_fp,
                remote_fp,
                path: None,
            },
            to_us,
            from_us,
        )
    }

    #[tokio::test]
    async fn a_peer_the_acl_refuses_gets_no_room_proof() {
        // We are in a password room and let only `friend` in; `stranger`
        // (say, a signaling operator in the middle) knows no password and
        // claims to hold a room key, hoping for our proof to test guesses on.
        let (ours, theirs) = (vec![7u8; 32], vec![9u8; 32]);
        let room: RoomCode = "ABC-DEF".parse().unwrap();
        let key = RoomKey::derive(&room, "secret").unwrap();
        let me = Keypair::generate();
        let (friend, stranger) = (Keypair::generate(), Keypair::generate());
        let sid = StoreId::new("t").unwrap();
        let store = Arc::new(cairn_memory::MemoryStore::new(sid.clone()));
        let policy = Acl::new().allow(&sid, friend.author(), Permission::ReadWrite);
        let cfg = ConnConfig {
            keypair: me.clone(),
            roles: ROLE_SERVES | ROLE_CALLS,
            store,
            serve: ServeOptions::default(),
            policy: Arc::new(policy),
            max_frame: MIN_MAX_FRAME,
            max_message: 1 << 20,
            handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            room_key: Some(key),
            delivered: None,
        };
        let (ch, to_us, mut from_us) = pipe(ours.clone(), theirs.clone());
        let task = tokio::spawn(Conn::establish(ch, cfg));
        to_us
            .send(auth_message(&stranger, ROLE_CALLS, &theirs, &ours, true))
            .await
            .unwrap();
        let our_auth = from_us.recv().await.unwrap();
        assert_eq!(our_auth.len(), AUTH_LEN);
        // Next: the refusal, never a proof.
        let next = tokio::time::timeout(Duration::from_secs(5), from_us.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!is_room_proof(&next), "a refused peer got our room proof");
        drop(to_us);
        let e = task.await.unwrap().unwrap_err();
        assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    }
}
