//! Time to first sync on each path, in network namespaces built here:
//! from opening a store with an empty cache to holding the N changes the
//! other side has (connect, handshake, discovery or signaling, catch-up).
//!
//! - `lan`: two namespaces on one veth link; a `Connector` with only the
//!   LAN route finds the serving peer by mDNS and pulls over QUIC (one
//!   mDNS daemon for all rounds, as an app keeps it, so the rounds find
//!   the record cached; a fresh daemon's first search is timed once
//!   before them and printed as `lan_find_cold ms=<t>`);
//! - `stun`, `turn`: the two-NAT topology of `cairn-webrtc`'s NAT tests
//!   (`adapters/webrtc/tests/support/nat.rs`), with port-keeping
//!   `masquerade` for `stun` and `masquerade fully-random` (symmetric) for
//!   `turn`; peer B opens a `WebRtcStore`, joins the room on the signaling
//!   server in `pub`, pairs with peer A (which holds the changes) through
//!   coturn's STUN, or through its TURN relay, and catches up;
//! - `quic`, `websocket`: the relay in `pub` (QUIC, WebSocket), peer B
//!   behind its NAT opens a `QuicStore` / `WebSocketStore`.
//!
//! Each path runs `CAIRN_BENCH_ROUNDS` rounds (default 5), each a fresh
//! store and key on B's side; one line per path:
//! `first_sync path=<p> n=<N> rounds=<r> median_ms=<m> min_ms=<a> max_ms=<b> vs_quic=<m / quic's m>`.
//! The QUIC relay is the baseline, measured in the same run. Needs root,
//! `ip`, `nft` and `turnserver` (coturn), like the namespace tests.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../../adapters/webrtc/tests/support/coturn.rs"]
mod coturn;
#[path = "../../cairn-lan/tests/support/netns.rs"]
mod netns;
#[path = "../../../adapters/webrtc/tests/support/nat.rs"]
mod topo;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::{AppendOnlyStore, ChangeBuilder, ChangeKind, DocId, Keypair, StoreId};
use cairn_connect::{Connector, ConnectorOptions, Route};
use cairn_lan::{Announcement, Lan};
use cairn_memory::MemoryStore;
use cairn_protocol::{Acl, Stores};
use cairn_quic::{QuicServer, QuicStore, QuicStoreOptions, ServerOptions};
use cairn_webrtc::{RoomCode, TurnServer, WebRtcStore, WebRtcStoreOptions, WsSignaling};
use cairn_websocket::{WebSocketStore, WebSocketStoreOptions, WsServer, WsServerOptions};
use futures::StreamExt;
use netns::{Link, in_ns};
use topo::{TURN_PASS, TURN_USER, Topology};

const N: usize = 100;
const T: Duration = Duration::from_secs(30);

fn sid() -> StoreId {
    StoreId::new("bench/first-sync").unwrap()
}

fn rounds() -> usize {
    std::env::var("CAIRN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// A store holding `N` changes of 1 KiB by `key`.
async fn filled(key: &Keypair) -> Arc<MemoryStore> {
    let s = Arc::new(MemoryStore::new(sid()));
    let batch = (0..N)
        .map(|i| {
            ChangeBuilder::new(ChangeKind::Create, DocId::new(format!("d{i}")).unwrap())
                .payload(vec![i as u8; 1024])
                .sign(key)
                .unwrap()
        })
        .collect();
    s.append(batch).await.unwrap();
    s
}

/// Wait until `cache` holds `N` changes, bounded by `T`.
async fn holds_all(cache: &MemoryStore) {
    let until = tokio::time::Instant::now() + T;
    let mut sub = cache.subscribe().await.unwrap();
    // Bounded by `until`: each turn waits for one more change.
    while cache.head().await.unwrap().seq < N as u64 {
        if tokio::time::timeout_at(until, sub.next()).await.is_err() {
            panic!(
                "first sync did not finish in {T:?}: holds {} of {N}",
                cache.head().await.unwrap().seq
            );
        }
    }
}

/// Median, min, max in milliseconds.
fn summary(mut ms: Vec<f64>) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[0], ms[ms.len() - 1])
}

fn lan() -> Vec<f64> {
    let link = Link::new("b");
    let key = Keypair::generate();
    let peer = key.author();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_ns(&link.a, move || {
        Box::pin(async move {
            let stores = Arc::new(Stores::new().with(filled(&key).await));
            let quic = QuicServer::bind(
                "192.0.2.1:0".parse().unwrap(),
                &key,
                stores,
                Arc::new(Acl::open()),
                ServerOptions::default(),
            )
            .unwrap();
            let lan = Lan::new().unwrap();
            let announced = lan
                .announce(&Announcement::for_server(peer, quic.local_addr()))
                .unwrap();
            ready_tx.send(()).unwrap();
            let _ = stop_rx.await;
            drop(announced);
            lan.shutdown();
            quic.shutdown().await;
        })
    });
    ready_rx.recv_timeout(T).expect("the LAN peer started");
    let client = in_ns(&link.b, move || {
        Box::pin(async move {
            let lan = Arc::new(Lan::new().unwrap());
            // A fresh daemon's first search (the query, the peer's answer):
            // once, before the rounds, which then find the record cached,
            // as an app that keeps its daemon does.
            let t = Instant::now();
            lan.find(&peer, T).await.unwrap();
            println!("lan_find_cold ms={:.1}", t.elapsed().as_secs_f64() * 1e3);
            let mut ms = Vec::new();
            for _ in 0..rounds() {
                let me = Keypair::generate();
                let cache = Arc::new(MemoryStore::new(sid()));
                let t = Instant::now();
                let c = Connector::new(
                    cache.clone(),
                    vec![Route::Lan {
                        lan: lan.clone(),
                        peer,
                    }],
                    &me,
                    ConnectorOptions::default(),
                )
                .unwrap();
                holds_all(&cache).await;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                c.close().await;
            }
            ms
        })
    });
    let ms = client.join().expect("the LAN client");
    let _ = stop_tx.send(());
    server.join().expect("the LAN peer");
    ms
}

/// Peer A holds the changes in a room; peer B, round after round, joins
/// with a fresh store and catches up. `turn`: symmetric NATs and a TURN
/// relay; else port-keeping NATs and STUN.
fn webrtc(turn: bool) -> Vec<f64> {
    let (tag, masq): (&str, &[&str]) = if turn {
        ("ft", &["masquerade", "fully-random"])
    } else {
        ("fs", &["masquerade"])
    };
    let mut topo = Topology::new(tag, masq);
    topo.start_coturn(turn);
    let (sig_stop, sig_rx) = tokio::sync::oneshot::channel();
    let (sig, url) = topo.signaling(sig_rx);
    let coturn: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let opts = move || {
        let mut o = WebRtcStoreOptions::default();
        o.stun_servers = vec![coturn];
        if turn {
            o.turn_servers = vec![TurnServer::new(coturn, TURN_USER, TURN_PASS)];
        }
        o
    };
    let room = RoomCode::random().unwrap();
    let (a_stop, a_rx) = tokio::sync::oneshot::channel::<()>();
    let (a_url, a_room) = (url.clone(), room.clone());
    let a = in_ns(topo.name(3), move || {
        Box::pin(async move {
            let key = Keypair::generate();
            let s = WebRtcStore::new(filled(&key).await, &key, Arc::new(Acl::open()), opts());
            s.join(
                WsSignaling::connect(&a_url, &a_room, None, &key)
                    .await
                    .unwrap(),
            );
            let _ = a_rx.await;
            s.close().await;
        })
    });
    let b = in_ns(topo.name(4), move || {
        Box::pin(async move {
            let mut ms = Vec::new();
            for _ in 0..rounds() {
                let key = Keypair::generate();
                let cache = Arc::new(MemoryStore::new(sid()));
                let t = Instant::now();
                let s = WebRtcStore::new(cache.clone(), &key, Arc::new(Acl::open()), opts());
                s.join(WsSignaling::connect(&url, &room, None, &key).await.unwrap());
                holds_all(&cache).await;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                s.close().await;
            }
            ms
        })
    });
    let ms = b.join().expect("peer B");
    let _ = a_stop.send(());
    a.join().expect("peer A");
    let _ = sig_stop.send(());
    sig.join().unwrap();
    ms
}

/// The relay in `pub`; peer B behind its NAT pulls over QUIC, then over
/// WebSocket. Returns (quic, websocket) times.
fn relays() -> (Vec<f64>, Vec<f64>) {
    let topo = Topology::new("fr", &["masquerade"]);
    let key = Keypair::generate();
    let peer = key.author();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let relay = in_ns(topo.name(0), move || {
        Box::pin(async move {
            let stores = Arc::new(Stores::new().with(filled(&key).await));
            let acl = Arc::new(Acl::open());
            let quic = QuicServer::bind(
                "198.51.100.1:0".parse().unwrap(),
                &key,
                stores.clone(),
                acl.clone(),
                ServerOptions::default(),
            )
            .unwrap();
            let ws = WsServer::bind(
                "198.51.100.1:0".parse().unwrap(),
                &key,
                stores,
                acl,
                WsServerOptions::default(),
            )
            .await
            .unwrap();
            ready_tx.send((quic.local_addr(), ws.local_addr())).unwrap();
            let _ = stop_rx.await;
            ws.shutdown().await;
            quic.shutdown().await;
        })
    });
    let (quic_addr, ws_addr) = ready_rx.recv_timeout(T).expect("the relay started");
    let b = in_ns(topo.name(4), move || {
        Box::pin(async move {
            let (mut q, mut w) = (Vec::new(), Vec::new());
            for _ in 0..rounds() {
                let me = Keypair::generate();
                let cache = Arc::new(MemoryStore::new(sid()));
                let t = Instant::now();
                let s = QuicStore::new(
                    cache.clone(),
                    quic_addr,
                    peer,
                    &me,
                    QuicStoreOptions::default(),
                )
                .unwrap();
                holds_all(&cache).await;
                q.push(t.elapsed().as_secs_f64() * 1e3);
                drop(s);
                let cache = Arc::new(MemoryStore::new(sid()));
                let t = Instant::now();
                let s = WebSocketStore::new(
                    cache.clone(),
                    &format!("ws://{ws_addr}/{}", sid()),
                    peer,
                    &me,
                    WebSocketStoreOptions::default(),
                )
                .unwrap();
                holds_all(&cache).await;
                w.push(t.elapsed().as_secs_f64() * 1e3);
                drop(s);
            }
            (q, w)
        })
    });
    let r = b.join().expect("peer B");
    let _ = stop_tx.send(());
    relay.join().expect("the relay");
    r
}

/// Whether `CAIRN_BENCH_PATHS` (comma-separated; default all) asks for `p`.
fn wanted(p: &str) -> bool {
    std::env::var("CAIRN_BENCH_PATHS").map_or(true, |v| v.split(',').any(|x| x == p))
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    // The QUIC relay is the baseline: always measured.
    let (quic, ws) = relays();
    let base = summary(quic.clone()).0;
    let mut runs = Vec::new();
    for (p, f) in [
        ("lan", lan as fn() -> Vec<f64>),
        ("stun", || webrtc(false)),
        ("turn", || webrtc(true)),
    ] {
        if wanted(p) {
            runs.push((p, f()));
        }
    }
    runs.push(("quic", quic));
    if wanted("websocket") {
        runs.push(("websocket", ws));
    }
    for (path, ms) in runs {
        eprintln!("{path}: rounds (ms) {ms:.1?}");
        let r = ms.len();
        let (med, min, max) = summary(ms);
        println!(
            "first_sync path={path} n={N} rounds={r} median_ms={med:.1} min_ms={min:.1} max_ms={max:.1} vs_quic={:.2}",
            med / base
        );
    }
}
