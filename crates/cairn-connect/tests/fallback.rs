//! The Connector across a real link: a relay in one network namespace
//! (QUIC and WebSocket on 192.0.2.1, announcing itself by mDNS), the client
//! in another, joined by a veth pair; nftables in the client's namespace
//! drops its UDP (a network that blocks UDP), and the test watches the
//! client land on WebSocket, upgrade to the LAN path when UDP comes back,
//! and fall back again when it goes.
//!
//! Needs root, `ip` and `nft`, as `cargo xtask test` in CI has; fails
//! naming what is missing otherwise. The namespaces (and the rules in
//! them) are deleted when the test ends, passed or failed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../cairn-lan/tests/support/netns.rs"]
mod netns;
mod support;

use std::sync::Arc;
use std::time::Duration;

use cairn::{AppendOnlyStore, Keypair};
use cairn_connect::{Connector, ConnectorOptions, PathKind, Route};
use cairn_lan::{Announcement, Lan};
use cairn_memory::MemoryStore;
use cairn_quic::{Acl, Permission, QuicServer, ServerOptions, Stores};
use cairn_websocket::{WsServer, WsServerOptions};
use futures::StreamExt;
use netns::{Link, block_udp, in_ns, unblock_udp};
use support::{change, sid};

const T: Duration = Duration::from_secs(30);

/// Wait until `store` (shared with the relay's thread) holds `seq`
/// changes, bounded by T.
async fn holds(store: &MemoryStore, seq: u64) {
    let until = tokio::time::Instant::now() + T;
    let mut sub = store.subscribe().await.unwrap();
    // Each turn waits for one append (subscribed before the check, so none
    // is missed).
    while store.head().await.unwrap().seq < seq {
        assert!(
            tokio::time::timeout_at(until, sub.next()).await.is_ok(),
            "the relay never held {seq} changes"
        );
    }
}

#[test]
fn blocked_udp_lands_on_websocket_and_upgrades_when_it_returns() {
    let link = Link::new("c");
    let relay_key = Keypair::generate();
    let me = Keypair::generate();
    let (relay_peer, my_peer) = (relay_key.author(), me.author());
    // The relay's store: plain memory, shared with the client side's checks.
    let relay_store = Arc::new(MemoryStore::new(sid()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(u16, u16)>();
    let rs = relay_store.clone();
    let relay = in_ns(&link.a, move || {
        Box::pin(async move {
            rs.append((0..5).map(|i| change(&relay_key, i)).collect())
                .await
                .unwrap();
            let stores = Arc::new(Stores::new().with(rs));
            let acl = Arc::new(Acl::new().allow(&sid(), my_peer, Permission::ReadWrite));
            let quic = QuicServer::bind(
                "192.0.2.1:0".parse().unwrap(),
                &relay_key,
                stores.clone(),
                acl.clone(),
                ServerOptions::default(),
            )
            .unwrap();
            let ws = WsServer::bind(
                "192.0.2.1:0".parse().unwrap(),
                &relay_key,
                stores,
                acl,
                WsServerOptions::default(),
            )
            .await
            .unwrap();
            let lan = Lan::new().unwrap();
            let announced = lan
                .announce(&Announcement::for_server(relay_peer, quic.local_addr()))
                .unwrap();
            ready_tx
                .send((quic.local_addr().port(), ws.local_addr().port()))
                .unwrap();
            // Until the client side is done (bounded by its deadlines).
            let _ = stop_rx.await;
            drop(announced);
            lan.shutdown();
            ws.shutdown().await;
            quic.shutdown().await;
        })
    });
    let (quic_port, ws_port) = ready_rx.recv_timeout(T).expect("the relay started");
    let client_ns = link.b.clone();
    let rs = relay_store.clone();
    let client = in_ns(&link.b, move || {
        Box::pin(async move {
            block_udp(&client_ns);
            let cache = Arc::new(MemoryStore::new(sid()));
            let routes = vec![
                Route::Lan {
                    lan: Arc::new(Lan::new().unwrap()),
                    peer: relay_peer,
                },
                Route::Quic {
                    addr: format!("192.0.2.1:{quic_port}").parse().unwrap(),
                    peer: relay_peer,
                },
                Route::WebSocket {
                    url: format!("ws://192.0.2.1:{ws_port}/"),
                    peer: relay_peer,
                },
            ];
            let opts = ConnectorOptions {
                connect_timeout: Duration::from_secs(1),
                lan_timeout: Duration::from_secs(1),
                probe_every: Duration::from_millis(500),
                failover_after: Duration::from_secs(1),
                quic: cairn_quic::QuicStoreOptions {
                    idle_timeout: Duration::from_secs(2),
                    ..ConnectorOptions::default().quic
                },
                ..ConnectorOptions::default()
            };
            let c = Connector::new(cache.clone(), routes, &me, opts).unwrap();
            // UDP blocked: neither mDNS nor QUIC gets out; WebSocket does.
            assert_eq!(
                support::path_becomes(&c, PathKind::WebSocket, T).await,
                "relay (websocket)"
            );
            assert_eq!(
                cache.head().await.unwrap().seq,
                5,
                "caught up over WebSocket"
            );
            c.append(vec![change(&me, 100)]).await.unwrap();
            c.flush(T).await.unwrap();
            holds(&rs, 6).await;
            // UDP back: the connector finds the relay on the LAN and moves up.
            unblock_udp(&client_ns);
            assert_eq!(
                support::path_becomes(&c, PathKind::Lan, T).await,
                "connected to 1 device (LAN)"
            );
            c.append(vec![change(&me, 101)]).await.unwrap();
            c.flush(T).await.unwrap();
            holds(&rs, 7).await;
            // UDP gone again: the LAN path is lost, and the connector falls
            // back to WebSocket, delivering what was appended meanwhile.
            block_udp(&client_ns);
            c.append(vec![change(&me, 102)]).await.unwrap();
            assert_eq!(
                support::path_becomes(&c, PathKind::WebSocket, T).await,
                "relay (websocket)"
            );
            holds(&rs, 8).await;
            c.close().await;
            assert_eq!(c.path(), None);
        })
    });
    let r = client.join();
    let _ = stop_tx.send(());
    relay.join().expect("the relay side");
    r.expect("the client side");
}
