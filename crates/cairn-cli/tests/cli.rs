//! The `cairn` binary, driven as a user would: one test per problem of
//! issue 11 (numbered as there), then the new commands.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;

// ---- 1. network failures -------------------------------------------------

#[test]
fn p1_network_failures_are_one_clear_line_and_fast() {
    let home = Home::new();
    let me = home.id_new(false);
    let served = home.join("served.redb");
    let (mut srv, url) = serve(
        &home,
        &[
            "--store",
            &format!("acme/db={}", redb(&served)),
            "--create",
            "--allow",
            &me,
        ],
    );
    let server_peer = url.rsplit("peer=").next().unwrap().to_owned();
    assert_ne!(server_peer, me, "the server has its own identity");
    let port = url
        .trim_start_matches("quic://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let other = "ab".repeat(32);
    let cases = [
        (
            format!("quic://{port}/acme/dbb?peer={server_peer}"),
            "does not serve store acme/dbb",
        ),
        (
            format!("quic://{port}/acme/db?peer={other}"),
            "is not peer abababababab",
        ),
        (
            // A port with nothing on it: the server's port + 1 is free
            // only by luck, so bind one and drop it.
            format!(
                "quic://{}/acme/db?peer={server_peer}",
                std::net::UdpSocket::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
            ),
            "nothing is listening",
        ),
    ];
    for (u, want) in &cases {
        let start = Instant::now();
        let e = one_error(&home.run(&["stats", u]), 1);
        assert!(e.contains(want), "{u}: {e}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{u}: took {:?}",
            start.elapsed()
        );
    }
    // A peer the server does not know: refused, saying who and why.
    home.run(&["id", "new", "--key", "stranger.key"]);
    let start = Instant::now();
    let e = one_error(&home.run(&["stats", "--key", "stranger.key", &url]), 1);
    assert!(e.contains("refused peer") && e.contains("--allow"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // conformance against a normal server fails at once with one line.
    let start = Instant::now();
    let e = one_error(&home.run(&["conformance", &url]), 1);
    assert!(e.contains("--ephemeral"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    srv.term();
    assert!(srv.wait(T).success());
}

#[test]
fn p1_silence_honours_timeout() {
    let home = Home::new();
    home.id_new(false);
    // A UDP socket that reads and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let start = Instant::now();
    let e = one_error(
        &home.run(&[
            "stats",
            "--timeout",
            "1",
            &format!("quic://{addr}/a/b?peer={}", "ab".repeat(32)),
        ]),
        1,
    );
    assert!(e.contains("no answer") && e.contains("--timeout"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    drop(silent);
}

// ---- 2. data in and out --------------------------------------------------

#[test]
fn p2_put_cat_log_export_import_check_on_redb() {
    let home = Home::new();
    home.id_new(false);
    let a = redb(&home.join("a.redb"));
    let id = ok(&home.run_stdin(
        &[
            "put",
            &a,
            "--create",
            "--store-id",
            "acme/notes",
            "--doc",
            "note-1",
        ],
        b"hello, cairn\n",
    ))
    .trim()
    .to_owned();
    assert_eq!(id.len(), 64, "{id}");
    std::fs::write(home.join("second.txt"), b"second").unwrap();
    let id2 = ok(&home.run(&["put", &a, "second.txt", "--doc", "note-1"]))
        .trim()
        .to_owned();
    assert_eq!(ok(&home.run(&["cat", &a, &id])), "hello, cairn\n");
    assert_eq!(ok(&home.run(&["cat", &a, &id2[..8]])), "second");
    let meta = ok(&home.run(&["cat", &a, &id2, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(v["kind"], "change", "the second change of a doc");
    assert_eq!(v["deps"][0], id.as_str(), "it depends on the head");
    assert_eq!(v["signed"], true);
    let log = ok(&home.run(&["log", &a]));
    assert_eq!(log.lines().count(), 3, "{log}");
    // export, import into a new store, check
    ok(&home.run(&["export", &a, "--out", "all.cairn"]));
    let b = redb(&home.join("b.redb"));
    let out = ok(&home.run(&["import", &b, "all.cairn", "--create"]));
    assert!(
        out.contains("2 new, 0 already present, 0 rejected"),
        "{out}"
    );
    let again = ok(&home.run(&["import", &b, "all.cairn", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        (v["new"].as_u64(), v["duplicates"].as_u64()),
        (Some(0), Some(2))
    );
    let check = ok(&home.run(&["check", &b]));
    assert!(check.contains("ok: no problems"), "{check}");
    // a damaged bundle is refused
    let mut bytes = std::fs::read(home.join("all.cairn")).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(home.join("bad.cairn"), &bytes).unwrap();
    let e = one_error(&home.run(&["import", &b, "bad.cairn"]), 1);
    assert!(e.contains("bad.cairn") && e.contains("checksum"), "{e}");
}

#[test]
fn p2_sealed_export_opens_only_for_its_recipient() {
    let home = Home::new();
    home.id_new(false);
    let bob = ok(&home.run(&["id", "new", "--key", "bob.key"]))
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let a = redb(&home.join("a.redb"));
    ok(&home.run_stdin(
        &["put", &a, "--create", "--store-id", "x/y", "--doc", "d"],
        b"secret",
    ));
    let json = ok(&home.run(&[
        "export",
        &a,
        "--to",
        &bob,
        "--out",
        "for-bob.cairn",
        "--json",
    ]));
    assert!(json.contains(&bob), "{json}");
    let bytes = std::fs::read(home.join("for-bob.cairn")).unwrap();
    assert!(
        !bytes.windows(6).any(|w| w == b"secret"),
        "the payload is encrypted"
    );
    let b = redb(&home.join("b.redb"));
    let e = one_error(&home.run(&["import", &b, "for-bob.cairn", "--create"]), 1);
    assert!(e.contains("sealed to peer") && e.contains(&bob), "{e}");
    assert!(!home.join("b.redb").exists());
    let out = ok(&home.run(&[
        "import",
        &b,
        "for-bob.cairn",
        "--create",
        "--key",
        "bob.key",
    ]));
    assert!(out.contains("1 new"), "{out}");
}

#[test]
fn p2_import_rejects_by_policy_and_exits_partial() {
    let home = Home::new();
    let me = home.id_new(false);
    let a = home.join("a.redb");
    seed_redb(&a, "x/y", 3); // unsigned
    ok(&home.run_stdin(&["put", &redb(&a), "--doc", "d"], b"signed"));
    ok(&home.run(&["export", &redb(&a), "--out", "all.cairn"]));
    let b = redb(&home.join("b.redb"));
    let o = home.run(&[
        "import",
        &b,
        "all.cairn",
        "--create",
        "--trust",
        &me,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["new"], 1);
    assert_eq!(v["rejected"].as_array().unwrap().len(), 3);
}

// ---- 3. broken pipes -----------------------------------------------------

fn first_line_then_close(home: &Home, args: &[&str]) -> (Option<i32>, String) {
    use std::io::BufRead;
    let mut child = home
        .cmd(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(!line.is_empty());
    drop(out); // like `| head -1`
    let o = child.wait_with_output().unwrap();
    (o.status.code(), stderr(&o))
}

#[test]
fn p3_a_closed_pipe_ends_quietly() {
    let home = Home::new();
    home.id_new(false);
    let a = home.join("a.redb");
    seed_redb(&a, "x/y", 3000);
    let log_url = redb(&a);
    for args in [
        vec!["log", log_url.as_str(), "--limit", "0"],
        vec!["id", "show", "--qr"],
        vec!["conformance", "memory:"],
    ] {
        let (code, err) = first_line_then_close(&home, &args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(
            err.is_empty() || !err.contains("panicked"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("error"), "{args:?}: {err}");
    }
}

// ---- 4. damaged redb files -----------------------------------------------

#[test]
fn p4_damaged_and_empty_files_are_one_typed_line() {
    let home = Home::new();
    let good = home.join("good.redb");
    seed_redb(&good, "x/y", 300);
    let bytes = std::fs::read(&good).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..40 {
        let mut d = bytes.clone();
        for _ in 0..30 {
            let at = 4096 + (next() as usize) % (d.len() - 4096);
            d[at] ^= 0xff;
        }
        let p = home.join(&format!("d{i}.redb"));
        std::fs::write(&p, &d).unwrap();
        for cmd in ["stats", "log", "check"] {
            let o = home
                .cmd(&[cmd, &redb(&p)])
                .env("RUST_BACKTRACE", "1")
                .output()
                .unwrap();
            let err = stderr(&o);
            // Rust's panic hook output ("thread … panicked at …") and
            // backtraces never show; the typed error may name the panic.
            assert!(
                !err.contains("panicked at") && !err.contains("stack backtrace"),
                "{cmd} d{i}: {err}"
            );
            if !o.status.success() {
                one_error(&o, 1);
            }
        }
        assert_eq!(
            std::fs::read(&p).unwrap(),
            d,
            "read commands left d{i} alone"
        );
    }
    std::fs::write(home.join("empty.redb"), b"").unwrap();
    let e = one_error(&home.run(&["stats", "redb:empty.redb"]), 1);
    assert!(
        e.contains("empty.redb") && e.contains("empty (0 bytes)"),
        "{e}"
    );
}

// ---- 5. read commands never write ----------------------------------------

#[test]
fn p5_read_commands_write_nothing() {
    let home = Home::new();
    let e = one_error(&home.run(&["stats", "redb:./typo.redb"]), 1);
    assert!(e.contains("typo.redb") && e.contains("no such file"), "{e}");
    assert!(!home.join("typo.redb").exists());
    let e = one_error(
        &home.run(&[
            "sync",
            "--from",
            "redb:missing.redb",
            "--to",
            "redb:b.redb",
            "--create",
            "--store-id",
            "a/b",
        ]),
        1,
    );
    assert!(e.contains("missing.redb"), "{e}");
    assert!(!home.join("missing.redb").exists() && !home.join("b.redb").exists());
    let e = one_error(
        &home.run(&["sync", "--from", "memory:", "--to", "redb:b.redb"]),
        1,
    );
    assert!(e.contains("--create"), "{e}");
    // No identity is made by anything but `id new`.
    let url = format!("quic://127.0.0.1:9/a/b?peer={}", "ab".repeat(32));
    let e = one_error(&home.run(&["stats", "--key", "./typo.key", &url]), 1);
    assert!(e.contains("typo.key") && e.contains("cairn id new"), "{e}");
    assert!(!home.join("typo.key").exists());
    one_error(&home.run(&["sync", "--from", "memory:", "--to", &url]), 1);
    assert!(!home.join(".config").exists(), "nothing under ~/.config");
    // stats and log of a file leave it byte for byte.
    let a = home.join("a.redb");
    seed_redb(&a, "x/y", 20);
    let before = std::fs::read(&a).unwrap();
    ok(&home.run(&["stats", &redb(&a)]));
    ok(&home.run(&["log", &redb(&a)]));
    ok(&home.run(&["check", &redb(&a)]));
    assert_eq!(std::fs::read(&a).unwrap(), before);
}

#[test]
fn p5_remote_reads_download_nothing_and_upload_nothing() {
    let home = Home::new();
    let me = home.id_new(false);
    let served = home.join("served.redb");
    seed_redb(&served, "acme/db", 30);
    let (mut srv, url) = serve(&home, &["--store", &redb(&served), "--allow", &me]);
    let s = ok(&home.run(&["stats", &url]));
    assert!(s.contains("changes      30"), "{s}");
    let st = ok(&home.run(&["status", &url, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(v["head"]["seq"], 30);
    assert_eq!(v["capabilities"]["remote"], true);
    let files: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files.len(), 2, "no cache files: {files:?}"); // .config and served.redb
    srv.term();
    assert!(srv.wait(T).success());
}

// ---- 6. errors name what they concern -------------------------------------

#[test]
fn p6_errors_name_the_file_or_address() {
    let home = Home::new();
    let me = home.id_new(false);
    std::fs::write(home.join("payload"), b"p").unwrap();
    let e = one_error(
        &home.run(&[
            "put",
            "redb:no/such/dir/x.redb",
            "--create",
            "--store-id",
            "a/b",
            "--doc",
            "d",
            "payload",
        ]),
        1,
    );
    assert!(e.contains("no/such/dir/x.redb"), "{e}");
    let served = home.join("served.redb");
    let (mut srv, url) = serve(
        &home,
        &[
            "--store",
            &format!("acme/db={}", redb(&served)),
            "--create",
            "--allow",
            &me,
        ],
    );
    let port = url
        .trim_start_matches("quic://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let e = one_error(
        &home.run(&[
            "serve",
            "--listen",
            &port,
            "--store",
            "acme/db=memory:",
            "--allow",
            &me,
        ]),
        1,
    );
    assert!(
        e.contains(&port) && e.to_lowercase().contains("in use"),
        "{e}"
    );
    let e = one_error(&home.run(&["stats", &redb(&served)]), 1);
    assert!(
        e.contains("served.redb") && e.contains("already open"),
        "{e}"
    );
    let e = one_error(
        &home.run(&["cat", &redb(&home.join("nope.redb")), "abcd"]),
        1,
    );
    assert!(e.contains("nope.redb"), "{e}");
    srv.term();
    assert!(srv.wait(T).success());
}

// ---- 7. --store-id ---------------------------------------------------------

#[test]
fn p7_store_id_comes_from_the_file_and_is_checked() {
    let home = Home::new();
    let p = home.join("a.redb");
    seed_redb(&p, "one/store", 1);
    let s = ok(&home.run(&["stats", &redb(&p)]));
    assert!(s.contains("one/store"), "{s}");
    let e = one_error(
        &home.run(&["stats", "--store-id", "other/store", &redb(&p)]),
        2,
    );
    assert!(
        e.contains("--store-id") && e.contains("one/store") && e.contains("other/store"),
        "{e}"
    );
    let url = format!("quic://127.0.0.1:9/acme/db?peer={}", "ab".repeat(32));
    let e = one_error(&home.run(&["stats", "--store-id", "other/store", &url]), 2);
    assert!(e.contains("--store-id") && e.contains("acme/db"), "{e}");
}

// ---- 8. output -------------------------------------------------------------

#[test]
fn p8_output_is_plain_words_named_columns_and_no_surprises() {
    let home = Home::new();
    let a = home.join("a.redb");
    seed_redb(&a, "x/y", 1200);
    let s = ok(&home.run(&["stats", &redb(&a)]));
    assert!(
        !s.contains("Capabilities {") && !s.contains("Connected"),
        "{s}"
    );
    assert!(s.contains("changes      1,200"), "{s}");
    let o = home.run(&["log", &redb(&a)]);
    let log = ok(&o);
    let header: Vec<&str> = log.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "SEQ", "ID", "KIND", "DOC", "AUTHOR", "DEPS", "SIZE", "SIGNED", "CREATED"
        ]
    );
    assert_eq!(log.lines().count(), 1001, "default limit 1000");
    assert!(
        stderr(&o).contains("200 more") && stderr(&o).contains("--since 1000"),
        "{}",
        stderr(&o)
    );
    let rev = ok(&home.run(&["log", &redb(&a), "--reverse", "--limit", "2", "--full"]));
    let rows: Vec<&str> = rev.lines().skip(1).collect();
    assert!(
        rows[0].trim_start().starts_with("1200 ") && rows[1].trim_start().starts_with("1199 "),
        "{rev}"
    );
    assert_eq!(
        rows[0].split_whitespace().nth(1).unwrap().len(),
        64,
        "full ids"
    );
    let since = ok(&home.run(&["log", &redb(&a), "--since", "1198", "--json"]));
    let seqs: Vec<u64> = since
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [1199, 1200]);
    // QR codes only on terminals.
    home.id_new(false);
    assert_eq!(ok(&home.run(&["id", "show"])).lines().count(), 1);
    // No ANSI on a pipe, even with -v logs; NO_COLOR is honoured anyway.
    let o = home.run(&["-vv", "stats", &redb(&a)]);
    assert!(!stderr(&o).contains('\x1b'), "{:?}", stderr(&o));
    // An invalid RUST_LOG is an error, --batch 0 too.
    let o = home
        .cmd(&["stats", &redb(&a)])
        .env("RUST_LOG", "cairn=loud")
        .output()
        .unwrap();
    let e = one_error(&o, 2);
    assert!(e.contains("RUST_LOG"), "{e}");
    let o = home.run(&[
        "sync",
        "--from",
        &redb(&a),
        "--to",
        "memory:",
        "--batch",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A passing conformance run prints no warnings.
    let o = home.run(&["conformance", "memory:", "--filter", "sync::"]);
    ok(&o);
    assert!(!stderr(&o).contains("WARN"), "{}", stderr(&o));
}

// ---- 9. serve --------------------------------------------------------------

#[test]
fn p9_serve_stops_cleanly_and_refuses_bad_stores() {
    let home = Home::new();
    let me = home.id_new(false);
    let served = home.join("s.redb");
    // host names for --listen
    let mut srv = home.spawn(&[
        "serve",
        "--listen",
        "localhost:0",
        "--store",
        &format!("acme/db={}", redb(&served)),
        "--create",
        "--allow",
        &me,
    ]);
    srv.err_line(T, |l| l.starts_with("listening on "));
    let url = srv.out_line(T, |l| l.starts_with("quic://"));
    ok(&home.run_stdin(&["put", &url, "--doc", "d"], b"x"));
    srv.term();
    assert!(srv.wait(T).success(), "exit 0 on SIGTERM");
    let rest = srv.rest_of_stderr();
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
    // A clean shutdown leaves a file that opens read-only (no repair).
    let s = ok(&home.run(&["stats", &redb(&served)]));
    assert!(s.contains("changes      1"), "{s}");
    let e = one_error(
        &home.run(&["serve", "--store", "a b=memory:", "--allow", &me]),
        2,
    );
    assert!(e.contains("invalid store id"), "{e}");
    let e = one_error(
        &home.run(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "x/y=memory:",
            "--store",
            "x/y=memory:",
            "--allow",
            &me,
        ]),
        2,
    );
    assert!(e.contains("given twice"), "{e}");
    let e = one_error(
        &home.run(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &redb(&served),
            "--store",
            &format!("other/id={}", redb(&served)),
        ]),
        2,
    );
    assert!(e.contains("twice"), "{e}");
}

#[test]
fn p9_serve_from_a_config_file() {
    let home = Home::new();
    let me = home.id_new(false);
    let reader = ok(&home.run(&["id", "new", "--key", "reader.key"]))
        .lines()
        .next()
        .unwrap()
        .to_owned();
    std::fs::write(
        home.join("cairn.toml"),
        format!(
            r#"
listen = "127.0.0.1:0"
key = "host.key"
allow = ["{me}"]

[[store]]
id = "acme/contacts"
url = "redb:contacts.redb"
create = true
allow_read = ["{reader}"]

[limits]
max_connections = 64
shutdown_grace_secs = 2
"#
        ),
    )
    .unwrap();
    let mut srv = home.spawn(&["serve", "--config", "cairn.toml"]);
    srv.err_line(T, |l| l.starts_with("listening on "));
    let url = srv.out_line(T, |l| l.starts_with("quic://"));
    assert!(home.join("host.key").exists() && home.join("contacts.redb").exists());
    ok(&home.run_stdin(&["put", &url, "--doc", "d"], b"x"));
    let s = ok(&home.run(&["stats", "--key", "reader.key", &url]));
    assert!(s.contains("changes      1"), "{s}");
    let e = one_error(
        &home.run_stdin(&["put", "--key", "reader.key", &url, "--doc", "d"], b"y"),
        1,
    );
    assert!(e.contains("unauthorized") || e.contains("may not"), "{e}");
    srv.term();
    assert!(srv.wait(T).success());
    std::fs::write(home.join("bad.toml"), "listen = 5\n").unwrap();
    let e = one_error(&home.run(&["serve", "--config", "bad.toml"]), 2);
    assert!(e.contains("bad.toml"), "{e}");
}

// ---- 10. conformance ---------------------------------------------------------

#[test]
fn p10_conformance_filter_and_cleanup() {
    let home = Home::new();
    let e = one_error(
        &home.run(&["conformance", "memory:", "--filter", "nothing-matches"]),
        2,
    );
    assert!(e.contains("no case matches"), "{e}");
    let out = ok(&home.run(&["conformance", "memory:", "--filter", "contract::"]));
    assert!(out.contains("22 passed, 0 failed"), "{out}");
    let dir = home.join("cases");
    let out = ok(&home.run(&["conformance", &redb(&dir), "--filter", "durability::"]));
    assert!(out.contains("3 passed, 0 failed"), "{out}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "redb:DIR left clean"
    );
}

#[test]
fn conformance_over_quic_against_an_ephemeral_server() {
    let home = Home::new();
    let (mut srv, url) = serve(&home, &["--ephemeral"]);
    let o = home.run(&["conformance", &url]);
    let out = ok(&o);
    assert!(out.contains(" 0 failed"), "{out}");
    assert!(
        !stderr(&o).contains("WARN") && !stderr(&o).contains("ERROR"),
        "a passing run is quiet: {}",
        stderr(&o)
    );
    let want = format!("{} passed", cairn_conformance::all_cases().len() - 3);
    assert!(
        out.contains(&want),
        "{want} (all but the 3 durability cases):\n{out}"
    );
    srv.term();
    assert!(srv.wait(T).success());
}

// ---- 11. help, README, Cargo.toml --------------------------------------------

#[test]
fn p11_help_describes_urls_with_examples_and_only_real_flags() {
    let home = Home::new();
    let top = ok(&home.run(&["--help"]));
    assert!(top.contains("append-only"), "{top}");
    assert!(top.contains("Exit codes"), "{top}");
    for cmd in [
        "put", "cat", "log", "stats", "status", "sync", "export", "import", "check", "watch",
    ] {
        let h = ok(&home.run(&[cmd, "--help"]));
        assert!(h.contains("Examples:"), "{cmd}: {h}");
        for form in [
            "memory:",
            "redb:PATH",
            "quic://HOST:PORT/STORE_ID?peer=PEER_ID",
            "webrtc://HOST:PORT/ROOM/STORE_ID",
            "webrtc:offer",
        ] {
            assert!(h.contains(form), "{cmd} --help lacks {form}");
        }
    }
    for cmd in ["serve", "signal", "conformance"] {
        assert!(
            ok(&home.run(&[cmd, "--help"])).contains("Examples:"),
            "{cmd}"
        );
    }
    for cmd in [
        &["demo", "--help"][..],
        &["id", "show", "--help"],
        &["signal", "--help"],
        &["conformance", "--help"],
        &["completions", "--help"],
    ] {
        let h = ok(&home.run(cmd));
        assert!(!h.contains("--store-id"), "{cmd:?} shows --store-id");
    }
    for cmd in [
        &["demo", "--help"][..],
        &["signal", "--help"],
        &["completions", "--help"],
        &["man", "--help"],
    ] {
        assert!(!ok(&home.run(cmd)).contains("--key"), "{cmd:?} shows --key");
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let mut in_rust = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_rust = line.starts_with("```rust");
            continue;
        }
        assert!(
            !(in_rust && (line.starts_with("# ") || line == "#")),
            "hidden rustdoc line shown: {line}"
        );
    }
    assert!(
        readme.contains("~/.config/cairn/identity") && readme.contains("--key"),
        "identity location"
    );
    let cargo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml")).unwrap();
    assert!(!cargo.contains("example.invalid"), "placeholder URL");
}

#[test]
fn completions_and_man_page() {
    let home = Home::new();
    let bash = ok(&home.run(&["completions", "bash"]));
    assert!(
        bash.contains("cairn") && bash.contains("conformance"),
        "{bash}"
    );
    let man = ok(&home.run(&["man"]));
    assert!(man.contains(".TH cairn"), "{man}");
    ok(&home.run(&["man", "--out", "man"]));
    assert!(home.join("man/cairn-sync.1").exists());
}

#[test]
fn id_new_then_show_and_never_overwrite() {
    let home = Home::new();
    let peer = home.id_new(false);
    assert_eq!(peer.len(), 64);
    assert_eq!(ok(&home.run(&["id", "show", "--plain"])).trim(), peer);
    let qr = ok(&home.run(&["id", "show", "--qr"]));
    assert!(qr.lines().count() > 10, "a QR code follows");
    let e = one_error(&home.run(&["id", "new"]), 1);
    assert!(e.contains("already exists"), "{e}");
    let server = home.id_new(true);
    assert_ne!(server, peer, "the server's host key is its own");
    assert!(home.join(".config/cairn/identity").exists());
    assert!(home.join(".config/cairn/server-identity").exists());
}

#[test]
fn demo_runs_and_converges() {
    let home = Home::new();
    let out = ok(&home.run(&["demo", "--notes", "5"]));
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
