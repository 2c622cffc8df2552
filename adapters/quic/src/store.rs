//! [`QuicStore`]: a local cache store plus a remote peer over QUIC.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use cairn::encoding::encode_meta;
use cairn::sync::SyncOptions;
use cairn::{
    AppendOnlyStore, AppendOutcome, Capabilities, Change, ChangeId, ChangeMeta, ChangeStream,
    DocId, DynAppendOnlyStore, Error, Head, IdRange, Keypair, RangeSummary, Result, ScanItem,
    StoreId, SyncReport, SyncState,
};
use cairn_protocol::{DEFAULT_MAX_FRAME, HEADER_LEN, LEN_PREFIX, RemoteCalls};
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

/// An [`AppendOnlyStore`] over a local cache store and a remote peer.
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
///   [`subscribe`](AppendOnlyStore::subscribe) of this store.
/// - [`state`](QuicStore::state) tells whether it is connected.
#[derive(Debug)]
pub struct QuicStore {
    inner: Arc<Inner>,
}

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
        Ok(QuicStore { inner })
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

    async fn sync_with(&self, link: &Arc<Link>) -> Result<SyncReport> {
        let remote = RemoteView {
            store_id: self.store_id.clone(),
            link: link.clone(),
        };
        let state = *self.sync_state.lock().unwrap_or_else(|e| e.into_inner());
        let opts = SyncOptions {
            state,
            batch_bytes: u64::from(link.send_limit() / 2),
            ..SyncOptions::default()
        };
        let report = cairn::sync::sync(&*self.cache, &remote, &opts).await?;
        *self.sync_state.lock().unwrap_or_else(|e| e.into_inner()) = report.state;
        Ok(report)
    }

    /// Fetch the changes among `ids` the cache lacks and the peer holds.
    async fn fetch_missing(&self, ids: &[ChangeId]) -> Result<()> {
        let Some(link) = self.current() else {
            return Ok(());
        };
        let have = self.cache.has_changes(ids).await?;
        let mut seen = HashSet::new();
        let missing: Vec<ChangeId> = ids
            .iter()
            .zip(have)
            .filter(|(id, h)| !h && seen.insert(**id))
            .map(|(id, _)| *id)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        match link.remote_get_changes(&missing).await {
            Ok(changes) if !changes.is_empty() => {
                self.cache.append(changes).await?;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) if e.is_retryable() => {
                debug!(error = %e, "fetch from the peer failed; answering from the cache");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Apply notified metadata: fetch what the cache lacks.
    async fn ingest(&self, link: &Link, metas: Vec<ChangeMeta>) -> Result<()> {
        let ids: Vec<ChangeId> = metas.iter().map(|m| m.id).collect();
        let have = self.cache.has_changes(&ids).await?;
        let missing: Vec<ChangeId> = ids
            .into_iter()
            .zip(have)
            .filter(|(_, h)| !h)
            .map(|(id, _)| id)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let changes = link.remote_get_changes(&missing).await?;
        self.cache.append(changes).await?;
        Ok(())
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
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        let delay = inner
            .opts
            .backoff_min
            .saturating_mul(factor)
            .min(inner.opts.backoff_max);
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
    loop {
        let metas = sub.next().await?;
        inner.ingest(link, metas).await?;
    }
}

/// The remote side of one link as a store, for the sync engine.
#[derive(Debug)]
struct RemoteView {
    store_id: StoreId,
    link: Arc<Link>,
}

#[async_trait]
impl AppendOnlyStore for RemoteView {
    fn store_id(&self) -> &StoreId {
        &self.store_id
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            remote: true,
            ..self.link.hello.capabilities
        }
    }
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        self.link.remote_append(changes).await
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        self.link.remote_get_changes(ids).await
    }
    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        self.link.remote_get_metas(ids).await
    }
    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        self.link.remote_has_changes(ids).await
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.link.remote_scan(after, limit).await
    }
    async fn head(&self) -> Result<Head> {
        self.link.remote_head().await
    }
    async fn subscribe(&self) -> Result<ChangeStream> {
        Err(Error::Unsupported {
            store: "quic",
            what: "subscribe",
        })
    }
    async fn find_new_changes(&self, have: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        self.link.remote_find_new_changes(have).await
    }
    async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
        self.link.remote_all_change_ids().await
    }
    async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        self.link.remote_range_summary(range).await
    }
    async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        self.link.remote_ids_in_range(range, limit).await
    }
}

/// Bytes `change` takes in an append request frame.
fn framed_size(change: &Change) -> usize {
    LEN_PREFIX + HEADER_LEN + 4 + 4 + encode_meta(&change.meta).len() + 4 + change.payload.len()
}

#[async_trait]
impl AppendOnlyStore for QuicStore {
    fn store_id(&self) -> &StoreId {
        &self.inner.store_id
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            remote: true,
            ..self.inner.cache.capabilities()
        }
    }

    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        let limit = self.inner.peer_max_frame.load(Ordering::Acquire) as usize;
        for c in &changes {
            let size = framed_size(c);
            if size > limit {
                // Report what any store would first (limits, integrity).
                cairn::prepare_batch(changes.clone(), &cairn::Limits::DEFAULT)?;
                return Err(Error::TooLarge {
                    what: "change",
                    limit: limit as u64,
                    actual: size as u64,
                });
            }
        }
        let Some(link) = self.inner.current() else {
            return self.inner.cache.append(changes).await;
        };
        let out = self.inner.cache.append(changes.clone()).await?;
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

    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        let local = self.inner.cache.get_changes(ids).await?;
        if local.len() >= ids.len() {
            return Ok(local);
        }
        self.inner.fetch_missing(ids).await?;
        self.inner.cache.get_changes(ids).await
    }

    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        let local = self.inner.cache.get_metas(ids).await?;
        if local.len() >= ids.len() {
            return Ok(local);
        }
        self.inner.fetch_missing(ids).await?;
        self.inner.cache.get_metas(ids).await
    }

    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        let local = self.inner.cache.has_changes(ids).await?;
        if local.iter().all(|h| *h) {
            return Ok(local);
        }
        self.inner.fetch_missing(ids).await?;
        self.inner.cache.has_changes(ids).await
    }

    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.inner.cache.scan(after, limit).await
    }

    async fn head(&self) -> Result<Head> {
        self.inner.cache.head().await
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        self.inner.cache.subscribe().await
    }

    async fn find_new_changes(&self, have: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        self.inner.cache.find_new_changes(have).await
    }

    async fn find_new_changes_for_doc(
        &self,
        have: &[ChangeId],
        doc: &DocId,
    ) -> Result<Vec<ChangeMeta>> {
        self.inner.cache.find_new_changes_for_doc(have, doc).await
    }

    async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
        self.inner.cache.all_change_ids().await
    }

    async fn changes_for_doc(
        &self,
        doc: &DocId,
        from_last_snapshot: bool,
    ) -> Result<Vec<ChangeMeta>> {
        self.inner
            .cache
            .changes_for_doc(doc, from_last_snapshot)
            .await
    }

    async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        self.inner.cache.range_summary(range).await
    }

    async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        self.inner.cache.ids_in_range(range, limit).await
    }
}
