//! Crash safety: appenders storm one store; the server is killed with
//! `pg_ctl stop -m immediate` (no checkpoint: crash recovery at restart)
//! after a random number of acknowledgements, then restarted. Every
//! acknowledged change must be there, every batch must be all there or not
//! at all, the store must be consistent, and the same store handle must
//! work again once the server is back.
//!
//! This test kills its server, so it always runs its own throwaway cluster
//! (never `CAIRN_PG_URL`'s): it needs PostgreSQL's server programs, and
//! fails saying which package to install if they are missing.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::{AppendOnlyStore, Change, ChangeBuilder, ChangeId, ChangeKind, DocId, StoreId};
use cairn_postgres::{PostgresDb, PostgresOptions};
use common::cluster::Cluster;

const ROUNDS: usize = 3;
const APPENDERS: u64 = 6;
const DEADLINE: Duration = Duration::from_secs(60);

/// A tiny deterministic generator (xorshift), seeded per run and printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn change(doc: &DocId, n: u64, len: usize) -> Change {
    let mut payload = n.to_be_bytes().to_vec();
    payload.resize(len.max(8), (n % 251) as u8);
    ChangeBuilder::new(ChangeKind::Change, doc.clone())
        .created_at(n)
        .payload(payload)
        .build()
        .unwrap()
}

#[derive(Default)]
struct Ledger {
    /// Every batch an appender tried, acknowledged or not.
    tried: Mutex<Vec<Vec<ChangeId>>>,
    acked: Mutex<HashSet<ChangeId>>,
    acks: AtomicU64,
    /// Appends that failed (the server was down).
    errors: AtomicU64,
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn immediate_server_stop_during_an_append_storm_loses_nothing_acknowledged() {
    let mut cluster = tokio::task::spawn_blocking(Cluster::start_new)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the crash test needs its own PostgreSQL cluster: {e}"));
    let url = cluster.url();
    let seed = cairn::random_u64() | 1;
    eprintln!("crash test seed {seed:#x}");
    let mut rng = Rng(seed);
    let sid = StoreId::new("crash/storm").unwrap();
    let opts = PostgresOptions::default().pool_size(8).retries(3);
    let store = PostgresDb::connect_with(&url, opts.clone())
        .await
        .unwrap()
        .store(sid.clone())
        .await
        .unwrap();
    let ledger = Arc::new(Ledger::default());
    let counter = Arc::new(AtomicU64::new(1));

    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..APPENDERS {
            let (store, ledger, stop, counter) =
                (store.clone(), ledger.clone(), stop.clone(), counter.clone());
            let mut rng = Rng(seed ^ (t + 1) ^ ((round as u64) << 32));
            tasks.push(tokio::spawn(async move {
                let doc = DocId::new(format!("doc-{t}")).unwrap();
                for _ in 0..1_000_000u32 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let n = rng.range(1, 9);
                    let batch: Vec<Change> = (0..n)
                        .map(|_| {
                            let k = counter.fetch_add(1, Ordering::Relaxed);
                            change(&doc, k, rng.range(8, 4000) as usize)
                        })
                        .collect();
                    let ids: Vec<ChangeId> = batch.iter().map(Change::id).collect();
                    ledger.tried.lock().unwrap().push(ids.clone());
                    match store.append(batch).await {
                        Ok(out) => {
                            assert_eq!(out.new, ids, "a fresh batch is all new, in order");
                            ledger.acked.lock().unwrap().extend(ids);
                            ledger.acks.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert!(e.is_retryable(), "a server crash is a retryable error: {e}");
                            ledger.errors.fetch_add(1, Ordering::Relaxed);
                            // Back off while the server is down.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }));
        }
        let before = ledger.acks.load(Ordering::Relaxed);
        let kill_after = before + rng.range(20, 400);
        wait_for("acknowledgements", || {
            ledger.acks.load(Ordering::Relaxed) >= kill_after
        })
        .await;
        cluster = tokio::task::spawn_blocking(move || {
            cluster.stop_immediate().unwrap();
            cluster
        })
        .await
        .unwrap();
        let at_kill = ledger.acks.load(Ordering::Relaxed);
        cluster = tokio::task::spawn_blocking(move || {
            cluster.start().unwrap();
            cluster
        })
        .await
        .unwrap();
        // The old handle recovers (its pool reconnects) and keeps appending.
        wait_for("acknowledgements after the restart", || {
            ledger.acks.load(Ordering::Relaxed) >= at_kill + 10
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        verify(&url, &sid, &opts, &ledger, round).await;
    }
    let acked = ledger.acked.lock().unwrap().len();
    let errors = ledger.errors.load(Ordering::Relaxed);
    eprintln!("{ROUNDS} crash rounds, {acked} acknowledged changes, {errors} failed appends");
    assert!(errors > 0, "the kills interrupted appends in flight");
    drop(cluster);
}

async fn verify(url: &str, sid: &StoreId, opts: &PostgresOptions, ledger: &Ledger, round: usize) {
    // A new pool: what a restarted relay would see.
    let store = PostgresDb::connect_with(url, opts.clone())
        .await
        .unwrap()
        .store(sid.clone())
        .await
        .unwrap();
    let acked: Vec<ChangeId> = ledger.acked.lock().unwrap().iter().copied().collect();
    let held = store.has_changes(&acked).await.unwrap();
    let lost = held.iter().filter(|h| !**h).count();
    assert_eq!(lost, 0, "round {round}: {lost} acknowledged changes lost");
    let tried = ledger.tried.lock().unwrap().clone();
    for batch in &tried {
        let held = store.has_changes(batch).await.unwrap();
        assert!(
            held.iter().all(|h| *h) || held.iter().all(|h| !*h),
            "round {round}: a batch of {} is half visible: {held:?}",
            batch.len()
        );
    }
    let count = store
        .check_consistency()
        .await
        .unwrap_or_else(|e| panic!("round {round}: inconsistent after the crash: {e}"));
    assert!(count >= acked.len() as u64);
    assert_eq!(store.head().await.unwrap().seq, count);
}
