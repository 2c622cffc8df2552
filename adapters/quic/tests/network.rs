#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The network cases of the conformance suite over QUIC: a `QuicStore`
//! client in front of a `QuicServer` serving the case's store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn::{DynAppendOnlyStore, Keypair, Result};
use cairn_conformance::network::{ClientOptions, Link, NetworkClient, NetworkFactory};
use cairn_memory::MemoryStore;
use cairn_quic::*;
use tokio::sync::watch;

struct Quic;

struct Client {
    store: Arc<QuicStore>,
    _server: QuicServer,
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
impl NetworkFactory for Quic {
    fn name(&self) -> String {
        "quic".into()
    }
    async fn connect(
        &self,
        backing: Arc<DynAppendOnlyStore>,
        client: ClientOptions,
    ) -> Result<Box<dyn NetworkClient>> {
        let backing_id = backing.store_id().clone();
        let server = common::server(common::local(), &Keypair::generate(), backing, Acl::open());
        let opts = QuicStoreOptions {
            verifier: client.verifier,
            request_timeout: client.request_timeout,
            ..common::fast()
        };
        let store = Arc::new(QuicStore::new(
            Arc::new(MemoryStore::new(backing_id)),
            server.local_addr(),
            server.peer_id(),
            &Keypair::generate(),
            opts,
        )?);
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

cairn_conformance::network_tests!(Quic);
