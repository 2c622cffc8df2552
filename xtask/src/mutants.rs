//! `cargo xtask mutants [--shard K/N] [--part core|protocol]`: cargo-mutants
//! over the modules that decide correctness, with the tests scoped to the
//! packages that catch their mutants fast, then the score.
//!
//! Mutants listed in `.cargo/mutants.toml` (`exclude_re`) are the ones
//! explained there as equivalent (no test can tell them apart from the
//! original); every other surviving mutant fails the run's score check.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::{present, root, run};

/// One run: the files mutated and the packages whose tests judge them.
struct Part {
    name: &'static str,
    files: &'static [&'static str],
    test_packages: &'static [&'static str],
}

const PARTS: &[Part] = &[
    Part {
        name: "core",
        files: &[
            "crates/cairn/src/sync.rs",
            "crates/cairn/src/reconcile.rs",
            "crates/cairn/src/graph.rs",
            "crates/cairn/src/encoding.rs",
            "crates/cairn/src/record.rs",
            "crates/cairn/src/store.rs",
        ],
        // cairn's unit tests, and the conformance suite on memory stores
        // (plain, boxed, and with only the trait's required methods).
        test_packages: &["cairn", "cairn-memory"],
    },
    Part {
        name: "protocol",
        files: &[
            "crates/cairn-protocol/src/codec.rs",
            "crates/cairn-protocol/src/dispatch.rs",
            "crates/cairn-protocol/src/cache.rs",
        ],
        test_packages: &["cairn-protocol"],
    },
];

/// Least share of viable mutants caught (issue 15's target).
const TARGET: f64 = 0.90;

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn ensure_cargo_mutants() -> Result<(), String> {
    let ok = || {
        Command::new(cargo())
            .args(["mutants", "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
            || present("cargo-mutants")
    };
    if ok() {
        return Ok(());
    }
    println!(
        "xtask: cargo-mutants is missing; installing it (cargo install cargo-mutants --locked)"
    );
    run(Command::new(cargo()).args(["install", "cargo-mutants", "--locked"])).map_err(|e| {
        format!(
            "cannot install cargo-mutants ({e}); install it: cargo install cargo-mutants --locked"
        )
    })?;
    if ok() {
        Ok(())
    } else {
        Err("cargo-mutants is still missing after installing it (is ~/.cargo/bin on PATH?)".into())
    }
}

fn out_dir(part: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    base.join("mutants").join(part)
}

fn lines(path: PathBuf) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

pub(crate) fn mutants(args: &[String]) -> Result<(), String> {
    let mut shard = None;
    let mut only = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--shard" => shard = Some(it.next().ok_or("--shard needs K/N")?.clone()),
            "--part" => only = Some(it.next().ok_or("--part needs core or protocol")?.clone()),
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: cargo xtask mutants [--shard K/N] [--part core|protocol])"
                ));
            }
        }
    }
    if let Some(p) = &only
        && !PARTS.iter().any(|x| x.name == p)
    {
        return Err(format!("--part {p:?}: expected core or protocol"));
    }
    ensure_cargo_mutants()?;
    let mut failed = Vec::new();
    for part in PARTS
        .iter()
        .filter(|p| only.as_ref().is_none_or(|o| o == p.name))
    {
        let t = Instant::now();
        let out = out_dir(part.name);
        std::fs::create_dir_all(&out)
            .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        let mut cmd = Command::new(cargo());
        cmd.arg("mutants").current_dir(root());
        for f in part.files {
            cmd.args(["-f", f]);
        }
        for p in part.test_packages {
            cmd.args(["--test-package", p]);
        }
        if let Some(s) = &shard {
            cmd.args(["--shard", s]);
        }
        // Two builds and test runs at once (the machine CI runs on has two
        // cores); many mutants wait on a test timeout rather than a core.
        cmd.args(["--jobs", "2"]);
        cmd.arg("-o").arg(&out);
        let dir = out.join("mutants.out");
        // No score from an earlier run: only this run's outcomes count.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
        }
        println!("xtask: running {cmd:?}");
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run cargo mutants: {e}"))?;
        // 0: all caught; 2: some missed; 3: some timed out (caught). The
        // score below decides those; anything else (1 usage, 4 the
        // unmutated baseline fails) is a failed run.
        if !matches!(status.code(), Some(0 | 2 | 3)) {
            return Err(format!(
                "mutants {}: cargo mutants failed ({status}); see its output above",
                part.name
            ));
        }
        let (caught, timeout, missed, unviable) = (
            lines(dir.join("caught.txt")),
            lines(dir.join("timeout.txt")),
            lines(dir.join("missed.txt")),
            lines(dir.join("unviable.txt")),
        );
        let viable = caught + timeout + missed;
        if viable == 0 {
            return Err(format!(
                "mutants {}: no outcome in {} (did cargo-mutants run?)",
                part.name,
                dir.display()
            ));
        }
        let score = (caught + timeout) as f64 / viable as f64;
        println!(
            "xtask: mutants {}: {caught} caught, {timeout} timed out (caught), {missed} missed, {unviable} unviable: {:.1}% of {viable} viable caught in {:.0} s; missed ones in {}",
            part.name,
            100.0 * score,
            t.elapsed().as_secs_f64(),
            dir.join("missed.txt").display()
        );
        if score < TARGET {
            failed.push(part.name);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "mutation score below {:.0}% in: {}",
            100.0 * TARGET,
            failed.join(", ")
        ))
    }
}
