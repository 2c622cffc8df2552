//! Memory store throughput: append, find_new_changes, and a pull between
//! two stores, beside a plain `HashMap` doing the same inserts.
//!
//! Run with `cargo bench -p cairn-memory` (set `CAIRN_BENCH_N` to change the
//! number of changes, default 100,000 of 1 KiB each).

#![allow(clippy::expect_used)] // a benchmark: bad setup should stop it loudly

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use cairn::sync::pull;
use cairn::{
    AppendOnlyStore, Change, ChangeBuilder, ChangeId, ChangeKind, DocId, StoreId, SyncOptions,
};
use cairn_memory::MemoryStore;

fn changes(n: usize, size: usize) -> Vec<Change> {
    (0..n)
        .map(|i| {
            let mut payload = vec![(i % 251) as u8; size];
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            ChangeBuilder::new(
                ChangeKind::Change,
                DocId::new(format!("doc-{}", i % 1000)).expect("valid doc id"),
            )
            .created_at(i as u64)
            .payload(payload)
            .build()
            .expect("valid change")
        })
        .collect()
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:>12.0}/s", n as f64 / d.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> cairn::Result<()> {
    let n: usize = std::env::var("CAIRN_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let sid = StoreId::new("bench/db")?;
    let data = changes(n, 1024);
    println!("memory store, {n} changes of 1 KiB");

    // Baseline: the same records into a plain HashMap, no checks.
    let t = Instant::now();
    let mut raw: HashMap<ChangeId, Change> = HashMap::new();
    for c in &data {
        raw.insert(c.id(), c.clone());
    }
    let raw_insert = t.elapsed();
    black_box(&raw);

    let store = MemoryStore::new(sid.clone());
    let t = Instant::now();
    for chunk in data.chunks(1000) {
        store.append(chunk.to_vec()).await?;
    }
    let append = t.elapsed();

    let single = MemoryStore::new(sid.clone());
    let m = n.min(20_000);
    let t = Instant::now();
    for c in &data[..m] {
        single.append(vec![c.clone()]).await?;
    }
    let append_single = t.elapsed();

    let have: Vec<ChangeId> = data[..n / 2].iter().map(Change::id).collect();
    let t = Instant::now();
    let new = store.find_new_changes(&have).await?;
    let find = t.elapsed();
    assert_eq!(new.len(), n - n / 2);

    let target = MemoryStore::new(sid.clone());
    let t = Instant::now();
    let report = pull(&target, &store, &SyncOptions::default()).await?;
    let pull_time = t.elapsed();
    assert_eq!(report.pulled.changes, n as u64);

    let again = Instant::now();
    let report2 = pull(
        &target,
        &store,
        &SyncOptions::default().resume(report.state),
    )
    .await?;
    let noop = again.elapsed();
    assert_eq!(report2.pulled.changes, 0);

    // First sync between two stores that share all but 10 changes each way:
    // scanning vs set reconciliation.
    let (a, b) = (MemoryStore::new(sid.clone()), MemoryStore::new(sid.clone()));
    for chunk in data.chunks(10_000) {
        a.append(chunk.to_vec()).await?;
        b.append(chunk.to_vec()).await?;
    }
    let extra = changes(20, 1024)
        .into_iter()
        .map(|c| {
            ChangeBuilder::new(ChangeKind::Change, c.meta.doc_id.clone())
                .created_at(c.meta.created_at + 1_000_000_000)
                .payload(c.payload.clone())
                .build()
                .expect("valid change")
        })
        .collect::<Vec<_>>();
    a.append(extra[..10].to_vec()).await?;
    b.append(extra[10..].to_vec()).await?;
    let (a2, b2) = (MemoryStore::new(sid.clone()), MemoryStore::new(sid.clone()));
    for chunk in data.chunks(10_000) {
        a2.append(chunk.to_vec()).await?;
        b2.append(chunk.to_vec()).await?;
    }
    a2.append(extra[..10].to_vec()).await?;
    b2.append(extra[10..].to_vec()).await?;
    let scan_opts = SyncOptions {
        reconcile: cairn::Reconcile::Never,
        ..SyncOptions::default()
    };
    let t = Instant::now();
    let scanned = cairn::sync::sync(&a, &b, &scan_opts).await?;
    let scan_time = t.elapsed();
    let rec_opts = SyncOptions {
        reconcile: cairn::Reconcile::Always,
        ..SyncOptions::default()
    };
    let t = Instant::now();
    let d = cairn::reconcile::difference(&a2, &b2, &Default::default()).await?;
    let diff_time = t.elapsed();
    let t = Instant::now();
    let reconciled = cairn::sync::sync(&a2, &b2, &rec_opts).await?;
    let rec_time = t.elapsed();
    assert_eq!(reconciled.pulled.changes + reconciled.pushed.changes, 20);
    assert_eq!(scanned.pulled.changes + scanned.pushed.changes, 20);

    println!("| operation | time | rate | vs baseline |");
    println!("|---|---:|---:|---:|");
    println!(
        "| raw HashMap insert of {n} changes (baseline) | {raw_insert:.1?} | {} | 1.00× |",
        rate(n, raw_insert)
    );
    println!(
        "| append {n}, batches of 1000 (integrity checked) | {append:.1?} | {} | {:.2}× |",
        rate(n, append),
        raw_insert.as_secs_f64() / append.as_secs_f64()
    );
    println!(
        "| append {m}, batches of 1 | {append_single:.1?} | {} | {:.2}× |",
        rate(m, append_single),
        (raw_insert.as_secs_f64() * m as f64 / n as f64) / append_single.as_secs_f64()
    );
    println!(
        "| find_new_changes against {} ids | {find:.1?} | {} | |",
        have.len(),
        rate(n, find)
    );
    println!(
        "| pull {n} changes between two stores | {pull_time:.1?} | {} ({:.0} MiB/s) | |",
        rate(n, pull_time),
        (n * 1024) as f64 / (1 << 20) as f64 / pull_time.as_secs_f64()
    );
    println!("| incremental re-pull with saved state (nothing new) | {noop:.1?} | | |");
    println!(
        "| first sync, {n} shared + 10 new each way, scanning (baseline) | {scan_time:.1?} | {} ids examined | 1.00× |",
        scanned.pulled.examined + scanned.pushed.examined
    );
    println!(
        "| same, by set reconciliation | {rec_time:.1?} | {} ids examined, {} round trips | {:.1}× |",
        reconciled.pulled.examined + reconciled.pushed.examined,
        reconciled.pulled.reconcile_rounds,
        scan_time.as_secs_f64() / rec_time.as_secs_f64()
    );
    println!(
        "| the first `difference` of the two stores, folding each one's ids into its coded symbols | {diff_time:.1?} | {} symbols, {} round trips | |",
        d.symbols, d.rounds
    );
    Ok(())
}
