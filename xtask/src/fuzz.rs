//! `cargo xtask fuzz [--time SECS]`: every fuzz target, a bounded time each.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::{present, root, run};

/// The fuzz targets, and the cargo features each needs (the WebRTC adapter
/// and the stores are built only for the targets that need them).
const TARGETS: &[(&str, &[&str])] = &[
    ("decode_frame", &[]),
    ("decode_change", &[]),
    ("riblt_decode", &[]),
    ("signal_message", &["webrtc"]),
    ("webrtc_chunks", &["webrtc"]),
    ("store_url", &["webrtc"]),
    ("store_model", &["stores"]),
];

/// Seconds per target when `--time` is not given.
const DEFAULT_SECS: u64 = 30;

fn parse_time(args: &[String]) -> Result<u64, String> {
    let mut secs = DEFAULT_SECS;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = match a.strip_prefix("--time=") {
            Some(v) => v,
            None if a == "--time" => it
                .next()
                .ok_or("--time needs a number of seconds")?
                .as_str(),
            None => {
                return Err(format!(
                    "unknown argument {a:?} (usage: cargo xtask fuzz [--time SECS])"
                ));
            }
        };
        secs =
            value.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                format!("--time {value:?}: expected a positive number of seconds")
            })?;
    }
    Ok(secs)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo_fuzz_present() -> bool {
    Command::new(cargo())
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        || present("cargo-fuzz")
}

fn ensure_cargo_fuzz() -> Result<(), String> {
    if cargo_fuzz_present() {
        return Ok(());
    }
    println!("xtask: cargo-fuzz is missing; installing it (cargo install cargo-fuzz --locked)");
    run(Command::new(cargo()).args(["install", "cargo-fuzz", "--locked"])).map_err(|e| {
        format!("cannot install cargo-fuzz ({e}); install it: cargo install cargo-fuzz --locked")
    })?;
    if cargo_fuzz_present() {
        Ok(())
    } else {
        Err("cargo-fuzz is still missing after cargo install cargo-fuzz --locked (is ~/.cargo/bin on PATH?)".into())
    }
}

/// A `cargo fuzz` command for `target` with the stable toolchain allowed
/// the nightly flags it passes.
fn fuzz_cmd(sub: &str, target: &str, features: &[&str]) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.args(["fuzz", sub, target])
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(root());
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    cmd
}

/// Where libFuzzer writes what it finds: under the target directory, so the
/// committed seeds in `fuzz/corpus/<target>/` are only read.
fn scratch_corpus(target: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("fuzz/target"));
    base.join("fuzz-corpus").join(target)
}

pub(crate) fn fuzz(args: &[String]) -> Result<(), String> {
    let secs = parse_time(args)?;
    ensure_cargo_fuzz()?;
    let start = Instant::now();
    let mut crashed = Vec::new();
    for (target, features) in TARGETS {
        let t = Instant::now();
        run(&mut fuzz_cmd("build", target, features))
            .map_err(|e| format!("fuzz target {target} does not build: {e}"))?;
        let scratch = scratch_corpus(target);
        std::fs::create_dir_all(&scratch)
            .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
        let seeds = root().join("fuzz/corpus").join(target);
        let mut cmd = fuzz_cmd("run", target, features);
        cmd.arg(&scratch);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg("-print_final_stats=1");
        match run(&mut cmd) {
            Ok(()) => println!(
                "xtask: fuzz target {target}: no crash in {secs} s ({:.0} s with its build)",
                t.elapsed().as_secs_f64()
            ),
            Err(e) => {
                eprintln!(
                    "xtask: fuzz target {target} CRASHED: {e} (the input is under fuzz/artifacts/{target}/)"
                );
                crashed.push(*target);
            }
        }
    }
    println!(
        "xtask: fuzzed {} targets in {:.0} s",
        TARGETS.len(),
        start.elapsed().as_secs_f64()
    );
    if crashed.is_empty() {
        Ok(())
    } else {
        Err(format!("fuzz targets crashed: {}", crashed.join(", ")))
    }
}
