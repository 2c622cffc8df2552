//! Opening stores named by URLs, for reading or writing, with the store id
//! agreed between the URLs, the files and `--store-id`.
//!
//! quic://, ws:// and wss:// stores are plain connections
//! ([`cairn_quic::QuicClient`] or [`cairn_websocket::WsClient`] behind
//! [`cairn_protocol::RemoteStore`]): no cache, no reconnection, typed
//! errors at once, every append delivered before it returns.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn::{AppendOnlyStore, AuthorId, DynAppendOnlyStore, Error, Keypair, StoreId};
use cairn_memory::MemoryStore;
use cairn_protocol::{Call, DEFAULT_MAX_FRAME, Hello, RemoteStore, Request, Response};
use cairn_quic::QuicClient;
use cairn_redb::{RedbOptions, RedbStore};
use cairn_webrtc::{Acl, WebRtcStore, WebRtcStoreOptions, WsSignaling};
use cairn_websocket::{WebSocketStoreOptions, WsClient};
use tokio::io::AsyncBufReadExt;

use crate::error::{CliError, Context, Result, cause, fail, usage};
use crate::identity;
use crate::url::StoreUrl;

/// The network settings shared by the commands that may connect.
#[derive(Debug, Clone, clap::Args)]
pub struct NetArgs {
    /// Your identity file (an Ed25519 seed in hex) for quic:// and
    /// webrtc:// stores [default: $XDG_CONFIG_HOME/cairn/identity, i.e.
    /// ~/.config/cairn/identity; make it with `cairn id new`]
    #[arg(long, env = "CAIRN_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// How long to wait for a peer to answer (connecting, each request),
    /// in seconds. Refusals and "nothing listening" are reported at once.
    #[arg(long, default_value_t = 10.0, value_name = "SECS", value_parser = secs)]
    pub timeout: f64,
}

fn secs(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

impl NetArgs {
    /// `--timeout` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout)
    }

    /// The identity file path.
    pub fn key_path(&self) -> PathBuf {
        self.key.clone().unwrap_or_else(identity::default_path)
    }
}

/// What a command does with a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only reads: a redb file is opened read-only and must exist.
    Read,
    /// Appends: a missing redb file is created only with `create`.
    Write {
        /// `--create`.
        create: bool,
    },
}

enum Handle {
    Local,
    Redb(RedbStore),
    Remote(Arc<Remote>),
    WebRtc(Arc<WebRtcStore>),
}

/// An open store.
pub struct Opened {
    /// The URL it was opened from.
    pub url: StoreUrl,
    /// The store.
    pub store: Arc<DynAppendOnlyStore>,
    handle: Handle,
}

impl Opened {
    /// The redb store, for its consistency check.
    pub fn redb(&self) -> Option<&RedbStore> {
        match &self.handle {
            Handle::Redb(r) => Some(r),
            _ => None,
        }
    }

    /// The server's hello, for a quic://, ws:// or wss:// store.
    pub fn hello(&self) -> Option<&Hello> {
        match &self.handle {
            Handle::Remote(r) => Some(r.client.hello()),
            _ => None,
        }
    }

    /// The plain connection, for a quic://, ws:// or wss:// store
    /// (subscriptions).
    pub fn remote(&self) -> Option<&Remote> {
        match &self.handle {
            Handle::Remote(r) => Some(r),
            _ => None,
        }
    }

    /// The server (`quic://HOST:PORT`, `ws://HOST:PORT`…) and its pinned
    /// peer, for a remote store.
    pub fn server_peer(&self) -> Option<(String, AuthorId)> {
        match &self.handle {
            Handle::Remote(r) => Some((format!("{}://{}", r.client.scheme(), r.host), r.peer)),
            _ => None,
        }
    }

    /// The WebRTC store, for webrtc:// URLs.
    pub fn webrtc(&self) -> Option<&Arc<WebRtcStore>> {
        match &self.handle {
            Handle::WebRtc(w) => Some(w),
            _ => None,
        }
    }

    /// Make sure every change appended through this store reached its
    /// peers: for webrtc://, sync with every paired peer (appends are
    /// pushed at once, but a peer's failure is only logged there). A no-op
    /// for the others (remote appends return once the server has them).
    pub async fn deliver(&self, timeout: Duration) -> Result<()> {
        if let Handle::WebRtc(w) = &self.handle {
            match tokio::time::timeout(timeout, w.sync()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return fail(format!(
                        "{}: delivering to the peers: {}",
                        self.url,
                        cause(&e)
                    ));
                }
                Err(_) => {
                    return fail(format!(
                        "{}: the peers did not confirm within {timeout:?}",
                        self.url
                    ));
                }
            }
        }
        Ok(())
    }

    /// Close connections and files cleanly.
    pub async fn close(self) {
        let Opened { store, handle, .. } = self;
        drop(store);
        match handle {
            Handle::Remote(r) => {
                if let Ok(r) = Arc::try_unwrap(r) {
                    match r.client {
                        Client::Quic(c) => {
                            let _ = tokio::time::timeout(Duration::from_secs(1), c.close()).await;
                        }
                        Client::Ws { client, .. } => client.close(),
                    }
                }
            }
            Handle::WebRtc(w) => w.close().await,
            Handle::Redb(_) | Handle::Local => {}
        }
    }
}

/// One plain connection to a server.
pub enum Client {
    /// Over QUIC.
    Quic(QuicClient),
    /// Over WebSocket (plain or TLS).
    Ws {
        /// The connection.
        client: WsClient,
        /// `wss://` rather than `ws://`.
        tls: bool,
    },
}

impl Client {
    /// The URL scheme: `quic`, `ws` or `wss`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Client::Quic(_) => "quic",
            Client::Ws { tls: false, .. } => "ws",
            Client::Ws { tls: true, .. } => "wss",
        }
    }

    /// The server's hello.
    pub fn hello(&self) -> &Hello {
        match self {
            Client::Quic(c) => c.hello(),
            Client::Ws { client, .. } => client.hello(),
        }
    }

    async fn call(&self, request: Request) -> cairn::Result<Response> {
        match self {
            Client::Quic(c) => c.call(request).await,
            Client::Ws { client, .. } => client.call(request).await,
        }
    }
}

/// A plain connection whose every request honours `--timeout`.
pub struct Remote {
    client: Client,
    host: String,
    peer: AuthorId,
    timeout: Duration,
}

impl Remote {
    /// A live stream of what the server's store appends from now on.
    pub async fn subscribe(&self) -> cairn::Result<cairn::ChangeStream> {
        match &self.client {
            Client::Quic(c) => c.subscribe().await,
            Client::Ws { client, .. } => client.subscribe().await,
        }
    }
}

#[async_trait]
impl Call for Remote {
    async fn call(&self, request: Request) -> cairn::Result<Response> {
        match tokio::time::timeout(self.timeout, self.client.call(request)).await {
            Ok(r) => r,
            Err(_) => Err(Error::backend(
                self.client.scheme(),
                true,
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {:?} (--timeout)", self.timeout),
                ),
            )),
        }
    }
}

/// Open every URL; they must agree on one store id (see
/// [`crate::url_help`]).
pub async fn open(
    specs: Vec<(StoreUrl, Access)>,
    flag: Option<&StoreId>,
    net: &NetArgs,
) -> Result<Vec<Opened>> {
    // 1. Open the redb files that exist, to learn the ids they hold.
    let mut slots: Vec<Option<Opened>> = Vec::with_capacity(specs.len());
    let mut named: Vec<(String, StoreId)> = Vec::new();
    if let Some(f) = flag {
        named.push(("--store-id".into(), f.clone()));
    }
    for (url, access) in &specs {
        if let StoreUrl::Redb(path) = url
            && let Some(r) = open_redb_existing(url, path, *access).await?
        {
            named.push((format!("{url} (the file)"), r.store_id().clone()));
            slots.push(Some(Opened {
                url: url.clone(),
                store: Arc::new(r.clone()),
                handle: Handle::Redb(r),
            }));
            continue;
        }
        if let Some(id) = url.named_id() {
            named.push((url.to_string(), id.clone()));
        }
        slots.push(None);
    }
    // 2. Agree on the store id.
    let id = match named.split_first() {
        Some(((first_name, first), rest)) => {
            if let Some((name, other)) = rest.iter().find(|(_, id)| id != first) {
                return usage(format!(
                    "store ids disagree: {first_name} says {first}, {name} says {other} (only stores with the same id sync)"
                ));
            }
            first.clone()
        }
        None => {
            if specs
                .iter()
                .any(|(u, _)| matches!(u, StoreUrl::Redb(_) | StoreUrl::Postgres(_)))
            {
                return usage("a new store needs a store id: pass --store-id ID (e.g. acme/notes)");
            }
            StoreId::new("cairn/default")?
        }
    };
    // 3. Open the rest with it.
    let mut out = Vec::with_capacity(specs.len());
    for ((url, access), slot) in specs.into_iter().zip(slots) {
        match slot {
            Some(o) => out.push(o),
            None => out.push(open_one(url, access, &id, net).await?),
        }
    }
    Ok(out)
}

/// Open one URL (see [`open`]).
pub async fn open_single(
    url: StoreUrl,
    access: Access,
    flag: Option<&StoreId>,
    net: &NetArgs,
) -> Result<Opened> {
    let mut v = open(vec![(url, access)], flag, net).await?;
    match v.pop() {
        Some(o) => Ok(o),
        None => fail("no store opened"),
    }
}

/// An existing redb file, opened for `access`; `None` when it does not
/// exist and `access` may create it.
async fn open_redb_existing(
    url: &StoreUrl,
    path: &Path,
    access: Access,
) -> Result<Option<RedbStore>> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match access {
                Access::Write { create: true } => Ok(None),
                Access::Write { create: false } => fail(format!(
                    "{url}: no such file (pass --create to make a new store there)"
                )),
                Access::Read => fail(format!("{url}: no such file")),
            };
        }
        Err(e) => return Err(e).ctx(url),
        Ok(_) => {}
    }
    let r = match access {
        Access::Read => RedbStore::open_read_only(path).await,
        Access::Write { .. } => RedbStore::open_existing(path, RedbOptions::default()).await,
    };
    r.map(Some).ctx(url)
}

/// One pool and one listener per database URL for the whole process: every
/// store opened from the same database shares them.
pub async fn postgres_db(url: &str) -> cairn::Result<cairn_postgres::PostgresDb> {
    type Dbs = std::sync::Mutex<std::collections::HashMap<String, cairn_postgres::PostgresDb>>;
    static DBS: std::sync::OnceLock<Dbs> = std::sync::OnceLock::new();
    let dbs = DBS.get_or_init(Default::default);
    if let Some(db) = dbs.lock().unwrap_or_else(|e| e.into_inner()).get(url) {
        return Ok(db.clone());
    }
    let db = cairn_postgres::PostgresDb::connect(url).await?;
    dbs.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(url.to_owned(), db.clone());
    Ok(db)
}

async fn open_one(url: StoreUrl, access: Access, id: &StoreId, net: &NetArgs) -> Result<Opened> {
    match &url {
        StoreUrl::Memory => Ok(Opened {
            store: Arc::new(MemoryStore::new(id.clone())),
            handle: Handle::Local,
            url,
        }),
        StoreUrl::Redb(path) => {
            let r = RedbStore::open(path, id.clone()).await.ctx(&url)?;
            crate::note!("created {url} for store {id}");
            Ok(Opened {
                store: Arc::new(r.clone()),
                handle: Handle::Redb(r),
                url,
            })
        }
        StoreUrl::Postgres(pg) => {
            let db = postgres_db(pg).await.ctx(&url)?;
            let store = match access {
                Access::Read => match db.existing_store(id.clone()).await.ctx(&url)? {
                    Some(s) => s,
                    None => {
                        return fail(format!("{url}: the database holds no store {id}"));
                    }
                },
                Access::Write { create } => match db.existing_store(id.clone()).await.ctx(&url)? {
                    Some(s) => s,
                    None if create => {
                        let s = db.store(id.clone()).await.ctx(&url)?;
                        crate::note!("created store {id} in {url}");
                        s
                    }
                    None => {
                        return fail(format!(
                            "{url}: the database holds no store {id} (pass --create to make it)"
                        ));
                    }
                },
            };
            Ok(Opened {
                store: Arc::new(store),
                handle: Handle::Local,
                url,
            })
        }
        StoreUrl::Quic {
            host, addr, peer, ..
        } => {
            let key = identity::load(&net.key_path())?;
            let remote = Arc::new(connect(host, *addr, *peer, &key, id, net.timeout()).await?);
            let store = RemoteStore::new("quic", id.clone(), remote.client.hello(), remote.clone());
            Ok(Opened {
                store: Arc::new(store),
                handle: Handle::Remote(remote),
                url,
            })
        }
        StoreUrl::WebSocket {
            tls,
            host,
            addr,
            peer,
            ca,
            ..
        } => {
            let key = identity::load(&net.key_path())?;
            let remote = Arc::new(
                connect_ws(
                    *tls,
                    host,
                    *addr,
                    *peer,
                    ca.as_deref(),
                    &key,
                    id,
                    net.timeout(),
                )
                .await?,
            );
            let scheme = remote.client.scheme();
            let store = RemoteStore::new(scheme, id.clone(), remote.client.hello(), remote.clone());
            Ok(Opened {
                store: Arc::new(store),
                handle: Handle::Remote(remote),
                url,
            })
        }
        StoreUrl::WebRtcRoom {
            signal,
            room,
            password,
            peers,
            bind,
            ..
        } => {
            let key = identity::load(&net.key_path())?;
            let w = webrtc_store(id, &key, *bind);
            let sig = tokio::time::timeout(
                net.timeout(),
                WsSignaling::connect(signal, room, password.as_deref(), &key),
            )
            .await
            .map_err(|_| {
                CliError::new(format!(
                    "{url}: no answer from the signaling server {signal} within {:?}",
                    net.timeout()
                ))
            })?
            .ctx(format!("{url}: signaling server {signal}"))?;
            w.join(sig);
            w.wait_peers(*peers, net.timeout()).await.map_err(|_| {
                CliError::new(format!(
                    "{url}: {} of {peers} peer(s) paired within {:?} (is a peer in room {room}?)",
                    w.peers().borrow().len(),
                    net.timeout()
                ))
            })?;
            Ok(webrtc_opened(w, url))
        }
        StoreUrl::WebRtcManual { offer, bind } => {
            let key = identity::load(&net.key_path())?;
            let w = webrtc_store(id, &key, *bind);
            if *offer {
                let (text, pending) = w.offer().await.ctx(&url)?;
                show_pairing("offer", &text)?;
                let answer = read_line("answer").await?;
                tokio::time::timeout(net.timeout(), pending.accept(&answer))
                    .await
                    .map_err(|_| {
                        CliError::new(format!(
                            "{url}: the peer did not connect within {:?}",
                            net.timeout()
                        ))
                    })?
                    .ctx(&url)?;
            } else {
                let offer = read_line("offer").await?;
                let text = w.answer(&offer).await.ctx(&url)?;
                show_pairing("answer", &text)?;
                w.wait_connected(net.timeout()).await.map_err(|_| {
                    CliError::new(format!(
                        "{url}: the peer did not connect within {:?}",
                        net.timeout()
                    ))
                })?;
            }
            Ok(webrtc_opened(w, url))
        }
    }
}

/// A webrtc store as a command sees it: its cache, which pairing filled
/// and the peers keep current; appends go to the cache and reach the
/// peers through [`Opened::deliver`], whose sync reports a failure (the
/// store's own push would only log it).
fn webrtc_opened(w: Arc<WebRtcStore>, url: StoreUrl) -> Opened {
    Opened {
        store: w.cache().clone(),
        handle: Handle::WebRtc(w),
        url,
    }
}

fn webrtc_store(id: &StoreId, key: &Keypair, bind: Option<std::net::IpAddr>) -> Arc<WebRtcStore> {
    let mut opts = WebRtcStoreOptions::default();
    if let Some(ip) = bind {
        opts.bind_ip = ip;
    }
    // The cache is this command's own: peers may read it and push to it,
    // and we pull from them.
    Arc::new(WebRtcStore::new(
        Arc::new(MemoryStore::new(id.clone())),
        key,
        Arc::new(Acl::open()),
        opts,
    ))
}

/// Print a pairing string on stderr (and a QR code when stderr is a
/// terminal).
fn show_pairing(what: &str, text: &str) -> Result<()> {
    eprintln!("{what}: {text}");
    if crate::output::stderr_is_terminal()
        && let Ok(qr) = identity::qr(text)
    {
        eprintln!("{qr}");
    }
    Ok(())
}

async fn read_line(what: &str) -> Result<String> {
    if crate::output::stderr_is_terminal() {
        eprintln!("paste the peer's {what} line and press Enter:");
    }
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let n = stdin
        .read_line(&mut line)
        .await
        .ctx(format!("reading the {what} from stdin"))?;
    if n == 0 || line.trim().is_empty() {
        return fail(format!("no {what} on stdin"));
    }
    Ok(line.trim().to_owned())
}

/// Connect to a QUIC server: typed refusals at once, "nothing listening"
/// from the ICMP answer in milliseconds (where the network sends one),
/// silence after `timeout`.
pub async fn connect(
    host: &str,
    addr: SocketAddr,
    peer: AuthorId,
    key: &Keypair,
    store: &StoreId,
    timeout: Duration,
) -> Result<Remote> {
    let url = format!("quic://{host}/{store}");
    let dial = QuicClient::connect(addr, peer, key, store, DEFAULT_MAX_FRAME);
    let r = tokio::select! {
        r = tokio::time::timeout(timeout, dial) => r,
        () = refused(addr) => {
            return Err(CliError::transient(format!("{url}: nothing is listening on UDP {addr} (connection refused): is `cairn serve` running there?")));
        }
    };
    match r {
        Ok(Ok(client)) => Ok(Remote {
            client: Client::Quic(client),
            host: host.to_owned(),
            peer,
            timeout,
        }),
        Ok(Err(e)) => Err(explain_connect(&url, addr, peer, key, e)),
        Err(_) => Err(CliError::transient(format!(
            "{url}: no answer from {addr} within {timeout:?} (--timeout): is a cairn server listening there, and is UDP let through?"
        ))),
    }
}

/// The certificates in the PEM file `path`, as the only roots a `wss://`
/// connection trusts.
pub(crate) fn tls_roots(url: &str, path: &Path) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let what = format!("{url}: ca={}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(path).map_err(|e| CliError::new(format!("{what}: {e}")))?;
    for cert in certs {
        let cert = cert.map_err(|e| CliError::new(format!("{what}: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| CliError::new(format!("{what}: {e}")))?;
    }
    if roots.is_empty() {
        return fail(format!("{what}: no PEM certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError::new(format!("{what}: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Connect to a WebSocket server: "nothing listening" at once from the
/// TCP refusal, typed refusals at once, silence after `timeout`.
#[allow(clippy::too_many_arguments)]
pub async fn connect_ws(
    tls: bool,
    host: &str,
    addr: SocketAddr,
    peer: AuthorId,
    ca: Option<&Path>,
    key: &Keypair,
    store: &StoreId,
    timeout: Duration,
) -> Result<Remote> {
    let scheme = if tls { "wss" } else { "ws" };
    let url = format!("{scheme}://{host}/{store}");
    let opts = WebSocketStoreOptions {
        tls: ca.map(|p| tls_roots(&url, p)).transpose()?,
        connect_timeout: timeout,
        ..WebSocketStoreOptions::default()
    };
    match WsClient::connect(&format!("{scheme}://{host}/"), peer, key, store, opts).await {
        Ok(client) => Ok(Remote {
            client: Client::Ws { client, tls },
            host: host.to_owned(),
            peer,
            timeout,
        }),
        Err(Error::Timeout { .. }) => Err(CliError::transient(format!(
            "{url}: no answer from {addr} within {timeout:?} (--timeout): is a cairn WebSocket server (cairn serve --ws) listening there?"
        ))),
        Err(e) if cairn_websocket::is_wrong_server_key(&e) => Err(CliError::new(format!(
            "{url}: the server at {addr} is not peer {} (its key differs from the URL's ?peer=); check the URL",
            peer.short()
        ))),
        Err(e) if is_refused(&e) => Err(CliError::transient(format!(
            "{url}: nothing is listening on TCP {addr} (connection refused): is `cairn serve --ws` running there?"
        ))),
        Err(e) => Err(explain_connect(&url, addr, peer, key, e)),
    }
}

fn is_refused(e: &Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    // Bounded by the depth of the error chain.
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        src = s.source();
    }
    false
}

fn explain_connect(
    url: &str,
    addr: SocketAddr,
    peer: AuthorId,
    key: &Keypair,
    e: Error,
) -> CliError {
    let text = cause(&e);
    if cairn_quic::is_wrong_server_key(&e) {
        return CliError::new(format!(
            "{url}: the server at {addr} is not peer {} (its key differs from the URL's ?peer=); check the URL",
            peer.short()
        ));
    }
    match e {
        Error::Unauthorized { reason } => CliError::new(format!(
            "{url}: the server refused peer {} (you): {reason}; its operator must allow your peer id (cairn serve --allow {})",
            key.author().short(),
            key.author()
        )),
        Error::NotFound { what } => CliError::new(format!(
            "{url}: the server does not serve {what} (check the store id in the URL)"
        )),
        _ if text.contains("pinned") => CliError::new(format!(
            "{url}: the server at {addr} is not peer {} (its key differs from the URL's ?peer=); check the URL",
            peer.short()
        )),
        _ => CliError::new(format!("{url}: cannot connect to {addr}: {text}")),
    }
}

/// Resolves when the kernel reports that nothing listens on `addr` (ICMP
/// port unreachable, seen as ECONNREFUSED on a connected UDP socket);
/// never resolves otherwise (the caller races it against the dial and its
/// timeout). Sends a one-byte probe every 100–400 ms, which a QUIC server
/// drops as too short to be a packet.
async fn refused(addr: SocketAddr) {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
        return std::future::pending().await;
    };
    if sock.connect(addr).await.is_err() {
        return std::future::pending().await;
    }
    let mut buf = [0u8; 64];
    let mut wait = 100u64;
    loop {
        if let Err(e) = sock.send(&[0]).await {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                return;
            }
            return std::future::pending().await;
        }
        match tokio::time::timeout(Duration::from_millis(wait), sock.recv(&mut buf)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            Ok(_) => return std::future::pending().await, // something answered
            Err(_) => wait = (wait * 2).min(400),
        }
    }
}
