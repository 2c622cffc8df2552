//! The whole conformance suite against `MemoryStore`, directly and behind
//! `Box<dyn AppendOnlyStore>`.

use std::sync::Arc;

use cairn::{DynAppendOnlyStore, StoreId};
use cairn_conformance::StoreFactory;
use cairn_memory::MemoryStore;

/// Plain `MemoryStore`s.
struct Memory;

#[async_trait::async_trait]
impl StoreFactory for Memory {
    fn name(&self) -> String {
        "memory".into()
    }
    async fn create(&self, id: &StoreId) -> cairn::Result<Arc<DynAppendOnlyStore>> {
        Ok(Arc::new(MemoryStore::new(id.clone())))
    }
}

/// `MemoryStore`s behind a `Box<dyn AppendOnlyStore>` (forwarding impls).
struct BoxedMemory;

#[async_trait::async_trait]
impl StoreFactory for BoxedMemory {
    fn name(&self) -> String {
        "memory (boxed dyn)".into()
    }
    async fn create(&self, id: &StoreId) -> cairn::Result<Arc<DynAppendOnlyStore>> {
        let boxed: Box<DynAppendOnlyStore> = Box::new(MemoryStore::new(id.clone()));
        Ok(Arc::new(boxed))
    }
}

cairn_conformance::conformance_tests!(Memory);

mod boxed {
    use super::*;
    cairn_conformance::conformance_tests!(BoxedMemory);
}

#[tokio::test]
async fn run_suite_prints_a_table_and_everything_passes() {
    let rows = cairn_conformance::run_suite(&Memory, None).await;
    assert_eq!(rows.len(), cairn_conformance::all_cases().len());
    let failed: Vec<_> = rows.iter().filter(|r| r.result.is_err()).collect();
    assert!(failed.is_empty(), "failed: {failed:?}");
}
