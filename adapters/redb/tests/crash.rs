//! Crash safety: a child process appends in a loop and prints each
//! acknowledged id; the parent kills it with SIGKILL at a random moment,
//! reopens the file and checks that every acknowledged change is there and
//! the file is consistent.
//!
//! The child is this test binary itself, re-executed with
//! `CAIRN_REDB_CRASH_CHILD=<path>` to run `crash_child`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn::{AppendOnlyStore, ChangeId};
use cairn_redb::RedbStore;
use common::{Rng, change, doc, sid};

const CHILD_ENV: &str = "CAIRN_REDB_CRASH_CHILD";

/// Child mode: append forever from several tasks, printing `ACK <id>` for
/// every change once `append` has returned. A no-op in a normal test run.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = RedbStore::open(&path, sid()).await.unwrap();
        println!("READY");
        let mut tasks = Vec::new();
        for t in 0..4u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::new(cairn::random_u64() ^ t);
                let d = doc(&format!("doc-{}", rng.next() % 8));
                loop {
                    let n = rng.range(1, 6) as usize;
                    let batch: Vec<_> = (0..n)
                        .map(|_| change(&d, &[], rng.range(8, 3000) as usize))
                        .collect();
                    let out = store.append(batch).await.unwrap();
                    let mut stdout = std::io::stdout().lock();
                    for id in out.new {
                        writeln!(stdout, "ACK {id}").unwrap();
                    }
                    stdout.flush().unwrap();
                }
            }));
        }
        // The tasks never end: the parent kills this process.
        futures::future::join_all(tasks).await;
    });
}

/// Run `iterations` crash-and-recover rounds against one file.
fn crash_rounds(iterations: usize, max_acks: u64) {
    let seed = cairn::random_u64();
    eprintln!("crash test seed {seed:#x}");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let exe = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut acked: HashSet<ChangeId> = HashSet::new();
    let start = Instant::now();
    for round in 0..iterations {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Kill after a random number of acknowledgements (0 = right after
        // the open), sometimes after a further random delay.
        let kill_after = rng.range(0, max_acks + 1);
        let mut seen = 0u64;
        let mut ready = false;
        while seen < kill_after || !ready {
            let Some(line) = lines.next() else { break };
            let line = line.unwrap();
            if line.ends_with("READY") {
                ready = true;
            } else if let Some(hex) = line.strip_prefix("ACK ") {
                acked.insert(hex.parse().unwrap());
                seen += 1;
            }
        }
        assert!(
            ready,
            "round {round}: the child exited before opening the store"
        );
        if rng.next().is_multiple_of(2) {
            std::thread::sleep(Duration::from_micros(rng.range(0, 5000)));
        }
        child.kill().unwrap();
        // Acks printed before the kill landed are acknowledged too.
        for line in lines {
            let Ok(line) = line else { break };
            if let Some(hex) = line.strip_prefix("ACK ") {
                acked.insert(hex.parse().unwrap());
            }
        }
        child.wait().unwrap();
        rt.block_on(verify(&path, &acked, round));
    }
    eprintln!(
        "{iterations} crash rounds, {} acknowledged changes, {:?}",
        acked.len(),
        start.elapsed()
    );
}

async fn verify(path: &Path, acked: &HashSet<ChangeId>, round: usize) {
    let store = RedbStore::open(path, sid())
        .await
        .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
    let ids: Vec<ChangeId> = acked.iter().copied().collect();
    let held = store.has_changes(&ids).await.unwrap();
    let lost: Vec<_> = ids.iter().zip(&held).filter(|(_, h)| !**h).collect();
    assert!(
        lost.is_empty(),
        "round {round}: {} acknowledged changes lost",
        lost.len()
    );
    let report = store
        .check_consistency()
        .await
        .unwrap_or_else(|e| panic!("round {round}: inconsistent after crash: {e}"));
    let head = store.head().await.unwrap();
    assert_eq!(head.seq, report.changes, "round {round}: head == count");
    assert!(report.changes >= acked.len() as u64);
    // The store is writable after recovery.
    let c = change(&doc("after-crash"), &[], 16);
    store.append(vec![c]).await.unwrap();
}

#[test]
fn crash_at_random_moments_loses_nothing_acknowledged() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    crash_rounds(32, 60);
}

#[test]
#[ignore = "stress test: run with --ignored"]
fn stress_crash_many_rounds() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let rounds = std::env::var("CAIRN_REDB_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    crash_rounds(rounds, 400);
}
