//! The sync engine between stores of this kind, and with the reference store.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use cairn::sync::{pull, push, sync};
use cairn::{
    AppendOnlyStore, DynAppendOnlyStore, Error, Head, Keypair, RejectReason, SyncEvent,
    SyncOptions, SyncState, TrustedAuthors,
};
use cairn_memory::MemoryStore;

use crate::faults::FailingStore;
use crate::util::{chain, check_store, doc, id_set, ids, sid, signed};
use crate::{CaseResult, Outcome, StoreFactory, ensure, ensure_eq};

/// `pull` copies what the remote has and the local store lacks.
pub async fn pull_copies_missing_changes(f: &dyn StoreFactory) -> CaseResult {
    let local = f.create(&sid()).await?;
    let remote = f.create(&sid()).await?;
    let shared = chain(&doc("s"), 3, 32);
    local.append(shared.clone()).await?;
    remote.append(shared).await?;
    remote.append(chain(&doc("r"), 10, 32)).await?;
    let r = pull(local.as_ref(), remote.as_ref(), &SyncOptions::default()).await?;
    ensure_eq!(r.pulled.changes, 10, "ten changes pulled");
    ensure_eq!(r.pulled.bytes, 320, "payload bytes counted");
    ensure_eq!(r.pushed.changes, 0, "pull pushes nothing");
    ensure_eq!(
        id_set(local.as_ref()).await?,
        id_set(remote.as_ref()).await?,
        "local holds the remote's set"
    );
    ensure_eq!(remote.head().await?.seq, 13, "remote unchanged");
    check_store(local.as_ref()).await?;
    Ok(Outcome::Passed)
}

/// `push` copies what the local store has and the remote lacks.
pub async fn push_copies_missing_changes(f: &dyn StoreFactory) -> CaseResult {
    let local = f.create(&sid()).await?;
    let remote = f.create(&sid()).await?;
    local.append(chain(&doc("l"), 12, 16)).await?;
    let r = push(local.as_ref(), remote.as_ref(), &SyncOptions::default()).await?;
    ensure_eq!(r.pushed.changes, 12, "twelve changes pushed");
    ensure_eq!(r.pulled.changes, 0, "push pulls nothing");
    ensure_eq!(
        id_set(remote.as_ref()).await?,
        id_set(local.as_ref()).await?,
        "remote holds the local set"
    );
    check_store(remote.as_ref()).await?;
    Ok(Outcome::Passed)
}

/// `sync` leaves both stores with the union.
pub async fn bidirectional_sync_gives_union(f: &dyn StoreFactory) -> CaseResult {
    let a = f.create(&sid()).await?;
    let b = f.create(&sid()).await?;
    let shared = chain(&doc("s"), 4, 8);
    a.append(shared.clone()).await?;
    b.append(shared).await?;
    a.append(chain(&doc("a"), 7, 8)).await?;
    b.append(chain(&doc("b"), 5, 8)).await?;
    let r = sync(a.as_ref(), b.as_ref(), &SyncOptions::default()).await?;
    ensure_eq!(r.pulled.changes, 5, "pulled b's five");
    ensure_eq!(r.pushed.changes, 7, "pushed a's seven");
    let sa = id_set(a.as_ref()).await?;
    ensure_eq!(sa.len(), 16, "union of 4 + 7 + 5");
    ensure_eq!(sa, id_set(b.as_ref()).await?, "both hold the union");
    check_store(a.as_ref()).await?;
    check_store(b.as_ref()).await?;
    Ok(Outcome::Passed)
}

/// With the saved state, a second sync examines only changes that arrived
/// since the first.
pub async fn incremental_sync_examines_only_new_changes(f: &dyn StoreFactory) -> CaseResult {
    let a = f.create(&sid()).await?;
    let b = f.create(&sid()).await?;
    b.append(chain(&doc("b"), 50, 8)).await?;
    a.append(chain(&doc("a"), 20, 8)).await?;
    let first = sync(a.as_ref(), b.as_ref(), &SyncOptions::default()).await?;
    ensure_eq!(first.pulled.examined, 50, "first pull examines everything");
    b.append(chain(&doc("b2"), 5, 8)).await?;
    a.append(chain(&doc("a2"), 3, 8)).await?;
    let second = sync(
        a.as_ref(),
        b.as_ref(),
        &SyncOptions::default().resume(first.state),
    )
    .await?;
    // Since the last pull, b's log grew by the 20 a pushed to it and its 5
    // new ones; the old 50 are not examined again.
    ensure_eq!(
        second.pulled.examined,
        20 + 5,
        "second pull examines only what b received since"
    );
    ensure_eq!(second.pulled.changes, 5, "and copies them");
    // Since the last push, a's log grew by the 5 just pulled and its 3 new.
    ensure_eq!(
        second.pushed.examined,
        5 + 3,
        "push examines only what a received since"
    );
    ensure_eq!(second.pushed.changes, 3, "but copies only the three new");
    ensure_eq!(
        id_set(a.as_ref()).await?,
        id_set(b.as_ref()).await?,
        "converged"
    );
    Ok(Outcome::Passed)
}

/// Syncing stores that are already equal changes nothing.
pub async fn resync_changes_nothing(f: &dyn StoreFactory) -> CaseResult {
    let a = f.create(&sid()).await?;
    let b = f.create(&sid()).await?;
    a.append(chain(&doc("a"), 10, 8)).await?;
    b.append(chain(&doc("b"), 10, 8)).await?;
    sync(a.as_ref(), b.as_ref(), &SyncOptions::default()).await?;
    let (ha, hb) = (a.head().await?, b.head().await?);
    let again = sync(a.as_ref(), b.as_ref(), &SyncOptions::default()).await?;
    ensure_eq!(
        again.pulled.changes + again.pushed.changes,
        0,
        "nothing to transfer"
    );
    ensure_eq!(
        (a.head().await?, b.head().await?),
        (ha, hb),
        "heads unchanged"
    );
    Ok(Outcome::Passed)
}

/// Three stores syncing around a ring end with the same set.
pub async fn three_stores_in_a_ring_converge(f: &dyn StoreFactory) -> CaseResult {
    let s = [
        f.create(&sid()).await?,
        f.create(&sid()).await?,
        f.create(&sid()).await?,
    ];
    for (i, st) in s.iter().enumerate() {
        st.append(chain(&doc(&format!("d{i}")), 6, 8)).await?;
    }
    for (x, y) in [(0, 1), (1, 2), (2, 0), (0, 1)] {
        sync(s[x].as_ref(), s[y].as_ref(), &SyncOptions::default()).await?;
    }
    let want = id_set(s[0].as_ref()).await?;
    ensure_eq!(want.len(), 18, "the union of three histories");
    for st in &s[1..] {
        ensure_eq!(
            id_set(st.as_ref()).await?,
            want,
            "every store holds the union"
        );
        check_store(st.as_ref()).await?;
    }
    Ok(Outcome::Passed)
}

/// Sync works between this store and the reference store, both ways.
pub async fn sync_with_reference_store_both_ways(f: &dyn StoreFactory) -> CaseResult {
    let ours = f.create(&sid()).await?;
    let reference: Arc<DynAppendOnlyStore> = Arc::new(MemoryStore::new(sid()));
    ours.append(chain(&doc("o"), 8, 64)).await?;
    reference.append(chain(&doc("r"), 9, 64)).await?;
    sync(ours.as_ref(), reference.as_ref(), &SyncOptions::default()).await?;
    ensure_eq!(
        id_set(ours.as_ref()).await?,
        id_set(reference.as_ref()).await?,
        "converged (ours local)"
    );
    reference.append(chain(&doc("r2"), 4, 64)).await?;
    ours.append(chain(&doc("o2"), 4, 64)).await?;
    sync(reference.as_ref(), ours.as_ref(), &SyncOptions::default()).await?;
    ensure_eq!(
        id_set(ours.as_ref()).await?,
        id_set(reference.as_ref()).await?,
        "converged (reference local)"
    );
    ensure_eq!(ours.head().await?.seq, 25, "no duplicates");
    Ok(Outcome::Passed)
}

/// Transfers go in rounds of at most `batch_changes`, and each fetch stays
/// within `batch_bytes` (one oversized change alone).
pub async fn sync_respects_batch_limits(f: &dyn StoreFactory) -> CaseResult {
    let local = f.create(&sid()).await?;
    let remote_store = f.create(&sid()).await?;
    remote_store.append(chain(&doc("r"), 20, 100)).await?;
    let remote = FailingStore::recording(remote_store);
    let opts = SyncOptions {
        batch_changes: 3,
        batch_bytes: 250,
        ..SyncOptions::default()
    };
    let r = pull(local.as_ref(), &remote, &opts).await?;
    ensure_eq!(r.pulled.changes, 20, "everything arrives");
    ensure_eq!(r.pulled.rounds, 7, "20 changes in rounds of 3");
    ensure!(
        remote.max_get_ids.load(Ordering::SeqCst) <= 3,
        "a fetch asked for more than batch_changes"
    );
    ensure!(
        remote.max_get_bytes.load(Ordering::SeqCst) <= 250,
        "a fetch exceeded batch_bytes"
    );
    Ok(Outcome::Passed)
}

/// Progress events arrive in order; cancelling stops the sync between
/// rounds with `Cancelled`, and rerunning completes it.
pub async fn sync_reports_progress_and_can_be_cancelled(f: &dyn StoreFactory) -> CaseResult {
    let local = f.create(&sid()).await?;
    let remote = f.create(&sid()).await?;
    remote.append(chain(&doc("r"), 10, 8)).await?;
    let events = Arc::new(Mutex::new(Vec::new()));
    let opts = SyncOptions {
        batch_changes: 4,
        ..SyncOptions::default()
    };
    let cancel = opts.cancel.clone();
    let seen = Arc::clone(&events);
    let opts = opts.on_progress(move |ev| {
        if let Ok(mut v) = seen.lock() {
            v.push(ev.clone());
        }
        if matches!(ev, SyncEvent::Progress { .. }) {
            cancel.cancel();
        }
    });
    match pull(local.as_ref(), remote.as_ref(), &opts).await {
        Err(Error::Cancelled) => {}
        other => return Err(crate::Failure(format!("expected Cancelled, got {other:?}"))),
    }
    ensure_eq!(
        local.head().await?.seq,
        4,
        "exactly one round was applied before cancelling"
    );
    let evs = events.lock().map(|v| v.clone()).unwrap_or_default();
    ensure!(
        matches!(evs.first(), Some(SyncEvent::Started { total: 10, .. })),
        "first event is Started with the total: {evs:?}"
    );
    ensure!(
        matches!(
            evs.get(1),
            Some(SyncEvent::Progress {
                examined: 4,
                total: 10,
                transferred: 4,
                ..
            })
        ),
        "then progress after the first round: {evs:?}"
    );
    let r = pull(local.as_ref(), remote.as_ref(), &SyncOptions::default()).await?;
    ensure_eq!(r.pulled.changes, 6, "the rerun copies the rest");
    ensure_eq!(
        id_set(local.as_ref()).await?,
        id_set(remote.as_ref()).await?,
        "converged"
    );
    Ok(Outcome::Passed)
}

/// A verifying policy rejects changes from untrusted authors; they are
/// reported with reasons and not stored.
pub async fn sync_rejects_by_verifier_and_reports(f: &dyn StoreFactory) -> CaseResult {
    let local = f.create(&sid()).await?;
    let remote = f.create(&sid()).await?;
    let (alice, mallory) = (Keypair::generate(), Keypair::generate());
    let good: Vec<_> = (0..3).map(|_| signed(&alice, &doc("d"), &[])).collect();
    let bad: Vec<_> = (0..2).map(|_| signed(&mallory, &doc("d"), &[])).collect();
    remote.append(good.clone()).await?;
    remote.append(bad.clone()).await?;
    let opts = SyncOptions::default().verifier(TrustedAuthors::new([alice.author()]));
    let r = pull(local.as_ref(), remote.as_ref(), &opts).await?;
    ensure_eq!(r.pulled.changes, 3, "trusted changes appended");
    ensure_eq!(r.pulled.rejected.len(), 2, "untrusted changes reported");
    for rej in &r.pulled.rejected {
        ensure!(ids(&bad).contains(&rej.id), "rejected the wrong change");
        ensure_eq!(
            rej.reason,
            RejectReason::UntrustedAuthor(mallory.author()),
            "reason"
        );
    }
    ensure_eq!(
        id_set(local.as_ref()).await?,
        ids(&good).into_iter().collect(),
        "only trusted stored"
    );
    Ok(Outcome::Passed)
}

/// A verifier whose trusted set can grow (a directory that catches up).
#[derive(Debug, Default)]
struct Growing(std::sync::RwLock<TrustedAuthors>);

impl cairn::Verifier for Growing {
    fn verify(&self, meta: &cairn::ChangeMeta) -> Result<(), RejectReason> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .verify(meta)
    }
}

/// A change rejected under yesterday's policy is re-examined by the next
/// sync (the saved state remembers it), in both directions, and delivered
/// once the policy accepts it.
pub async fn rejected_change_is_reexamined_by_the_next_sync(f: &dyn StoreFactory) -> CaseResult {
    let local = f.create(&sid()).await?;
    let remote = f.create(&sid()).await?;
    let (alice, bob) = (Keypair::generate(), Keypair::generate());
    let from_bob_remote = signed(&bob, &doc("d"), &[]);
    let from_bob_local = signed(&bob, &doc("e"), &[]);
    let from_alice = signed(&alice, &doc("d"), &[]);
    remote
        .append(vec![from_alice.clone(), from_bob_remote.clone()])
        .await?;
    local.append(vec![from_bob_local.clone()]).await?;
    let policy = Arc::new(Growing::default());
    policy
        .0
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(alice.author());
    let mut opts = SyncOptions {
        verifier: policy.clone(),
        ..SyncOptions::default()
    };
    let r = sync(local.as_ref(), remote.as_ref(), &opts).await?;
    ensure_eq!(r.pulled.changes, 1, "alice's change pulled");
    ensure_eq!(r.pulled.rejected.len(), 1, "bob's remote change rejected");
    ensure_eq!(r.pushed.rejected.len(), 1, "bob's local change rejected");
    ensure_eq!(
        r.state.retry_pull,
        vec![from_bob_remote.id()],
        "the state remembers the rejected pull"
    );
    ensure_eq!(
        r.state.retry_push,
        vec![from_bob_local.id()],
        "the state remembers the rejected push"
    );
    // Nothing new on either side; the directory admits bob.
    policy
        .0
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(bob.author());
    opts.state = r.state;
    let r = sync(local.as_ref(), remote.as_ref(), &opts).await?;
    ensure_eq!(
        r.pulled.changes,
        1,
        "bob's remote change delivered on the next sync"
    );
    ensure_eq!(
        r.pushed.changes,
        1,
        "bob's local change delivered on the next sync"
    );
    ensure!(
        r.state.retry_pull.is_empty() && r.state.retry_push.is_empty(),
        "nothing left to retry: {:?}",
        r.state
    );
    ensure_eq!(
        id_set(local.as_ref()).await?,
        id_set(remote.as_ref()).await?,
        "both hold everything"
    );
    Ok(Outcome::Passed)
}

/// A saved cursor from another epoch (the remote was reset) is ignored and
/// the sync starts over; nothing is missed.
pub async fn stale_cursor_from_other_epoch_restarts(f: &dyn StoreFactory) -> CaseResult {
    let local = f.create(&sid()).await?;
    let remote = f.create(&sid()).await?;
    remote.append(chain(&doc("r"), 6, 8)).await?;
    let epoch = remote.head().await?.epoch;
    let state = SyncState {
        pulled: Some(Head {
            epoch: epoch.wrapping_add(1),
            seq: 6,
        }),
        ..SyncState::default()
    };
    let r = pull(
        local.as_ref(),
        remote.as_ref(),
        &SyncOptions::default().resume(state),
    )
    .await?;
    ensure_eq!(
        r.pulled.changes,
        6,
        "everything pulled despite the stale cursor"
    );
    let future = SyncState {
        pulled: Some(Head { epoch, seq: 1_000 }),
        ..SyncState::default()
    };
    let other = f.create(&sid()).await?;
    let r = pull(
        other.as_ref(),
        remote.as_ref(),
        &SyncOptions::default().resume(future),
    )
    .await?;
    ensure_eq!(r.pulled.changes, 6, "a cursor past the head restarts too");
    Ok(Outcome::Passed)
}

/// With set reconciliation (forced on, for any store), a first sync between
/// stores that share most changes examines and transfers only the
/// difference, both ways; the next sync uses the saved cursors.
pub async fn reconciliation_sync_transfers_only_the_difference(f: &dyn StoreFactory) -> CaseResult {
    let a = f.create(&sid()).await?;
    let b = f.create(&sid()).await?;
    for i in 0..6 {
        let shared = chain(&doc(&format!("shared-{i}")), 50, 16);
        a.append(shared.clone()).await?;
        b.append(shared).await?;
    }
    let only_a = chain(&doc("a"), 4, 16);
    let only_b = chain(&doc("b"), 6, 16);
    a.append(only_a.clone()).await?;
    b.append(only_b.clone()).await?;
    let opts = SyncOptions {
        reconcile: cairn::Reconcile::Always,
        ..SyncOptions::default()
    };
    let r = sync(a.as_ref(), b.as_ref(), &opts).await?;
    ensure!(
        r.pulled.reconcile_rounds > 0,
        "reconciliation was used: {r:?}"
    );
    ensure_eq!(r.pulled.examined, 6, "pull examines exactly b's six");
    ensure_eq!(r.pulled.changes, 6, "and copies them");
    ensure_eq!(r.pushed.examined, 4, "push examines exactly a's four");
    ensure_eq!(r.pushed.changes, 4, "and copies them");
    ensure_eq!(
        id_set(a.as_ref()).await?,
        id_set(b.as_ref()).await?,
        "converged"
    );
    ensure_eq!(a.head().await?.seq, 310, "no duplicates");
    check_store(a.as_ref()).await?;
    check_store(b.as_ref()).await?;
    // Deps first: b's chain arrived in order.
    let arrived: Vec<_> = a
        .scan(304, 10)
        .await?
        .into_iter()
        .map(|i| i.meta.id)
        .collect();
    ensure_eq!(
        arrived,
        ids(&only_b),
        "the difference is appended deps first"
    );
    b.append(chain(&doc("b2"), 2, 16)).await?;
    let again = sync(a.as_ref(), b.as_ref(), &opts.clone().resume(r.state)).await?;
    ensure_eq!(
        again.pulled.reconcile_rounds,
        0,
        "with a cursor, no reconciliation"
    );
    ensure_eq!(again.pulled.changes, 2, "the two new ones");
    Ok(Outcome::Passed)
}

/// A first pull into an empty store goes page by page (memory bounded by
/// the batch), not through reconciliation, even for a large source.
pub async fn first_pull_into_an_empty_store_scans_in_bounded_batches(
    f: &dyn StoreFactory,
) -> CaseResult {
    let local = f.create(&sid()).await?;
    let remote_store = f.create(&sid()).await?;
    let n = cairn::RECONCILE_MIN as usize + 76;
    remote_store.append(chain(&doc("big"), n, 8)).await?;
    let remote = FailingStore::recording(remote_store);
    let opts = SyncOptions {
        batch_changes: 100,
        ..SyncOptions::default()
    };
    let r = pull(local.as_ref(), &remote, &opts).await?;
    ensure_eq!(
        r.pulled.reconcile_rounds,
        0,
        "an empty target is filled by scanning"
    );
    ensure_eq!(r.pulled.changes, n as u64, "everything arrives");
    ensure_eq!(
        r.pulled.rounds,
        n.div_ceil(100) as u64,
        "in pages of the batch size"
    );
    ensure!(
        remote.max_get_ids.load(Ordering::SeqCst) <= 100,
        "a fetch asked for more than batch_changes"
    );
    Ok(Outcome::Passed)
}

/// A change that fails its integrity check on the way (the source serves a
/// tampered copy) is rejected and reported; the rest of its batch arrives.
pub async fn tampered_change_in_transit_is_rejected_rest_arrive(
    f: &dyn StoreFactory,
) -> CaseResult {
    let local = f.create(&sid()).await?;
    let remote_store = f.create(&sid()).await?;
    let batch = chain(&doc("r"), 6, 32);
    remote_store.append(batch.clone()).await?;
    let bad = batch[3].id();
    let remote = FailingStore::recording(remote_store).tamper(bad);
    let r = pull(local.as_ref(), &remote, &SyncOptions::default()).await?;
    ensure_eq!(r.pulled.changes, 5, "the five intact changes arrive");
    ensure_eq!(r.pulled.rejected.len(), 1, "the tampered one is reported");
    ensure_eq!(r.pulled.rejected[0].id, bad, "the right change is rejected");
    ensure!(
        matches!(r.pulled.rejected[0].reason, RejectReason::Integrity(_)),
        "for integrity: {:?}",
        r.pulled.rejected[0].reason
    );
    ensure!(
        !local.has_changes(&[bad]).await?[0],
        "the tampered change is not stored"
    );
    check_store(local.as_ref()).await?;
    Ok(Outcome::Passed)
}

/// A cursor saved while the *target* was in another epoch (the target lost
/// changes in a crash and came back in a new epoch) is not trusted: the
/// changes it says were transferred are examined, and transferred, again.
/// (Found by the simulator, `cairn-sim`, seeds 123, 642, 707 and 809.)
pub async fn cursor_saved_into_another_target_epoch_restarts(f: &dyn StoreFactory) -> CaseResult {
    let remote = f.create(&sid()).await?;
    remote.append(chain(&doc("r"), 5, 11)).await?;
    let first = f.create(&sid()).await?;
    let r = pull(first.as_ref(), remote.as_ref(), &SyncOptions::default()).await?;
    ensure_eq!(r.pulled.changes, 5, "first pull");
    ensure_eq!(
        r.state.pulled_into,
        Some(first.head().await?.epoch),
        "the state records the target's epoch"
    );
    // The same saved state, against a target that holds none of it (as a
    // store that came back empty in a new epoch would).
    let fresh = f.create(&sid()).await?;
    let again = pull(
        fresh.as_ref(),
        remote.as_ref(),
        &SyncOptions::default().resume(r.state.clone()),
    )
    .await?;
    if fresh.head().await?.epoch != first.head().await?.epoch {
        ensure_eq!(again.pulled.changes, 5, "everything pulled again");
    }
    // And into the same target, the saved cursor is still used.
    let resumed = pull(
        first.as_ref(),
        remote.as_ref(),
        &SyncOptions::default().resume(r.state),
    )
    .await?;
    ensure_eq!(resumed.pulled.changes, 0, "nothing new");
    ensure_eq!(resumed.pulled.examined, 0, "the cursor was trusted");
    Ok(Outcome::Passed)
}
