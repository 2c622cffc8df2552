//! Durable stores: everything acknowledged survives closing and reopening.

use cairn::{AppendOnlyStore, ChangeKind};
use futures::StreamExt;

use crate::util::{PATIENCE, chain, change, check_store, doc, id_set, ids, sid};
use crate::{CaseResult, Failure, Outcome, StoreFactory, ensure, ensure_eq};

const NO_REOPEN: Outcome = Outcome::Skipped("the factory cannot reopen stores (not durable)");

/// Every acknowledged change is there after reopening, intact.
pub async fn reopen_keeps_everything_acknowledged(f: &dyn StoreFactory) -> CaseResult {
    if !f.supports_reopen() {
        return Ok(NO_REOPEN);
    }
    let s = f.open_named(&sid(), "keep").await?;
    let mut all = Vec::new();
    for d in ["a", "b", "c"] {
        let c = chain(&doc(d), 10, 200);
        all.extend(c.clone());
        s.append(c).await?;
    }
    let before = id_set(s.as_ref()).await?;
    drop(s);
    let s = f.open_named(&sid(), "keep").await?;
    ensure_eq!(
        id_set(s.as_ref()).await?,
        before,
        "the same ids after reopen"
    );
    let got = s.get_changes(&ids(&all)).await?;
    ensure!(got == all, "the same bytes after reopen");
    check_store(s.as_ref()).await?;
    Ok(Outcome::Passed)
}

/// The epoch is unchanged and sequence numbers continue after reopening.
pub async fn reopen_keeps_epoch_and_continues_sequence(f: &dyn StoreFactory) -> CaseResult {
    if !f.supports_reopen() {
        return Ok(NO_REOPEN);
    }
    let s = f.open_named(&sid(), "seq").await?;
    s.append(chain(&doc("a"), 7, 8)).await?;
    let head = s.head().await?;
    drop(s);
    let s = f.open_named(&sid(), "seq").await?;
    ensure_eq!(s.head().await?, head, "same epoch and seq");
    let more = chain(&doc("b"), 3, 8);
    s.append(more.clone()).await?;
    let tail: Vec<_> = s.scan(head.seq, 10).await?;
    ensure_eq!(
        tail.iter().map(|i| i.seq).collect::<Vec<_>>(),
        vec![8, 9, 10],
        "numbering continues"
    );
    ensure_eq!(
        tail.iter().map(|i| i.meta.id).collect::<Vec<_>>(),
        ids(&more),
        "the new changes"
    );
    Ok(Outcome::Passed)
}

/// The document index and live subscriptions work on a reopened store.
pub async fn reopen_keeps_doc_index_and_subscribe_works(f: &dyn StoreFactory) -> CaseResult {
    if !f.supports_reopen() {
        return Ok(NO_REOPEN);
    }
    let d = doc("idx");
    let s = f.open_named(&sid(), "idx").await?;
    let c = chain(&d, 5, 8);
    s.append(c.clone()).await?;
    s.append(chain(&doc("other"), 2, 8)).await?;
    drop(s);
    let s = f.open_named(&sid(), "idx").await?;
    let got: Vec<_> = s
        .changes_for_doc(&d, false)
        .await?
        .iter()
        .map(|m| m.id)
        .collect();
    ensure_eq!(got, ids(&c), "doc index survives reopen");
    let mut sub = s.subscribe().await?;
    let fresh = change(&d, ChangeKind::Change, &[c[4].id()], 8);
    s.append(vec![fresh.clone()]).await?;
    match tokio::time::timeout(PATIENCE, sub.next()).await {
        Ok(Some(Ok(m))) => ensure_eq!(m.id, fresh.id(), "the new change is delivered"),
        other => return Err(Failure(format!("no delivery after reopen: {other:?}"))),
    }
    Ok(Outcome::Passed)
}
