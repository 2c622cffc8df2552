//! `cargo xtask test [ARGS…]`: make sure the system packages and npm
//! packages the tests need are present (installing them with apt-get when
//! running as root; failing loudly, naming the package, otherwise), start a
//! throwaway PostgreSQL cluster (unless `CAIRN_PG_URL` names a server
//! already), then run `cargo test --workspace [ARGS…]`, the browser test
//! included, with `CAIRN_PG_URL` pointing at it; the cluster is stopped at
//! the end, whether the tests passed or not.
//!
//! `cargo xtask fuzz [--time SECS]`: build and run every fuzz target in
//! `fuzz/` for SECS seconds each (default 30) with `cargo fuzz` on the
//! stable toolchain (`RUSTC_BOOTSTRAP=1`), installing cargo-fuzz if it is
//! missing; fails, naming the targets, if any crashes.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The throwaway PostgreSQL cluster, shared with the crash test and the
/// benchmarks of cairn-postgres (standard library only).
#[path = "../../adapters/postgres/tests/common/cluster.rs"]
mod cluster;

mod fuzz;
mod mutants;

/// Names the PostgreSQL server the tests use.
const PG_URL_ENV: &str = "CAIRN_PG_URL";

/// A program the tests run, and the Debian package that provides it.
const NEEDED: &[(&str, &str)] = &[
    ("/usr/bin/chromium", "chromium"),
    ("node", "nodejs"),
    ("npm", "npm"),
    ("unshare", "util-linux"),
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("turnserver", "coturn"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("setup") => setup(),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("mutants") => mutants::mutants(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask test [cargo test args…]   install test dependencies, run every test\n       cargo xtask setup                        only install test dependencies\n       cargo xtask fuzz [--time SECS]           run every fuzz target SECS seconds (default 30)\n       cargo xtask mutants [--part P] [--shard K/N]  cargo-mutants over the correctness modules, and the score"
            );
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
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

fn present(program: &str) -> bool {
    if program.starts_with('/') {
        return Path::new(program).exists();
    }
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|d| d.join(program).is_file())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    println!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

/// The Debian packages of the `NEEDED` programs that are not installed.
fn missing_packages() -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = NEEDED
        .iter()
        .filter(|(prog, _)| !present(prog))
        .map(|(_, pkg)| *pkg)
        .collect();
    // initdb and pg_ctl live off PATH on Debian (/usr/lib/postgresql/N/bin).
    if cluster::find_bin().is_err() {
        missing.push(cluster::PACKAGE);
    }
    missing
}

fn setup() -> Result<(), String> {
    let missing = missing_packages();
    if !missing.is_empty() {
        if !is_root() {
            return Err(format!(
                "missing Debian packages needed by the tests: {} (install them: sudo apt-get install -y {}), or run as root",
                missing.join(", "),
                missing.join(" ")
            ));
        }
        println!(
            "xtask: installing missing Debian packages: {}",
            missing.join(" ")
        );
        run(Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        let still = missing_packages();
        if !still.is_empty() {
            return Err(format!("still missing after apt-get: {}", still.join(", ")));
        }
    }
    let browser = root().join("examples/browser");
    let npm_cmd = if browser.join("package-lock.json").exists() {
        "ci"
    } else {
        "install"
    };
    run(Command::new("npm")
        .args([npm_cmd, "--no-audit", "--no-fund"])
        .current_dir(&browser))?;
    Ok(())
}

fn test(extra: &[String]) -> Result<(), String> {
    setup()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["test", "--workspace"])
        .args(extra)
        .current_dir(root());
    // Dropped (stopped and removed) when this function returns, on success
    // and failure alike.
    let _cluster = match std::env::var(PG_URL_ENV) {
        Ok(url) if !url.is_empty() => {
            println!("xtask: PostgreSQL tests use {PG_URL_ENV}={url}");
            None
        }
        _ => {
            let c = cluster::Cluster::start_new()
                .map_err(|e| format!("cannot start a throwaway PostgreSQL cluster: {e}"))?;
            println!(
                "xtask: started a throwaway PostgreSQL cluster in {} on {}",
                c.dir.display(),
                c.url()
            );
            cmd.env(PG_URL_ENV, c.url());
            Some(c)
        }
    };
    run(&mut cmd)
}
