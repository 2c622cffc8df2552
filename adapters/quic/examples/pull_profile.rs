//! The pull of `benches/quic.rs` alone, for a profiler: `CAIRN_BENCH_N`
//! changes of 1 KiB (default 10,000) pulled into an empty `QuicStore` from a
//! server over a `MemoryStore`, on loopback.
//!
//! ```text
//! cargo build --release -p cairn-quic --example pull_profile
//! valgrind --tool=callgrind target/release/examples/pull_profile
//! ```
//!
//! With `CAIRN_PROFILE_WAIT=<secs>` it waits that long between setting up
//! and pulling, so that a sampling profiler attached by pid
//! (`perf record -p`) sees the pull alone.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::{AppendOnlyStore, ChangeBuilder, ChangeKind, DocId, Keypair, StoreId};
use cairn_memory::MemoryStore;
use cairn_quic::*;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("CAIRN_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let sid = StoreId::new("bench/db").unwrap();
    let skey = Keypair::generate();
    let ckey = Keypair::generate();
    let backing = Arc::new(MemoryStore::new(sid.clone()));
    let data: Vec<_> = (0..n)
        .map(|i| {
            ChangeBuilder::new(
                ChangeKind::Change,
                DocId::new(format!("doc-{}", i % 100)).unwrap(),
            )
            .created_at(i as u64)
            .payload(vec![(i % 251) as u8; 1024])
            .build()
            .unwrap()
        })
        .collect();
    for chunk in data.chunks(10_000) {
        backing.append(chunk.to_vec()).await.unwrap();
    }
    let server = QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &skey,
        Arc::new(Stores::new().with(backing)),
        Arc::new(Acl::open()),
        ServerOptions::default(),
    )
    .unwrap();
    if let Some(secs) = std::env::var("CAIRN_PROFILE_WAIT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        // Time to attach a profiler to the pull alone (`perf record -p`).
        println!("set up; pulling in {secs} s");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let store = QuicStore::new(
        Arc::new(MemoryStore::new(sid)),
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
    let (pull, cpu) = (t.elapsed(), cpu_seconds() - cpu);
    assert_eq!(store.head().await.unwrap().seq as usize, n);
    println!(
        "pull {n} x 1 KiB: {:.3} s, {cpu:.2} s of CPU (both sides)",
        pull.as_secs_f64()
    );
    store.close().await;
    server.shutdown().await;
}

/// User plus system CPU time of this process so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields 14 and 15 (utime, stime, in clock ticks of 1/100 s), after the
    // command name in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
