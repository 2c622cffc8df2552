//! cairn-webrtc on loopback, in one run, beside a raw data channel of the
//! same crate (str0m, same driver) and beside cairn-quic:
//!
//! 1. time to open: manual pairing of two WebRtcStores (offer → paired,
//!    authenticated, hellos, first pull of an empty store) vs a raw data
//!    channel vs a QuicStore connecting to a QuicServer;
//! 2. pull throughput: 100k changes of 1 KiB into an empty store on
//!    pairing vs the same bytes over a raw data channel vs QUIC's catch-up;
//! 3. live propagation: append on one peer until the other's `subscribe()`
//!    yields it, p50/p99 (raw: one 1 KiB message one way, as half a round
//!    trip).
//!
//! Run: `cargo bench -p cairn-webrtc --bench webrtc` (`CAIRN_BENCH_N`
//! changes the pull size, `CAIRN_BENCH_SAMPLES` the latency samples).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::{AppendOnlyStore, Change, ChangeBuilder, ChangeKind, DocId, Keypair, StoreId};
use cairn_memory::MemoryStore;
use cairn_quic::{QuicServer, QuicStore, QuicStoreOptions, ServerOptions};
use cairn_webrtc::{Acl, RawChannel, WebRtcStore, WebRtcStoreOptions};
use futures::StreamExt;

const T: Duration = Duration::from_secs(600);

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

fn sid() -> StoreId {
    StoreId::new("bench/db").unwrap()
}

fn lo() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

fn rtc_store(cache: Arc<MemoryStore>, key: &Keypair) -> WebRtcStore {
    WebRtcStore::new(
        cache,
        key,
        Arc::new(Acl::open()),
        WebRtcStoreOptions::loopback(),
    )
}

async fn pair(a: &WebRtcStore, b: &WebRtcStore) {
    let (offer, pending) = a.offer().await.unwrap();
    let answer = b.answer(&offer).await.unwrap();
    pending.accept(&answer).await.unwrap();
    b.wait_connected(T).await.unwrap();
}

fn quic_server(backing: Arc<MemoryStore>) -> QuicServer {
    QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &Keypair::generate(),
        Arc::new(cairn_quic::Stores::new().with(backing)),
        Arc::new(cairn_quic::Acl::open()),
        ServerOptions::default(),
    )
    .unwrap()
}

fn quic_store(srv: &QuicServer, cache: Arc<MemoryStore>) -> QuicStore {
    QuicStore::new(
        cache,
        srv.local_addr(),
        srv.peer_id(),
        &Keypair::generate(),
        QuicStoreOptions::default(),
    )
    .unwrap()
}

async fn wait_count(store: &MemoryStore, n: u64) {
    let mut sub = store.subscribe().await.unwrap();
    let mut have = store.head().await.unwrap().seq;
    while have < n {
        tokio::time::timeout(T, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        have += 1;
    }
}

/// Append each change on `from`, one at a time, and time it until `to`'s
/// subscription yields it.
async fn propagation<S: AppendOnlyStore>(
    from: &S,
    to: &MemoryStore,
    live: Vec<Change>,
) -> Vec<Duration> {
    let mut sub = to.subscribe().await.unwrap();
    let mut times = Vec::with_capacity(live.len());
    for c in live {
        let id = c.id();
        let t = Instant::now();
        from.append(vec![c]).await.unwrap();
        let m = tokio::time::timeout(T, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m.id, id);
        times.push(t.elapsed());
    }
    times
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("CAIRN_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let samples: usize = std::env::var("CAIRN_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    println!("cairn-webrtc bench: {n} changes of 1 KiB, {samples} latency samples, loopback");

    // 1. Time to open.
    let mut raw_open = Vec::new();
    let mut rtc_open = Vec::new();
    let mut quic_open = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let (a, b) = RawChannel::pair(lo(), T).await.unwrap();
        raw_open.push(t.elapsed());
        drop((a, b));
        let (ka, kb) = (Keypair::generate(), Keypair::generate());
        let a = rtc_store(Arc::new(MemoryStore::new(sid())), &ka);
        let b = rtc_store(Arc::new(MemoryStore::new(sid())), &kb);
        let t = Instant::now();
        pair(&a, &b).await;
        rtc_open.push(t.elapsed());
        a.close().await;
        b.close().await;
        let srv = quic_server(Arc::new(MemoryStore::new(sid())));
        let t = Instant::now();
        let q = quic_store(&srv, Arc::new(MemoryStore::new(sid())));
        q.wait_connected(T).await.unwrap();
        quic_open.push(t.elapsed());
        q.close().await;
        srv.shutdown().await;
    }
    println!(
        "open: raw data channel p50 {:.1?}, WebRtcStore pairing p50 {:.1?}, QuicStore connect p50 {:.1?}",
        pct(raw_open.clone(), 0.5),
        pct(rtc_open.clone(), 0.5),
        pct(quic_open.clone(), 0.5)
    );

    // 2. Pull throughput.
    let data = changes(n, 1024, 1);
    let bytes: usize = data.iter().map(|c| c.payload.len()).sum();
    let src = Arc::new(MemoryStore::new(sid()));
    src.append(data.clone()).await.unwrap();

    let (a, mut b) = RawChannel::pair(lo(), T).await.unwrap();
    let wire = n * 1300; // about what the protocol moves per 1 KiB change
    let t = Instant::now();
    let sender = tokio::spawn(async move {
        let mut left = wire;
        while left > 0 {
            let k = left.min(1 << 20);
            a.send(vec![7u8; k]).await.unwrap();
            left -= k;
        }
        a
    });
    let mut got = 0;
    while got < wire {
        got += b.recv().await.unwrap().len();
    }
    let raw_pull = t.elapsed();
    drop(sender.await.unwrap());

    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let a = rtc_store(src.clone(), &ka);
    let dst = Arc::new(MemoryStore::new(sid()));
    let b = rtc_store(dst.clone(), &kb);
    let t = Instant::now();
    pair(&b, &a).await; // b offers; pairing returns after b's first pull
    wait_count(&dst, n as u64).await;
    let rtc_pull = t.elapsed();
    a.close().await;
    b.close().await;

    let srv = quic_server(src.clone());
    let qdst = Arc::new(MemoryStore::new(sid()));
    let t = Instant::now();
    let q = quic_store(&srv, qdst.clone());
    q.wait_connected(T).await.unwrap();
    wait_count(&qdst, n as u64).await;
    let quic_pull = t.elapsed();
    q.close().await;
    srv.shutdown().await;
    let mbs = |d: Duration, b: usize| b as f64 / d.as_secs_f64() / 1e6;
    println!(
        "pull {n}×1 KiB: WebRtcStore {:.2?} ({:.0} changes/s, {:.1} MB/s payload); raw data channel {:.2?} for {:.0} MB ({:.1} MB/s); QuicStore {:.2?} ({:.0} changes/s)",
        rtc_pull,
        n as f64 / rtc_pull.as_secs_f64(),
        mbs(rtc_pull, bytes),
        raw_pull,
        wire as f64 / 1e6,
        mbs(raw_pull, wire),
        quic_pull,
        n as f64 / quic_pull.as_secs_f64()
    );

    // 3. Live propagation.
    let (mut ra, mut rb) = RawChannel::pair(lo(), T).await.unwrap();
    let mut raw_live = Vec::new();
    for _ in 0..samples {
        let t = Instant::now();
        ra.send(vec![1u8; 1024]).await.unwrap();
        rb.recv().await.unwrap();
        rb.send(vec![2u8; 1024]).await.unwrap();
        ra.recv().await.unwrap();
        raw_live.push(t.elapsed() / 2);
    }
    drop((ra, rb));

    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let a = rtc_store(Arc::new(MemoryStore::new(sid())), &ka);
    let bc = Arc::new(MemoryStore::new(sid()));
    let b = rtc_store(bc.clone(), &kb);
    pair(&a, &b).await;
    let rtc_live = propagation(&a, &bc, changes(samples, 1024, 2)).await;
    a.close().await;
    b.close().await;

    let backing = Arc::new(MemoryStore::new(sid()));
    let srv = quic_server(backing.clone());
    let q = quic_store(&srv, Arc::new(MemoryStore::new(sid())));
    q.wait_connected(T).await.unwrap();
    let quic_live = propagation(&q, &backing, changes(samples, 1024, 3)).await;
    q.close().await;
    srv.shutdown().await;
    println!(
        "live: WebRtcStore p50 {:.2?} p99 {:.2?}; raw data channel (one way) p50 {:.2?} p99 {:.2?}; QuicStore p50 {:.2?} p99 {:.2?}",
        pct(rtc_live.clone(), 0.5),
        pct(rtc_live, 0.99),
        pct(raw_live.clone(), 0.5),
        pct(raw_live, 0.99),
        pct(quic_live.clone(), 0.5),
        pct(quic_live, 0.99)
    );
}
