//! How the suite gets stores to test.

use std::sync::Arc;

use async_trait::async_trait;
use cairn::{DynAppendOnlyStore, Error, Result, StoreId};

/// Makes stores for the suite. Implement it once per adapter.
///
/// ```
/// use std::sync::Arc;
/// use cairn::{DynAppendOnlyStore, StoreId};
/// use cairn_conformance::StoreFactory;
/// use cairn_memory::MemoryStore;
///
/// struct Memory;
///
/// #[async_trait::async_trait]
/// impl StoreFactory for Memory {
///     fn name(&self) -> String {
///         "memory".into()
///     }
///     async fn create(&self, store_id: &StoreId) -> cairn::Result<Arc<DynAppendOnlyStore>> {
///         Ok(Arc::new(MemoryStore::new(store_id.clone())))
///     }
/// }
/// ```
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// A short name for the suite's table ("memory", "redb", "quic+memory").
    fn name(&self) -> String;

    /// A fresh, empty store with this store id. Each call must return an
    /// independent store, even for the same store id (sync cases make
    /// several).
    async fn create(&self, store_id: &StoreId) -> Result<Arc<DynAppendOnlyStore>>;

    /// Whether [`open_named`](StoreFactory::open_named) is supported
    /// (durable stores). Durability cases are skipped (and reported as
    /// skipped) when it is not.
    fn supports_reopen(&self) -> bool {
        false
    }

    /// Open the durable store called `name`, creating it on first use. The
    /// suite drops every handle to a store before opening the same name
    /// again, and expects to find everything acknowledged before.
    async fn open_named(&self, store_id: &StoreId, name: &str) -> Result<Arc<DynAppendOnlyStore>> {
        let _ = (store_id, name);
        Err(Error::Unsupported {
            store: "factory",
            what: "reopen",
        })
    }
}

#[async_trait]
impl<F: StoreFactory + ?Sized> StoreFactory for Arc<F> {
    fn name(&self) -> String {
        (**self).name()
    }
    async fn create(&self, store_id: &StoreId) -> Result<Arc<DynAppendOnlyStore>> {
        (**self).create(store_id).await
    }
    fn supports_reopen(&self) -> bool {
        (**self).supports_reopen()
    }
    async fn open_named(&self, store_id: &StoreId, name: &str) -> Result<Arc<DynAppendOnlyStore>> {
        (**self).open_named(store_id, name).await
    }
}
