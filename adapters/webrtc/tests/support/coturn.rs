//! coturn (`turnserver`, Debian package coturn) for tests and benches:
//! started with the caller's arguments, logging to its stdout (echoed on
//! stderr with `CAIRN_COTURN_LOG=1`), killed on drop. Included with
//! `#[path]` by `tests/turn.rs` and, through `support/nat.rs`, by the NAT
//! tests and `cairn-connect`'s path benchmark.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running coturn; killed (and reaped) on drop.
pub struct Coturn(Child);

impl Coturn {
    /// Run `cmd` (a `turnserver` command line, perhaps behind `ip netns
    /// exec`) with its log on stdout, and wait at most 30 s until it says
    /// its UDP listener is open; panics naming the package otherwise.
    pub fn spawn(mut cmd: Command) -> Coturn {
        let mut child = cmd
            .args(["--no-cli", "--log-file=stdout", "--simple-log", "--verbose"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start turnserver (Debian package coturn): {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Ends with coturn's stdout.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if std::env::var_os("CAIRN_COTURN_LOG").is_some() {
                    eprintln!("coturn: {line}");
                }
                if line.contains("UDP") && line.contains("listener opened on") {
                    let _ = tx.send(());
                }
            }
        });
        let c = Coturn(child);
        rx.recv_timeout(Duration::from_secs(30)).expect(
            "coturn never opened its UDP listener (is the Debian package coturn installed?)",
        );
        c
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
