#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! A real browser (headless Chromium) syncs with `cairn serve --ws` over
//! WebSocket, edits offline, reloads (the edit survives in IndexedDB),
//! comes back and converges, while another device writes to the relay with
//! the `cairn` command; inside a network namespace that has only loopback.
//! Fails (never skips) when Chromium or the npm packages are missing:
//! `cargo xtask test` installs them.

#[path = "../../../examples/browser/test/harness.rs"]
mod harness;

#[test]
fn a_browser_syncs_over_websocket_and_keeps_offline_edits_across_a_reload() {
    harness::run_driver(
        &harness::browser_dir(env!("CARGO_MANIFEST_DIR")),
        "run-ws.mjs",
        &[("CAIRN_BIN", env!("CARGO_BIN_EXE_cairn"))],
        "browser websocket test ok",
    );
}
