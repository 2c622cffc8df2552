#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The pieces shared by network stores — `RemoteStore`, `Node` and
//! `CacheFirst` (policy at the door, outbox, delivery), `forward_store!`,
//! frame checks and `Backoff` — over an in-process `Call` that dispatches
//! to a memory store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cairn::{
    AcceptAll, AppendOnlyStore, Change, ChangeBuilder, ChangeKind, DocId, DynAppendOnlyStore,
    Error, Keypair, RejectReason, RequireSignature, Result, StoreId, Verifier,
};
use cairn_memory::MemoryStore;
use cairn_protocol::*;

const OK: u8 = 0;
const CLOSED: u8 = 1;
const UNAUTHORIZED: u8 = 2;

/// A peer in the same process: every call is answered by `dispatch` on its
/// store, unless told to fail; `busy_appends` appends are answered with a
/// retryable BUSY error first.
#[derive(Debug)]
struct Local {
    store: MemoryStore,
    fail: AtomicU8,
    calls: AtomicUsize,
    appends: AtomicUsize,
    busy_appends: AtomicUsize,
    serve: ServeOptions,
}

impl Local {
    fn new(store: MemoryStore) -> Arc<Self> {
        Self::with(store, ServeOptions::default())
    }

    fn with(store: MemoryStore, serve: ServeOptions) -> Arc<Self> {
        Arc::new(Local {
            store,
            fail: AtomicU8::new(OK),
            calls: AtomicUsize::new(0),
            appends: AtomicUsize::new(0),
            busy_appends: AtomicUsize::new(0),
            serve,
        })
    }
}

#[async_trait]
impl Call for Local {
    async fn call(&self, request: Request) -> Result<Response> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if matches!(request, Request::Append(_)) {
            self.appends.fetch_add(1, Ordering::SeqCst);
            if self
                .busy_appends
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Ok(Response::Error(WireError::Busy {
                    reason: "try later".into(),
                }));
            }
        }
        match self.fail.load(Ordering::SeqCst) {
            CLOSED => Err(Error::Closed),
            UNAUTHORIZED => Err(Error::Unauthorized {
                reason: "no".into(),
            }),
            _ => Ok(dispatch(&self.store, &peer_id(), request, &self.serve).await),
        }
    }
}

fn peer_id() -> PeerId {
    PeerId::from_bytes([7; 32])
}

fn sid() -> StoreId {
    StoreId::new("t/db").unwrap()
}

fn changes(doc: &str, n: usize, size: usize) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    for i in 0..n {
        let kind = if i == 0 {
            ChangeKind::Create
        } else {
            ChangeKind::Change
        };
        let c = ChangeBuilder::new(kind, DocId::new(doc).unwrap())
            .deps(out.last().map(|c| c.id()))
            .created_at(i as u64)
            .payload(vec![i as u8; size])
            .build()
            .unwrap();
        out.push(c);
    }
    out
}

async fn remote_over(peer: &Arc<Local>) -> RemoteStore<Local> {
    let hello = server_hello(&peer.store, DEFAULT_MAX_FRAME).await.unwrap();
    RemoteStore::new("test", sid(), &hello, peer.clone())
}

/// A transport with one peer.
#[derive(Debug)]
struct OnePeer {
    peer: Arc<Local>,
    online: bool,
}

impl Transport for OnePeer {
    fn remotes(&self) -> Vec<(PeerId, Arc<DynAppendOnlyStore>)> {
        if !self.online {
            return Vec::new();
        }
        let hello = client_hello(sid(), 0);
        vec![(
            peer_id(),
            Arc::new(RemoteStore::new("test", sid(), &hello, self.peer.clone())),
        )]
    }
}

fn cache_first(peer: &Arc<Local>, online: bool) -> (MemoryStore, CacheFirst<OnePeer>) {
    cache_first_with(peer, online, Arc::new(AcceptAll))
}

fn cache_first_with(
    peer: &Arc<Local>,
    online: bool,
    verifier: Arc<dyn Verifier>,
) -> (MemoryStore, CacheFirst<OnePeer>) {
    let cache = MemoryStore::new(sid());
    let node = Node::new(Arc::new(cache.clone()), verifier);
    let store = CacheFirst::new(
        node,
        Arc::new(OnePeer {
            peer: peer.clone(),
            online,
        }),
    );
    (cache, store)
}

fn signed_changes(kp: &Keypair, doc: &str, n: usize) -> Vec<Change> {
    (0..n)
        .map(|i| {
            ChangeBuilder::new(ChangeKind::Change, DocId::new(doc).unwrap())
                .created_at(i as u64)
                .payload(vec![i as u8; 10])
                .sign(kp)
                .unwrap()
        })
        .collect()
}

/// A copy of `c` with its signature removed (a different, unsigned change).
fn stripped(c: &Change) -> Change {
    let mut c = c.clone();
    c.meta.signature = None;
    c.meta.id = cairn::encoding::compute_id(&c.meta);
    c
}

#[tokio::test]
async fn remote_store_forwards_every_call_to_the_peer() {
    let peer = Local::new(MemoryStore::new(sid()));
    let remote = remote_over(&peer).await;
    let cs = changes("doc", 3, 10);
    let ids: Vec<_> = cs.iter().map(|c| c.id()).collect();

    let out = remote.append(cs.clone()).await.unwrap();
    assert_eq!(out.new, ids);
    assert_eq!(peer.store.len(), 3);
    assert_eq!(remote.get_changes(&ids).await.unwrap(), cs);
    assert_eq!(remote.get_metas(&ids).await.unwrap().len(), 3);
    assert_eq!(remote.has_changes(&ids).await.unwrap(), vec![true; 3]);
    assert_eq!(
        remote.head().await.unwrap(),
        peer.store.head().await.unwrap()
    );
    assert_eq!(remote.scan(0, 10).await.unwrap().len(), 3);
    assert_eq!(
        remote.all_change_ids().await.unwrap(),
        peer.store.all_change_ids().await.unwrap()
    );
    assert!(remote.find_new_changes(&ids).await.unwrap().is_empty());
    let doc = DocId::new("doc").unwrap();
    assert_eq!(remote.changes_for_doc(&doc, false).await.unwrap().len(), 3);
    assert_eq!(remote.store_id(), &sid());
    assert!(remote.capabilities().remote);
    assert!(Arc::ptr_eq(remote.call(), &peer));
}

#[tokio::test]
async fn remote_store_cannot_subscribe() {
    let peer = Local::new(MemoryStore::new(sid()));
    let remote = remote_over(&peer).await;
    match remote.subscribe().await {
        Err(Error::Unsupported { store, what }) => {
            assert_eq!((store, what), ("test", "subscribe"));
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("subscribed"),
    }
}

#[tokio::test]
async fn remote_store_syncs_with_the_engine() {
    let peer = Local::new(MemoryStore::new(sid()));
    peer.store.append(changes("a", 4, 10)).await.unwrap();
    let local = MemoryStore::new(sid());
    local.append(changes("b", 2, 10)).await.unwrap();
    let remote = remote_over(&peer).await;
    cairn::sync::sync(&local, &remote, &cairn::sync::SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(local.len(), 6);
    assert_eq!(peer.store.len(), 6);
}

#[tokio::test]
async fn cache_first_reads_fetch_what_the_cache_lacks() {
    let peer = Local::new(MemoryStore::new(sid()));
    let cs = changes("doc", 3, 10);
    let ids: Vec<_> = cs.iter().map(|c| c.id()).collect();
    peer.store.append(cs.clone()).await.unwrap();
    let (cache, store) = cache_first(&peer, true);

    assert_eq!(store.get_changes(&ids[..1]).await.unwrap(), cs[..1]);
    assert_eq!(cache.len(), 1, "fetched and cached");
    assert_eq!(store.get_metas(&ids[1..2]).await.unwrap().len(), 1);
    // `has_changes` describes the cache: it does not fetch (the sync
    // engine asks it which changes to bring, and screens them itself).
    let before = peer.calls.load(Ordering::SeqCst);
    assert_eq!(
        store.has_changes(&ids).await.unwrap(),
        vec![true, true, false]
    );
    assert_eq!(peer.calls.load(Ordering::SeqCst), before);
    assert_eq!(store.get_changes(&ids[2..]).await.unwrap(), cs[2..]);
    assert_eq!(cache.len(), 3);

    // All cached: answered without calling the peer.
    let before = peer.calls.load(Ordering::SeqCst);
    assert_eq!(store.get_changes(&ids).await.unwrap(), cs);
    assert_eq!(peer.calls.load(Ordering::SeqCst), before);

    // Listing methods describe the cache.
    assert_eq!(store.scan(0, 10).await.unwrap().len(), 3);
    assert_eq!(store.head().await.unwrap(), cache.head().await.unwrap());
    assert_eq!(store.store_id(), &sid());
    assert!(store.capabilities().remote);
}

#[tokio::test]
async fn cache_first_answers_from_the_cache_when_offline_or_the_peer_is_lost() {
    let peer = Local::new(MemoryStore::new(sid()));
    let cs = changes("doc", 2, 10);
    let ids: Vec<_> = cs.iter().map(|c| c.id()).collect();
    peer.store.append(cs.clone()).await.unwrap();

    let (_, offline) = cache_first(&peer, false);
    assert!(offline.get_changes(&ids).await.unwrap().is_empty());
    assert_eq!(offline.has_changes(&ids).await.unwrap(), vec![false; 2]);
    assert_eq!(peer.calls.load(Ordering::SeqCst), 0);

    let (_, lost) = cache_first(&peer, true);
    peer.fail.store(CLOSED, Ordering::SeqCst);
    assert!(lost.get_metas(&ids).await.unwrap().is_empty());
}

#[tokio::test]
async fn cache_first_returns_permanent_fetch_errors() {
    let peer = Local::new(MemoryStore::new(sid()));
    let cs = changes("doc", 1, 10);
    let (_, store) = cache_first(&peer, true);
    peer.fail.store(UNAUTHORIZED, Ordering::SeqCst);
    let r = store.get_changes(&[cs[0].id()]).await;
    assert!(matches!(r, Err(Error::Unauthorized { .. })), "{r:?}");
}

#[tokio::test]
async fn cache_first_append_never_waits_on_the_peer_and_the_outbox_delivers_it() {
    let peer = Local::new(MemoryStore::new(sid()));
    let (cache, store) = cache_first(&peer, true);
    let cs = changes("doc", 2, 10);
    let out = store.append(cs.clone()).await.unwrap();
    assert_eq!(out.new.len(), 2);
    assert_eq!(cache.len(), 2);
    assert_eq!(
        peer.calls.load(Ordering::SeqCst),
        0,
        "append did not call the peer"
    );
    let node = store.node().clone();
    assert_eq!(node.outbox().pending(), 2);
    let remote = remote_over(&peer).await;
    let delivery = tokio::spawn(async move {
        node.deliver(peer_id(), &remote, &DeliveryOptions::default())
            .await
    });
    store
        .node()
        .outbox()
        .flush(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(peer.store.len(), 2);
    assert_eq!(store.node().outbox().pending(), 0);
    delivery.abort();
}

#[tokio::test]
async fn delivery_retries_transient_refusals_on_the_same_connection() {
    let peer = Local::new(MemoryStore::new(sid()));
    peer.busy_appends.store(3, Ordering::SeqCst);
    let (_, store) = cache_first(&peer, true);
    store.append(changes("doc", 3, 10)).await.unwrap();
    let node = store.node().clone();
    let remote = remote_over(&peer).await;
    let opts = DeliveryOptions {
        backoff: Backoff {
            min: Duration::from_millis(5),
            max: Duration::from_millis(50),
        },
        ..DeliveryOptions::default()
    };
    let delivery = tokio::spawn(async move { node.deliver(peer_id(), &remote, &opts).await });
    store
        .node()
        .outbox()
        .flush(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(peer.store.len(), 3);
    assert_eq!(
        peer.appends.load(Ordering::SeqCst),
        4,
        "three busy answers, then one delivery"
    );
    delivery.abort();
}

#[tokio::test]
async fn a_permanent_refusal_is_reported_once_not_retried() {
    let peer = Local::new(MemoryStore::new(sid()));
    peer.fail.store(UNAUTHORIZED, Ordering::SeqCst);
    let (cache, store) = cache_first(&peer, true);
    store.append(changes("doc", 2, 10)).await.unwrap();
    let mut events = store.node().events();
    let node = store.node().clone();
    let remote = remote_over(&peer).await;
    let delivery = tokio::spawn(async move {
        node.deliver(peer_id(), &remote, &DeliveryOptions::default())
            .await
    });
    let r = store.node().outbox().flush(Duration::from_secs(10)).await;
    assert!(matches!(r, Err(Error::Unauthorized { .. })), "{r:?}");
    assert_eq!(
        peer.appends.load(Ordering::SeqCst),
        1,
        "refused once, not retried"
    );
    assert_eq!(cache.len(), 2, "the changes stay in the cache");
    assert_eq!(store.node().outbox().failures().len(), 1);
    // The event arrives once the delivery loop notices (bounded wait).
    let ev = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(StoreEvent::DeliveryRefused(f)) => return f,
                Ok(_) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    });
    delivery.abort();
    let _ = delivery.await;
    let f = ev.await.unwrap();
    assert_eq!(f.ids.len(), 2);
}

#[tokio::test]
async fn a_local_append_the_policy_refuses_is_a_typed_error_and_stores_nothing() {
    let peer = Local::new(MemoryStore::new(sid()));
    let (cache, store) = cache_first_with(&peer, true, Arc::new(RequireSignature));
    let unsigned = changes("doc", 1, 10);
    match store.append(unsigned.clone()).await {
        Err(Error::Rejected { id, reason }) => {
            assert_eq!(id, unsigned[0].id());
            assert_eq!(reason, RejectReason::MissingSignature);
        }
        other => panic!("{other:?}"),
    }
    assert!(cache.is_empty());
    assert_eq!(store.node().outbox().pending(), 0);
}

#[tokio::test]
async fn nothing_the_policy_refuses_enters_the_cache_by_fetch_or_notification() {
    let kp = Keypair::generate();
    let genuine = signed_changes(&kp, "doc", 2);
    let fakes: Vec<Change> = genuine.iter().map(stripped).collect();
    let peer = Local::new(MemoryStore::new(sid()));
    peer.store.append(fakes.clone()).await.unwrap();
    peer.store.append(genuine[1..].to_vec()).await.unwrap();
    let (cache, store) = cache_first_with(&peer, true, Arc::new(RequireSignature));
    let mut events = store.node().events();

    // Fetch on a cache miss: the unsigned copy is not cached or returned.
    let got = store.get_changes(&[fakes[0].id()]).await.unwrap();
    assert!(got.is_empty(), "a refused change was returned");
    assert!(cache.is_empty(), "a refused change was cached");
    match events.recv().await.unwrap() {
        StoreEvent::Refused {
            id, reason, via, ..
        } => {
            assert_eq!(id, fakes[0].id());
            assert_eq!(reason, RejectReason::MissingSignature);
            assert_eq!(via, Arrival::FetchOnMiss);
        }
        other => panic!("{other:?}"),
    }

    // A notification naming both the fake and a genuine change: only the
    // genuine one is fetched and cached.
    let remote = remote_over(&peer).await;
    let metas = vec![fakes[1].meta.clone(), genuine[1].meta.clone()];
    store
        .node()
        .ingest(peer_id(), &remote, &metas)
        .await
        .unwrap();
    assert_eq!(cache.all_change_ids().await.unwrap(), vec![genuine[1].id()]);
    match events.recv().await.unwrap() {
        StoreEvent::Refused { id, via, .. } => {
            assert_eq!(id, fakes[1].id());
            assert_eq!(via, Arrival::Notification);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.node().refused(), 2);

    // A catch-up pull screens too, and reports.
    let state = Arc::new(std::sync::Mutex::new(cairn::SyncState::default()));
    let report = store
        .node()
        .catch_up(
            peer_id(),
            &remote,
            &state,
            CatchUp {
                pull: true,
                push: false,
                batch_bytes: 1 << 20,
                strict: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(report.pulled.rejected.len(), 2);
    assert_eq!(cache.all_change_ids().await.unwrap(), vec![genuine[1].id()]);
    assert_eq!(
        state.lock().unwrap().retry_pull.len(),
        2,
        "the refused changes are remembered for the next catch-up"
    );
}

#[tokio::test]
async fn a_serving_policy_refuses_appends_with_a_typed_error() {
    let peer = Local::with(
        MemoryStore::new(sid()),
        ServeOptions {
            verifier: Arc::new(RequireSignature),
            ..ServeOptions::default()
        },
    );
    let remote = remote_over(&peer).await;
    let kp = Keypair::generate();
    let mut batch = signed_changes(&kp, "doc", 2);
    batch.push(changes("doc", 1, 10).remove(0));
    match remote.append(batch.clone()).await {
        Err(Error::Rejected { id, reason }) => {
            assert_eq!(id, batch[2].id());
            assert_eq!(reason, RejectReason::MissingSignature);
        }
        other => panic!("{other:?}"),
    }
    assert!(peer.store.is_empty(), "nothing of the batch stored");
    // The sync engine drops the refused change and delivers the rest.
    let local = MemoryStore::new(sid());
    local.append(batch.clone()).await.unwrap();
    let r = cairn::sync::push(&local, &remote, &cairn::SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(r.pushed.changes, 2);
    assert_eq!(r.pushed.rejected.len(), 1);
    assert_eq!(r.pushed.rejected[0].id, batch[2].id());
}

#[test]
fn framed_size_is_the_size_of_a_one_change_append_frame() {
    for c in changes("doc", 3, 777) {
        let msg = Message::Request {
            id: 9,
            body: Request::Append(vec![c.clone()]),
        };
        let wire = encode(&msg, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(framed_size(&c), wire.len());
    }
}

#[tokio::test]
async fn ingest_fetches_only_what_the_cache_lacks() {
    let peer = Local::new(MemoryStore::new(sid()));
    let cs = changes("doc", 3, 10);
    peer.store.append(cs.clone()).await.unwrap();
    let (cache, store) = cache_first(&peer, true);
    cache.append(cs[..1].to_vec()).await.unwrap();
    let remote = remote_over(&peer).await;
    let metas: Vec<_> = cs.iter().map(|c| c.meta.clone()).collect();
    let node = store.node();

    node.ingest(peer_id(), &remote, &metas).await.unwrap();
    assert_eq!(cache.len(), 3);

    // Nothing missing: no call at all.
    let before = peer.calls.load(Ordering::SeqCst);
    node.ingest(peer_id(), &remote, &metas).await.unwrap();
    assert_eq!(peer.calls.load(Ordering::SeqCst), before);

    // A failed fetch is returned.
    let fresh = changes("other", 1, 10);
    peer.fail.store(CLOSED, Ordering::SeqCst);
    let r = node
        .ingest(peer_id(), &remote, &[fresh[0].meta.clone()])
        .await;
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
}

/// A store type that forwards to its `CacheFirst`, as the adapters do.
#[derive(Debug)]
struct Wrapped {
    store: CacheFirst<OnePeer>,
}

forward_store!(Wrapped => store);

#[tokio::test]
async fn forward_store_forwards_every_method() {
    let peer = Local::new(MemoryStore::new(sid()));
    let cs = changes("doc", 2, 10);
    let ids: Vec<_> = cs.iter().map(|c| c.id()).collect();
    peer.store.append(cs.clone()).await.unwrap();
    let (cache, store) = cache_first(&peer, true);
    let wrapped: Arc<DynAppendOnlyStore> = Arc::new(Wrapped { store });

    assert_eq!(wrapped.get_changes(&ids).await.unwrap(), cs);
    assert_eq!(cache.len(), 2);
    assert!(wrapped.capabilities().remote);
    assert_eq!(wrapped.store_id(), &sid());
    let more = changes("more", 1, 10);
    wrapped.append(more.clone()).await.unwrap();
    assert_eq!(cache.len(), 3);
    let doc = DocId::new("doc").unwrap();
    assert_eq!(wrapped.changes_for_doc(&doc, false).await.unwrap().len(), 2);
    assert!(
        wrapped
            .find_new_changes_for_doc(&ids, &doc)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(wrapped.all_change_ids().await.unwrap().len(), 3);
    assert_eq!(wrapped.scan(0, 10).await.unwrap().len(), 3);
}

#[test]
fn backoff_doubles_from_min_and_caps_at_max() {
    let b = Backoff {
        min: Duration::from_millis(50),
        max: Duration::from_secs(5),
    };
    assert_eq!(b.delay(0), Duration::from_millis(50));
    assert_eq!(b.delay(1), Duration::from_millis(50));
    assert_eq!(b.delay(2), Duration::from_millis(100));
    assert_eq!(b.delay(7), Duration::from_millis(3200));
    assert_eq!(b.delay(8), Duration::from_secs(5));
    assert_eq!(b.delay(u32::MAX), Duration::from_secs(5));
}

#[test]
fn backoff_never_overflows() {
    let b = Backoff {
        min: Duration::MAX,
        max: Duration::MAX,
    };
    assert_eq!(b.delay(u32::MAX), Duration::MAX);
    let uncapped = Backoff {
        min: Duration::from_secs(1),
        max: Duration::MAX,
    };
    // The doubling stops after 16 times.
    assert_eq!(uncapped.delay(17), Duration::from_secs(1 << 16));
    assert_eq!(uncapped.delay(1000), Duration::from_secs(1 << 16));
}
