//! `cairn serve`: stores over QUIC (and WebSocket, and in WebRTC rooms),
//! from flags or a `cairn.toml`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn::{AppendOnlyStore, AuthorId, DynAppendOnlyStore, StoreId};
use cairn_quic::{Acl, Permission, QuicServer, ServerOptions, Stores};
use cairn_redb::{RedbOptions, RedbStore};
use cairn_webrtc::{WebRtcStore, WebRtcStoreOptions, WsSignaling};
use cairn_websocket::{WsServer, WsServerOptions};
use serde::Deserialize;

use crate::error::{CliError, Context, Exit, Result, fail, usage};
use crate::identity;
use crate::url::StoreUrl;
use crate::{note, outln};

/// `cairn serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  cairn serve --store acme/notes=redb:relay.redb --create --allow 5f1c…
  cairn serve --listen 0.0.0.0:4433 --store redb:a.redb --store redb:b.redb --allow-read 9e0d…
  cairn serve --config /etc/cairn/cairn.toml          # stores, ACLs, limits: see docs/cli.md
  cairn serve --ephemeral --listen 127.0.0.1:0        # a test server for `cairn conformance`
  cairn serve --store redb:a.redb --allow 5f1c… --ws 0.0.0.0:443 --ws-cert c.pem --ws-key k.pem
                                                      # QUIC and WebSocket (TLS), same stores and ACLs

Prints `listening on …` and one quic:// URL per store on stderr (the URLs also on
stdout), and with --ws one ws:// or wss:// URL per store after them. The host key is its own identity (--key, $CAIRN_SERVER_KEY or
~/.config/cairn/server-identity, created on first start), not yours. Stops cleanly on
SIGTERM or Ctrl-C: requests in flight finish, files are closed.")]
pub struct Args {
    /// A cairn.toml with listen address, host key, stores, ACLs and limits.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["stores", "ephemeral", "allow", "allow_read", "open"])]
    pub config: Option<PathBuf>,
    /// A store: `[STORE_ID=]redb:PATH` or `STORE_ID=memory:` (repeatable;
    /// a redb file records its id). With `@webrtc://HOST:PORT/ROOM` after
    /// it, the store also joins that room.
    #[arg(long = "store", value_name = "SPEC")]
    pub stores: Vec<String>,
    /// Create missing redb files.
    #[arg(long)]
    pub create: bool,
    /// Test server: every peer gets its own fresh in-memory store for any
    /// store id it asks for (what `cairn conformance quic://…` needs).
    #[arg(long, conflicts_with_all = ["stores", "create"])]
    pub ephemeral: bool,
    /// Address to listen on (HOST:PORT; host names are resolved)
    /// [default: 127.0.0.1:4433].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Also serve every store over WebSocket on this address (HOST:PORT),
    /// with the same ACLs and limits: for clients whose network blocks UDP.
    #[arg(long, value_name = "HOST:PORT")]
    pub ws: Option<String>,
    /// PEM certificate chain for `--ws`, to serve wss:// (TLS); without it
    /// --ws serves plain ws:// (loopback, or behind a TLS-terminating proxy).
    #[arg(long, value_name = "FILE", requires = "ws_key")]
    pub ws_cert: Option<PathBuf>,
    /// PEM private key for `--ws-cert`.
    #[arg(long, value_name = "FILE", requires = "ws_cert")]
    pub ws_key: Option<PathBuf>,
    /// Peer id allowed to read and write every served store (repeatable).
    #[arg(long = "allow", value_name = "PEER_ID")]
    pub allow: Vec<AuthorId>,
    /// Peer id allowed to read only (repeatable).
    #[arg(long = "allow-read", value_name = "PEER_ID")]
    pub allow_read: Vec<AuthorId>,
    /// Let every authenticated peer read and write (trusted networks only).
    #[arg(long)]
    pub open: bool,
    /// The store id for `--store` specs that name none (a new redb file,
    /// memory:); a redb file that records another is refused.
    #[arg(long, value_name = "ID", value_parser = super::parse_store_id)]
    pub store_id: Option<StoreId>,
    /// The server's host key [default: $CAIRN_SERVER_KEY, or
    /// ~/.config/cairn/server-identity; created if missing].
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

/// `cairn.toml` (docs/cli.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HOST:PORT.
    pub listen: Option<String>,
    /// HOST:PORT to also serve over WebSocket.
    pub ws_listen: Option<String>,
    /// PEM certificate chain for wss:// (relative to the config file).
    pub ws_cert: Option<PathBuf>,
    /// PEM private key for `ws_cert`.
    pub ws_key: Option<PathBuf>,
    /// Host key file.
    pub key: Option<PathBuf>,
    /// Create missing redb files.
    #[serde(default)]
    pub create: bool,
    /// Every peer may read and write every store.
    #[serde(default)]
    pub open: bool,
    /// Read-write on every store.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Read-only on every store.
    #[serde(default)]
    pub allow_read: Vec<String>,
    /// The stores.
    #[serde(default, rename = "store")]
    pub stores: Vec<StoreConfig>,
    /// Server limits.
    #[serde(default)]
    pub limits: Limits,
}

/// One `[[store]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Store id (a redb file records its own; they must agree).
    pub id: Option<String>,
    /// `redb:PATH` (relative to the config file) or `memory:`.
    pub url: String,
    /// Create the file if missing.
    pub create: Option<bool>,
    /// Read-write on this store.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Read-only on this store.
    #[serde(default)]
    pub allow_read: Vec<String>,
    /// Every authenticated peer may read (true) this store.
    #[serde(default)]
    pub public_read: bool,
    /// `webrtc://HOST:PORT/ROOM` to also serve the store in.
    pub webrtc: Option<String>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most simultaneous connections.
    pub max_connections: Option<usize>,
    /// Most requests in flight per connection.
    pub max_concurrent_requests: Option<u32>,
    /// Largest frame in bytes.
    pub max_frame: Option<u32>,
    /// Largest reassembled request in bytes.
    pub max_message: Option<u64>,
    /// Seconds that shutdown waits for requests in flight.
    pub shutdown_grace_secs: Option<u64>,
}

struct Spec {
    id: Option<StoreId>,
    url: StoreUrl,
    create: bool,
    allow: Vec<AuthorId>,
    allow_read: Vec<AuthorId>,
    public_read: bool,
    webrtc: Option<String>,
}

fn peer(s: &str, what: &str) -> Result<AuthorId> {
    s.parse()
        .map_err(|e| CliError::usage(format!("{what}: {s:?} is not a peer id: {e}")))
}

/// Resolve `HOST:PORT` (host names too) to the first address.
pub async fn resolve_listen(s: &str) -> Result<SocketAddr> {
    resolve_flag("--listen", s).await
}

/// Resolve the `HOST:PORT` of `flag` to the first address.
async fn resolve_flag(flag: &str, s: &str) -> Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(s)
        .await
        .map_err(|e| CliError::usage(format!("{flag} {s}: {}", crate::error::io_cause(&e))))?;
    match addrs.next() {
        Some(a) => Ok(a),
        None => usage(format!("{flag} {s}: resolves to no address")),
    }
}

fn parse_spec(text: &str, create: bool) -> Result<Spec> {
    let (text, webrtc) = match text.split_once("@webrtc://") {
        Some((t, w)) => (t, Some(format!("webrtc://{w}"))),
        None => (text, None),
    };
    let (id, url) = match text.split_once('=') {
        Some((id, url)) if !id.contains(':') => (Some(crate::url::store_id(id)?), url),
        _ => (None, text),
    };
    Ok(Spec {
        id,
        url: StoreUrl::parse(url)?,
        create,
        allow: Vec::new(),
        allow_read: Vec::new(),
        public_read: false,
        webrtc,
    })
}

fn load_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).ctx(format!("cannot read {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let msg = e.message().to_owned();
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].lines().count().max(1);
                format!(" (line {line})")
            })
            .unwrap_or_default();
        CliError::usage(format!("{}{at}: {msg}", path.display()))
    })
}

struct Plan {
    listen: String,
    ws: Option<String>,
    ws_tls: Option<(PathBuf, PathBuf)>,
    key: PathBuf,
    specs: Vec<Spec>,
    open: bool,
    allow: Vec<AuthorId>,
    allow_read: Vec<AuthorId>,
    opts: ServerOptions,
}

fn plan(a: &Args) -> Result<Plan> {
    let env_key = std::env::var_os("CAIRN_SERVER_KEY").map(PathBuf::from);
    let default_key = || {
        env_key
            .clone()
            .unwrap_or_else(identity::default_server_path)
    };
    let mut opts = ServerOptions::default();
    let Some(cfg_path) = &a.config else {
        let specs = a
            .stores
            .iter()
            .map(|s| {
                let mut spec = parse_spec(s, a.create)?;
                spec.id = spec.id.or_else(|| a.store_id.clone());
                Ok(spec)
            })
            .collect::<Result<Vec<_>>>()?;
        if specs.is_empty() && !a.ephemeral {
            return usage("nothing to serve: give --store SPEC (or --config FILE, or --ephemeral)");
        }
        return Ok(Plan {
            listen: a.listen.clone().unwrap_or_else(|| "127.0.0.1:4433".into()),
            ws: a.ws.clone(),
            ws_tls: a.ws_cert.clone().zip(a.ws_key.clone()),
            key: a.key.clone().unwrap_or_else(default_key),
            specs,
            open: a.open,
            allow: a.allow.clone(),
            allow_read: a.allow_read.clone(),
            opts,
        });
    };
    let cfg = load_config(cfg_path)?;
    let base = cfg_path.parent().unwrap_or(Path::new("."));
    let rel = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let what = cfg_path.display().to_string();
    let mut specs = Vec::new();
    for s in &cfg.stores {
        let mut url =
            StoreUrl::parse(&s.url).map_err(|e| CliError::usage(format!("{what}: {}", e.0)))?;
        if let StoreUrl::Redb(p) = &url {
            url = StoreUrl::Redb(rel(p));
        }
        specs.push(Spec {
            id: s.id.as_deref().map(crate::url::store_id).transpose()?,
            url,
            create: s.create.unwrap_or(cfg.create || a.create),
            allow: s
                .allow
                .iter()
                .map(|p| peer(p, &what))
                .collect::<Result<_>>()?,
            allow_read: s
                .allow_read
                .iter()
                .map(|p| peer(p, &what))
                .collect::<Result<_>>()?,
            public_read: s.public_read,
            webrtc: s.webrtc.clone(),
        });
    }
    if specs.is_empty() {
        return usage(format!("{what}: no [[store]] to serve"));
    }
    let l = &cfg.limits;
    if let Some(v) = l.max_connections {
        opts.max_connections = v;
    }
    if let Some(v) = l.max_concurrent_requests {
        opts.max_concurrent_requests = v;
    }
    if let Some(v) = l.max_frame {
        opts.max_frame = v;
    }
    if let Some(v) = l.max_message {
        opts.max_message = v;
    }
    if let Some(v) = l.shutdown_grace_secs {
        opts.shutdown_grace = Duration::from_secs(v);
    }
    let ws_tls = match (
        a.ws_cert.clone().or(cfg.ws_cert.as_deref().map(rel)),
        a.ws_key.clone().or(cfg.ws_key.as_deref().map(rel)),
    ) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return usage(format!("{what}: ws_cert and ws_key go together")),
    };
    Ok(Plan {
        listen: a
            .listen
            .clone()
            .or(cfg.listen.clone())
            .unwrap_or_else(|| "127.0.0.1:4433".into()),
        ws: a.ws.clone().or(cfg.ws_listen.clone()),
        ws_tls,
        key: a
            .key
            .clone()
            .or_else(|| cfg.key.as_deref().map(rel))
            .unwrap_or_else(default_key),
        specs,
        open: cfg.open,
        allow: cfg
            .allow
            .iter()
            .map(|p| peer(p, &what))
            .collect::<Result<_>>()?,
        allow_read: cfg
            .allow_read
            .iter()
            .map(|p| peer(p, &what))
            .collect::<Result<_>>()?,
        opts,
    })
}

fn host_key(path: &Path) -> Result<cairn::Keypair> {
    if path.exists() {
        return identity::load(path);
    }
    let kp = identity::create(path)?;
    eprintln!(
        "created a host key for this server at {} (peer id {})",
        path.display(),
        kp.author()
    );
    Ok(kp)
}

async fn open_spec(spec: &Spec) -> Result<Arc<DynAppendOnlyStore>> {
    match &spec.url {
        StoreUrl::Memory => {
            let Some(id) = &spec.id else {
                return usage("memory: needs a store id: --store STORE_ID=memory:");
            };
            Ok(Arc::new(cairn_memory::MemoryStore::new(id.clone())))
        }
        StoreUrl::Redb(path) => {
            let url = &spec.url;
            let store = match std::fs::metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !spec.create {
                        return fail(format!(
                            "{url}: no such file (pass --create, or create = true in the config, to make a new store)"
                        ));
                    }
                    let Some(id) = &spec.id else {
                        return usage(format!(
                            "{url}: a new store needs an id: --store STORE_ID=redb:PATH"
                        ));
                    };
                    let s = RedbStore::open(path, id.clone()).await.ctx(url)?;
                    note!("created {url} for store {id}");
                    s
                }
                Err(e) => return Err(e).ctx(url),
                Ok(_) => RedbStore::open_existing(path, RedbOptions::default())
                    .await
                    .ctx(url)?,
            };
            if let Some(id) = &spec.id
                && id != store.store_id()
            {
                return usage(format!("{url} holds store {}, not {id}", store.store_id()));
            }
            Ok(Arc::new(store))
        }
        StoreUrl::Postgres(pg) => {
            let url = &spec.url;
            let Some(id) = &spec.id else {
                return usage(format!(
                    "{url}: a database holds many stores; name one: --store STORE_ID=postgres://…"
                ));
            };
            let db = crate::open::postgres_db(pg).await.ctx(url)?;
            let store = match db.existing_store(id.clone()).await.ctx(url)? {
                Some(s) => s,
                None if spec.create => {
                    let s = db.store(id.clone()).await.ctx(url)?;
                    note!("created store {id} in {url}");
                    s
                }
                None => {
                    return fail(format!(
                        "{url}: the database holds no store {id} (pass --create, or create = true in the config, to make it)"
                    ));
                }
            };
            Ok(Arc::new(store))
        }
        other => usage(format!(
            "{other}: serve takes local stores (redb:PATH, STORE_ID=memory:, STORE_ID=postgres://…)"
        )),
    }
}

/// Serve until SIGTERM or Ctrl-C.
pub async fn run(a: Args) -> Result<Exit> {
    let stop = super::shutdown_signal()?;
    let p = plan(&a)?;
    let addr = resolve_listen(&p.listen).await?;
    // Refuse duplicates before opening anything.
    let mut paths: HashMap<PathBuf, &StoreUrl> = HashMap::new();
    for s in &p.specs {
        if let StoreUrl::Redb(path) = &s.url {
            let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            if let Some(first) = paths.insert(key, &s.url) {
                return usage(format!("{first} is given twice"));
            }
        }
    }
    let key = host_key(&p.key)?;
    if a.ephemeral {
        let server = QuicServer::bind(
            addr,
            &key,
            Arc::new(PerPeerMemory::default()),
            Arc::new(Acl::open()),
            p.opts.clone(),
        )
        .ctx(format!("cannot listen on {addr}"))?;
        let a = server.local_addr();
        eprintln!(
            "listening on {a} as peer {} (ephemeral: fresh memory stores per peer)",
            server.peer_id()
        );
        let url = format!("quic://{a}/any?peer={}", server.peer_id());
        eprintln!("  {url}");
        outln!("{url}");
        let ws = match &p.ws {
            Some(w) => {
                let ws = bind_ws(
                    w,
                    p.ws_tls.as_ref(),
                    &key,
                    Arc::new(PerPeerMemory::default()),
                    Arc::new(Acl::open()),
                    &p.opts,
                )
                .await?;
                let url = format!(
                    "{}/any?peer={}",
                    ws_base(&ws, p.ws_tls.is_some()),
                    ws.peer_id()
                );
                eprintln!("  {url}");
                outln!("{url}");
                Some(ws)
            }
            None => None,
        };
        return stop_on_signal(stop, server, ws, Vec::new()).await;
    }
    let provider = Stores::new();
    let mut acl = if p.open { Acl::open() } else { Acl::new() };
    let mut served: Vec<(StoreId, Arc<DynAppendOnlyStore>, &Spec)> = Vec::new();
    for spec in &p.specs {
        let store = open_spec(spec).await?;
        let id = store.store_id().clone();
        if let Some((_, _, first)) = served.iter().find(|(i, _, _)| *i == id) {
            return usage(format!(
                "store {id} is given twice ({} and {})",
                first.url, spec.url
            ));
        }
        for peer in p.allow.iter().chain(&spec.allow) {
            acl = acl.allow(&id, *peer, Permission::ReadWrite);
        }
        for peer in p.allow_read.iter().chain(&spec.allow_read) {
            acl = acl.allow(&id, *peer, Permission::Read);
        }
        if spec.public_read {
            acl = acl.allow_everyone(&id, Permission::Read);
        }
        provider.insert(store.clone());
        served.push((id, store, spec));
    }
    let me = key.author();
    if p.allow.contains(&me) || p.allow_read.contains(&me) {
        note!(
            "warning: --allow names the server's own host key; clients use their own identity (`cairn id show --plain`)"
        );
    }
    if !p.open
        && p.allow.is_empty()
        && p.allow_read.is_empty()
        && served
            .iter()
            .all(|(_, _, s)| s.allow.is_empty() && s.allow_read.is_empty() && !s.public_read)
    {
        note!("warning: no --allow, --allow-read or --open: every peer will be refused");
    }
    let acl = Arc::new(acl);
    let provider = Arc::new(provider);
    let ws = match &p.ws {
        Some(w) => Some(
            bind_ws(
                w,
                p.ws_tls.as_ref(),
                &key,
                provider.clone(),
                acl.clone(),
                &p.opts,
            )
            .await?,
        ),
        None => None,
    };
    let server = QuicServer::bind(addr, &key, provider, acl.clone(), p.opts)
        .ctx(format!("cannot listen on {addr}"))?;
    let local = server.local_addr();
    eprintln!("listening on {local} as peer {}", server.peer_id());
    if local.ip().is_unspecified() {
        note!(
            "  (clients use this machine's address instead of {})",
            local.ip()
        );
    }
    let mut rooms = Vec::new();
    for (id, store, spec) in &served {
        let url = format!("quic://{local}/{id}?peer={}", server.peer_id());
        eprintln!("  {id} ({}): {url}", spec.url);
        outln!("{url}");
        if let Some(w) = &spec.webrtc {
            rooms.push(join_room(w, id, store.clone(), &key, acl.clone()).await?);
        }
    }
    if let Some(ws) = &ws {
        let base = ws_base(ws, p.ws_tls.is_some());
        eprintln!(
            "listening on {} (WebSocket{}) as peer {}",
            ws.local_addr(),
            if p.ws_tls.is_some() { ", TLS" } else { "" },
            ws.peer_id()
        );
        for (id, _, _) in &served {
            let url = format!("{base}/{id}?peer={}", ws.peer_id());
            eprintln!("  {id}: {url}");
            outln!("{url}");
        }
    }
    stop_on_signal(stop, server, ws, rooms).await
}

/// `ws://ADDR` or `wss://ADDR` of a bound server.
fn ws_base(ws: &WsServer, tls: bool) -> String {
    format!("{}://{}", if tls { "wss" } else { "ws" }, ws.local_addr())
}

/// The TLS config of a wss:// listener, from PEM files.
fn ws_tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| CliError::usage(format!("--ws-cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return usage(format!(
            "--ws-cert {}: no PEM certificate in the file",
            cert.display()
        ));
    }
    let k = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| CliError::usage(format!("--ws-key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError::new(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, k)
        .map_err(|e| {
            CliError::usage(format!(
                "--ws-cert {} with --ws-key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    Ok(Arc::new(cfg))
}

/// Bind the WebSocket listener with the QUIC server's stores, ACLs and
/// limits.
async fn bind_ws(
    listen: &str,
    tls: Option<&(PathBuf, PathBuf)>,
    key: &cairn::Keypair,
    stores: Arc<dyn cairn_quic::StoreProvider>,
    acl: Arc<Acl>,
    q: &ServerOptions,
) -> Result<WsServer> {
    let addr = resolve_flag("--ws", listen).await?;
    let opts = WsServerOptions {
        tls: tls.map(|(c, k)| ws_tls_config(c, k)).transpose()?,
        max_connections: q.max_connections,
        max_connections_per_ip: q.max_connections_per_ip,
        max_frame: q.max_frame,
        max_message: q.max_message,
        shutdown_grace: q.shutdown_grace,
        verifier: q.verifier.clone(),
        response: q.response,
        admission: q.admission,
        ..WsServerOptions::default()
    };
    WsServer::bind(addr, key, stores, acl, opts)
        .await
        .ctx(format!("--ws: cannot listen on {addr}"))
}

async fn join_room(
    text: &str,
    id: &StoreId,
    store: Arc<DynAppendOnlyStore>,
    key: &cairn::Keypair,
    acl: Arc<Acl>,
) -> Result<WebRtcStore> {
    // The store id goes before the query (`?password=…&bind=…`).
    let (base, query) = match text.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (text, None),
    };
    let full = if base.matches('/').count() <= 3 {
        format!("{}/{id}", base.trim_end_matches('/'))
    } else {
        base.to_owned()
    };
    let full = match query {
        Some(q) => format!("{full}?{q}"),
        None => full,
    };
    let StoreUrl::WebRtcRoom {
        signal,
        room,
        store: sid,
        password,
        bind,
        ..
    } = StoreUrl::parse(&full)?
    else {
        return usage(format!("{text}: expected webrtc://HOST:PORT/ROOM"));
    };
    if &sid != id {
        return usage(format!("{text} names store {sid}, not {id}"));
    }
    let mut opts = WebRtcStoreOptions::default();
    if let Some(ip) = bind {
        opts.bind_ip = ip;
    }
    let w = WebRtcStore::new(store, key, acl, opts);
    let sig = WsSignaling::connect(&signal, &room, password.as_deref(), key)
        .await
        .ctx(format!("{full}: signaling server {signal}"))?;
    w.join(sig);
    eprintln!("  {id}: in room {room} on {signal}");
    Ok(w)
}

async fn stop_on_signal(
    stop: impl std::future::Future<Output = &'static str>,
    server: QuicServer,
    ws: Option<WsServer>,
    rooms: Vec<WebRtcStore>,
) -> Result<Exit> {
    let sig = stop.await;
    note!("shutting down ({sig}): finishing requests in flight");
    for r in &rooms {
        r.close().await;
    }
    drop(rooms);
    if let Some(ws) = ws {
        ws.shutdown().await;
    }
    server.shutdown().await;
    note!("stopped");
    Ok(Exit::Ok)
}

/// Most stores an ephemeral server creates before refusing more.
const EPHEMERAL_MAX_STORES: usize = 10_000;

/// Every peer gets its own memory store per store id, made on first use.
#[derive(Default)]
struct PerPeerMemory {
    stores: std::sync::Mutex<HashMap<(AuthorId, StoreId), Arc<DynAppendOnlyStore>>>,
}

impl cairn_quic::StoreProvider for PerPeerMemory {
    fn get(&self, _store_id: &StoreId) -> Option<Arc<DynAppendOnlyStore>> {
        None
    }

    fn get_for(&self, peer: &AuthorId, store_id: &StoreId) -> Option<Arc<DynAppendOnlyStore>> {
        let mut map = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        let key = (*peer, store_id.clone());
        if let Some(s) = map.get(&key) {
            return Some(s.clone());
        }
        if map.len() >= EPHEMERAL_MAX_STORES {
            tracing::warn!("ephemeral server is full ({EPHEMERAL_MAX_STORES} stores); refusing");
            return None;
        }
        let s: Arc<DynAppendOnlyStore> = Arc::new(cairn_memory::MemoryStore::new(store_id.clone()));
        map.insert(key, s.clone());
        Some(s)
    }
}
