#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod error;
mod schema;
mod writer;

use std::collections::HashSet;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, Weak};

use async_trait::async_trait;
use cairn::tail::{SeqWatch, tail};
use cairn::{
    AppendOnlyStore, AppendOutcome, Bytes, Capabilities, Change, ChangeId, ChangeMeta,
    ChangeStream, DocId, Error, Fingerprint, FingerprintBuckets, Head, IdRange, Limits,
    RangeSummary, Result, ScanItem, StoreId,
};
use redb::{
    Database, ReadOnlyDatabase, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
};
use tokio::sync::oneshot;

use crate::error::{corrupt, from_panic, map};
use crate::schema::{CHANGES, DOCS, PAYLOADS, SEQS};
use crate::writer::{Counters, Job, WriterHandle};

pub use crate::schema::ConsistencyReport;

/// When an acknowledged append reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit is flushed (fsync) before `append` returns: an
    /// acknowledged change survives a process crash or power loss. The
    /// default.
    #[default]
    Immediate,
    /// Commits are not flushed; a crash may lose any number of recent
    /// acknowledged appends (the file stays consistent and opens at an
    /// earlier commit). Closing the store cleanly flushes. For tests and
    /// caches only.
    ///
    /// Each open of a non-durable store reports a new [`Head::epoch`], so
    /// that sync cursors saved before a crash (which may have lost appends
    /// whose sequence numbers are then reused) are not trusted after it.
    None,
}

/// How to open a [`RedbStore`].
///
/// ```
/// use cairn_redb::{Durability, RedbOptions};
/// let opts = RedbOptions::default().durability(Durability::None);
/// assert_eq!(opts.durability, Durability::None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedbOptions {
    /// When appends reach the disk. Default [`Durability::Immediate`].
    pub durability: Durability,
    /// Limits enforced on each append. Default [`Limits::DEFAULT`].
    pub limits: Limits,
    /// Verify the checksum of every page when opening (reads the whole
    /// file). Off by default: a cleanly closed file is trusted, and redb
    /// checks and repairs a file after a crash anyway. Turn it on for files
    /// that may have been damaged outside redb.
    pub verify_on_open: bool,
    /// redb's page cache in bytes; `None` keeps redb's default (1 GiB, used
    /// as needed).
    pub cache_size: Option<usize>,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            durability: Durability::Immediate,
            limits: Limits::DEFAULT,
            verify_on_open: false,
            cache_size: None,
        }
    }
}

impl RedbOptions {
    /// Set [`durability`](RedbOptions::durability).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Set [`limits`](RedbOptions::limits).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Set [`verify_on_open`](RedbOptions::verify_on_open).
    pub fn verify_on_open(mut self, verify: bool) -> Self {
        self.verify_on_open = verify;
        self
    }

    /// Set [`cache_size`](RedbOptions::cache_size).
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.cache_size = Some(bytes);
        self
    }
}

/// Counters of a [`RedbStore`] since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RedbStats {
    /// Write transactions committed (one per group of appends that stored
    /// something).
    pub commits: u64,
    /// Append batches that reached the writer (non-empty after checks).
    pub batches: u64,
    /// New changes stored.
    pub changes: u64,
    /// Most batches merged into one commit.
    pub largest_group: u64,
    /// Commits that failed (every caller in the group got the error).
    pub failed_commits: u64,
}

/// A durable [`AppendOnlyStore`] on one redb file; cheap to clone (clones
/// share the file).
///
/// Appends go to a dedicated writer thread that merges concurrent appends
/// into one transaction (group commit); reads run on tokio's blocking pool.
/// Dropping the last clone stops the writer thread and closes the file, so
/// the same path can be opened again right after.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    store_id: StoreId,
    path: PathBuf,
    epoch: u64,
    limits: Limits,
    durability: Durability,
    /// Declared before `writer`: fields drop in order, so this handle goes
    /// first and the writer thread, joined next, drops the last one (and so
    /// closes the file) under `catch_unwind`.
    db: Db,
    /// Joined on drop; `None` when opened read-only.
    writer: Option<WriterHandle>,
    watch: Arc<SeqWatch>,
    counters: Arc<Counters>,
    /// Fingerprints per id bucket of everything committed, kept by the
    /// writer (checkpointed to the `buckets` table).
    buckets: Arc<RwLock<FingerprintBuckets>>,
    /// Coded symbols for reconciliation, folded in from `scan` on demand.
    riblt: cairn::riblt::LazyEncoder,
}

/// The open database: shared with the writer thread, or read-only.
enum Db {
    Writable(Arc<Database>),
    ReadOnly(ReadOnlyDatabase),
}

impl Db {
    fn begin_read(&self) -> std::result::Result<ReadTransaction, redb::TransactionError> {
        match self {
            Db::Writable(db) => db.begin_read(),
            Db::ReadOnly(db) => db.begin_read(),
        }
    }
}

/// Where a store's database lives.
enum Storage {
    File(PathBuf),
    Backend(Box<dyn redb::StorageBackend>),
}

/// A boxed backend is a backend (redb takes `impl StorageBackend`); every
/// method forwards, the locks too.
#[derive(Debug)]
struct BoxedBackend(Box<dyn redb::StorageBackend>);

type Io<T> = std::result::Result<T, std::io::Error>;
type Locked<T> = std::result::Result<T, redb::BackendError>;
type Bound = std::ops::Bound<u64>;

impl redb::StorageBackend for BoxedBackend {
    fn len(&self) -> Io<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Io<()> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Io<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Io<()> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Io<()> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Io<()> {
        self.0.close()
    }
    fn try_lock_range(&self, start: Bound, end: Bound) -> Locked<bool> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: Bound, end: Bound) -> Locked<bool> {
        self.0.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound, end: Bound) -> Locked<()> {
        self.0.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound, end: Bound) -> Locked<()> {
        self.0.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound, end: Bound) -> Locked<()> {
        self.0.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound, end: Bound) -> Locked<bool> {
        self.0.query_lock_range(start, end)
    }
}

/// Refuse a missing or empty file before redb sees it (redb would create
/// a missing file, and treats an empty one as a new database).
fn existing_file(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound {
            what: format!("redb file {}", path.display()),
        }),
        Err(e) => Err(Error::Io(e)),
        Ok(m) if m.is_dir() => Err(corrupt(format!(
            "{} is a directory, not a store file",
            path.display()
        ))),
        Ok(m) if m.len() == 0 => Err(corrupt(format!(
            "{} is empty (0 bytes): not a Cairn store",
            path.display()
        ))),
        Ok(_) => Ok(()),
    }
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("store_id", &self.inner.store_id)
            .field("path", &self.inner.path)
            .field("epoch", &self.inner.epoch)
            .field("seq", &self.inner.watch.current())
            .field("durability", &self.inner.durability)
            .finish()
    }
}

impl RedbStore {
    /// Open the store at `path`, creating it if the file does not exist (or
    /// is empty), with durable appends.
    ///
    /// Fails with [`Error::StoreMismatch`] if the file holds another store,
    /// [`Error::UnsupportedVersion`] if it has another schema version (older
    /// files hold format v1 changes, which cannot be converted), and
    /// [`Error::Corrupt`] if it is not a Cairn store or is damaged.
    pub async fn open(path: impl AsRef<Path>, store_id: StoreId) -> Result<Self> {
        Self::open_with(path, store_id, RedbOptions::default()).await
    }

    /// Like [`open`](RedbStore::open), with appends that are not flushed to
    /// disk ([`Durability::None`]): for tests and caches.
    pub async fn open_non_durable(path: impl AsRef<Path>, store_id: StoreId) -> Result<Self> {
        Self::open_with(
            path,
            store_id,
            RedbOptions::default().durability(Durability::None),
        )
        .await
    }

    /// Open with explicit [`RedbOptions`].
    pub async fn open_with(
        path: impl AsRef<Path>,
        store_id: StoreId,
        options: RedbOptions,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        run_blocking(move || Self::open_blocking(path, store_id, options)).await
    }

    /// Open an existing store for reading only, with the store id the file
    /// records: nothing is ever written to the file, and
    /// [`append`](AppendOnlyStore::append) fails with
    /// [`Error::Unsupported`].
    ///
    /// Fails with [`Error::NotFound`] if the file does not exist,
    /// [`Error::Corrupt`] if it is empty, not a Cairn store, damaged, of
    /// another schema version, or was not closed cleanly (the repair that
    /// needs is a write; open it with [`open_existing`] once), and
    /// [`Error::Backend`] if another process has it open for writing.
    ///
    /// [`open_existing`]: RedbStore::open_existing
    pub async fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        run_blocking(move || {
            catch_unwind(AssertUnwindSafe(|| Self::open_read_only_inner(path)))
                .unwrap_or_else(|p| Err(from_panic(p)))
        })
        .await
    }

    /// Open an existing store for reading and appending, with the store id
    /// the file records; never creates a file. Fails like
    /// [`open_read_only`](RedbStore::open_read_only) on a missing, empty or
    /// foreign file (a file that was not closed cleanly is repaired).
    pub async fn open_existing(path: impl AsRef<Path>, options: RedbOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        run_blocking(move || {
            catch_unwind(AssertUnwindSafe(|| {
                existing_file(&path)?;
                Self::open_inner(path.clone(), None, options)
            }))
            .unwrap_or_else(|p| Err(from_panic(p)))
        })
        .await
    }

    fn open_read_only_inner(path: PathBuf) -> Result<Self> {
        existing_file(&path)?;
        let db = Database::builder()
            .open_read_only(&path)
            .map_err(|e| match e {
                redb::DatabaseError::RepairAborted => corrupt(format!(
                    "{} was not closed cleanly and needs a repair, which a read-only open does not do; open it for writing once",
                    path.display()
                )),
                e => map(e),
            })?;
        let rtx = db.begin_read().map_err(map)?;
        let found = schema::read_existing(&rtx)?.ok_or_else(|| {
            corrupt(format!(
                "{} is an empty redb database: not a Cairn store",
                path.display()
            ))
        })?;
        let loaded = schema::load_buckets(&rtx, found.opened.head)?;
        drop(rtx);
        Ok(RedbStore {
            inner: Arc::new(Inner {
                store_id: found.store_id,
                path,
                epoch: found.opened.epoch,
                limits: Limits::DEFAULT,
                durability: Durability::Immediate,
                db: Db::ReadOnly(db),
                writer: None,
                watch: Arc::new(SeqWatch::new(found.opened.head)),
                counters: Arc::new(Counters::default()),
                buckets: Arc::new(RwLock::new(loaded.buckets)),
                riblt: cairn::riblt::LazyEncoder::default(),
            }),
        })
    }

    /// Whether this store was opened with
    /// [`open_read_only`](RedbStore::open_read_only).
    pub fn is_read_only(&self) -> bool {
        self.inner.writer.is_none()
    }

    /// Open synchronously (blocks the calling thread on file I/O). Prefer
    /// [`open_with`](RedbStore::open_with) inside an async runtime.
    pub fn open_blocking(
        path: impl AsRef<Path>,
        store_id: StoreId,
        options: RedbOptions,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        // redb may panic on a file damaged outside redb (unless
        // `verify_on_open`); report that as corrupt data.
        catch_unwind(AssertUnwindSafe(|| {
            Self::open_inner(path.clone(), Some(store_id), options)
        }))
        .unwrap_or_else(|p| Err(from_panic(p)))
    }

    /// Open the store (creating it if the storage is empty) on a custom
    /// redb [`StorageBackend`](redb::StorageBackend) instead of a file: for
    /// tests that inject I/O failures (the fuzz target `store_model` wraps
    /// [`redb::backends::InMemoryBackend`] so), or storage redb has no
    /// backend for. [`path`](RedbStore::path) is empty for such a store.
    ///
    /// The backend's I/O runs on tokio's blocking pool, like
    /// [`open_with`](RedbStore::open_with); fails like
    /// [`open`](RedbStore::open).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use cairn::{AppendOnlyStore, StoreId};
    /// use cairn_redb::{RedbOptions, RedbStore};
    /// let backend = redb::backends::InMemoryBackend::new();
    /// let store = RedbStore::open_with_backend(
    ///     backend,
    ///     StoreId::new("acme/contacts").unwrap(),
    ///     RedbOptions::default(),
    /// )
    /// .await
    /// .unwrap();
    /// assert_eq!(store.head().await.unwrap().seq, 0);
    /// assert!(store.path().as_os_str().is_empty());
    /// # });
    /// ```
    pub async fn open_with_backend(
        backend: impl redb::StorageBackend,
        store_id: StoreId,
        options: RedbOptions,
    ) -> Result<Self> {
        run_blocking(move || Self::open_blocking_with_backend(backend, store_id, options)).await
    }

    /// Like [`open_with_backend`](RedbStore::open_with_backend), on the
    /// calling thread (blocks it on the backend's I/O).
    pub fn open_blocking_with_backend(
        backend: impl redb::StorageBackend,
        store_id: StoreId,
        options: RedbOptions,
    ) -> Result<Self> {
        catch_unwind(AssertUnwindSafe(|| {
            Self::open_on(Storage::Backend(Box::new(backend)), Some(store_id), options)
        }))
        .unwrap_or_else(|p| Err(from_panic(p)))
    }

    /// Open (creating the file and the store when `store_id` is given) or,
    /// with `store_id == None`, open an existing store with the id it
    /// records.
    fn open_inner(path: PathBuf, store_id: Option<StoreId>, options: RedbOptions) -> Result<Self> {
        Self::open_on(Storage::File(path), store_id, options)
    }

    fn open_on(storage: Storage, store_id: Option<StoreId>, options: RedbOptions) -> Result<Self> {
        let mut builder = Database::builder();
        builder.set_check_integrity_on_open(options.verify_on_open);
        if let Some(bytes) = options.cache_size {
            builder.set_cache_size(bytes);
        }
        let create = |builder: &redb::Builder, storage: Storage| match storage {
            Storage::File(path) => builder.create(path),
            Storage::Backend(backend) => builder.create_with_backend(BoxedBackend(backend)),
        };
        let path = match &storage {
            Storage::File(path) => path.clone(),
            Storage::Backend(_) => PathBuf::new(),
        };
        let (db, store_id, opened) = match store_id {
            Some(store_id) => {
                let db = Arc::new(create(&builder, storage).map_err(map)?);
                let opened = schema::open_or_init(&db, &store_id)?;
                (db, store_id, opened)
            }
            None => {
                let db = Arc::new(match storage {
                    Storage::File(path) => builder.open(path).map_err(map)?,
                    backend => create(&builder, backend).map_err(map)?,
                });
                let found =
                    schema::read_existing(&db.begin_read().map_err(map)?)?.ok_or_else(|| {
                        corrupt(format!(
                            "{} is an empty redb database: not a Cairn store",
                            path.display()
                        ))
                    })?;
                (db, found.store_id, found.opened)
            }
        };
        let loaded = schema::load_buckets(&db.begin_read().map_err(map)?, opened.head)?;
        let buckets = Arc::new(RwLock::new(loaded.buckets));
        let watch = Arc::new(SeqWatch::new(opened.head));
        let counters = Arc::new(Counters::default());
        let writer = WriterHandle::spawn(
            db.clone(),
            match options.durability {
                Durability::Immediate => redb::Durability::Immediate,
                Durability::None => redb::Durability::None,
            },
            opened.head,
            watch.clone(),
            counters.clone(),
            buckets.clone(),
            (loaded.dirty, loaded.replayed),
        )?;
        // A non-durable store may come back from a crash without appends it
        // acknowledged, then give their sequence numbers to other changes:
        // a cursor saved against it (same epoch, seq not ahead of the head)
        // would skip those. So every open of a non-durable store is a new
        // epoch (in memory only), and saved cursors start over.
        let epoch = match options.durability {
            Durability::Immediate => opened.epoch,
            Durability::None => cairn::random_u64(),
        };
        Ok(RedbStore {
            inner: Arc::new(Inner {
                store_id,
                path,
                epoch,
                limits: options.limits,
                durability: options.durability,
                writer: Some(writer),
                db: Db::Writable(db),
                watch,
                counters,
                buckets,
                riblt: cairn::riblt::LazyEncoder::default(),
            }),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Counters since the store was opened.
    pub fn stats(&self) -> RedbStats {
        let c = &self.inner.counters;
        RedbStats {
            commits: c.commits.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            changes: c.changes.load(Ordering::Relaxed),
            largest_group: c.largest_group.load(Ordering::Relaxed),
            failed_commits: c.failed_commits.load(Ordering::Relaxed),
        }
    }

    /// Check every invariant of the file in one read transaction: each
    /// sequence number `1..=head` points to a stored change that records the
    /// same sequence number, every change's id matches its header and its
    /// payload matches its hash, the doc index holds exactly one entry per
    /// change, and every table's length equals the head sequence. Reads the
    /// whole store. Returns [`Error::Corrupt`] describing the first problem.
    pub async fn check_consistency(&self) -> Result<ConsistencyReport> {
        self.read(|inner| {
            let (report, want) = schema::check(&inner.read_txn()?)?;
            let live = inner.buckets.read().unwrap_or_else(|e| e.into_inner());
            if *live != want {
                return Err(corrupt(
                    "in-memory bucket fingerprints disagree with the stored ids",
                ));
            }
            Ok(report)
        })
        .await
    }

    /// Run `f` against the shared state on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        run_blocking(move || f(&inner)).await
    }
}

/// Run blocking work on tokio's blocking pool when inside a runtime, inline
/// otherwise. A panic (redb on a damaged file) becomes [`Error::Corrupt`].
async fn run_blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => match handle.spawn_blocking(f).await {
            Ok(r) => r,
            Err(e) => match e.try_into_panic() {
                Ok(p) => Err(from_panic(p)),
                Err(_) => Err(Error::Cancelled),
            },
        },
        Err(_) => catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(from_panic(p))),
    }
}

/// A read-only table keyed by change id.
type IdTable = ReadOnlyTable<&'static [u8; 32], &'static [u8]>;

impl Inner {
    fn read_txn(&self) -> Result<ReadTransaction> {
        self.db.begin_read().map_err(map)
    }

    /// Up to `limit` changes after `after`, in arrival order.
    fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        let rtx = self.read_txn()?;
        let seqs = rtx.open_table(SEQS).map_err(map)?;
        let changes = rtx.open_table(CHANGES).map_err(map)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for entry in seqs
            .range(after.saturating_add(1)..)
            .map_err(map)?
            .take(limit)
        {
            let (k, v) = entry.map_err(map)?;
            let meta = get_meta(&changes, v.value())?
                .ok_or_else(|| corrupt(format!("seq {} points to a missing change", k.value())))?;
            out.push(ScanItem {
                seq: k.value(),
                meta,
            });
        }
        Ok(out)
    }
}

/// The metadata stored under `id`, if any.
fn get_meta(changes: &IdTable, id: &[u8; 32]) -> Result<Option<ChangeMeta>> {
    match changes.get(id).map_err(map)? {
        None => Ok(None),
        Some(v) => Ok(Some(schema::decode_change_value(id, v.value())?.1)),
    }
}

/// The full change stored under `id`, if any, with its payload verified.
fn get_change(
    changes: &IdTable,
    payloads: &ReadOnlyTable<u64, &'static [u8]>,
    id: &[u8; 32],
) -> Result<Option<Change>> {
    let Some(value) = changes.get(id).map_err(map)? else {
        return Ok(None);
    };
    let (seq, meta) = schema::decode_change_value(id, value.value())?;
    let payload = schema::verified_payload(payloads, seq, &meta)?;
    Ok(Some(Change {
        payload: Bytes::copy_from_slice(payload.value()),
        meta,
    }))
}

/// Batches above this many payload bytes are checked on the blocking pool,
/// so hashing them does not stall the executor.
const INLINE_CHECK_BYTES: usize = 256 << 10;

#[async_trait]
impl AppendOnlyStore for RedbStore {
    fn store_id(&self) -> &StoreId {
        &self.inner.store_id
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            native_find_new: true,
            native_doc_index: true,
            native_reconciliation: true,
            durable: self.inner.durability == Durability::Immediate,
            remote: false,
        }
    }

    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        let Some(writer) = &self.inner.writer else {
            return Err(Error::Unsupported {
                store: "redb (opened read-only)",
                what: "append",
            });
        };
        let limits = self.inner.limits;
        let size: usize = changes.iter().map(|c| c.payload.len()).sum();
        let (batch, repeats) = if size > INLINE_CHECK_BYTES {
            run_blocking(move || cairn::prepare_batch(changes, &limits)).await?
        } else {
            cairn::prepare_batch(changes, &limits)?
        };
        if batch.is_empty() {
            return Ok(AppendOutcome {
                new: Vec::new(),
                duplicates: repeats,
            });
        }
        let (reply, answer) = oneshot::channel();
        writer.send(Job {
            batch,
            repeats,
            reply,
        })?;
        answer.await.map_err(|_| Error::Closed)?
    }

    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        let ids = ids.to_vec();
        self.read(move |inner| {
            let rtx = inner.read_txn()?;
            let changes = rtx.open_table(CHANGES).map_err(map)?;
            let payloads = rtx.open_table(PAYLOADS).map_err(map)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(c) = get_change(&changes, &payloads, id.as_bytes())? {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        let ids = ids.to_vec();
        self.read(move |inner| {
            let rtx = inner.read_txn()?;
            let changes = rtx.open_table(CHANGES).map_err(map)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(m) = get_meta(&changes, id.as_bytes())? {
                    out.push(m);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        let ids = ids.to_vec();
        self.read(move |inner| {
            let rtx = inner.read_txn()?;
            let changes = rtx.open_table(CHANGES).map_err(map)?;
            ids.iter()
                .map(|id| Ok(changes.get(id.as_bytes()).map_err(map)?.is_some()))
                .collect()
        })
        .await
    }

    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |inner| inner.scan(after, limit)).await
    }

    async fn head(&self) -> Result<Head> {
        Ok(Head {
            epoch: self.inner.epoch,
            seq: self.inner.watch.current(),
        })
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        // Register first, then read the position from the receiver itself,
        // so no append slips between "now" and the subscription.
        let rx = self.inner.watch.receiver();
        let after = *rx.borrow();
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        Ok(tail(rx, after, 256, move |after, limit| {
            let inner = weak.upgrade();
            async move {
                match inner {
                    None => Ok(None),
                    Some(inner) => run_blocking(move || inner.scan(after, limit))
                        .await
                        .map(Some),
                }
            }
        }))
    }

    async fn find_new_changes(&self, have: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        let have = have.to_vec();
        self.read(move |inner| {
            // Hashed on the blocking pool: `have` may hold a whole store's ids.
            let have: HashSet<ChangeId> = have.into_iter().collect();
            let rtx = inner.read_txn()?;
            let seqs = rtx.open_table(SEQS).map_err(map)?;
            let changes = rtx.open_table(CHANGES).map_err(map)?;
            let mut out = Vec::new();
            for entry in seqs.range(1u64..).map_err(map)? {
                let (k, v) = entry.map_err(map)?;
                let id = v.value();
                if have.contains(&ChangeId::from_bytes(*id)) {
                    continue;
                }
                let meta = get_meta(&changes, id)?.ok_or_else(|| {
                    corrupt(format!("seq {} points to a missing change", k.value()))
                })?;
                out.push(meta);
            }
            Ok(out)
        })
        .await
    }

    async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
        self.read(|inner| {
            let rtx = inner.read_txn()?;
            let changes = rtx.open_table(CHANGES).map_err(map)?;
            changes
                .iter()
                .map_err(map)?
                .map(|e| Ok(ChangeId::from_bytes(*e.map_err(map)?.0.value())))
                .collect()
        })
        .await
    }

    async fn changes_for_doc(
        &self,
        doc: &DocId,
        from_last_snapshot: bool,
    ) -> Result<Vec<ChangeMeta>> {
        let doc = doc.clone();
        // The plan is CPU work over every change of the document: it runs on
        // the blocking pool with the read, not on the executor.
        self.read(move |inner| {
            let rtx = inner.read_txn()?;
            let docs = rtx.open_table(DOCS).map_err(map)?;
            let changes = rtx.open_table(CHANGES).map_err(map)?;
            let mut metas = Vec::new();
            let d = doc.as_str();
            for entry in docs.range((d, 0u64)..=(d, u64::MAX)).map_err(map)? {
                let (_, v) = entry.map_err(map)?;
                let meta = get_meta(&changes, v.value())?.ok_or_else(|| {
                    corrupt(format!("doc index of {d} points to a missing change"))
                })?;
                metas.push(meta);
            }
            // Plan with the read transaction closed.
            drop((docs, changes, rtx));
            Ok(cairn::graph::plan_doc_load(metas, from_last_snapshot))
        })
        .await
    }

    async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        let range = *range;
        self.read(move |inner| {
            // On bucket boundaries: merge the maintained fingerprints.
            let maintained = inner
                .buckets
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .summary(&range);
            if let Some(summary) = maintained {
                return Ok(summary);
            }
            let mut fp = Fingerprint::default();
            for_ids_in_range(inner, &range, usize::MAX, |id| fp.add(&id))?;
            Ok(fp.summary())
        })
        .await
    }

    async fn coded_symbols(
        &self,
        request: &cairn::riblt::SymbolRequest,
    ) -> Result<cairn::riblt::SymbolReply> {
        self.inner.riblt.answer(self, request).await
    }

    async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        let range = *range;
        self.read(move |inner| {
            let mut out = Vec::new();
            for_ids_in_range(inner, &range, limit, |id| out.push(id))?;
            Ok(out)
        })
        .await
    }
}

/// Visit up to `limit` held ids in `range`, ascending, straight from the
/// id-ordered `changes` table.
fn for_ids_in_range(
    inner: &Inner,
    range: &IdRange,
    limit: usize,
    mut visit: impl FnMut(ChangeId),
) -> Result<()> {
    if limit == 0 || range.end.is_some_and(|end| end <= range.start) {
        return Ok(());
    }
    let rtx = inner.read_txn()?;
    let changes = rtx.open_table(CHANGES).map_err(map)?;
    let start: &[u8; 32] = range.start.as_bytes();
    let iter = match &range.end {
        Some(end) => changes
            .range::<&[u8; 32]>(start..end.as_bytes())
            .map_err(map)?,
        None => changes.range::<&[u8; 32]>(start..).map_err(map)?,
    };
    for (n, entry) in iter.enumerate() {
        if n >= limit {
            break;
        }
        visit(ChangeId::from_bytes(*entry.map_err(map)?.0.value()));
    }
    Ok(())
}
