//! Two peers, each behind its own NAT, pair: directly through STUN when
//! the NATs keep ports, through a TURN relay when they are symmetric.
//!
//! Topology (network namespaces this test builds; documentation addresses;
//! nothing routed to the host):
//!
//! ```text
//!  peerA 192.0.2.2/25 ── 192.0.2.1 natA 198.51.100.2 ──┐
//!                                  (masquerade)        198.51.100.1
//!                                                      pub: coturn (STUN and TURN,
//!                                                      UDP 3478; relays from
//!                                                      198.51.100.1), the signaling
//!                                                      server
//!                                                      203.0.113.1        203.0.113.129
//!  peerB 192.0.2.130/25 ─ 192.0.2.129 natB 203.0.113.2 ┘                  │ default route
//!                                  (masquerade)             sink 203.0.113.130
//!                                                           (forwards nothing)
//! ```
//!
//! The peers' host candidates are private and unroutable from each other,
//! so only the server-reflexive ones (the NATs' public mappings, learned
//! from coturn) or relayed ones (allocated on coturn) can work. Each NAT
//! drops unsolicited inbound packets, as home routers do. Each peer binds
//! the default, every interface of its namespace (so `eth0`'s address).
//!
//! - `peers_behind_two_nats_pair_directly_through_stun`: nftables
//!   `masquerade` keeps the source port (an endpoint-independent mapping,
//!   as most home routers have). Asserts the path ICE chose is between the
//!   two NATs' public addresses, and that without a STUN server the peers
//!   cannot pair at all.
//! - `peers_behind_two_symmetric_nats_pair_through_turn`: `masquerade
//!   fully-random` maps every flow to a new random port (a symmetric NAT),
//!   so the mapping STUN reports is useless to the other peer. Asserts that
//!   with STUN alone the peers cannot pair, and that with coturn as a TURN
//!   server (long-term credentials) they pair through it: the chosen path
//!   runs to or from coturn's relayed address on at least one side, and
//!   never straight between the NATs.
//!
//! Needs root, `ip`, `nft` and `turnserver` (Debian packages iproute2,
//! nftables, coturn), as `cargo xtask test` installs in CI; fails naming
//! what is missing otherwise. Namespaces and coturn are removed when the
//! test ends, passed or failed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "support/coturn.rs"]
mod coturn;
#[path = "../../../crates/cairn-lan/tests/support/netns.rs"]
mod netns;
#[path = "support/nat.rs"]
mod topo;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cairn::{AppendOnlyStore, ChangeBuilder, ChangeKind, DocId, Keypair, StoreId};
use cairn_memory::MemoryStore;
use cairn_webrtc::{Acl, RoomCode, TurnServer, WebRtcStore, WebRtcStoreOptions, WsSignaling};
use futures::StreamExt;
use netns::in_ns;
use topo::{TURN_PASS, TURN_USER, Topology};

const T: Duration = Duration::from_secs(30);

fn sid() -> StoreId {
    StoreId::new("friends/album").unwrap()
}

/// Changes each peer writes; each ends up holding both sides'.
const WRITES: usize = 3;

/// One peer: its namespace, key and the other peer's id.
#[derive(Clone)]
struct Peer {
    ns: String,
    key: Keypair,
    other: cairn::AuthorId,
}

/// Peers A and B of `topo`, each knowing the other's id.
fn peers(topo: &Topology) -> (Peer, Peer) {
    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let pa = Peer {
        ns: topo.name(3).to_owned(),
        key: ka.clone(),
        other: kb.author(),
    };
    let pb = Peer {
        ns: topo.name(4).to_owned(),
        key: kb,
        other: ka.author(),
    };
    (pa, pb)
}

/// One peer behind its NAT: join `room`, wait `wait` for the other, check
/// the path and what it holds; returns (local, remote) of the chosen pair,
/// or the pairing error.
fn peer_side(
    p: Peer,
    signal: String,
    room: RoomCode,
    stun: Vec<SocketAddr>,
    turn: Vec<TurnServer>,
    wait: Duration,
) -> std::thread::JoinHandle<Result<(SocketAddr, SocketAddr), String>> {
    let Peer { ns, key, other, .. } = p;
    let (writes, expect) = (WRITES, 2 * WRITES as u64);
    in_ns(&ns, move || {
        Box::pin(async move {
            let cache = Arc::new(MemoryStore::new(sid()));
            let batch: Vec<_> = (0..writes)
                .map(|i| {
                    ChangeBuilder::new(
                        ChangeKind::Create,
                        DocId::new(format!("{}-{i}", key.author().short())).unwrap(),
                    )
                    .payload(vec![i as u8; 100])
                    .sign(&key)
                    .unwrap()
                })
                .collect();
            cache.append(batch).await.unwrap();
            // The default bind: every interface of the namespace.
            let mut opts = WebRtcStoreOptions::default();
            opts.stun_servers = stun;
            opts.turn_servers = turn;
            opts.open_timeout = Duration::from_secs(10);
            let store = WebRtcStore::new(cache.clone(), &key, Arc::new(Acl::open()), opts);
            let sig = WsSignaling::connect(&signal, &room, None, &key)
                .await
                .map_err(|e| format!("signaling: {e}"))?;
            store.join(sig);
            let r = store.wait_peers(1, wait).await;
            let path = store.peer_path(&other);
            if let Err(e) = r {
                store.close().await;
                return Err(format!("no pairing: {e}"));
            }
            let until = tokio::time::Instant::now() + T;
            let mut sub = cache.subscribe().await.unwrap();
            // Bounded by `until`: each turn waits for the catch-up to add
            // a change (subscribed before the check, so none is missed).
            while cache.head().await.unwrap().seq < expect {
                if tokio::time::timeout_at(until, sub.next()).await.is_err() {
                    return Err(format!(
                        "holds {} of {expect}",
                        cache.head().await.unwrap().seq
                    ));
                }
            }
            store.close().await;
            path.ok_or_else(|| "paired, but no path recorded".to_owned())
        })
    })
}

#[test]
fn peers_behind_two_nats_pair_directly_through_stun() {
    // RUST_LOG=cairn_webrtc=debug shows the candidates and ICE's progress.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut topo = Topology::new("s", &["masquerade"]);
    topo.start_coturn(false);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (sig_thread, url) = topo.signaling(stop_rx);
    let stun: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let (pa, pb) = peers(&topo);

    // Without STUN: only private host candidates, no path between them.
    let room = RoomCode::random().unwrap();
    let short = Duration::from_secs(6);
    let a = peer_side(pa.clone(), url.clone(), room.clone(), vec![], vec![], short);
    let b = peer_side(pb.clone(), url.clone(), room, vec![], vec![], short);
    let (ra, rb) = (a.join().unwrap(), b.join().unwrap());
    assert!(
        ra.is_err() && rb.is_err(),
        "paired without STUN across two NATs: {ra:?} {rb:?}"
    );

    // With STUN: each side also announces its NAT's public mapping.
    let room = RoomCode::random().unwrap();
    let a = peer_side(pa.clone(), url.clone(), room.clone(), vec![stun], vec![], T);
    let b = peer_side(pb.clone(), url, room, vec![stun], vec![], T);
    let (ra, rb) = (a.join().unwrap(), b.join().unwrap());
    let _ = stop_tx.send(());
    sig_thread.join().unwrap();
    let (la, remote_a) = ra.expect("peer A");
    let (lb, remote_b) = rb.expect("peer B");
    // Each sends from its own host address to the other NAT's public one:
    // the server-reflexive candidate pair, straight between the NATs.
    assert_eq!(la.ip(), "192.0.2.2".parse::<IpAddr>().unwrap());
    assert_eq!(lb.ip(), "192.0.2.130".parse::<IpAddr>().unwrap());
    assert_eq!(
        remote_a.ip(),
        "203.0.113.2".parse::<IpAddr>().unwrap(),
        "A reaches B through natB"
    );
    assert_eq!(
        remote_b.ip(),
        "198.51.100.2".parse::<IpAddr>().unwrap(),
        "B reaches A through natA"
    );
}

#[test]
fn peers_behind_two_symmetric_nats_pair_through_turn() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut topo = Topology::new("t", &["masquerade", "fully-random"]);
    topo.start_coturn(true);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (sig_thread, url) = topo.signaling(stop_rx);
    let coturn: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let turn = vec![TurnServer::new(coturn, TURN_USER, TURN_PASS)];
    let (pa, pb) = peers(&topo);

    // STUN alone: each NAT's mapping towards coturn says nothing about
    // the port it picks towards the other peer, so nothing pairs.
    let room = RoomCode::random().unwrap();
    let short = Duration::from_secs(6);
    let a = peer_side(
        pa.clone(),
        url.clone(),
        room.clone(),
        vec![coturn],
        vec![],
        short,
    );
    let b = peer_side(pb.clone(), url.clone(), room, vec![coturn], vec![], short);
    let (ra, rb) = (a.join().unwrap(), b.join().unwrap());
    assert!(
        ra.is_err() && rb.is_err(),
        "paired through symmetric NATs without TURN: {ra:?} {rb:?}"
    );

    // With TURN: each side also announces an address relayed by coturn.
    let room = RoomCode::random().unwrap();
    let a = peer_side(
        pa.clone(),
        url.clone(),
        room.clone(),
        vec![coturn],
        turn.clone(),
        T,
    );
    let b = peer_side(pb.clone(), url, room, vec![coturn], turn, T);
    let (ra, rb) = (a.join().unwrap(), b.join().unwrap());
    let _ = stop_tx.send(());
    sig_thread.join().unwrap();
    let (la, remote_a) = ra.expect("peer A");
    let (lb, remote_b) = rb.expect("peer B");
    eprintln!("A: {la} -> {remote_a}; B: {lb} -> {remote_b}");
    let relay: IpAddr = "198.51.100.1".parse().unwrap();
    let nats: [IpAddr; 2] = [
        "198.51.100.2".parse().unwrap(),
        "203.0.113.2".parse().unwrap(),
    ];
    for (side, local, remote) in [("A", la, remote_a), ("B", lb, remote_b)] {
        assert!(
            local.ip() == relay || remote.ip() == relay,
            "{side}'s path {local} -> {remote} does not go through coturn's relay"
        );
        assert!(
            !(nats.contains(&local.ip()) && nats.contains(&remote.ip())),
            "{side} went straight between the NATs: {local} -> {remote}"
        );
    }
}
