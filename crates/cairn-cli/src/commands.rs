//! The subcommands other than `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn::sync::{push, sync as sync_both};
use cairn::{
    AppendOnlyStore, AuthorId, DocId, DynAppendOnlyStore, StoreId, SyncEvent, SyncOptions,
};
use cairn_quic::{Acl, Permission, QuicServer, ServerOptions, Stores};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{CliError, Result, fail};
use crate::identity;
use crate::url::{self, StoreUrl};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Settings shared by every command.
pub struct Ctx {
    /// The identity file.
    pub key_path: PathBuf,
    /// Store id for local stores.
    pub store_id: StoreId,
}

/// `cairn serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A store to serve: `[STORE_ID=]redb:PATH`, `[STORE_ID=]memory:` or
    /// `[STORE_ID=]postgres://USER@HOST/DB` (repeatable; without `STORE_ID=`
    /// the global --store-id is used). Several servers may serve the same
    /// PostgreSQL store at once.
    #[arg(long = "store", required_unless_present = "ephemeral")]
    stores: Vec<String>,
    /// Test server: every peer gets its own fresh in-memory store for any
    /// store id it asks for (what `cairn conformance quic://…` needs).
    /// Implies --open. Nothing is kept.
    #[arg(long, conflicts_with = "stores")]
    ephemeral: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Peer id allowed to read and write every served store (repeatable).
    #[arg(long = "allow")]
    allow: Vec<AuthorId>,
    /// Peer id allowed to read only (repeatable).
    #[arg(long = "allow-read")]
    allow_read: Vec<AuthorId>,
    /// Let every authenticated peer read and write (trusted networks only).
    #[arg(long)]
    open: bool,
}

/// `cairn serve`: serve stores until Ctrl-C, then shut down gracefully.
pub async fn serve(ctx: &Ctx, a: ServeArgs) -> Result<()> {
    let key = identity::load_or_create(&ctx.key_path)?;
    if a.ephemeral {
        let server = QuicServer::bind(
            a.listen,
            &key,
            Arc::new(PerPeerMemory::default()),
            Arc::new(Acl::open()),
            ServerOptions::default(),
        )?;
        println!(
            "serving fresh per-peer memory stores on {} as peer {}",
            server.local_addr(),
            server.peer_id()
        );
        println!(
            "  quic://{}/any?peer={}",
            server.local_addr(),
            server.peer_id()
        );
        return run_until_ctrl_c(server).await;
    }
    let provider = Stores::new();
    let mut acl = if a.open { Acl::open() } else { Acl::new() };
    let mut ids = Vec::new();
    for spec in &a.stores {
        let (id, url) = match spec.split_once('=') {
            Some((id, url)) => (StoreId::new(id)?, url),
            None => (ctx.store_id.clone(), spec.as_str()),
        };
        let parsed = StoreUrl::parse(url)?;
        if matches!(parsed, StoreUrl::Quic { .. }) {
            return fail(
                "serve takes local stores (memory:, redb:PATH, postgres://…), not quic://",
            );
        }
        let opened = url::open(&parsed, &id, None, CONNECT_TIMEOUT).await?;
        provider.insert(opened.store);
        for p in &a.allow {
            acl = acl.allow(&id, *p, Permission::ReadWrite);
        }
        for p in &a.allow_read {
            acl = acl.allow(&id, *p, Permission::Read);
        }
        ids.push(id);
    }
    if a.allow.is_empty() && a.allow_read.is_empty() && !a.open {
        eprintln!("warning: no --allow, --allow-read or --open: every request will be refused");
    }
    let server = QuicServer::bind(
        a.listen,
        &key,
        Arc::new(provider),
        Arc::new(acl),
        ServerOptions::default(),
    )?;
    println!(
        "serving on {} as peer {}",
        server.local_addr(),
        server.peer_id()
    );
    for id in &ids {
        println!(
            "  quic://{}/{}?peer={}",
            server.local_addr(),
            id,
            server.peer_id()
        );
    }
    run_until_ctrl_c(server).await
}

async fn run_until_ctrl_c(server: QuicServer) -> Result<()> {
    tokio::signal::ctrl_c().await?;
    eprintln!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Most stores an ephemeral server creates before refusing more.
const EPHEMERAL_MAX_STORES: usize = 10_000;

/// Every peer gets its own memory store per store id, made on first use.
#[derive(Default)]
struct PerPeerMemory {
    stores:
        std::sync::Mutex<std::collections::HashMap<(AuthorId, StoreId), Arc<DynAppendOnlyStore>>>,
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

/// `cairn sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Source store URL.
    #[arg(long)]
    from: String,
    /// Target store URL.
    #[arg(long)]
    to: String,
    /// Sync both ways instead of copying from → to.
    #[arg(long)]
    both: bool,
    /// Changes per round.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

fn store_id_for(ctx: &Ctx, urls: &[&StoreUrl]) -> Result<StoreId> {
    let named: Vec<&StoreId> = urls.iter().filter_map(|u| u.store_id()).collect();
    match named.as_slice() {
        [] => Ok(ctx.store_id.clone()),
        [one, rest @ ..] if rest.iter().all(|r| r == one) => Ok((*one).clone()),
        _ => fail("the two URLs name different store ids; only stores with the same id sync"),
    }
}

fn needs_key(urls: &[&StoreUrl]) -> bool {
    urls.iter().any(|u| matches!(u, StoreUrl::Quic { .. }))
}

/// `cairn sync`: copy with a progress bar, then print the report.
pub async fn sync(ctx: &Ctx, a: SyncArgs) -> Result<()> {
    let (from, to) = (StoreUrl::parse(&a.from)?, StoreUrl::parse(&a.to)?);
    if from == to && from != StoreUrl::Memory {
        return fail("--from and --to are the same store");
    }
    let id = store_id_for(ctx, &[&from, &to])?;
    let key = if needs_key(&[&from, &to]) {
        Some(identity::load_or_create(&ctx.key_path)?)
    } else {
        None
    };
    let src = url::open(&from, &id, key.as_ref(), CONNECT_TIMEOUT).await?;
    let dst = url::open(&to, &id, key.as_ref(), CONNECT_TIMEOUT).await?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>5} [{bar:40}] {pos}/{len} examined, {msg}")
            .map_err(|e| CliError(e.to_string()))?
            .progress_chars("=> "),
    );
    let b = bar.clone();
    let opts = SyncOptions {
        batch_changes: a.batch.max(1),
        ..SyncOptions::default()
    }
    .on_progress(move |ev| match ev {
        SyncEvent::Started { direction, total } => {
            b.reset();
            b.set_prefix(direction.to_string());
            b.set_length(*total);
        }
        SyncEvent::Progress {
            examined,
            transferred,
            bytes,
            ..
        } => {
            b.set_position(*examined);
            b.set_message(format!("{transferred} copied, {bytes} bytes"));
        }
        _ => {}
    });
    let report = if a.both {
        sync_both(src.store.as_ref(), dst.store.as_ref(), &opts).await?
    } else {
        push(src.store.as_ref(), dst.store.as_ref(), &opts).await?
    };
    bar.finish_and_clear();
    // A remote target has the changes once its appends returned; wait for
    // nothing else. Print the report.
    println!("{report}");
    for r in report.pulled.rejected.iter().chain(&report.pushed.rejected) {
        println!("  rejected {}: {}", r.id, r.reason);
    }
    for q in [&src.quic, &dst.quic].into_iter().flatten() {
        q.close().await;
    }
    Ok(())
}

/// `cairn log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Store URL.
    url: String,
    /// Only this document, in dependency order.
    #[arg(long)]
    doc: Option<String>,
    /// At most this many lines.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

fn print_meta(seq: Option<u64>, m: &cairn::ChangeMeta) {
    let seq = seq.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
    println!(
        "{seq:>8}  {}  {:<8}  {:<24}  author {}  deps {}  {} B  {}",
        m.id.short(),
        m.kind.to_string(),
        m.doc_id.as_str(),
        m.author.short(),
        m.deps.len(),
        m.payload_len,
        if m.signature.is_some() {
            "signed"
        } else {
            "unsigned"
        }
    );
}

/// Open one store URL (loading the identity only if it is remote).
async fn open_one(ctx: &Ctx, text: &str) -> Result<url::Opened> {
    let u = StoreUrl::parse(text)?;
    let id = store_id_for(ctx, &[&u])?;
    let key = if needs_key(&[&u]) {
        Some(identity::load_or_create(&ctx.key_path)?)
    } else {
        None
    };
    url::open(&u, &id, key.as_ref(), CONNECT_TIMEOUT).await
}

/// `cairn log`: one line per change.
pub async fn log(ctx: &Ctx, a: LogArgs) -> Result<()> {
    let s = open_one(ctx, &a.url).await?;
    println!("{:>8}  {:<12}  {:<8}  {:<24}", "seq", "id", "kind", "doc");
    if let Some(doc) = a.doc {
        for m in s
            .store
            .changes_for_doc(&DocId::new(doc)?, false)
            .await?
            .iter()
            .take(a.limit)
        {
            print_meta(None, m);
        }
    } else {
        let mut after = 0;
        let mut shown = 0;
        while shown < a.limit {
            let page = s.store.scan(after, (a.limit - shown).min(500)).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            shown += page.len();
            for item in &page {
                print_meta(Some(item.seq), &item.meta);
            }
        }
    }
    if let Some(q) = s.quic {
        q.close().await;
    }
    Ok(())
}

/// `cairn stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Store URL.
    url: String,
}

/// `cairn stats`: head, counts, sizes, capabilities.
pub async fn stats(ctx: &Ctx, a: StatsArgs) -> Result<()> {
    let s = open_one(ctx, &a.url).await?;
    let head = s.store.head().await?;
    let mut docs = std::collections::HashSet::new();
    let mut authors = std::collections::HashSet::new();
    let (mut bytes, mut signed, mut count) = (0u64, 0u64, 0u64);
    cairn::scan_all(s.store.as_ref(), |m| {
        count += 1;
        bytes += m.payload_len;
        signed += u64::from(m.signature.is_some());
        docs.insert(m.doc_id);
        authors.insert(m.author);
    })
    .await?;
    println!("store      {}", s.store.store_id());
    println!("epoch      {:016x}", head.epoch);
    println!("seq        {}", head.seq);
    println!("changes    {count} ({signed} signed)");
    println!("documents  {}", docs.len());
    println!("authors    {}", authors.len());
    println!("payload    {bytes} bytes");
    println!("caps       {:?}", s.store.capabilities());
    if let Some(q) = s.quic {
        println!("connection {:?}", *q.state().borrow());
        q.close().await;
    }
    Ok(())
}

/// `cairn id`.
#[derive(Debug, Subcommand)]
pub enum IdAction {
    /// Create a new identity (refuses to overwrite one).
    New,
    /// Show the peer id, as text and as a QR code.
    Show {
        /// Print only the peer id.
        #[arg(long)]
        plain: bool,
    },
}

/// `cairn id new|show`.
pub fn id(ctx: &Ctx, action: IdAction) -> Result<()> {
    let (kp, plain) = match action {
        IdAction::New => {
            let kp = identity::create(&ctx.key_path)?;
            eprintln!("wrote {}", ctx.key_path.display());
            (kp, false)
        }
        IdAction::Show { plain } => (identity::load(&ctx.key_path)?, plain),
    };
    let peer = kp.author().to_string();
    println!("{peer}");
    if !plain {
        println!("{}", identity::qr(&peer)?);
    }
    Ok(())
}

/// `cairn conformance`.
#[derive(Debug, Args)]
pub struct ConformanceArgs {
    /// `memory:`, `redb:DIR` (a directory for fresh test files), or
    /// `quic://HOST:PORT/any?peer=PEER_ID` of a server started with
    /// `cairn serve --ephemeral`.
    url: String,
    /// Only cases whose `group::name` contains this.
    #[arg(long)]
    filter: Option<String>,
}

struct MemoryFactory;

#[async_trait::async_trait]
impl cairn_conformance::StoreFactory for MemoryFactory {
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
impl cairn_conformance::StoreFactory for RedbFactory {
    fn name(&self) -> String {
        format!("redb in {}", self.dir.display())
    }
    async fn create(&self, id: &StoreId) -> cairn::Result<Arc<DynAppendOnlyStore>> {
        let n = self.n.fetch_add(1, Ordering::SeqCst);
        let path = self
            .dir
            .join(format!("case-{}-{n}.redb", std::process::id()));
        Ok(Arc::new(
            cairn_redb::RedbStore::open_non_durable(path, id.clone()).await?,
        ))
    }
    fn supports_reopen(&self) -> bool {
        true
    }
    async fn open_named(&self, id: &StoreId, name: &str) -> cairn::Result<Arc<DynAppendOnlyStore>> {
        let path = self
            .dir
            .join(format!("named-{}-{name}.redb", std::process::id()));
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
}

#[async_trait::async_trait]
impl cairn_conformance::StoreFactory for QuicFactory {
    fn name(&self) -> String {
        format!("quic://{} (memory cache)", self.addr)
    }
    async fn create(&self, id: &StoreId) -> cairn::Result<Arc<DynAppendOnlyStore>> {
        let me = cairn::Keypair::generate();
        let cache = Arc::new(cairn_memory::MemoryStore::new(id.clone()));
        let q = cairn_quic::QuicStore::new(
            cache,
            self.addr,
            self.peer,
            &me,
            cairn_quic::QuicStoreOptions::default(),
        )?;
        q.wait_connected(CONNECT_TIMEOUT).await?;
        Ok(Arc::new(q))
    }
}

/// `cairn conformance`: run the suite, print the table; exit 1 on failure.
pub async fn conformance(_ctx: &Ctx, a: ConformanceArgs) -> Result<ExitCode> {
    let rows = match StoreUrl::parse(&a.url)? {
        StoreUrl::Memory => cairn_conformance::run_suite(&MemoryFactory, a.filter.as_deref()).await,
        StoreUrl::Redb(dir) => {
            std::fs::create_dir_all(&dir)?;
            let f = RedbFactory {
                dir,
                n: AtomicU64::new(0),
            };
            cairn_conformance::run_suite(&f, a.filter.as_deref()).await
        }
        StoreUrl::Quic { addr, peer, .. } => {
            let f = QuicFactory { addr, peer };
            cairn_conformance::run_suite(&f, a.filter.as_deref()).await
        }
        StoreUrl::Postgres(_) => {
            return fail(
                "conformance does not take postgres:// (cargo xtask test runs the suite on PostgreSQL)",
            );
        }
    };
    Ok(if rows.iter().any(|r| r.result.is_err()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
