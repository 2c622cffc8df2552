//! The commands against live servers: sync and --json over QUIC, watch,
//! WebRTC rooms through `cairn signal`, and pairing by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn sync_over_quic_with_json_and_a_policy() {
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
    let local = home.join("local.redb");
    seed_redb(&local, "acme/db", 40); // unsigned
    let o = ok(&home.run(&["sync", "--from", &redb(&local), "--to", &url, "--json"]));
    let v = json(&o);
    assert_eq!(v["forward"]["changes"], 40, "{v}");
    assert_eq!(v["rejected"], 0);
    // put over quic, then a policy that only trusts me: the 40 unsigned ones are rejected
    let p = json(&ok(
        &home.run_stdin(&["put", &url, "--doc", "mine", "--json"], b"signed")
    ));
    assert_eq!(p["new"], true);
    let o = home.run(&[
        "sync",
        "--from",
        &url,
        "--to",
        &redb(&home.join("mine.redb")),
        "--create",
        "--trust",
        &me,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(3), "partly done: {}", stderr(&o));
    let v = json(&stdout(&o));
    assert_eq!(v["forward"]["changes"], 1);
    assert_eq!(v["forward"]["rejected"].as_array().unwrap().len(), 40);
    let c = json(&ok(&home.run(&["check", &url, "--json"])));
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(c["changes"], 41);
    let s = json(&ok(&home.run(&["stats", &url, "--json"])));
    assert_eq!(s["changes"], 41);
    assert_eq!(s["signed"], 1);
    let l = ok(&home.run(&["log", &url, "--json", "--reverse", "--limit", "1"]));
    assert_eq!(json(&l)["id"], p["id"]);
    let cat = ok(&home.run(&["cat", &url, p["id"].as_str().unwrap()]));
    assert_eq!(cat, "signed");
    srv.term();
    assert!(srv.wait(T).success());
}

#[test]
fn watch_follows_a_quic_store() {
    let home = Home::new();
    let me = home.id_new(false);
    let served = home.join("served.redb");
    seed_redb(&served, "acme/db", 2);
    let (mut srv, url) = serve(&home, &["--store", &redb(&served), "--allow", &me]);
    let mut w = home.spawn(&["watch", &url, "--since", "0", "--count", "3", "--json"]);
    let first = json(&w.out_line(T, |_| true));
    assert_eq!(first["seq"], 1);
    assert_eq!(json(&w.out_line(T, |_| true))["seq"], 2);
    w.err_line(T, |l| l.starts_with("watching "));
    let id = ok(&home.run_stdin(&["put", &url, "--doc", "live"], b"new"))
        .trim()
        .to_owned();
    let live = json(&w.out_line(T, |_| true));
    assert_eq!(live["id"], id.as_str());
    assert_eq!(live["seq"], 3);
    assert!(w.wait(T).success(), "--count 3 ends it");
    // Watch stops cleanly on SIGTERM too.
    let mut w = home.spawn(&["watch", &url]);
    w.err_line(T, |l| l.starts_with("watching "));
    w.term();
    assert!(w.wait(T).success());
    // A local file cannot be watched usefully: said so.
    let e = one_error(&home.run(&["watch", &redb(&home.join("x.redb"))]), 2);
    assert!(e.contains("watch the server"), "{e}");
    srv.term();
    assert!(srv.wait(T).success());
}

#[test]
fn webrtc_room_through_cairn_signal() {
    let home = Home::new();
    let me = home.id_new(false);
    let mut sig = home.spawn(&["signal", "--listen", "127.0.0.1:0"]);
    sig.err_line(T, |l| l.starts_with("listening on ws://"));
    let ws = sig.out_line(T, |l| l.starts_with("ws://"));
    let host = ws.trim_start_matches("ws://").to_owned();
    let served = home.join("a.redb");
    seed_redb(&served, "acme/notes", 5);
    let mut srv = home.spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        &format!("{}@webrtc://{host}/ABC-DEF?bind=127.0.0.1", redb(&served)),
        "--allow",
        &me,
    ]);
    srv.err_line(T, |l| l.contains("in room ABC-DEF"));
    let room = format!("webrtc://{host}/ABC-DEF/acme/notes?bind=127.0.0.1");
    let b = redb(&home.join("b.redb"));
    let o = ok(&home.run(&[
        "sync",
        "--from",
        &room,
        "--to",
        &b,
        "--create",
        "--timeout",
        "30",
    ]));
    assert!(o.contains("copied 5 change(s)"), "{o}");
    let id = ok(&home.run_stdin(
        &["put", &room, "--doc", "from-webrtc", "--timeout", "30"],
        b"hi",
    ))
    .trim()
    .to_owned();
    // The serving peer has it in its store.
    let q = srv.out_line(T, |l| l.starts_with("quic://"));
    assert_eq!(ok(&home.run(&["cat", &q, &id])), "hi");
    srv.term();
    assert!(srv.wait(T).success());
    sig.term();
    assert!(sig.wait(T).success());
    // Nobody in the room: said so after --timeout.
    let mut sig = home.spawn(&["signal", "--listen", "127.0.0.1:0"]);
    let ws = sig.out_line(T, |l| l.starts_with("ws://"));
    let empty = format!(
        "webrtc://{}/XYZ-XYZ/acme/notes?bind=127.0.0.1",
        ws.trim_start_matches("ws://")
    );
    let e = one_error(&home.run(&["stats", &empty, "--timeout", "1"]), 1);
    assert!(e.contains("0 of 1 peer(s) paired"), "{e}");
}

/// One pairing by hand: alice puts a change to bob through
/// `webrtc:offer` / `webrtc:answer`; returns whether bob printed it.
fn pair_once(home: &Home) -> Result<(), String> {
    let mut bob = home.spawn(&[
        "watch",
        "webrtc:answer?bind=127.0.0.1",
        "--store-id",
        "acme/notes",
        "--key",
        "bob.key",
        "--since",
        "0",
        "--json",
        "--timeout",
        "30",
    ]);
    let mut alice = home.spawn(&[
        "put",
        "webrtc:offer?bind=127.0.0.1",
        "--store-id",
        "acme/notes",
        "--doc",
        "d",
        "--timeout",
        "30",
        "payload.txt",
    ]);
    let offer = alice.err_line(T, |l| l.starts_with("offer: "));
    bob.send_line(offer.trim_start_matches("offer: "));
    let answer = bob.err_line(T, |l| l.starts_with("answer: "));
    alice.send_line(answer.trim_start_matches("answer: "));
    let id = alice.out_line(T, |l| l.len() == 64);
    // alice exits once bob acknowledged the change (bob keeps serving: a
    // peer that quits the moment it sees a change can cut its own ack off).
    assert!(alice.wait(T).success());
    let got = bob
        .next_line_or_exit(T)
        .ok_or_else(|| format!("bob: {:?}", bob.rest_of_stderr()))?;
    assert_eq!(json(&got)["id"], id.as_str());
    bob.term();
    assert!(bob.wait(T).success());
    Ok(())
}

#[test]
fn webrtc_pairing_by_hand() {
    let home = Home::new();
    home.id_new(false);
    home.run(&["id", "new", "--key", "bob.key"]);
    std::fs::write(home.join("payload.txt"), b"by hand").unwrap();
    // Known race (cairn-webrtc has no goodbye): when alice leaves right
    // after delivering, bob's own catch-up pull from her can be cut off;
    // bob then holds the change but reports that the pairing failed. Two
    // more tries, bounded, on a loaded machine.
    let mut errors = Vec::new();
    for _ in 0..3 {
        match pair_once(&home) {
            Ok(()) => return,
            Err(e) => errors.push(e),
        }
    }
    panic!("pairing by hand failed 3 times: {errors:#?}");
}

#[test]
fn a_refused_sync_reports_nothing_as_delivered() {
    let home = Home::new();
    let me = home.id_new(false);
    let served = home.join("served.redb");
    seed_redb(&served, "acme/db", 1);
    let (mut srv, url) = serve(&home, &["--store", &redb(&served), "--allow-read", &me]);
    let local = home.join("local.redb");
    seed_redb(&local, "acme/db", 10);
    let start = std::time::Instant::now();
    let o = home.run(&["sync", "--from", &redb(&local), "--to", &url]);
    let e = one_error(&o, 1);
    assert!(
        e.contains("0 change(s) were delivered") && e.contains("unauthorized"),
        "{e}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert!(
        !stdout(&o).contains("copied"),
        "nothing reported as copied: {}",
        stdout(&o)
    );
    let s = json(&ok(&home.run(&["stats", &url, "--json"])));
    assert_eq!(s["changes"], 1, "the server holds only what it had");
    srv.term();
    assert!(srv.wait(T).success());
}
