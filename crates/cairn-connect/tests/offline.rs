//! A Connector with no route that works: it reports itself offline with the
//! route's failure, and its appends pass the policy into the cache (the
//! next catch-up would push them). Loopback only: the route is a UDP port
//! nobody answers on.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use cairn::{AppendOnlyStore, ChangeBuilder, ChangeKind, DocId, Error, Keypair, StoreId};
use cairn_connect::{Connector, ConnectorOptions, PathState, Route};
use cairn_memory::MemoryStore;

#[tokio::test]
async fn offline_appends_pass_the_policy_into_the_cache() {
    // A bound socket that never answers: the QUIC route times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sid = StoreId::new("solo/notes").unwrap();
    let cache = Arc::new(MemoryStore::new(sid.clone()));
    let opts = ConnectorOptions {
        connect_timeout: Duration::from_millis(300),
        verifier: Arc::new(cairn::RequireSignature),
        ..ConnectorOptions::default()
    };
    let me = Keypair::generate();
    let routes = vec![Route::Quic {
        addr: silent.local_addr().unwrap(),
        peer: Keypair::generate().author(),
    }];
    let c = Connector::new(cache.clone(), routes, &me, opts).unwrap();
    let mut state = c.state();
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| {
            matches!(
                s,
                PathState::Offline {
                    last_error: Some(_)
                }
            )
        }),
    )
    .await
    .expect("the route's failure is reported")
    .unwrap()
    .clone();
    assert!(s.to_string().starts_with("offline (Quic:"), "{s}");
    let e = c
        .wait_connected(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    // Unsigned: refused by the policy, nothing stored.
    let unsigned = ChangeBuilder::new(ChangeKind::Create, DocId::new("d").unwrap())
        .payload(b"x".to_vec())
        .build()
        .unwrap();
    let e = c.append(vec![unsigned]).await.unwrap_err();
    assert!(matches!(e, Error::Rejected { .. }), "{e}");
    assert_eq!(cache.head().await.unwrap().seq, 0);
    // Signed: kept in the cache while offline.
    let signed = ChangeBuilder::new(ChangeKind::Create, DocId::new("d").unwrap())
        .payload(b"y".to_vec())
        .sign(&me)
        .unwrap();
    assert_eq!(c.append(vec![signed]).await.unwrap().new.len(), 1);
    assert_eq!(c.head().await.unwrap().seq, 1);
    c.close().await;
}
