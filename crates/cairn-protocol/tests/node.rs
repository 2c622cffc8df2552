#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! `Node`, the local half of every network store, against peers that fail:
//! retries when following a peer, fetching from several peers, the
//! catch-up sync's saved state and its read-only fallback, confirming what
//! a peer already holds, and detaching a peer when its delivery ends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn::sync::SyncState;
use cairn::{
    AcceptAll, AppendOnlyStore, AppendOutcome, Change, ChangeBuilder, ChangeId, ChangeKind,
    ChangeMeta, ChangeStream, DocId, DynAppendOnlyStore, Error, Head, Result, ScanItem, StoreId,
};
use cairn_memory::MemoryStore;
use cairn_protocol::{Backoff, CatchUp, DeliveryOptions, Node, PeerId, StoreEvent};
use tokio::sync::Notify;

fn sid() -> StoreId {
    StoreId::new("t/db").unwrap()
}

fn peer(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

fn changes(n: usize, salt: u8) -> Vec<Change> {
    (0..n)
        .map(|i| {
            ChangeBuilder::new(ChangeKind::Change, DocId::new("d").unwrap())
                .created_at(i as u64)
                .payload(vec![salt, i as u8, 0, 0, 0, 0, 0, 0])
                .build()
                .unwrap()
        })
        .collect()
}

const FAST: Backoff = Backoff {
    min: Duration::from_millis(1),
    max: Duration::from_millis(2),
};

/// A peer's store that fails on demand: the next `get_failures`
/// `get_changes` calls fail (retryably, or for good with `permanent`);
/// appends are refused for good with `refuse_appends`, take `slow_append`,
/// or never finish with `hang_append` (which it notifies on entry).
#[derive(Debug, Default)]
struct Flaky {
    inner: Option<MemoryStore>,
    get_failures: AtomicUsize,
    permanent: AtomicBool,
    get_calls: AtomicUsize,
    refuse_appends: bool,
    slow_append: Option<Duration>,
    hang_append: Option<Arc<Notify>>,
}

impl Flaky {
    fn over(inner: MemoryStore) -> Self {
        Flaky {
            inner: Some(inner),
            ..Flaky::default()
        }
    }
    fn s(&self) -> &MemoryStore {
        self.inner.as_ref().unwrap()
    }
}

#[async_trait]
impl AppendOnlyStore for Flaky {
    fn store_id(&self) -> &StoreId {
        self.s().store_id()
    }
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        if let Some(n) = &self.hang_append {
            n.notify_one();
            std::future::pending::<()>().await;
        }
        if self.refuse_appends {
            return Err(Error::Unauthorized {
                reason: "read-only peer".into(),
            });
        }
        if let Some(d) = self.slow_append {
            tokio::time::sleep(d).await;
        }
        self.s().append(changes).await
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        self.get_calls.fetch_add(1, Ordering::SeqCst);
        if self
            .get_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(if self.permanent.load(Ordering::SeqCst) {
                Error::Unauthorized {
                    reason: "no".into(),
                }
            } else {
                Error::Closed
            });
        }
        self.s().get_changes(ids).await
    }
    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        self.s().get_metas(ids).await
    }
    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        self.s().has_changes(ids).await
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.s().scan(after, limit).await
    }
    async fn head(&self) -> Result<Head> {
        self.s().head().await
    }
    async fn subscribe(&self) -> Result<ChangeStream> {
        self.s().subscribe().await
    }
}

async fn holding(cs: &[Change]) -> MemoryStore {
    let s = MemoryStore::new(sid());
    s.append(cs.to_vec()).await.unwrap();
    s
}

fn new_node() -> (MemoryStore, Arc<Node>) {
    let cache = MemoryStore::new(sid());
    let node = Node::new(Arc::new(cache.clone()), Arc::new(AcceptAll));
    (cache, node)
}

#[tokio::test]
async fn following_retries_a_failing_fetch_up_to_the_attempts_given() {
    let cs = changes(3, 1);
    let metas: Vec<ChangeMeta> = cs.iter().map(|c| c.meta.clone()).collect();
    for (failures, ok) in [(0, true), (3, true), (4, false)] {
        let remote = Flaky::over(holding(&cs).await);
        remote.get_failures.store(failures, Ordering::SeqCst);
        let (cache, node) = new_node();
        let got = node.follow(peer(1), &remote, &metas, &FAST, 3).await;
        assert_eq!(got.is_ok(), ok, "{failures} failures: {got:?}");
        assert_eq!(remote.get_calls.load(Ordering::SeqCst), failures.min(3) + 1);
        assert_eq!(cache.head().await.unwrap().seq, if ok { 3 } else { 0 });
    }
    // A permanent error is not retried.
    let remote = Flaky::over(holding(&cs).await);
    remote.get_failures.store(1, Ordering::SeqCst);
    remote.permanent.store(true, Ordering::SeqCst);
    let (_, node) = new_node();
    let got = node.follow(peer(1), &remote, &metas, &FAST, 3).await;
    assert!(matches!(got, Err(Error::Unauthorized { .. })), "{got:?}");
    assert_eq!(remote.get_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn missing_changes_are_fetched_across_peers_each_asked_only_for_what_is_still_missing() {
    let cs = changes(6, 2);
    let ids: Vec<ChangeId> = cs.iter().map(Change::id).collect();
    let a = Arc::new(Flaky::over(holding(&cs[..3]).await));
    let b = Arc::new(Flaky::over(holding(&cs[3..]).await));
    let remotes: Vec<(PeerId, Arc<DynAppendOnlyStore>)> =
        vec![(peer(1), a.clone()), (peer(2), b.clone())];
    let (cache, node) = new_node();
    node.fetch_missing(&remotes, ids.iter().copied().chain(ids.iter().copied()))
        .await
        .unwrap();
    assert_eq!(cache.head().await.unwrap().seq, 6);
    let mut held = cache.all_change_ids().await.unwrap();
    held.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(held, want);
    // A peer that fails retryably is skipped; the next one answers.
    a.get_failures.store(1, Ordering::SeqCst);
    let both = Arc::new(Flaky::over(holding(&cs).await));
    let remotes: Vec<(PeerId, Arc<DynAppendOnlyStore>)> =
        vec![(peer(1), a.clone()), (peer(2), both.clone())];
    let (cache, node) = new_node();
    node.fetch_missing(&remotes, ids.iter().copied())
        .await
        .unwrap();
    assert_eq!(cache.head().await.unwrap().seq, 6);
    // Once nothing is missing, later peers are not asked.
    let calls = both.get_calls.load(Ordering::SeqCst);
    let remotes: Vec<(PeerId, Arc<DynAppendOnlyStore>)> =
        vec![(peer(2), both.clone()), (peer(3), b.clone())];
    let b_calls = b.get_calls.load(Ordering::SeqCst);
    node.fetch_missing(&remotes, ids.iter().copied())
        .await
        .unwrap();
    assert_eq!(both.get_calls.load(Ordering::SeqCst), calls + 1);
    assert_eq!(
        b.get_calls.load(Ordering::SeqCst),
        b_calls,
        "nothing left to ask"
    );
    // A permanent error is returned.
    let bad = Arc::new(Flaky::over(holding(&cs).await));
    bad.get_failures.store(1, Ordering::SeqCst);
    bad.permanent.store(true, Ordering::SeqCst);
    let remotes: Vec<(PeerId, Arc<DynAppendOnlyStore>)> = vec![(peer(1), bad)];
    let (_, node) = new_node();
    let got = node.fetch_missing(&remotes, ids.iter().copied()).await;
    assert!(matches!(got, Err(Error::Unauthorized { .. })), "{got:?}");
}

fn catch_up(pull: bool, push: bool, strict: bool) -> CatchUp {
    CatchUp {
        pull,
        push,
        batch_bytes: 8 << 20,
        strict,
    }
}

#[tokio::test]
async fn a_catch_up_resumes_from_its_saved_state_and_passes_its_batch_bytes() {
    let cs = changes(5, 3);
    let remote = Flaky::over(holding(&cs).await);
    let (cache, node) = new_node();
    let state = Arc::new(Mutex::new(SyncState::default()));
    // One fetch per change with a batch of one payload's bytes.
    let opts = CatchUp {
        batch_bytes: 1,
        ..catch_up(true, true, false)
    };
    let r = node.catch_up(peer(1), &remote, &state, opts).await.unwrap();
    assert_eq!((r.pulled.examined, r.pulled.changes), (5, 5));
    assert_eq!(
        remote.get_calls.load(Ordering::SeqCst),
        5,
        "batch_bytes 1: one fetch each"
    );
    assert_eq!(cache.head().await.unwrap().seq, 5);
    let saved = state.lock().unwrap().clone();
    assert_eq!(saved.pulled, Some(remote.head().await.unwrap()));
    assert!(saved.pushed.is_some());
    // Again from the saved state: nothing to examine either way.
    let r = node.catch_up(peer(1), &remote, &state, opts).await.unwrap();
    assert_eq!((r.pulled.examined, r.pushed.examined), (0, 0), "{r:?}");
    // A local change: pushed from the pushed cursor, the only one examined.
    node.append_local(changes(1, 4)).await.unwrap();
    let r = node.catch_up(peer(1), &remote, &state, opts).await.unwrap();
    assert_eq!((r.pushed.examined, r.pushed.changes), (1, 1), "{r:?}");
    assert_eq!(remote.head().await.unwrap().seq, 6);
}

#[tokio::test]
async fn a_catch_up_counts_the_time_of_both_directions() {
    let mut remote = Flaky::over(holding(&[]).await);
    remote.slow_append = Some(Duration::from_millis(30));
    let (_, node) = new_node();
    node.append_local(changes(1, 5)).await.unwrap();
    let state = Arc::new(Mutex::new(SyncState::default()));
    let r = node
        .catch_up(peer(1), &remote, &state, catch_up(true, true, false))
        .await
        .unwrap();
    assert_eq!(r.pushed.changes, 1);
    assert!(r.elapsed >= Duration::from_millis(30), "{:?}", r.elapsed);
}

#[tokio::test]
async fn a_peer_that_refuses_pushes_is_followed_read_only_unless_strict() {
    let cs = changes(2, 6);
    let mut remote = Flaky::over(holding(&cs).await);
    remote.refuse_appends = true;
    let (cache, node) = new_node();
    node.append_local(changes(1, 7)).await.unwrap();
    let mut events = node.events();
    let state = Arc::new(Mutex::new(SyncState::default()));
    let r = node
        .catch_up(peer(1), &remote, &state, catch_up(true, true, false))
        .await
        .unwrap();
    assert_eq!(r.pulled.changes, 2, "the pull still happened");
    assert_eq!(cache.head().await.unwrap().seq, 3);
    match events.try_recv() {
        Ok(StoreEvent::DeliveryRefused(f)) => assert_eq!(f.peer, peer(1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        node.outbox().pending(),
        0,
        "the outbox stops holding it for that peer"
    );
    // Strict: the refusal is the error.
    let (_, node) = new_node();
    node.append_local(changes(1, 8)).await.unwrap();
    let state = Arc::new(Mutex::new(SyncState::default()));
    let got = node
        .catch_up(peer(1), &remote, &state, catch_up(false, true, true))
        .await;
    assert!(matches!(got, Err(Error::Unauthorized { .. })), "{got:?}");
}

#[tokio::test]
async fn what_the_peer_already_holds_leaves_the_outbox_after_a_catch_up() {
    let c = changes(1, 9).remove(0);
    let remote = Flaky::over(holding(std::slice::from_ref(&c)).await);
    let (_, node) = new_node();
    node.append_local(vec![c.clone()]).await.unwrap();
    assert_eq!(node.outbox().pending_ids(), vec![c.id()]);
    let state = Arc::new(Mutex::new(SyncState::default()));
    // Neither direction: only the confirmation.
    node.catch_up(peer(1), &remote, &state, catch_up(false, false, false))
        .await
        .unwrap();
    assert_eq!(node.outbox().pending(), 0);
}

#[tokio::test]
async fn a_delivery_that_ends_detaches_its_peer() {
    let entered = Arc::new(Notify::new());
    let remote = Flaky {
        hang_append: Some(entered.clone()),
        ..Flaky::over(holding(&[]).await)
    };
    let (_, node) = new_node();
    let c = changes(1, 10).remove(0);
    node.append_local(vec![c.clone()]).await.unwrap();
    assert!(
        !node.outbox().delivers_to(&peer(1), &c.id()),
        "not attached yet"
    );
    let opts = DeliveryOptions::default();
    {
        let fut = node.deliver(peer(1), &remote, &opts);
        tokio::pin!(fut);
        tokio::select! {
            r = &mut fut => panic!("delivery ended: {r:?}"),
            () = entered.notified() => {}
        }
        assert!(
            node.outbox().delivers_to(&peer(1), &c.id()),
            "attached while delivering"
        );
    }
    assert!(
        !node.outbox().delivers_to(&peer(1), &c.id()),
        "detached when the delivery is dropped"
    );
    assert!(format!("{node:?}").contains("pending: 1"), "{node:?}");
}

/// No peers (offline).
struct Offline;

impl cairn_protocol::Transport for Offline {
    fn remotes(&self) -> Vec<(PeerId, Arc<DynAppendOnlyStore>)> {
        Vec::new()
    }
}

#[tokio::test]
async fn a_cache_first_store_lists_what_its_cache_holds() {
    use cairn::{DocId, IdRange};
    let (cache, node) = new_node();
    let cs = changes(4, 11);
    cache.append(cs.clone()).await.unwrap();
    let store = cairn_protocol::CacheFirst::new(node, Arc::new(Offline));
    let have = [cs[0].id()];
    let ids = |m: Vec<ChangeMeta>| m.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.find_new_changes(&have).await.unwrap()),
        ids(cache.find_new_changes(&have).await.unwrap())
    );
    assert_eq!(store.find_new_changes(&have).await.unwrap().len(), 3);
    let doc = DocId::new("d").unwrap();
    assert_eq!(
        ids(store.find_new_changes_for_doc(&have, &doc).await.unwrap()),
        ids(cache.find_new_changes_for_doc(&have, &doc).await.unwrap())
    );
    assert_eq!(
        store
            .find_new_changes_for_doc(&have, &doc)
            .await
            .unwrap()
            .len(),
        3
    );
    let mut all = cache.ids_in_range(&IdRange::ALL, 10).await.unwrap();
    assert_eq!(store.ids_in_range(&IdRange::ALL, 10).await.unwrap(), all);
    all.truncate(2);
    assert_eq!(store.ids_in_range(&IdRange::ALL, 2).await.unwrap(), all);
    assert!(format!("{store:?}").starts_with("CacheFirst"), "{store:?}");
}
