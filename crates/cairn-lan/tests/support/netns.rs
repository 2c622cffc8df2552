//! Network namespaces for tests: two (or more) joined by veth pairs, on
//! addresses from the documentation ranges, with nothing routed elsewhere;
//! deleted on drop, whether the test passed or not. Needs root and `ip`
//! (iproute2); fails naming what is missing otherwise. Shared by
//! `cairn-lan` and `cairn-connect` (`#[path]`).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsFd;
use std::process::Command;

/// Run `ip ARGS`, failing the test with its error.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("this test needs `ip` (Debian package iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair (`eth0` in each, 192.0.2.1/24 in
/// `a` and 192.0.2.2/24 in `b`, multicast on); deleted on drop.
pub struct Link {
    pub a: String,
    pub b: String,
}

impl Link {
    pub fn new(tag: &str) -> Link {
        let euid = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&euid.stdout).trim(),
            "0",
            "this test builds network namespaces and needs root (run it as `cargo xtask test` does in CI)"
        );
        let pid = std::process::id();
        let link = Link {
            a: format!("cl{tag}a{pid}"),
            b: format!("cl{tag}b{pid}"),
        };
        for ns in [&link.a, &link.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &link.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            &link.b,
        ]);
        for (ns, addr) in [(&link.a, "192.0.2.1/24"), (&link.b, "192.0.2.2/24")] {
            ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "multicast", "on", "up"]);
        }
        link
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Run `f` on a new thread inside namespace `ns`, with its own runtime;
/// every socket it (and any thread it starts) opens is in `ns`.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f())
    })
}

/// Run `nft ARGS` inside namespace `ns` (Debian package nftables).
pub fn nft(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs `ip` and `nft` (Debian packages iproute2, nftables): {e}")
        });
    assert!(
        out.status.success(),
        "nft {} in {ns}: {} (is the Debian package nftables installed?)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drop every UDP packet `ns` sends (a network that blocks UDP).
pub fn block_udp(ns: &str) {
    nft(ns, &["add", "table", "inet", "cairn_block"]);
    nft(
        ns,
        &[
            "add",
            "chain",
            "inet",
            "cairn_block",
            "out",
            "{ type filter hook output priority 0 ; policy accept ; }",
        ],
    );
    nft(
        ns,
        &[
            "add",
            "rule",
            "inet",
            "cairn_block",
            "out",
            "meta",
            "l4proto",
            "udp",
            "drop",
        ],
    );
}

/// Undo [`block_udp`].
pub fn unblock_udp(ns: &str) {
    nft(ns, &["delete", "table", "inet", "cairn_block"]);
}
