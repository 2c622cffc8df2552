//! Store wrappers: a swappable cell (for crash-restart), a withholding
//! store (hostile), and a deliberately broken store (to prove the simulator
//! catches a bug).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cairn::{
    AppendOnlyStore, AppendOutcome, Capabilities, Change, ChangeId, ChangeMeta, ChangeStream,
    Error, Head, IdRange, RangeSummary, Result, ScanItem, StoreId,
};
use futures::executor::block_on;

use crate::net::lock;

/// The store a peer currently runs (swapped on crash-restart).
pub(crate) type Cell = Arc<Mutex<Arc<dyn AppendOnlyStore>>>;

/// A peer's own store as the sync engine sees it: every call runs to
/// completion before the simulator goes on (redb's writer thread included),
/// so the schedule depends on the seed only.
#[derive(Debug)]
pub(crate) struct Local {
    pub(crate) cell: Cell,
    pub(crate) store_id: StoreId,
}

impl Local {
    fn get(&self) -> Arc<dyn AppendOnlyStore> {
        lock(&self.cell).clone()
    }
}

#[async_trait]
impl AppendOnlyStore for Local {
    fn store_id(&self) -> &StoreId {
        &self.store_id
    }
    fn capabilities(&self) -> Capabilities {
        self.get().capabilities()
    }
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        block_on(self.get().append(changes))
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        block_on(self.get().get_changes(ids))
    }
    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        block_on(self.get().get_metas(ids))
    }
    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        block_on(self.get().has_changes(ids))
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        block_on(self.get().scan(after, limit))
    }
    async fn head(&self) -> Result<Head> {
        block_on(self.get().head())
    }
    async fn subscribe(&self) -> Result<ChangeStream> {
        block_on(self.get().subscribe())
    }
    async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
        block_on(self.get().all_change_ids())
    }
    async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        block_on(self.get().range_summary(range))
    }
    async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        block_on(self.get().ids_in_range(range, limit))
    }
    async fn coded_symbols(
        &self,
        request: &cairn::riblt::SymbolRequest,
    ) -> Result<cairn::riblt::SymbolReply> {
        block_on(self.get().coded_symbols(request))
    }
}

/// A hostile store: lists its changes but never serves them.
#[derive(Debug)]
pub(crate) struct Withhold(pub(crate) Arc<dyn AppendOnlyStore>);

#[async_trait]
impl AppendOnlyStore for Withhold {
    fn store_id(&self) -> &StoreId {
        self.0.store_id()
    }
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        self.0.append(changes).await
    }
    async fn get_changes(&self, _ids: &[ChangeId]) -> Result<Vec<Change>> {
        Err(Error::NotFound {
            what: "withheld".into(),
        })
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.0.scan(after, limit).await
    }
    async fn head(&self) -> Result<Head> {
        self.0.head().await
    }
    async fn subscribe(&self) -> Result<ChangeStream> {
        self.0.subscribe().await
    }
}

/// A deliberately broken store: every `n`th new change is silently not
/// stored, while `append` reports it stored.
#[derive(Debug)]
pub struct DropEveryNth {
    inner: Arc<dyn AppendOnlyStore>,
    n: u64,
    count: AtomicU64,
}

impl DropEveryNth {
    /// Wrap `inner`, dropping every `n`th new change (`n` at least 1).
    pub fn new(inner: Arc<dyn AppendOnlyStore>, n: u64) -> Self {
        DropEveryNth {
            inner,
            n: n.max(1),
            count: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl AppendOnlyStore for DropEveryNth {
    fn store_id(&self) -> &StoreId {
        self.inner.store_id()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        let ids: Vec<ChangeId> = changes.iter().map(Change::id).collect();
        let held = self.inner.has_changes(&ids).await?;
        let mut keep = Vec::with_capacity(changes.len());
        let mut dropped = Vec::new();
        for (c, h) in changes.into_iter().zip(held) {
            if !h {
                let k = self.count.fetch_add(1, Ordering::Relaxed) + 1;
                if k.is_multiple_of(self.n) {
                    dropped.push(c.id());
                    continue;
                }
            }
            keep.push(c);
        }
        let mut out = self.inner.append(keep).await?;
        out.new.extend(dropped);
        Ok(out)
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        self.inner.get_changes(ids).await
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
