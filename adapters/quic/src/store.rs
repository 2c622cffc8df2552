//! [`QuicStore`]: a local cache store plus a remote peer over QUIC.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use cairn::sync::SyncOptions;
use cairn::{
    AppendOutcome, Change, DynAppendOnlyStore, Error, Keypair, Result, StoreId, SyncReport,
    SyncState,
};
use cairn_protocol::{Backoff, CacheFirst, DEFAULT_MAX_FRAME, RemoteCalls, RemoteStore, Transport};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::identity::{PeerId, client_config};
use crate::link::Link;

/// Where a [`QuicStore`]'s connection to its peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Dialling and greeting the server.
    Connecting,
    /// Greeted; caught up with the remote (pending local changes pushed,
    /// missing remote changes pulled) and receiving new ones live.
    Connected,
    /// Not connected (before the first attempt, after a loss, after close).
    Disconnected,
    /// Waiting `delay` before attempt number `attempt` (capped exponential
    /// backoff).
    Retrying {
        /// The attempt about to be made (1 for the first retry).
        attempt: u32,
        /// How long until then.
        delay: Duration,
    },
}

/// How a [`QuicStore`] connects.
#[derive(Debug, Clone)]
pub struct QuicStoreOptions {
    /// Largest frame accepted (default 16 MiB).
    pub max_frame: u32,
    /// First reconnect delay (default 50 ms).
    pub backoff_min: Duration,
    /// Longest reconnect delay (default 5 s).
    pub backoff_max: Duration,
}

impl Default for QuicStoreOptions {
    fn default() -> Self {
        QuicStoreOptions {
            max_frame: DEFAULT_MAX_FRAME,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
struct Inner {
    store_id: StoreId,
    cache: Arc<DynAppendOnlyStore>,
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    client_config: quinn::ClientConfig,
    opts: QuicStoreOptions,
    link: RwLock<Option<Arc<Link>>>,
    state: watch::Sender<ConnectionState>,
    cancel: CancellationToken,
    sync_state: Mutex<SyncState>,
    peer_max_frame: AtomicU32,
}

/// An [`AppendOnlyStore`](cairn::AppendOnlyStore) over a local cache store and a remote peer.
///
/// - Reads answer from the cache; changes asked for by id that the cache
///   lacks are fetched from the peer and cached (`get_changes`, `get_metas`,
///   `has_changes`). Listing methods (`scan`, `head`, `find_new_changes`,
///   `all_change_ids`, …) describe the cache, which follows the peer live.
/// - `append` writes the cache, then the peer. While the peer is unreachable
///   appends succeed locally and are pushed when the connection comes back. A
///   permanent refusal by the peer (unauthorized, integrity) is returned as
///   the error — the changes stay in the cache.
/// - It reconnects by itself with capped exponential backoff; on every
///   (re)connection it subscribes to the peer, then syncs both ways, then
///   applies new remote changes as they are notified, so they reach
///   [`subscribe`](cairn::AppendOnlyStore::subscribe) of this store.
/// - [`state`](QuicStore::state) tells whether it is connected.
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
        let bind: SocketAddr = if server.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let bind = if server.ip().is_loopback() {
            SocketAddr::new(server.ip(), 0)
        } else {
            bind
        };
        let endpoint = quinn::Endpoint::client(bind)?;
        let client_config = client_config(keypair, server_id)?;
        let inner = Arc::new(Inner {
            store_id: cache.store_id().clone(),
            cache,
            endpoint,
            server,
            client_config,
            peer_max_frame: AtomicU32::new(opts.max_frame),
            opts,
            link: RwLock::new(None),
            state: watch::Sender::new(ConnectionState::Disconnected),
            cancel: CancellationToken::new(),
            sync_state: Mutex::new(SyncState::default()),
        });
        tokio::spawn(manage(inner.clone()));
        Ok(QuicStore {
            store: CacheFirst::new(inner.cache.clone(), inner.clone()),
            inner,
        })
    }

    /// Watch the connection state.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    /// The local cache store.
    pub fn cache(&self) -> &Arc<DynAppendOnlyStore> {
        &self.inner.cache
    }

    /// Wait until the state is [`ConnectionState::Connected`], at most
    /// `timeout` ([`Error::Closed`] then, retryable).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.state();
        match tokio::time::timeout(timeout, rx.wait_for(|s| *s == ConnectionState::Connected)).await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::Closed),
        }
    }

    /// Bring the cache and the remote to the same set of changes (pull, then
    /// push). [`Error::Closed`] if not connected.
    pub async fn sync(&self) -> Result<SyncReport> {
        let link = self.inner.current().ok_or(Error::Closed)?;
        self.inner.sync_with(&link).await
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

    /// The peer's side of `link` as a store.
    fn remote(&self, link: &Arc<Link>) -> RemoteStore<Link> {
        RemoteStore::new("quic", self.store_id.clone(), &link.hello, link.clone())
    }

    async fn sync_with(&self, link: &Arc<Link>) -> Result<SyncReport> {
        let remote = self.remote(link);
        let state = self
            .sync_state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let opts = SyncOptions {
            state,
            batch_bytes: u64::from(link.send_limit() / 2),
            ..SyncOptions::default()
        };
        let report = cairn::sync::sync(&*self.cache, &remote, &opts).await?;
        *self.sync_state.lock().unwrap_or_else(|e| e.into_inner()) = report.state.clone();
        Ok(report)
    }
}

#[async_trait]
impl Transport for Inner {
    fn max_frame(&self) -> usize {
        self.peer_max_frame.load(Ordering::Acquire) as usize
    }

    fn remotes(&self) -> Vec<Arc<DynAppendOnlyStore>> {
        let link = self.current();
        link.map(|l| Arc::new(self.remote(&l)) as _)
            .into_iter()
            .collect()
    }

    /// The cache, then the peer if connected: a retryable failure keeps the
    /// changes local (pushed on reconnect), a permanent one is returned.
    async fn append(
        &self,
        cache: &DynAppendOnlyStore,
        changes: Vec<Change>,
    ) -> Result<AppendOutcome> {
        let Some(link) = self.current() else {
            return cache.append(changes).await;
        };
        let out = cache.append(changes.clone()).await?;
        if changes.is_empty() {
            return Ok(out);
        }
        match link.remote_append(changes).await {
            Ok(_) => {}
            Err(e) if e.is_retryable() => {
                debug!(error = %e, "append kept locally; it is pushed on reconnect");
            }
            Err(e) => return Err(e),
        }
        Ok(out)
    }
}

/// The connection manager: connect, catch up, follow; on loss, back off and
/// do it again, until cancelled.
async fn manage(inner: Arc<Inner>) {
    let mut attempt: u32 = 0;
    loop {
        if inner.cancel.is_cancelled() {
            break;
        }
        inner.state.send_replace(ConnectionState::Connecting);
        let opened = tokio::select! {
            _ = inner.cancel.cancelled() => break,
            r = Link::open(&inner.endpoint, inner.server, inner.client_config.clone(), &inner.store_id, inner.opts.max_frame) => r,
        };
        match opened {
            Ok(link) => {
                let link = Arc::new(link);
                inner
                    .peer_max_frame
                    .store(link.send_limit(), Ordering::Release);
                let r = tokio::select! {
                    _ = inner.cancel.cancelled() => Ok(()),
                    r = session(&inner, &link) => r,
                };
                if let Err(e) = r {
                    if inner.cancel.is_cancelled() {
                        // `close()` tore the connection down: not a loss.
                        debug!(server = %inner.server, error = %e, "connection closed");
                    } else {
                        warn!(server = %inner.server, error = %e, "connection to the peer lost");
                    }
                    attempt = 0;
                }
                inner.take_link();
                link.conn.close(quinn::VarInt::from_u32(0), b"bye");
                inner.state.send_replace(ConnectionState::Disconnected);
                if inner.cancel.is_cancelled() {
                    break;
                }
            }
            Err(e) => {
                warn!(server = %inner.server, error = %e, "cannot connect to the peer");
                inner.state.send_replace(ConnectionState::Disconnected);
            }
        }
        attempt = attempt.saturating_add(1);
        let delay = Backoff {
            min: inner.opts.backoff_min,
            max: inner.opts.backoff_max,
        }
        .delay(attempt);
        inner
            .state
            .send_replace(ConnectionState::Retrying { attempt, delay });
        tokio::select! {
            _ = inner.cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    inner.state.send_replace(ConnectionState::Disconnected);
}

/// One connection's life: subscribe, catch up both ways, follow.
async fn session(inner: &Arc<Inner>, link: &Arc<Link>) -> Result<()> {
    let mut sub = link.subscribe().await?;
    let report = inner.sync_with(link).await?;
    info!(server = %inner.server, %report, "caught up with the peer");
    *inner.link.write().unwrap_or_else(|e| e.into_inner()) = Some(link.clone());
    // Changes appended locally during the catch-up went to the cache only
    // (no link yet); push them now that appends go through.
    let report = inner.sync_with(link).await?;
    if report.pushed.changes > 0 {
        debug!(
            pushed = report.pushed.changes,
            "pushed appends made during catch-up"
        );
    }
    inner.state.send_replace(ConnectionState::Connected);
    let remote = inner.remote(link);
    loop {
        let metas = sub.next().await?;
        cairn_protocol::ingest(&*inner.cache, &remote, &metas).await?;
    }
}
