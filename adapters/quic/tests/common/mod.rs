#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn::{Change, ChangeBuilder, ChangeKind, DocId, DynAppendOnlyStore, Keypair, StoreId};
use cairn_memory::MemoryStore;
use cairn_quic::*;
use tokio::sync::watch;

pub const T: Duration = Duration::from_secs(20);

pub fn sid() -> StoreId {
    StoreId::new("tenant/db").unwrap()
}

pub fn server(
    addr: SocketAddr,
    key: &Keypair,
    store: Arc<DynAppendOnlyStore>,
    acl: Acl,
) -> QuicServer {
    // Rebinding a port just released can briefly fail; retry a few times.
    let mut last = None;
    for _ in 0..200 {
        match QuicServer::bind(
            addr,
            key,
            Arc::new(Stores::new().with(store.clone())),
            Arc::new(acl.clone()),
            ServerOptions::default(),
        ) {
            Ok(s) => return s,
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    panic!("bind: {last:?}");
}

pub fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub fn client(server: &QuicServer, key: &Keypair) -> QuicStore {
    let cache = Arc::new(MemoryStore::new(sid()));
    QuicStore::new(cache, server.local_addr(), server.peer_id(), key, fast()).unwrap()
}

pub fn fast() -> QuicStoreOptions {
    QuicStoreOptions {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..QuicStoreOptions::default()
    }
}

pub fn changes(doc: &str, n: usize, payload: usize) -> Vec<Change> {
    (0..n)
        .map(|i| {
            ChangeBuilder::new(ChangeKind::Change, DocId::new(doc).unwrap())
                .created_at(i as u64)
                .payload(vec![(i % 251) as u8; payload])
                .build()
                .unwrap()
        })
        .collect()
}

/// Wait until the state satisfies `f`.
pub async fn wait_state(
    rx: &mut watch::Receiver<ConnectionState>,
    f: impl FnMut(&ConnectionState) -> bool,
) {
    tokio::time::timeout(T, rx.wait_for(f))
        .await
        .expect("state timeout")
        .expect("state channel closed");
}
