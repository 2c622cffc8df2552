//! TURN on loopback: coturn (Debian package `coturn`, started by the test on
//! 127.0.0.1 with a long-term credential) relays every packet between two
//! stores that announce relayed candidates only.
//!
//! - `relay_only_stores_sync_through_coturn`: the pair ICE chose runs
//!   between two relayed addresses, and changes cross both ways;
//! - `wrong_credentials_fail_with_a_clear_error`: a relay-only store whose
//!   credential coturn refuses fails to pair, saying no TURN server
//!   granted an allocation, within the allocation deadline.
//!
//! Fails naming the package when `turnserver` is missing (`cargo xtask
//! test` installs it). coturn is killed when the test ends.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "support/coturn.rs"]
mod coturn;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cairn::{AppendOnlyStore, ChangeBuilder, ChangeKind, DocId, Keypair, StoreId};
use cairn_memory::MemoryStore;
use cairn_webrtc::{Acl, TurnServer, WebRtcStore, WebRtcStoreOptions};
use coturn::Coturn;
use futures::StreamExt;

const T: Duration = Duration::from_secs(30);
const USER: &str = "cairn";
const PASS: &str = "loopback-secret";

/// coturn on 127.0.0.1 (a free port) with the credential
/// [`USER`]:[`PASS`]; its address.
fn start_coturn() -> (Coturn, SocketAddr) {
    // A free port: bind, read it, release it (coturn binds it next).
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new("turnserver");
    cmd.args(["-n", "--lt-cred-mech", "--realm=cairn.test"])
        .arg(format!("--user={USER}:{PASS}"))
        .args([
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            &format!("--listening-port={port}"),
            "--allow-loopback-peers",
            "--no-tls",
            "--no-dtls",
            "--no-tcp-relay",
        ]);
    (Coturn::spawn(cmd), SocketAddr::from(([127, 0, 0, 1], port)))
}

fn sid() -> StoreId {
    StoreId::new("friends/album").unwrap()
}

fn store(key: &Keypair, turn: TurnServer) -> (Arc<MemoryStore>, WebRtcStore) {
    let cache = Arc::new(MemoryStore::new(sid()));
    let mut opts = WebRtcStoreOptions::loopback();
    opts.turn_servers = vec![turn];
    opts.relay_only = true;
    opts.open_timeout = Duration::from_secs(10);
    let s = WebRtcStore::new(cache.clone(), key, Arc::new(Acl::open()), opts);
    (cache, s)
}

fn change(key: &Keypair, doc: &str) -> cairn::Change {
    ChangeBuilder::new(ChangeKind::Create, DocId::new(doc).unwrap())
        .payload(doc.as_bytes().to_vec())
        .sign(key)
        .unwrap()
}

/// Wait (bounded by `T`) until `cache` holds `n` changes.
async fn holds(cache: &MemoryStore, n: u64) {
    let mut sub = cache.subscribe().await.unwrap();
    let until = tokio::time::Instant::now() + T;
    // Bounded by `until`: each turn waits for one more change.
    while cache.head().await.unwrap().seq < n {
        if tokio::time::timeout_at(until, sub.next()).await.is_err() {
            panic!("holds {} of {n}", cache.head().await.unwrap().seq);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_stores_sync_through_coturn() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (_coturn, addr) = start_coturn();
    let turn = TurnServer::new(addr, USER, PASS);
    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let (ca, a) = store(&ka, turn.clone());
    let (cb, b) = store(&kb, turn);
    ca.append(vec![change(&ka, "from-a")]).await.unwrap();
    cb.append(vec![change(&kb, "from-b")]).await.unwrap();

    let (offer, pending) = a.offer().await.unwrap();
    let answer = b.answer(&offer).await.unwrap();
    pending.accept(&answer).await.unwrap();
    a.wait_peers(1, T).await.unwrap();
    b.wait_peers(1, T).await.unwrap();
    holds(&ca, 2).await;
    holds(&cb, 2).await;

    // Both ends of the chosen pair are coturn's relayed addresses (on
    // 127.0.0.1, but never the TURN listening port or a host socket's).
    for (s, other) in [(&a, kb.author()), (&b, ka.author())] {
        let (local, remote) = s.peer_path(&other).expect("a path");
        assert_ne!(local.port(), addr.port(), "{local} is coturn's listener");
        assert_ne!(remote.port(), addr.port(), "{remote} is coturn's listener");
        assert_eq!(local.ip(), addr.ip());
        assert_eq!(remote.ip(), addr.ip());
    }
    // The offer and answer announce relayed candidates only.
    let sdp = cairn_webrtc::decode_sdp(&offer).unwrap();
    assert!(sdp.contains("typ relay"), "{sdp}");
    assert!(!sdp.contains("typ host"), "{sdp}");

    // Live: a change made now crosses the relay too.
    cb.append(vec![change(&kb, "later")]).await.unwrap();
    holds(&ca, 3).await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_with_a_clear_error() {
    let (_coturn, addr) = start_coturn();
    let (_, a) = store(&Keypair::generate(), TurnServer::new(addr, USER, "wrong"));
    let started = tokio::time::Instant::now();
    let e = a.offer().await.expect_err("an offer without any candidate");
    assert!(
        e.to_string()
            .contains("no TURN server granted an allocation"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}
