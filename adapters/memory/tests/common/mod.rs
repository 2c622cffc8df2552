//! Test stores shared by this crate's test binaries.

use async_trait::async_trait;
use cairn::{
    AppendOnlyStore, AppendOutcome, Change, ChangeId, ChangeStream, Head, Result, ScanItem, StoreId,
};
use cairn_memory::MemoryStore;

/// Only the required methods; everything else is the trait's default.
#[derive(Debug)]
pub(crate) struct RequiredOnly(pub(crate) MemoryStore);

#[async_trait]
impl AppendOnlyStore for RequiredOnly {
    fn store_id(&self) -> &StoreId {
        self.0.store_id()
    }
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        self.0.append(changes).await
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        self.0.get_changes(ids).await
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
