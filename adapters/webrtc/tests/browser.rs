#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! A real browser (headless Chromium) and a Rust peer sync 1,000 changes
//! each way, one of 10 MiB each way, through the signaling server, inside
//! a network namespace that has only loopback. Fails (never skips) when
//! Chromium or the npm packages are missing: `cargo xtask test` installs
//! them.

#[path = "../../../examples/browser/test/harness.rs"]
mod harness;

#[test]
fn a_browser_and_a_rust_peer_sync_both_ways() {
    harness::run_driver(
        &harness::browser_dir(env!("CARGO_MANIFEST_DIR")),
        "run.mjs",
        &[
            ("CAIRN_SIGNAL_BIN", env!("CARGO_BIN_EXE_cairn-signal")),
            ("CAIRN_PEER_BIN", env!("CARGO_BIN_EXE_cairn-webrtc-peer")),
        ],
        "browser test ok",
    );
}
