//! The sync engine's bookkeeping between memory stores: rounds, examined
//! counts, progress events, saved state, refused changes remembered for
//! the next sync, rate limits, and a target that lies. The conformance
//! suite checks what a sync stores; these pin what it reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn::sync::{Direction, MAX_RETRY, Reconcile, SyncEvent, SyncOptions, pull, push, sync};
use cairn::{
    AppendOnlyStore, AppendOutcome, Capabilities, Change, ChangeBuilder, ChangeId, ChangeKind,
    ChangeStream, DocId, Error, Head, IdRange, IntegrityError, RangeSummary, RejectReason, Result,
    ScanItem, StoreId,
};
use cairn_memory::MemoryStore;

fn changes(n: usize, salt: u8) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::with_capacity(n);
    for i in 0..n {
        let deps: Vec<ChangeId> = out.last().map(Change::id).into_iter().collect();
        out.push(
            ChangeBuilder::new(ChangeKind::Change, DocId::new("d").unwrap())
                .deps(deps)
                .created_at(1_000 + i as u64)
                .payload(vec![salt, i as u8, (i >> 8) as u8])
                .build()
                .unwrap(),
        );
    }
    out
}

fn id() -> StoreId {
    StoreId::new("t").unwrap()
}

async fn store(cs: &[Change]) -> MemoryStore {
    let s = MemoryStore::new(id());
    s.append(cs.to_vec()).await.unwrap();
    s
}

fn recorder() -> (Arc<Mutex<Vec<SyncEvent>>>, SyncOptions) {
    let events: Arc<Mutex<Vec<SyncEvent>>> = Arc::default();
    let e = events.clone();
    let opts = SyncOptions {
        progress: Some(Arc::new(move |ev: &SyncEvent| {
            e.lock().unwrap().push(ev.clone());
        })),
        ..SyncOptions::default()
    };
    (events, opts)
}

#[tokio::test]
async fn a_scanning_pull_reports_its_rounds_and_progress() {
    let cs = changes(10, 1);
    let (local, remote) = (store(&[]).await, store(&cs).await);
    let (events, opts) = recorder();
    let opts = SyncOptions {
        batch_changes: 3,
        reconcile: Reconcile::Never,
        ..opts
    };
    let r = pull(&local, &remote, &opts).await.unwrap();
    let bytes: u64 = cs.iter().map(|c| c.payload.len() as u64).sum();
    assert_eq!(
        (
            r.pulled.examined,
            r.pulled.changes,
            r.pulled.bytes,
            r.pulled.rounds
        ),
        (10, 10, bytes, 4)
    );
    assert_eq!(r.pulled.reconcile_rounds, 0);
    assert_eq!(r.rounds(), 4);
    let head = remote.head().await.unwrap();
    assert_eq!(r.state.pulled, Some(head));
    assert_eq!(r.state.pulled_into, Some(local.head().await.unwrap().epoch));
    let ev = events.lock().unwrap().clone();
    assert_eq!(
        ev.first(),
        Some(&SyncEvent::Started {
            direction: Direction::Pull,
            total: 10
        })
    );
    assert_eq!(
        ev.last(),
        Some(&SyncEvent::Finished {
            direction: Direction::Pull,
            transferred: 10
        })
    );
    let checkpoints: Vec<u64> = ev
        .iter()
        .filter_map(|e| match e {
            SyncEvent::Checkpoint { cursor, .. } => Some(cursor.seq),
            _ => None,
        })
        .collect();
    assert_eq!(checkpoints, vec![3, 6, 9, 10]);
    let progress: Vec<(u64, u64)> = ev
        .iter()
        .filter_map(|e| match e {
            SyncEvent::Progress {
                examined,
                transferred,
                total,
                ..
            } => {
                assert_eq!(*total, 10);
                Some((*examined, *transferred))
            }
            _ => None,
        })
        .collect();
    assert_eq!(progress, vec![(3, 3), (6, 6), (9, 9), (10, 10)]);

    // From the saved state: nothing left to examine.
    let again = SyncOptions {
        state: r.state.clone(),
        ..opts.clone()
    };
    let r2 = pull(&local, &remote, &again).await.unwrap();
    assert_eq!((r2.pulled.examined, r2.pulled.rounds), (0, 0));
    // Two more changes: only they are examined.
    remote.append(changes(2, 9)).await.unwrap();
    events.lock().unwrap().clear();
    let r3 = pull(&local, &remote, &again).await.unwrap();
    assert_eq!(
        (r3.pulled.examined, r3.pulled.changes, r3.pulled.rounds),
        (2, 2, 1)
    );
    assert_eq!(
        events.lock().unwrap().first(),
        Some(&SyncEvent::Started {
            direction: Direction::Pull,
            total: 2
        })
    );
    // A pull keeps the push side of the state it was given.
    let both = sync(&local, &remote, &opts).await.unwrap();
    assert!(both.state.pushed.is_some());
    let only_pull = pull(
        &local,
        &remote,
        &SyncOptions {
            state: both.state.clone(),
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(only_pull.state.pushed, both.state.pushed);
    assert_eq!(only_pull.state.pushed_into, both.state.pushed_into);
}

#[tokio::test]
async fn a_pull_that_reconciles_sends_only_the_difference_and_saves_both_cursors() {
    let cs = changes(1500, 2);
    let local = store(&cs[..1400]).await;
    let remote = store(&cs).await;
    local.append(changes(3, 3)).await.unwrap();
    let remote_before = remote.head().await.unwrap();
    let (events, opts) = recorder();
    // Auto: no cursor, both native, 1,500 >= RECONCILE_MIN, 1,403 >= half.
    let r = sync(&local, &remote, &opts).await.unwrap();
    assert!(r.pulled.reconcile_rounds > 0, "{r:?}");
    assert!(r.pushed.reconcile_rounds > 0, "{r:?}");
    assert_eq!((r.pulled.examined, r.pulled.changes), (100, 100));
    assert_eq!((r.pushed.examined, r.pushed.changes), (3, 3));
    assert_eq!(r.pulled.rounds, 1);
    // The pull's cursor is the remote's head when the sync began (what it
    // pushed comes back as already held).
    assert_eq!(r.state.pulled, Some(remote_before));
    assert_eq!(
        r.state.pushed.map(|h| h.epoch),
        Some(local.head().await.unwrap().epoch)
    );
    assert_eq!(local.head().await.unwrap().seq, 1503);
    assert_eq!(remote.head().await.unwrap().seq, 1503);
    let ev = events.lock().unwrap().clone();
    assert!(ev.contains(&SyncEvent::Finished {
        direction: Direction::Pull,
        transferred: 100
    }));
    assert!(ev.contains(&SyncEvent::Started {
        direction: Direction::Push,
        total: 3
    }));
    // A pull alone reconciles too.
    let (a, b) = (store(&cs[..1400]).await, store(&cs).await);
    let r = pull(&a, &b, &SyncOptions::default()).await.unwrap();
    assert!(r.pulled.reconcile_rounds > 0, "{r:?}");
    assert_eq!((r.pulled.examined, r.pulled.changes), (100, 100));
    // With a usable pull cursor, only the push reconciles: the pull scans
    // from its cursor (nothing new).
    let (a, b) = (store(&cs[..1400]).await, store(&cs).await);
    a.append(changes(3, 4)).await.unwrap();
    let first = pull(&a, &b, &SyncOptions::default()).await.unwrap();
    let mut state = first.state.clone();
    state.pushed = None;
    let r = sync(
        &a,
        &b,
        &SyncOptions {
            state,
            ..SyncOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (r.pulled.reconcile_rounds, r.pulled.examined),
        (0, 0),
        "{r:?}"
    );
    assert!(r.pushed.reconcile_rounds > 0, "{r:?}");
    assert_eq!(r.pushed.changes, 3);
    // With a usable push cursor, only the pull reconciles: the push scans
    // from its cursor.
    let (a, b) = (store(&cs[..1400]).await, store(&cs).await);
    let first = push(&a, &b, &SyncOptions::default()).await.unwrap();
    let mut state = first.state.clone();
    state.pulled = None;
    let r = sync(
        &a,
        &b,
        &SyncOptions {
            state,
            ..SyncOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(r.pulled.reconcile_rounds > 0, "{r:?}");
    assert_eq!(
        (r.pushed.reconcile_rounds, r.pushed.changes),
        (0, 0),
        "{r:?}"
    );
    // Never: the same stores are scanned instead.
    let (a, b) = (store(&cs[..1400]).await, store(&cs).await);
    let never = SyncOptions {
        reconcile: Reconcile::Never,
        ..SyncOptions::default()
    };
    let r = pull(&a, &b, &never).await.unwrap();
    assert_eq!((r.pulled.reconcile_rounds, r.pulled.examined), (0, 1500));
    // A small source is scanned under Auto.
    let (a, b) = (store(&cs[..10]).await, store(&cs[..20]).await);
    let r = pull(&a, &b, &SyncOptions::default()).await.unwrap();
    assert_eq!((r.pulled.reconcile_rounds, r.pulled.examined), (0, 20));
}

/// A memory store that misbehaves in the ways the tests ask, one knob
/// each, and counts its scans. As a target: it refuses some ids (policy),
/// refuses naming an id not in the batch (`reject_foreign`), is over a rate
/// limit a given number of times, or claims integrity failures that are
/// not there. As a source: its scans start one item early (`sloppy`) or
/// always from the start (`stale`), or its id listings carry an id it does
/// not hold (`phantom`).
#[derive(Debug)]
struct Odd {
    inner: MemoryStore,
    refuse: HashSet<ChangeId>,
    reject_foreign: bool,
    rate_limited: AtomicU32,
    lie_integrity: bool,
    sloppy: bool,
    stale: bool,
    phantom: Option<ChangeId>,
    scans: AtomicU32,
}

impl Odd {
    fn over(inner: MemoryStore) -> Self {
        Odd {
            inner,
            refuse: HashSet::new(),
            reject_foreign: false,
            rate_limited: AtomicU32::new(0),
            lie_integrity: false,
            sloppy: false,
            stale: false,
            phantom: None,
            scans: AtomicU32::new(0),
        }
    }
}

#[async_trait]
impl AppendOnlyStore for Odd {
    fn store_id(&self) -> &StoreId {
        self.inner.store_id()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        if self
            .rate_limited
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::RateLimited {
                what: "appends per second".into(),
                retry_after: Duration::from_millis(2),
            });
        }
        if self.reject_foreign {
            return Err(Error::Rejected {
                id: ChangeId::MIN,
                reason: RejectReason::Policy("which one?".into()),
            });
        }
        if self.lie_integrity
            && let Some(c) = changes.first()
        {
            return Err(Error::Integrity {
                id: c.id(),
                reason: IntegrityError::PayloadHashMismatch,
            });
        }
        if let Some(c) = changes.iter().find(|c| self.refuse.contains(&c.id())) {
            return Err(Error::Rejected {
                id: c.id(),
                reason: RejectReason::Policy("not here".into()),
            });
        }
        self.inner.append(changes).await
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        self.inner.get_changes(ids).await
    }
    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        self.inner.has_changes(ids).await
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.scans.fetch_add(1, Ordering::SeqCst);
        if self.stale {
            return self.inner.scan(0, limit).await;
        }
        if self.sloppy && after > 0 {
            return self.inner.scan(after - 1, limit + 1).await;
        }
        self.inner.scan(after, limit).await
    }
    async fn head(&self) -> Result<Head> {
        self.inner.head().await
    }
    async fn subscribe(&self) -> Result<ChangeStream> {
        self.inner.subscribe().await
    }
    async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        self.inner.range_summary(range).await
    }
    async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        let mut ids = self.inner.ids_in_range(range, limit).await?;
        if let Some(p) = self.phantom {
            ids.push(p);
            ids.sort();
        }
        Ok(ids)
    }
    async fn coded_symbols(
        &self,
        request: &cairn::riblt::SymbolRequest,
    ) -> Result<cairn::riblt::SymbolReply> {
        let mut ids = self.inner.all_change_ids().await?;
        ids.extend(self.phantom);
        cairn::riblt::answer(ids.iter(), request)
    }
}

#[tokio::test]
async fn refused_changes_are_reported_remembered_and_retried() {
    // Independent changes (no deps), so refusing some holds back nothing.
    let cs: Vec<Change> = (0..6u8).map(|i| changes(1, 10 + i).remove(0)).collect();
    let source = store(&cs).await;
    let mut gate = Odd::over(MemoryStore::new(id()));
    gate.refuse = [cs[1].id(), cs[4].id()].into_iter().collect();
    let opts = SyncOptions {
        reconcile: Reconcile::Never,
        ..SyncOptions::default()
    };
    let r = push(&source, &gate, &opts).await.unwrap();
    let refused: Vec<ChangeId> = r.pushed.rejected.iter().map(|x| x.id).collect();
    assert_eq!(refused.len(), 2);
    assert_eq!(refused.iter().copied().collect::<HashSet<_>>(), gate.refuse);
    assert_eq!(r.pushed.changes, 4);
    assert_eq!(r.state.retry_push.len(), 2);
    assert_eq!(
        r.state.retry_push.iter().copied().collect::<HashSet<_>>(),
        gate.refuse
    );
    // The policy relents: the next sync, from the saved cursor, retries
    // exactly the refused ones.
    gate.refuse.clear();
    let next = SyncOptions {
        state: r.state.clone(),
        ..opts.clone()
    };
    let r2 = push(&source, &gate, &next).await.unwrap();
    assert_eq!(
        (r2.pushed.examined, r2.pushed.changes, r2.pushed.rounds),
        (2, 2, 1)
    );
    assert!(r2.state.retry_push.is_empty());
    assert_eq!(gate.head().await.unwrap().seq, 6);
}

/// Refuses every change.
#[derive(Debug)]
struct RefuseAll;

impl cairn::Verifier for RefuseAll {
    fn verify(&self, _: &cairn::ChangeMeta) -> std::result::Result<(), RejectReason> {
        Err(RejectReason::Policy("no".into()))
    }
}

#[tokio::test]
async fn at_most_max_retry_refusals_are_remembered_the_newest_kept() {
    let n = MAX_RETRY + 3;
    let cs: Vec<Change> = (0..n)
        .map(|i| {
            ChangeBuilder::new(ChangeKind::Change, DocId::new("d").unwrap())
                .created_at(i as u64)
                .payload((i as u32).to_le_bytes().to_vec())
                .build()
                .unwrap()
        })
        .collect();
    let source = store(&cs).await;
    let opts = SyncOptions {
        reconcile: Reconcile::Never,
        batch_changes: n,
        // Every change refused by the verifier (no target round trip each).
        verifier: Arc::new(RefuseAll),
        ..SyncOptions::default()
    };
    let target = MemoryStore::new(id());
    let r = push(&source, &target, &opts).await.unwrap();
    assert_eq!(r.pushed.rejected.len(), n);
    let order: Vec<ChangeId> = r.pushed.rejected.iter().map(|x| x.id).collect();
    assert_eq!(r.state.retry_push.len(), MAX_RETRY);
    assert_eq!(
        r.state.retry_push[..],
        order[3..],
        "the oldest three are dropped"
    );
}

#[tokio::test]
async fn a_rate_limited_target_is_waited_on_then_given_up() {
    let cs = changes(5, 20);
    let source = store(&cs).await;
    let gate = Odd::over(MemoryStore::new(id()));
    gate.rate_limited.store(3, Ordering::SeqCst);
    let opts = SyncOptions {
        reconcile: Reconcile::Never,
        ..SyncOptions::default()
    };
    let r = push(&source, &gate, &opts).await.unwrap();
    assert_eq!(r.pushed.changes, 5);
    assert_eq!(
        r.pushed.throttled,
        Duration::from_millis(6),
        "three waits of 2 ms"
    );
    assert!(r.to_string().contains("waiting on rate limits"), "{r}");
    // Over the limit for good: the engine waits a bounded number of times
    // (64), then returns the error.
    let stuck = Odd::over(MemoryStore::new(id()));
    stuck.rate_limited.store(65, Ordering::SeqCst);
    match push(&source, &stuck, &opts).await {
        Err(Error::RateLimited { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        stuck.rate_limited.load(Ordering::SeqCst),
        0,
        "65 tries: 64 waits"
    );
    let once_more = Odd::over(MemoryStore::new(id()));
    once_more.rate_limited.store(64, Ordering::SeqCst);
    let r = push(&source, &once_more, &opts).await.unwrap();
    assert_eq!(r.pushed.changes, 5, "64 waits are allowed");
}

#[tokio::test]
async fn a_target_that_claims_false_integrity_failures_ends_the_sync() {
    let source = store(&changes(3, 30)).await;
    let mut gate = Odd::over(MemoryStore::new(id()));
    gate.lie_integrity = true;
    let opts = SyncOptions {
        reconcile: Reconcile::Never,
        ..SyncOptions::default()
    };
    match push(&source, &gate, &opts).await {
        Err(Error::Protocol { reason }) => assert!(reason.contains("intact"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_scan_pipelines_one_call_per_page_and_counts_each_change_once() {
    let cs = changes(10, 40);
    let never = SyncOptions {
        batch_changes: 3,
        reconcile: Reconcile::Never,
        ..SyncOptions::default()
    };
    let honest = Odd::over(store(&cs).await);
    let r = pull(&store(&[]).await, &honest, &never).await.unwrap();
    assert_eq!((r.pulled.examined, r.pulled.rounds), (10, 4));
    assert_eq!(honest.scans.load(Ordering::SeqCst), 4, "one scan per page");
    // Pages that start one early: the repeated item is not counted again.
    let mut sloppy = Odd::over(store(&cs).await);
    sloppy.sloppy = true;
    let target = store(&[]).await;
    let r = pull(&target, &sloppy, &never).await.unwrap();
    assert_eq!((r.pulled.examined, r.pulled.changes), (10, 10), "{r:?}");
    assert_eq!(target.head().await.unwrap().seq, 10);
}

#[tokio::test]
async fn a_source_whose_scan_does_not_advance_is_a_protocol_error() {
    let mut stale = Odd::over(store(&changes(10, 41)).await);
    stale.stale = true;
    let never = SyncOptions {
        batch_changes: 3,
        reconcile: Reconcile::Never,
        ..SyncOptions::default()
    };
    match pull(&store(&[]).await, &stale, &never).await {
        Err(Error::Protocol { reason }) => {
            assert!(
                reason.contains("scan after 3 returned sequence 3"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_listed_id_the_source_cannot_return_is_named() {
    let phantom = changes(1, 42).remove(0).id();
    let mut src = Odd::over(store(&changes(5, 43)).await);
    src.phantom = Some(phantom);
    let always = SyncOptions {
        reconcile: Reconcile::Always,
        ..SyncOptions::default()
    };
    match pull(&store(&[]).await, &src, &always).await {
        Err(Error::Protocol { reason }) => {
            assert!(reason.contains(&phantom.to_string()), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_refusal_naming_a_change_not_in_the_batch_ends_the_sync() {
    let source = store(&changes(3, 44)).await;
    let target = Odd {
        reject_foreign: true,
        ..Odd::over(MemoryStore::new(id()))
    };
    match push(&source, &target, &SyncOptions::default()).await {
        Err(Error::Rejected { id, .. }) => assert_eq!(id, ChangeId::MIN),
        other => panic!("{other:?}"),
    }
}
