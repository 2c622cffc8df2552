//! The Connector's WebRTC route on loopback: a signaling server, a QUIC
//! relay, and other devices (plain `WebRtcStore`s over their own memory
//! stores) in one room. The connector prefers the direct path, syncs both
//! ways over it, falls back to the relay when the device goes, and moves up
//! again when it comes back; its state counts the devices paired.
//!
//! Every wait has a deadline; nothing sleeps.
//!
//! A device that closes its store is noticed only when ICE gives up on it
//! (str0m's consent checks, about 20 s here): `cairn-webrtc` ends a session
//! without closing the data channel, so the peer is not told. The waits
//! for a lost device allow for that ([`PEER_LOSS`]).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use cairn::{AppendOnlyStore, ChangeId, Keypair};
use cairn_connect::{Connector, ConnectorOptions, PathKind, PathState, Route};
use cairn_memory::MemoryStore;
use cairn_quic::{QuicServer, ServerOptions, Stores};
use cairn_webrtc::{
    Acl, Permission, RoomCode, SignalingOptions, SignalingServer, WebRtcStore, WebRtcStoreOptions,
    WsSignaling,
};
use futures::StreamExt;
use support::{change, path_becomes, sid};
use tokio::time::{Instant, timeout, timeout_at};

/// The longest any one wait may take.
const T: Duration = Duration::from_secs(30);

/// The connector's timings: short, so that the test runs in seconds.
const CONNECT: Duration = Duration::from_secs(3);
const PROBE: Duration = Duration::from_secs(1);
const FAILOVER: Duration = Duration::from_secs(1);
/// How long a device that closed may take to be noticed as gone (ICE
/// consent; about 21 s observed on loopback), with room to spare.
const PEER_LOSS: Duration = Duration::from_secs(40);

fn connector_options() -> ConnectorOptions {
    ConnectorOptions {
        connect_timeout: CONNECT,
        probe_every: PROBE,
        failover_after: FAILOVER,
        quic: cairn_quic::QuicStoreOptions {
            idle_timeout: Duration::from_secs(2),
            ..ConnectorOptions::default().quic
        },
        ..ConnectorOptions::default()
    }
}

/// A device: a WebRTC store over `cache`, as `key`, letting `allowed` read
/// and write, joined to `room`.
async fn device(
    cache: &Arc<MemoryStore>,
    key: &Keypair,
    allowed: &[&Keypair],
    signaling: &str,
    room: &RoomCode,
) -> WebRtcStore {
    let acl = allowed.iter().fold(Acl::new(), |acl, k| {
        acl.allow(&sid(), k.author(), Permission::ReadWrite)
    });
    let store = WebRtcStore::new(
        cache.clone(),
        key,
        Arc::new(acl),
        WebRtcStoreOptions::loopback(),
    );
    let sig = timeout(T, WsSignaling::connect(signaling, room, None, key))
        .await
        .expect("joined the room in time")
        .unwrap();
    store.join(sig);
    store
}

/// The WebRTC route to `room`, pairing with the `devices` only.
fn webrtc_route(signaling: &str, room: &RoomCode, devices: &[&Keypair], min: usize) -> Route {
    let acl = devices.iter().fold(Acl::new(), |acl, k| {
        acl.allow(&sid(), k.author(), Permission::ReadWrite)
    });
    Route::WebRtc {
        signaling: signaling.to_owned(),
        room: room.clone(),
        policy: Arc::new(acl),
        options: WebRtcStoreOptions::loopback(),
        min_peers: min,
    }
}

/// Wait until the connector's state satisfies `f` (bounded by `within`);
/// returns its words.
async fn state_becomes(
    c: &Connector,
    within: Duration,
    what: &str,
    f: impl Fn(&PathState) -> bool,
) -> String {
    let mut rx = c.state();
    let s = timeout(within, rx.wait_for(|s| f(s)))
        .await
        .unwrap_or_else(|_| panic!("never {what} within {within:?}: {}", *c.state().borrow()))
        .unwrap()
        .clone();
    s.to_string()
}

/// Wait until `store` holds every one of `ids`, bounded by T.
async fn holds(store: &dyn AppendOnlyStore, ids: &[ChangeId], who: &str) {
    let until = Instant::now() + T;
    let mut sub = store.subscribe().await.unwrap();
    // Each turn waits for one append (subscribed before the check, so none
    // is missed).
    while !store.has_changes(ids).await.unwrap().iter().all(|h| *h) {
        let next = timeout_at(until, sub.next()).await;
        assert!(
            matches!(next, Ok(Some(_))),
            "{who} never held all of {} changes",
            ids.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefers_the_direct_path_falls_back_to_the_relay_and_upgrades_again() {
    let (me, device_key, relay_key) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    // The relay: QUIC on loopback, serving a memory store to us.
    let relay_store = Arc::new(MemoryStore::new(sid()));
    let relay = QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &relay_key,
        Arc::new(Stores::new().with(relay_store.clone())),
        Arc::new(Acl::new().allow(&sid(), me.author(), Permission::ReadWrite)),
        ServerOptions::default(),
    )
    .unwrap();
    let signaling =
        SignalingServer::bind("127.0.0.1:0".parse().unwrap(), SignalingOptions::default())
            .await
            .unwrap();
    let url = signaling.url();
    let room = RoomCode::random().unwrap();
    // The device, holding one change already.
    let device_cache = Arc::new(MemoryStore::new(sid()));
    let d0 = change(&device_key, 0);
    device_cache.append(vec![d0.clone()]).await.unwrap();
    let dev = device(&device_cache, &device_key, &[&me], &url, &room).await;

    let cache = Arc::new(MemoryStore::new(sid()));
    let routes = vec![
        webrtc_route(&url, &room, &[&device_key], 1),
        Route::Quic {
            addr: relay.local_addr(),
            peer: relay_key.author(),
        },
    ];
    let c = Connector::new(cache.clone(), routes, &me, connector_options()).unwrap();

    // The direct path first, caught up with the device.
    assert_eq!(
        path_becomes(&c, PathKind::WebRtc, T).await,
        "connected to 1 device (direct)"
    );
    holds(&*cache, &[d0.id()], "the connector's cache").await;
    // Both ways over it.
    let mine = change(&me, 1);
    c.append(vec![mine.clone()]).await.unwrap();
    holds(&*device_cache, &[mine.id()], "the device").await;
    let theirs = change(&device_key, 2);
    dev.append(vec![theirs.clone()]).await.unwrap();
    holds(&c, &[theirs.id()], "the connector").await;

    // The device goes: once the loss is noticed (PEER_LOSS), the connector
    // falls back to the relay within the failover bounds (lost for
    // FAILOVER, the WebRTC attempt's CONNECT, then QUIC's), and what it
    // holds, an append made meanwhile included, reaches the relay.
    // (Once the device, too, counts the connector as paired: a store
    // closed while a pairing's catch-up is still running keeps that
    // session alive; see the crate README.)
    dev.wait_connected(T).await.unwrap();
    dev.close().await;
    let gone = Instant::now();
    let meanwhile = change(&me, 3);
    c.append(vec![meanwhile.clone()]).await.unwrap();
    let bound = PEER_LOSS + FAILOVER + CONNECT * 2;
    assert_eq!(
        path_becomes(&c, PathKind::Quic, bound).await,
        "relay (QUIC)"
    );
    assert!(
        gone.elapsed() >= FAILOVER,
        "failed over before failover_after"
    );
    holds(
        &*relay_store,
        &[d0.id(), mine.id(), theirs.id(), meanwhile.id()],
        "the relay",
    )
    .await;
    let on_relay = change(&me, 4);
    c.append(vec![on_relay.clone()]).await.unwrap();
    holds(&*relay_store, &[on_relay.id()], "the relay").await;

    // The device comes back (a new store over its cache, same key): the
    // next probe moves the connector up again, and the device catches up
    // with what went to the relay meanwhile.
    let dev = device(&device_cache, &device_key, &[&me], &url, &room).await;
    assert_eq!(
        path_becomes(
            &c,
            PathKind::WebRtc,
            PROBE + CONNECT * 2 + Duration::from_secs(5)
        )
        .await,
        "connected to 1 device (direct)"
    );
    holds(
        &*device_cache,
        &[meanwhile.id(), on_relay.id()],
        "the device",
    )
    .await;
    let again = change(&me, 5);
    c.append(vec![again.clone()]).await.unwrap();
    holds(&*device_cache, &[again.id()], "the device").await;

    c.close().await;
    assert_eq!(c.path(), None);
    dev.close().await;
    relay.shutdown().await;
    signaling.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn direct_path_waits_for_min_peers_and_counts_the_devices_paired() {
    let (me, a_key, b_key) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    let signaling =
        SignalingServer::bind("127.0.0.1:0".parse().unwrap(), SignalingOptions::default())
            .await
            .unwrap();
    let url = signaling.url();
    let room = RoomCode::random().unwrap();
    let a_cache = Arc::new(MemoryStore::new(sid()));
    let a = device(&a_cache, &a_key, &[&me, &b_key], &url, &room).await;
    let cache = Arc::new(MemoryStore::new(sid()));
    let routes = vec![webrtc_route(&url, &room, &[&a_key, &b_key], 2)];
    let c = Connector::new(cache.clone(), routes, &me, connector_options()).unwrap();

    // One device of the two required: the attempt fails, and says so.
    let offline = state_becomes(&c, T, "offline with the route's failure", |s| {
        matches!(
            s,
            PathState::Offline {
                last_error: Some(_)
            }
        )
    })
    .await;
    assert!(offline.starts_with("offline (WebRtc:"), "{offline}");
    assert_eq!(c.path(), None);

    // The second device joins: the next attempt pairs with both.
    let b_cache = Arc::new(MemoryStore::new(sid()));
    let b = device(&b_cache, &b_key, &[&me, &a_key], &url, &room).await;
    assert_eq!(
        path_becomes(&c, PathKind::WebRtc, T).await,
        "connected to 2 devices (direct)"
    );
    let mine = change(&me, 1);
    c.append(vec![mine.clone()]).await.unwrap();
    holds(&*a_cache, &[mine.id()], "device a").await;
    holds(&*b_cache, &[mine.id()], "device b").await;

    // One goes: the path holds with the other, and the count follows.
    b.wait_peers(2, T).await.unwrap();
    b.close().await;
    assert_eq!(
        state_becomes(&c, PEER_LOSS, "down to 1 device", |s| matches!(
            s,
            PathState::Connected {
                path: PathKind::WebRtc,
                devices: 1
            }
        ))
        .await,
        "connected to 1 device (direct)"
    );
    let theirs = change(&a_key, 2);
    a.append(vec![theirs.clone()]).await.unwrap();
    holds(&c, &[theirs.id()], "the connector").await;

    assert_eq!(c.path(), Some(PathKind::WebRtc));
    c.close().await;
    a.close().await;
    signaling.shutdown().await;
}
