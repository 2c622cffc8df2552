//! Two peers behind two NATs and a "public" namespace between them, for
//! the NAT tests (`tests/nat.rs`) and the path benchmark
//! (`cairn-connect`'s `benches/first_sync.rs`), included with `#[path]`
//! after a `mod netns` (`crates/cairn-lan/tests/support/netns.rs`) and a
//! `mod coturn` (`support/coturn.rs`).
//!
//! Network namespaces (documentation addresses;
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
//! Index 0 is `pub`, 1 and 2 the NATs, 3 and 4 the peers (A, B), 5 the
//! sink. Each NAT drops unsolicited inbound packets, as home routers do.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use super::coturn::Coturn;
use super::netns::{in_ns, ip, nft};

const T: Duration = Duration::from_secs(30);

/// coturn's long-term credential when it runs as a TURN server.
pub const TURN_USER: &str = "cairn";
pub const TURN_PASS: &str = "not-a-secret";

/// The six namespaces, and coturn; removed on drop.
pub struct Topology {
    ns: Vec<String>,
    coturn: Option<Coturn>,
}

impl Topology {
    /// The namespaces, named after `tag` and this process; each NAT
    /// translates with `masq` (`masquerade` or `masquerade fully-random`).
    pub fn new(tag: &str, masq: &[&str]) -> Topology {
        let euid = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&euid.stdout).trim(),
            "0",
            "this test builds network namespaces and needs root (run it as `cargo xtask test` does in CI)"
        );
        let pid = std::process::id();
        let names: Vec<String> = ["pub", "nata", "natb", "pa", "pb", "sink"]
            .iter()
            .map(|n| format!("cn{n}{tag}{pid}"))
            .collect();
        let t = Topology {
            ns: names.clone(),
            coturn: None,
        };
        let [pubn, nata, natb, pa, pb, sink] = [
            &names[0], &names[1], &names[2], &names[3], &names[4], &names[5],
        ];
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
        link(pubn, "wb", "203.0.113.1/25", natb, "wan", "203.0.113.2/25");
        link(nata, "lan", "192.0.2.1/25", pa, "eth0", "192.0.2.2/25");
        link(natb, "lan", "192.0.2.129/25", pb, "eth0", "192.0.2.130/25");
        ip(&["-n", pa, "route", "add", "default", "via", "192.0.2.1"]);
        ip(&["-n", pb, "route", "add", "default", "via", "192.0.2.129"]);
        // The "internet" beyond `pub`: a namespace that forwards nothing
        // and swallows what is routed to it (a peer's private address a
        // relay tries, say), as a real server's default route would carry
        // it off without an error; nothing leaves the namespaces.
        link(
            pubn,
            "inet",
            "203.0.113.129/25",
            sink,
            "eth0",
            "203.0.113.130/25",
        );
        ip(&[
            "-n",
            pubn,
            "route",
            "add",
            "default",
            "via",
            "203.0.113.130",
        ]);
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
            let mut rule = vec!["add", "rule", "ip", "nat", "post", "oifname", "wan"];
            rule.extend_from_slice(masq);
            nft(n, &rule);
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

    pub fn name(&self, i: usize) -> &str {
        &self.ns[i]
    }

    /// Start coturn in `pub` on 198.51.100.1:3478 and wait until it
    /// listens: a STUN server only, or with `turn` also a TURN server that
    /// takes the long-term credential [`TURN_USER`]:[`TURN_PASS`] and
    /// relays from 198.51.100.1.
    pub fn start_coturn(&mut self, turn: bool) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns[0], "turnserver", "-n"]);
        if turn {
            cmd.args([
                "--lt-cred-mech",
                &format!("--user={TURN_USER}:{TURN_PASS}"),
                "--realm=cairn.test",
                "--relay-ip=198.51.100.1",
                "--min-port=49152",
                "--max-port=49407",
                "--no-tcp-relay",
            ]);
        } else {
            cmd.arg("--stun-only");
        }
        cmd.args([
            "--listening-ip=198.51.100.1",
            "--listening-port=3478",
            "--no-tls",
            "--no-dtls",
        ]);
        self.coturn = Some(Coturn::spawn(cmd));
    }

    /// A signaling server in `pub` (198.51.100.1, a free port) until `stop`
    /// fires: its thread, and its URL.
    pub fn signaling(
        &self,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> (std::thread::JoinHandle<()>, String) {
        let (tx, rx) = std::sync::mpsc::channel();
        let h = in_ns(&self.ns[0], move || {
            Box::pin(async move {
                let srv = cairn_webrtc::SignalingServer::bind(
                    "198.51.100.1:0".parse().unwrap(),
                    cairn_webrtc::SignalingOptions::default(),
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
}

impl Drop for Topology {
    fn drop(&mut self) {
        // coturn first, then the namespace it runs in.
        drop(self.coturn.take());
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}
