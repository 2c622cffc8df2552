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
        let server_key = Keypair::generate();
        let client_key = Keypair::generate();
        let backing = Arc::new(MemoryStore::new(store_id.clone()));
        let server = QuicServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            &server_key,
            Arc::new(Stores::new().with(backing)),
            Arc::new(Acl::new().allow(store_id, client_key.author(), Permission::ReadWrite)),
            ServerOptions::default(),
        )?;
        let cache = Arc::new(MemoryStore::new(store_id.clone()));
        let store = QuicStore::new(
            cache,
            server.local_addr(),
            server.peer_id(),
            &client_key,
            QuicStoreOptions::default(),
        )?;
        store.wait_connected(Duration::from_secs(20)).await?;
        self.servers.lock().unwrap().push(server);
        Ok(Arc::new(store))
    }
}

cairn_conformance::conformance_tests!(Factory::new());
