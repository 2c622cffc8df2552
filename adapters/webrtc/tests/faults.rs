#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Rooms, meshes and faults over loopback: signaling server, re-pairing,
//! passwords, policies, large payloads.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cairn::*;
use cairn_conformance::util::{chain, change, doc, sid};
use cairn_memory::MemoryStore;
use cairn_webrtc::*;
use futures::StreamExt;

const T: Duration = Duration::from_secs(60);

async fn ids(s: &dyn AppendOnlyStore) -> BTreeSet<ChangeId> {
    s.all_change_ids().await.unwrap().into_iter().collect()
}

/// Wait until `store` holds at least `want` (watching its subscription).
async fn wait_holds(store: &dyn AppendOnlyStore, want: &BTreeSet<ChangeId>) {
    let mut sub = store.subscribe().await.unwrap();
    let have = ids(store).await;
    let mut missing: BTreeSet<ChangeId> = want.difference(&have).copied().collect();
    while !missing.is_empty() {
        let m = tokio::time::timeout(T, sub.next())
            .await
            .unwrap_or_else(|_| panic!("{} changes never arrived", missing.len()))
            .unwrap()
            .unwrap();
        missing.remove(&m.id);
    }
}

fn peer(cache: Arc<MemoryStore>, key: &Keypair, acl: Acl) -> WebRtcStore {
    WebRtcStore::new(cache, key, Arc::new(acl), WebRtcStoreOptions::loopback())
}

async fn joined(
    server: &str,
    room: &RoomCode,
    cache: Arc<MemoryStore>,
    key: &Keypair,
) -> WebRtcStore {
    let s = peer(cache, key, Acl::open());
    let sig = WsSignaling::connect(server, room, None, key).await.unwrap();
    s.join(sig);
    s
}

fn mem() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(sid()))
}

/// Pair `a` and `b` by hand (a offers, b answers); returns b's peer id.
async fn pair(a: &WebRtcStore, b: &WebRtcStore) -> PeerId {
    let (offer, pending) = a.offer().await.unwrap();
    let answer = b.answer(&offer).await.unwrap();
    pending.accept(&answer).await.unwrap()
}

async fn signaling() -> SignalingServer {
    SignalingServer::bind("127.0.0.1:0".parse().unwrap(), SignalingOptions::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_of_three_forms_a_mesh_and_converges() {
    let srv = signaling().await;
    let room = RoomCode::random().unwrap();
    let (ka, kb, kc) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    let (ca, cb, cc) = (mem(), mem(), mem());
    ca.append(chain(&doc("a"), 50, 100)).await.unwrap();
    cb.append(chain(&doc("b"), 50, 100)).await.unwrap();
    cc.append(chain(&doc("c"), 50, 100)).await.unwrap();
    let a = joined(&srv.url(), &room, ca.clone(), &ka).await;
    let b = joined(&srv.url(), &room, cb.clone(), &kb).await;
    let c = joined(&srv.url(), &room, cc.clone(), &kc).await;
    for s in [&a, &b, &c] {
        s.wait_peers(2, T).await.unwrap();
    }
    // Live: an append anywhere reaches everyone.
    let live = change(&doc("live"), ChangeKind::Create, &[], 10);
    b.append(vec![live.clone()]).await.unwrap();
    let mut want = ids(&*ca).await;
    want.extend(ids(&*cb).await);
    want.extend(ids(&*cc).await);
    assert_eq!(want.len(), 151);
    for s in [&a, &b, &c] {
        wait_holds(s, &want).await;
    }
    for s in [&a, &b, &c] {
        s.close().await;
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_payload_arrives_in_chunks() {
    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let a = peer(mem(), &ka, Acl::open());
    let b = peer(mem(), &kb, Acl::open());
    pair(&a, &b).await;
    b.wait_connected(T).await.unwrap();
    let big = change(&doc("big"), ChangeKind::Create, &[], 10 << 20);
    a.append(vec![big.clone()]).await.unwrap();
    wait_holds(&b, &[big.id()].into()).await;
    let got = b.get_changes(&[big.id()]).await.unwrap();
    assert_eq!(got[0].payload.len(), 10 << 20);
    assert_eq!(got[0], big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_leaves_mid_sync_and_rejoins_converges() {
    let srv = signaling().await;
    let room = RoomCode::random().unwrap();
    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let (ca, cb) = (mem(), mem());
    // ~16 MB: the pull takes more than one round (8 MiB batches).
    let mut all = Vec::new();
    for i in 0..4 {
        all.extend(chain(&doc(&format!("d{i}")), 60, 64 << 10));
    }
    ca.append(all.clone()).await.unwrap();
    let want = ids(&*ca).await;
    let a = joined(&srv.url(), &room, ca.clone(), &ka).await;
    let mut first = cb.subscribe().await.unwrap();
    let b = joined(&srv.url(), &room, cb.clone(), &kb).await;
    // Leave as soon as the pull has started.
    tokio::time::timeout(T, first.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    b.close().await;
    drop(b);
    let partial = ids(&*cb).await.len();
    assert!(partial < want.len(), "the pull had already finished");
    // Rejoin with the same cache: converges, nothing duplicated.
    let b = joined(&srv.url(), &room, cb.clone(), &kb).await;
    wait_holds(&b, &want).await;
    assert_eq!(cb.head().await.unwrap().seq, want.len() as u64);
    a.close().await;
    b.close().await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_re_pair_after_the_signaling_server_restarts() {
    let srv = signaling().await;
    let addr = srv.local_addr();
    let url = srv.url();
    let room: RoomCode = "ABC-DEF".parse().unwrap();
    let (ka, kb, kc) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    let (ca, cb, cc) = (mem(), mem(), mem());
    let a = joined(&url, &room, ca.clone(), &ka).await;
    let b = joined(&url, &room, cb.clone(), &kb).await;
    a.wait_connected(T).await.unwrap();
    b.wait_connected(T).await.unwrap();
    srv.shutdown().await;
    let srv = SignalingServer::bind(addr, SignalingOptions::default())
        .await
        .unwrap();
    // Both lose their session; the pair must re-form through the new server.
    let mut state = a.state();
    a.disconnect(&kb.author());
    b.disconnect(&ka.author());
    let x = change(&doc("x"), ChangeKind::Create, &[], 10);
    a.append(vec![x.clone()]).await.unwrap();
    tokio::time::timeout(T, state.wait_for(|s| *s != ConnectionState::Connected))
        .await
        .unwrap()
        .unwrap();
    a.wait_connected(T).await.unwrap();
    wait_holds(&b, &[x.id()].into()).await;
    // And a newcomer joins the restarted server's room.
    let c = joined(&url, &room, cc.clone(), &kc).await;
    c.wait_peers(2, T).await.unwrap();
    wait_holds(&c, &[x.id()].into()).await;
    for s in [&a, &b, &c] {
        s.close().await;
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_room_pairs_the_peers_that_know_the_password() {
    // The server keeps no password: anyone joins the room; the peers prove
    // the password to each other inside DTLS (tests/signaling_adversarial.rs
    // has the refusals).
    let srv = signaling().await;
    let room = RoomCode::random().unwrap();
    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let (ca, cb) = (mem(), mem());
    let x = change(&doc("x"), ChangeKind::Create, &[], 10);
    ca.append(vec![x.clone()]).await.unwrap();
    let a = peer(ca, &ka, Acl::open());
    let b = peer(cb, &kb, Acl::open());
    for (s, k) in [(&a, &ka), (&b, &kb)] {
        let sig = WsSignaling::connect(&srv.url(), &room, Some("secret"), k)
            .await
            .unwrap();
        s.join(sig);
    }
    a.wait_connected(T).await.unwrap();
    wait_holds(&b, &[x.id()].into()).await;
    a.close().await;
    b.close().await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_refuses_more_peers_than_its_limit() {
    let srv = SignalingServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        SignalingOptions {
            max_peers_per_room: 2,
            ..SignalingOptions::default()
        },
    )
    .await
    .unwrap();
    let room = RoomCode::random().unwrap();
    let mut keep = Vec::new();
    for _ in 0..2 {
        let k = Keypair::generate();
        keep.push(
            WsSignaling::connect(&srv.url(), &room, None, &k)
                .await
                .unwrap(),
        );
    }
    let k = Keypair::generate();
    assert!(
        WsSignaling::connect(&srv.url(), &room, None, &k)
            .await
            .is_err()
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reports_joins_and_leaves() {
    let srv = signaling().await;
    let room = RoomCode::random().unwrap();
    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let mut a = WsSignaling::connect(&srv.url(), &room, None, &ka)
        .await
        .unwrap();
    assert_eq!(a.recv().await, Some(SignalEvent::Present(vec![])));
    let b = WsSignaling::connect(&srv.url(), &room, None, &kb)
        .await
        .unwrap();
    let ev = tokio::time::timeout(T, a.recv()).await.unwrap();
    assert_eq!(ev, Some(SignalEvent::Joined(kb.author())));
    drop(b);
    let ev = tokio::time::timeout(T, a.recv()).await.unwrap();
    assert_eq!(ev, Some(SignalEvent::Left(kb.author())));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_the_policy_does_not_allow_is_refused() {
    let (ka, kb, kc) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    // A lets only B in.
    let a = peer(
        mem(),
        &ka,
        Acl::new().allow(&sid(), kb.author(), Permission::ReadWrite),
    );
    let c = peer(mem(), &kc, Acl::open());
    let (offer, pending) = c.offer().await.unwrap();
    let answer = a.answer(&offer).await.unwrap();
    let e = pending.accept(&answer).await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    assert!(a.peers().borrow().is_empty());
    // B gets in.
    let b = peer(mem(), &kb, Acl::open());
    let (offer, pending) = b.offer().await.unwrap();
    let answer = a.answer(&offer).await.unwrap();
    assert_eq!(pending.accept(&answer).await.unwrap(), ka.author());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_peer_cannot_append() {
    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let a = peer(
        mem(),
        &ka,
        Acl::new().allow(&sid(), kb.author(), Permission::Read),
    );
    let b = peer(mem(), &kb, Acl::open());
    let (offer, pending) = b.offer().await.unwrap();
    let answer = a.answer(&offer).await.unwrap();
    pending.accept(&answer).await.unwrap();
    let x = change(&doc("x"), ChangeKind::Create, &[], 10);
    b.append(vec![x.clone()]).await.unwrap();
    // B's delivery is refused: flush reports it, and so does a full sync.
    let e = b
        .flush(std::time::Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    assert_eq!(b.pending(), 0);
    let e = b.sync().await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    assert!(!a.cache().has_changes(&[x.id()]).await.unwrap()[0]);
    // But A's changes reach B.
    let y = change(&doc("y"), ChangeKind::Create, &[], 10);
    a.append(vec![y.clone()]).await.unwrap();
    wait_holds(&b, &[y.id()].into()).await;
}

#[test]
fn manual_strings_round_trip() {
    let s = encode_sdp("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n");
    assert!(s.starts_with(MANUAL_PREFIX));
    assert_eq!(
        decode_sdp(&format!("  {s}\n")).unwrap(),
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"
    );
    assert!(decode_sdp("nonsense").is_err());
}

/// A cache that fails for a moment while a session catches up (a busy
/// disk, a lock held elsewhere) does not end the session: the catch-up is
/// retried on the same connection, everything arrives, and live updates
/// keep flowing. (Ending it instead left the peer believing in a dead
/// connection for 20 s, until ICE gave up: the peer does not see a close.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_cache_failure_during_catch_up_keeps_the_session() {
    use cairn_conformance::faults::FlakyAppends;
    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let inner = mem();
    let flaky = Arc::new(FlakyAppends::new(inner.clone(), 2));
    let a = WebRtcStore::new(
        flaky.clone(),
        &ka,
        Arc::new(Acl::open()),
        WebRtcStoreOptions::loopback(),
    );
    let cb = mem();
    let held = chain(&doc("b"), 10, 100);
    cb.append(held.clone()).await.unwrap();
    let b = peer(cb, &kb, Acl::open());
    assert_eq!(
        pair(&a, &b).await,
        kb.author(),
        "the pairing survives the failed appends"
    );
    assert_eq!(
        flaky.refused.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the catch-up met both failures"
    );
    let want: BTreeSet<ChangeId> = held.iter().map(Change::id).collect();
    assert_eq!(ids(&*inner).await, want, "the retried catch-up got all");
    // Still connected both ways: a new change on B arrives live, and one
    // on A is delivered to B.
    let y = change(&doc("y"), ChangeKind::Create, &[], 10);
    b.append(vec![y.clone()]).await.unwrap();
    wait_holds(&*inner, &[y.id()].into()).await;
    let z = change(&doc("z"), ChangeKind::Create, &[], 10);
    a.append(vec![z.clone()]).await.unwrap();
    a.flush(T).await.unwrap();
    assert!(b.cache().has_changes(&[z.id()]).await.unwrap()[0]);
    assert_eq!(*a.peers().borrow(), vec![kb.author()]);
}

/// A peer that hangs up is noticed at once, not when ICE gives up about
/// 20 s later (str0m does not signal a closed channel; the store says
/// goodbye in-band): the other side's peer list empties, and its outbox
/// stops counting on the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_hangs_up_is_noticed_at_once() {
    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let a = peer(mem(), &ka, Acl::open());
    let b = peer(mem(), &kb, Acl::open());
    pair(&a, &b).await;
    b.wait_peers(1, T).await.unwrap();
    a.close().await;
    let mut peers = b.peers();
    // Far below ICE's 20 s, far above a loopback round trip.
    tokio::time::timeout(Duration::from_secs(5), peers.wait_for(|p| p.is_empty()))
        .await
        .expect("b still lists the peer that hung up")
        .unwrap();
}
