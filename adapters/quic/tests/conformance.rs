#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The shared conformance suite over QuicStore (memory cache) → QuicServer
//! (memory store).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn::{DynAppendOnlyStore, Keypair, Result, StoreId};
use cairn_conformance::StoreFactory;
use cairn_memory::MemoryStore;
use cairn_quic::*;

struct Factory {
    servers: Mutex<Vec<QuicServer>>,
}

impl Factory {
    fn new() -> Self {
        Factory {
            servers: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl StoreFactory for Factory {
    fn name(&self) -> String {
        "quic+memory".into()
    }

    async fn create(&self, store_id: &StoreId) -> Result<Arc<DynAppendOnlyStore>> {
        serve(
            &self.servers,
            store_id,
            Arc::new(MemoryStore::new(store_id.clone())),
            Arc::new(MemoryStore::new(store_id.clone())),
        )
        .await
    }
}

/// A server for `backing`, read-write for a fresh client key, and a connected
/// QuicStore caching in `cache`; the server is kept in `servers`.
async fn serve(
    servers: &Mutex<Vec<QuicServer>>,
    store_id: &StoreId,
    backing: Arc<DynAppendOnlyStore>,
    cache: Arc<DynAppendOnlyStore>,
) -> Result<Arc<DynAppendOnlyStore>> {
    let server_key = Keypair::generate();
    let client_key = Keypair::generate();
    let server = QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &server_key,
        Arc::new(Stores::new().with(backing)),
        Arc::new(Acl::new().allow(store_id, client_key.author(), Permission::ReadWrite)),
        ServerOptions::default(),
    )?;
    let store = QuicStore::new(
        cache,
        server.local_addr(),
        server.peer_id(),
        &client_key,
        QuicStoreOptions::default(),
    )?;
    store.wait_connected(Duration::from_secs(20)).await?;
    servers.lock().unwrap().push(server);
    Ok(Arc::new(store))
}

cairn_conformance::conformance_tests!(Factory::new());

/// The same suite with redb on both ends: the server serves a redb store
/// and the client caches in redb.
mod on_redb {
    use super::*;

    pub(super) struct RedbFactory {
        dir: tempfile::TempDir,
        n: std::sync::atomic::AtomicU64,
        servers: Mutex<Vec<QuicServer>>,
    }

    impl RedbFactory {
        pub(super) fn new() -> Self {
            RedbFactory {
                dir: tempfile::tempdir().unwrap(),
                n: std::sync::atomic::AtomicU64::new(0),
                servers: Mutex::new(Vec::new()),
            }
        }

        async fn redb(&self, store_id: &StoreId) -> Result<Arc<DynAppendOnlyStore>> {
            let n = self.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path = self.dir.path().join(format!("{n}.redb"));
            Ok(Arc::new(
                cairn_redb::RedbStore::open_non_durable(path, store_id.clone()).await?,
            ))
        }
    }

    #[async_trait]
    impl StoreFactory for RedbFactory {
        fn name(&self) -> String {
            "quic+redb".into()
        }

        async fn create(&self, store_id: &StoreId) -> Result<Arc<DynAppendOnlyStore>> {
            let backing = self.redb(store_id).await?;
            let cache = self.redb(store_id).await?;
            serve(&self.servers, store_id, backing, cache).await
        }
    }

    cairn_conformance::conformance_tests!(RedbFactory::new());
}
