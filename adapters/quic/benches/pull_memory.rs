//! Peak memory of a pull over QUIC, for growing store sizes: it must stay
//! flat (bounded by the sync batch), not grow with the store.
//!
//! A counting global allocator tracks live heap bytes. Each run serves a
//! memory store of N changes of 1 KiB, then pulls all of it through a
//! `QuicClient` into a sink that keeps only ids, and reports the peak heap
//! growth during the pull (client and server sides together, since both are
//! in this process; the served store itself is allocated before the
//! baseline). `cargo bench -p cairn-quic --bench pull_memory`
//! (`CAIRN_BENCH_SIZES=100000,1000000,2000000` picks the store sizes; the
//! default is 25k to 200k; `CAIRN_BENCH_DIRECT=1` pulls from the store
//! itself, in process, for the sync engine's share without the wire).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]
// The counting allocator below must implement `GlobalAlloc`, which is unsafe;
// it only forwards to `System` and adds counters. No other code here is unsafe.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cairn::sync::pull;
use cairn::{
    AppendOnlyStore, AppendOutcome, Change, ChangeBuilder, ChangeId, ChangeKind, ChangeStream,
    DocId, Head, Keypair, Result, ScanItem, StoreId, SyncOptions,
};
use cairn_memory::MemoryStore;
use cairn_protocol::RemoteCalls;
use cairn_quic::{Acl, QuicClient, QuicServer, ServerOptions, Stores};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The remote side of the pull, through the wire protocol.
#[derive(Debug)]
struct Remote(QuicClient, StoreId);

#[async_trait]
impl AppendOnlyStore for Remote {
    fn store_id(&self) -> &StoreId {
        &self.1
    }
    async fn append(&self, c: Vec<Change>) -> Result<AppendOutcome> {
        self.0.remote_append(c).await
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        self.0.remote_get_changes(ids).await
    }
    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        self.0.remote_has_changes(ids).await
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.0.remote_scan(after, limit).await
    }
    async fn head(&self) -> Result<Head> {
        self.0.remote_head().await
    }
    async fn subscribe(&self) -> Result<ChangeStream> {
        Ok(Box::pin(futures::stream::pending()))
    }
}

/// A target that keeps only the ids it was given (32 bytes a change).
#[derive(Debug)]
struct Sink(StoreId, Mutex<HashSet<ChangeId>>);

#[async_trait]
impl AppendOnlyStore for Sink {
    fn store_id(&self) -> &StoreId {
        &self.0
    }
    async fn append(&self, c: Vec<Change>) -> Result<AppendOutcome> {
        let mut s = self.1.lock().unwrap();
        let new = c
            .iter()
            .map(Change::id)
            .filter(|id| s.insert(*id))
            .collect();
        Ok(AppendOutcome { new, duplicates: 0 })
    }
    async fn get_changes(&self, _: &[ChangeId]) -> Result<Vec<Change>> {
        Ok(Vec::new())
    }
    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        let s = self.1.lock().unwrap();
        Ok(ids.iter().map(|id| s.contains(id)).collect())
    }
    async fn scan(&self, _: u64, _: usize) -> Result<Vec<ScanItem>> {
        Ok(Vec::new())
    }
    async fn head(&self) -> Result<Head> {
        Ok(Head {
            epoch: 1,
            seq: self.1.lock().unwrap().len() as u64,
        })
    }
    async fn subscribe(&self) -> Result<ChangeStream> {
        Ok(Box::pin(futures::stream::pending()))
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sid = StoreId::new("bench/db").unwrap();
    println!("| changes in store | store size | peak heap growth during the pull | per change |");
    println!("|---:|---:|---:|---:|");
    let sizes: Vec<usize> = std::env::var("CAIRN_BENCH_SIZES")
        .unwrap_or_else(|_| "25000,50000,100000,200000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("CAIRN_BENCH_SIZES: numbers"))
        .collect();
    for n in sizes {
        let backing = Arc::new(MemoryStore::new(sid.clone()));
        for start in (0..n).step_by(10_000) {
            let batch: Vec<Change> = (start..(start + 10_000).min(n))
                .map(|i| {
                    let mut p = vec![(i % 251) as u8; 1024];
                    p[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    ChangeBuilder::new(ChangeKind::Change, DocId::new("d").unwrap())
                        .created_at(i as u64)
                        .payload(p)
                        .build()
                        .unwrap()
                })
                .collect();
            backing.append(batch).await.unwrap();
        }
        let (skey, ckey) = (Keypair::generate(), Keypair::generate());
        let server = QuicServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            &skey,
            Arc::new(Stores::new().with(backing.clone())),
            Arc::new(Acl::open()),
            ServerOptions::default(),
        )
        .unwrap();
        let client =
            QuicClient::connect(server.local_addr(), server.peer_id(), &ckey, &sid, 16 << 20)
                .await
                .unwrap();
        let remote = Remote(client, sid.clone());
        let sink = Sink(sid.clone(), Mutex::new(HashSet::with_capacity(n)));
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        // CAIRN_BENCH_DIRECT=1: the same pull from the store itself, in
        // process (the sync engine's share of the peak, without the wire).
        let r = if std::env::var_os("CAIRN_BENCH_DIRECT").is_some() {
            pull(&sink, &*backing, &SyncOptions::default()).await
        } else {
            pull(&sink, &remote, &SyncOptions::default()).await
        }
        .unwrap();
        assert_eq!(r.pulled.changes as usize, n);
        let peak = PEAK.load(Ordering::Relaxed) - base;
        // The sink's id set was pre-sized, so it is not part of the growth.
        println!(
            "| {n} | {} MiB | {:.1} MiB | {} B |",
            (n * 1024) >> 20,
            peak as f64 / (1 << 20) as f64,
            peak / n
        );
        drop(remote);
        server.shutdown().await;
    }
}
