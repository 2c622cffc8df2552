//! A sync that fails part way is completed by running it again: nothing
//! lost, nothing duplicated.

use std::sync::Arc;

use cairn::sync::{pull, push};
use cairn::{AppendOnlyStore, SyncOptions};

use crate::faults::{FailOn, FailingStore};
use crate::util::{chain, check_store, doc, id_set, sid};
use crate::{CaseResult, Outcome, StoreFactory, ensure, ensure_eq};

/// The local store fails after two appends; the pull errors; a rerun
/// completes it without loss or duplicates.
pub async fn interrupted_pull_resumes_without_loss_or_duplicates(
    f: &dyn StoreFactory,
) -> CaseResult {
    let local = f.create(&sid()).await?;
    let remote = f.create(&sid()).await?;
    remote.append(chain(&doc("r"), 50, 32)).await?;
    local.append(chain(&doc("l"), 5, 32)).await?;
    let flaky = FailingStore::new(Arc::clone(&local), FailOn::Append, 2);
    let opts = SyncOptions {
        batch_changes: 10,
        ..SyncOptions::default()
    };
    let first = pull(&flaky, remote.as_ref(), &opts).await;
    ensure!(
        first.is_err(),
        "the injected failure must surface as an error"
    );
    ensure_eq!(
        local.head().await?.seq,
        5 + 20,
        "two whole batches landed, nothing partial"
    );
    flaky.disarm();
    let r = pull(&flaky, remote.as_ref(), &opts).await?;
    ensure_eq!(r.pulled.changes, 30, "the rerun copies exactly the rest");
    ensure_eq!(local.head().await?.seq, 55, "no duplicates");
    let mut want = id_set(remote.as_ref()).await?;
    want.extend(id_set(local.as_ref()).await?);
    ensure_eq!(id_set(local.as_ref()).await?, want, "nothing lost");
    check_store(local.as_ref()).await?;
    Ok(Outcome::Passed)
}

/// The source fails while serving `get_changes` during a push; a rerun
/// completes it without loss or duplicates.
pub async fn interrupted_push_resumes_without_loss_or_duplicates(
    f: &dyn StoreFactory,
) -> CaseResult {
    let local = f.create(&sid()).await?;
    let remote = f.create(&sid()).await?;
    local.append(chain(&doc("l"), 40, 32)).await?;
    let flaky = FailingStore::new(Arc::clone(&local), FailOn::GetChanges, 1);
    let opts = SyncOptions {
        batch_changes: 8,
        ..SyncOptions::default()
    };
    ensure!(
        push(&flaky, remote.as_ref(), &opts).await.is_err(),
        "push must fail"
    );
    ensure_eq!(remote.head().await?.seq, 8, "one batch landed");
    flaky.disarm();
    let r = push(&flaky, remote.as_ref(), &opts).await?;
    ensure_eq!(r.pushed.changes, 32, "the rest");
    ensure_eq!(remote.head().await?.seq, 40, "no duplicates");
    ensure_eq!(
        id_set(remote.as_ref()).await?,
        id_set(local.as_ref()).await?,
        "nothing lost"
    );
    check_store(remote.as_ref()).await?;
    Ok(Outcome::Passed)
}
