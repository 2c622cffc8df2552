//! The `cairn` binary, driven as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use cairn::{AppendOnlyStore, ChangeBuilder, ChangeKind, DocId, StoreId};

fn cairn(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("CAIRN_KEY", dir.join("identity"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run cairn")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn one_line_error(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected failure: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

/// Write `n` changes into a redb store file, outside the CLI.
fn seed_redb(path: &std::path::Path, id: &str, n: usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = cairn_redb::RedbStore::open(path, StoreId::new(id).unwrap())
            .await
            .unwrap();
        let batch: Vec<_> = (0..n)
            .map(|i| {
                ChangeBuilder::new(ChangeKind::Create, DocId::new(format!("doc-{i}")).unwrap())
                    .payload(vec![i as u8; 100])
                    .build()
                    .unwrap()
            })
            .collect();
        s.append(batch).await.unwrap();
    });
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn help_exists_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        &["--help"][..],
        &["demo", "--help"],
        &["serve", "--help"],
        &["sync", "--help"],
        &["log", "--help"],
        &["stats", "--help"],
        &["id", "--help"],
        &["conformance", "--help"],
    ] {
        let out = ok(&cairn(dir.path(), cmd));
        assert!(out.contains("Usage"), "{cmd:?}: {out}");
    }
}

#[test]
fn bad_input_is_one_clear_line_and_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let e = one_line_error(&cairn(dir.path(), &["log", "ftp://nowhere"]));
    assert!(e.contains("unknown store URL"), "{e}");
    let e = one_line_error(&cairn(dir.path(), &["id", "show"]));
    assert!(e.contains("identity"), "{e}");
    let e = one_line_error(&cairn(dir.path(), &["stats", "quic://127.0.0.1:9/x/y"]));
    assert!(e.contains("peer"), "{e}");
    let p = dir.path().join("a.redb");
    seed_redb(&p, "one/store", 1);
    let e = one_line_error(&cairn(
        dir.path(),
        &[
            "--store-id",
            "other/store",
            "stats",
            &format!("redb:{}", p.display()),
        ],
    ));
    assert!(e.contains("mismatch") || e.contains("store id"), "{e}");
}

#[test]
fn id_new_then_show() {
    let dir = tempfile::tempdir().unwrap();
    let created = ok(&cairn(dir.path(), &["id", "new"]));
    let peer = created.lines().next().unwrap().to_owned();
    assert_eq!(peer.len(), 64);
    let shown = ok(&cairn(dir.path(), &["id", "show", "--plain"]));
    assert_eq!(shown.trim(), peer);
    let qr = ok(&cairn(dir.path(), &["id", "show"]));
    assert!(qr.lines().count() > 10, "a QR code follows");
    one_line_error(&cairn(dir.path(), &["id", "new"]));
}

#[test]
fn sync_log_and_stats_between_redb_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.redb"), dir.path().join("b.redb"));
    seed_redb(&a, "cairn/default", 25);
    let (ua, ub) = (
        format!("redb:{}", a.display()),
        format!("redb:{}", b.display()),
    );
    let out = ok(&cairn(dir.path(), &["sync", "--from", &ua, "--to", &ub]));
    assert!(out.contains("pushed 25 changes"), "{out}");
    let again = ok(&cairn(
        dir.path(),
        &["sync", "--from", &ua, "--to", &ub, "--both"],
    ));
    assert!(
        again.contains("pulled 0 changes") && again.contains("pushed 0 changes"),
        "{again}"
    );
    let stats = ok(&cairn(dir.path(), &["stats", &ub]));
    assert!(stats.contains("changes    25"), "{stats}");
    let log = ok(&cairn(dir.path(), &["log", &ub, "--limit", "10"]));
    assert_eq!(log.lines().count(), 11, "header + 10 lines:\n{log}");
    let doc = ok(&cairn(dir.path(), &["log", &ub, "--doc", "doc-3"]));
    assert_eq!(doc.lines().count(), 2, "{doc}");
}

#[test]
fn serve_and_sync_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let client_peer = ok(&cairn(dir.path(), &["id", "new"]))
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let served = server_dir.join("served.redb");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(format!("acme/db=redb:{}", served.display()))
        .args(["--allow", &client_peer])
        .env("CAIRN_KEY", server_dir.join("identity"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = Server(child);
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next().expect("server printed its URL").unwrap();
        if let Some(u) = line.trim().strip_prefix("quic://") {
            break format!("quic://{u}");
        }
    };
    let local = dir.path().join("local.redb");
    seed_redb(&local, "acme/db", 40);
    let out = ok(&cairn(
        dir.path(),
        &[
            "sync",
            "--from",
            &format!("redb:{}", local.display()),
            "--to",
            &url,
        ],
    ));
    assert!(out.contains("pushed 40 changes"), "{out}");
    let stats = ok(&cairn(dir.path(), &["stats", &url]));
    assert!(stats.contains("changes    40"), "{stats}");
    // A peer that is not allowed is refused.
    let stranger = tempfile::tempdir().unwrap();
    let o = cairn(stranger.path(), &["stats", &url]);
    assert!(!o.status.success());
}

#[test]
fn conformance_command_runs_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&cairn(
        dir.path(),
        &["conformance", "memory:", "--filter", "contract::"],
    ));
    assert!(out.contains("21 passed, 0 failed"), "{out}");
    let rd = dir.path().join("cases");
    let out = ok(&cairn(
        dir.path(),
        &[
            "conformance",
            &format!("redb:{}", rd.display()),
            "--filter",
            "durability::",
        ],
    ));
    assert!(out.contains("3 passed, 0 failed"), "{out}");
}

/// Start `cairn serve` with `args`; returns the guard and the printed URL.
fn start_server(dir: &std::path::Path, args: &[&str]) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("serve")
        .args(args)
        .env("CAIRN_KEY", dir.join("server-identity"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next().expect("server printed its URL").unwrap();
        if let Some(u) = line.trim().strip_prefix("quic://") {
            break format!("quic://{u}");
        }
    };
    (server, url)
}

#[test]
fn conformance_over_quic_against_an_ephemeral_server() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(dir.path(), &["--ephemeral", "--listen", "127.0.0.1:0"]);
    let out = ok(&cairn(dir.path(), &["conformance", &url]));
    assert!(out.contains(" 0 failed"), "{out}");
    let want = format!("{} passed", cairn_conformance::all_cases().len() - 3);
    assert!(
        out.contains(&want),
        "{want} (all but the 3 durability cases):\n{out}"
    );
}

#[test]
fn demo_runs_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&cairn(dir.path(), &["demo", "--notes", "5"]));
    assert!(out.contains("plaintext found in 0 of them"), "{out}");
    assert!(
        out.contains("live: the laptop's edit reached the phone"),
        "{out}"
    );
    let merged = out
        .lines()
        .filter(|l| l.contains("analytical") && l.contains("7946"))
        .count();
    assert!(merged >= 2, "both devices show the merged contact:\n{out}");
}
