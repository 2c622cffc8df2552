//! cairn-websocket against raw tokio-tungstenite, on loopback, in one run:
//!
//! 1. pull of N changes of 1 KiB (default 100k) into an empty
//!    `WebSocketStore` (connect, handshake, catch up) vs one raw
//!    tungstenite connection carrying the same bytes in 1 MiB binary
//!    messages;
//!    plus `cairn::sync::pull` between two memory stores in-process (no
//!    transport at all), to split the cost;
//! 2. time to first sync (a fresh store connects and has the server's 100
//!    changes) over WebSocket and over QUIC, p50/p99 of 30 each.
//!
//! Run: `cargo bench -p cairn-websocket --bench ws` (`CAIRN_BENCH_N`
//! changes the pull size).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::encoding::encode_meta;
use cairn::{AppendOnlyStore, Change, ChangeBuilder, ChangeKind, DocId, Keypair, StoreId};
use cairn_memory::MemoryStore;
use cairn_protocol::{Acl, Stores};
use cairn_websocket::{WebSocketStore, WebSocketStoreOptions, WsServer, WsServerOptions};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

fn changes(n: usize, size: usize, salt: u64) -> Vec<Change> {
    (0..n)
        .map(|i| {
            ChangeBuilder::new(
                ChangeKind::Change,
                DocId::new(format!("doc-{}", i % 100)).unwrap(),
            )
            .created_at(salt * 1_000_000_000 + i as u64)
            .payload(vec![(i % 251) as u8; size])
            .build()
            .unwrap()
        })
        .collect()
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A raw tungstenite server: reads one binary message holding a u64 `n`,
/// answers with `n` bytes in 1 MiB binary messages, then closes.
async fn raw_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                tcp.set_nodelay(true).unwrap();
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                let Some(Ok(Message::Binary(req))) = ws.next().await else {
                    return;
                };
                let n = u64::from_be_bytes(req[..8].try_into().unwrap()) as usize;
                let chunk = tokio_tungstenite::tungstenite::Bytes::from(vec![7u8; 1 << 20]);
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len());
                    ws.feed(Message::Binary(chunk.slice(..k))).await.unwrap();
                    left -= k;
                }
                ws.flush().await.unwrap();
                let _ = ws.close(None).await;
            });
        }
    });
    addr
}

async fn raw_pull(addr: std::net::SocketAddr, bytes: usize) -> Duration {
    let t = Instant::now();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
        .await
        .unwrap();
    ws.send(Message::Binary(
        (bytes as u64).to_be_bytes().to_vec().into(),
    ))
    .await
    .unwrap();
    let mut got = 0usize;
    while got < bytes {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => got += b.len(),
            Message::Close(_) => break,
            _ => {}
        }
    }
    let d = t.elapsed();
    assert_eq!(got, bytes);
    d
}

fn ws_opts() -> WebSocketStoreOptions {
    WebSocketStoreOptions::default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("CAIRN_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let sid = StoreId::new("bench/db").unwrap();
    let skey = Keypair::generate();
    let ckey = Keypair::generate();
    let backing = Arc::new(MemoryStore::new(sid.clone()));
    let data = changes(n, 1024, 0);
    let wire_bytes: usize = data
        .iter()
        .map(|c| 8 + encode_meta(&c.meta).len() + c.payload.len())
        .sum();
    for chunk in data.chunks(10_000) {
        backing.append(chunk.to_vec()).await.unwrap();
    }
    let server = WsServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &skey,
        Arc::new(Stores::new().with(backing.clone())),
        Arc::new(Acl::open()),
        WsServerOptions::default(),
    )
    .await
    .unwrap();
    let raw = raw_server().await;

    // 1. Pull, three times each, alternating.
    let mb = wire_bytes as f64 / 1e6;
    for round in 1..=3 {
        let t = Instant::now();
        let store = WebSocketStore::new(
            Arc::new(MemoryStore::new(sid.clone())),
            &server.url(),
            server.peer_id(),
            &ckey,
            ws_opts(),
        )
        .unwrap();
        store
            .wait_connected(Duration::from_secs(600))
            .await
            .unwrap();
        let pull = t.elapsed();
        assert_eq!(store.head().await.unwrap().seq as usize, n);
        store.close().await;
        drop(store);
        let raw_d = raw_pull(raw, wire_bytes).await;
        println!(
            "pull {n} x 1 KiB ({mb:.0} MB) round {round}: cairn-websocket {:.2} s ({:.0} MB/s), raw tungstenite {:.2} s ({:.0} MB/s), cairn/raw throughput {:.2}x",
            pull.as_secs_f64(),
            mb / pull.as_secs_f64(),
            raw_d.as_secs_f64(),
            mb / raw_d.as_secs_f64(),
            raw_d.as_secs_f64() / pull.as_secs_f64()
        );
    }

    // The same pull with no transport: what the store and engine cost.
    let t = Instant::now();
    let local = MemoryStore::new(sid.clone());
    cairn::sync::pull(
        &local,
        backing.as_ref(),
        &cairn::sync::SyncOptions::default(),
    )
    .await
    .unwrap();
    let inproc = t.elapsed();
    assert_eq!(local.head().await.unwrap().seq as usize, n);
    println!(
        "pull {n} x 1 KiB in-process (memory -> memory, sync::pull): {:.2} s ({:.0} MB/s)",
        inproc.as_secs_f64(),
        mb / inproc.as_secs_f64()
    );
    drop(local);

    // 2. Time to first sync: a fresh store, the server's 100 changes.
    let small_id = StoreId::new("bench/first").unwrap();
    let small = Arc::new(MemoryStore::new(small_id.clone()));
    small.append(changes(100, 1024, 1)).await.unwrap();
    let ws_server = WsServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &skey,
        Arc::new(Stores::new().with(small.clone())),
        Arc::new(Acl::open()),
        WsServerOptions::default(),
    )
    .await
    .unwrap();
    let quic_server = cairn_quic::QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &skey,
        Arc::new(Stores::new().with(small.clone())),
        Arc::new(Acl::open()),
        cairn_quic::ServerOptions::default(),
    )
    .unwrap();
    let (mut ws_t, mut quic_t) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let t = Instant::now();
        let s = WebSocketStore::new(
            Arc::new(MemoryStore::new(small_id.clone())),
            &ws_server.url(),
            ws_server.peer_id(),
            &ckey,
            ws_opts(),
        )
        .unwrap();
        s.wait_connected(Duration::from_secs(10)).await.unwrap();
        ws_t.push(t.elapsed());
        assert_eq!(s.head().await.unwrap().seq, 100);
        s.close().await;
        let t = Instant::now();
        let q = cairn_quic::QuicStore::new(
            Arc::new(MemoryStore::new(small_id.clone())),
            quic_server.local_addr(),
            quic_server.peer_id(),
            &ckey,
            cairn_quic::QuicStoreOptions::default(),
        )
        .unwrap();
        q.wait_connected(Duration::from_secs(10)).await.unwrap();
        quic_t.push(t.elapsed());
        assert_eq!(q.head().await.unwrap().seq, 100);
        q.close().await;
    }
    println!(
        "first sync (100 x 1 KiB, loopback): websocket relay p50 {} p99 {}, quic relay p50 {} p99 {}",
        ms(pct(ws_t.clone(), 0.5)),
        ms(pct(ws_t, 0.99)),
        ms(pct(quic_t.clone(), 0.5)),
        ms(pct(quic_t, 0.99)),
    );
    ws_server.shutdown().await;
    quic_server.shutdown().await;
    server.shutdown().await;
}
