//! Many tasks at once: no lost append, no scan that skips a sequence number.

use std::collections::BTreeSet;

use cairn::{AppendOnlyStore, ChangeId, ChangeKind};

use crate::util::{change, check_store, doc, id_set, sid};
use crate::{CaseResult, Failure, Outcome, StoreFactory, ensure, ensure_eq};

const TASKS: usize = 8;
const PER_TASK: usize = 40;

/// Tasks appending concurrently lose nothing.
pub async fn concurrent_appends_lose_nothing(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let mut handles = Vec::new();
    let mut want = BTreeSet::new();
    for t in 0..TASKS {
        let batch: Vec<_> = (0..PER_TASK)
            .map(|_| change(&doc(&format!("t{t}")), ChangeKind::Change, &[], 16))
            .collect();
        want.extend(batch.iter().map(|c| c.id()));
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut new = 0;
            for c in batch {
                new += s.append(vec![c]).await?.new.len();
            }
            Ok::<usize, cairn::Error>(new)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h
            .await
            .map_err(|e| Failure(format!("task panicked: {e}")))??;
    }
    ensure_eq!(
        total,
        TASKS * PER_TASK,
        "every append reported its change as new"
    );
    ensure_eq!(id_set(s.as_ref()).await?, want, "every change present");
    check_store(s.as_ref()).await?;
    Ok(Outcome::Passed)
}

/// Readers scanning while writers append always see consecutive sequence
/// numbers, never N + 1 before N.
pub async fn concurrent_scans_never_skip_a_sequence(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let total = (TASKS * PER_TASK) as u64;
    let mut writers = Vec::new();
    for t in 0..TASKS {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_TASK / 4 {
                let batch: Vec<_> = (0..4)
                    .map(|_| change(&doc(&format!("w{t}-{i}")), ChangeKind::Change, &[], 8))
                    .collect();
                s.append(batch).await?;
            }
            Ok::<(), cairn::Error>(())
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..3 {
        let s = s.clone();
        readers.push(tokio::spawn(async move {
            let mut after = 0u64;
            let mut seen: Vec<ChangeId> = Vec::new();
            // Bounded: each productive round advances the cursor; idle
            // rounds yield to the writers.
            for _ in 0..1_000_000 {
                if after == total {
                    return Ok(seen);
                }
                let page = s.scan(after, 13).await?;
                if page.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                for item in page {
                    if item.seq != after + 1 {
                        return Err(Failure(format!("scan went from {after} to {}", item.seq)));
                    }
                    after = item.seq;
                    seen.push(item.meta.id);
                }
            }
            Err(Failure(format!("reader stalled at {after} of {total}")))
        }));
    }
    for w in writers {
        w.await
            .map_err(|e| Failure(format!("writer panicked: {e}")))??;
    }
    let all: BTreeSet<ChangeId> = id_set(s.as_ref()).await?;
    for r in readers {
        let seen = r
            .await
            .map_err(|e| Failure(format!("reader panicked: {e}")))??;
        ensure_eq!(seen.len() as u64, total, "a reader saw every change");
        ensure!(
            seen.iter().copied().collect::<BTreeSet<_>>() == all,
            "a reader saw the wrong set"
        );
    }
    Ok(Outcome::Passed)
}

/// Tasks appending the same batch at once store it once.
pub async fn concurrent_duplicate_appends_store_once(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let batch: Vec<_> = (0..20)
        .map(|_| change(&doc("d"), ChangeKind::Change, &[], 8))
        .collect();
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let (s, b) = (s.clone(), batch.clone());
        handles.push(tokio::spawn(async move { s.append(b).await }));
    }
    let mut new = 0;
    for h in handles {
        new += h
            .await
            .map_err(|e| Failure(format!("task panicked: {e}")))??
            .new
            .len();
    }
    ensure_eq!(new, 20, "exactly one append reports each change as new");
    ensure_eq!(s.head().await?.seq, 20, "stored once");
    Ok(Outcome::Passed)
}
