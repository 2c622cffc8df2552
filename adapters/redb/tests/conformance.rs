//! The shared conformance suite against `RedbStore`, durable, one file per store.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use cairn::{DynAppendOnlyStore, Result, StoreId};
use cairn_conformance::StoreFactory;
use cairn_redb::RedbStore;
use tempfile::TempDir;

/// Makes stores in one temporary directory, removed when the factory drops.
struct RedbFactory {
    dir: TempDir,
    next: AtomicU64,
}

impl RedbFactory {
    fn new() -> Self {
        RedbFactory {
            dir: tempfile::tempdir().expect("temporary directory"),
            next: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl StoreFactory for RedbFactory {
    fn name(&self) -> String {
        "redb".into()
    }

    async fn create(&self, store_id: &StoreId) -> Result<Arc<DynAppendOnlyStore>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("fresh-{n}.redb"));
        Ok(Arc::new(RedbStore::open(path, store_id.clone()).await?))
    }

    fn supports_reopen(&self) -> bool {
        true
    }

    async fn open_named(&self, store_id: &StoreId, name: &str) -> Result<Arc<DynAppendOnlyStore>> {
        let path = self.dir.path().join(format!("{name}.redb"));
        Ok(Arc::new(RedbStore::open(path, store_id.clone()).await?))
    }
}

cairn_conformance::conformance_tests!(RedbFactory::new());
