//! The Cairn protocol over one data channel, in both directions at once.
//!
//! On a single ordered channel every frame shares the channel and the
//! message type tells the halves apart: requests (`0x10..=0x1D`) go to this
//! side's server half, responses and `NOTIFY` to its client half (the
//! [`Correlator`]). The auth messages (and room proofs) are those of
//! `auth.rs`. After the auth messages each side sends one `HELLO`
//! (its store id, capabilities, head, frame limit) or an `ERROR` with id 0
//! (refused) and closes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn::{ChangeMeta, DynAppendOnlyStore, Error, Keypair, Result, StoreId};
use cairn_protocol::{
    AccessPolicy, Call, Correlator, FrameDecoder, FrameEncoder, Hello, Incoming, MIN_MAX_FRAME,
    Message, PeerId, Permission, Request, Response, ServeOptions, WireError, check_hello, dispatch,
    encode, error_reply, server_hello,
};
use futures::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::auth::{
    ROLE_ROOM, RoomKey, auth_message, is_room_proof, no_room_key, room_proof, verify_auth,
    verify_room_proof,
};
use crate::rtc::Channel;

type Waiter = oneshot::Sender<Result<Response>>;

/// Most requests from the peer served at once.
const MAX_CONCURRENT: usize = 64;
/// Most subscriptions served to the peer at once (they do not take request
/// permits).
const MAX_SERVED_SUBSCRIPTIONS: usize = 8;
/// Largest frame we send (1 MiB), whatever the peer accepts.
const SEND_FRAME: u32 = 1 << 20;
/// Most notification batches queued for one of our subscriptions; a
/// subscriber that falls this far behind is dropped with an error (its
/// session catches up again by syncing).
const SUBSCRIPTION_QUEUE: usize = 64;
/// Most metadata records per notification.
const NOTIFY_BATCH: usize = 1024;

/// What one of our subscriptions receives: batches, or the error that ended
/// it.
pub(crate) type SubItem = Result<Vec<ChangeMeta>>;

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

/// Whether our outbox delivers a change to a peer (see
/// [`ConnConfig::delivered`]).
pub(crate) type Delivered = Arc<dyn Fn(&PeerId, &cairn::ChangeId) -> bool + Send + Sync>;

/// One authenticated, greeted connection.
pub(crate) struct Conn {
    out: mpsc::Sender<Vec<u8>>,
    corr: Mutex<Correlator<Waiter>>,
    subs: Mutex<HashMap<u32, mpsc::Sender<SubItem>>>,
    request_timeout: Duration,
    /// See [`ConnConfig::delivered`].
    delivered: Option<Delivered>,
    /// The peer's proven id.
    pub(crate) peer: PeerId,
    /// The peer's roles (auth message).
    pub(crate) roles: u8,
    /// What our policy lets the peer do.
    pub(crate) perm: Permission,
    /// The peer's hello.
    pub(crate) hello: Hello,
    /// Cancelled when the connection is gone.
    pub(crate) closed: CancellationToken,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("peer", &self.peer).finish()
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

/// Send `msg` as frames of at most `limit` bytes, one byte string per frame:
/// the sender holds the message and one frame, and the channel's bound
/// gives backpressure. Frames of other messages may come between them.
async fn send_message(out: &mpsc::Sender<Vec<u8>>, msg: &Message, limit: u32) -> Result<()> {
    for frame in FrameEncoder::new(msg, limit) {
        out.send(frame?).await.map_err(|_| closed())?;
    }
    Ok(())
}

/// Send the response to request `id`, frame by frame; a response that
/// cannot be framed at all becomes its error response.
async fn send_response(
    out: &mpsc::Sender<Vec<u8>>,
    id: u32,
    body: Response,
    limit: u32,
) -> Result<()> {
    let msg = Message::Response { id, body };
    let mut frames = FrameEncoder::new(&msg, limit);
    match frames.next() {
        Some(Ok(first)) => out.send(first).await.map_err(|_| closed())?,
        Some(Err(e)) => {
            return out
                .send(error_reply(id, &e, limit))
                .await
                .map_err(|_| closed());
        }
        None => return Ok(()),
    }
    for frame in frames {
        out.send(frame?).await.map_err(|_| closed())?;
    }
    Ok(())
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
        let conn = Arc::new(Conn {
            out: ch.tx.clone(),
            corr: Mutex::new(Correlator::new()),
            subs: Mutex::new(HashMap::new()),
            peer,
            roles,
            perm,
            hello,
            closed: CancellationToken::new(),
            request_timeout: cfg.request_timeout,
            delivered: cfg.delivered.clone(),
        });
        tokio::spawn(read_loop(conn.clone(), ch, dec, cfg));
        Ok(conn)
    }

    /// The frame limit to send with: the peer's, but at most
    /// [`SEND_FRAME`]. Frames wait in a queue of a few entries on their way
    /// to the data channel; small frames keep what waits there small
    /// (bigger items travel split, as they would over any limit).
    pub(crate) fn send_limit(&self) -> u32 {
        self.hello.max_frame.clamp(MIN_MAX_FRAME, SEND_FRAME)
    }

    /// Close the connection.
    pub(crate) fn close(&self) {
        self.closed.cancel();
    }

    /// Subscribe to the peer's new changes. The receiver gets batches, and
    /// an error if the peer ends the subscription with one or we fall too
    /// far behind.
    pub(crate) async fn subscribe(&self) -> Result<mpsc::Receiver<SubItem>> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
        let (wtx, wrx) = oneshot::channel();
        let msg = {
            let mut c = self.corr.lock().unwrap_or_else(|e| e.into_inner());
            c.request(Request::Subscribe, wtx)
        };
        let id = msg.id();
        self.subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        // The correlator only lets a DONE answer through as success.
        match self.send_and_wait(msg, wrx, Duration::ZERO).await {
            Ok(_done) => Ok(rx),
            Err(e) => {
                self.subs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Err(e)
            }
        }
    }

    /// Send `msg` and wait for its answer, at most the request timeout plus
    /// `extra`.
    async fn send_and_wait(
        &self,
        msg: Message,
        wrx: oneshot::Receiver<Result<Response>>,
        extra: Duration,
    ) -> Result<Response> {
        let id = msg.id();
        let name = match &msg {
            Message::Request { body, .. } => body.name(),
            _ => "message",
        };
        if self.closed.is_cancelled() {
            self.corr
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cancel(id);
            return Err(closed());
        }
        if let Err(e) = send_message(&self.out, &msg, self.send_limit()).await {
            self.corr
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cancel(id);
            if matches!(e, Error::Closed) {
                self.close();
            }
            return Err(e);
        }
        drop(msg);
        let limit = self.request_timeout + extra;
        tokio::select! {
            r = wrx => r.unwrap_or_else(|_| Err(closed())),
            _ = self.closed.cancelled() => Err(closed()),
            _ = tokio::time::sleep(limit) => {
                self.corr
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .cancel(id);
                Err(Error::Timeout {
                    what: format!("{name} request to peer {}", self.peer),
                    after: limit,
                })
            }
        }
    }
}

#[async_trait]
impl Call for Conn {
    async fn call(&self, request: Request) -> Result<Response> {
        // A second more per MiB carried: a big append is not a silent peer.
        let extra = match &request {
            Request::Append(cs) => {
                let bytes: u64 = cs.iter().map(|c| c.payload.len() as u64).sum();
                Duration::from_secs(bytes >> 20)
            }
            _ => Duration::ZERO,
        };
        let (wtx, wrx) = oneshot::channel();
        let msg = self
            .corr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .request(request, wtx);
        self.send_and_wait(msg, wrx, extra).await
    }
}

async fn read_loop(conn: Arc<Conn>, mut ch: Channel, mut dec: FrameDecoder, cfg: ConnConfig) {
    let serving = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let subscribing = Arc::new(Semaphore::new(MAX_SERVED_SUBSCRIPTIONS));
    let served_subs: Arc<Mutex<HashMap<u32, CancellationToken>>> = Arc::default();
    let out_limit = conn.send_limit();
    'outer: loop {
        let bytes = tokio::select! {
            _ = conn.closed.cancelled() => break,
            b = ch.rx.recv() => b,
        };
        let Some(bytes) = bytes else { break };
        dec.push(&bytes);
        loop {
            let msg = match dec.pop() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    warn!(peer = %conn.peer, error = %e, "protocol error; closing");
                    let _ = conn.out.send(error_reply(0, &e, out_limit)).await;
                    break 'outer;
                }
            };
            match msg {
                Message::Request {
                    id,
                    body: Request::Subscribe,
                } => {
                    // Served subscriptions live long: they have their own
                    // cap and never hold a request permit.
                    let Ok(permit) = subscribing.clone().try_acquire_owned() else {
                        let e = Error::backend(
                            "webrtc",
                            true,
                            std::io::Error::other(format!(
                                "at most {MAX_SERVED_SUBSCRIPTIONS} subscriptions per peer"
                            )),
                        );
                        let _ = conn.out.send(error_reply(id, &e, out_limit)).await;
                        continue;
                    };
                    let conn2 = conn.clone();
                    let store = cfg.store.clone();
                    let opts = cfg.serve.clone();
                    let subs = served_subs.clone();
                    tokio::spawn(async move {
                        serve(
                            &conn2,
                            &*store,
                            &opts,
                            &subs,
                            id,
                            Request::Subscribe,
                            out_limit,
                        )
                        .await;
                        drop(permit);
                    });
                }
                Message::Request { id, body } => {
                    let Ok(permit) = serving.clone().acquire_owned().await else {
                        break 'outer;
                    };
                    let conn2 = conn.clone();
                    let store = cfg.store.clone();
                    let opts = cfg.serve.clone();
                    let subs = served_subs.clone();
                    tokio::spawn(async move {
                        serve(&conn2, &*store, &opts, &subs, id, body, out_limit).await;
                        drop(permit);
                    });
                }
                Message::Hello(_) => {
                    let e = Error::Protocol {
                        reason: "a second HELLO".into(),
                    };
                    let _ = conn.out.send(error_reply(0, &e, out_limit)).await;
                    break 'outer;
                }
                Message::Response {
                    id,
                    body: Response::Error(e),
                } if id != 0
                    && conn
                        .subs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains_key(&id) =>
                {
                    // The peer ended one of our subscriptions with an error.
                    let sub = conn
                        .subs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    if let Some(tx) = sub {
                        let _ = tx.try_send(Err(e.into_error()));
                    }
                }
                other => {
                    let routed = conn
                        .corr
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .handle(other);
                    match routed {
                        Incoming::Response { waiter, result } => {
                            let _ = waiter.send(result);
                        }
                        Incoming::Notify {
                            subscription,
                            metas,
                        } => {
                            let mut subs = conn.subs.lock().unwrap_or_else(|e| e.into_inner());
                            let full = match subs.get(&subscription) {
                                Some(tx) => tx.try_send(Ok(metas)).is_err(),
                                None => false,
                            };
                            if full && let Some(tx) = subs.remove(&subscription) {
                                // Too far behind: end it with an error
                                // (dropping the sender; the reader sees the
                                // end after its queue) rather than queue
                                // without bound.
                                warn!(peer = %conn.peer, subscription, "a subscription fell behind; ending it");
                                drop(tx);
                            }
                        }
                        Incoming::ConnectionError(e) => {
                            warn!(peer = %conn.peer, error = %e, "the peer closed the connection with an error");
                            break 'outer;
                        }
                        Incoming::Unsolicited(id) => debug!(id, "late response dropped"),
                        Incoming::Unexpected(m) => {
                            debug!(kind = m.type_byte(), "unexpected message dropped");
                        }
                    }
                }
            }
        }
    }
    conn.closed.cancel();
    for sub in served_subs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
    {
        sub.1.cancel();
    }
    let waiters = conn
        .corr
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .fail_all();
    for w in waiters {
        let _ = w.send(Err(closed()));
    }
    conn.subs.lock().unwrap_or_else(|e| e.into_inner()).clear();
    debug!(peer = %conn.peer, "connection closed");
}

async fn serve(
    conn: &Arc<Conn>,
    store: &DynAppendOnlyStore,
    opts: &ServeOptions,
    subs: &Arc<Mutex<HashMap<u32, CancellationToken>>>,
    id: u32,
    body: Request,
    out_limit: u32,
) {
    if !conn.perm.allows(body.access()) {
        warn!(peer = %conn.peer, request = body.name(), "unauthorized request refused");
        let resp = Response::Error(WireError::unauthorized(format!(
            "peer {} may not {} store {}",
            conn.peer,
            body.name(),
            store.store_id()
        )));
        let _ = send_response(&conn.out, id, resp, out_limit).await;
        return;
    }
    match body {
        Request::Subscribe => {
            let mut stream = match store.subscribe().await {
                Ok(s) => s,
                Err(e) => {
                    let _ = conn.out.send(error_reply(id, &e, out_limit)).await;
                    return;
                }
            };
            let token = conn.closed.child_token();
            subs.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, token.clone());
            if send_response(&conn.out, id, Response::Done, out_limit)
                .await
                .is_err()
            {
                return;
            }
            loop {
                let first = tokio::select! {
                    _ = token.cancelled() => break,
                    item = stream.next() => item,
                };
                let first = match first {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        // Tell the subscriber, so its live updates do not
                        // just stop.
                        warn!(peer = %conn.peer, error = %e, "a served subscription failed");
                        let _ = conn.out.send(error_reply(id, &e, out_limit)).await;
                        break;
                    }
                    None => break,
                };
                let mut metas = vec![first];
                while metas.len() < NOTIFY_BATCH {
                    match stream.next().now_or_never() {
                        Some(Some(Ok(m))) => metas.push(m),
                        _ => break,
                    }
                }
                if let Some(delivered) = &conn.delivered {
                    metas.retain(|m| !delivered(&conn.peer, &m.id));
                    if metas.is_empty() {
                        continue;
                    }
                }
                let msg = Message::Notify {
                    subscription: id,
                    metas,
                };
                if send_message(&conn.out, &msg, out_limit).await.is_err() {
                    break;
                }
            }
        }
        Request::Unsubscribe { subscription } => {
            if let Some(t) = subs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&subscription)
            {
                t.cancel();
            }
            let _ = send_response(&conn.out, id, Response::Done, out_limit).await;
        }
        body => {
            let resp = dispatch(store, &conn.peer, body, opts).await;
            let _ = send_response(&conn.out, id, resp, out_limit).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::auth::{AUTH_LEN, ROLE_CALLS, ROLE_SERVES, RoomKey};
    use crate::signal::RoomCode;
    use cairn_protocol::Acl;

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
