//! One store, the best path that works.
//!
//! A [`Connector`] is an [`AppendOnlyStore`] over a local cache that keeps
//! one connection to the peer that serves its store, over the best of the
//! [`Route`]s it is given, in order of preference:
//!
//! 1. [`Route::Lan`]: the peer found on the local network by mDNS
//!    (`cairn-lan`), then QUIC straight to it;
//! 2. [`Route::WebRtc`]: the other devices of a room, paired through a
//!    signaling server (`cairn-webrtc`), then WebRTC straight to them;
//! 3. [`Route::Quic`]: the relay over QUIC;
//! 4. [`Route::WebSocket`]: the relay over WebSocket (TCP; `wss://` on 443
//!    gets through networks that block UDP).
//!
//! The order of preference is the order of the `routes` given to
//! [`Connector::new`], best first; the list above is the order the
//! connector is meant for.
//!
//! It connects over the first route that works, keeps it, and every
//! [`probe_every`](ConnectorOptions::probe_every) tries the better ones
//! again, moving up when one works ("upgrades"); when the path in use is
//! lost for [`failover_after`](ConnectorOptions::failover_after), it starts
//! over from the top. Its [`state`](Connector::state) says which path is in
//! use, in words an app can show ("connected to 1 device (LAN)",
//! "relay (websocket)", "offline").
//!
//! Nothing is lost on a switch: every path writes the same cache, a new
//! path's catch-up pushes what the server lacks, and on an upgrade the old
//! path delivers its outbox before it closes. Appends while offline land in
//! the cache (after the policy) and go out with the next catch-up.
//!
//! Every wait is bounded: a route's attempt by
//! [`connect_timeout`](ConnectorOptions::connect_timeout) (and the LAN
//! search by [`lan_timeout`](ConnectorOptions::lan_timeout)); the manager
//! stops on [`close`](Connector::close) or drop.
//!
//! ```no_run
//! # async fn f(relay: cairn_protocol::PeerId, laptop: cairn_protocol::PeerId, me: cairn::Keypair) -> cairn::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use cairn::{AppendOnlyStore, StoreId};
//! use cairn_connect::{Connector, ConnectorOptions, Route};
//! use cairn_webrtc::{Acl, Permission, WebRtcStoreOptions};
//! let sid = StoreId::new("family/photos")?;
//! let cache = Arc::new(cairn_memory::MemoryStore::new(sid.clone()));
//! let store = Connector::new(
//!     cache,
//!     vec![
//!         Route::Lan { lan: Arc::new(cairn_lan::Lan::new()?), peer: relay },
//!         Route::WebRtc {
//!             signaling: "wss://signal.example.org/".into(),
//!             room: "ABC-DEF".parse()?,
//!             // Pair with our laptop only.
//!             policy: Arc::new(Acl::new().allow(&sid, laptop, Permission::ReadWrite)),
//!             options: WebRtcStoreOptions::default(),
//!             min_peers: 1,
//!         },
//!         Route::Quic { addr: "203.0.113.7:4433".parse().unwrap(), peer: relay },
//!         Route::WebSocket { url: "wss://relay.example.org/".into(), peer: relay },
//!     ],
//!     &me,
//!     ConnectorOptions::default(),
//! )?;
//! let mut state = store.state();
//! store.wait_connected(Duration::from_secs(10)).await?;
//! println!("{}", *state.borrow_and_update()); // e.g. "relay (QUIC)"
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn::{
    AppendOnlyStore, AppendOutcome, Capabilities, Change, ChangeId, ChangeMeta, ChangeStream,
    DocId, DynAppendOnlyStore, Error, Head, IdRange, Keypair, RangeSummary, Result, ScanItem,
    StoreId, Verifier,
};
use cairn_lan::Lan;
use cairn_protocol::{ConnectionState, PeerId};
use cairn_quic::{QuicStore, QuicStoreOptions};
use cairn_webrtc::{AccessPolicy, RoomCode, WebRtcStore, WebRtcStoreOptions, WsSignaling};
use cairn_websocket::{WebSocketStore, WebSocketStoreOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// One way to reach the peer that serves the store.
#[derive(Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "a connector holds a handful of routes, built once; boxing the WebRTC options would only cost its callers a Box::new"
)]
pub enum Route {
    /// Find `peer` on the LAN by mDNS, then QUIC to the address it
    /// announces (its key pinned).
    Lan {
        /// The mDNS daemon to search with.
        lan: Arc<Lan>,
        /// The peer to find.
        peer: PeerId,
    },
    /// WebRTC straight to the other devices of a signaling room: the
    /// connector joins `room` on the `cairn-webrtc` signaling server at
    /// `signaling` as its own key, pairs with every member (each side
    /// proves its key inside DTLS, and the room key if `options` has one),
    /// and syncs with all of them, a mesh: each side pulls what it lacks
    /// and pushes its appends.
    ///
    /// An attempt builds a fresh [`WebRtcStore`] over the connector's
    /// cache, with `options` but the connector's
    /// [`verifier`](ConnectorOptions::verifier), and works once at least
    /// `min_peers` devices are paired and caught up, all within
    /// [`connect_timeout`](ConnectorOptions::connect_timeout) (signaling
    /// included). The path is lost when no device is paired any more (for
    /// [`failover_after`](ConnectorOptions::failover_after)); while it
    /// holds, the state counts the devices paired. `cairn-webrtc` notices a
    /// gone device when its data channel closes or ICE gives up on it; a
    /// device that closes its store does not close the channel, so that
    /// takes about 20 s (str0m's consent checks; not configurable yet).
    ///
    /// While this path is in use the connector talks to the devices only,
    /// not to a relay: a relay route's catch-up delivers to the relay when
    /// the connector falls back to it.
    WebRtc {
        /// The `ws://` or `wss://` URL of a `cairn_webrtc::SignalingServer`.
        signaling: String,
        /// The room the devices meet in.
        room: RoomCode,
        /// Who may pair and what each device may do with the store (the
        /// counterpart of the pinned peer id of the other routes):
        /// `cairn_webrtc::Acl::new().allow(&store, device, ReadWrite)` for
        /// known devices. A device with `Read` only is served but not
        /// pulled from. `Acl::open()` lets in anyone who knows the room
        /// code (and the room password, if there is one).
        policy: Arc<dyn AccessPolicy>,
        /// Options of the WebRTC store: `bind_ip` (where its UDP sockets
        /// bind; each bound address is announced to the room as a host
        /// candidate), the STUN and TURN servers, and `room_key` for a
        /// password room (`cairn_webrtc::RoomKey::derive(&room, password)`,
        /// derived once rather than on every attempt). Build it from
        /// `WebRtcStoreOptions::default()` and set fields, so that new
        /// fields keep their defaults. Its `verifier` is replaced by the
        /// connector's.
        options: WebRtcStoreOptions,
        /// How many devices must be paired for an attempt to work (at
        /// least 1; [`Connector::new`] refuses 0).
        min_peers: usize,
    },
    /// QUIC to a relay.
    Quic {
        /// Its address.
        addr: SocketAddr,
        /// Its peer id (pinned).
        peer: PeerId,
    },
    /// WebSocket to a relay (`ws://` or `wss://`).
    WebSocket {
        /// Its URL.
        url: String,
        /// Its peer id (pinned).
        peer: PeerId,
    },
}

impl Route {
    /// The kind of path this route gives.
    pub fn kind(&self) -> PathKind {
        match self {
            Route::Lan { .. } => PathKind::Lan,
            Route::WebRtc { .. } => PathKind::WebRtc,
            Route::Quic { .. } => PathKind::Quic,
            Route::WebSocket { .. } => PathKind::WebSocket,
        }
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Lan { peer, .. } => write!(f, "Lan({})", peer.short()),
            Route::WebRtc {
                signaling, room, ..
            } => write!(f, "WebRtc({signaling}, {room})"),
            Route::Quic { addr, peer } => write!(f, "Quic({addr}, {})", peer.short()),
            Route::WebSocket { url, peer } => write!(f, "WebSocket({url}, {})", peer.short()),
        }
    }
}

/// The kind of path in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// Straight to a peer on the local network.
    Lan,
    /// Straight to the devices of a room, over WebRTC.
    WebRtc,
    /// The relay over QUIC.
    Quic,
    /// The relay over WebSocket.
    WebSocket,
}

/// Where the connector stands; its `Display` is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathState {
    /// No path works (yet): `last_error` is the last route's failure.
    Offline {
        /// Why the last attempt failed, if one was made.
        last_error: Option<String>,
    },
    /// Connected and caught up over `path`.
    Connected {
        /// The path in use.
        path: PathKind,
        /// Devices reached directly: 1 on the LAN, 0 through a relay, and
        /// over WebRTC the devices paired now (kept up to date as they come
        /// and go; when the last one goes, the last count stays until the
        /// path is given up or a device pairs again).
        devices: usize,
    },
}

impl PathState {
    /// The path in use, if connected.
    pub fn path(&self) -> Option<PathKind> {
        match self {
            PathState::Connected { path, .. } => Some(*path),
            PathState::Offline { .. } => None,
        }
    }
}

impl fmt::Display for PathState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathState::Offline { last_error: None } => f.write_str("offline"),
            PathState::Offline {
                last_error: Some(e),
            } => write!(f, "offline ({e})"),
            PathState::Connected {
                path: PathKind::Lan,
                devices,
            } => write!(
                f,
                "connected to {devices} device{} (LAN)",
                if *devices == 1 { "" } else { "s" }
            ),
            PathState::Connected {
                path: PathKind::WebRtc,
                devices,
            } => write!(
                f,
                "connected to {devices} device{} (direct)",
                if *devices == 1 { "" } else { "s" }
            ),
            PathState::Connected {
                path: PathKind::Quic,
                ..
            } => f.write_str("relay (QUIC)"),
            PathState::Connected {
                path: PathKind::WebSocket,
                ..
            } => f.write_str("relay (websocket)"),
        }
    }
}

/// How a [`Connector`] tries its routes.
#[derive(Clone)]
pub struct ConnectorOptions {
    /// How long one route's attempt (connect, handshake, catch-up) may
    /// take (default 5 s).
    pub connect_timeout: Duration,
    /// How long the LAN route searches for its peer (default 2 s).
    pub lan_timeout: Duration,
    /// How often better routes are tried while a worse one is in use, and
    /// the longest wait between attempts while offline (default 30 s).
    pub probe_every: Duration,
    /// How long the path in use may stay lost (its own reconnects failing)
    /// before the connector starts over from the best route (default 5 s).
    pub failover_after: Duration,
    /// The policy every change must pass (the routes' stores use it too;
    /// default: accept every change that passes its integrity check).
    pub verifier: Arc<dyn Verifier>,
    /// Options of the QUIC stores (LAN and relay); its verifier is replaced
    /// by `verifier` and its connect timeout by `connect_timeout`. Its
    /// `idle_timeout` (10 s here) is how long a silently dead QUIC path
    /// takes to be noticed.
    pub quic: QuicStoreOptions,
    /// Options of the WebSocket store, the same way; its `idle_timeout`
    /// (15 s here, with a ping every 5 s) is how long a dead WebSocket path
    /// takes to be noticed.
    pub websocket: WebSocketStoreOptions,
}

impl Default for ConnectorOptions {
    fn default() -> Self {
        ConnectorOptions {
            connect_timeout: Duration::from_secs(5),
            lan_timeout: Duration::from_secs(2),
            probe_every: Duration::from_secs(30),
            failover_after: Duration::from_secs(5),
            verifier: Arc::new(cairn::AcceptAll),
            quic: QuicStoreOptions {
                idle_timeout: Duration::from_secs(10),
                ..QuicStoreOptions::default()
            },
            websocket: WebSocketStoreOptions {
                keepalive: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(15),
                ..WebSocketStoreOptions::default()
            },
        }
    }
}

impl fmt::Debug for ConnectorOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("lan_timeout", &self.lan_timeout)
            .field("probe_every", &self.probe_every)
            .field("failover_after", &self.failover_after)
            .finish_non_exhaustive()
    }
}

/// The store of one open path.
enum Up {
    Quic(QuicStore),
    Ws(WebSocketStore),
    /// The store and how many peers an attempt waits for.
    WebRtc(WebRtcStore, usize),
}

impl Up {
    fn store(&self) -> &DynAppendOnlyStore {
        match self {
            Up::Quic(s) => s,
            Up::Ws(s) => s,
            Up::WebRtc(s, _) => s,
        }
    }

    /// `Connected` while the path works (over WebRTC: while at least one
    /// device is paired).
    fn state(&self) -> watch::Receiver<ConnectionState> {
        match self {
            Up::Quic(s) => s.state(),
            Up::Ws(s) => s.state(),
            Up::WebRtc(s, _) => s.state(),
        }
    }

    async fn wait_connected(&self, t: Duration) -> Result<()> {
        match self {
            Up::Quic(s) => s.wait_connected(t).await,
            Up::Ws(s) => s.wait_connected(t).await,
            Up::WebRtc(s, n) => s.wait_peers(*n, t).await,
        }
    }

    async fn flush(&self, t: Duration) -> Result<()> {
        match self {
            Up::Quic(s) => s.flush(t).await,
            Up::Ws(s) => s.flush(t).await,
            Up::WebRtc(s, _) => s.flush(t).await,
        }
    }

    async fn sync(&self) -> Result<()> {
        match self {
            Up::Quic(s) => s.sync().await.map(drop),
            Up::Ws(s) => s.sync().await.map(drop),
            Up::WebRtc(s, _) => s.sync().await.map(drop),
        }
    }

    async fn close(&self) {
        match self {
            Up::Quic(s) => s.close().await,
            Up::Ws(s) => s.close().await,
            Up::WebRtc(s, _) => s.close().await,
        }
    }

    /// The state to report for this path, once connected as `kind`.
    fn connected(&self, kind: PathKind) -> PathState {
        match self {
            Up::WebRtc(s, _) => PathState::Connected {
                path: kind,
                devices: s.peers().borrow().len().max(1),
            },
            _ => connected(kind),
        }
    }
}

struct Shared {
    cache: Arc<DynAppendOnlyStore>,
    routes: Vec<Route>,
    keypair: Keypair,
    opts: ConnectorOptions,
    current: Mutex<Option<(usize, Arc<Up>)>>,
    state: watch::Sender<PathState>,
    cancel: CancellationToken,
}

impl Shared {
    fn current(&self) -> Option<(usize, Arc<Up>)> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_current(&self, next: Option<(usize, Arc<Up>)>) -> Option<(usize, Arc<Up>)> {
        std::mem::replace(
            &mut *self.current.lock().unwrap_or_else(|e| e.into_inner()),
            next,
        )
    }

    /// Open route `i` and wait until it is caught up.
    async fn open(&self, i: usize) -> Result<Up> {
        let t = self.opts.connect_timeout;
        let mut quic = self.opts.quic.clone();
        quic.verifier = self.opts.verifier.clone();
        quic.connect_timeout = t;
        // How long the store may take to connect and catch up.
        let mut wait = t;
        let up = match &self.routes[i] {
            Route::WebRtc {
                signaling,
                room,
                policy,
                options,
                min_peers,
            } => {
                // One deadline for the whole attempt, signaling included.
                let deadline = tokio::time::Instant::now() + t;
                let mut o = options.clone();
                o.verifier = self.opts.verifier.clone();
                let store = WebRtcStore::new(self.cache.clone(), &self.keypair, policy.clone(), o);
                // The room key, if any, is in the options (derived once),
                // not a password here (derived on every attempt).
                let joined = tokio::time::timeout_at(
                    deadline,
                    WsSignaling::connect(signaling, room, None, &self.keypair),
                )
                .await;
                match joined {
                    Ok(Ok(sig)) => store.join(sig),
                    Ok(Err(e)) => {
                        store.close().await;
                        return Err(e);
                    }
                    Err(_) => {
                        store.close().await;
                        return Err(Error::Timeout {
                            what: format!("the signaling server {signaling}"),
                            after: t,
                        });
                    }
                }
                wait = deadline.saturating_duration_since(tokio::time::Instant::now());
                Up::WebRtc(store, *min_peers)
            }
            Route::Lan { lan, peer } => {
                let found = lan.find(peer, self.opts.lan_timeout).await?;
                let up = Up::Quic(QuicStore::new(
                    self.cache.clone(),
                    found.quic_addr(),
                    *peer,
                    &self.keypair,
                    quic,
                )?);
                return match up.wait_connected(wait).await {
                    Ok(()) => Ok(up),
                    Err(e) => {
                        // The address found may be stale: ask mDNS again
                        // next time.
                        lan.forget(peer);
                        up.close().await;
                        Err(e)
                    }
                };
            }
            Route::Quic { addr, peer } => Up::Quic(QuicStore::new(
                self.cache.clone(),
                *addr,
                *peer,
                &self.keypair,
                quic,
            )?),
            Route::WebSocket { url, peer } => {
                let mut ws = self.opts.websocket.clone();
                ws.verifier = self.opts.verifier.clone();
                ws.connect_timeout = t;
                Up::Ws(WebSocketStore::new(
                    self.cache.clone(),
                    url,
                    *peer,
                    &self.keypair,
                    ws,
                )?)
            }
        };
        match up.wait_connected(wait).await {
            Ok(()) => Ok(up),
            Err(e) => {
                up.close().await;
                Err(e)
            }
        }
    }
}

/// A store that syncs with one peer over the best route that works (see the
/// crate docs).
pub struct Connector {
    shared: Arc<Shared>,
    state: watch::Receiver<PathState>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("store", self.shared.cache.store_id())
            .field("routes", &self.shared.routes)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl Connector {
    /// Start a connector over `cache` with `routes`, best first, as
    /// `keypair`. Returns at once and connects in the background; must be
    /// called inside a tokio runtime. No routes, or a
    /// [`Route::WebRtc`] with `min_peers: 0`, is an
    /// [`Error::InvalidInput`].
    pub fn new(
        cache: Arc<DynAppendOnlyStore>,
        routes: Vec<Route>,
        keypair: &Keypair,
        opts: ConnectorOptions,
    ) -> Result<Self> {
        if routes.is_empty() {
            return Err(Error::InvalidInput {
                reason: "a Connector needs at least one route".into(),
            });
        }
        if routes
            .iter()
            .any(|r| matches!(r, Route::WebRtc { min_peers: 0, .. }))
        {
            return Err(Error::InvalidInput {
                reason: "a WebRTC route needs min_peers of at least 1".into(),
            });
        }
        let (tx, rx) = watch::channel(PathState::Offline { last_error: None });
        let shared = Arc::new(Shared {
            cache,
            routes,
            keypair: keypair.clone(),
            opts,
            current: Mutex::new(None),
            state: tx,
            cancel: CancellationToken::new(),
        });
        tokio::spawn(manage(shared.clone()));
        Ok(Connector { shared, state: rx })
    }

    /// Watch the path in use.
    pub fn state(&self) -> watch::Receiver<PathState> {
        self.state.clone()
    }

    /// The path in use, if connected.
    pub fn path(&self) -> Option<PathKind> {
        self.state.borrow().path()
    }

    /// Wait until some path is connected and caught up, at most `timeout`
    /// ([`Error::Timeout`], naming the last failure, otherwise).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.state.clone();
        let r = tokio::time::timeout(timeout, rx.wait_for(|s| s.path().is_some())).await;
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                what: format!("a path to the peer ({})", *self.state.borrow()),
                after: timeout,
            }),
        }
    }

    /// Wait until the path in use has delivered every local append, at
    /// most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        match self.shared.current() {
            Some((_, up)) => up.flush(timeout).await,
            None => Err(Error::Timeout {
                what: "delivery: no path is connected".into(),
                after: Duration::ZERO,
            }),
        }
    }

    /// Stop the manager and close the path in use.
    pub async fn close(&self) {
        self.shared.cancel.cancel();
        if let Some((_, up)) = self.shared.set_current(None) {
            up.close().await;
        }
        self.shared
            .state
            .send_replace(PathState::Offline { last_error: None });
    }

    fn upstream(&self) -> Option<Arc<Up>> {
        self.shared.current().map(|(_, up)| up)
    }
}

fn connected(kind: PathKind) -> PathState {
    PathState::Connected {
        path: kind,
        devices: usize::from(kind == PathKind::Lan),
    }
}

/// Resolves once `up` has been lost (not connected) for `grace` in one
/// stretch.
async fn lost(up: &Up, grace: Duration) {
    let mut rx = up.state();
    // Bounded by the store's own state changes; ends when it closes.
    loop {
        if rx
            .wait_for(|s| *s != ConnectionState::Connected)
            .await
            .is_err()
        {
            return;
        }
        match tokio::time::timeout(grace, rx.wait_for(|s| *s == ConnectionState::Connected)).await {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Keep the device count of a WebRTC path in the state while it is the
/// path in use; ends when it no longer is (it is closed after being
/// replaced, which wakes this) or the connector stops.
async fn count_devices(s: Arc<Shared>, up: Arc<Up>) {
    let Up::WebRtc(store, _) = &*up else { return };
    let mut peers = store.peers();
    // Each turn waits for the peer list to change.
    loop {
        let n = peers.borrow_and_update().len();
        {
            // Checked and sent under the lock that replaces the path, so a
            // count never overwrites the state of the path after it.
            let current = s.current.lock().unwrap_or_else(|e| e.into_inner());
            match &*current {
                Some((_, c)) if Arc::ptr_eq(c, &up) => {}
                _ => return,
            }
            // No device: keep the last count while the path may come back
            // (within `failover_after`), rather than "0 devices".
            if n > 0 {
                s.state.send_if_modified(|st| {
                    let next = PathState::Connected {
                        path: PathKind::WebRtc,
                        devices: n,
                    };
                    let changed = *st != next;
                    *st = next;
                    changed
                });
            }
        }
        tokio::select! {
            _ = s.cancel.cancelled() => return,
            r = peers.changed() => if r.is_err() { return },
        }
    }
}

/// The manager: try the better routes, keep the best that works, fall back
/// when it is lost; until cancelled.
async fn manage(s: Arc<Shared>) {
    let mut offline_wait = Duration::from_millis(250);
    // Bounded by cancellation; every turn waits (a probe interval, a
    // backoff, or the loss of the path).
    loop {
        if s.cancel.is_cancelled() {
            break;
        }
        let best_so_far = s.current().map_or(s.routes.len(), |(i, _)| i);
        let mut last_error = None;
        for i in 0..best_so_far {
            let kind = s.routes[i].kind();
            let opened = tokio::select! {
                _ = s.cancel.cancelled() => break,
                r = s.open(i) => r,
            };
            match opened {
                Ok(up) => {
                    let up = Arc::new(up);
                    let old = s.set_current(Some((i, up.clone())));
                    info!(route = ?s.routes[i], "connected");
                    s.state.send_replace(up.connected(kind));
                    if let Up::WebRtc(..) = *up {
                        tokio::spawn(count_devices(s.clone(), up.clone()));
                    }
                    if let Some((_, old)) = old {
                        // An upgrade: the old path delivers what it holds,
                        // then the new one catches up once more.
                        let (t, new) = (s.opts.connect_timeout, up.clone());
                        tokio::spawn(async move {
                            let _ = old.flush(t).await;
                            old.close().await;
                            if let Err(e) = new.sync().await {
                                debug!(error = %e, "catch-up after an upgrade");
                            }
                        });
                    }
                    offline_wait = Duration::from_millis(250);
                    break;
                }
                Err(e) => {
                    debug!(route = ?s.routes[i], error = %e, "route failed");
                    last_error = Some(format!("{kind:?}: {e}"));
                }
            }
        }
        let current = s.current();
        if current.is_none() {
            s.state.send_replace(PathState::Offline { last_error });
        }
        let wait = match &current {
            Some((0, _)) => None,
            Some(_) => Some(s.opts.probe_every),
            None => {
                let w = offline_wait;
                offline_wait = (offline_wait * 2).min(s.opts.probe_every);
                Some(w)
            }
        };
        let probe = async {
            match wait {
                Some(w) => tokio::time::sleep(w).await,
                None => std::future::pending().await,
            }
        };
        let gone = async {
            match &current {
                Some((_, up)) => lost(up, s.opts.failover_after).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = s.cancel.cancelled() => break,
            () = probe => {}
            () = gone => {
                if let Some((i, up)) = s.set_current(None) {
                    info!(route = ?s.routes[i], "path lost; starting over");
                    up.close().await;
                }
                s.state.send_replace(PathState::Offline { last_error: None });
            }
        }
    }
    if let Some((_, up)) = s.set_current(None) {
        up.close().await;
    }
}

#[async_trait]
impl AppendOnlyStore for Connector {
    fn store_id(&self) -> &StoreId {
        self.shared.cache.store_id()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            remote: true,
            ..self.shared.cache.capabilities()
        }
    }

    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        if let Some(up) = self.upstream() {
            return up.store().append(changes).await;
        }
        // Offline: the policy, then the cache; the next catch-up pushes it.
        cairn_protocol::check_local(&*self.shared.opts.verifier, &changes)?;
        self.shared.cache.append(changes).await
    }

    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        match self.upstream() {
            Some(up) => up.store().get_changes(ids).await,
            None => self.shared.cache.get_changes(ids).await,
        }
    }

    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        match self.upstream() {
            Some(up) => up.store().get_metas(ids).await,
            None => self.shared.cache.get_metas(ids).await,
        }
    }

    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        self.shared.cache.has_changes(ids).await
    }

    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.shared.cache.scan(after, limit).await
    }

    async fn head(&self) -> Result<Head> {
        self.shared.cache.head().await
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        self.shared.cache.subscribe().await
    }

    async fn find_new_changes(&self, have: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        self.shared.cache.find_new_changes(have).await
    }

    async fn find_new_changes_for_doc(
        &self,
        have: &[ChangeId],
        doc: &DocId,
    ) -> Result<Vec<ChangeMeta>> {
        self.shared.cache.find_new_changes_for_doc(have, doc).await
    }

    async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
        self.shared.cache.all_change_ids().await
    }

    async fn changes_for_doc(
        &self,
        doc: &DocId,
        from_last_snapshot: bool,
    ) -> Result<Vec<ChangeMeta>> {
        self.shared
            .cache
            .changes_for_doc(doc, from_last_snapshot)
            .await
    }

    async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        self.shared.cache.range_summary(range).await
    }

    async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        self.shared.cache.ids_in_range(range, limit).await
    }

    async fn coded_symbols(
        &self,
        request: &cairn::riblt::SymbolRequest,
    ) -> Result<cairn::riblt::SymbolReply> {
        self.shared.cache.coded_symbols(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_as_an_app_would_show_them() {
        assert_eq!(
            connected(PathKind::Lan).to_string(),
            "connected to 1 device (LAN)"
        );
        assert_eq!(
            PathState::Connected {
                path: PathKind::Lan,
                devices: 2
            }
            .to_string(),
            "connected to 2 devices (LAN)"
        );
        assert_eq!(
            PathState::Connected {
                path: PathKind::WebRtc,
                devices: 1
            }
            .to_string(),
            "connected to 1 device (direct)"
        );
        assert_eq!(
            PathState::Connected {
                path: PathKind::WebRtc,
                devices: 3
            }
            .to_string(),
            "connected to 3 devices (direct)"
        );
        assert_eq!(connected(PathKind::Quic).to_string(), "relay (QUIC)");
        assert_eq!(
            connected(PathKind::WebSocket).to_string(),
            "relay (websocket)"
        );
        assert_eq!(
            PathState::Offline { last_error: None }.to_string(),
            "offline"
        );
    }
}

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
