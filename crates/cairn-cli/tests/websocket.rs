//! `cairn serve --ws`: one server on QUIC and WebSocket at once, with the
//! same stores and ACLs; ws:// and wss:// store URLs in every command, and
//! their failures named.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// `cairn serve ARGS --listen 127.0.0.1:0 --ws 127.0.0.1:0 …`: its quic://
/// and ws(s):// URLs, in the order printed.
fn serve_both(home: &Home, args: &[&str], scheme: &str) -> (Bg, String, String) {
    let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--ws", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut bg = home.spawn(&all);
    let quic = bg.out_line(T, |l| l.starts_with("quic://"));
    let ws = bg.out_line(T, |l| l.starts_with(&format!("{scheme}://")));
    (bg, quic, ws)
}

/// A key file the server does not know.
fn stranger_key(home: &Home) -> String {
    let p = home.join("stranger.key");
    std::fs::write(&p, "42".repeat(32)).unwrap();
    p.display().to_string()
}

#[test]
fn one_server_serves_the_same_store_over_quic_and_websocket() {
    let home = Home::new();
    let me = home.id_new(false);
    let served = home.join("served.redb");
    let (mut srv, quic, ws) = serve_both(
        &home,
        &[
            "--store",
            &format!("acme/db={}", redb(&served)),
            "--create",
            "--allow",
            &me,
        ],
        "ws",
    );
    assert!(ws.contains("/acme/db?peer="), "{ws}");
    // Written over WebSocket, read over QUIC: one store behind both.
    let p = json(&ok(
        &home.run_stdin(&["put", &ws, "--doc", "note", "--json"], b"over tcp")
    ));
    assert_eq!(p["new"], true);
    let id = p["id"].as_str().unwrap();
    assert_eq!(ok(&home.run(&["cat", &quic, id])), "over tcp");
    assert_eq!(ok(&home.run(&["cat", &ws, id])), "over tcp");
    // Sync both ways across the transports.
    let local = home.join("local.redb");
    seed_redb(&local, "acme/db", 25);
    let o = json(&ok(&home.run(&[
        "sync",
        "--from",
        &redb(&local),
        "--to",
        &ws,
        "--json",
    ])));
    assert_eq!(o["forward"]["changes"], 25, "{o}");
    let s = json(&ok(&home.run(&["stats", &quic, "--json"])));
    assert_eq!(s["changes"], 26);
    let st = json(&ok(&home.run(&["status", &ws, "--json"])));
    assert!(
        st["location"]
            .as_str()
            .unwrap()
            .starts_with("remote: ws://127.0.0.1:"),
        "{st}"
    );
    assert_eq!(st["head"]["seq"], 26, "{st}");
    let c = json(&ok(&home.run(&["check", &ws, "--json"])));
    assert_eq!(c["ok"], true, "{c}");
    // watch over WebSocket sees an append made over QUIC.
    let mut w = home.spawn(&["watch", &ws, "--count", "1", "--json"]);
    w.err_line(T, |l| l.starts_with("watching "));
    let p2 = json(&ok(
        &home.run_stdin(&["put", &quic, "--doc", "live", "--json"], b"live")
    ));
    let line = w.out_line(T, |l| l.starts_with('{'));
    assert_eq!(json(&line)["id"], p2["id"], "{line}");
    assert!(w.wait(T).success());
    // The same ACL on both: a stranger is refused over WebSocket, naming
    // its peer id, and nothing is stored.
    let key = stranger_key(&home);
    let o = home.run_stdin(&["put", &ws, "--doc", "x", "--key", &key], b"no");
    let e = one_error(&o, 1);
    assert!(e.contains("refused peer"), "{e}");
    let s = json(&ok(&home.run(&["stats", &quic, "--json"])));
    assert_eq!(s["changes"], 27);
    srv.term();
    assert!(srv.wait(T).success());
}

#[test]
fn websocket_failures_are_named_and_quick() {
    let home = Home::new();
    let me = home.id_new(false);
    let (mut srv, _quic, ws) =
        serve_both(&home, &["--store", "acme/db=memory:", "--allow", &me], "ws");
    // The URL pins another key: said so, before anything is signed.
    let other = "ab".repeat(32);
    let (base, _) = ws.split_once("?peer=").unwrap();
    let wrong = format!("{base}?peer={other}");
    let o = home.run(&["status", &wrong]);
    let e = one_error(&o, 1);
    assert!(e.contains("is not peer"), "{e}");
    // A store the server does not serve.
    let (host, _) = base.trim_start_matches("ws://").split_once('/').unwrap();
    let peer = ws.split_once("?peer=").unwrap().1;
    let o = home.run(&["status", &format!("ws://{host}/acme/other?peer={peer}")]);
    let e = one_error(&o, 1);
    assert!(e.contains("does not serve"), "{e}");
    srv.term();
    assert!(srv.wait(T).success());
    // Nothing listening any more: reported at once, not after --timeout.
    let start = Instant::now();
    let o = home.run(&["status", &ws, "--timeout", "20"]);
    let e = one_error(&o, 1);
    assert!(e.contains("nothing is listening on TCP"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // Bad URLs are usage errors naming the URL.
    for bad in [
        "ws://127.0.0.1:1/acme/db".to_owned(),
        format!("ws://127.0.0.1:1/acme/db?peer={other}&ca=x.pem"),
    ] {
        let e = one_error(&home.run(&["status", &bad]), 2);
        assert!(e.contains(&bad), "{e}");
    }
}

#[test]
fn wss_with_the_servers_certificate_trusted_by_ca_and_refused_without() {
    let home = Home::new();
    let me = home.id_new(false);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_pem, key_pem) = (home.join("cert.pem"), home.join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let (cert_arg, key_arg) = (
        cert_pem.display().to_string(),
        key_pem.display().to_string(),
    );
    let (mut srv, _quic, wss) = serve_both(
        &home,
        &[
            "--store",
            "acme/db=memory:",
            "--allow",
            &me,
            "--ws-cert",
            &cert_arg,
            "--ws-key",
            &key_arg,
        ],
        "wss",
    );
    // The certificate names localhost.
    let wss = wss.replace("127.0.0.1", "localhost");
    let trusted = format!("{wss}&ca={cert_arg}");
    let p = json(&ok(
        &home.run_stdin(&["put", &trusted, "--doc", "d", "--json"], b"tls")
    ));
    assert_eq!(
        ok(&home.run(&["cat", &trusted, p["id"].as_str().unwrap()])),
        "tls"
    );
    // Without &ca= the Mozilla roots do not know it.
    let e = one_error(&home.run(&["status", &wss]), 1);
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    srv.term();
    assert!(srv.wait(T).success());
    // A key that does not match the certificate is refused at start.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&key_pem, other.signing_key.serialize_pem()).unwrap();
    let o = home.run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--ws",
        "127.0.0.1:0",
        "--store",
        "acme/db=memory:",
        "--allow",
        &me,
        "--ws-cert",
        &cert_arg,
        "--ws-key",
        &key_arg,
    ]);
    let e = one_error(&o, 2);
    assert!(e.contains("--ws-cert"), "{e}");
}

#[test]
fn a_config_file_can_serve_websocket_too() {
    let home = Home::new();
    let me = home.id_new(false);
    let cfg = home.join("cairn.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nws_listen = \"127.0.0.1:0\"\nallow = [\"{me}\"]\n\n[[store]]\nid = \"acme/db\"\nurl = \"memory:\"\n"
        ),
    )
    .unwrap();
    let mut bg = home.spawn(&["serve", "--config", &cfg.display().to_string()]);
    let ws = bg.out_line(T, |l| l.starts_with("ws://"));
    let st = json(&ok(&home.run(&["status", &ws, "--json"])));
    assert_eq!(st["store"], "acme/db", "{st}");
    bg.term();
    assert!(bg.wait(T).success());
    // Half a TLS pair is refused before anything is served.
    std::fs::write(
        &cfg,
        "ws_listen = \"127.0.0.1:0\"\nws_cert = \"c.pem\"\n\n[[store]]\nid = \"acme/db\"\nurl = \"memory:\"\n",
    )
    .unwrap();
    let e = one_error(
        &home.run(&["serve", "--config", &cfg.display().to_string()]),
        2,
    );
    assert!(e.contains("ws_cert and ws_key go together"), "{e}");
}

#[test]
fn conformance_over_websocket_against_an_ephemeral_server() {
    let home = Home::new();
    let (mut srv, _quic, ws) = serve_both(&home, &["--ephemeral"], "ws");
    let o = home.run(&["conformance", &ws]);
    let out = ok(&o);
    assert!(out.contains("conformance suite for ws://"), "{out}");
    assert!(out.contains(" 0 failed"), "{out}");
    let want = format!("{} passed", cairn_conformance::all_cases().len() - 3);
    assert!(
        out.contains(&want),
        "{want} (all but the 3 durability cases):\n{out}"
    );
    srv.term();
    assert!(srv.wait(T).success());
}
