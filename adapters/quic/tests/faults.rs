#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Faults: drops, restarts, wrong keys, unauthorised peers, oversized frames,
//! and live propagation.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cairn::*;
use cairn_memory::MemoryStore;
use cairn_protocol::{FrameDecoder, Message, Response, WireError, client_hello, encode};
use cairn_quic::*;
use common::*;
use futures::StreamExt;
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_changes_reach_other_clients_subscribe() {
    let skey = Keypair::generate();
    let backing = Arc::new(MemoryStore::new(sid()));
    let srv = server(local(), &skey, backing.clone(), Acl::open());
    let a = client(&srv, &Keypair::generate());
    let b = client(&srv, &Keypair::generate());
    a.wait_connected(T).await.unwrap();
    b.wait_connected(T).await.unwrap();
    let mut sub = b.subscribe().await.unwrap();
    let cs = changes("d", 3, 100);
    a.append(cs.clone()).await.unwrap();
    // And one appended at the server directly, by anyone.
    let direct = changes("e", 1, 10);
    backing.append(direct.clone()).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        let m = tokio::time::timeout(T, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(m.id);
    }
    for c in cs.iter().chain(&direct) {
        assert!(got.contains(&c.id()));
    }
    srv.shutdown().await;
}

/// A server store that announces its `n`-th `get_changes` call.
#[derive(Debug)]
struct Gate {
    inner: Arc<DynAppendOnlyStore>,
    calls: AtomicU64,
    at: u64,
    hit: Arc<Notify>,
}

#[async_trait]
impl AppendOnlyStore for Gate {
    fn store_id(&self) -> &StoreId {
        self.inner.store_id()
    }
    async fn append(&self, c: Vec<Change>) -> Result<AppendOutcome> {
        self.inner.append(c).await
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            self.hit.notify_one();
            // Never answer: the connection is dropped meanwhile.
            std::future::pending::<()>().await;
        }
        self.inner.get_changes(ids).await
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.inner.scan(after, limit).await
    }
    async fn head(&self) -> Result<Head> {
        self.inner.head().await
    }
    async fn subscribe(&self) -> Result<ChangeStream> {
        self.inner.subscribe().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_mid_pull_then_rerun_converges() {
    let skey = Keypair::generate();
    let backing = Arc::new(MemoryStore::new(sid()));
    backing.append(changes("d", 5000, 512)).await.unwrap();
    let hit = Arc::new(Notify::new());
    let gate = Arc::new(Gate {
        inner: backing.clone(),
        calls: AtomicU64::new(0),
        at: 3,
        hit: hit.clone(),
    });
    let srv = server(local(), &skey, gate, Acl::open());
    let addr = srv.local_addr();
    let c = client(&srv, &Keypair::generate());
    let mut st = c.state();
    tokio::time::timeout(T, hit.notified()).await.unwrap();
    drop(srv); // the connection drops mid-pull
    wait_state(&mut st, |s| matches!(s, ConnectionState::Retrying { .. })).await;
    let partial = c.head().await.unwrap().seq;
    assert!(partial > 0 && partial < 5000, "partial pull: {partial}");
    let srv = server(addr, &skey, backing.clone(), Acl::open());
    wait_state(&mut st, |s| *s == ConnectionState::Connected).await;
    assert_eq!(
        c.all_change_ids().await.unwrap(),
        backing.all_change_ids().await.unwrap()
    );
    assert_eq!(c.head().await.unwrap().seq, 5000, "nothing duplicated");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_client_reconnects_and_catches_up_both_ways() {
    let skey = Keypair::generate();
    let backing = Arc::new(MemoryStore::new(sid()));
    let srv = server(local(), &skey, backing.clone(), Acl::open());
    let addr = srv.local_addr();
    let c = client(&srv, &Keypair::generate());
    c.wait_connected(T).await.unwrap();
    let mut st = c.state();
    srv.shutdown().await;
    wait_state(&mut st, |s| matches!(s, ConnectionState::Retrying { .. })).await;
    // Offline: the client appends locally; someone appends at the server.
    let mine = changes("mine", 10, 100);
    c.append(mine.clone()).await.unwrap();
    let theirs = changes("theirs", 7, 100);
    backing.append(theirs.clone()).await.unwrap();
    let srv = server(addr, &skey, backing.clone(), Acl::open());
    wait_state(&mut st, |s| *s == ConnectionState::Connected).await;
    let ids: Vec<ChangeId> = mine.iter().chain(&theirs).map(|c| c.id()).collect();
    assert!(backing.has_changes(&ids).await.unwrap().iter().all(|h| *h));
    assert!(
        c.cache()
            .has_changes(&ids)
            .await
            .unwrap()
            .iter()
            .all(|h| *h)
    );
    let report = c.sync().await.unwrap();
    assert_eq!(report.pulled.changes + report.pushed.changes, 0);
    srv.shutdown().await;
}

/// The store is refused with `want`: `wait_connected` returns the typed
/// error within 2 s (not after its whole timeout), the state says why, and
/// it never connected.
async fn refused(store: &QuicStore, want: Refusal) -> Error {
    let err = store
        .wait_connected(Duration::from_secs(2))
        .await
        .expect_err("a refused store must not connect");
    assert!(
        !matches!(err, Error::Timeout { .. }),
        "the refusal must be reported at once, not as a timeout: {err}"
    );
    match *store.state().borrow() {
        ConnectionState::Refused { reason, .. } => assert_eq!(reason, want),
        other => panic!("state {other:?}, expected Refused({want:?})"),
    }
    assert!(store.sync().await.is_err());
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_key_is_refused() {
    let skey = Keypair::generate();
    let srv = server(
        local(),
        &skey,
        Arc::new(MemoryStore::new(sid())),
        Acl::open(),
    );
    let impostor = Keypair::generate().author();
    let cache = Arc::new(MemoryStore::new(sid()));
    let c = QuicStore::new(
        cache,
        srv.local_addr(),
        impostor,
        &Keypair::generate(),
        fast(),
    )
    .unwrap();
    match refused(&c, Refusal::WrongPeerKey).await {
        Error::Unauthorized { reason } => assert!(reason.contains("pinned"), "{reason}"),
        other => panic!("{other:?}"),
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_client_is_refused() {
    let skey = Keypair::generate();
    let friend = Keypair::generate();
    let acl = Acl::new().allow(&sid(), friend.author(), Permission::ReadWrite);
    let srv = server(local(), &skey, Arc::new(MemoryStore::new(sid())), acl);
    let stranger = client(&srv, &Keypair::generate());
    assert!(matches!(
        refused(&stranger, Refusal::Unauthorized).await,
        Error::Unauthorized { .. }
    ));
    let ok = client(&srv, &friend);
    ok.wait_connected(T).await.unwrap();
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_peer_asking_for_an_unknown_store_is_told_so() {
    let skey = Keypair::generate();
    let friend = Keypair::generate();
    let other = StoreId::new("tenant/other").unwrap();
    let acl = Acl::new().allow(&sid(), friend.author(), Permission::ReadWrite);
    let srv = server(local(), &skey, Arc::new(MemoryStore::new(sid())), acl);
    let c = QuicStore::new(
        Arc::new(MemoryStore::new(other)),
        srv.local_addr(),
        srv.peer_id(),
        &friend,
        fast(),
    )
    .unwrap();
    match refused(&c, Refusal::UnknownStore).await {
        Error::NotFound { what } => assert!(what.contains("tenant/other"), "{what}"),
        other => panic!("{other:?}"),
    }
    // A stranger asking for the same store learns nothing about it.
    let s = QuicStore::new(
        Arc::new(MemoryStore::new(StoreId::new("tenant/other").unwrap())),
        srv.local_addr(),
        srv.peer_id(),
        &Keypair::generate(),
        fast(),
    )
    .unwrap();
    refused(&s, Refusal::Unauthorized).await;
    srv.shutdown().await;
}

/// An access policy that records when it was asked (one ask per
/// connection attempt).
struct Counting {
    inner: Acl,
    asked: std::sync::Mutex<Vec<std::time::Instant>>,
    notify: Notify,
}

impl AccessPolicy for Counting {
    fn permission(&self, peer: &PeerId, store: &StoreId) -> Permission {
        self.asked.lock().unwrap().push(std::time::Instant::now());
        self.notify.notify_waiters();
        self.inner.permission(peer, store)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_retries_at_the_backoff_cap_not_in_a_loop() {
    let policy = Arc::new(Counting {
        inner: Acl::new(),
        asked: Default::default(),
        notify: Notify::new(),
    });
    let skey = Keypair::generate();
    let srv = QuicServer::bind(
        local(),
        &skey,
        Arc::new(Stores::new().with(Arc::new(MemoryStore::new(sid())))),
        policy.clone(),
        ServerOptions::default(),
    )
    .unwrap();
    let cap = Duration::from_millis(300);
    let opts = QuicStoreOptions {
        backoff_min: Duration::from_millis(1),
        backoff_max: cap,
        ..QuicStoreOptions::default()
    };
    let c = QuicStore::new(
        Arc::new(MemoryStore::new(sid())),
        srv.local_addr(),
        srv.peer_id(),
        &Keypair::generate(),
        opts,
    )
    .unwrap();
    // Wait (bounded) until the server was asked four times.
    tokio::time::timeout(T, async {
        loop {
            let n = policy.notify.notified();
            if policy.asked.lock().unwrap().len() >= 4 {
                break;
            }
            n.await;
        }
    })
    .await
    .unwrap();
    let asked = policy.asked.lock().unwrap().clone();
    for w in asked.windows(2) {
        // Refusals wait the cap at once: never the 1 ms minimum, never
        // ~20 attempts a second.
        assert!(
            w[1] - w[0] >= cap - Duration::from_millis(20),
            "attempts {:?} apart",
            w[1] - w[0]
        );
    }
    assert!(matches!(
        *c.state().borrow(),
        ConnectionState::Refused {
            reason: Refusal::Unauthorized,
            ..
        } | ConnectionState::Connecting
    ));
    c.close().await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_peer_writes_are_refused() {
    let skey = Keypair::generate();
    let reader = Keypair::generate();
    let backing = Arc::new(MemoryStore::new(sid()));
    backing.append(changes("d", 5, 10)).await.unwrap();
    let acl = Acl::new().allow(&sid(), reader.author(), Permission::Read);
    let srv = server(local(), &skey, backing.clone(), acl);
    let c = client(&srv, &reader);
    c.wait_connected(T).await.unwrap();
    assert_eq!(c.head().await.unwrap().seq, 5, "reads work");
    // The append lands in the cache; the server's refusal is reported by
    // flush, once, and the connection stays up (no reconnect loop).
    let mut st = c.state();
    st.borrow_and_update();
    c.append(changes("x", 1, 10)).await.unwrap();
    match c.flush(T).await {
        Err(Error::Unauthorized { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(c.pending(), 0);
    assert_eq!(c.delivery_failures().len(), 1);
    assert_eq!(backing.head().await.unwrap().seq, 5);
    assert_eq!(c.head().await.unwrap().seq, 6, "the cache keeps it");
    assert!(!st.has_changed().unwrap(), "the connection stayed up");
    assert_eq!(*st.borrow(), ConnectionState::Connected);
    // A reconnect does not turn the refused change into a loop either: the
    // catch-up push is refused, reported, and the session stays up.
    let addr = srv.local_addr();
    srv.shutdown().await;
    let acl = Acl::new().allow(&sid(), reader.author(), Permission::Read);
    let srv = server(addr, &skey, backing.clone(), acl);
    wait_state(&mut st, |s| *s == ConnectionState::Connected).await;
    // An explicit sync reports the refusal; the session stays up.
    assert!(matches!(c.sync().await, Err(Error::Unauthorized { .. })));
    assert_eq!(*c.state().borrow(), ConnectionState::Connected);
    assert_eq!(backing.head().await.unwrap().seq, 5);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_is_a_clear_error_and_server_keeps_serving() {
    let skey = Keypair::generate();
    let ckey = Keypair::generate();
    let srv = server(
        local(),
        &skey,
        Arc::new(MemoryStore::new(sid())),
        Acl::open(),
    );
    // A raw client that lies about a frame's length.
    let mut ep = quinn::Endpoint::client(local()).unwrap();
    ep.set_default_client_config(cairn_quic::config::client_config(&ckey, srv.peer_id()).unwrap());
    let conn = ep
        .connect(srv.local_addr(), "cairn")
        .unwrap()
        .await
        .unwrap();
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    let hello = Message::Hello(client_hello(sid(), 1 << 24));
    s.write_all(&encode(&hello, 1 << 24).unwrap())
        .await
        .unwrap();
    s.finish().unwrap();
    let bytes = r.read_to_end(1 << 20).await.unwrap();
    let mut dec = FrameDecoder::new(1 << 24);
    dec.push(&bytes);
    assert!(matches!(dec.pop().unwrap(), Some(Message::Hello(_))));
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    let mut evil = (100u32 << 20).to_be_bytes().to_vec();
    evil.extend_from_slice(&[0x10, 0, 0, 0, 0, 1]);
    s.write_all(&evil).await.unwrap();
    let _ = s.finish();
    let bytes = r.read_to_end(1 << 20).await.unwrap();
    let mut dec = FrameDecoder::new(1 << 24);
    dec.push(&bytes);
    match dec.pop().unwrap() {
        Some(Message::Response {
            body:
                Response::Error(WireError::TooLarge {
                    what,
                    limit,
                    actual,
                }),
            ..
        }) => {
            assert_eq!(what, "frame");
            assert_eq!(limit, 16 << 20);
            assert_eq!(actual, 100 << 20);
        }
        other => panic!("{other:?}"),
    }
    // The server goes on serving: the same connection and other clients.
    let c = client(&srv, &Keypair::generate());
    c.wait_connected(T).await.unwrap();
    let cs = changes("d", 3, 10);
    c.append(cs.clone()).await.unwrap();
    c.flush(T).await.unwrap();
    let other = client(&srv, &Keypair::generate());
    other.wait_connected(T).await.unwrap();
    assert_eq!(other.head().await.unwrap().seq, 3);
    conn.close(0u32.into(), b"");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_store_is_not_found_for_a_known_peer_and_unauthorized_for_a_stranger() {
    let skey = Keypair::generate();
    let friend = Keypair::generate();
    let acl = Acl::new().allow(&sid(), friend.author(), Permission::ReadWrite);
    let srv = server(local(), &skey, Arc::new(MemoryStore::new(sid())), acl);
    let typo = StoreId::new("tenant/dbb").unwrap();
    let connect = |key: Keypair, store: StoreId| {
        let (addr, peer) = (srv.local_addr(), srv.peer_id());
        async move {
            QuicClient::connect(addr, peer, &key, &store, cairn_protocol::DEFAULT_MAX_FRAME).await
        }
    };
    match connect(friend.clone(), typo.clone()).await {
        Err(Error::NotFound { what }) => assert!(what.contains("tenant/dbb"), "{what}"),
        other => panic!("a known peer's typo: {other:?}"),
    }
    match connect(Keypair::generate(), typo).await {
        Err(Error::Unauthorized { .. }) => {}
        other => panic!("a stranger learns nothing: {other:?}"),
    }
    match connect(Keypair::generate(), sid()).await {
        Err(Error::Unauthorized { .. }) => {}
        other => panic!("a stranger on a served store: {other:?}"),
    }
    let ok = connect(friend, sid()).await.unwrap();
    ok.close().await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_subscribes() {
    let skey = Keypair::generate();
    let backing = Arc::new(MemoryStore::new(sid()));
    let srv = server(local(), &skey, backing.clone(), Acl::open());
    let me = Keypair::generate();
    let c = QuicClient::connect(
        srv.local_addr(),
        srv.peer_id(),
        &me,
        &sid(),
        cairn_protocol::DEFAULT_MAX_FRAME,
    )
    .await
    .unwrap();
    let mut sub = c.subscribe().await.unwrap();
    let batch = changes("live", 3, 10);
    backing.append(batch.clone()).await.unwrap();
    for want in &batch {
        let got = tokio::time::timeout(T, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.id, want.id());
    }
    c.close().await;
    srv.shutdown().await;
}
