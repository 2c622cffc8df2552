//! Two peers, each behind its own NAT, pair through STUN.
//!
//! Topology (network namespaces this test builds; documentation addresses;
//! nothing routed to the host):
//!
//! ```text
//!  peerA 192.0.2.2/25 ── 192.0.2.1 natA 198.51.100.2 ──┐
//!                                  (masquerade)        198.51.100.1
//!                                                      pub: coturn (STUN, UDP 3478),
//!                                                      the signaling server
//!                                                      203.0.113.1
//!  peerB 192.0.2.130/25 ─ 192.0.2.129 natB 203.0.113.2 ┘
//!                                  (masquerade)
//! ```
//!
//! The peers' host candidates are private and unroutable from each other,
//! so only the server-reflexive ones (the NATs' public mappings, learned
//! from coturn) can work. nftables `masquerade` keeps the source port (an
//! endpoint-independent mapping, as most home routers have), and each NAT
//! drops unsolicited inbound packets, as home routers do. The test
//! asserts the path ICE chose is between the two NATs' public addresses,
//! and that without a STUN server the peers cannot pair at all.
//!
//! Needs root, `ip`, `nft` and `turnserver` (Debian packages iproute2,
//! nftables, coturn), as `cargo xtask test` installs in CI; fails naming
//! what is missing otherwise. Namespaces and coturn are removed when the
//! test ends, passed or failed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../../crates/cairn-lan/tests/support/netns.rs"]
mod netns;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cairn::{AppendOnlyStore, ChangeBuilder, ChangeKind, DocId, Keypair, StoreId};
use cairn_memory::MemoryStore;
use cairn_webrtc::{
    Acl, RoomCode, SignalingOptions, SignalingServer, WebRtcStore, WebRtcStoreOptions, WsSignaling,
};
use futures::StreamExt;
use netns::{in_ns, ip, nft};

const T: Duration = Duration::from_secs(30);

/// The five namespaces, and coturn; removed on drop.
struct Topology {
    ns: Vec<String>,
    coturn: Option<Child>,
}

impl Topology {
    fn new() -> Topology {
        let euid = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&euid.stdout).trim(),
            "0",
            "this test builds network namespaces and needs root (run it as `cargo xtask test` does in CI)"
        );
        let pid = std::process::id();
        let names: Vec<String> = ["pub", "nata", "natb", "pa", "pb"]
            .iter()
            .map(|n| format!("cn{n}{pid}"))
            .collect();
        let t = Topology {
            ns: names.clone(),
            coturn: None,
        };
        let [pubn, nata, natb, pa, pb] = [&names[0], &names[1], &names[2], &names[3], &names[4]];
        for n in &names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        let link = |a: &str, an: &str, aip: &str, b: &str, bn: &str, bip: &str| {
            ip(&[
                "-n", a, "link", "add", an, "type", "veth", "peer", "name", bn, "netns", b,
            ]);
            ip(&["-n", a, "addr", "add", aip, "dev", an]);
            ip(&["-n", b, "addr", "add", bip, "dev", bn]);
            ip(&["-n", a, "link", "set", an, "up"]);
            ip(&["-n", b, "link", "set", bn, "up"]);
        };
        link(
            pubn,
            "wa",
            "198.51.100.1/24",
            nata,
            "wan",
            "198.51.100.2/24",
        );
        link(pubn, "wb", "203.0.113.1/24", natb, "wan", "203.0.113.2/24");
        link(nata, "lan", "192.0.2.1/25", pa, "eth0", "192.0.2.2/25");
        link(natb, "lan", "192.0.2.129/25", pb, "eth0", "192.0.2.130/25");
        ip(&["-n", pa, "route", "add", "default", "via", "192.0.2.1"]);
        ip(&["-n", pb, "route", "add", "default", "via", "192.0.2.129"]);
        ip(&["-n", nata, "route", "add", "default", "via", "198.51.100.1"]);
        ip(&["-n", natb, "route", "add", "default", "via", "203.0.113.1"]);
        for n in [pubn, nata, natb] {
            let out = Command::new("ip")
                .args(["netns", "exec", n, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
                .output()
                .unwrap();
            assert!(out.status.success(), "ip_forward in {n}: {out:?}");
        }
        for n in [nata, natb] {
            nft(n, &["add", "table", "ip", "nat"]);
            nft(
                n,
                &[
                    "add",
                    "chain",
                    "ip",
                    "nat",
                    "post",
                    "{ type nat hook postrouting priority 100 ; policy accept ; }",
                ],
            );
            nft(
                n,
                &[
                    "add",
                    "rule",
                    "ip",
                    "nat",
                    "post",
                    "oifname",
                    "wan",
                    "masquerade",
                ],
            );
            // Like a home router: unsolicited packets from outside are
            // dropped before conntrack confirms them, so a peer's early
            // check cannot take the port the next outgoing flow maps to.
            nft(n, &["add", "table", "inet", "fw"]);
            nft(
                n,
                &[
                    "add",
                    "chain",
                    "inet",
                    "fw",
                    "in",
                    "{ type filter hook input priority 0 ; policy accept ; }",
                ],
            );
            nft(
                n,
                &[
                    "add", "rule", "inet", "fw", "in", "iifname", "wan", "ct", "state", "new",
                    "drop",
                ],
            );
        }
        t
    }

    fn name(&self, i: usize) -> &str {
        &self.ns[i]
    }

    /// Start coturn in `pub` as a STUN server on 198.51.100.1:3478 and wait
    /// until it listens.
    fn start_stun(&mut self) {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns[0],
                "turnserver",
                "-n",
                "--stun-only",
            ])
            .args([
                "--listening-ip=198.51.100.1",
                "--listening-port=3478",
                "--no-tls",
                "--no-dtls",
            ])
            .args(["--no-cli", "--log-file=stdout", "--simple-log", "--verbose"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start coturn (Debian package coturn): {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("UDP") && line.contains("listener opened on") {
                    let _ = tx.send(());
                }
            }
        });
        self.coturn = Some(child);
        rx.recv_timeout(T).expect(
            "coturn never opened its UDP listener (is the Debian package coturn installed?)",
        );
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut c) = self.coturn.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn sid() -> StoreId {
    StoreId::new("friends/album").unwrap()
}

/// Changes each peer writes; each ends up holding both sides'.
const WRITES: usize = 3;

/// One peer: its namespace, address, key and the other peer's id.
#[derive(Clone)]
struct Peer {
    ns: String,
    ip: &'static str,
    key: Keypair,
    other: cairn::AuthorId,
}

/// One peer behind its NAT: join `room`, wait `wait` for the other, check
/// the path and what it holds; returns (local, remote) of the chosen pair,
/// or the pairing error.
fn peer_side(
    p: Peer,
    signal: String,
    room: RoomCode,
    stun: Vec<SocketAddr>,
    wait: Duration,
) -> std::thread::JoinHandle<Result<(SocketAddr, SocketAddr), String>> {
    let Peer {
        ns,
        ip: ip_addr,
        key,
        other,
    } = p;
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
            let mut opts = WebRtcStoreOptions::default();
            opts.bind_ip = ip_addr.parse().unwrap();
            opts.stun_servers = stun;
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

/// The signaling server in `pub`, until `stop` fires; its URL.
fn signaling(
    ns: &str,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> (std::thread::JoinHandle<()>, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_ns(ns, move || {
        Box::pin(async move {
            let srv = SignalingServer::bind(
                "198.51.100.1:0".parse().unwrap(),
                SignalingOptions::default(),
            )
            .await
            .unwrap();
            tx.send(srv.url()).unwrap();
            let _ = stop.await;
        })
    });
    let url = rx.recv_timeout(T).expect("the signaling server started");
    (h, url)
}

#[test]
fn peers_behind_two_nats_pair_directly_through_stun() {
    // RUST_LOG=cairn_webrtc=debug shows the candidates and ICE's progress.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut topo = Topology::new();
    topo.start_stun();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (sig_thread, url) = signaling(topo.name(0), stop_rx);
    let stun: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let pa = Peer {
        ns: topo.name(3).to_owned(),
        ip: "192.0.2.2",
        key: ka.clone(),
        other: kb.author(),
    };
    let pb = Peer {
        ns: topo.name(4).to_owned(),
        ip: "192.0.2.130",
        key: kb.clone(),
        other: ka.author(),
    };

    // Without STUN: only private host candidates, no path between them.
    let room = RoomCode::random().unwrap();
    let short = Duration::from_secs(6);
    let a = peer_side(pa.clone(), url.clone(), room.clone(), vec![], short);
    let b = peer_side(pb.clone(), url.clone(), room, vec![], short);
    let (ra, rb) = (a.join().unwrap(), b.join().unwrap());
    assert!(
        ra.is_err() && rb.is_err(),
        "paired without STUN across two NATs: {ra:?} {rb:?}"
    );

    // With STUN: each side also announces its NAT's public mapping.
    let room = RoomCode::random().unwrap();
    let a = peer_side(pa.clone(), url.clone(), room.clone(), vec![stun], T);
    let b = peer_side(pb.clone(), url, room, vec![stun], T);
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
