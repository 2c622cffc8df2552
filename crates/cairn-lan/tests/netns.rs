//! Two peers on one link, each in a network namespace this test builds
//! (`ip netns`, a veth pair, 192.0.2.0/24 from the documentation range,
//! multicast on, no route anywhere else): one serves a store over QUIC and
//! announces itself; the other finds it by mDNS and syncs from it directly.
//!
//! Needs root and `ip` (iproute2), as `cargo xtask test` in CI has; fails
//! naming what is missing otherwise. The namespaces are deleted when the
//! test ends, passed or failed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "support/netns.rs"]
mod netns;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn::{AppendOnlyStore, ChangeBuilder, ChangeKind, DocId, Error, Keypair, StoreId};
use cairn_lan::{Announcement, Lan};
use cairn_memory::MemoryStore;
use cairn_quic::{Acl, Permission, QuicServer, QuicStore, QuicStoreOptions, ServerOptions, Stores};
use netns::{Link, in_ns};

const T: Duration = Duration::from_secs(20);

fn sid() -> StoreId {
    StoreId::new("family/photos").unwrap()
}

#[test]
fn a_peer_is_found_by_mdns_and_synced_from_directly() {
    let link = Link::new("m");
    let server_key = Keypair::generate();
    let client_key = Keypair::generate();
    let server_peer = server_key.author();
    let client_peer = client_key.author();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let a = in_ns(&link.a, move || {
        Box::pin(async move {
            let store = Arc::new(MemoryStore::new(sid()));
            let batch: Vec<_> = (0..10)
                .map(|i| {
                    ChangeBuilder::new(ChangeKind::Create, DocId::new(format!("p{i}")).unwrap())
                        .payload(vec![i as u8; 64])
                        .sign(&server_key)
                        .unwrap()
                })
                .collect();
            store.append(batch).await.unwrap();
            let server = QuicServer::bind(
                "192.0.2.1:0".parse().unwrap(),
                &server_key,
                Arc::new(Stores::new().with(store)),
                Arc::new(Acl::new().allow(&sid(), client_peer, Permission::Read)),
                ServerOptions::default(),
            )
            .unwrap();
            let lan = Lan::new().unwrap();
            let mut ann = Announcement::new(server_peer, server.local_addr().port());
            ann.stores = vec![sid()];
            let announced = lan.announce(&ann).unwrap();
            ready_tx.send(()).unwrap();
            // Until the other side is done (bounded by its own deadlines).
            let _ = stop_rx.await;
            drop(announced);
            lan.shutdown();
            server.shutdown().await;
        })
    });
    ready_rx.recv_timeout(T).expect("the server side started");
    let b = in_ns(&link.b, move || {
        Box::pin(async move {
            let lan = Lan::new().unwrap();
            let found = lan.find(&server_peer, T).await.unwrap();
            assert_eq!(found.peer, server_peer);
            assert_eq!(found.addrs[0], "192.0.2.1".parse::<IpAddr>().unwrap());
            assert!(found.announces(&sid()));
            assert!(!found.announces(&StoreId::new("family/other").unwrap()));
            // Found again from memory: a 1 ms deadline leaves no time for
            // an mDNS exchange.
            let again = lan
                .find(&server_peer, Duration::from_millis(1))
                .await
                .unwrap();
            assert_eq!(again, found);
            let by_store = lan.find_store(&sid(), T).await.unwrap();
            assert_eq!(by_store.peer, server_peer);
            // Direct: connect to the address found, the key pinned.
            let cache = Arc::new(MemoryStore::new(sid()));
            let store = QuicStore::new(
                cache.clone(),
                found.quic_addr(),
                found.peer,
                &client_key,
                QuicStoreOptions::default(),
            )
            .unwrap();
            store.wait_connected(T).await.unwrap();
            assert_eq!(cache.head().await.unwrap().seq, 10);
            store.close().await;
            // A peer nobody announces is not found: a timeout naming it.
            let nobody = Keypair::generate().author();
            let e = lan.find(&nobody, Duration::from_secs(2)).await.unwrap_err();
            assert!(
                matches!(&e, Error::Timeout { what, .. } if what.contains(&nobody.short())),
                "{e}"
            );
            lan.shutdown();
        })
    });
    let r = b.join();
    let _ = stop_tx.send(());
    a.join().expect("the announcing side");
    r.expect("the finding side");
}
