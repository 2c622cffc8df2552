//! The whole conformance suite against a store that implements only the
//! trait's required methods (`store_id`, `append`, `get_changes`, `scan`,
//! `head`, `subscribe`), by forwarding them to a `MemoryStore`: every other
//! method runs the trait's default, built on `scan`. So the defaults a new
//! backend starts with are held to the same semantics as every store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use async_trait::async_trait;
use cairn::{
    AppendOnlyStore, AppendOutcome, Change, ChangeId, ChangeStream, DynAppendOnlyStore, Head,
    Result, ScanItem, StoreId,
};
use cairn_conformance::StoreFactory;
use cairn_memory::MemoryStore;

/// Only the required methods; everything else is the trait's default.
#[derive(Debug)]
struct RequiredOnly(MemoryStore);

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

struct Defaults;

#[async_trait]
impl StoreFactory for Defaults {
    fn name(&self) -> String {
        "memory (required methods only; trait defaults)".into()
    }
    async fn create(&self, id: &StoreId) -> cairn::Result<Arc<DynAppendOnlyStore>> {
        Ok(Arc::new(RequiredOnly(MemoryStore::new(id.clone()))))
    }
}

cairn_conformance::conformance_tests!(Defaults);
