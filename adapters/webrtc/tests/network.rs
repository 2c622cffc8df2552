#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The network cases of the conformance suite over WebRTC: a `WebRtcStore`
//! client paired by hand with a `WebRtcStore` whose cache is the case's
//! store.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn::{DynAppendOnlyStore, Keypair, Result};
use cairn_conformance::network::{ClientOptions, Link, NetworkClient, NetworkFactory};
use cairn_memory::MemoryStore;
use cairn_webrtc::*;
use tokio::sync::watch;

struct WebRtc {
    peers: Mutex<Vec<WebRtcStore>>,
}

struct Client {
    store: Arc<WebRtcStore>,
    link: watch::Receiver<Link>,
}

#[async_trait]
impl NetworkClient for Client {
    fn store(&self) -> Arc<DynAppendOnlyStore> {
        self.store.clone()
    }
    fn cache(&self) -> Arc<DynAppendOnlyStore> {
        self.store.cache().clone()
    }
    async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        self.store.wait_connected(timeout).await
    }
    async fn flush(&self, timeout: Duration) -> Result<()> {
        self.store.flush(timeout).await
    }
    fn pending(&self) -> usize {
        self.store.pending()
    }
    fn refused(&self) -> u64 {
        self.store.refused()
    }
    fn link(&self) -> watch::Receiver<Link> {
        self.link.clone()
    }
    async fn close(&self) {
        self.store.close().await;
    }
}

#[async_trait]
impl NetworkFactory for WebRtc {
    fn name(&self) -> String {
        "webrtc".into()
    }
    async fn connect(
        &self,
        backing: Arc<DynAppendOnlyStore>,
        client: ClientOptions,
    ) -> Result<Box<dyn NetworkClient>> {
        let sid = backing.store_id().clone();
        let (skey, ckey) = (Keypair::generate(), Keypair::generate());
        let server = WebRtcStore::new(
            backing,
            &skey,
            Arc::new(Acl::new().allow(&sid, ckey.author(), Permission::ReadWrite)),
            WebRtcStoreOptions::loopback(),
        );
        let mut opts = WebRtcStoreOptions::loopback();
        opts.verifier = client.verifier;
        opts.request_timeout = client.request_timeout;
        let store = Arc::new(WebRtcStore::new(
            Arc::new(MemoryStore::new(sid.clone())),
            &ckey,
            Arc::new(Acl::new().allow(&sid, skey.author(), Permission::ReadWrite)),
            opts,
        ));
        let (offer, pending) = store.offer().await?;
        let answer = server.answer(&offer).await?;
        pending.accept(&answer).await?;
        self.peers.lock().unwrap().push(server);
        let (tx, link) = watch::channel(Link::Down);
        let mut peers = store.peers();
        tokio::spawn(async move {
            // Ends when the store (and its peer list sender) is gone.
            loop {
                let now = if peers.borrow_and_update().is_empty() {
                    Link::Down
                } else {
                    Link::Up
                };
                tx.send_if_modified(|l| std::mem::replace(l, now) != now);
                if peers.changed().await.is_err() {
                    break;
                }
            }
        });
        Ok(Box::new(Client { store, link }))
    }
}

cairn_conformance::network_tests!(WebRtc {
    peers: Mutex::new(Vec::new())
});
