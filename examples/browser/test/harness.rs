//! Runs one of this folder's Node test drivers (`test/*.mjs`) inside a
//! network namespace that has only loopback, after checking what it needs
//! (Chromium, node, the npm packages): included with `#[path]` by
//! `adapters/webrtc/tests/browser.rs` and `crates/cairn-cli/tests/browser_ws.rs`.
//! Fails (never skips) when something is missing: `cargo xtask test`
//! installs it all.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Run `node test/<script>` in `examples/browser` (`dir`) with `envs` and
/// `CAIRN_CHROMIUM`; assert it succeeds and prints `ok_marker`.
pub fn run_driver(dir: &Path, script: &str, envs: &[(&str, &str)], ok_marker: &str) {
    let chromium = std::env::var("CAIRN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's `chromium` package (`cargo xtask test` does it when run as root)"
    );
    assert!(
        dir.join("node_modules/playwright-core").exists()
            && dir.join("node_modules/@noble/hashes").exists()
            && dir.join("node_modules/@noble/curves").exists(),
        "examples/browser/node_modules is missing: run `npm ci` in examples/browser (`cargo xtask test` does it)"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "`node` is missing: install Debian's `nodejs` package"
    );
    // Only loopback: nothing leaves the machine.
    let sh = format!("ip link set lo up && exec node test/{script}");
    let ns = if is_root() { "-n" } else { "-rn" };
    let mut cmd = Command::new("unshare");
    cmd.args([ns, "--", "sh", "-c", &sh])
        .current_dir(dir)
        .env("CAIRN_CHROMIUM", &chromium);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("cannot run `unshare` (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains(ok_marker), "{stdout}");
}

/// `examples/browser`, from a crate's manifest directory two levels down.
pub fn browser_dir(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir).join("../../examples/browser")
}
