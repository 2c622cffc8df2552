//! `RedbStore` against raw redb writing the same records, on the same disk,
//! in the same run. Plain timing with `Instant`; prints a markdown table.
//!
//! ```text
//! cargo bench -p cairn-redb
//! ```
//!
//! Scale with environment variables:
//! - `CAIRN_BENCH_N` changes for batch sizes 100 and 1,000 (default 100,000)
//! - `CAIRN_BENCH_N1` changes for batch size 1 and the concurrent case (default 10,000)
//! - `CAIRN_BENCH_OPEN_N` changes in the store that is reopened (default 1,000,000; 0 skips)
//! - `CAIRN_BENCH_DIR` where the files go (default: a temporary directory under `target/`)

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::{AppendOnlyStore, Change, ChangeBuilder, ChangeKind, DocId, StoreId};
use cairn_redb::{Durability, RedbOptions, RedbStore};
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};

const RAW_CHANGES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("changes");
const RAW_PAYLOADS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("payloads");
const RAW_SEQS: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("seqs");

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn sid() -> StoreId {
    StoreId::new("bench/redb").unwrap()
}

/// `n` independent changes over 64 documents with `len`-byte payloads.
fn changes(n: usize, len: usize, salt: u64) -> Vec<Change> {
    (0..n)
        .map(|i| {
            let mut payload = vec![(i % 251) as u8; len];
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            ChangeBuilder::new(
                ChangeKind::Change,
                DocId::new(format!("doc-{}", i % 64)).unwrap(),
            )
            .created_at(salt.wrapping_add(i as u64))
            .payload(payload)
            .build()
            .unwrap()
        })
        .collect()
}

/// The records raw redb writes: id, encoded metadata, payload.
struct RawRecord {
    id: [u8; 32],
    meta: Vec<u8>,
    payload: Vec<u8>,
}

fn raw_records(changes: &[Change]) -> Vec<RawRecord> {
    changes
        .iter()
        .map(|c| RawRecord {
            id: *c.id().as_bytes(),
            meta: cairn::encoding::encode_meta(&c.meta),
            payload: c.payload.to_vec(),
        })
        .collect()
}

/// Raw redb: one durable transaction per `batch` records.
fn raw_append(path: &Path, records: &[RawRecord], batch: usize) -> Duration {
    let db = Database::create(path).unwrap();
    let start = Instant::now();
    let mut seq = 0u64;
    for chunk in records.chunks(batch) {
        let w = db.begin_write().unwrap();
        {
            let mut changes = w.open_table(RAW_CHANGES).unwrap();
            let mut payloads = w.open_table(RAW_PAYLOADS).unwrap();
            let mut seqs = w.open_table(RAW_SEQS).unwrap();
            for r in chunk {
                seq += 1;
                changes.insert(&r.id, r.meta.as_slice()).unwrap();
                payloads.insert(&r.id, r.payload.as_slice()).unwrap();
                seqs.insert(seq, &r.id).unwrap();
            }
        }
        w.commit().unwrap();
    }
    let elapsed = start.elapsed();
    let r = db.begin_read().unwrap();
    assert_eq!(
        r.open_table(RAW_SEQS).unwrap().len().unwrap(),
        records.len() as u64
    );
    elapsed
}

/// RedbStore: `append` of `batch` changes at a time, durable.
async fn cairn_append(path: &Path, changes: &[Change], batch: usize) -> Duration {
    let store = RedbStore::open(path, sid()).await.unwrap();
    let start = Instant::now();
    for chunk in changes.chunks(batch) {
        store.append(chunk.to_vec()).await.unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(store.head().await.unwrap().seq, changes.len() as u64);
    elapsed
}

/// RedbStore: `tasks` concurrent appenders of single changes (group commit).
async fn cairn_concurrent(path: &Path, changes: &[Change], tasks: usize) -> (Duration, u64) {
    let store = RedbStore::open(path, sid()).await.unwrap();
    let per = changes.len().div_ceil(tasks);
    let parts: Vec<Vec<Change>> = changes.chunks(per).map(|c| c.to_vec()).collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(parts.len() + 1));
    let mut handles = Vec::new();
    for part in parts {
        let (store, barrier) = (store.clone(), barrier.clone());
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            for c in part {
                store.append(vec![c]).await.unwrap();
            }
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    for h in handles {
        h.await.unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(store.head().await.unwrap().seq, changes.len() as u64);
    (elapsed, store.stats().commits)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn fmt_rate(r: f64) -> String {
    if r >= 10_000.0 {
        format!("{:.0}k", r / 1000.0)
    } else {
        format!("{r:.0}")
    }
}

fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    if let Some(path) = std::env::var_os(OPEN_ONLY) {
        open_only(Path::new(&path), env("CAIRN_BENCH_OPEN_N", 0));
        return;
    }
    let n = env("CAIRN_BENCH_N", 100_000);
    let n1 = env("CAIRN_BENCH_N1", 10_000);
    let open_n = env("CAIRN_BENCH_OPEN_N", 1_000_000);
    let base: PathBuf = std::env::var_os("CAIRN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut file_no = 0;
    let mut fresh = |name: &str| {
        file_no += 1;
        dir.path().join(format!("{name}-{file_no}.redb"))
    };

    println!("# cairn-redb vs raw redb ({} KiB payloads)\n", 1);
    println!("| case | raw redb | cairn-redb | ratio (cairn / raw) |");
    println!("|---|---:|---:|---:|");
    let mut rows = Vec::new();

    // Batch sizes 1 (durable commit per change), 100, 1,000.
    for (batch, count) in [(1usize, n1), (100, n), (1000, n)] {
        let cs = changes(count, 1024, batch as u64 * 1_000_000_000);
        let raw = raw_records(&cs);
        let p = fresh("raw");
        let t_raw = raw_append(&p, &raw, batch);
        std::fs::remove_file(&p).ok();
        let p = fresh("cairn");
        let t_cairn = rt.block_on(cairn_append(&p, &cs, batch));
        std::fs::remove_file(&p).ok();
        let (r_raw, r_cairn) = (rate(count, t_raw), rate(count, t_cairn));
        let row = format!(
            "| append {count} × 1 KiB, batch {batch} (changes/s) | {} | {} | {:.2}× |",
            fmt_rate(r_raw),
            fmt_rate(r_cairn),
            r_cairn / r_raw
        );
        println!("{row}");
        rows.push((batch, r_raw, r_cairn));
    }

    // Group commit: 16 concurrent appenders of single changes, against one
    // durable commit (fsync) per change.
    let cs = changes(n1, 1024, 7_000_000_000);
    let p = fresh("conc");
    let (t_conc, commits) = rt.block_on(cairn_concurrent(&p, &cs, 16));
    std::fs::remove_file(&p).ok();
    let r_conc = rate(n1, t_conc);
    let (_, raw1, cairn1) = rows[0];
    println!(
        "| 16 concurrent appenders of 1 change, group commit ({n1} changes, {commits} commits) vs one fsync per change (raw redb, batch 1) | {} | {} | {:.1}× |",
        fmt_rate(raw1),
        fmt_rate(r_conc),
        r_conc / raw1
    );
    println!(
        "| same, vs cairn-redb one append at a time | {} | {} | {:.1}× |",
        fmt_rate(cairn1),
        fmt_rate(r_conc),
        r_conc / cairn1
    );

    // Opening a large store.
    if open_n > 0 {
        let p = fresh("open");
        let build = Instant::now();
        rt.block_on(async {
            let store = RedbStore::open_with(
                &p,
                sid(),
                RedbOptions::default().durability(Durability::None),
            )
            .await
            .unwrap();
            let chunk = 10_000;
            let mut done = 0;
            while done < open_n {
                let k = chunk.min(open_n - done);
                store
                    .append(changes(k, 100, 9_000_000_000 + done as u64))
                    .await
                    .unwrap();
                done += k;
            }
        });
        let build = build.elapsed();
        let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        // Open in a fresh process, so its RSS is the open's alone.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env(OPEN_ONLY, &p)
            .env("CAIRN_BENCH_OPEN_N", open_n.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = String::from_utf8_lossy(&out.stdout);
        std::fs::remove_file(&p).ok();
        println!(
            "\nOpening a {open_n}-change store ({:.0} MiB file, 100-byte payloads, built in {:.1}s) \
             in a fresh process: {}",
            size as f64 / (1 << 20) as f64,
            build.as_secs_f64(),
            report.trim()
        );
    }
}

const OPEN_ONLY: &str = "CAIRN_BENCH_OPEN_ONLY";

/// Child mode: open the store at `path`, report time and RSS, exit.
fn open_only(path: &Path, open_n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rss_before = vm_rss_kib().unwrap_or(0);
    let start = Instant::now();
    let store = rt.block_on(RedbStore::open(path, sid())).unwrap();
    let t_open = start.elapsed();
    let rss_after = vm_rss_kib().unwrap_or(0);
    let head = rt.block_on(store.head()).unwrap();
    assert_eq!(head.seq, open_n as u64);
    let start = Instant::now();
    let page = rt.block_on(store.scan(open_n as u64 / 2, 100)).unwrap();
    let t_scan = start.elapsed();
    assert_eq!(page.len(), 100);
    println!(
        "open {:.1} ms; VmRSS {:.1} MiB before, {:.1} MiB after open; \
         first 100-change scan from the middle {:.2} ms",
        t_open.as_secs_f64() * 1000.0,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        t_scan.as_secs_f64() * 1000.0
    );
}
