//! cairn-quic against raw quinn, on loopback, in one run:
//!
//! 1. pull of 100k changes of 1 KiB into an empty QuicStore (connect, catch
//!    up) vs one raw quinn stream carrying the same bytes;
//! 2. `get_changes` of one change, p50/p99, vs a raw quinn request/response
//!    of the same sizes (one stream each);
//! 3. live propagation: append on one QuicStore until another's
//!    `subscribe()` yields it, p50/p99.
//!
//! Run: `cargo bench -p cairn-quic --bench quic` (`CAIRN_BENCH_N` changes
//! the pull size).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::encoding::encode_meta;
use cairn::{AppendOnlyStore, Change, ChangeBuilder, ChangeKind, DocId, Keypair, StoreId};
use cairn_memory::MemoryStore;
use cairn_protocol::RemoteCalls;
use cairn_quic::*;
use futures::StreamExt;

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

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// A raw quinn server: 'B' + u64 n → n bytes; 'R' + 36 bytes → `reply` bytes.
fn raw_server(key: &Keypair, reply: usize) -> quinn::Endpoint {
    let cfg = cairn_quic::config::server_config(key, 128).unwrap();
    let ep = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    let e2 = ep.clone();
    tokio::spawn(async move {
        while let Some(inc) = e2.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((mut s, mut r)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let req = r.read_to_end(1024).await.unwrap();
                        if req[0] == b'B' {
                            let n = u64::from_be_bytes(req[1..9].try_into().unwrap()) as usize;
                            let chunk = vec![7u8; 1 << 20];
                            let mut left = n;
                            while left > 0 {
                                let k = left.min(chunk.len());
                                s.write_all(&chunk[..k]).await.unwrap();
                                left -= k;
                            }
                        } else {
                            s.write_all(&vec![1u8; reply]).await.unwrap();
                        }
                        let _ = s.finish();
                    });
                }
            });
        }
    });
    ep
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
    let server = QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &skey,
        Arc::new(Stores::new().with(backing.clone())),
        Arc::new(Acl::open()),
        ServerOptions::default(),
    )
    .unwrap();
    let raw = raw_server(&skey, 0);
    let mut raw_client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    raw_client.set_default_client_config(
        cairn_quic::config::client_config(&ckey, skey.author()).unwrap(),
    );
    let raw_conn = raw_client
        .connect(raw.local_addr().unwrap(), "cairn")
        .unwrap()
        .await
        .unwrap();

    // 1. Pull.
    let t = Instant::now();
    let cache = Arc::new(MemoryStore::new(sid.clone()));
    let store = QuicStore::new(
        cache,
        server.local_addr(),
        server.peer_id(),
        &ckey,
        QuicStoreOptions::default(),
    )
    .unwrap();
    store
        .wait_connected(Duration::from_secs(600))
        .await
        .unwrap();
    let pull = t.elapsed();
    assert_eq!(store.head().await.unwrap().seq as usize, n);
    let t = Instant::now();
    let (mut s, mut r) = raw_conn.open_bi().await.unwrap();
    let mut req = vec![b'B'];
    req.extend_from_slice(&(wire_bytes as u64).to_be_bytes());
    s.write_all(&req).await.unwrap();
    s.finish().unwrap();
    let got = r.read_to_end(usize::MAX).await.unwrap();
    let raw_pull = t.elapsed();
    assert_eq!(got.len(), wire_bytes);
    drop(got);
    let mb = wire_bytes as f64 / 1e6;
    println!(
        "pull {n} x 1 KiB ({mb:.0} MB): cairn-quic {:.2} s ({:.0} MB/s), raw quinn {:.2} s ({:.0} MB/s), ratio {:.1}x",
        pull.as_secs_f64(),
        mb / pull.as_secs_f64(),
        raw_pull.as_secs_f64(),
        mb / raw_pull.as_secs_f64(),
        pull.as_secs_f64() / raw_pull.as_secs_f64()
    );

    // 2. get_changes of one change.
    let client = QuicClient::connect(server.local_addr(), server.peer_id(), &ckey, &sid, 16 << 20)
        .await
        .unwrap();
    let iters = 2000;
    let mut lat = Vec::with_capacity(iters);
    let one = data[0].payload.len() + encode_meta(&data[0].meta).len() + 8 + 14;
    for i in 0..iters {
        let id = data[(i * 7919) % n].id();
        let t = Instant::now();
        let got = client.remote_get_changes(&[id]).await.unwrap();
        lat.push(t.elapsed());
        assert_eq!(got.len(), 1);
    }
    drop(raw);
    let raw = raw_server(&skey, one);
    let raw_conn = raw_client
        .connect(raw.local_addr().unwrap(), "cairn")
        .unwrap()
        .await
        .unwrap();
    let mut raw_lat = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let (mut s, mut r) = raw_conn.open_bi().await.unwrap();
        s.write_all(&[b'R'; 46]).await.unwrap();
        s.finish().unwrap();
        let got = r.read_to_end(1 << 20).await.unwrap();
        raw_lat.push(t.elapsed());
        assert_eq!(got.len(), one);
    }
    let (p50, p99) = (pct(lat.clone(), 0.5), pct(lat, 0.99));
    let (r50, r99) = (pct(raw_lat.clone(), 0.5), pct(raw_lat, 0.99));
    println!(
        "get_changes(1): cairn-quic p50 {} p99 {}, raw quinn p50 {} p99 {}, ratio p50 {:.2}x",
        us(p50),
        us(p99),
        us(r50),
        us(r99),
        p50.as_secs_f64() / r50.as_secs_f64()
    );

    // 3. Live propagation between two clients of one server.
    let small = Arc::new(MemoryStore::new(StoreId::new("bench/live").unwrap()));
    let live_server = QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &skey,
        Arc::new(Stores::new().with(small)),
        Arc::new(Acl::open()),
        ServerOptions::default(),
    )
    .unwrap();
    let mk = |k: &Keypair| {
        QuicStore::new(
            Arc::new(MemoryStore::new(StoreId::new("bench/live").unwrap())),
            live_server.local_addr(),
            live_server.peer_id(),
            k,
            QuicStoreOptions::default(),
        )
        .unwrap()
    };
    let a = mk(&Keypair::generate());
    let b = mk(&Keypair::generate());
    a.wait_connected(Duration::from_secs(10)).await.unwrap();
    b.wait_connected(Duration::from_secs(10)).await.unwrap();
    let mut sub = b.subscribe().await.unwrap();
    let live = changes(500, 1024, 1);
    let mut prop = Vec::with_capacity(live.len());
    for c in live {
        let id = c.id();
        let t = Instant::now();
        a.append(vec![c]).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        prop.push(t.elapsed());
        assert_eq!(m.id, id);
    }
    println!(
        "live propagation append -> other client's subscribe: p50 {} p99 {}",
        us(pct(prop.clone(), 0.5)),
        us(pct(prop, 0.99))
    );
    a.close().await;
    b.close().await;
    store.close().await;
    client.close().await;
    live_server.shutdown().await;
    server.shutdown().await;
}
