//! Writing to one document through `Database::update`, by the length of
//! its history: commits per second for a document that already holds
//! N commits (`doc_write history=<N> commits_per_s=<r>`).
//!
//! The history is written through `Database` too, untimed; then edits are
//! timed for at least `CAIRN_BENCH_SECS` seconds (default 2) and 200
//! commits. Histories: `CAIRN_BENCH_HISTORIES` (comma-separated, default
//! `100,1000,10000`). Default `DbOptions` (a snapshot every 50 commits),
//! a memory store; `CAIRN_BENCH_OPEN_DOCS=0` keeps no document open, so
//! every edit loads it (the cold path).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::ROOT;
use automerge::transaction::Transactable;
use cairn::DynAppendOnlyStore;
use cairn_memory::MemoryStore;
use cairn_tenant::{DbOptions, Tenant, TenantConfig, db_store_id, directory_store_id};

fn main() {
    let histories: Vec<usize> = std::env::var("CAIRN_BENCH_HISTORIES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("CAIRN_BENCH_HISTORIES: numbers"))
        .collect();
    let secs: f64 = std::env::var("CAIRN_BENCH_SECS")
        .ok()
        .map(|s| s.parse().expect("CAIRN_BENCH_SECS: a number"))
        .unwrap_or(2.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let open_docs: usize = std::env::var("CAIRN_BENCH_OPEN_DOCS")
        .ok()
        .map(|s| s.parse().expect("CAIRN_BENCH_OPEN_DOCS: a number"))
        .unwrap_or(DbOptions::default().open_docs);
    rt.block_on(async {
        for n in histories {
            let rate = run(n, open_docs, Duration::from_secs_f64(secs)).await;
            println!("doc_write history={n} open_docs={open_docs} commits_per_s={rate:.0}");
        }
    });
}

async fn run(history: usize, open_docs: usize, min: Duration) -> f64 {
    let (config, admin) = TenantConfig::create("bench").unwrap();
    let dir: Arc<DynAppendOnlyStore> =
        Arc::new(MemoryStore::new(directory_store_id("bench").unwrap()));
    let tenant = Tenant::open(config, dir).await.unwrap();
    let store: Arc<DynAppendOnlyStore> =
        Arc::new(MemoryStore::new(db_store_id("bench", "docs").unwrap()));
    let db = tenant
        .open_db(
            "docs",
            store,
            admin,
            DbOptions {
                open_docs,
                ..DbOptions::default()
            },
        )
        .await
        .unwrap();
    let doc = db
        .create(|d| d.put(ROOT, "n", 0_i64).map(|_| ()))
        .await
        .unwrap();
    for i in 1..history {
        let i = i as i64;
        db.update(&doc, move |d| d.put(ROOT, "n", i).map(|_| ()))
            .await
            .unwrap();
    }
    let start = Instant::now();
    let mut done = 0u64;
    // Bounded by the clock and the count.
    while done < 200 || start.elapsed() < min {
        let v = done as i64;
        db.update(&doc, move |d| d.put(ROOT, "m", v).map(|_| ()))
            .await
            .unwrap();
        done += 1;
    }
    done as f64 / start.elapsed().as_secs_f64()
}
