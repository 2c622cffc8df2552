#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The signaling server against hostile clients, on loopback only: raw
//! tokio-tungstenite (and raw TCP) clients against the real
//! [`SignalingServer`]. The join protocol is spelled out here from the
//! README (challenge, Ed25519 signature with its context string), as a
//! client in another language would write it.
//!
//! Every wait is bounded; deadlines are kept short through the options.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::{Error, Keypair};
use cairn_conformance::util::sid;
use cairn_memory::MemoryStore;
use cairn_webrtc::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// These tests measure this process's RSS and descriptors, and `cargo test`
/// runs a file's tests as threads of one process: they take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longest any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(10);

/// The join signature's context (README, "Signaling").
const JOIN_CONTEXT: &[u8] = b"cairn-webrtc/1 signal join\0";

async fn server(opts: SignalingOptions) -> SignalingServer {
    SignalingServer::bind("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap()
}

/// The next JSON text message, `None` when the server closed (or sent a
/// close frame). Fails the test after `STEP`.
async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        let m = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("no message from the server");
        match m {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Read until the server ends the connection; returns the JSON messages
/// seen and the close code, if the server sent one.
async fn until_closed(ws: &mut Ws, within: Duration) -> (Vec<Value>, Option<CloseCode>) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the server did not close the connection in time");
        match m {
            Some(Ok(Message::Text(t))) => seen.push(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(c))) => return (seen, c.map(|c| c.code)),
            None | Some(Err(_)) => return (seen, None),
            Some(Ok(_)) => {}
        }
    }
}

fn join_message(key: &Keypair, room: &RoomCode, nonce_hex: &str) -> Value {
    let mut m = JOIN_CONTEXT.to_vec();
    m.extend_from_slice(&hex::decode(nonce_hex).unwrap());
    m.extend_from_slice(room.as_str().as_bytes());
    json!({
        "type": "join",
        "room": room.as_str(),
        "peer": key.author().to_hex(),
        "signature": hex::encode(key.sign(&m).to_bytes()),
    })
}

/// Read the server's challenge.
async fn challenge(ws: &mut Ws) -> String {
    let c = next_json(ws).await.expect("closed before the challenge");
    assert_eq!(c["type"], "challenge", "{c}");
    c["nonce"].as_str().unwrap().to_owned()
}

/// Join `room` as `key` the way the README says; returns the socket and
/// the welcome.
async fn raw_join(url: &str, room: &RoomCode, key: &Keypair) -> (Ws, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let nonce = challenge(&mut ws).await;
    let join = join_message(key, room, &nonce);
    ws.send(Message::text(join.to_string())).await.unwrap();
    let welcome = next_json(&mut ws)
        .await
        .expect("closed instead of a welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kb / 1024.0
}

/// A TCP connection to `server` from `source` (another loopback address).
async fn tcp_from(source: [u8; 4], server: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind((std::net::Ipv4Addr::from(source), 0).into())?;
    s.connect(server).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_join_are_cut_off_within_the_deadline() {
    let _serial = SERIAL.lock().await;
    let deadline = Duration::from_millis(500);
    let srv = server(SignalingOptions {
        join_timeout: deadline,
        ..SignalingOptions::default()
    })
    .await;
    let t0 = Instant::now();
    // 1. TCP only: never starts the WebSocket upgrade.
    let mut silent = TcpStream::connect(srv.local_addr()).await.unwrap();
    // 2. Half an upgrade request, then silence.
    let mut half = TcpStream::connect(srv.local_addr()).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    // 3. Upgraded, reads the challenge, never joins.
    let (mut upgraded, _) = tokio_tungstenite::connect_async(srv.url()).await.unwrap();
    let slack = Duration::from_secs(2);
    let mut buf = [0u8; 1024];
    for (name, s) in [("silent TCP", &mut silent), ("half upgrade", &mut half)] {
        // Reads until EOF or reset; bounded by the deadline plus slack.
        let cut = tokio::time::timeout(deadline + slack, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(cut.is_ok(), "{name} connection was not cut off");
    }
    let (seen, _) = until_closed(&mut upgraded, deadline + slack).await;
    assert!(
        seen.iter().all(|m| m["type"] != "welcome"),
        "never joined, yet welcomed: {seen:?}"
    );
    assert!(
        t0.elapsed() < deadline + slack,
        "took {:?} to cut off three silent connections",
        t0.elapsed()
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_members_are_dropped_and_live_ones_kept() {
    let _serial = SERIAL.lock().await;
    let idle = Duration::from_millis(600);
    let srv = server(SignalingOptions {
        idle_timeout: idle,
        ..SignalingOptions::default()
    })
    .await;
    let url = srv.url();
    let room = RoomCode::random().unwrap();
    let (ka, kb, kc) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    // B reads its socket (WsSignaling answers the server's pings); A joins
    // and then never reads again, so it never answers a ping.
    let mut b = WsSignaling::connect(&url, &room, None, &kb).await.unwrap();
    let (silent, _) = raw_join(&url, &room, &ka).await;
    let t0 = Instant::now();
    let gone = loop {
        match tokio::time::timeout(STEP, b.recv()).await.unwrap() {
            Some(SignalEvent::Left(p)) => break p,
            Some(_) => {}
            None => panic!("B's signaling ended"),
        }
    };
    assert_eq!(gone, ka.author());
    let took = t0.elapsed();
    assert!(
        took < idle + Duration::from_secs(2),
        "dropped after {took:?}"
    );
    // Let several idle periods pass: B, which answers pings, stays.
    tokio::time::sleep(idle * 3).await;
    let (_c, welcome) = raw_join(&url, &room, &kc).await;
    assert_eq!(welcome["peers"], json!([kb.author().to_hex()]));
    drop(silent);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_is_capped_and_members_still_pair() {
    let _serial = SERIAL.lock().await;
    let cap = 8;
    let srv = server(SignalingOptions {
        max_connections_per_ip: cap,
        join_timeout: Duration::from_secs(30),
        ..SignalingOptions::default()
    })
    .await;
    let addr = srv.local_addr();
    let url = srv.url();
    // The attacker, from 127.0.0.2: 200 connections at once, each upgraded
    // and held without joining.
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let url = url.clone();
        attempts.spawn(async move {
            let tcp = tcp_from([127, 0, 0, 2], addr).await.ok()?;
            let up = tokio::time::timeout(STEP, tokio_tungstenite::client_async(url, tcp)).await;
            match up {
                Ok(Ok((ws, _))) => Some(ws),
                _ => None,
            }
        });
    }
    let mut held = Vec::new();
    while let Some(r) = attempts.join_next().await {
        if let Some(ws) = r.unwrap() {
            held.push(ws);
        }
    }
    assert!(
        held.len() <= cap,
        "{} connections from one address were upgraded; the cap is {cap}",
        held.len()
    );
    // And it keeps hammering while two members join and pair.
    let stop = tokio_util::sync::CancellationToken::new();
    let hammer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tries = 0u32;
            while !stop.is_cancelled() && tries < 5_000 {
                tries += 1;
                if let Ok(mut s) = tcp_from([127, 0, 0, 2], addr).await {
                    let _ = s.write_all(b"GET / HTTP/1.1\r\n").await;
                }
                tokio::task::yield_now().await;
            }
            tries
        })
    };
    let t0 = Instant::now();
    let room = RoomCode::random().unwrap();
    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let opts = WebRtcStoreOptions::loopback();
    let a = WebRtcStore::new(
        Arc::new(MemoryStore::new(sid())),
        &ka,
        Arc::new(Acl::open()),
        opts.clone(),
    );
    let b = WebRtcStore::new(
        Arc::new(MemoryStore::new(sid())),
        &kb,
        Arc::new(Acl::open()),
        opts,
    );
    a.join(WsSignaling::connect(&url, &room, None, &ka).await.unwrap());
    b.join(WsSignaling::connect(&url, &room, None, &kb).await.unwrap());
    let paired = a.wait_connected(Duration::from_secs(2)).await;
    let took = t0.elapsed();
    stop.cancel();
    let tries = hammer.await.unwrap();
    assert!(
        paired.is_ok(),
        "members did not pair within 2 s under a flood ({tries} attack connections)"
    );
    eprintln!("paired in {took:?} during {tries} attack connections");
    a.close().await;
    b.close().await;
    drop(held);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_is_dropped_and_memory_stays_bounded() {
    let _serial = SERIAL.lock().await;
    // Over this, the server buffered the spam for the member that does not
    // read (120 MiB are sent at it).
    const MAX_GROWTH_MIB: f64 = 32.0;
    let srv = server(SignalingOptions {
        messages_per_second: 1_000_000,
        ..SignalingOptions::default()
    })
    .await;
    let url = srv.url();
    let room = RoomCode::random().unwrap();
    let kv = Keypair::generate();
    // The victim joins and then never reads its socket again.
    let (victim, _) = raw_join(&url, &room, &kv).await;
    let before = rss_mib();
    let sdp = "x".repeat(60 * 1024);
    let mut spammers = Vec::new();
    for _ in 0..2 {
        let k = Keypair::generate();
        let (ws, _) = raw_join(&url, &room, &k).await;
        let (mut tx, mut rx) = ws.split();
        let victim_id = kv.author().to_hex();
        // Reads everything the server says; reports whether it announced
        // the victim's departure.
        let reader = tokio::spawn(async move {
            let mut left = false;
            while let Ok(Some(Ok(m))) = tokio::time::timeout(STEP, rx.next()).await {
                if let Message::Text(t) = m {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "left" && v["peer"] == victim_id.as_str() {
                        left = true;
                        break;
                    }
                }
            }
            left
        });
        let msg = json!({
            "type": "signal", "to": kv.author().to_hex(),
            "data": {"kind": "offer", "sdp": sdp},
        })
        .to_string();
        let writer = tokio::spawn(async move {
            let mut peak = 0f64;
            for i in 0..1_000 {
                if tx.send(Message::text(msg.clone())).await.is_err() {
                    break;
                }
                if i % 50 == 0 {
                    peak = peak.max(rss_mib());
                }
            }
            peak
        });
        spammers.push((writer, reader));
    }
    let mut peak = rss_mib();
    let mut dropped = true;
    for (writer, reader) in spammers {
        peak = peak.max(writer.await.unwrap());
        dropped &= reader.await.unwrap();
    }
    peak = peak.max(rss_mib());
    let growth = peak - before;
    eprintln!("RSS {before:.1} MiB before, peak {peak:.1} MiB (+{growth:.1} MiB)");
    assert!(
        dropped,
        "the member that never reads was not dropped (no `left` for it)"
    );
    assert!(
        growth < MAX_GROWTH_MIB,
        "RSS grew {growth:.1} MiB (limit {MAX_GROWTH_MIB} MiB)"
    );
    drop(victim);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_with_another_peers_id_and_a_bad_signature_is_refused() {
    let _serial = SERIAL.lock().await;
    let srv = server(SignalingOptions::default()).await;
    let url = srv.url();
    let room = RoomCode::random().unwrap();
    let (ka, kx) = (Keypair::generate(), Keypair::generate());
    let (mut a, _) = raw_join(&url, &room, &ka).await;
    // X claims A's id, signing with its own key.
    let (mut x, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let nonce = challenge(&mut x).await;
    let mut forged = join_message(&kx, &room, &nonce);
    forged["peer"] = json!(ka.author().to_hex());
    x.send(Message::text(forged.to_string())).await.unwrap();
    let (seen, _) = until_closed(&mut x, STEP).await;
    assert!(
        seen.iter()
            .any(|m| m["type"] == "error" && m["code"] == "bad_signature"),
        "{seen:?}"
    );
    assert!(seen.iter().all(|m| m["type"] != "welcome"), "{seen:?}");
    // A replay of a genuine join made for another challenge: refused too.
    let (mut y, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let _fresh = challenge(&mut y).await;
    let replay = join_message(&ka, &room, &"00".repeat(32));
    y.send(Message::text(replay.to_string())).await.unwrap();
    let (seen, _) = until_closed(&mut y, STEP).await;
    assert!(
        seen.iter()
            .any(|m| m["type"] == "error" && m["code"] == "bad_signature"),
        "{seen:?}"
    );
    // A is still the member with that id: a newcomer sees it, and A hears
    // of the newcomer on its untouched connection.
    let kb = Keypair::generate();
    let (_b, welcome) = raw_join(&url, &room, &kb).await;
    assert_eq!(welcome["peers"], json!([ka.author().to_hex()]));
    let note = next_json(&mut a).await.unwrap();
    assert_eq!(
        note,
        json!({"type": "joined", "peer": kb.author().to_hex()})
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused() {
    let _serial = SERIAL.lock().await;
    let max = 4096;
    let srv = server(SignalingOptions {
        max_message: max,
        ..SignalingOptions::default()
    })
    .await;
    let url = srv.url();
    let room = RoomCode::random().unwrap();
    let too_big = json!({
        "type": "signal", "to": Keypair::generate().author().to_hex(),
        "data": {"kind": "offer", "sdp": "x".repeat(max)},
    })
    .to_string();
    // Before joining...
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let _ = challenge(&mut ws).await;
    ws.send(Message::text(too_big.clone())).await.unwrap();
    let (seen, code) = until_closed(&mut ws, STEP).await;
    assert!(
        seen.iter()
            .any(|m| m["type"] == "error" && m["code"] == "too_large"),
        "{seen:?}"
    );
    assert_eq!(code, Some(CloseCode::Size));
    // ...and after.
    let (mut ws, _) = raw_join(&url, &room, &Keypair::generate()).await;
    ws.send(Message::text(too_big)).await.unwrap();
    let (seen, code) = until_closed(&mut ws, STEP).await;
    assert!(
        seen.iter()
            .any(|m| m["type"] == "error" && m["code"] == "too_large"),
        "{seen:?}"
    );
    assert_eq!(code, Some(CloseCode::Size));
    // The server is fine: a member still joins.
    let _ = raw_join(&url, &room, &Keypair::generate()).await;
    srv.shutdown().await;
}

/// Pair `a` with `b` by hand through their signaling connections: `a`
/// offers over `sa`, `b` answers over `sb`. Returns what `a`'s side of the
/// pairing says.
async fn pair_through(
    a: &WebRtcStore,
    sa: &mut WsSignaling,
    b: &WebRtcStore,
    sb: &mut WsSignaling,
) -> cairn::Result<PeerId> {
    let (offer, pending) = a.offer().await.unwrap();
    sa.send(
        b.peer_id(),
        SignalMessage::Offer {
            sdp: decode_sdp(&offer).unwrap(),
        },
    )
    .await
    .unwrap();
    let sdp = loop {
        match tokio::time::timeout(STEP, sb.recv()).await.unwrap() {
            Some(SignalEvent::Message {
                from,
                message: SignalMessage::Offer { sdp },
            }) if from == a.peer_id() => break sdp,
            Some(_) => {}
            None => panic!("signaling ended"),
        }
    };
    let answer = b.answer(&encode_sdp(&sdp)).await.unwrap();
    sb.send(
        a.peer_id(),
        SignalMessage::Answer {
            sdp: decode_sdp(&answer).unwrap(),
        },
    )
    .await
    .unwrap();
    let sdp = loop {
        match tokio::time::timeout(STEP, sa.recv()).await.unwrap() {
            Some(SignalEvent::Message {
                from,
                message: SignalMessage::Answer { sdp },
            }) if from == b.peer_id() => break sdp,
            Some(_) => {}
            None => panic!("signaling ended"),
        }
    };
    tokio::time::timeout(Duration::from_secs(60), pending.accept(&encode_sdp(&sdp)))
        .await
        .expect("the pairing neither finished nor failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_room_password_is_refused_between_peers_and_the_right_one_accepted() {
    let _serial = SERIAL.lock().await;
    let srv = server(SignalingOptions::default()).await;
    let url = srv.url();
    let room = RoomCode::random().unwrap();
    // Each store proves the room key of the password its user typed (the
    // manual offers below travel through the signaling server).
    let store = |k: &Keypair, password: Option<&str>| {
        let mut opts = WebRtcStoreOptions::loopback();
        opts.room_key = password.map(|p| RoomKey::derive(&room, p).unwrap());
        WebRtcStore::new(
            Arc::new(MemoryStore::new(sid())),
            k,
            Arc::new(Acl::open()),
            opts,
        )
    };
    let (ka, kb, kn, kc) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    let (a, b, n, c) = (
        store(&ka, Some("secret")),
        store(&kb, Some("guess")),
        store(&kn, None),
        store(&kc, Some("secret")),
    );
    let mut sa = WsSignaling::connect(&url, &room, Some("secret"), &ka)
        .await
        .unwrap();
    // The server cannot tell: a guesser gets into the room...
    let mut sb = WsSignaling::connect(&url, &room, Some("guess"), &kb)
        .await
        .unwrap();
    // ...but the peers refuse each other inside DTLS, with a typed error.
    let e = pair_through(&a, &mut sa, &b, &mut sb).await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("room password"), "{e}");
    assert!(a.peers().borrow().is_empty());
    assert!(b.peers().borrow().is_empty());
    // No password at all: refused the same way.
    let mut sn = WsSignaling::connect(&url, &room, None, &kn).await.unwrap();
    let e = pair_through(&a, &mut sa, &n, &mut sn).await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    // The right password pairs.
    let mut sc = WsSignaling::connect(&url, &room, Some("secret"), &kc)
        .await
        .unwrap();
    let proven = pair_through(&a, &mut sa, &c, &mut sc).await.unwrap();
    assert_eq!(proven, kc.author());
    n.close().await;
    a.close().await;
    b.close().await;
    c.close().await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_joins_are_refused_and_the_server_stays_up() {
    let _serial = SERIAL.lock().await;
    let srv = server(SignalingOptions::default()).await;
    let url = srv.url();
    let room = RoomCode::random().unwrap();
    let k = Keypair::generate();
    let good = |nonce: &str| join_message(&k, &room, nonce);
    type Mangle = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mangle, &str)> = vec![
        (
            "no signature",
            Box::new(|j| drop(j.as_object_mut().unwrap().remove("signature"))),
            "bad_request",
        ),
        (
            "signature not hex",
            Box::new(|j| j["signature"] = json!("zz")),
            "bad_signature",
        ),
        (
            "signature too short",
            Box::new(|j| j["signature"] = json!("00")),
            "bad_signature",
        ),
        (
            "signature of zeros",
            Box::new(|j| j["signature"] = json!("00".repeat(64))),
            "bad_signature",
        ),
        (
            "peer id not a key",
            Box::new(|j| j["peer"] = json!("ff".repeat(32))),
            "bad_signature",
        ),
        (
            "peer id not hex",
            Box::new(|j| j["peer"] = json!("peer")),
            "bad_request",
        ),
        (
            "bad room",
            Box::new(|j| j["room"] = json!("IIIIII")),
            "bad_request",
        ),
        (
            "another room",
            Box::new(|j| j["room"] = json!("ABCDEF")),
            "bad_signature",
        ),
        (
            "not a join",
            Box::new(|j| *j = json!({"type": "welcome", "peers": []})),
            "bad_request",
        ),
        ("not JSON", Box::new(|j| *j = json!("{{{")), "bad_request"),
    ];
    for (name, mangle, code) in cases {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let nonce = challenge(&mut ws).await;
        let mut j = good(&nonce);
        mangle(&mut j);
        let text = match j.as_str() {
            Some(raw) => raw.to_owned(),
            None => j.to_string(),
        };
        ws.send(Message::text(text)).await.unwrap();
        let (seen, _) = until_closed(&mut ws, STEP).await;
        assert!(
            seen.iter()
                .any(|m| m["type"] == "error" && m["code"] == code),
            "{name}: {seen:?}"
        );
        assert!(
            seen.iter().all(|m| m["type"] != "welcome"),
            "{name}: {seen:?}"
        );
    }
    // Binary frames and garbage after joining: told, not dropped.
    let (mut ws, _) = raw_join(&url, &room, &k).await;
    ws.send(Message::binary(vec![0u8; 100])).await.unwrap();
    ws.send(Message::text("garbage")).await.unwrap();
    let reply = next_json(&mut ws).await.unwrap();
    assert_eq!(reply["code"], "bad_request", "{reply}");
    // Still a member: a newcomer sees it.
    let (_b, welcome) = raw_join(&url, &room, &Keypair::generate()).await;
    assert_eq!(welcome["peers"], json!([k.author().to_hex()]));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_connection_cap_holds_across_addresses() {
    let _serial = SERIAL.lock().await;
    let srv = server(SignalingOptions {
        max_connections: 4,
        ..SignalingOptions::default()
    })
    .await;
    let addr = srv.local_addr();
    let url = srv.url();
    let mut held = Vec::new();
    for i in 0..4u8 {
        let tcp = tcp_from([127, 0, 0, 10 + i], addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .unwrap();
        held.push(ws);
    }
    let tcp = tcp_from([127, 0, 0, 20], addr).await.unwrap();
    let fifth = tokio::time::timeout(STEP, tokio_tungstenite::client_async(url.as_str(), tcp))
        .await
        .unwrap();
    assert!(fifth.is_err(), "a fifth connection was upgraded");
    // One leaves; a newcomer gets its place (once the server has seen the
    // close: a bounded retry).
    drop(held.pop());
    let room = RoomCode::random().unwrap();
    let t0 = Instant::now();
    let mut ws = loop {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => break ws,
            Err(e) => assert!(t0.elapsed() < STEP, "no place freed: {e}"),
        }
        tokio::task::yield_now().await;
    };
    let k = Keypair::generate();
    let nonce = challenge(&mut ws).await;
    ws.send(Message::text(join_message(&k, &room, &nonce).to_string()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await.unwrap()["type"], "welcome");
    drop(held);
    srv.shutdown().await;
}
