#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! A real browser (headless Chromium) syncs with `cairn serve --ws` over
//! WebSocket, edits offline, reloads (the edit survives in IndexedDB),
//! comes back and converges, while another device writes to the relay with
//! the `cairn` command; inside a network namespace that has only loopback.
//! Fails (never skips) when Chromium or the npm packages are missing:
//! `cargo xtask test` installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/browser")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn a_browser_syncs_over_websocket_and_keeps_offline_edits_across_a_reload() {
    let chromium = std::env::var("CAIRN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's `chromium` package (`cargo xtask test` does it when run as root)"
    );
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").exists()
            && dir.join("node_modules/@noble/curves").exists(),
        "examples/browser/node_modules is missing: run `npm ci` in examples/browser (`cargo xtask test` does it)"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "`node` is missing: install Debian's `nodejs` package"
    );
    // Only loopback: nothing leaves the machine.
    let script = "ip link set lo up && exec node test/run-ws.mjs";
    let ns = if is_root() { "-n" } else { "-rn" };
    let out = Command::new("unshare")
        .args([ns, "--", "sh", "-c", script])
        .current_dir(&dir)
        .env("CAIRN_BIN", env!("CARGO_BIN_EXE_cairn"))
        .env("CAIRN_CHROMIUM", &chromium)
        .output()
        .expect("cannot run `unshare` (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "browser websocket test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("browser websocket test ok"), "{stdout}");
}
