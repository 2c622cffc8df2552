#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Attacks on a real `QuicServer` by malicious clients built on raw quinn,
//! in this process, on loopback only. Each asserts a bound: the process's
//! RSS growth, its open file descriptors, how fast the attacker is cut off,
//! and that a legitimate client is served during the attack (connect and
//! `head()` within 2 s).
//!
//! The attackers connect from 127.0.0.2 (still loopback) and the legitimate
//! client from 127.0.0.1, so the per-address connection cap applies to the
//! attackers only. The cases share one process, so they run one at a time.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::*;
use cairn_memory::MemoryStore;
use cairn_protocol::{
    FLAG_MORE, FrameDecoder, Message, Request, Response, WireError, client_hello, encode, msg_type,
};
use cairn_quic::*;
use common::*;

/// One case at a time: RSS and fd counts are per process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn proc_status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Resident memory, in MiB.
fn rss_mib() -> u64 {
    proc_status("VmRSS:") / 1024
}

/// Open file descriptors.
fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn attacker_addr() -> SocketAddr {
    "127.0.0.2:0".parse().unwrap()
}

/// A raw quinn endpoint speaking Cairn's TLS with a self-made key.
fn raw_endpoint(server: &QuicServer) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client(attacker_addr()).unwrap();
    ep.set_default_client_config(
        cairn_quic::config::client_config(&Keypair::generate(), server.peer_id()).unwrap(),
    );
    ep
}

/// A legitimate client connects and reads the head within 2 s.
async fn legit_is_served(server: &QuicServer, key: &Keypair) {
    let t = Instant::now();
    let id = sid();
    let c = QuicClient::connect(
        server.local_addr(),
        server.peer_id(),
        key,
        &id,
        DEFAULT_MAX_FRAME,
    );
    let c = tokio::time::timeout(Duration::from_secs(2), c)
        .await
        .expect("a legitimate client could not connect within 2 s during the attack")
        .unwrap();
    use cairn_protocol::RemoteCalls;
    tokio::time::timeout(
        Duration::from_secs(2) - t.elapsed().min(Duration::from_secs(2)),
        c.remote_head(),
    )
    .await
    .expect("a legitimate client's head() took over 2 s during the attack")
    .unwrap();
    c.close().await;
}

const DEFAULT_MAX_FRAME: u32 = cairn_protocol::DEFAULT_MAX_FRAME;

fn serve(store: Arc<DynAppendOnlyStore>, acl: Acl, opts: ServerOptions) -> (QuicServer, Keypair) {
    let skey = Keypair::generate();
    let srv = QuicServer::bind(
        local(),
        &skey,
        Arc::new(Stores::new().with(store)),
        Arc::new(acl),
        opts,
    )
    .unwrap();
    (srv, skey)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_holding_connections_are_cut_off_and_cannot_starve_others() {
    let _g = SERIAL.lock().await;
    let legit = Keypair::generate();
    let (srv, _) = serve(
        Arc::new(MemoryStore::new(sid())),
        Acl::new().allow(&sid(), legit.author(), Permission::ReadWrite),
        ServerOptions {
            max_connections: 64,
            max_connections_per_ip: 32,
            ..ServerOptions::default()
        },
    );
    let (rss0, fds0) = (rss_mib(), fds());
    // 200 strangers finish TLS and then say nothing. Each is refused (and
    // closed) before its hello is read, and one address can never hold
    // more than its share of the slots.
    let ep = raw_endpoint(&srv);
    let t = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..200 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_secs(5),
            ep.connect(srv.local_addr(), "cairn").unwrap(),
        )
        .await
        {
            // Open the hello stream, as a client would, and send nothing.
            if let Ok((mut s, _r)) = c.open_bi().await {
                let _ = s.write_all(&[0]).await;
                std::mem::forget(s);
            }
            conns.push(c);
        }
    }
    legit_is_served(&srv, &legit).await;
    // Every stranger is closed by the server, promptly, told why.
    for c in &conns {
        match refusal_of(c).await {
            WireError::Unauthorized { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    let cut_off = t.elapsed();
    assert!(cut_off < Duration::from_secs(20), "took {cut_off:?}");
    drop(conns);
    ep.close(0u32.into(), b"");
    assert!(
        rss_mib() < rss0 + 64,
        "RSS grew from {rss0} to {} MiB",
        rss_mib()
    );
    assert!(fds() < fds0 + 32, "fds grew from {fds0} to {}", fds());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_allowed_peers_are_closed_at_the_hello_deadline_and_the_cap_holds() {
    let _g = SERIAL.lock().await;
    let legit = Keypair::generate();
    // Everyone may read the store, so strangers get past the key check and
    // must be stopped by the hello deadline and the per-address cap.
    let (srv, _) = serve(
        Arc::new(MemoryStore::new(sid())),
        Acl::new().allow_everyone(&sid(), Permission::Read).allow(
            &sid(),
            legit.author(),
            Permission::ReadWrite,
        ),
        ServerOptions {
            hello_timeout: Duration::from_secs(1),
            max_connections_per_ip: 16,
            ..ServerOptions::default()
        },
    );
    let (rss0, fds0) = (rss_mib(), fds());
    let ep = raw_endpoint(&srv);
    let mut conns = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        match tokio::time::timeout(
            Duration::from_secs(5),
            ep.connect(srv.local_addr(), "cairn").unwrap(),
        )
        .await
        {
            Ok(Ok(c)) => conns.push(c),
            _ => refused += 1,
        }
    }
    assert!(
        refused >= 40 - 16,
        "the per-address cap refused only {refused}"
    );
    legit_is_served(&srv, &legit).await;
    let t = Instant::now();
    for c in &conns {
        tokio::time::timeout(Duration::from_secs(5), c.closed())
            .await
            .expect("a silent connection outlived the hello deadline");
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    drop(conns);
    ep.close(0u32.into(), b"");
    assert!(
        rss_mib() < rss0 + 64,
        "RSS grew from {rss0} to {} MiB",
        rss_mib()
    );
    assert!(fds() < fds0 + 32, "fds grew from {fds0} to {}", fds());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_split_hello_is_refused_without_buffering_it() {
    let _g = SERIAL.lock().await;
    let legit = Keypair::generate();
    let (srv, _) = serve(
        Arc::new(MemoryStore::new(sid())),
        Acl::new().allow_everyone(&sid(), Permission::Read).allow(
            &sid(),
            legit.author(),
            Permission::ReadWrite,
        ),
        ServerOptions::default(),
    );
    let rss0 = rss_mib();
    let ep = raw_endpoint(&srv);
    let conn = ep
        .connect(srv.local_addr(), "cairn")
        .unwrap()
        .await
        .unwrap();
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    // 1 MiB frames of a list type, each flagged MORE, on the hello stream:
    // an attacker hoping the server reassembles them all.
    let mut frame = ((1u32 << 20) + 6).to_be_bytes().to_vec();
    frame.extend_from_slice(&[msg_type::IDS, FLAG_MORE, 0, 0, 0, 0]);
    frame.resize(4 + 6 + (1 << 20), 0);
    let t = Instant::now();
    let sender = tokio::spawn(async move {
        for _ in 0..256 {
            if s.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let _ = &mut r;
    match refusal_of(&conn).await {
        WireError::TooLarge { .. } | WireError::Protocol { .. } => {}
        other => panic!("expected a refusal for size, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    sender.abort();
    legit_is_served(&srv, &legit).await;
    assert!(
        rss_mib() < rss0 + 64,
        "RSS grew from {rss0} to {} MiB",
        rss_mib()
    );
    ep.close(0u32.into(), b"");
    srv.shutdown().await;
}

/// Wait (at most 5 s) for the server to close `conn`, and decode the
/// refusal its close reason carries.
async fn refusal_of(conn: &quinn::Connection) -> WireError {
    let why = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the connection stayed open");
    let quinn::ConnectionError::ApplicationClosed(close) = why else {
        panic!("closed without a refusal: {why}");
    };
    let mut dec = FrameDecoder::new(1 << 20);
    dec.push(&close.reason);
    match dec.pop() {
        Ok(Some(Message::Response {
            body: Response::Error(e),
            ..
        })) => e,
        other => panic!("the close reason is not a refusal: {other:?}"),
    }
}

/// Connect as `key` with a raw endpoint and exchange hellos; returns the
/// connection.
async fn raw_session(srv: &QuicServer, key: &Keypair) -> (quinn::Endpoint, quinn::Connection) {
    let mut ep = quinn::Endpoint::client(attacker_addr()).unwrap();
    ep.set_default_client_config(cairn_quic::config::client_config(key, srv.peer_id()).unwrap());
    let conn = ep
        .connect(srv.local_addr(), "cairn")
        .unwrap()
        .await
        .unwrap();
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    let hello = Message::Hello(client_hello(sid(), 1 << 24));
    s.write_all(&encode(&hello, 1 << 24).unwrap())
        .await
        .unwrap();
    s.finish().unwrap();
    let bytes = r.read_to_end(1 << 16).await.unwrap();
    let mut dec = FrameDecoder::new(1 << 24);
    dec.push(&bytes);
    assert!(matches!(dec.pop().unwrap(), Some(Message::Hello(_))));
    (ep, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_peers_huge_append_is_refused_from_its_header() {
    let _g = SERIAL.lock().await;
    let (legit, reader) = (Keypair::generate(), Keypair::generate());
    let backing = Arc::new(MemoryStore::new(sid()));
    let (srv, _) = serve(
        backing.clone(),
        Acl::new()
            .allow(&sid(), legit.author(), Permission::ReadWrite)
            .allow(&sid(), reader.author(), Permission::Read),
        ServerOptions::default(),
    );
    let rss0 = rss_mib();
    let (ep, conn) = raw_session(&srv, &reader).await;

    // On each of 16 streams, an append of 16 MiB frames flagged MORE: 64
    // MiB per stream (1 GiB in all) if the server buffered it before
    // looking.
    let t = Instant::now();
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let mut frame = ((16u32 << 20) - 4).to_be_bytes().to_vec();
    frame.extend_from_slice(&[msg_type::APPEND, FLAG_MORE, 0, 0, 0, 7]);
    frame.resize(16 << 20, 0);
    let frame = bytes::Bytes::from(frame);
    for _ in 0..16 {
        let (mut s, mut r) = conn.open_bi().await.unwrap();
        let f = frame.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..4 {
                if s.write_chunk(f.clone()).await.is_err() {
                    break;
                }
            }
        }));
        readers.push(tokio::spawn(async move {
            r.read_to_end(1 << 16).await.unwrap_or_default()
        }));
    }
    for task in readers {
        let answer = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("no answer to the append")
            .unwrap();
        let mut dec = FrameDecoder::new(1 << 24);
        dec.push(&answer);
        match dec.pop() {
            Ok(Some(Message::Response {
                id: 7,
                body: Response::Error(WireError::Unauthorized { .. }),
            })) => {}
            other => panic!("expected Unauthorized for request 7, got {other:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    for w in writers {
        w.abort();
    }
    legit_is_served(&srv, &legit).await;
    assert!(
        rss_mib() < rss0 + 96,
        "RSS grew from {rss0} to {} MiB: the bodies were buffered",
        rss_mib()
    );
    assert_eq!(backing.head().await.unwrap().seq, 0);
    conn.close(0u32.into(), b"");
    ep.close(0u32.into(), b"");
    srv.shutdown().await;
}

/// Send one request on its own stream and read the whole answer.
async fn request(conn: &quinn::Connection, id: u32, body: Request) -> Message {
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    let msg = Message::Request { id, body };
    s.write_all(&encode(&msg, 1 << 24).unwrap()).await.unwrap();
    s.finish().unwrap();
    let bytes = tokio::time::timeout(Duration::from_secs(20), r.read_to_end(1 << 30))
        .await
        .expect("no answer")
        .unwrap();
    let mut dec = FrameDecoder::new(1 << 24);
    dec.push(&bytes);
    dec.pop().unwrap().expect("a whole answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_ids_and_unbounded_listings_are_bounded() {
    let _g = SERIAL.lock().await;
    let (legit, reader) = (Keypair::generate(), Keypair::generate());
    let backing = Arc::new(MemoryStore::new(sid()));
    let big = changes("big", 1, 1 << 20);
    backing.append(big.clone()).await.unwrap();
    backing.append(changes("small", 3000, 10)).await.unwrap();
    let (srv, _) = serve(
        backing.clone(),
        Acl::new()
            .allow(&sid(), legit.author(), Permission::ReadWrite)
            .allow(&sid(), reader.author(), Permission::Read),
        ServerOptions {
            response: cairn_protocol::ResponseLimits {
                max_items: 1000,
                max_bytes: 4 << 20,
            },
            ..ServerOptions::default()
        },
    );
    let rss0 = rss_mib();
    let (ep, conn) = raw_session(&srv, &reader).await;
    // One 1 MiB change named 400,000 times (12.8 MB of request): answered
    // once, not 400 GB.
    let many = vec![big[0].id(); 400_000];
    match request(&conn, 1, Request::GetChanges(many)).await {
        Message::Response {
            body: Response::Changes(v),
            ..
        } => {
            assert_eq!(v.len(), 1);
            assert_eq!(v[0], big[0]);
        }
        other => panic!("{other:?}"),
    }
    // Whole-store listings are refused or capped, never materialised.
    match request(&conn, 2, Request::FindNewChanges(Vec::new())).await {
        Message::Response {
            body: Response::Error(WireError::TooLarge { limit, .. }),
            ..
        } => assert_eq!(limit, 1000),
        other => panic!("{other:?}"),
    }
    match request(&conn, 3, Request::AllChangeIds).await {
        Message::Response {
            body: Response::Error(WireError::TooLarge { .. }),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    match request(
        &conn,
        4,
        Request::Scan {
            after: 0,
            limit: u64::MAX,
        },
    )
    .await
    {
        Message::Response {
            body: Response::ScanItems(v),
            ..
        } => assert_eq!(v.len(), 1000),
        other => panic!("{other:?}"),
    }
    legit_is_served(&srv, &legit).await;
    assert!(
        rss_mib() < rss0 + 96,
        "RSS grew from {rss0} to {} MiB",
        rss_mib()
    );
    // And the contract holds for a real client, which pages.
    let c = QuicClient::connect(
        srv.local_addr(),
        srv.peer_id(),
        &legit,
        &sid(),
        DEFAULT_MAX_FRAME,
    )
    .await
    .unwrap();
    let hello = c.hello().clone();
    let remote = cairn_protocol::RemoteStore::new("quic", sid(), &hello, Arc::new(c));
    assert_eq!(remote.all_change_ids().await.unwrap().len(), 3001);
    assert_eq!(remote.find_new_changes(&[]).await.unwrap().len(), 3001);
    assert_eq!(remote.scan(0, 2500).await.unwrap().len(), 2500);
    let twice = remote
        .get_changes(&[big[0].id(), big[0].id()])
        .await
        .unwrap();
    assert_eq!(
        twice.len(),
        2,
        "the contract: an id asked twice is returned twice"
    );
    conn.close(0u32.into(), b"");
    ep.close(0u32.into(), b"");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_authenticated_connections_are_closed() {
    let _g = SERIAL.lock().await;
    let reader = Keypair::generate();
    let (srv, _) = serve(
        Arc::new(MemoryStore::new(sid())),
        Acl::new().allow(&sid(), reader.author(), Permission::Read),
        ServerOptions {
            idle_timeout: Duration::from_secs(1),
            ..ServerOptions::default()
        },
    );
    let (ep, conn) = raw_session(&srv, &reader).await;
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("an idle connection stayed open");
    assert!(t.elapsed() >= Duration::from_millis(900));
    ep.close(0u32.into(), b"");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_its_answer_is_cut_off() {
    let _g = SERIAL.lock().await;
    let (legit, reader) = (Keypair::generate(), Keypair::generate());
    let backing = Arc::new(MemoryStore::new(sid()));
    let cs = changes("d", 16, 1 << 20);
    backing.append(cs.clone()).await.unwrap();
    let (srv, _) = serve(
        backing,
        Acl::new()
            .allow(&sid(), legit.author(), Permission::ReadWrite)
            .allow(&sid(), reader.author(), Permission::Read),
        ServerOptions {
            write_timeout: Duration::from_secs(1),
            ..ServerOptions::default()
        },
    );
    let (ep, conn) = raw_session(&srv, &reader).await;
    // Ask for 16 MiB and never read it.
    let (mut s, r) = conn.open_bi().await.unwrap();
    let msg = Message::Request {
        id: 1,
        body: Request::GetChanges(cs.iter().map(Change::id).collect()),
    };
    s.write_all(&encode(&msg, 1 << 24).unwrap()).await.unwrap();
    s.finish().unwrap();
    legit_is_served(&srv, &legit).await;
    // The server gives up on the stream after its write timeout and resets
    // it (code 5), instead of holding the response forever.
    let mut r = r;
    let t = Instant::now();
    let reset = tokio::time::timeout(Duration::from_secs(15), r.received_reset())
        .await
        .expect("the stalled response stream was never reset");
    assert_eq!(reset.unwrap(), Some(quinn::VarInt::from_u32(5)));
    assert!(t.elapsed() < Duration::from_secs(15));
    legit_is_served(&srv, &legit).await;
    conn.close(0u32.into(), b"");
    ep.close(0u32.into(), b"");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_over_the_rate_limit_are_refused_with_a_delay_and_delivered_by_waiting() {
    let _g = SERIAL.lock().await;
    let key = Keypair::generate();
    let backing = Arc::new(MemoryStore::new(sid()));
    let rate = cairn_protocol::Rate {
        per_second: 50.0,
        burst: 10.0,
    };
    let (srv, _) = serve(
        backing.clone(),
        Acl::new().allow(&sid(), key.author(), Permission::ReadWrite),
        ServerOptions {
            admission: cairn_protocol::AdmissionOptions {
                changes_per_peer: Some(rate),
                ..Default::default()
            },
            ..ServerOptions::default()
        },
    );
    // A plain client over the limit gets the typed error and a delay.
    let c = QuicClient::connect(
        srv.local_addr(),
        srv.peer_id(),
        &key,
        &sid(),
        DEFAULT_MAX_FRAME,
    )
    .await
    .unwrap();
    use cairn_protocol::RemoteCalls;
    c.remote_append(changes("a", 10, 10)).await.unwrap();
    match c.remote_append(changes("b", 10, 10)).await {
        Err(Error::RateLimited { retry_after, what }) => {
            assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            assert!(what.contains("changes per second"), "{what}");
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // The sync engine waits as told and delivers everything.
    let local = MemoryStore::new(sid());
    local.append(changes("c", 60, 10)).await.unwrap();
    let hello = c.hello().clone();
    let remote = cairn_protocol::RemoteStore::new("quic", sid(), &hello, Arc::new(c));
    let opts = SyncOptions {
        batch_changes: 10,
        ..SyncOptions::default()
    };
    let report = cairn::sync::push(&local, &remote, &opts).await.unwrap();
    assert_eq!(report.pushed.changes, 60);
    assert!(report.pushed.throttled > Duration::ZERO, "{report}");
    // So does a network store's outbox.
    let store = QuicStore::new(
        Arc::new(MemoryStore::new(sid())),
        srv.local_addr(),
        srv.peer_id(),
        &key,
        QuicStoreOptions {
            delivery_batch: 10,
            ..fast()
        },
    )
    .unwrap();
    store.wait_connected(T).await.unwrap();
    store.append(changes("d", 40, 10)).await.unwrap();
    store.flush(T).await.unwrap();
    assert_eq!(backing.head().await.unwrap().seq, 10 + 60 + 40);
    store.close().await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_over_the_stored_bytes_quota_is_refused_and_stores_nothing() {
    let _g = SERIAL.lock().await;
    let key = Keypair::generate();
    let backing = Arc::new(MemoryStore::new(sid()));
    backing.append(changes("old", 5, 100)).await.unwrap();
    let (srv, _) = serve(
        backing.clone(),
        Acl::new().allow(&sid(), key.author(), Permission::ReadWrite),
        ServerOptions {
            admission: cairn_protocol::AdmissionOptions {
                store_quota: Some(1_000),
                ..Default::default()
            },
            ..ServerOptions::default()
        },
    );
    let c = QuicClient::connect(
        srv.local_addr(),
        srv.peer_id(),
        &key,
        &sid(),
        DEFAULT_MAX_FRAME,
    )
    .await
    .unwrap();
    use cairn_protocol::RemoteCalls;
    // 500 bytes held; 400 more fit, 200 beyond that do not.
    c.remote_append(changes("a", 4, 100)).await.unwrap();
    match c.remote_append(changes("b", 2, 100)).await {
        Err(Error::QuotaExceeded {
            limit,
            used,
            requested,
            ..
        }) => assert_eq!((limit, used, requested), (1000, 900, 200)),
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert_eq!(
        backing.head().await.unwrap().seq,
        9,
        "nothing of the refused batch"
    );
    // A duplicate of what is held is not counted against the quota.
    c.remote_append(changes("a", 4, 100)).await.unwrap();
    c.close().await;
    srv.shutdown().await;
}
