//! [`WebSocketStore`]: a local cache store plus a server over WebSocket.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn::{AcceptAll, DynAppendOnlyStore, Error, Keypair, Result, StoreId, SyncReport, Verifier};
use cairn_protocol::{
    Backoff, CacheFirst, Call, ConnectionState, DeliveryFailure, Dial, FrameDecoder, MIN_MAX_FRAME,
    Message, Node, Notifications, PeerId, Permission, Refusal, Request, Response, SEND_FRAME,
    ServeOptions, Session, SessionConfig, SessionPeer, StoreEvent, UpLink, Upstream,
    UpstreamOptions, check_hello, classify, client_hello, encode,
};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::auth::{
    client_auth, is_server_auth, is_wrong_server_key, nonce, read_challenge, verify_server_auth,
};
use crate::io::{Io, PumpOptions, bind, pump, recv_raw, send_raw, ws_config};

/// How a [`WebSocketStore`] connects.
#[derive(Clone)]
pub struct WebSocketStoreOptions {
    /// TLS for `wss://` URLs (default `None`: the Mozilla roots of
    /// `webpki-roots`, so a server with a publicly trusted certificate, or
    /// a proxy with one, just works). Give a config with your own roots for
    /// a private CA or a self-signed server certificate.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Largest frame accepted (default 1 MiB; larger items travel split).
    pub max_frame: u32,
    /// Largest reassembled message accepted (default 1 GiB).
    pub max_message: u64,
    /// First reconnect delay (default 50 ms).
    pub backoff_min: Duration,
    /// Longest reconnect delay (default 5 s); also the wait after a
    /// refusal, and how long a session must last to count as healthy.
    pub backoff_max: Duration,
    /// How long one connection attempt (TCP, TLS, upgrade, auth, hello)
    /// may take (default 10 s).
    pub connect_timeout: Duration,
    /// The policy every change from the server must pass before it enters
    /// the cache, and every local append too (default [`AcceptAll`]).
    pub verifier: Arc<dyn Verifier>,
    /// Most changes per delivery of the outbox (default 1000).
    pub delivery_batch: usize,
    /// How long one request waits for the server's answer before it fails
    /// with [`Error::Timeout`] and is retried (default 60 s, plus a second
    /// per MiB an append carries).
    pub request_timeout: Duration,
    /// A ping goes out after this long without sending anything (default
    /// 30 s), so the server's idle timeout only closes dead connections.
    pub keepalive: Duration,
    /// The connection is taken for lost when the server sends nothing,
    /// not even a pong, for this long (default 90 s).
    pub idle_timeout: Duration,
}

impl Default for WebSocketStoreOptions {
    fn default() -> Self {
        WebSocketStoreOptions {
            tls: None,
            max_frame: SEND_FRAME,
            max_message: cairn_protocol::DEFAULT_MAX_MESSAGE,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            verifier: Arc::new(AcceptAll),
            delivery_batch: 1000,
            request_timeout: Duration::from_secs(60),
            keepalive: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

impl std::fmt::Debug for WebSocketStoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketStoreOptions")
            .field("tls", &self.tls.is_some())
            .field("max_frame", &self.max_frame)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("connect_timeout", &self.connect_timeout)
            .field("verifier", &self.verifier)
            .field("request_timeout", &self.request_timeout)
            .field("keepalive", &self.keepalive)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl WebSocketStoreOptions {
    /// Use `verifier` at the cache's door.
    pub fn verifier(mut self, verifier: impl Verifier + 'static) -> Self {
        self.verifier = Arc::new(verifier);
        self
    }
}

/// Where to connect, checked once.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    host: String,
    port: u16,
    tls: bool,
}

fn parse_url(url: &str) -> Result<Target> {
    let bad = |why: &str| Error::invalid(format!("WebSocket URL {url:?}: {why}"));
    let req = url.into_client_request().map_err(|e| bad(&e.to_string()))?;
    let uri = req.uri();
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(bad("the scheme must be ws or wss")),
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(Target {
        url: url.to_string(),
        host,
        port,
        tls,
    })
}

fn default_tls() -> Result<Arc<rustls::ClientConfig>> {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// One connection to the server: a [`Session`] over a pumped WebSocket.
#[derive(Debug)]
pub(crate) struct WsLink {
    session: Arc<Session>,
    stop: CancellationToken,
}

#[async_trait]
impl Call for WsLink {
    async fn call(&self, request: Request) -> Result<Response> {
        self.session.call(request).await
    }
}

#[async_trait]
impl UpLink for WsLink {
    fn hello(&self) -> &cairn_protocol::Hello {
        self.session.hello()
    }
    fn send_limit(&self) -> u32 {
        self.session.send_limit()
    }
    fn is_closed(&self) -> bool {
        self.session.is_closed()
    }
    fn close(&self) {
        self.stop.cancel();
        self.session.close();
    }
    async fn subscribe(&self) -> Result<Box<dyn Notifications>> {
        Ok(Box::new(self.session.subscribe().await?))
    }
}

/// How a [`WebSocketStore`] opens a connection.
pub(crate) struct WsDial {
    target: Target,
    server_id: PeerId,
    keypair: Keypair,
    tls: Option<tokio_rustls::TlsConnector>,
    opts: WebSocketStoreOptions,
}

impl WsDial {
    async fn over<S: Io>(&self, io: S, store_id: &StoreId) -> Result<WsLink> {
        let deadline = Instant::now() + self.opts.connect_timeout;
        let request = self
            .target
            .url
            .as_str()
            .into_client_request()
            .map_err(crate::io::ws_err)?;
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            request,
            io,
            Some(ws_config(self.opts.max_frame)),
        )
        .await
        .map_err(crate::io::ws_err)?;
        let server_nonce = read_challenge(
            &recv_raw(&mut ws, deadline, "the server's challenge").await?,
            &self.server_id,
        )?;
        let client_nonce = nonce()?;
        send_raw(
            &mut ws,
            client_auth(&self.keypair, &server_nonce, &client_nonce, &self.server_id),
            deadline,
        )
        .await?;
        let answer = recv_raw(&mut ws, deadline, "the server's auth message").await?;
        if !is_server_auth(&answer) {
            return Err(refusal_in(&answer));
        }
        verify_server_auth(
            &answer,
            &self.server_id,
            &client_nonce,
            &server_nonce,
            &self.keypair.author(),
        )?;
        let hello = Message::Hello(client_hello(store_id.clone(), self.opts.max_frame));
        send_raw(&mut ws, encode(&hello, MIN_MAX_FRAME)?, deadline).await?;
        let mut dec =
            FrameDecoder::new(self.opts.max_frame).with_max_message(self.opts.max_message);
        let hello = loop {
            if let Some(m) = dec.pop()? {
                break m;
            }
            dec.push(&recv_raw(&mut ws, deadline, "the server's hello").await?);
        };
        let hello = check_hello(hello, Some(store_id))?;
        let stop = CancellationToken::new();
        let (tx, rx) = pump(
            ws,
            PumpOptions {
                keepalive: self.opts.keepalive,
                idle: self.opts.idle_timeout,
                write: self.opts.request_timeout,
            },
            stop.clone(),
        );
        // We serve the server nothing: its requests are refused one by one.
        let session = Session::start(
            tx,
            rx,
            dec,
            SessionPeer {
                peer: self.server_id,
                perm: Permission::None,
                hello,
            },
            SessionConfig {
                transport: "websocket",
                store: None,
                serve: ServeOptions::default(),
                request_timeout: self.opts.request_timeout,
                delivered: None,
            },
        );
        bind(&session, stop.clone());
        Ok(WsLink { session, stop })
    }
}

/// The typed error in a refusal frame, or a protocol error.
fn refusal_in(bytes: &[u8]) -> Error {
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME);
    dec.push(bytes);
    match dec.pop() {
        Ok(Some(Message::Response {
            body: Response::Error(e),
            ..
        })) => e.into_error(),
        _ => Error::Protocol {
            reason: format!(
                "expected the server's auth message or a refusal, got {} bytes",
                bytes.len()
            ),
        },
    }
}

#[async_trait]
impl Dial for WsDial {
    type Link = WsLink;

    async fn dial(&self, store_id: &StoreId) -> Result<WsLink> {
        let t = &self.target;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| {
                Error::backend(
                    "websocket",
                    true,
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot connect to {}:{}: {e}", t.host, t.port),
                    ),
                )
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(t.host.clone())
                    .map_err(|e| Error::invalid(format!("TLS server name {:?}: {e}", t.host)))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| Error::backend("websocket", true, e))?;
                self.over(tls, store_id).await
            }
            None => self.over(tcp, store_id).await,
        }
    }

    fn transport(&self) -> &'static str {
        "websocket"
    }

    fn server(&self) -> String {
        self.target.url.clone()
    }

    fn server_id(&self) -> PeerId {
        self.server_id
    }

    fn refusal(&self, e: &Error) -> Option<Refusal> {
        if is_wrong_server_key(e) {
            Some(Refusal::WrongPeerKey)
        } else {
            classify(e)
        }
    }
}

/// An [`AppendOnlyStore`](cairn::AppendOnlyStore) over a local cache store
/// and a server reached over WebSocket: the same behaviour as `QuicStore`
/// (reads from the cache, fetch on a miss, an outbox for appends, live
/// updates, reconnection with backoff), for networks where UDP does not
/// pass.
///
/// ```no_run
/// # async fn demo(server_id: cairn_protocol::PeerId) -> cairn::Result<()> {
/// use std::{sync::Arc, time::Duration};
/// use cairn::{Keypair, StoreId};
/// use cairn_websocket::{WebSocketStore, WebSocketStoreOptions};
/// let cache = Arc::new(cairn_memory::MemoryStore::new(StoreId::new("notes")?));
/// let store = WebSocketStore::new(
///     cache,
///     "wss://relay.example.org/cairn",
///     server_id,
///     &Keypair::generate(),
///     WebSocketStoreOptions::default(),
/// )?;
/// store.wait_connected(Duration::from_secs(10)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct WebSocketStore {
    up: Arc<Upstream<WsDial>>,
    store: CacheFirst<Upstream<WsDial>>,
}

impl std::fmt::Debug for WsDial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsDial")
            .field("url", &self.target.url)
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

cairn_protocol::forward_store!(WebSocketStore => store);

impl Drop for WebSocketStore {
    fn drop(&mut self) {
        self.up.cancel();
    }
}

impl WebSocketStore {
    /// Start a store for the cache's store id, talking to the server at
    /// `url` (`ws://host:port/path` or `wss://…`) whose peer id must be
    /// `server_id`, as `keypair`. Returns at once and connects in the
    /// background (see [`wait_connected`](Self::wait_connected)). Must be
    /// called inside a tokio runtime. A URL that is not `ws` or `wss`, or
    /// has no host, is [`Error::InvalidInput`].
    pub fn new(
        cache: Arc<DynAppendOnlyStore>,
        url: &str,
        server_id: PeerId,
        keypair: &Keypair,
        opts: WebSocketStoreOptions,
    ) -> Result<Self> {
        let target = parse_url(url)?;
        let tls = tls_connector(&target, &opts)?;
        let node = Node::new(cache, opts.verifier.clone());
        let up_opts = UpstreamOptions {
            backoff: Backoff {
                min: opts.backoff_min,
                max: opts.backoff_max,
            },
            connect_timeout: opts.connect_timeout,
            delivery_batch: opts.delivery_batch,
        };
        let dial = WsDial {
            target,
            server_id,
            keypair: keypair.clone(),
            tls,
            opts,
        };
        let up = Upstream::start(node.clone(), dial, up_opts);
        Ok(WebSocketStore {
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

    /// The last error the connection failed with, if any.
    pub fn last_error(&self) -> Option<Error> {
        self.up.last_error()
    }

    /// Wait until connected, at most `timeout`; a refusal returns its typed
    /// error at once (see [`Upstream::wait_connected`]).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        self.up.wait_connected(timeout).await
    }

    /// Local appends not yet confirmed by the server.
    pub fn pending(&self) -> usize {
        self.up.node().outbox().pending()
    }

    /// Wait until every local append so far is confirmed by the server, at
    /// most `timeout` (see [`cairn_protocol::Outbox::flush`]).
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

    /// Bring the cache and the server to the same set of changes (pull,
    /// then push). [`Error::Closed`] if not connected.
    pub async fn sync(&self) -> Result<SyncReport> {
        self.up.sync().await
    }

    /// Close the connection and stop reconnecting.
    pub async fn close(&self) {
        self.up.cancel();
    }
}

/// One connection to one store on a server, no cache and no reconnection:
/// every store method as a remote call through
/// [`cairn_protocol::RemoteCalls`] (in scope with
/// `use cairn_protocol::RemoteCalls`), plus live notifications. For a
/// cached, reconnecting store use [`WebSocketStore`].
#[derive(Debug)]
pub struct WsClient {
    link: WsLink,
}

/// The TLS connector for a `wss://` target (`opts.tls`, or the Mozilla
/// roots), none for `ws://`.
fn tls_connector(
    target: &Target,
    opts: &WebSocketStoreOptions,
) -> Result<Option<tokio_rustls::TlsConnector>> {
    if !target.tls {
        return Ok(None);
    }
    let cfg = match &opts.tls {
        Some(c) => c.clone(),
        None => default_tls()?,
    };
    Ok(Some(tokio_rustls::TlsConnector::from(cfg)))
}

impl WsClient {
    /// Connect to `url` (pinning `server_id`) as `keypair` and greet it for
    /// `store_id`, within `opts.connect_timeout`. `opts.tls` is used for a
    /// `wss://` URL.
    pub async fn connect(
        url: &str,
        server_id: PeerId,
        keypair: &Keypair,
        store_id: &StoreId,
        opts: WebSocketStoreOptions,
    ) -> Result<Self> {
        let target = parse_url(url)?;
        let tls = tls_connector(&target, &opts)?;
        let timeout = opts.connect_timeout;
        let dial = WsDial {
            target,
            server_id,
            keypair: keypair.clone(),
            tls,
            opts,
        };
        let link = tokio::time::timeout(timeout, dial.dial(store_id))
            .await
            .map_err(|_| Error::Timeout {
                what: format!("WebSocket handshake with {url}"),
                after: timeout,
            })??;
        Ok(WsClient { link })
    }

    /// The server's hello.
    pub fn hello(&self) -> &cairn_protocol::Hello {
        self.link.hello()
    }

    /// A live stream of the metadata of changes appended to the store from
    /// now on; it yields an error and ends when the connection is lost.
    pub async fn subscribe(&self) -> Result<cairn::ChangeStream> {
        let sub = self.link.session.subscribe().await?;
        Ok(cairn_protocol::notification_stream(sub))
    }

    /// Close the connection.
    pub fn close(&self) {
        self.link.close();
    }
}

#[async_trait]
impl Call for WsClient {
    async fn call(&self, request: Request) -> Result<Response> {
        self.link.call(request).await
    }
}
