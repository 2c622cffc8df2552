//! `cairn conformance`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn::{AuthorId, DynAppendOnlyStore, StoreId};
use cairn_conformance::{Outcome, StoreFactory, all_cases};

use crate::error::{Context, Exit, Result, fail, usage};
use crate::open::NetArgs;
use crate::url::StoreUrl;
use crate::{note, outln};

/// `cairn conformance`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  cairn conformance memory:
  cairn conformance redb:/tmp/cases --filter durability::
  cairn serve --ephemeral --listen 127.0.0.1:4444 &
  cairn conformance 'quic://127.0.0.1:4444/any?peer=<the server's peer id>'
  cairn serve --ephemeral --listen 127.0.0.1:4444 --ws 127.0.0.1:8080 &
  cairn conformance 'ws://127.0.0.1:8080/any?peer=<the server's peer id>'
  cairn conformance memory: --list

A redb:DIR run makes its files in a fresh folder inside DIR and removes it afterwards.")]
pub struct Args {
    /// `memory:`, `redb:DIR` (a directory for fresh test files), or
    /// `quic://HOST:PORT/any?peer=PEER_ID` (or `ws://`, `wss://`) of a
    /// server started with `cairn serve --ephemeral`.
    pub url: String,
    /// Only cases whose `group::name` contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// List the cases (those --filter selects) without running them.
    #[arg(long)]
    pub list: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

struct MemoryFactory;

#[async_trait::async_trait]
impl StoreFactory for MemoryFactory {
    fn name(&self) -> String {
        "memory".into()
    }
    async fn create(&self, id: &StoreId) -> cairn::Result<Arc<DynAppendOnlyStore>> {
        Ok(Arc::new(cairn_memory::MemoryStore::new(id.clone())))
    }
}

struct RedbFactory {
    dir: PathBuf,
    n: AtomicU64,
}

#[async_trait::async_trait]
impl StoreFactory for RedbFactory {
    fn name(&self) -> String {
        format!("redb in {}", self.dir.display())
    }
    async fn create(&self, id: &StoreId) -> cairn::Result<Arc<DynAppendOnlyStore>> {
        let n = self.n.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.join(format!("case-{n}.redb"));
        Ok(Arc::new(
            cairn_redb::RedbStore::open_non_durable(path, id.clone()).await?,
        ))
    }
    fn supports_reopen(&self) -> bool {
        true
    }
    async fn open_named(&self, id: &StoreId, name: &str) -> cairn::Result<Arc<DynAppendOnlyStore>> {
        let path = self.dir.join(format!("named-{name}.redb"));
        Ok(Arc::new(
            cairn_redb::RedbStore::open(path, id.clone()).await?,
        ))
    }
}

/// Stores on a live server started with `cairn serve --ephemeral`: each
/// store is a fresh identity's view, so every store is independent.
struct QuicFactory {
    addr: SocketAddr,
    peer: AuthorId,
    timeout: Duration,
}

#[async_trait::async_trait]
impl StoreFactory for QuicFactory {
    fn name(&self) -> String {
        format!("quic://{} (memory cache)", self.addr)
    }
    async fn create(&self, id: &StoreId) -> cairn::Result<Arc<DynAppendOnlyStore>> {
        let me = cairn::Keypair::try_generate()?;
        let cache = Arc::new(cairn_memory::MemoryStore::new(id.clone()));
        let q = cairn_quic::QuicStore::new(
            cache,
            self.addr,
            self.peer,
            &me,
            cairn_quic::QuicStoreOptions::default(),
        )?;
        q.wait_connected(self.timeout).await?;
        Ok(Arc::new(q))
    }
}

/// The same over WebSocket (`cairn serve --ephemeral --ws`).
struct WsFactory {
    /// `ws://HOST:PORT/` or `wss://…/`.
    base: String,
    peer: AuthorId,
    opts: cairn_websocket::WebSocketStoreOptions,
    timeout: Duration,
}

#[async_trait::async_trait]
impl StoreFactory for WsFactory {
    fn name(&self) -> String {
        format!("{} (memory cache)", self.base.trim_end_matches('/'))
    }
    async fn create(&self, id: &StoreId) -> cairn::Result<Arc<DynAppendOnlyStore>> {
        let me = cairn::Keypair::try_generate()?;
        let cache = Arc::new(cairn_memory::MemoryStore::new(id.clone()));
        let w = cairn_websocket::WebSocketStore::new(
            cache,
            &format!("{}{id}", self.base),
            self.peer,
            &me,
            self.opts.clone(),
        )?;
        w.wait_connected(self.timeout).await?;
        Ok(Arc::new(w))
    }
}

/// Run the suite; exit 1 if a case fails.
pub async fn run(a: Args) -> Result<Exit> {
    let url = StoreUrl::parse(&a.url)?;
    let cases: Vec<_> = all_cases()
        .iter()
        .filter(|c| {
            a.filter
                .as_deref()
                .is_none_or(|f| format!("{}::{}", c.group, c.name).contains(f))
        })
        .collect();
    if cases.is_empty() {
        return usage(format!(
            "no case matches --filter {:?} (cases are named group::name; `cairn conformance memory: --list` lists them)",
            a.filter.as_deref().unwrap_or("")
        ));
    }
    if a.list {
        for c in &cases {
            outln!("{}::{}", c.group, c.name);
        }
        return Ok(Exit::Ok);
    }
    let mut _cleanup = None;
    let factory: Box<dyn StoreFactory> = match url {
        StoreUrl::Memory => Box::new(MemoryFactory),
        StoreUrl::Redb(dir) => {
            std::fs::create_dir_all(&dir).ctx(format!("cannot create {}", dir.display()))?;
            let tmp = tempfile::Builder::new()
                .prefix("cairn-conformance-")
                .tempdir_in(&dir)
                .ctx(format!("cannot make a folder in {}", dir.display()))?;
            let f = RedbFactory {
                dir: tmp.path().to_path_buf(),
                n: AtomicU64::new(0),
            };
            _cleanup = Some(tmp);
            Box::new(f)
        }
        StoreUrl::Quic {
            host, addr, peer, ..
        } => {
            probe_ephemeral(&host, addr, peer, &a.net).await?;
            Box::new(QuicFactory {
                addr,
                peer,
                timeout: a.net.timeout(),
            })
        }
        StoreUrl::WebSocket {
            tls,
            ref host,
            addr,
            peer,
            ref ca,
            ..
        } => {
            let me = cairn::Keypair::try_generate()?;
            let id = StoreId::new("conformance/probe")?;
            if let Err(e) = crate::open::connect_ws(
                tls,
                host,
                addr,
                peer,
                ca.as_deref(),
                &me,
                &id,
                a.net.timeout(),
            )
            .await
            {
                note!(
                    "(the suite needs `cairn serve --ephemeral`, which gives every peer fresh stores)"
                );
                return fail(format!(
                    "{url}: not usable for conformance: a fresh peer was refused or not answered; start a test server with `cairn serve --ephemeral --ws` ({})",
                    e.msg
                ));
            }
            let scheme = if tls { "wss" } else { "ws" };
            let base = format!("{scheme}://{host}/");
            let opts = cairn_websocket::WebSocketStoreOptions {
                tls: ca
                    .as_deref()
                    .map(|p| crate::open::tls_roots(&base, p))
                    .transpose()?,
                connect_timeout: a.net.timeout(),
                ..cairn_websocket::WebSocketStoreOptions::default()
            };
            Box::new(WsFactory {
                base,
                peer,
                opts,
                timeout: a.net.timeout(),
            })
        }
        other => {
            return usage(format!(
                "{other}: conformance runs on memory:, redb:DIR or an ephemeral quic://, ws:// or wss:// server"
            ));
        }
    };
    outln!("conformance suite for {}", factory.name());
    outln!("{:<12} {:<64} {:>8}  RESULT", "GROUP", "CASE", "MS");
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for case in cases {
        let start = Instant::now();
        let result = (case.run)(factory.as_ref()).await;
        let verdict = match &result {
            Ok(Outcome::Passed) => {
                passed += 1;
                "pass".to_owned()
            }
            Ok(Outcome::Skipped(why)) => {
                skipped += 1;
                format!("skip ({why})")
            }
            Err(f) => {
                failed += 1;
                format!("FAIL: {}", f.0.lines().next().unwrap_or(""))
            }
        };
        outln!(
            "{:<12} {:<64} {:>8}  {verdict}",
            case.group,
            case.name,
            start.elapsed().as_millis()
        );
    }
    outln!("{passed} passed, {failed} failed, {skipped} skipped");
    drop(factory);
    if failed > 0 {
        return fail(format!("{failed} conformance case(s) failed"));
    }
    Ok(Exit::Ok)
}

/// The suite needs a server that gives every new peer fresh stores for any
/// store id: check with one fresh identity before running 50 cases.
async fn probe_ephemeral(
    host: &str,
    addr: SocketAddr,
    peer: AuthorId,
    net: &NetArgs,
) -> Result<()> {
    let me = cairn::Keypair::try_generate()?;
    let id = StoreId::new("conformance/probe")?;
    match crate::open::connect(host, addr, peer, &me, &id, net.timeout()).await {
        Ok(_) => Ok(()),
        Err(e) => {
            note!(
                "(the suite needs `cairn serve --ephemeral`, which gives every peer fresh stores)"
            );
            fail(format!(
                "quic://{host} is not usable for conformance: a fresh peer was refused or not answered; start a test server with `cairn serve --ephemeral` ({})",
                e.msg
            ))
        }
    }
}
