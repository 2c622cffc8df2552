//! [`QuicServer`]: serve stores over QUIC to authenticated, authorised peers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn::{AcceptAll, DynAppendOnlyStore, Error, Keypair, Result, StoreId, Verifier};
use cairn_protocol::{
    Access, AccessPolicy, Admission, AdmissionOptions, DEFAULT_MAX_FRAME, FrameDecoder, Hello,
    MIN_MAX_FRAME, Message, PeerId, Permission, Request, Response, ResponseLimits, ServeOptions,
    StoreProvider, admit, check_hello, dispatch, encode, error_reply, request_access, server_hello,
};
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::identity::{remote_peer, server_config};
use crate::link::{read_message, write, write_message, write_response};

/// Limits and settings of a [`QuicServer`]. Every wait has a deadline and
/// everything a peer can make the server hold is bounded, before it is
/// authorised and after (see the crate README's "Limits and threat model").
#[derive(Clone)]
pub struct ServerOptions {
    /// Most simultaneous connections, handshakes included; more are
    /// refused (default 1024).
    pub max_connections: usize,
    /// Most simultaneous connections from one IP address (default 64).
    pub max_connections_per_ip: usize,
    /// How long a new connection has to finish the TLS handshake and send
    /// its hello (default 5 s); then it is closed.
    pub hello_timeout: Duration,
    /// How long an authenticated connection may stay with no request in
    /// flight and no subscription (default 120 s); then it is closed. The
    /// server sends no keep-alives of its own.
    pub idle_timeout: Duration,
    /// How long a response may take to be written to a peer that does not
    /// read it (default 30 s); then its stream is reset.
    pub write_timeout: Duration,
    /// Most requests in flight per connection (QUIC stream limit; default 64).
    pub max_concurrent_requests: u32,
    /// Most subscriptions per connection (default 8).
    pub max_subscriptions: usize,
    /// Largest frame accepted and sent (default 16 MiB).
    pub max_frame: u32,
    /// Largest reassembled append request (default 1 GiB). Its permission
    /// is checked from the first frame's header, before the body is read.
    pub max_message: u64,
    /// Largest reassembled request of any other kind (default 64 MiB).
    pub max_request: u64,
    /// How long [`QuicServer::shutdown`] waits for requests in flight (default 5 s).
    pub shutdown_grace: Duration,
    /// The policy every appended change must pass before it enters a
    /// served store (default [`AcceptAll`]: every change that passes its
    /// integrity check). A relay that cannot read payloads can still
    /// require signatures (`RequireSignature`) or trusted authors. A
    /// refused change fails its append with `Error::Rejected`; nothing of
    /// that batch is stored.
    pub verifier: Arc<dyn Verifier>,
    /// Caps on every response (items, bytes); clients page transparently.
    pub response: ResponseLimits,
    /// Append rate limits per peer and per store, and a stored-bytes quota
    /// per store (default: none).
    pub admission: AdmissionOptions,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_connections: 1024,
            max_connections_per_ip: 64,
            hello_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(30),
            max_concurrent_requests: 64,
            max_subscriptions: 8,
            max_frame: DEFAULT_MAX_FRAME,
            max_message: cairn_protocol::DEFAULT_MAX_MESSAGE,
            max_request: 64 << 20,
            shutdown_grace: Duration::from_secs(5),
            verifier: Arc::new(AcceptAll),
            response: ResponseLimits::default(),
            admission: AdmissionOptions::default(),
        }
    }
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("hello_timeout", &self.hello_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("max_frame", &self.max_frame)
            .field("max_message", &self.max_message)
            .field("max_request", &self.max_request)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("verifier", &self.verifier)
            .field("response", &self.response)
            .field("admission", &self.admission)
            .finish()
    }
}

struct Shared {
    serve: ServeOptions,
    stores: Arc<dyn StoreProvider>,
    policy: Arc<dyn AccessPolicy>,
    opts: ServerOptions,
    cancel: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    connections: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Serves stores over QUIC. Dropping it stops it abruptly; prefer
/// [`shutdown`](QuicServer::shutdown).
#[derive(Debug)]
pub struct QuicServer {
    endpoint: quinn::Endpoint,
    cancel: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    peer_id: PeerId,
    addr: SocketAddr,
    grace: Duration,
}

impl QuicServer {
    /// Bind `addr` (port 0 picks a free port) and serve. Must be called
    /// inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        keypair: &Keypair,
        stores: Arc<dyn StoreProvider>,
        policy: Arc<dyn AccessPolicy>,
        opts: ServerOptions,
    ) -> Result<Self> {
        let cfg = server_config(keypair, opts.max_concurrent_requests.saturating_add(1))?;
        let endpoint = quinn::Endpoint::server(cfg, addr)?;
        let addr = endpoint.local_addr()?;
        let cancel = CancellationToken::new();
        let abort = CancellationToken::new();
        let tracker = TaskTracker::new();
        let grace = opts.shutdown_grace;
        let shared = Arc::new(Shared {
            serve: ServeOptions {
                verifier: opts.verifier.clone(),
                limits: opts.response,
                admission: Arc::new(Admission::new(opts.admission)),
            },
            stores,
            policy,
            opts,
            cancel: cancel.clone(),
            abort: abort.clone(),
            tracker: tracker.clone(),
            connections: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        });
        info!(%addr, peer = %keypair.author(), "cairn QUIC server listening");
        tracker.spawn(accept_loop(endpoint.clone(), shared));
        Ok(QuicServer {
            endpoint,
            cancel,
            abort,
            tracker,
            peer_id: keypair.author(),
            addr,
            grace,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's peer id (clients pin it).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Stop accepting, let requests in flight finish (up to the grace
    /// period), then close every connection.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("shutdown grace period over; closing connections with requests in flight");
        }
        self.abort.cancel();
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"server shutdown");
        let _ = tokio::time::timeout(self.grace, self.endpoint.wait_idle()).await;
        info!(addr = %self.addr, "cairn QUIC server stopped");
    }
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        self.abort.cancel();
        if !self.cancel.is_cancelled() {
            self.cancel.cancel();
            self.endpoint
                .close(quinn::VarInt::from_u32(0), b"server dropped");
        }
    }
}

/// A connection slot for one IP address, released on drop.
struct IpSlot<'a> {
    shared: &'a Shared,
    ip: IpAddr,
}

impl Drop for IpSlot<'_> {
    fn drop(&mut self) {
        let mut map = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    /// Take a slot for `ip`, if it has fewer than the per-address cap.
    fn take_ip(&self, ip: IpAddr) -> Option<IpSlot<'_>> {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.opts.max_connections_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot { shared: self, ip })
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            inc = endpoint.accept() => inc,
        };
        let Some(incoming) = incoming else { break };
        let remote = incoming.remote_address();
        if shared.connections.load(Ordering::Acquire) >= shared.opts.max_connections {
            warn!(%remote, "connection limit reached; refusing");
            incoming.refuse();
            continue;
        }
        let ip = remote.ip().to_canonical();
        if shared
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
            .is_some_and(|n| *n >= shared.opts.max_connections_per_ip)
        {
            warn!(%remote, "per-address connection limit reached; refusing");
            incoming.refuse();
            continue;
        }
        shared.connections.fetch_add(1, Ordering::AcqRel);
        let s = shared.clone();
        shared.tracker.spawn(async move {
            if let Some(_slot) = s.take_ip(ip) {
                tokio::select! {
                    _ = s.abort.cancelled() => {}
                    r = serve_connection(incoming, &s) => {
                        if let Err(e) = r {
                            debug!(%remote, error = %e, "connection ended");
                        }
                    }
                }
            } else {
                incoming.refuse();
            }
            s.connections.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// The TLS handshake and the hello, within `hello_timeout`: the peer's id,
/// the hello stream and the hello.
async fn handshake(
    incoming: quinn::Incoming,
    s: &Arc<Shared>,
) -> Result<Option<(quinn::Connection, PeerId, quinn::SendStream, Hello)>> {
    let conn = incoming.await.map_err(crate::link::conn_err)?;
    let Some(peer) = remote_peer(&conn) else {
        conn.close(quinn::VarInt::from_u32(2), b"no peer identity");
        return Err(Error::Unauthorized {
            reason: "no peer identity".into(),
        });
    };
    let (mut send, mut recv) = conn.accept_bi().await.map_err(crate::link::conn_err)?;
    if !s.policy.may_connect(&peer) {
        // A stranger: refused before a byte it sends is read.
        let e = Error::Unauthorized {
            reason: format!("peer {peer} is not allowed on this server"),
        };
        refuse(&peer, &mut send, &conn, e).await?;
        return Ok(None);
    }
    // A hello is small: a small frame limit, and no reassembly.
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME).with_max_message(u64::from(MIN_MAX_FRAME));
    let hello = read_message(&mut recv, &mut dec)
        .await
        .and_then(|m| check_hello(m, None));
    let _ = recv.stop(quinn::VarInt::from_u32(0));
    match hello {
        Ok(h) => Ok(Some((conn, peer, send, h))),
        Err(e) => {
            refuse(&peer, &mut send, &conn, e).await?;
            Ok(None)
        }
    }
}

async fn serve_connection(incoming: quinn::Incoming, s: &Arc<Shared>) -> Result<()> {
    let (conn, peer, mut send, hello) =
        match tokio::time::timeout(s.opts.hello_timeout, handshake(incoming, s)).await {
            Ok(Ok(Some(x))) => x,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Timeout {
                    what: "a peer's handshake and hello".into(),
                    after: s.opts.hello_timeout,
                });
            }
        };
    // Authorised before the store is looked up (see `admit`).
    let (perm, store) = match admit(&*s.policy, &*s.stores, &peer, &hello.store_id) {
        Ok(x) => x,
        Err(e) => return refuse(&peer, &mut send, &conn, e).await,
    };
    let out_limit = hello.max_frame.max(MIN_MAX_FRAME);
    let mine = server_hello(&*store, s.opts.max_frame).await?;
    write(&mut send, &encode(&Message::Hello(mine), out_limit)?).await?;
    let _ = send.finish();
    info!(%peer, store = %hello.store_id, ?perm, "peer connected");

    let conn_ctx = Arc::new(ConnCtx {
        store,
        peer,
        perm,
        out_limit,
        store_id: hello.store_id,
        active: AtomicUsize::new(0),
        subscriptions: AtomicUsize::new(0),
    });
    // Bounded by the connection, the server's cancellation and the idle
    // timeout.
    loop {
        let stream = tokio::select! {
            _ = s.cancel.cancelled() => break,
            st = tokio::time::timeout(s.opts.idle_timeout, conn.accept_bi()) => st,
        };
        let (send, recv) = match stream {
            Ok(Ok(st)) => st,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "connection closed");
                break;
            }
            Err(_) => {
                if conn_ctx.active.load(Ordering::Acquire) == 0 {
                    debug!(%peer, "idle connection closed");
                    conn.close(quinn::VarInt::from_u32(4), b"idle");
                    break;
                }
                continue;
            }
        };
        let ctx = conn_ctx.clone();
        let s2 = s.clone();
        let conn2 = conn.clone();
        ctx.active.fetch_add(1, Ordering::AcqRel);
        s.tracker.spawn(async move {
            tokio::select! {
                _ = s2.abort.cancelled() => {}
                r = serve_stream(send, recv, &ctx, &s2, &conn2) => {
                    if let Err(e) = r {
                        debug!(peer = %ctx.peer, error = %e, "stream ended with an error");
                    }
                }
            }
            ctx.active.fetch_sub(1, Ordering::AcqRel);
        });
    }
    Ok(())
}

async fn refuse(
    peer: &PeerId,
    send: &mut quinn::SendStream,
    conn: &quinn::Connection,
    e: Error,
) -> Result<()> {
    warn!(%peer, error = %e, "refusing connection");
    let _ = send;
    // The refusal travels in the close itself (an ERROR frame as the
    // reason), so the connection is closed at once: a refused peer holds no
    // slot while its refusal is read.
    let mut reason = error_reply(0, &e, MIN_MAX_FRAME);
    if reason.len() > MAX_CLOSE_REASON {
        let short = Error::Protocol {
            reason: "refused (the reason was too long to send)".into(),
        };
        reason = error_reply(0, &short, MIN_MAX_FRAME);
    }
    conn.close(quinn::VarInt::from_u32(crate::link::REFUSED), &reason);
    Err(e)
}

/// Longest close reason sent (it must fit a packet); error texts are cut
/// to 1 KiB by the protocol already.
const MAX_CLOSE_REASON: usize = 1000;

struct ConnCtx {
    store: Arc<DynAppendOnlyStore>,
    peer: PeerId,
    perm: Permission,
    out_limit: u32,
    store_id: StoreId,
    /// Streams being served (requests and subscriptions).
    active: AtomicUsize,
    /// Subscriptions being served.
    subscriptions: AtomicUsize,
}

/// Read the request of one stream: its header first, so that its type's
/// permission is checked, and its size bounded by type, before its body is
/// buffered.
async fn read_request(
    recv: &mut quinn::RecvStream,
    ctx: &ConnCtx,
    s: &Shared,
) -> std::result::Result<(u32, Request), (u32, Error)> {
    let mut dec = FrameDecoder::new(s.opts.max_frame);
    let header = loop {
        if let Some(h) = dec.peek_header() {
            break h;
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => dec.push(&chunk.bytes),
            Ok(None) => {
                return Err((
                    0,
                    Error::Protocol {
                        reason: "stream ended before a request arrived".into(),
                    },
                ));
            }
            Err(e) => return Err((0, crate::link::io(e))),
        }
    };
    let (_, ty, _, id) = header;
    let Some(access) = request_access(ty) else {
        return Err((
            0,
            Error::Protocol {
                reason: format!("expected a request, got type {ty:#04x}"),
            },
        ));
    };
    if !ctx.perm.allows(access) {
        return Err((
            id,
            Error::Unauthorized {
                reason: format!(
                    "peer {} may not {} store {}",
                    ctx.peer,
                    if access == Access::Write {
                        "append to"
                    } else {
                        "read"
                    },
                    ctx.store_id
                ),
            },
        ));
    }
    dec.set_max_message(if access == Access::Write {
        s.opts.max_message
    } else {
        s.opts.max_request
    });
    match read_message(recv, &mut dec).await {
        Ok(Message::Request { id, body }) => Ok((id, body)),
        Ok(other) => Err((
            0,
            Error::Protocol {
                reason: format!("expected a request, got type {:#04x}", other.type_byte()),
            },
        )),
        Err(e) => Err((id, e)),
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: &ConnCtx,
    s: &Shared,
    conn: &quinn::Connection,
) -> Result<()> {
    let (id, body) = match read_request(&mut recv, ctx, s).await {
        Ok(r) => r,
        Err((id, e)) => {
            if matches!(e, Error::Unauthorized { .. }) {
                warn!(peer = %ctx.peer, store = %ctx.store_id, error = %e, "unauthorized request refused");
            } else {
                warn!(peer = %ctx.peer, error = %e, "bad request stream");
            }
            let _ = recv.stop(quinn::VarInt::from_u32(3));
            write_timed(&mut send, &error_reply(id, &e, ctx.out_limit), s).await?;
            let _ = send.finish();
            return if id == 0 { Err(e) } else { Ok(()) };
        }
    };
    match body {
        Request::Subscribe => {
            if ctx.subscriptions.fetch_add(1, Ordering::AcqRel) >= s.opts.max_subscriptions {
                ctx.subscriptions.fetch_sub(1, Ordering::AcqRel);
                let e = Error::backend(
                    "quic",
                    true,
                    std::io::Error::other(format!(
                        "at most {} subscriptions per connection",
                        s.opts.max_subscriptions
                    )),
                );
                write_timed(&mut send, &error_reply(id, &e, ctx.out_limit), s).await?;
                let _ = send.finish();
                return Ok(());
            }
            let r = serve_subscription(id, send, ctx, s, conn).await;
            ctx.subscriptions.fetch_sub(1, Ordering::AcqRel);
            r
        }
        Request::Unsubscribe { .. } => {
            // On QUIC a subscription ends when its stream is stopped.
            timed(
                s,
                write_response(&mut send, id, Response::Done, ctx.out_limit),
            )
            .await?;
            let _ = send.finish();
            Ok(())
        }
        body => {
            let resp = dispatch(&*ctx.store, &ctx.peer, body, &s.serve).await;
            if timed(s, write_response(&mut send, id, resp, ctx.out_limit))
                .await
                .is_err()
            {
                let _ = send.reset(quinn::VarInt::from_u32(5));
                return Err(Error::Timeout {
                    what: format!("writing a response to peer {}", ctx.peer),
                    after: s.opts.write_timeout,
                });
            }
            let _ = send.finish();
            Ok(())
        }
    }
}

/// `fut` (a write to the peer) within the write timeout.
async fn timed(s: &Shared, fut: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    match tokio::time::timeout(s.opts.write_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            what: "writing to a peer".into(),
            after: s.opts.write_timeout,
        }),
    }
}

async fn write_timed(send: &mut quinn::SendStream, bytes: &[u8], s: &Shared) -> Result<()> {
    timed(s, write(send, bytes)).await
}

/// Most metadata records per notification batch.
const NOTIFY_BATCH: usize = 1024;

async fn serve_subscription(
    id: u32,
    mut send: quinn::SendStream,
    ctx: &ConnCtx,
    s: &Shared,
    conn: &quinn::Connection,
) -> Result<()> {
    let mut stream = match ctx.store.subscribe().await {
        Ok(st) => st,
        Err(e) => {
            write(&mut send, &error_reply(id, &e, ctx.out_limit)).await?;
            let _ = send.finish();
            return Err(e);
        }
    };
    write_response(&mut send, id, Response::Done, ctx.out_limit).await?;
    let stopped = send.stopped();
    tokio::pin!(stopped);
    loop {
        let first = tokio::select! {
            _ = s.cancel.cancelled() => break,
            _ = conn.closed() => break,
            _ = &mut stopped => break,
            item = stream.next() => item,
        };
        let Some(first) = first else { break };
        let mut metas = vec![first?];
        while metas.len() < NOTIFY_BATCH {
            match stream.next().now_or_never() {
                Some(Some(Ok(m))) => metas.push(m),
                Some(Some(Err(e))) => return Err(e),
                _ => break,
            }
        }
        let msg = Message::Notify {
            subscription: id,
            metas,
        };
        // A subscriber that stops reading is cut off, not waited on.
        timed(s, write_message(&mut send, &msg, ctx.out_limit)).await?;
    }
    let _ = send.finish();
    Ok(())
}
