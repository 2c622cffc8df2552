#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The pieces shared by network stores — `RemoteStore`, `CacheFirst`,
//! `ingest`, `forward_store!`, frame checks and `Backoff` — over an
//! in-process `Call` that dispatches to a memory store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cairn::{
    AppendOnlyStore, AppendOutcome, Change, ChangeBuilder, ChangeKind, DocId, DynAppendOnlyStore,
    Error, Result, StoreId,
};
use cairn_memory::MemoryStore;
use cairn_protocol::*;

const OK: u8 = 0;
const CLOSED: u8 = 1;
const UNAUTHORIZED: u8 = 2;

/// A peer in the same process: every call is answered by `dispatch` on its
/// store, unless told to fail.
#[derive(Debug)]
struct Local {
    store: MemoryStore,
    fail: AtomicU8,
    calls: AtomicUsize,
}

impl Local {
    fn new(store: MemoryStore) -> Arc<Self> {
        Arc::new(Local {
            store,
            fail: AtomicU8::new(OK),
            calls: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl Call for Local {
    async fn call(&self, request: Request) -> Result<Response> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.fail.load(Ordering::SeqCst) {
            CLOSED => Err(Error::Closed),
            UNAUTHORIZED => Err(Error::Unauthorized {
                reason: "no".into(),
            }),
            _ => Ok(dispatch(&self.store, request).await),
        }
    }
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

/// A transport with one peer, appending to the cache then the peer.
#[derive(Debug)]
struct OnePeer {
    peer: Arc<Local>,
    online: bool,
    max_frame: usize,
}

#[async_trait]
impl Transport for OnePeer {
    fn max_frame(&self) -> usize {
        self.max_frame
    }
    fn remotes(&self) -> Vec<Arc<DynAppendOnlyStore>> {
        if !self.online {
            return Vec::new();
        }
        let hello = client_hello(sid(), 0);
        vec![Arc::new(RemoteStore::new(
            "test",
            sid(),
            &hello,
            self.peer.clone(),
        ))]
    }
    async fn append(
        &self,
        cache: &DynAppendOnlyStore,
        changes: Vec<Change>,
    ) -> Result<AppendOutcome> {
        let out = cache.append(changes.clone()).await?;
        self.peer.remote_append(changes).await?;
        Ok(out)
    }
}

fn cache_first(peer: &Arc<Local>, online: bool) -> (MemoryStore, CacheFirst<OnePeer>) {
    let cache = MemoryStore::new(sid());
    let store = CacheFirst::new(
        Arc::new(cache.clone()),
        Arc::new(OnePeer {
            peer: peer.clone(),
            online,
            max_frame: DEFAULT_MAX_FRAME as usize,
        }),
    );
    (cache, store)
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
    assert_eq!(store.has_changes(&ids).await.unwrap(), vec![true; 3]);
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
async fn cache_first_append_goes_through_the_transport() {
    let peer = Local::new(MemoryStore::new(sid()));
    let (cache, store) = cache_first(&peer, true);
    let cs = changes("doc", 2, 10);
    let out = store.append(cs.clone()).await.unwrap();
    assert_eq!(out.new.len(), 2);
    assert_eq!(cache.len(), 2);
    assert_eq!(peer.store.len(), 2);
}

#[tokio::test]
async fn cache_first_refuses_a_change_larger_than_a_frame_before_writing() {
    let peer = Local::new(MemoryStore::new(sid()));
    let cache = MemoryStore::new(sid());
    let cs = changes("doc", 2, 5000);
    let limit = framed_size(&cs[1]) - 1;
    let store = CacheFirst::new(
        Arc::new(cache.clone()),
        Arc::new(OnePeer {
            peer: peer.clone(),
            online: true,
            max_frame: limit,
        }),
    );
    match store.append(cs).await {
        Err(Error::TooLarge {
            what,
            limit: l,
            actual,
        }) => {
            assert_eq!(what, "change");
            assert_eq!(l, limit as u64);
            assert_eq!(actual, limit as u64 + 1);
        }
        other => panic!("{other:?}"),
    }
    assert!(cache.is_empty());
    assert_eq!(peer.calls.load(Ordering::SeqCst), 0);
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

#[test]
fn check_frame_size_accepts_changes_that_fit() {
    let cs = changes("doc", 2, 100);
    let max = cs.iter().map(framed_size).max().unwrap();
    check_frame_size(&cs, max).unwrap();
    check_frame_size(&[], 0).unwrap();
    assert!(matches!(
        check_frame_size(&cs, max - 1),
        Err(Error::TooLarge { .. })
    ));
}

#[tokio::test]
async fn ingest_fetches_only_what_the_cache_lacks() {
    let peer = Local::new(MemoryStore::new(sid()));
    let cs = changes("doc", 3, 10);
    peer.store.append(cs.clone()).await.unwrap();
    let cache = MemoryStore::new(sid());
    cache.append(cs[..1].to_vec()).await.unwrap();
    let remote = remote_over(&peer).await;
    let metas: Vec<_> = cs.iter().map(|c| c.meta.clone()).collect();

    ingest(&cache, &remote, &metas).await.unwrap();
    assert_eq!(cache.len(), 3);

    // Nothing missing: no call at all.
    let before = peer.calls.load(Ordering::SeqCst);
    ingest(&cache, &remote, &metas).await.unwrap();
    assert_eq!(peer.calls.load(Ordering::SeqCst), before);

    // A failed fetch is returned.
    let fresh = changes("other", 1, 10);
    peer.fail.store(CLOSED, Ordering::SeqCst);
    let r = ingest(&cache, &remote, &[fresh[0].meta.clone()]).await;
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
    assert_eq!(peer.store.len(), 3);
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
