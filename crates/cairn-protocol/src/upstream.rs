use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cairn::{ChangeMeta, DynAppendOnlyStore, Error, Result, StoreId, SyncReport, SyncState};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cache::{Backoff, CatchUp, Node, Transport};
use crate::client::Call;
use crate::dialer::{Dialer, classify};
use crate::error::WireError;
use crate::message::Hello;
use crate::outbox::DeliveryOptions;
use crate::peer::{ConnectionState, PeerId, Refusal};
use crate::remote::RemoteStore;
use crate::session::{Session, SubItem};

/// The live notifications of one subscription.
#[async_trait]
pub trait Notifications: Send {
    /// The next batch of notified metadata; an error when the subscription
    /// or its connection ends.
    async fn next(&mut self) -> Result<Vec<ChangeMeta>>;
}

#[async_trait]
impl Notifications for mpsc::Receiver<SubItem> {
    async fn next(&mut self) -> Result<Vec<ChangeMeta>> {
        self.recv().await.unwrap_or(Err(Error::Closed))
    }
}

/// A subscription as a [`ChangeStream`](cairn::ChangeStream): one item per
/// notified change, in order; an error, then the end, when the
/// subscription or its connection ends.
pub fn notification_stream<N: Notifications + 'static>(sub: N) -> cairn::ChangeStream {
    let state = (Some(sub), std::collections::VecDeque::new());
    Box::pin(futures::stream::unfold(
        state,
        |(mut sub, mut queue)| async move {
            // Each turn yields a queued item or awaits one batch.
            loop {
                if let Some(m) = queue.pop_front() {
                    return Some((Ok(m), (sub, queue)));
                }
                let s = sub.as_mut()?;
                match s.next().await {
                    Ok(metas) => queue.extend(metas),
                    Err(e) => return Some((Err(e), (None, queue))),
                }
            }
        },
    ))
}

/// One established, greeted connection to a server, for one store.
#[async_trait]
pub trait UpLink: Call + Send + Sync + 'static {
    /// The server's hello.
    fn hello(&self) -> &Hello;
    /// The frame limit to send with.
    fn send_limit(&self) -> u32;
    /// Whether the connection is gone.
    fn is_closed(&self) -> bool;
    /// Close the connection.
    fn close(&self);
    /// Subscribe to the server's new changes; returns once the server
    /// confirmed it.
    async fn subscribe(&self) -> Result<Box<dyn Notifications>>;
}

#[async_trait]
impl UpLink for Session {
    fn hello(&self) -> &Hello {
        Session::hello(self)
    }
    fn send_limit(&self) -> u32 {
        Session::send_limit(self)
    }
    fn is_closed(&self) -> bool {
        Session::is_closed(self)
    }
    fn close(&self) {
        Session::close(self)
    }
    async fn subscribe(&self) -> Result<Box<dyn Notifications>> {
        Ok(Box::new(Session::subscribe(self).await?))
    }
}

/// How a transport opens a connection to its server.
#[async_trait]
pub trait Dial: Send + Sync + 'static {
    /// The connection it opens.
    type Link: UpLink;
    /// Open one connection and exchange hellos for `store_id`. The
    /// [`Upstream`] bounds it by its connect timeout.
    async fn dial(&self, store_id: &StoreId) -> Result<Self::Link>;
    /// The transport's name, for errors (`"quic"`, `"websocket"`).
    fn transport(&self) -> &'static str;
    /// The server, for messages (an address or URL).
    fn server(&self) -> String;
    /// The server's pinned peer id.
    fn server_id(&self) -> PeerId;
    /// Whether a failed connection is a refusal, and which (default
    /// [`classify`]).
    fn refusal(&self, e: &Error) -> Option<Refusal> {
        classify(e)
    }
}

/// How an [`Upstream`] connects and delivers.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamOptions {
    /// Delays between attempts (the longest is also the wait after a
    /// refusal, and how long a session must last to count as healthy).
    pub backoff: Backoff,
    /// How long one attempt ([`Dial::dial`]) may take.
    pub connect_timeout: Duration,
    /// Most changes per delivery of the outbox.
    pub delivery_batch: usize,
}

/// A store's connection to one server, whatever carries it: connect, catch
/// up, follow, deliver the outbox; on loss, back off and connect again.
///
/// A transport supplies a [`Dial`] (how to open one greeted connection, an
/// [`UpLink`]); [`Upstream`] does the rest the same way for every
/// transport, and is the [`Transport`] of the store's [`CacheFirst`]
/// (`QuicStore` and `WebSocketStore` are thin wrappers around one).
///
/// [`CacheFirst`]: crate::CacheFirst
pub struct Upstream<D: Dial> {
    store_id: StoreId,
    node: Arc<Node>,
    dial: D,
    opts: UpstreamOptions,
    link: RwLock<Option<Arc<D::Link>>>,
    state: watch::Sender<ConnectionState>,
    last_error: Mutex<Option<WireError>>,
    cancel: CancellationToken,
    sync_state: Arc<Mutex<SyncState>>,
}

impl<D: Dial> std::fmt::Debug for Upstream<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("transport", &self.dial.transport())
            .field("server", &self.dial.server())
            .field("store_id", &self.store_id)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl<D: Dial> Upstream<D> {
    /// Start connecting `node` (its cache names the store) through `dial`,
    /// in the background, until [`cancel`](Upstream::cancel). Must be
    /// called inside a tokio runtime.
    pub fn start(node: Arc<Node>, dial: D, opts: UpstreamOptions) -> Arc<Self> {
        let up = Arc::new(Upstream {
            store_id: node.cache().store_id().clone(),
            node,
            dial,
            opts,
            link: RwLock::new(None),
            state: watch::Sender::new(ConnectionState::Disconnected),
            last_error: Mutex::new(None),
            cancel: CancellationToken::new(),
            sync_state: Arc::new(Mutex::new(SyncState::default())),
        });
        tokio::spawn(manage(up.clone()));
        up
    }

    /// The local node (cache, policy, outbox).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The dialer.
    pub fn dial(&self) -> &D {
        &self.dial
    }

    /// Watch the connection state.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }

    /// The last error the connection failed with, if any (a refusal, or
    /// the last transient failure).
    pub fn last_error(&self) -> Option<Error> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .map(WireError::into_error)
    }

    fn set_error(&self, e: &Error) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(WireError::from(e));
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
                    Some(e) => format!("connecting to {} (last error: {e})", self.dial.server()),
                    None => format!("connecting to {}", self.dial.server()),
                },
                after: timeout,
            }),
        }
    }

    /// Bring the cache and the server to the same set of changes (pull,
    /// then push). [`Error::Closed`] if not connected; a push the server
    /// refuses (a read-only peer) is returned as its error.
    pub async fn sync(&self) -> Result<SyncReport> {
        let link = self.current().ok_or(Error::Closed)?;
        self.catch_up(&link, true).await
    }

    /// Stop reconnecting and close the connection; the state becomes
    /// [`ConnectionState::Disconnected`].
    pub fn cancel(&self) {
        self.cancel.cancel();
        if let Some(link) = self.take_link() {
            link.close();
        }
        self.state.send_replace(ConnectionState::Disconnected);
    }

    /// The connection, while it is up.
    pub fn current(&self) -> Option<Arc<D::Link>> {
        let link = self
            .link
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        if link.is_closed() {
            return None;
        }
        Some(link)
    }

    fn take_link(&self) -> Option<Arc<D::Link>> {
        self.link.write().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The server's side of `link` as a store.
    fn remote(&self, link: &Arc<D::Link>) -> RemoteStore<D::Link> {
        RemoteStore::new(
            self.dial.transport(),
            self.store_id.clone(),
            link.hello(),
            link.clone(),
        )
    }

    async fn catch_up(&self, link: &Arc<D::Link>, strict: bool) -> Result<SyncReport> {
        let remote = self.remote(link);
        let opts = CatchUp {
            pull: true,
            push: true,
            batch_bytes: u64::from(link.send_limit() / 2),
            strict,
        };
        self.node
            .catch_up(self.dial.server_id(), &remote, &self.sync_state, opts)
            .await
    }
}

impl<D: Dial> Transport for Upstream<D> {
    fn remotes(&self) -> Vec<(PeerId, Arc<DynAppendOnlyStore>)> {
        self.current()
            .map(|l| (self.dial.server_id(), Arc::new(self.remote(&l)) as _))
            .into_iter()
            .collect()
    }
}

/// The connection manager: connect, catch up, follow; on loss, back off and
/// do it again, until cancelled.
async fn manage<D: Dial>(up: Arc<Upstream<D>>) {
    let mut dialer = Dialer::new(up.opts.backoff);
    let server = up.dial.server();
    // Bounded by cancellation; every iteration waits at least the backoff.
    loop {
        if up.cancel.is_cancelled() {
            break;
        }
        up.state.send_replace(dialer.dialing());
        let timeout = up.opts.connect_timeout;
        let opened = tokio::select! {
            _ = up.cancel.cancelled() => break,
            r = tokio::time::timeout(timeout, up.dial.dial(&up.store_id)) => match r {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout {
                    what: format!("{} handshake with {server}", up.dial.transport()),
                    after: timeout,
                }),
            },
        };
        let failure = match opened {
            Ok(link) => {
                let link = Arc::new(link);
                let r = tokio::select! {
                    _ = up.cancel.cancelled() => Ok(()),
                    r = session(&up, &link, &mut dialer) => r,
                };
                up.take_link();
                link.close();
                match r {
                    Err(e) if !up.cancel.is_cancelled() => {
                        warn!(%server, error = %e, "connection to the peer lost");
                        e
                    }
                    _ => Error::Closed,
                }
            }
            Err(e) => {
                warn!(%server, error = %e, "cannot connect to the peer");
                e
            }
        };
        if up.cancel.is_cancelled() {
            break;
        }
        up.set_error(&failure);
        let (retry_at, state) = dialer.failed(Instant::now(), up.dial.refusal(&failure));
        up.state.send_replace(state);
        let wait = retry_at.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = up.cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    up.state.send_replace(ConnectionState::Disconnected);
}

/// One connection's life: subscribe, catch up both ways, then follow the
/// server's notifications and deliver the outbox, until either fails.
async fn session<D: Dial>(
    up: &Arc<Upstream<D>>,
    link: &Arc<D::Link>,
    dialer: &mut Dialer,
) -> Result<()> {
    let server = up.dial.server();
    let mut sub = link.subscribe().await?;
    let report = up.catch_up(link, false).await?;
    info!(%server, %report, "caught up with the peer");
    *up.link.write().unwrap_or_else(|e| e.into_inner()) = Some(link.clone());
    up.state.send_replace(dialer.connected(Instant::now()));
    *up.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let remote = up.remote(link);
    let delivery = DeliveryOptions {
        backoff: up.opts.backoff,
        max_changes: up.opts.delivery_batch,
        max_bytes: u64::from(link.send_limit() / 2),
        ..DeliveryOptions::default()
    };
    let peer = up.dial.server_id();
    let follow = async {
        // Bounded by the connection: `next` fails when it closes.
        loop {
            let metas = sub.next().await?;
            up.node
                .follow(peer, &remote, &metas, &delivery.backoff, 8)
                .await?;
        }
    };
    let deliver = up.node.deliver(peer, &remote, &delivery);
    let r: Result<()> = tokio::select! {
        r = follow => r,
        r = deliver => r,
    };
    debug!(%server, "session over");
    r
}
