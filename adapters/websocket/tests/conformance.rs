#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The shared conformance suite over WebSocketStore (memory cache) →
//! WsServer (memory store), and its network cases.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn::{DynAppendOnlyStore, Keypair, Result, StoreId};
use cairn_conformance::StoreFactory;
use cairn_conformance::network::{ClientOptions, Link, NetworkClient, NetworkFactory};
use cairn_memory::MemoryStore;
use cairn_websocket::*;
use tokio::sync::watch;

struct Factory {
    servers: Mutex<Vec<WsServer>>,
}

/// A server for `backing`, read-write for a fresh client key, and a
/// WebSocketStore caching in a memory store.
async fn serve(
    backing: Arc<DynAppendOnlyStore>,
    opts: WebSocketStoreOptions,
) -> Result<(WsServer, WebSocketStore)> {
    let store_id = backing.store_id().clone();
    let server_key = Keypair::generate();
    let client_key = Keypair::generate();
    let server = WsServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &server_key,
        Arc::new(Stores::new().with(backing)),
        Arc::new(Acl::new().allow(&store_id, client_key.author(), Permission::ReadWrite)),
        WsServerOptions::default(),
    )
    .await?;
    let store = WebSocketStore::new(
        Arc::new(MemoryStore::new(store_id)),
        &server.url(),
        server.peer_id(),
        &client_key,
        opts,
    )?;
    Ok((server, store))
}

fn fast() -> WebSocketStoreOptions {
    WebSocketStoreOptions {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..WebSocketStoreOptions::default()
    }
}

#[async_trait]
impl StoreFactory for Factory {
    fn name(&self) -> String {
        "websocket+memory".into()
    }

    async fn create(&self, store_id: &StoreId) -> Result<Arc<DynAppendOnlyStore>> {
        let backing = Arc::new(MemoryStore::new(store_id.clone()));
        let (server, store) = serve(backing, WebSocketStoreOptions::default()).await?;
        store.wait_connected(Duration::from_secs(20)).await?;
        self.servers.lock().unwrap().push(server);
        Ok(Arc::new(store))
    }
}

cairn_conformance::conformance_tests!(Factory {
    servers: Mutex::new(Vec::new())
});

struct Ws;

struct Client {
    store: Arc<WebSocketStore>,
    _server: WsServer,
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
impl NetworkFactory for Ws {
    fn name(&self) -> String {
        "websocket".into()
    }
    async fn connect(
        &self,
        backing: Arc<DynAppendOnlyStore>,
        client: ClientOptions,
    ) -> Result<Box<dyn NetworkClient>> {
        let opts = WebSocketStoreOptions {
            verifier: client.verifier,
            request_timeout: client.request_timeout,
            ..fast()
        };
        let (server, store) = serve(backing, opts).await?;
        let store = Arc::new(store);
        let (tx, link) = watch::channel(Link::Down);
        let mut states = store.state();
        tokio::spawn(async move {
            // Ends when the store (and its state sender) is gone.
            loop {
                let up = *states.borrow_and_update() == ConnectionState::Connected;
                let now = if up { Link::Up } else { Link::Down };
                tx.send_if_modified(|l| std::mem::replace(l, now) != now);
                if states.changed().await.is_err() {
                    break;
                }
            }
        });
        Ok(Box::new(Client {
            store,
            _server: server,
            link,
        }))
    }
}

mod network {
    use super::*;
    cairn_conformance::network_tests!(Ws);
}
