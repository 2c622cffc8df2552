//! [`QuicServer`]: serve stores over QUIC to authenticated, authorised peers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cairn::{AcceptAll, DynAppendOnlyStore, Error, Keypair, Result, StoreId, Verifier};
use cairn_protocol::{
    AccessPolicy, DEFAULT_MAX_FRAME, FrameDecoder, MIN_MAX_FRAME, Message, PeerId, Permission,
    Request, Response, ServeOptions, StoreProvider, WireError, check_hello, dispatch, encode,
    error_reply, server_hello,
};
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::identity::{remote_peer, server_config};
use crate::link::{read_message, write, write_message, write_response};

/// Limits and settings of a [`QuicServer`].
#[derive(Clone)]
pub struct ServerOptions {
    /// Most simultaneous connections; more are refused (default 1024).
    pub max_connections: usize,
    /// Most requests in flight per connection (QUIC stream limit; default 64).
    pub max_concurrent_requests: u32,
    /// Largest frame accepted and sent (default 16 MiB).
    pub max_frame: u32,
    /// Largest reassembled request (default 1 GiB).
    pub max_message: u64,
    /// How long [`QuicServer::shutdown`] waits for requests in flight (default 5 s).
    pub shutdown_grace: Duration,
    /// The policy every appended change must pass before it enters a
    /// served store (default [`AcceptAll`]: every change that passes its
    /// integrity check). A relay that cannot read payloads can still
    /// require signatures (`RequireSignature`) or trusted authors. A
    /// refused change fails its append with `Error::Rejected`; nothing of
    /// that batch is stored.
    pub verifier: Arc<dyn Verifier>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_connections: 1024,
            max_concurrent_requests: 64,
            max_frame: DEFAULT_MAX_FRAME,
            max_message: cairn_protocol::DEFAULT_MAX_MESSAGE,
            shutdown_grace: Duration::from_secs(5),
            verifier: Arc::new(AcceptAll),
        }
    }
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("max_connections", &self.max_connections)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_frame", &self.max_frame)
            .field("max_message", &self.max_message)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("verifier", &self.verifier)
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
            },
            stores,
            policy,
            opts,
            cancel: cancel.clone(),
            abort: abort.clone(),
            tracker: tracker.clone(),
            connections: AtomicUsize::new(0),
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

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            inc = endpoint.accept() => inc,
        };
        let Some(incoming) = incoming else { break };
        if shared.connections.load(Ordering::Acquire) >= shared.opts.max_connections {
            warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
            incoming.refuse();
            continue;
        }
        shared.connections.fetch_add(1, Ordering::AcqRel);
        let s = shared.clone();
        shared.tracker.spawn(async move {
            let remote = incoming.remote_address();
            tokio::select! {
                _ = s.abort.cancelled() => {}
                r = serve_connection(incoming, &s) => {
                    if let Err(e) = r {
                        debug!(%remote, error = %e, "connection ended");
                    }
                }
            }
            s.connections.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

async fn serve_connection(incoming: quinn::Incoming, s: &Arc<Shared>) -> Result<()> {
    let conn = incoming.await.map_err(crate::link::conn_err)?;
    let Some(peer) = remote_peer(&conn) else {
        conn.close(quinn::VarInt::from_u32(2), b"no peer identity");
        return Err(Error::Unauthorized {
            reason: "no peer identity".into(),
        });
    };
    let (mut send, mut recv) = conn.accept_bi().await.map_err(crate::link::conn_err)?;
    let mut dec = FrameDecoder::new(s.opts.max_frame);
    let hello = read_message(&mut recv, &mut dec)
        .await
        .and_then(|m| check_hello(m, None));
    let hello = match hello {
        Ok(h) => h,
        Err(e) => return refuse(&peer, &mut send, &conn, e).await,
    };
    // Authorise before looking the store up, so a peer without access
    // cannot learn which store ids exist; only a peer the policy knows for
    // some store is told that a store id is not served (say, a typo).
    let perm = s.policy.permission(&peer, &hello.store_id);
    if perm == Permission::None {
        // A peer the policy knows (for some store) learns that this store
        // id is not served, rather than a misleading refusal; a stranger
        // learns nothing about which store ids exist.
        let e = if s.policy.knows(&peer) && s.stores.get(&hello.store_id).is_none() {
            Error::NotFound {
                what: format!("store {}", hello.store_id),
            }
        } else {
            Error::Unauthorized {
                reason: format!("peer {peer} may not access store {}", hello.store_id),
            }
        };
        return refuse(&peer, &mut send, &conn, e).await;
    }
    let Some(store) = s.stores.get_for(&peer, &hello.store_id) else {
        let e = Error::NotFound {
            what: format!("store {}", hello.store_id),
        };
        return refuse(&peer, &mut send, &conn, e).await;
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
    });
    loop {
        let stream = tokio::select! {
            _ = s.cancel.cancelled() => break,
            st = conn.accept_bi() => st,
        };
        let (send, recv) = match stream {
            Ok(st) => st,
            Err(e) => {
                debug!(%peer, error = %e, "connection closed");
                break;
            }
        };
        let ctx = conn_ctx.clone();
        let s2 = s.clone();
        let conn2 = conn.clone();
        s.tracker.spawn(async move {
            tokio::select! {
                _ = s2.abort.cancelled() => {}
                r = serve_stream(send, recv, &ctx, &s2, &conn2) => {
                    if let Err(e) = r {
                        debug!(peer = %ctx.peer, error = %e, "stream ended with an error");
                    }
                }
            }
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
    let _ = write(send, &error_reply(0, &e, MIN_MAX_FRAME)).await;
    let _ = send.finish();
    // Let the client read the error and close first.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    Err(e)
}

struct ConnCtx {
    store: Arc<DynAppendOnlyStore>,
    peer: PeerId,
    perm: Permission,
    out_limit: u32,
    store_id: StoreId,
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: &ConnCtx,
    s: &Shared,
    conn: &quinn::Connection,
) -> Result<()> {
    let mut dec = FrameDecoder::new(s.opts.max_frame).with_max_message(s.opts.max_message);
    let msg = match read_message(&mut recv, &mut dec).await {
        Ok(m) => m,
        Err(e) => {
            warn!(peer = %ctx.peer, error = %e, "bad request stream");
            let _ = recv.stop(quinn::VarInt::from_u32(3));
            write(&mut send, &error_reply(0, &e, ctx.out_limit)).await?;
            let _ = send.finish();
            return Err(e);
        }
    };
    let (id, body) = match msg {
        Message::Request { id, body } => (id, body),
        other => {
            let e = Error::Protocol {
                reason: format!("expected a request, got type {:#04x}", other.type_byte()),
            };
            write(&mut send, &error_reply(0, &e, ctx.out_limit)).await?;
            let _ = send.finish();
            return Err(e);
        }
    };
    if !ctx.perm.allows(body.access()) {
        warn!(peer = %ctx.peer, store = %ctx.store_id, request = body.name(), "unauthorized request refused");
        let resp = Response::Error(WireError::unauthorized(format!(
            "peer {} may not {} store {}",
            ctx.peer,
            body.name(),
            ctx.store_id
        )));
        write_response(&mut send, id, resp, ctx.out_limit).await?;
        let _ = send.finish();
        return Ok(());
    }
    match body {
        Request::Subscribe => serve_subscription(id, send, ctx, s, conn).await,
        Request::Unsubscribe { .. } => {
            // On QUIC a subscription ends when its stream is stopped.
            write_response(&mut send, id, Response::Done, ctx.out_limit).await?;
            let _ = send.finish();
            Ok(())
        }
        body => {
            let resp = dispatch(&*ctx.store, body, &s.serve).await;
            write_response(&mut send, id, resp, ctx.out_limit).await?;
            let _ = send.finish();
            Ok(())
        }
    }
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
        write_message(&mut send, &msg, ctx.out_limit).await?;
    }
    let _ = send.finish();
    Ok(())
}
