//! [`WsServer`]: serve stores over WebSocket to authenticated, authorised
//! peers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn::{AcceptAll, Error, Keypair, Result, Verifier};
use cairn_protocol::{
    AccessPolicy, Admission, AdmissionOptions, FrameDecoder, MIN_MAX_FRAME, Message, PeerId,
    ResponseLimits, SEND_FRAME, ServeOptions, Session, SessionConfig, SessionPeer, StoreProvider,
    admit, check_hello, encode, error_reply, server_hello,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::auth::{challenge, nonce, server_auth, verify_client_auth};
use crate::io::{Io, PumpOptions, bind, close_raw, pump, recv_raw, send_raw, ws_config};

/// Limits and settings of a [`WsServer`]. Every wait has a deadline and
/// everything a peer can make the server hold is bounded, before it is
/// authorised and after (see the crate README's "Limits and threat model").
#[derive(Clone)]
pub struct WsServerOptions {
    /// TLS (`wss://`): the server's certificate chain and key. `None`
    /// serves plain `ws://`, for tests and for a TLS-terminating reverse
    /// proxy in front (default `None`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Most simultaneous connections, handshakes included; more are
    /// closed at once (default 1024).
    pub max_connections: usize,
    /// Most simultaneous connections from one IP address (default 64).
    pub max_connections_per_ip: usize,
    /// Most connections still in their handshake (TLS, the HTTP upgrade,
    /// the auth messages and the hello) at once (default 64); more are
    /// closed at once. With `max_frame` this bounds what strangers can make
    /// the server buffer: at most `max_handshakes × (max_frame + 1 KiB)`.
    pub max_handshakes: usize,
    /// How long a new connection has for its whole handshake (default 5 s).
    pub handshake_timeout: Duration,
    /// How long a connection may send nothing at all before it is closed
    /// (default 120 s). Clients ping every `keepalive`, so only a dead or
    /// silent peer reaches it.
    pub idle_timeout: Duration,
    /// How often the server pings a connection it has sent nothing to
    /// (default 30 s).
    pub keepalive: Duration,
    /// How long one message may take to be written to a peer that does not
    /// read (default 30 s); then the connection is closed.
    pub write_timeout: Duration,
    /// Largest frame accepted, and one WebSocket message at most this plus
    /// 1 KiB (default 1 MiB; larger items travel split across frames).
    pub max_frame: u32,
    /// Largest reassembled message (default 1 GiB).
    pub max_message: u64,
    /// How long [`WsServer::shutdown`] waits for connections to end
    /// (default 5 s).
    pub shutdown_grace: Duration,
    /// The policy every appended change must pass before it enters a
    /// served store (default [`AcceptAll`]).
    pub verifier: Arc<dyn Verifier>,
    /// Caps on every response (items, bytes); clients page transparently.
    pub response: ResponseLimits,
    /// Append rate limits per peer and per store, and a stored-bytes quota
    /// per store (default: none).
    pub admission: AdmissionOptions,
}

impl Default for WsServerOptions {
    fn default() -> Self {
        WsServerOptions {
            tls: None,
            max_connections: 1024,
            max_connections_per_ip: 64,
            max_handshakes: 64,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            keepalive: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_frame: SEND_FRAME,
            max_message: cairn_protocol::DEFAULT_MAX_MESSAGE,
            shutdown_grace: Duration::from_secs(5),
            verifier: Arc::new(AcceptAll),
            response: ResponseLimits::default(),
            admission: AdmissionOptions::default(),
        }
    }
}

impl std::fmt::Debug for WsServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsServerOptions")
            .field("tls", &self.tls.is_some())
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("max_handshakes", &self.max_handshakes)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("keepalive", &self.keepalive)
            .field("write_timeout", &self.write_timeout)
            .field("max_frame", &self.max_frame)
            .field("max_message", &self.max_message)
            .field("verifier", &self.verifier)
            .field("response", &self.response)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

struct Shared {
    keypair: Keypair,
    serve: ServeOptions,
    stores: Arc<dyn StoreProvider>,
    policy: Arc<dyn AccessPolicy>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    opts: WsServerOptions,
    cancel: CancellationToken,
    tracker: TaskTracker,
    handshakes: Arc<Semaphore>,
    connections: Arc<AtomicUsize>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Serves stores over WebSocket (`ws://` or, with
/// [`WsServerOptions::tls`], `wss://`), on any path. Dropping it stops it
/// abruptly; prefer [`shutdown`](WsServer::shutdown).
#[derive(Debug)]
pub struct WsServer {
    cancel: CancellationToken,
    tracker: TaskTracker,
    peer_id: PeerId,
    addr: SocketAddr,
    tls: bool,
    grace: Duration,
    connections: Arc<AtomicUsize>,
}

impl WsServer {
    /// Bind `addr` (port 0 picks a free port) and serve. Must be called
    /// inside a tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        keypair: &Keypair,
        stores: Arc<dyn StoreProvider>,
        policy: Arc<dyn AccessPolicy>,
        opts: WsServerOptions,
    ) -> Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot listen on TCP {addr}: {e}"),
            ))
        })?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let grace = opts.shutdown_grace;
        let tls = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let connections = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            keypair: keypair.clone(),
            serve: ServeOptions {
                verifier: opts.verifier.clone(),
                limits: opts.response,
                admission: Arc::new(Admission::new(opts.admission)),
            },
            stores,
            policy,
            handshakes: Arc::new(Semaphore::new(opts.max_handshakes)),
            tls: tls.clone(),
            opts,
            cancel: cancel.clone(),
            tracker: tracker.clone(),
            connections: connections.clone(),
            per_ip: Mutex::new(HashMap::new()),
        });
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        info!(%addr, peer = %keypair.author(), scheme, "cairn WebSocket server listening");
        tracker.spawn(accept_loop(listener, shared));
        Ok(WsServer {
            cancel,
            tracker,
            peer_id: keypair.author(),
            addr,
            tls: tls.is_some(),
            grace,
            connections,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients reach it at on this address (`ws://…/` or
    /// `wss://…/`; a `wss` client must name a host its certificate covers).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/", self.addr)
    }

    /// The server's peer id (clients pin it).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Connections open right now, handshakes included.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Stop accepting, close every connection, and wait for their tasks,
    /// at most the grace period.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("shutdown grace period over with connections still closing");
        }
        info!(addr = %self.addr, "cairn WebSocket server stopped");
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A connection slot for one IP address, released on drop.
struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Take a slot for `ip`, if the server and the address are under their caps.
fn take_slot(shared: &Arc<Shared>, ip: IpAddr) -> Option<IpSlot> {
    let mut map = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
    if shared.connections.load(Ordering::Acquire) >= shared.opts.max_connections {
        return None;
    }
    let n = map.entry(ip).or_insert(0);
    if *n >= shared.opts.max_connections_per_ip {
        return None;
    }
    *n += 1;
    shared.connections.fetch_add(1, Ordering::AcqRel);
    Some(IpSlot {
        shared: shared.clone(),
        ip,
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Bounded by cancellation; a failed accept (out of descriptors) waits a
    // little instead of spinning.
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, remote) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = shared.cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let Some(slot) = take_slot(&shared, remote.ip().to_canonical()) else {
            warn!(%remote, "connection limit reached; closing");
            continue;
        };
        let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
            warn!(%remote, "too many handshakes in flight; closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let s = shared.clone();
        shared.tracker.spawn(async move {
            let _slot = slot;
            let r = tokio::select! {
                _ = s.cancel.cancelled() => Ok(()),
                r = serve_tcp(tcp, &s, permit) => r,
            };
            if let Err(e) = r {
                debug!(%remote, error = %e, "connection ended");
            }
        });
    }
}

async fn serve_tcp(
    tcp: TcpStream,
    s: &Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<()> {
    let deadline = Instant::now() + s.opts.handshake_timeout;
    match &s.tls {
        Some(acceptor) => {
            let tls = tokio::time::timeout_at(deadline, acceptor.accept(tcp))
                .await
                .map_err(|_| Error::Timeout {
                    what: "a peer's TLS handshake".into(),
                    after: s.opts.handshake_timeout,
                })?
                .map_err(|e| Error::backend("websocket", false, e))?;
            serve_ws(tls, s, deadline, permit).await
        }
        None => serve_ws(tcp, s, deadline, permit).await,
    }
}

/// The upgrade and the auth and hello messages, before `deadline`; then
/// the session, until it ends.
async fn serve_ws<S: Io>(
    io: S,
    s: &Arc<Shared>,
    deadline: Instant,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<()> {
    let cfg = ws_config(s.opts.max_frame);
    let ws = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_async_with_config(io, Some(cfg)),
    )
    .await
    .map_err(|_| Error::Timeout {
        what: "a peer's WebSocket upgrade".into(),
        after: s.opts.handshake_timeout,
    })?
    .map_err(crate::io::ws_err)?;
    let Some((ws, peer, hello, perm, store)) = handshake(ws, s, deadline).await? else {
        return Ok(());
    };
    drop(permit);
    info!(%peer, store = %hello.store_id, ?perm, "peer connected");
    let stop = s.cancel.child_token();
    let (tx, rx) = pump(
        ws,
        PumpOptions {
            keepalive: s.opts.keepalive,
            idle: s.opts.idle_timeout,
            write: s.opts.write_timeout,
        },
        stop.clone(),
    );
    let dec = FrameDecoder::new(s.opts.max_frame).with_max_message(s.opts.max_message);
    let session = Session::start(
        tx,
        rx,
        dec,
        SessionPeer { peer, perm, hello },
        SessionConfig {
            transport: "websocket",
            store: Some(store),
            serve: s.serve.clone(),
            request_timeout: s.opts.write_timeout,
            delivered: None,
        },
    );
    bind(&session, stop.clone());
    stop.cancelled().await;
    debug!(%peer, "peer disconnected");
    Ok(())
}

type Admitted<S> = (
    WebSocketStream<S>,
    PeerId,
    cairn_protocol::Hello,
    cairn_protocol::Permission,
    Arc<cairn::DynAppendOnlyStore>,
);

/// Challenge, verify the client's key, prove ours, read its hello, admit
/// it and greet it; `None` if it was refused (and told).
async fn handshake<S: Io>(
    mut ws: WebSocketStream<S>,
    s: &Arc<Shared>,
    deadline: Instant,
) -> Result<Option<Admitted<S>>> {
    let server_nonce = nonce()?;
    let me = s.keypair.author();
    send_raw(&mut ws, challenge(&me, &server_nonce), deadline).await?;
    let auth = recv_raw(&mut ws, deadline, "a peer's auth message").await?;
    let (peer, client_nonce) = match verify_client_auth(&auth, &server_nonce, &me) {
        Ok(x) => x,
        Err(e) => {
            warn!(error = %e, "a peer failed authentication");
            refuse(&mut ws, &e, deadline).await;
            return Ok(None);
        }
    };
    if !s.policy.may_connect(&peer) {
        // A stranger: refused before anything more it sends is read.
        let e = Error::Unauthorized {
            reason: format!("peer {peer} is not allowed on this server"),
        };
        warn!(%peer, "refusing a peer the policy does not know");
        refuse(&mut ws, &e, deadline).await;
        return Ok(None);
    }
    send_raw(
        &mut ws,
        server_auth(&s.keypair, &client_nonce, &server_nonce, &peer),
        deadline,
    )
    .await?;
    // A hello is small: a small frame limit, and no reassembly.
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME).with_max_message(u64::from(MIN_MAX_FRAME));
    let hello = loop {
        if let Some(m) = dec.pop()? {
            break m;
        }
        dec.push(&recv_raw(&mut ws, deadline, "a peer's hello").await?);
    };
    let hello = match check_hello(hello, None) {
        Ok(h) => h,
        Err(e) => {
            refuse(&mut ws, &e, deadline).await;
            return Ok(None);
        }
    };
    let (perm, store) = match admit(&*s.policy, &*s.stores, &peer, &hello.store_id) {
        Ok(x) => x,
        Err(e) => {
            warn!(%peer, store = %hello.store_id, error = %e, "refusing a peer");
            refuse(&mut ws, &e, deadline).await;
            return Ok(None);
        }
    };
    let out_limit = hello.max_frame.max(MIN_MAX_FRAME);
    let mine = server_hello(&*store, s.opts.max_frame).await?;
    send_raw(&mut ws, encode(&Message::Hello(mine), out_limit)?, deadline).await?;
    Ok(Some((ws, peer, hello, perm, store)))
}

/// Longest a refusing server waits for its refusal and close to be sent.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Send a refusal (an `ERROR` frame with id 0) and close.
async fn refuse<S: Io>(ws: &mut WebSocketStream<S>, e: &Error, deadline: Instant) {
    let until = deadline.min(Instant::now() + REFUSAL_LINGER);
    let _ = send_raw(ws, error_reply(0, e, MIN_MAX_FRAME), until).await;
    close_raw(ws, until.saturating_duration_since(Instant::now())).await;
}
