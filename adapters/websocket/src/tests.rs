//! Attacks on the server and the store, each with the bound it must hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn::{
    AppendOnlyStore, Change, ChangeBuilder, ChangeKind, DocId, DynAppendOnlyStore, Error, Keypair,
    StoreId,
};
use cairn_memory::MemoryStore;
use cairn_protocol::{
    Acl, ConnectionState, FrameDecoder, FrameEncoder, MIN_MAX_FRAME, Message, Permission, Request,
    Response, Stores, client_hello, encode,
};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::auth::{CLIENT_AUTH_LEN, client_auth, is_server_auth, read_challenge};
use crate::*;

const T: Duration = Duration::from_secs(10);

fn sid() -> StoreId {
    StoreId::new("attack/target").unwrap()
}

fn change(kp: &Keypair, n: usize, len: usize) -> Change {
    ChangeBuilder::new(ChangeKind::Create, DocId::new(format!("doc-{n}")).unwrap())
        .payload(vec![(n % 251) as u8; len])
        .sign(kp)
        .unwrap()
}

async fn server_with(
    store: Arc<DynAppendOnlyStore>,
    acl: Acl,
    opts: WsServerOptions,
) -> (WsServer, Keypair) {
    let friend = Keypair::generate();
    let acl = acl.allow(&sid(), friend.author(), Permission::ReadWrite);
    let server = WsServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &Keypair::generate(),
        Arc::new(Stores::new().with(store)),
        Arc::new(acl),
        opts,
    )
    .await
    .unwrap();
    (server, friend)
}

async fn server(opts: WsServerOptions) -> (WsServer, Keypair) {
    server_with(Arc::new(MemoryStore::new(sid())), Acl::new(), opts).await
}

fn store_for(server: &WsServer, key: &Keypair) -> WebSocketStore {
    WebSocketStore::new(
        Arc::new(MemoryStore::new(sid())),
        &server.url(),
        server.peer_id(),
        key,
        WebSocketStoreOptions {
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(200),
            ..WebSocketStoreOptions::default()
        },
    )
    .unwrap()
}

/// A legitimate peer connects, appends and has it confirmed.
async fn legit_is_served(server: &WsServer, key: &Keypair) {
    let store = store_for(server, key);
    store.wait_connected(T).await.unwrap();
    store.append(vec![change(key, rand_n(), 16)]).await.unwrap();
    store.flush(T).await.unwrap();
    store.close().await;
}

fn rand_n() -> usize {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    u32::from_le_bytes(b) as usize
}

/// A WebSocket connection that has done the upgrade and nothing else.
async fn upgraded(addr: SocketAddr) -> WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
        .await
        .unwrap();
    ws
}

async fn next_binary(ws: &mut WebSocketStream<TcpStream>) -> Option<Vec<u8>> {
    // Bounded by T.
    loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .expect("no answer in time")
        {
            Some(Ok(WsMessage::Binary(b))) => return Some(b.into()),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            _ => return None,
        }
    }
}

/// Authenticate as `key`; the server's answer (its auth message or a
/// refusal frame).
async fn raw_auth(
    ws: &mut WebSocketStream<TcpStream>,
    key: &Keypair,
    server: &WsServer,
) -> Vec<u8> {
    let sn = read_challenge(&next_binary(ws).await.unwrap(), &server.peer_id()).unwrap();
    let m = client_auth(key, &sn, &[5u8; 32], &server.peer_id());
    assert_eq!(m.len(), CLIENT_AUTH_LEN);
    ws.send(WsMessage::binary(m)).await.unwrap();
    next_binary(ws)
        .await
        .expect("no answer to the auth message")
}

/// Authenticate and greet as `key`: a session the server serves.
async fn raw_session(server: &WsServer, key: &Keypair) -> WebSocketStream<TcpStream> {
    let mut ws = upgraded(server.local_addr()).await;
    assert!(is_server_auth(&raw_auth(&mut ws, key, server).await));
    let hello = Message::Hello(client_hello(sid(), 1 << 20));
    ws.send(WsMessage::binary(encode(&hello, MIN_MAX_FRAME).unwrap()))
        .await
        .unwrap();
    let mut dec = FrameDecoder::new(1 << 20);
    dec.push(&next_binary(&mut ws).await.unwrap());
    assert!(matches!(dec.pop().unwrap(), Some(Message::Hello(_))));
    ws
}

fn refusal(bytes: &[u8]) -> Error {
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME);
    dec.push(bytes);
    match dec.pop().unwrap() {
        Some(Message::Response {
            id: 0,
            body: Response::Error(e),
        }) => e.into_error(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Whether the server closed `tcp`: EOF (or a reset) within `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    // Bounded by `within`: whatever the server sent before closing is read
    // and dropped.
    loop {
        match tokio::time::timeout(within, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Whether `tcp` is still open right now (nothing to read, no EOF).
fn still_open(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(tcp.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Wait until `f` holds, at most `T`.
async fn eventually(mut f: impl FnMut() -> bool, what: &str) {
    let until = tokio::time::Instant::now() + T;
    // Bounded by `until`.
    while !f() {
        assert!(tokio::time::Instant::now() < until, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_stranger_is_refused_after_its_auth_and_never_sees_the_servers_proof() {
    let (server, friend) = server(WsServerOptions::default()).await;
    let stranger = Keypair::generate();
    let mut ws = upgraded(server.local_addr()).await;
    let answer = raw_auth(&mut ws, &stranger, &server).await;
    assert!(
        !is_server_auth(&answer),
        "a stranger got the server's proof"
    );
    let e = refusal(&answer);
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    // And the connection is closed, not held.
    assert!(next_binary(&mut ws).await.is_none());
    eventually(|| server.connections() == 0, "the stranger's slot freed").await;

    // A store with the stranger's key is refused at once, typed.
    let store = store_for(&server, &stranger);
    let e = store.wait_connected(T).await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    assert!(matches!(
        *store.state().borrow(),
        ConnectionState::Refused { .. }
    ));
    store.close().await;
    legit_is_served(&server, &friend).await;
}

#[tokio::test]
async fn a_forged_or_replayed_auth_message_is_refused() {
    let (server, friend) = server(WsServerOptions::default()).await;
    // Signed for another challenge (a replay from another connection).
    let mut ws = upgraded(server.local_addr()).await;
    let _ = read_challenge(&next_binary(&mut ws).await.unwrap(), &server.peer_id()).unwrap();
    let replay = client_auth(&friend, &[1u8; 32], &[5u8; 32], &server.peer_id());
    ws.send(WsMessage::binary(replay)).await.unwrap();
    let e = refusal(&next_binary(&mut ws).await.unwrap());
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    // Signed for another server (passed on by a server the friend trusts).
    let mut ws = upgraded(server.local_addr()).await;
    let sn = read_challenge(&next_binary(&mut ws).await.unwrap(), &server.peer_id()).unwrap();
    let relayed = client_auth(&friend, &sn, &[5u8; 32], &Keypair::generate().author());
    ws.send(WsMessage::binary(relayed)).await.unwrap();
    let e = refusal(&next_binary(&mut ws).await.unwrap());
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    // Text instead of the auth message: closed.
    let mut ws = upgraded(server.local_addr()).await;
    let _ = next_binary(&mut ws).await.unwrap();
    ws.send(WsMessage::text("hello?")).await.unwrap();
    assert!(next_binary(&mut ws).await.is_none());
    legit_is_served(&server, &friend).await;
}

#[tokio::test]
async fn a_message_over_the_frame_limit_before_auth_is_refused_unbuffered() {
    let (server, friend) = server(WsServerOptions::default()).await;
    let mut ws = upgraded(server.local_addr()).await;
    let _ = next_binary(&mut ws).await.unwrap();
    // 2 MiB: twice what one message may be. tungstenite refuses it from
    // its header and the server closes.
    let _ = ws.send(WsMessage::binary(vec![0u8; 2 << 20])).await;
    assert!(next_binary(&mut ws).await.is_none());
    eventually(|| server.connections() == 0, "the slot freed").await;
    legit_is_served(&server, &friend).await;
}

#[tokio::test]
async fn silent_connections_hold_only_handshake_slots_and_only_until_the_deadline() {
    let opts = WsServerOptions {
        max_handshakes: 4,
        handshake_timeout: Duration::from_secs(1),
        ..WsServerOptions::default()
    };
    let (server, friend) = server(opts).await;
    let addr = server.local_addr();
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    eventually(|| server.connections() == 4, "four handshakes in flight").await;
    // A fifth finds every handshake slot taken and is closed at once,
    // while the four are still open.
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut fifth, T).await, "the fifth was held");
    assert!(silent.iter().all(still_open), "the four were closed early");
    // At the deadline the four are closed, and the server serves again.
    for tcp in &mut silent {
        assert!(
            closed_within(tcp, T).await,
            "a silent handshake was held past its deadline"
        );
    }
    legit_is_served(&server, &friend).await;
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let opts = WsServerOptions {
        max_connections_per_ip: 2,
        ..WsServerOptions::default()
    };
    let (server, friend) = server(opts).await;
    let addr = server.local_addr();
    let from = |ip: [u8; 4]| async move {
        let s = TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::from((ip, 0))).unwrap();
        s.connect(addr).await.unwrap()
    };
    let held = [from([127, 0, 0, 2]).await, from([127, 0, 0, 2]).await];
    eventually(|| server.connections() == 2, "two held").await;
    let mut third = from([127, 0, 0, 2]).await;
    assert!(
        closed_within(&mut third, T).await,
        "a third from one address was held"
    );
    assert!(held.iter().all(still_open));
    // Another address is served meanwhile.
    legit_is_served(&server, &friend).await;
}

#[tokio::test]
async fn a_silent_authenticated_peer_is_closed_at_the_idle_deadline() {
    let opts = WsServerOptions {
        idle_timeout: Duration::from_millis(500),
        // No pings from the server: the peer has no reason to send a pong.
        keepalive: Duration::from_secs(3600),
        ..WsServerOptions::default()
    };
    let (srv, friend) = server(opts).await;
    let mut ws = raw_session(&srv, &friend).await;
    // It sends nothing more; the server hangs up.
    assert!(next_binary(&mut ws).await.is_none());
    eventually(|| srv.connections() == 0, "the idle slot freed").await;
    // A store's keep-alive pings keep a quiet session open past the idle
    // deadline.
    let opts = WsServerOptions {
        idle_timeout: Duration::from_millis(500),
        ..WsServerOptions::default()
    };
    let (server, friend) = server(opts).await;
    let store = WebSocketStore::new(
        Arc::new(MemoryStore::new(sid())),
        &server.url(),
        server.peer_id(),
        &friend,
        WebSocketStoreOptions {
            keepalive: Duration::from_millis(100),
            ..WebSocketStoreOptions::default()
        },
    )
    .unwrap();
    store.wait_connected(T).await.unwrap();
    let mut states = store.state();
    let dropped = tokio::time::timeout(
        Duration::from_secs(2),
        states.wait_for(|s| *s != ConnectionState::Connected),
    )
    .await;
    assert!(dropped.is_err(), "a pinging store was taken for idle");
    store.close().await;
}

#[tokio::test]
async fn a_peer_that_never_reads_is_cut_off_and_others_are_served_meanwhile() {
    let backing = Arc::new(MemoryStore::new(sid()));
    let author = Keypair::generate();
    let big: Vec<Change> = (0..24).map(|n| change(&author, n, 1 << 20)).collect();
    let ids: Vec<_> = big.iter().map(|c| c.id()).collect();
    backing.append(big).await.unwrap();
    let opts = WsServerOptions {
        write_timeout: Duration::from_secs(2),
        ..WsServerOptions::default()
    };
    let (server, friend) = server_with(backing, Acl::new(), opts).await;
    let mut ws = raw_session(&server, &friend).await;
    // 24 MiB of answers asked for, none read.
    for (n, id) in ids.iter().enumerate() {
        let msg = Message::Request {
            id: n as u32 + 1,
            body: Request::GetChanges(vec![*id]),
        };
        for frame in FrameEncoder::new(&msg, 1 << 20) {
            ws.send(WsMessage::binary(frame.unwrap())).await.unwrap();
        }
    }
    // Served meanwhile: the stuck connection blocks only itself.
    legit_is_served(&server, &friend).await;
    // Cut off at the write deadline.
    eventually(|| server.connections() == 0, "the non-reader cut off").await;
    // Reading now: far fewer than the 24 answers arrive before the end.
    let mut dec = FrameDecoder::new(1 << 20).with_max_message(64 << 20);
    let mut answers = 0;
    while let Some(b) = next_binary(&mut ws).await {
        dec.push(&b);
        while let Ok(Some(_)) = dec.pop() {
            answers += 1;
        }
    }
    assert!(
        answers < 24,
        "all {answers} answers were written to a peer that did not read"
    );
}

#[tokio::test]
async fn a_read_only_peers_append_is_refused_and_stores_nothing() {
    let backing = Arc::new(MemoryStore::new(sid()));
    let reader = Keypair::generate();
    let acl = Acl::new().allow(&sid(), reader.author(), Permission::Read);
    let (server, _friend) = server_with(backing.clone(), acl, WsServerOptions::default()).await;
    let store = store_for(&server, &reader);
    store.wait_connected(T).await.unwrap();
    store.append(vec![change(&reader, 1, 8)]).await.unwrap();
    let e = store.flush(T).await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    assert_eq!(backing.head().await.unwrap().seq, 0);
    store.close().await;
}

#[tokio::test]
async fn a_store_pinning_another_key_is_refused_as_such() {
    let (server, friend) = server(WsServerOptions::default()).await;
    let store = WebSocketStore::new(
        Arc::new(MemoryStore::new(sid())),
        &server.url(),
        Keypair::generate().author(),
        &friend,
        WebSocketStoreOptions::default(),
    )
    .unwrap();
    let e = store.wait_connected(T).await.unwrap_err();
    assert!(is_wrong_server_key(&e), "{e}");
    store.close().await;
    // Bad URLs are typed errors, not panics.
    for url in ["http://example.org/", "ws://", "not a url", "wss:///x"] {
        let r = WebSocketStore::new(
            Arc::new(MemoryStore::new(sid())),
            url,
            server.peer_id(),
            &friend,
            WebSocketStoreOptions::default(),
        );
        assert!(matches!(r, Err(Error::InvalidInput { .. })), "{url}: {r:?}");
    }
}

fn tls_pair() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

#[tokio::test]
async fn over_tls_a_trusted_certificate_syncs_and_an_untrusted_one_is_refused() {
    let (server_tls, client_tls) = tls_pair();
    let opts = WsServerOptions {
        tls: Some(server_tls),
        ..WsServerOptions::default()
    };
    let backing = Arc::new(MemoryStore::new(sid()));
    let (server, friend) = server_with(backing.clone(), Acl::new(), opts).await;
    assert!(server.url().starts_with("wss://"));
    let url = format!("wss://localhost:{}/cairn", server.local_addr().port());
    let store = WebSocketStore::new(
        Arc::new(MemoryStore::new(sid())),
        &url,
        server.peer_id(),
        &friend,
        WebSocketStoreOptions {
            tls: Some(client_tls),
            ..WebSocketStoreOptions::default()
        },
    )
    .unwrap();
    store.wait_connected(T).await.unwrap();
    let c = change(&friend, 7, 64);
    store.append(vec![c.clone()]).await.unwrap();
    store.flush(T).await.unwrap();
    assert!(backing.has_changes(&[c.id()]).await.unwrap()[0]);
    store.close().await;
    // The same server with only the public roots: the handshake fails, and
    // the error says why.
    let store = WebSocketStore::new(
        Arc::new(MemoryStore::new(sid())),
        &url,
        server.peer_id(),
        &friend,
        WebSocketStoreOptions::default(),
    )
    .unwrap();
    let e = store
        .wait_connected(Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    store.close().await;
}
