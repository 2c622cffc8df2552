#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The shared conformance suite over WebRtcStore (memory cache) paired over
//! a loopback data channel with another WebRtcStore (memory), by manual
//! offer/answer exchange.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cairn::{DynAppendOnlyStore, Keypair, Result, StoreId};
use cairn_conformance::StoreFactory;
use cairn_memory::MemoryStore;
use cairn_webrtc::*;

struct Factory {
    backing: Mutex<Vec<WebRtcStore>>,
}

impl Factory {
    fn new() -> Self {
        Factory {
            backing: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl StoreFactory for Factory {
    fn name(&self) -> String {
        "webrtc+memory".into()
    }

    async fn create(&self, store_id: &StoreId) -> Result<Arc<DynAppendOnlyStore>> {
        let server_key = Keypair::generate();
        let client_key = Keypair::generate();
        let backing = WebRtcStore::new(
            Arc::new(MemoryStore::new(store_id.clone())),
            &server_key,
            Arc::new(Acl::new().allow(store_id, client_key.author(), Permission::ReadWrite)),
            WebRtcStoreOptions::loopback(),
        );
        let store = WebRtcStore::new(
            Arc::new(MemoryStore::new(store_id.clone())),
            &client_key,
            Arc::new(Acl::new().allow(store_id, server_key.author(), Permission::ReadWrite)),
            WebRtcStoreOptions::loopback(),
        );
        let (offer, pending) = store.offer().await?;
        let answer = backing.answer(&offer).await?;
        let peer = pending.accept(&answer).await?;
        assert_eq!(peer, server_key.author());
        self.backing.lock().unwrap().push(backing);
        Ok(Arc::new(store))
    }
}

cairn_conformance::conformance_tests!(Factory::new());
