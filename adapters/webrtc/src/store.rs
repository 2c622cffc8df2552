//! [`WebRtcStore`]: a local cache that serves itself to, and pulls from,
//! every peer it is paired with over WebRTC.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn::{
    AcceptAll, DynAppendOnlyStore, Error, Keypair, Result, StoreId, SyncReport, SyncState, Verifier,
};
use cairn_protocol::{
    Access, AccessPolicy, Admission, AdmissionOptions, Backoff, CacheFirst, CatchUp,
    ConnectionState, DEFAULT_MAX_FRAME, DEFAULT_MAX_MESSAGE, DeliveryFailure, DeliveryOptions,
    Node, PeerId, RemoteStore, ResponseLimits, ServeOptions, StoreEvent, Transport,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::{ROLE_CALLS, ROLE_SERVES, RoomKey};
use crate::conn::{Conn, ConnConfig};
use crate::ice::{IceConfig, TurnServer};
use crate::rtc::{Channel, PendingOffer, Setup};

/// Settings of a [`WebRtcStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WebRtcStoreOptions {
    /// Largest frame accepted (default 16 MiB); peers send no larger.
    pub max_frame: u32,
    /// Largest reassembled message accepted (default 1 GiB).
    pub max_message: u64,
    /// Where each peer connection binds its UDP sockets, each announced as
    /// a host ICE candidate. The default, `0.0.0.0`, binds one socket on
    /// every up interface's address (IPv4, at most 8; `::` adds global
    /// IPv6 ones), as browsers do; one address binds only that one
    /// ([`loopback`](Self::loopback) for tests and same-machine pairs).
    pub bind_ip: IpAddr,
    /// STUN servers (`HOST:PORT`, UDP) to learn this side's public address
    /// from, announced as a server-reflexive ICE candidate beside the host
    /// one, so that peers behind NATs with endpoint-independent mapping
    /// can connect directly (default none). Each is asked once per peer
    /// connection, at most 1.5 s; one that does not answer is skipped.
    pub stun_servers: Vec<SocketAddr>,
    /// TURN servers (UDP, long-term credentials) to allocate a relayed
    /// address on, announced as a relay ICE candidate: the path of last
    /// resort when both sides sit behind symmetric NATs or firewalls that
    /// only let replies in (default none). At most 2 are used per
    /// connection, each given 3 s to allocate; the allocation is released
    /// when the connection ends. A TURN server also answers STUN, so its
    /// address can go in `stun_servers` too.
    pub turn_servers: Vec<TurnServer>,
    /// Announce only relayed candidates (browsers' `iceTransportPolicy:
    /// "relay"`): every packet goes through a TURN server, and the peer
    /// never learns this side's addresses, only the relay's (default
    /// false). Pairing fails when no TURN server grants an allocation.
    pub relay_only: bool,
    /// How long ICE, DTLS and SCTP may take to open the channel (default 20 s).
    pub open_timeout: Duration,
    /// How long authentication and hellos may take (default 10 s).
    pub handshake_timeout: Duration,
    /// How long a request to a peer waits for its answer before it fails
    /// with a timeout (default 60 s, plus a second per MiB an append
    /// carries): a silent peer, or a frozen background tab, never hangs a
    /// caller.
    pub request_timeout: Duration,
    /// First delay before re-pairing with a lost peer (default 50 ms).
    pub backoff_min: Duration,
    /// Longest delay between attempts (default 5 s).
    pub backoff_max: Duration,
    /// The policy every change must pass before it enters the cache: from
    /// a peer (catch-up, notifications, fetches on a cache miss, a peer's
    /// append) or from a local append (default [`AcceptAll`]: every change
    /// that passes its integrity check). An app that signs its changes
    /// should use `RequireSignature` or `TrustedAuthors`.
    pub verifier: Arc<dyn Verifier>,
    /// Caps on every response this store serves to a peer.
    pub response: ResponseLimits,
    /// Append rate limits per peer and a stored-bytes quota for what peers
    /// append here (default: none).
    pub admission: AdmissionOptions,
    /// Offers answered from one room member in a burst (default 4); each
    /// opens a UDP socket until it pairs or times out.
    pub offer_burst: u32,
    /// How often one more offer from the same member is answered once its
    /// burst is spent (default every 2 s). Offers over the rate are ignored
    /// (the member's pairing retries with backoff). A newer offer from a
    /// member replaces the one still being answered, so one member holds at
    /// most one pairing socket here.
    pub offer_interval: Duration,
    /// Most pairings in progress at once, our offers and our answers
    /// together (default 32): a room full of members flooding offers cannot
    /// exhaust the process's file descriptors.
    pub max_handshakes: usize,
    /// A room key ([`RoomKey::derive`]) every session of this store must
    /// prove both ways, manual pairings included (default none). Sessions
    /// paired through a [`Signaling`](crate::Signaling) of a password room
    /// use that room's key instead.
    pub room_key: Option<RoomKey>,
}

impl Default for WebRtcStoreOptions {
    fn default() -> Self {
        WebRtcStoreOptions {
            max_frame: DEFAULT_MAX_FRAME,
            max_message: DEFAULT_MAX_MESSAGE,
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            stun_servers: Vec::new(),
            turn_servers: Vec::new(),
            relay_only: false,
            open_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            verifier: Arc::new(AcceptAll),
            response: ResponseLimits::default(),
            admission: AdmissionOptions::default(),
            offer_burst: 4,
            offer_interval: Duration::from_secs(2),
            max_handshakes: 32,
            room_key: None,
        }
    }
}

impl WebRtcStoreOptions {
    /// The defaults, but bound to 127.0.0.1 only: for tests, and for peers
    /// on one machine.
    pub fn loopback() -> Self {
        WebRtcStoreOptions {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            ..Self::default()
        }
    }

    /// What a peer connection gathers its candidates from.
    pub(crate) fn ice(&self) -> IceConfig {
        IceConfig {
            bind_ip: self.bind_ip,
            stun: self.stun_servers.clone(),
            turn: self.turn_servers.clone(),
            relay_only: self.relay_only,
        }
    }

    /// Use `verifier` at the cache's door.
    pub fn verifier(mut self, verifier: impl Verifier + 'static) -> Self {
        self.verifier = Arc::new(verifier);
        self
    }
}

struct PeerEntry {
    conn: Arc<Conn>,
}

pub(crate) struct Inner {
    pub(crate) store_id: StoreId,
    pub(crate) node: Arc<Node>,
    serve: ServeOptions,
    pub(crate) keypair: Keypair,
    policy: Arc<dyn AccessPolicy>,
    pub(crate) opts: WebRtcStoreOptions,
    peers: Mutex<HashMap<PeerId, PeerEntry>>,
    peers_tx: watch::Sender<Vec<PeerId>>,
    state: watch::Sender<ConnectionState>,
    pub(crate) cancel: CancellationToken,
    sync_states: Mutex<HashMap<PeerId, Arc<Mutex<SyncState>>>>,
    /// Told when a session with a peer ends (the room re-pairs).
    pub(crate) lost: Mutex<Option<mpsc::UnboundedSender<PeerId>>>,
}

/// A store shared over WebRTC: every read and write goes to a local cache
/// (any [`AppendOnlyStore`](cairn::AppendOnlyStore)); the cache is served to every paired peer
/// (under the [`AccessPolicy`]) and kept up to date from them: each peer
/// pulls what it lacks on pairing, then live through a subscription.
/// Every change from a peer passes the [`WebRtcStoreOptions::verifier`]
/// first; a refused one never enters the cache and is reported on
/// [`events`](WebRtcStore::events). `append` writes the cache and an
/// outbox and never waits on a peer; each paired peer's delivery loop
/// sends it in the background ([`pending`](WebRtcStore::pending),
/// [`flush`](WebRtcStore::flush)); offline appends reach peers on the next
/// pairing. Paired through a [`Signaling`](crate::Signaling)
/// room ([`join`](WebRtcStore::join)), with automatic re-pairing, or by hand
/// ([`offer`](WebRtcStore::offer) / [`answer`](WebRtcStore::answer)).
pub struct WebRtcStore {
    pub(crate) inner: Arc<Inner>,
    store: CacheFirst<Inner>,
}

cairn_protocol::forward_store!(WebRtcStore => store);

impl std::fmt::Debug for WebRtcStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcStore")
            .field("store_id", &self.inner.store_id)
            .field("peer", &self.inner.keypair.author())
            .finish()
    }
}

impl Drop for WebRtcStore {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

/// An offer made by hand, waiting for the peer's answer.
pub struct ManualOffer {
    inner: Arc<Inner>,
    pending: PendingOffer,
}

/// Prefix of the copyable offer and answer strings.
pub const MANUAL_PREFIX: &str = "cairn-webrtc1:";

/// Encode an SDP as a copyable string.
pub fn encode_sdp(sdp: &str) -> String {
    format!(
        "{MANUAL_PREFIX}{}",
        data_encoding::BASE64URL_NOPAD.encode(sdp.as_bytes())
    )
}

/// Decode a copyable string made by [`encode_sdp`] (surrounding whitespace
/// is ignored).
pub fn decode_sdp(s: &str) -> Result<String> {
    let bad = |reason: &str| Error::InvalidInput {
        reason: format!("not a cairn-webrtc pairing string: {reason}"),
    };
    let body = s
        .trim()
        .strip_prefix(MANUAL_PREFIX)
        .ok_or_else(|| bad("missing prefix"))?;
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(body.as_bytes())
        .map_err(|_| bad("bad base64"))?;
    String::from_utf8(bytes).map_err(|_| bad("not UTF-8"))
}

impl std::fmt::Debug for ManualOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ManualOffer")
    }
}

impl ManualOffer {
    /// Apply the peer's answer string; returns the peer's proven id once
    /// the channel is open, authenticated and the first pull is done.
    pub async fn accept(self, answer: &str) -> Result<PeerId> {
        let sdp = decode_sdp(answer)?;
        let rx = self.pending.accept(&sdp, self.inner.opts.open_timeout)?;
        start(self.inner.clone(), rx, self.inner.opts.room_key.clone()).await
    }
}

impl WebRtcStore {
    /// A store over `cache`, identified as `keypair`, letting peers do
    /// what `policy` allows. Pair it with [`join`](Self::join) or by hand.
    /// Must be called inside a tokio runtime.
    pub fn new(
        cache: Arc<DynAppendOnlyStore>,
        keypair: &Keypair,
        policy: Arc<dyn AccessPolicy>,
        opts: WebRtcStoreOptions,
    ) -> Self {
        let node = Node::new(cache, opts.verifier.clone());
        let serve = ServeOptions {
            verifier: opts.verifier.clone(),
            limits: opts.response,
            admission: Arc::new(Admission::new(opts.admission)),
        };
        let inner = Arc::new(Inner {
            store_id: node.cache().store_id().clone(),
            node,
            serve,
            keypair: keypair.clone(),
            policy,
            opts,
            peers: Mutex::new(HashMap::new()),
            peers_tx: watch::Sender::new(Vec::new()),
            state: watch::Sender::new(ConnectionState::Disconnected),
            cancel: CancellationToken::new(),
            sync_states: Mutex::new(HashMap::new()),
            lost: Mutex::new(None),
        });
        WebRtcStore {
            store: CacheFirst::new(inner.node.clone(), inner.clone()),
            inner,
        }
    }

    /// This store's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.keypair.author()
    }

    /// The local cache.
    pub fn cache(&self) -> &Arc<DynAppendOnlyStore> {
        self.inner.node.cache()
    }

    /// Local appends not yet confirmed by every paired peer (and by at
    /// least one).
    pub fn pending(&self) -> usize {
        self.inner.node.outbox().pending()
    }

    /// Wait until every local append so far is delivered, at most
    /// `timeout` (see [`cairn_protocol::Outbox::flush`]).
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner.node.outbox().flush(timeout).await
    }

    /// Local changes a peer refused for good (the most recent 64).
    pub fn delivery_failures(&self) -> Vec<DeliveryFailure> {
        self.inner.node.outbox().failures()
    }

    /// Events: changes from peers refused by the local policy, and local
    /// changes a peer refused.
    pub fn events(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.node.events()
    }

    /// How many changes from peers the local policy refused so far.
    pub fn refused(&self) -> u64 {
        self.inner.node.refused()
    }

    /// Connection state: `Connected` while at least one peer is paired and
    /// caught up; `Retrying` while re-pairing with lost peers.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    /// The peers currently paired (authenticated, caught up), sorted.
    pub fn peers(&self) -> watch::Receiver<Vec<PeerId>> {
        self.inner.peers_tx.subscribe()
    }

    /// The (local, remote) socket addresses of the ICE candidate pair in
    /// use with `peer`, if paired: which path the connection took (a host
    /// address on a LAN, a NAT's public address through STUN).
    pub fn peer_path(&self, peer: &PeerId) -> Option<(SocketAddr, SocketAddr)> {
        self.inner
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .filter(|e| !e.conn.is_closed())
            .and_then(|e| e.conn.path)
    }

    /// Wait until at least one peer is paired.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        self.wait_peers(1, timeout).await
    }

    /// Wait until at least `n` peers are paired.
    ///
    /// [`Error::Timeout`] naming the count when they do not pair in time,
    /// [`Error::Closed`] when the store closes first.
    pub async fn wait_peers(&self, n: usize, timeout: Duration) -> Result<()> {
        let mut rx = self.peers();
        let r = tokio::time::timeout(timeout, rx.wait_for(|p| p.len() >= n))
            .await
            .map(|r| r.is_ok());
        match r {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                what: format!(
                    "{n} paired WebRTC peer(s) ({} now)",
                    self.peers().borrow().len()
                ),
                after: timeout,
            }),
        }
    }

    /// Pair with every peer of a signaling room, now and as they come and
    /// go; lost sessions are re-paired with capped backoff. Runs until the
    /// store is closed or the signaling ends.
    pub fn join(&self, signaling: impl crate::Signaling) {
        tokio::spawn(crate::room::run(self.inner.clone(), signaling));
    }

    /// Make an offer to pair by hand: give the string to the peer, feed its
    /// answer to [`ManualOffer::accept`].
    pub async fn offer(&self) -> Result<(String, ManualOffer)> {
        let (sdp, pending) = Setup::new(&self.inner.opts.ice()).await?.offer()?;
        Ok((
            encode_sdp(&sdp),
            ManualOffer {
                inner: self.inner.clone(),
                pending,
            },
        ))
    }

    /// Answer an offer string made by [`offer`](Self::offer) (or a
    /// browser); returns the answer string for the peer. The pairing
    /// completes in the background (watch [`peers`](Self::peers)).
    pub async fn answer(&self, offer: &str) -> Result<String> {
        let sdp = decode_sdp(offer)?;
        let (answer, rx) = Setup::new(&self.inner.opts.ice())
            .await?
            .answer(&sdp, self.inner.opts.open_timeout)?;
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let key = inner.opts.room_key.clone();
            if let Err(e) = start(inner, rx, key).await {
                warn!(error = %e, "pairing failed");
            }
        });
        Ok(encode_sdp(&answer))
    }

    /// Sync with every paired peer now (pull and push; push only to peers
    /// our policy does not let write to us). Fails with
    /// [`Error::Closed`] when no peer is paired.
    pub async fn sync(&self) -> Result<Vec<(PeerId, SyncReport)>> {
        let conns = self.inner.conns();
        if conns.is_empty() {
            return Err(Error::Closed);
        }
        let mut out = Vec::new();
        for conn in conns {
            if conn.roles & ROLE_SERVES == 0 {
                continue;
            }
            let r = self.inner.sync_with(&conn, true).await?;
            out.push((conn.peer(), r));
        }
        Ok(out)
    }

    /// Unpair from every peer and stop pairing.
    pub async fn close(&self) {
        self.inner.shutdown();
    }

    /// Close the session with one peer (for tests and tools); it may
    /// re-pair.
    pub fn disconnect(&self, peer: &PeerId) {
        if let Some(c) = self
            .inner
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
        {
            c.conn.close();
        }
    }
}

/// Run a new channel through the handshake and start its session; returns
/// once the peer is paired and caught up.
pub(crate) async fn start(
    inner: Arc<Inner>,
    rx: oneshot::Receiver<Result<Channel>>,
    room_key: Option<RoomKey>,
) -> Result<PeerId> {
    let ch = tokio::select! {
        _ = inner.cancel.cancelled() => return Err(Error::Closed),
        r = rx => r.map_err(|_| Error::Closed)??,
    };
    let cfg = ConnConfig {
        keypair: inner.keypair.clone(),
        roles: ROLE_SERVES | ROLE_CALLS,
        store: inner.node.cache().clone(),
        serve: inner.serve.clone(),
        policy: inner.policy.clone(),
        max_frame: inner.opts.max_frame,
        max_message: inner.opts.max_message,
        handshake_timeout: inner.opts.handshake_timeout,
        request_timeout: inner.opts.request_timeout,
        room_key,
        delivered: {
            let node = inner.node.clone();
            Some(Arc::new(move |peer: &PeerId, id: &cairn::ChangeId| {
                node.outbox().delivers_to(peer, id)
            }))
        },
    };
    let conn = Conn::establish(ch, cfg).await?;
    let peer = conn.peer();
    if peer == inner.keypair.author() {
        conn.close();
        return Err(Error::Unauthorized {
            reason: "paired with ourselves".into(),
        });
    }
    let (ready_tx, ready_rx) = oneshot::channel();
    let inner2 = inner.clone();
    tokio::spawn(async move {
        let r = session(&inner2, &conn, ready_tx).await;
        if let Err(e) = &r {
            debug!(%peer, error = %e, "session ended");
        }
        conn.close();
        inner2.remove(&conn);
    });
    match ready_rx.await {
        Ok(r) => r.map(|()| peer),
        Err(_) => Err(Error::Closed),
    }
}

/// How often a session's catch-up, or applying one live notification, is
/// retried after a transient failure before the session ends.
const CATCH_UP_ATTEMPTS: u32 = 8;

async fn session(
    inner: &Arc<Inner>,
    conn: &Arc<Conn>,
    ready: oneshot::Sender<Result<()>>,
) -> Result<()> {
    let pulls = conn.roles & ROLE_SERVES != 0 && conn.perm().allows(Access::Write);
    let mut sub = None;
    if pulls {
        let setup = async {
            let s = conn.subscribe().await?;
            // A transient failure (our cache busy for a moment, a request
            // timing out) is retried on this connection with backoff:
            // ending the session would leave the peer on a dead connection
            // until ICE gives up. Bounded by the attempts.
            let backoff = Backoff {
                min: inner.opts.backoff_min,
                max: inner.opts.backoff_max,
            };
            let mut attempt = 0;
            let report = loop {
                match inner.sync_with(conn, false).await {
                    Ok(r) => break r,
                    Err(e) if e.is_retryable() && attempt < CATCH_UP_ATTEMPTS => {
                        attempt += 1;
                        let delay = backoff.delay(attempt);
                        debug!(peer = %conn.peer(), error = %e, ?delay, "catching up failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            Ok::<_, Error>((s, report))
        };
        let r = tokio::select! {
            _ = conn.closed() => Err(Error::Closed),
            r = setup => r,
        };
        match r {
            Ok((s, report)) => {
                info!(peer = %conn.peer(), %report, "caught up with the peer");
                sub = Some(s);
            }
            Err(e) => {
                let _ = ready.send(Err(e.clone_lossy()));
                return Err(e);
            }
        }
    }
    inner.insert(conn.clone());
    let _ = ready.send(Ok(()));
    let remote = inner.remote(conn);
    let delivery = DeliveryOptions {
        backoff: Backoff {
            min: inner.opts.backoff_min,
            max: inner.opts.backoff_max,
        },
        max_bytes: u64::from(conn.send_limit() / 2),
        ..DeliveryOptions::default()
    };
    // Deliver the outbox to every peer that serves a store.
    let deliver = async {
        if conn.roles & ROLE_SERVES != 0 {
            inner.node.deliver(conn.peer(), &remote, &delivery).await
        } else {
            std::future::pending().await
        }
    };
    let follow = async {
        let Some(mut sub) = sub else {
            return std::future::pending().await;
        };
        // Bounded by the connection: `recv` ends when it closes.
        while let Some(item) = sub.recv().await {
            let metas = item?;
            inner
                .node
                .follow(
                    conn.peer(),
                    &remote,
                    &metas,
                    &delivery.backoff,
                    CATCH_UP_ATTEMPTS,
                )
                .await?;
        }
        // The subscription ended (we fell behind, or the peer stopped it):
        // end the session, so that pairing again catches up.
        Err(Error::Closed)
    };
    tokio::select! {
        _ = conn.closed() => Ok(()),
        r = follow => r,
        r = deliver => r,
    }
}

trait CloneLossy {
    fn clone_lossy(&self) -> Error;
}

impl CloneLossy for Error {
    fn clone_lossy(&self) -> Error {
        match self {
            Error::Closed => Error::Closed,
            Error::Unauthorized { reason } => Error::Unauthorized {
                reason: reason.clone(),
            },
            e => Error::backend(
                "webrtc",
                e.is_retryable(),
                std::io::Error::other(e.to_string()),
            ),
        }
    }
}

impl Inner {
    fn shutdown(&self) {
        let peers: Vec<Arc<Conn>> = {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            // Cancelled under the lock, so `insert` sees it or is drained.
            self.cancel.cancel();
            peers.drain().map(|(_, e)| e.conn).collect()
        };
        for c in peers {
            c.close();
        }
        self.publish();
    }

    pub(crate) fn conns(&self) -> Vec<Arc<Conn>> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|e| !e.conn.is_closed())
            .map(|e| e.conn.clone())
            .collect()
    }

    pub(crate) fn is_paired(&self, peer: &PeerId) -> bool {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .is_some_and(|e| !e.conn.is_closed())
    }

    pub(crate) fn set_state(&self, s: ConnectionState) {
        if self.peers_tx.borrow().is_empty() {
            self.state.send_replace(s);
        }
    }

    fn insert(&self, conn: Arc<Conn>) {
        let old = {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            // Checked under the lock `shutdown` drains: a session whose
            // catch-up finished after `close` must not outlive the store.
            if self.cancel.is_cancelled() {
                drop(peers);
                conn.close();
                return;
            }
            peers.insert(conn.peer(), PeerEntry { conn })
        };
        if let Some(old) = old {
            old.conn.close();
        }
        self.publish();
    }

    fn remove(&self, conn: &Arc<Conn>) {
        let removed = {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            match peers.get(&conn.peer()) {
                Some(e) if Arc::ptr_eq(&e.conn, conn) => peers.remove(&conn.peer()).is_some(),
                _ => false,
            }
        };
        if removed {
            self.publish();
            if !self.cancel.is_cancelled()
                && let Some(tx) = &*self.lost.lock().unwrap_or_else(|e| e.into_inner())
            {
                let _ = tx.send(conn.peer());
            }
        }
    }

    fn publish(&self) {
        let mut ids: Vec<PeerId> = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        ids.sort();
        let connected = !ids.is_empty();
        self.peers_tx.send_replace(ids);
        if connected {
            self.state.send_replace(ConnectionState::Connected);
        } else if !matches!(*self.state.borrow(), ConnectionState::Retrying { .. }) {
            self.state.send_replace(ConnectionState::Disconnected);
        }
    }

    /// The peer's side of `conn` as a store.
    fn remote(&self, conn: &Arc<Conn>) -> RemoteStore<Conn> {
        RemoteStore::new("webrtc", self.store_id.clone(), conn.hello(), conn.clone())
    }

    async fn sync_with(&self, conn: &Arc<Conn>, both: bool) -> Result<SyncReport> {
        let remote = self.remote(conn);
        let state = self
            .sync_states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(conn.peer())
            .or_default()
            .clone();
        let opts = CatchUp {
            pull: conn.perm().allows(Access::Write),
            push: both,
            batch_bytes: u64::from(conn.send_limit() / 2),
            // An explicit sync reports a refused push; the pairing's
            // catch-up only pulls.
            strict: both,
        };
        self.node.catch_up(conn.peer(), &remote, &state, opts).await
    }
}

impl Transport for Inner {
    /// The paired peers that serve us and that we pull from.
    fn remotes(&self) -> Vec<(PeerId, Arc<DynAppendOnlyStore>)> {
        let conns = self.conns().into_iter();
        conns
            .filter(|c| c.roles & ROLE_SERVES != 0 && c.perm().allows(Access::Write))
            .map(|c| (c.peer(), Arc::new(self.remote(&c)) as _))
            .collect()
    }
}
