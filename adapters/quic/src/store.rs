//! [`QuicStore`]: a local cache store plus a remote peer over QUIC.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn::{AcceptAll, DynAppendOnlyStore, Error, Keypair, Result, StoreId, SyncReport, Verifier};
use cairn_protocol::{
    Backoff, CacheFirst, ConnectionState, DEFAULT_MAX_FRAME, DeliveryFailure, Dial, Node, PeerId,
    Refusal, StoreEvent, Upstream, UpstreamOptions, classify,
};
use tokio::sync::{broadcast, watch};

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
    /// The connection is taken for lost after this long without a packet
    /// from the server (default 30 s, QUIC's idle timeout; keep-alives go
    /// out every third of it, at most every 5 s). Lower it to notice a dead
    /// path sooner, say to fail over to another route.
    pub idle_timeout: Duration,
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
            idle_timeout: Duration::from_secs(30),
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

/// How a [`QuicStore`] opens a connection.
#[derive(Debug)]
pub(crate) struct QuicDial {
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    server_id: PeerId,
    client_config: quinn::ClientConfig,
    max_frame: u32,
    request_timeout: Duration,
}

#[async_trait::async_trait]
impl Dial for QuicDial {
    type Link = Link;

    async fn dial(&self, store_id: &StoreId) -> Result<Link> {
        let mut link = Link::open(
            &self.endpoint,
            self.server,
            self.client_config.clone(),
            store_id,
            self.max_frame,
        )
        .await?;
        link.request_timeout = self.request_timeout;
        Ok(link)
    }

    fn transport(&self) -> &'static str {
        "quic"
    }

    fn server(&self) -> String {
        self.server.to_string()
    }

    fn server_id(&self) -> PeerId {
        self.server_id
    }

    fn refusal(&self, e: &Error) -> Option<Refusal> {
        if crate::link::is_wrong_server_key(e) {
            Some(Refusal::WrongPeerKey)
        } else {
            classify(e)
        }
    }
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
    up: Arc<Upstream<QuicDial>>,
    store: CacheFirst<Upstream<QuicDial>>,
}

cairn_protocol::forward_store!(QuicStore => store);

impl Drop for QuicStore {
    fn drop(&mut self) {
        self.up.cancel();
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
        let mut client_config = client_config(keypair, server_id)?;
        client_config.transport_config(crate::identity::client_transport(opts.idle_timeout));
        let node = Node::new(cache, opts.verifier.clone());
        let dial = QuicDial {
            endpoint,
            server,
            server_id,
            client_config,
            max_frame: opts.max_frame,
            request_timeout: opts.request_timeout,
        };
        let up = Upstream::start(
            node.clone(),
            dial,
            UpstreamOptions {
                backoff: Backoff {
                    min: opts.backoff_min,
                    max: opts.backoff_max,
                },
                connect_timeout: opts.connect_timeout,
                delivery_batch: opts.delivery_batch,
            },
        );
        Ok(QuicStore {
            store: CacheFirst::new(node, up.clone()),
            up,
        })
    }

    /// Watch the connection state.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.up.state()
    }

    /// The local cache store.
    pub fn cache(&self) -> &Arc<DynAppendOnlyStore> {
        self.up.node().cache()
    }

    /// The last error the connection failed with, if any (a refusal, or
    /// the last transient failure).
    pub fn last_error(&self) -> Option<Error> {
        self.up.last_error()
    }

    /// Wait until the state is [`ConnectionState::Connected`], at most
    /// `timeout`.
    ///
    /// - A refusal (unauthorized, wrong server key, unknown store, version
    ///   mismatch) returns its typed error as soon as it happens.
    /// - Otherwise, after `timeout`: [`Error::Timeout`] naming the server
    ///   and the last transient error.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        self.up.wait_connected(timeout).await
    }

    /// Local appends not yet confirmed by the server.
    pub fn pending(&self) -> usize {
        self.up.node().outbox().pending()
    }

    /// Wait until every local append so far is confirmed by the server, at
    /// most `timeout`. Returns the typed error of a permanent refusal (see
    /// [`cairn_protocol::Outbox::flush`]), or [`Error::Timeout`] naming how
    /// many changes are still pending.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        self.up.node().outbox().flush(timeout).await
    }

    /// Local changes the server refused for good (the most recent 64).
    pub fn delivery_failures(&self) -> Vec<DeliveryFailure> {
        self.up.node().outbox().failures()
    }

    /// Events: changes from the server refused by the local policy, and
    /// local changes the server refused.
    pub fn events(&self) -> broadcast::Receiver<StoreEvent> {
        self.up.node().events()
    }

    /// How many changes from the server the local policy refused so far.
    pub fn refused(&self) -> u64 {
        self.up.node().refused()
    }

    /// Bring the cache and the remote to the same set of changes (pull, then
    /// push). [`Error::Closed`] if not connected; a push the server refuses
    /// (a read-only peer) is returned as its error.
    pub async fn sync(&self) -> Result<SyncReport> {
        self.up.sync().await
    }

    /// Close the connection and stop reconnecting.
    pub async fn close(&self) {
        self.up.cancel();
        let endpoint = &self.up.dial().endpoint;
        endpoint.close(quinn::VarInt::from_u32(0), b"closed");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }
}
