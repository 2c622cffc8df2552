//! Helpers for writing cases: unique changes, small histories, store checks.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn::{
    AppendOnlyStore, Change, ChangeBuilder, ChangeId, ChangeKind, ChangeMeta, DocId, Keypair,
    StoreId,
};
use futures::StreamExt;

use crate::Failure;

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// How long a case waits for something that should happen promptly before
/// it fails (not a sleep: the wait ends as soon as the event arrives).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The store id most cases use.
pub fn sid() -> StoreId {
    StoreId::new("conformance/db").unwrap_or_else(|_| unreachable!())
}

/// A document id.
pub fn doc(name: &str) -> DocId {
    DocId::new(name).unwrap_or_else(|_| unreachable!())
}

fn unique() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A new, unique, unsigned change to `doc` with `deps` and a payload of
/// `len` bytes.
pub fn change(doc_id: &DocId, kind: ChangeKind, deps: &[ChangeId], len: usize) -> Change {
    let n = unique();
    let mut payload = n.to_be_bytes().to_vec();
    payload.resize(len.max(8), (n % 251) as u8);
    ChangeBuilder::new(kind, doc_id.clone())
        .deps(deps.iter().copied())
        .created_at(n)
        .payload(payload)
        .build()
        .unwrap_or_else(|_| unreachable!())
}

/// A new unique change signed by `kp`.
pub fn signed(kp: &Keypair, doc_id: &DocId, deps: &[ChangeId]) -> Change {
    let n = unique();
    ChangeBuilder::new(ChangeKind::Change, doc_id.clone())
        .deps(deps.iter().copied())
        .created_at(n)
        .payload(n.to_be_bytes().to_vec())
        .sign(kp)
        .unwrap_or_else(|_| unreachable!())
}

/// `n` changes to `doc`, each depending on the previous one.
pub fn chain(doc_id: &DocId, n: usize, payload: usize) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::with_capacity(n);
    for i in 0..n {
        let deps: Vec<ChangeId> = out.last().map(|c| vec![c.id()]).unwrap_or_default();
        let kind = if i == 0 {
            ChangeKind::Create
        } else {
            ChangeKind::Change
        };
        out.push(change(doc_id, kind, &deps, payload));
    }
    out
}

/// Ids of `changes`.
pub fn ids(changes: &[Change]) -> Vec<ChangeId> {
    changes.iter().map(Change::id).collect()
}

/// The set of ids a store holds.
pub async fn id_set(store: &dyn AppendOnlyStore) -> Result<BTreeSet<ChangeId>, Failure> {
    Ok(store.all_change_ids().await?.into_iter().collect())
}

/// Check a store's invariants: `head.seq` equals the number of ids, scan
/// is gapless from 1, scan and `all_change_ids` agree, and every change
/// passes its integrity check.
pub async fn check_store(store: &dyn AppendOnlyStore) -> Result<(), Failure> {
    let head = store.head().await?;
    let all = store.all_change_ids().await?;
    crate::ensure!(
        all.windows(2).all(|w| w[0] < w[1]),
        "all_change_ids is not sorted and unique"
    );
    crate::ensure_eq!(
        head.seq,
        all.len() as u64,
        "head.seq must equal the number of changes"
    );
    let mut after = 0;
    let mut scanned = Vec::with_capacity(all.len());
    for _ in 0..=all.len() {
        let page = store.scan(after, 500).await?;
        if page.is_empty() {
            break;
        }
        for item in page {
            crate::ensure_eq!(
                item.seq,
                after + 1,
                "scan skipped or repeated a sequence number"
            );
            after = item.seq;
            scanned.push(item.meta.id);
        }
    }
    crate::ensure_eq!(after, head.seq, "scan must reach head.seq");
    scanned.sort_unstable();
    crate::ensure_eq!(scanned, all, "scan and all_change_ids disagree");
    for chunk in all.chunks(500) {
        let got = store.get_changes(chunk).await?;
        crate::ensure_eq!(got.len(), chunk.len(), "get_changes lost changes it lists");
        for c in got {
            if let Err(e) = c.check_integrity() {
                return Err(Failure(format!("stored change fails integrity: {e}")));
            }
        }
    }
    Ok(())
}

/// Read `n` items from a subscription, failing on error or after [`PATIENCE`].
pub async fn take(stream: &mut cairn::ChangeStream, n: usize) -> Result<Vec<ChangeMeta>, Failure> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(PATIENCE, stream.next()).await {
            Err(_) => {
                return Err(Failure(format!(
                    "subscription delivered {} of {n} changes within {PATIENCE:?}",
                    out.len()
                )));
            }
            Ok(None) => return Err(Failure("subscription ended early".into())),
            Ok(Some(Err(e))) => return Err(Failure(format!("subscription error: {e}"))),
            Ok(Some(Ok(m))) => out.push(m),
        }
    }
    Ok(out)
}
