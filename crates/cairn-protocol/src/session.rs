use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn::{ChangeMeta, DynAppendOnlyStore, Error, Result};
use futures::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::{debug, warn};

use crate::client::{Call, Correlator, Incoming};
use crate::codec::{FrameDecoder, FrameEncoder};
use crate::dispatch::{ServeOptions, dispatch, error_reply};
use crate::error::WireError;
use crate::message::{Hello, MIN_MAX_FRAME, Message, Request, Response};
use crate::peer::{PeerId, Permission};

type Waiter = oneshot::Sender<Result<Response>>;

/// Most requests from the peer served at once.
pub const MAX_CONCURRENT: usize = 64;
/// Most subscriptions served to the peer at once (they do not take request
/// permits).
pub const MAX_SERVED_SUBSCRIPTIONS: usize = 8;
/// Largest frame a session sends (1 MiB), whatever the peer accepts.
pub const SEND_FRAME: u32 = 1 << 20;
/// Most notification batches queued for one of our subscriptions; a
/// subscriber that falls this far behind is dropped with an error (its
/// session catches up again by syncing).
const SUBSCRIPTION_QUEUE: usize = 64;
/// Most metadata records per notification.
const NOTIFY_BATCH: usize = 1024;

/// What one of our subscriptions receives: batches, or the error that ended
/// it.
pub type SubItem = Result<Vec<ChangeMeta>>;

/// Whether our outbox delivers a change to a peer (see
/// [`SessionConfig::delivered`]).
pub type Delivered = Arc<dyn Fn(&PeerId, &cairn::ChangeId) -> bool + Send + Sync>;

/// What a [`Session`] serves and how long it waits.
#[derive(Clone)]
pub struct SessionConfig {
    /// The transport's name, for errors (`"webrtc"`, `"websocket"`).
    pub transport: &'static str,
    /// The store the peer's requests are answered from; `None` for a side
    /// that only calls (every request from the peer is refused as
    /// unauthorized).
    pub store: Option<Arc<DynAppendOnlyStore>>,
    /// What every answered request is held to.
    pub serve: ServeOptions,
    /// How long a request we send waits for its answer (plus a second per
    /// MiB it carries) before it fails with [`Error::Timeout`].
    pub request_timeout: Duration,
    /// Changes not to notify the peer of, because our outbox delivers them
    /// to it anyway (without this, a local append would travel twice: once
    /// delivered, once fetched after the notification).
    pub delivered: Option<Delivered>,
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("transport", &self.transport)
            .field("store", &self.store.as_ref().map(|s| s.store_id()))
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Who the peer of a session is, as its transport's handshake established.
#[derive(Debug, Clone)]
pub struct SessionPeer {
    /// The peer's proven id.
    pub peer: PeerId,
    /// What our policy lets the peer do (requests beyond it are refused
    /// with an unauthorized error, one by one).
    pub perm: Permission,
    /// The peer's hello.
    pub hello: Hello,
}

/// One authenticated, greeted session over an ordered message channel.
/// Dropping every handle does not close it; [`close`](Session::close)
/// does, and so does the channel ending.
///
/// A session over one ordered message channel, both directions at once:
/// for transports that carry byte strings rather than streams (a WebRTC
/// data channel, a WebSocket).
///
/// The transport authenticates the peer and exchanges `HELLO`s (its own
/// handshake), then hands the channel to [`Session::start`]. From then on
/// every frame shares the channel and the message type tells the halves
/// apart: requests (`0x10..=0x1D`) go to this side's server half (answered
/// from the session's store, under its [`Permission`] and
/// [`ServeOptions`]), responses and `NOTIFY` to its client half (a
/// [`Correlator`]).
///
/// Everything the peer can make it hold is bounded: at most 64 of its
/// requests are served at once (the read loop waits for a permit, which
/// backpressures the channel), at most 8 of its subscriptions, and one of
/// our subscriptions that falls 64 batches behind is ended with an error
/// rather than queued without bound. Every request we send waits at most
/// the request timeout (plus a second per MiB an append carries).
pub struct Session {
    out: mpsc::Sender<Vec<u8>>,
    corr: Mutex<Correlator<Waiter>>,
    subs: Mutex<HashMap<u32, mpsc::Sender<SubItem>>>,
    request_timeout: Duration,
    delivered: Option<Delivered>,
    peer: SessionPeer,
    closed: CancellationToken,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer.peer)
            .finish_non_exhaustive()
    }
}

fn closed() -> Error {
    Error::Closed
}

/// Send `msg` as frames of at most `limit` bytes, one byte string per frame:
/// the sender holds the message and one frame, and the channel's bound
/// gives backpressure. Frames of other messages may come between them.
pub(crate) async fn send_message(
    out: &mpsc::Sender<Vec<u8>>,
    msg: &Message,
    limit: u32,
) -> Result<()> {
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

impl Session {
    /// Serve and route over a channel whose handshake is done: `out` sends
    /// one byte string (a frame) to the peer, `rx` yields the peer's, `dec`
    /// holds whatever of the peer's frames arrived with the handshake. A
    /// background task reads until the channel ends or the session is
    /// closed. Must be called inside a tokio runtime.
    pub fn start(
        out: mpsc::Sender<Vec<u8>>,
        rx: mpsc::Receiver<Vec<u8>>,
        dec: FrameDecoder,
        peer: SessionPeer,
        cfg: SessionConfig,
    ) -> Arc<Session> {
        let session = Arc::new(Session {
            out,
            corr: Mutex::new(Correlator::new()),
            subs: Mutex::new(HashMap::new()),
            request_timeout: cfg.request_timeout,
            delivered: cfg.delivered.clone(),
            peer,
            closed: CancellationToken::new(),
        });
        tokio::spawn(read_loop(session.clone(), rx, dec, cfg));
        session
    }

    /// The frame limit to send with: the peer's, but at most
    /// [`SEND_FRAME`]. Frames wait in a queue of a few entries on their way
    /// to the data channel; small frames keep what waits there small
    /// (bigger items travel split, as they would over any limit).
    pub fn send_limit(&self) -> u32 {
        self.peer.hello.max_frame.clamp(MIN_MAX_FRAME, SEND_FRAME)
    }

    /// Close the session: the read loop ends, waiting requests fail with
    /// [`Error::Closed`], served subscriptions end.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves when the session is over.
    pub fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.closed.cancelled()
    }

    /// The peer's proven id.
    pub fn peer(&self) -> PeerId {
        self.peer.peer
    }

    /// What our policy lets the peer do.
    pub fn perm(&self) -> Permission {
        self.peer.perm
    }

    /// The peer's hello.
    pub fn hello(&self) -> &Hello {
        &self.peer.hello
    }

    /// Subscribe to the peer's new changes. The receiver gets batches, and
    /// an error if the peer ends the subscription with one or we fall too
    /// far behind.
    pub async fn subscribe(&self) -> Result<mpsc::Receiver<SubItem>> {
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
                    what: format!("{name} request to peer {}", self.peer.peer),
                    after: limit,
                })
            }
        }
    }
}

#[async_trait]
impl Call for Session {
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

async fn read_loop(
    conn: Arc<Session>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut dec: FrameDecoder,
    cfg: SessionConfig,
) {
    let serving = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let subscribing = Arc::new(Semaphore::new(MAX_SERVED_SUBSCRIPTIONS));
    let served_subs: Arc<Mutex<HashMap<u32, CancellationToken>>> = Arc::default();
    let out_limit = conn.send_limit();
    'outer: loop {
        let bytes = tokio::select! {
            _ = conn.closed.cancelled() => break,
            b = rx.recv() => b,
        };
        let Some(bytes) = bytes else { break };
        dec.push(&bytes);
        loop {
            let msg = match dec.pop() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    warn!(peer = %conn.peer.peer, error = %e, "protocol error; closing");
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
                            cfg.transport,
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
                            store.as_deref(),
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
                        serve(&conn2, store.as_deref(), &opts, &subs, id, body, out_limit).await;
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
                                warn!(peer = %conn.peer.peer, subscription, "a subscription fell behind; ending it");
                                drop(tx);
                            }
                        }
                        Incoming::ConnectionError(e) => {
                            warn!(peer = %conn.peer.peer, error = %e, "the peer closed the connection with an error");
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
    debug!(peer = %conn.peer.peer, "connection closed");
}

async fn serve(
    conn: &Arc<Session>,
    store: Option<&DynAppendOnlyStore>,
    opts: &ServeOptions,
    subs: &Arc<Mutex<HashMap<u32, CancellationToken>>>,
    id: u32,
    body: Request,
    out_limit: u32,
) {
    let store = match store {
        Some(store) if conn.peer.perm.allows(body.access()) => store,
        store => {
            warn!(peer = %conn.peer.peer, request = body.name(), "unauthorized request refused");
            let what = match store {
                Some(s) => format!("store {}", s.store_id()),
                None => "this side (it serves nothing)".into(),
            };
            let resp = Response::Error(WireError::unauthorized(format!(
                "peer {} may not {} {what}",
                conn.peer.peer,
                body.name(),
            )));
            let _ = send_response(&conn.out, id, resp, out_limit).await;
            return;
        }
    };
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
                        warn!(peer = %conn.peer.peer, error = %e, "a served subscription failed");
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
                    metas.retain(|m| !delivered(&conn.peer.peer, &m.id));
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
            let resp = dispatch(store, &conn.peer.peer, body, opts).await;
            let _ = send_response(&conn.out, id, resp, out_limit).await;
        }
    }
}
