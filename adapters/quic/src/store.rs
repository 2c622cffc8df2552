//! [`QuicStore`]: a local cache store plus a remote peer over QUIC.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cairn::{
    AcceptAll, DynAppendOnlyStore, Error, Keypair, Result, StoreId, SyncReport, SyncState, Verifier,
};
use cairn_protocol::{
    Backoff, CacheFirst, CatchUp, ConnectionState, DEFAULT_MAX_FRAME, DeliveryFailure,
    DeliveryOptions, Dialer, Node, PeerId, Refusal, RemoteStore, StoreEvent, Transport, WireError,
    classify,
};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::identity::client_config;
use crate::link::Link;

/// How a [`QuicStore`] connects.
#[derive(Debug, Clone)]
pub struct QuicStoreOptions {
    /// Largest frame accepted (default 16 MiB).
    pub max_frame: u32,
    /// First reconnect delay (default 50 ms).
    pub backoff_min: Duration,
    /// Longest reconnect delay (default 5 s); also the wait after a
    /// refusal, and how long a session must last to count as healthy.
    pub backoff_max: Duration,
    /// How long one connection attempt (QUIC handshake and hello) may take
    /// (default 10 s).
    pub connect_timeout: Duration,
    /// The policy every change from the server must pass before it enters
    /// the cache — catch-up, live notifications and fetches on a cache miss
    /// alike — and every local append too (default [`AcceptAll`]: every
    /// change that passes its integrity check). An app that signs its
    /// changes should use `RequireSignature` or `TrustedAuthors`.
    pub verifier: Arc<dyn Verifier>,
    /// Most changes per delivery of the outbox (default 1000).
    pub delivery_batch: usize,
    /// How long one request waits for the server's answer before it fails
    /// with [`Error::Timeout`] and is retried (default 60 s, plus a second
    /// per MiB an append carries): a server that stops answering never
    /// stalls the outbox or a read for good.
    pub request_timeout: Duration,
}

impl Default for QuicStoreOptions {
    fn default() -> Self {
        QuicStoreOptions {
            max_frame: DEFAULT_MAX_FRAME,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            verifier: Arc::new(AcceptAll),
            delivery_batch: 1000,
            request_timeout: crate::link::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl QuicStoreOptions {
    /// Use `verifier` at the cache's door.
    pub fn verifier(mut self, verifier: impl Verifier + 'static) -> Self {
        self.verifier = Arc::new(verifier);
        self
    }
}

#[derive(Debug)]
struct Inner {
    store_id: StoreId,
    node: Arc<Node>,
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    server_id: PeerId,
    client_config: quinn::ClientConfig,
    opts: QuicStoreOptions,
    link: RwLock<Option<Arc<Link>>>,
    state: watch::Sender<ConnectionState>,
    last_error: Mutex<Option<WireError>>,
    cancel: CancellationToken,
    sync_state: Arc<Mutex<SyncState>>,
}

/// An [`AppendOnlyStore`](cairn::AppendOnlyStore) over a local cache store
/// and a remote peer.
///
/// - Reads answer from the cache; changes asked for by id that the cache
///   lacks are fetched from the peer and cached (`get_changes`,
///   `get_metas`). `has_changes` and the listing methods (`scan`, `head`,
///   `find_new_changes`, `all_change_ids`, …) describe the cache, which
///   follows the peer live.
/// - Every change from the peer passes the [`QuicStoreOptions::verifier`]
///   before it enters the cache; a refused one never does, and is reported
///   on [`events`](QuicStore::events).
/// - `append` writes the cache and queues the new changes in an outbox; it
///   never waits on the peer. While connected, the outbox is delivered in
///   the background, retrying transient failures with backoff; a permanent
///   refusal is reported on [`events`](QuicStore::events) and by
///   [`flush`](QuicStore::flush). [`pending`](QuicStore::pending) counts
///   what is not delivered yet.
/// - It reconnects by itself: transient failures back off exponentially up
///   to `backoff_max`; a refusal (unauthorized, wrong server key, unknown
///   store, version mismatch) is reported at once as
///   [`ConnectionState::Refused`] and by
///   [`wait_connected`](QuicStore::wait_connected), and retried only every
///   `backoff_max`. On every (re)connection it subscribes to the peer,
///   syncs both ways from where the last sync got to, then applies new
///   remote changes as they are notified, so they reach
///   [`subscribe`](cairn::AppendOnlyStore::subscribe) of this store.
#[derive(Debug)]
pub struct QuicStore {
    inner: Arc<Inner>,
    store: CacheFirst<Inner>,
}

cairn_protocol::forward_store!(QuicStore => store);

impl Drop for QuicStore {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
    }
}

impl QuicStore {
    /// Start a store for `store_id` over `cache`, talking to the server at
    /// `server` whose peer id must be `server_id`, as `keypair`. Returns at
    /// once and connects in the background (see [`wait_connected`]). Must be
    /// called inside a tokio runtime.
    ///
    /// [`wait_connected`]: QuicStore::wait_connected
    pub fn new(
        cache: Arc<DynAppendOnlyStore>,
        server: SocketAddr,
        server_id: PeerId,
        keypair: &Keypair,
        opts: QuicStoreOptions,
    ) -> Result<Self> {
        let bind: SocketAddr = if server.ip().is_loopback() {
            SocketAddr::new(server.ip(), 0)
        } else if server.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot bind a UDP socket on {bind}: {e}"),
            ))
        })?;
        let client_config = client_config(keypair, server_id)?;
        let node = Node::new(cache, opts.verifier.clone());
        let inner = Arc::new(Inner {
            store_id: node.cache().store_id().clone(),
            node,
            endpoint,
            server,
            server_id,
            client_config,
            opts,
            link: RwLock::new(None),
            state: watch::Sender::new(ConnectionState::Disconnected),
            last_error: Mutex::new(None),
            cancel: CancellationToken::new(),
            sync_state: Arc::new(Mutex::new(SyncState::default())),
        });
        tokio::spawn(manage(inner.clone()));
        Ok(QuicStore {
            store: CacheFirst::new(inner.node.clone(), inner.clone()),
            inner,
        })
    }

    /// Watch the connection state.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    /// The local cache store.
    pub fn cache(&self) -> &Arc<DynAppendOnlyStore> {
        self.inner.node.cache()
    }

    /// The last error the connection failed with, if any (a refusal, or
    /// the last transient failure).
    pub fn last_error(&self) -> Option<Error> {
        self.inner.last_error()
    }

    /// Wait until the state is [`ConnectionState::Connected`], at most
    /// `timeout`.
    ///
    /// - A refusal (unauthorized, wrong server key, unknown store, version
    ///   mismatch) returns its typed error as soon as it happens.
    /// - Otherwise, after `timeout`: [`Error::Timeout`] naming the server
    ///   and the last transient error.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.state();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| {
                matches!(
                    s,
                    ConnectionState::Connected | ConnectionState::Refused { .. }
                )
            }),
        )
        .await;
        match waited {
            Ok(Ok(s)) if matches!(*s, ConnectionState::Connected) => Ok(()),
            Ok(Ok(_)) => Err(self.last_error().unwrap_or(Error::Closed)),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                what: match self.last_error() {
                    Some(e) => format!("connecting to {} (last error: {e})", self.inner.server),
                    None => format!("connecting to {}", self.inner.server),
                },
                after: timeout,
            }),
        }
    }

    /// Local appends not yet confirmed by the server.
    pub fn pending(&self) -> usize {
        self.inner.node.outbox().pending()
    }

    /// Wait until every local append so far is confirmed by the server, at
    /// most `timeout`. Returns the typed error of a permanent refusal (see
    /// [`cairn_protocol::Outbox::flush`]), or [`Error::Timeout`] naming how
    /// many changes are still pending.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner.node.outbox().flush(timeout).await
    }

    /// Local changes the server refused for good (the most recent 64).
    pub fn delivery_failures(&self) -> Vec<DeliveryFailure> {
        self.inner.node.outbox().failures()
    }

    /// Events: changes from the server refused by the local policy, and
    /// local changes the server refused.
    pub fn events(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.node.events()
    }

    /// How many changes from the server the local policy refused so far.
    pub fn refused(&self) -> u64 {
        self.inner.node.refused()
    }

    /// Bring the cache and the remote to the same set of changes (pull, then
    /// push). [`Error::Closed`] if not connected; a push the server refuses
    /// (a read-only peer) is returned as its error.
    pub async fn sync(&self) -> Result<SyncReport> {
        let link = self.inner.current().ok_or(Error::Closed)?;
        self.inner.catch_up(&link, true).await
    }

    /// Close the connection and stop reconnecting.
    pub async fn close(&self) {
        self.inner.cancel.cancel();
        if let Some(link) = self.inner.take_link() {
            link.conn.close(quinn::VarInt::from_u32(0), b"closed");
        }
        self.inner
            .endpoint
            .close(quinn::VarInt::from_u32(0), b"closed");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
        self.inner.state.send_replace(ConnectionState::Disconnected);
    }
}

impl Inner {
    fn current(&self) -> Option<Arc<Link>> {
        let link = self
            .link
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        if link.conn.close_reason().is_some() {
            return None;
        }
        Some(link)
    }

    fn take_link(&self) -> Option<Arc<Link>> {
        self.link.write().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn last_error(&self) -> Option<Error> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .map(WireError::into_error)
    }

    fn set_error(&self, e: &Error) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(WireError::from(e));
    }

    /// The peer's side of `link` as a store.
    fn remote(&self, link: &Arc<Link>) -> RemoteStore<Link> {
        RemoteStore::new("quic", self.store_id.clone(), &link.hello, link.clone())
    }

    async fn catch_up(&self, link: &Arc<Link>, strict: bool) -> Result<SyncReport> {
        let remote = self.remote(link);
        let opts = CatchUp {
            pull: true,
            push: true,
            batch_bytes: u64::from(link.send_limit() / 2),
            strict,
        };
        self.node
            .catch_up(self.server_id, &remote, &self.sync_state, opts)
            .await
    }
}

impl Transport for Inner {
    fn remotes(&self) -> Vec<(PeerId, Arc<DynAppendOnlyStore>)> {
        let link = self.current();
        link.map(|l| (self.server_id, Arc::new(self.remote(&l)) as _))
            .into_iter()
            .collect()
    }
}

/// Whether a connection error is a refusal, and which.
fn refusal(e: &Error) -> Option<Refusal> {
    match e {
        e if crate::link::is_wrong_server_key(e) => Some(Refusal::WrongPeerKey),
        e => classify(e),
    }
}

/// The connection manager: connect, catch up, follow; on loss, back off and
/// do it again, until cancelled.
async fn manage(inner: Arc<Inner>) {
    let mut dialer = Dialer::new(Backoff {
        min: inner.opts.backoff_min,
        max: inner.opts.backoff_max,
    });
    // Bounded by cancellation; every iteration waits at least the backoff.
    loop {
        if inner.cancel.is_cancelled() {
            break;
        }
        inner.state.send_replace(dialer.dialing());
        let open = Link::open(
            &inner.endpoint,
            inner.server,
            inner.client_config.clone(),
            &inner.store_id,
            inner.opts.max_frame,
        );
        let opened = tokio::select! {
            _ = inner.cancel.cancelled() => break,
            r = tokio::time::timeout(inner.opts.connect_timeout, open) => match r {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout {
                    what: format!("QUIC handshake with {}", inner.server),
                    after: inner.opts.connect_timeout,
                }),
            },
        };
        let failure = match opened {
            Ok(mut link) => {
                link.request_timeout = inner.opts.request_timeout;
                let link = Arc::new(link);
                let r = tokio::select! {
                    _ = inner.cancel.cancelled() => Ok(()),
                    r = session(&inner, &link, &mut dialer) => r,
                };
                inner.take_link();
                link.conn.close(quinn::VarInt::from_u32(0), b"bye");
                match r {
                    Err(e) if !inner.cancel.is_cancelled() => {
                        warn!(server = %inner.server, error = %e, "connection to the peer lost");
                        e
                    }
                    _ => Error::Closed,
                }
            }
            Err(e) => {
                warn!(server = %inner.server, error = %e, "cannot connect to the peer");
                e
            }
        };
        if inner.cancel.is_cancelled() {
            break;
        }
        inner.set_error(&failure);
        let (retry_at, state) = dialer.failed(Instant::now(), refusal(&failure));
        inner.state.send_replace(state);
        let wait = retry_at.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = inner.cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    inner.state.send_replace(ConnectionState::Disconnected);
}

/// One connection's life: subscribe, catch up both ways, then follow the
/// peer's notifications and deliver the outbox, until either fails.
async fn session(inner: &Arc<Inner>, link: &Arc<Link>, dialer: &mut Dialer) -> Result<()> {
    let mut sub = link.subscribe().await?;
    let report = inner.catch_up(link, false).await?;
    info!(server = %inner.server, %report, "caught up with the peer");
    *inner.link.write().unwrap_or_else(|e| e.into_inner()) = Some(link.clone());
    inner.state.send_replace(dialer.connected(Instant::now()));
    *inner.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let remote = inner.remote(link);
    let delivery = DeliveryOptions {
        backoff: Backoff {
            min: inner.opts.backoff_min,
            max: inner.opts.backoff_max,
        },
        max_changes: inner.opts.delivery_batch,
        max_bytes: u64::from(link.send_limit() / 2),
        ..DeliveryOptions::default()
    };
    let follow = async {
        // Bounded by the connection: `next` fails when it closes.
        loop {
            let metas = sub.next().await?;
            inner
                .node
                .follow(inner.server_id, &remote, &metas, &delivery.backoff, 8)
                .await?;
        }
    };
    let deliver = inner.node.deliver(inner.server_id, &remote, &delivery);
    let r: Result<()> = tokio::select! {
        r = follow => r,
        r = deliver => r,
    };
    debug!(server = %inner.server, "session over");
    r
}
