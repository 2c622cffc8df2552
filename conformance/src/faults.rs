//! Store wrappers that inject failures or record how they were used.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use cairn::{
    AppendOnlyStore, AppendOutcome, Capabilities, Change, ChangeId, ChangeMeta, ChangeStream,
    DynAppendOnlyStore, Error, Head, Result, ScanItem, StoreId,
};

/// Which calls count towards [`FailingStore`]'s budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOn {
    /// `append`.
    Append,
    /// `get_changes`.
    GetChanges,
    /// Every call.
    Any,
}

/// Wraps a store and fails every counted call after the first `budget`
/// succeed, like a connection that drops or a disk that fills up. Also
/// records the largest `get_changes` request it saw.
#[derive(Debug)]
pub struct FailingStore {
    inner: Arc<DynAppendOnlyStore>,
    on: FailOn,
    budget: AtomicU64,
    armed: AtomicBool,
    /// Most ids asked in one `get_changes` call.
    pub max_get_ids: AtomicU64,
    /// Most payload bytes returned by one `get_changes` call.
    pub max_get_bytes: AtomicU64,
    /// Calls to `get_changes`.
    pub get_calls: AtomicU64,
    /// A change served with one payload bit flipped (a corrupt transfer).
    tampered: Option<ChangeId>,
}

impl FailingStore {
    /// Fail calls of kind `on` after `budget` of them succeeded.
    pub fn new(inner: Arc<DynAppendOnlyStore>, on: FailOn, budget: u64) -> Self {
        FailingStore {
            inner,
            on,
            budget: AtomicU64::new(budget),
            armed: AtomicBool::new(true),
            max_get_ids: AtomicU64::new(0),
            max_get_bytes: AtomicU64::new(0),
            get_calls: AtomicU64::new(0),
            tampered: None,
        }
    }

    /// Serve `id` from `get_changes` with its first payload bit flipped.
    pub fn tamper(mut self, id: ChangeId) -> Self {
        self.tampered = Some(id);
        self
    }

    /// A wrapper that never fails, only records.
    pub fn recording(inner: Arc<DynAppendOnlyStore>) -> Self {
        let s = Self::new(inner, FailOn::Any, 0);
        s.disarm();
        s
    }

    /// Stop injecting failures.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    fn gate(&self, kind: FailOn) -> Result<()> {
        if !self.armed.load(Ordering::SeqCst) || (self.on != FailOn::Any && self.on != kind) {
            return Ok(());
        }
        let left = self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1));
        match left {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::backend(
                "failing-store",
                true,
                std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected failure"),
            )),
        }
    }
}

#[async_trait]
impl AppendOnlyStore for FailingStore {
    fn store_id(&self) -> &StoreId {
        self.inner.store_id()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        self.gate(FailOn::Append)?;
        self.inner.append(changes).await
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        self.gate(FailOn::GetChanges)?;
        self.get_calls.fetch_add(1, Ordering::SeqCst);
        self.max_get_ids
            .fetch_max(ids.len() as u64, Ordering::SeqCst);
        let mut out = self.inner.get_changes(ids).await?;
        for c in out.iter_mut().filter(|c| Some(c.id()) == self.tampered) {
            let mut p = c.payload.to_vec();
            if let Some(b) = p.first_mut() {
                *b ^= 1;
            }
            c.payload = p.into();
        }
        let bytes: u64 = out.iter().map(|c| c.payload.len() as u64).sum();
        self.max_get_bytes.fetch_max(bytes, Ordering::SeqCst);
        Ok(out)
    }
    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        self.gate(FailOn::Any)?;
        self.inner.get_metas(ids).await
    }
    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        self.gate(FailOn::Any)?;
        self.inner.has_changes(ids).await
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.gate(FailOn::Any)?;
        self.inner.scan(after, limit).await
    }
    async fn head(&self) -> Result<Head> {
        self.gate(FailOn::Any)?;
        self.inner.head().await
    }
    async fn subscribe(&self) -> Result<ChangeStream> {
        self.inner.subscribe().await
    }
}

/// Wraps a store and answers its first `n` appends with a retryable
/// backend error (a server that is busy for a moment), or never answers
/// them at all ([`FlakyAppends::silent`]), then behaves.
#[derive(Debug)]
pub struct FlakyAppends {
    inner: Arc<DynAppendOnlyStore>,
    left: AtomicU64,
    silent: bool,
    /// Appends refused so far.
    pub refused: AtomicU64,
}

impl FlakyAppends {
    /// Refuse the first `n` appends to `inner`.
    pub fn new(inner: Arc<DynAppendOnlyStore>, n: u64) -> Self {
        FlakyAppends {
            inner,
            left: AtomicU64::new(n),
            silent: false,
            refused: AtomicU64::new(0),
        }
    }

    /// Never answer the first `n` appends to `inner` (they wait forever and
    /// store nothing), then behave.
    pub fn silent(inner: Arc<DynAppendOnlyStore>, n: u64) -> Self {
        FlakyAppends {
            silent: true,
            ..FlakyAppends::new(inner, n)
        }
    }
}

#[async_trait]
impl AppendOnlyStore for FlakyAppends {
    fn store_id(&self) -> &StoreId {
        self.inner.store_id()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        if self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.refused.fetch_add(1, Ordering::SeqCst);
            if self.silent {
                return std::future::pending().await;
            }
            return Err(Error::backend(
                "flaky",
                true,
                std::io::Error::other("busy for a moment; try again"),
            ));
        }
        self.inner.append(changes).await
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        self.inner.get_changes(ids).await
    }
    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        self.inner.get_metas(ids).await
    }
    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        self.inner.has_changes(ids).await
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.inner.scan(after, limit).await
    }
    async fn head(&self) -> Result<Head> {
        self.inner.head().await
    }
    async fn subscribe(&self) -> Result<ChangeStream> {
        self.inner.subscribe().await
    }
}
