//! Many documents, the MindooDB-style path: Alice's tenant database holds
//! D documents of K Automerge commits each (one `Database::update` per
//! commit, no snapshots); a second device pulls it with one
//! `cairn::sync::pull`. Then T documents get one more commit each and the
//! device pulls again with the saved `SyncState`.
//!
//! Baseline, in the same run: Automerge's own sync protocol
//! (`automerge::sync`), one protocol per document, in process, on
//! identical edits, then again with the kept sync states.
//!
//! Bytes: for Cairn, every request and response frame as the protocol
//! encodes it (`cairn_protocol::encode_frames`, what QUIC carries, counted
//! by a wrapper around the QUIC client's calls); for Automerge, the encoded
//! sync messages. Times: Cairn over QUIC on loopback, Automerge in
//! process. One line per case:
//!
//! `manydocs impl=<cairn|automerge> docs=<D> per_doc=<K> touched=<T>
//! first_bytes=<b> first_ms=<t> inc_bytes=<b> inc_ms=<t>` (plus requests
//! or messages).
//!
//! Run: `cargo bench -p cairn-tenant --bench manydocs`
//! (`CAIRN_BENCH_CASES=1000x10x100,100x100x10`, the default).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use automerge::sync::SyncDoc;
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use cairn::sync::{SyncOptions, SyncState, pull};
use cairn::{DocId, DynAppendOnlyStore, Keypair};
use cairn_memory::MemoryStore;
use cairn_protocol::{Call, Message, RemoteStore, Request, Response, encode_frames};
use cairn_quic::{Acl, Permission, QuicClient, QuicServer, ServerOptions, Stores};
use cairn_tenant::{DbOptions, Tenant, TenantConfig, db_store_id, directory_store_id};

const MAX_FRAME: u32 = 16 << 20;

/// A [`Call`] that counts the encoded bytes of every request and response.
struct Counted {
    inner: QuicClient,
    bytes: AtomicU64,
    requests: AtomicU64,
}

fn framed(msg: &Message) -> u64 {
    encode_frames(msg, MAX_FRAME)
        .unwrap()
        .iter()
        .map(|f| f.len() as u64)
        .sum()
}

#[async_trait]
impl Call for Counted {
    async fn call(&self, request: Request) -> cairn::Result<Response> {
        let msg = Message::Request {
            id: 1,
            body: request,
        };
        self.bytes.fetch_add(framed(&msg), Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let Message::Request { body, .. } = msg else {
            unreachable!()
        };
        let response = self.inner.call(body).await?;
        let msg = Message::Response {
            id: 1,
            body: response,
        };
        self.bytes.fetch_add(framed(&msg), Ordering::Relaxed);
        let Message::Response { body, .. } = msg else {
            unreachable!()
        };
        Ok(body)
    }
}

impl Counted {
    fn take(&self) -> (u64, u64) {
        (
            self.bytes.swap(0, Ordering::Relaxed),
            self.requests.swap(0, Ordering::Relaxed),
        )
    }
}

/// The value commit `j` of document `i` writes (the same in both
/// implementations).
fn edit(d: &mut AutoCommit, i: usize, j: usize) -> Result<(), automerge::AutomergeError> {
    d.put(ROOT, "title", format!("doc {i}"))?;
    d.put(ROOT, "n", j as i64)?;
    Ok(())
}

fn main() {
    let cases: Vec<(usize, usize, usize)> = std::env::var("CAIRN_BENCH_CASES")
        .unwrap_or_else(|_| "1000x10x100,100x100x10".into())
        .split(',')
        .map(|c| {
            let v: Vec<usize> = c
                .split('x')
                .map(|n| n.trim().parse().expect("CAIRN_BENCH_CASES: DxKxT"))
                .collect();
            assert_eq!(v.len(), 3, "CAIRN_BENCH_CASES: DxKxT");
            (v[0], v[1], v[2])
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (d, k, t) in cases {
        rt.block_on(cairn_case(d, k, t));
        automerge_case(d, k, t);
    }
}

async fn cairn_case(docs: usize, per_doc: usize, touched: usize) {
    let (config, admin) = TenantConfig::create("bench").unwrap();
    let dir_id = directory_store_id("bench").unwrap();
    let db_id = db_store_id("bench", "docs").unwrap();
    let dir: Arc<DynAppendOnlyStore> = Arc::new(MemoryStore::new(dir_id.clone()));
    let tenant = Tenant::open(config, dir).await.unwrap();
    let store: Arc<DynAppendOnlyStore> = Arc::new(MemoryStore::new(db_id.clone()));
    let opts = DbOptions {
        snapshot_every: 0,
        ..DbOptions::default()
    };
    let db = tenant
        .open_db("docs", store.clone(), admin, opts)
        .await
        .unwrap();
    let write = Instant::now();
    // A document's commits in a row, then the next document's (round
    // robin over more documents than `DbOptions::open_docs` would load
    // each document again for every commit).
    let mut ids: Vec<DocId> = Vec::with_capacity(docs);
    for i in 0..docs {
        let id = db.create(move |d| edit(d, i, 0)).await.unwrap();
        for j in 1..per_doc {
            db.update(&id, move |d| edit(d, i, j)).await.unwrap();
        }
        ids.push(id);
    }
    let write_ms = write.elapsed().as_secs_f64() * 1e3;

    let skey = Keypair::generate();
    let ckey = Keypair::generate();
    let server = QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &skey,
        Arc::new(Stores::new().with(store.clone())),
        Arc::new(Acl::new().allow(&db_id, ckey.author(), Permission::Read)),
        ServerOptions::default(),
    )
    .unwrap();
    let client = QuicClient::connect(
        server.local_addr(),
        server.peer_id(),
        &ckey,
        &db_id,
        MAX_FRAME,
    )
    .await
    .unwrap();
    let hello = client.hello().clone();
    let counted = Arc::new(Counted {
        inner: client,
        bytes: AtomicU64::new(0),
        requests: AtomicU64::new(0),
    });
    let remote = RemoteStore::new("quic", db_id.clone(), &hello, counted.clone());
    let device = MemoryStore::new(db_id.clone());
    let start = Instant::now();
    let report = pull(&device, &remote, &SyncOptions::default())
        .await
        .unwrap();
    let first_ms = start.elapsed().as_secs_f64() * 1e3;
    let (first_bytes, first_req) = counted.take();
    assert_eq!(report.pulled.changes as usize, docs * per_doc);
    let state: SyncState = report.state;

    for (i, id) in ids.iter().take(touched).enumerate() {
        db.update(id, move |d| edit(d, i, per_doc)).await.unwrap();
    }
    let start = Instant::now();
    let report = pull(&device, &remote, &SyncOptions::default().resume(state))
        .await
        .unwrap();
    let inc_ms = start.elapsed().as_secs_f64() * 1e3;
    let (inc_bytes, inc_req) = counted.take();
    assert_eq!(report.pulled.changes as usize, touched);
    println!(
        "manydocs impl=cairn docs={docs} per_doc={per_doc} touched={touched} first_bytes={first_bytes} first_ms={first_ms:.1} inc_bytes={inc_bytes} inc_ms={inc_ms:.2} first_requests={first_req} inc_requests={inc_req} bytes_per_change={} write_ms={write_ms:.0}",
        first_bytes / (docs * per_doc) as u64
    );
}

/// Sync `a` into `b` (and back) until neither has anything to say;
/// returns (bytes, messages). Bounded: Automerge's protocol ends in a few
/// rounds; 1,000 is far beyond.
fn am_sync(
    a: &mut AutoCommit,
    b: &mut AutoCommit,
    sa: &mut automerge::sync::State,
    sb: &mut automerge::sync::State,
) -> (u64, u64) {
    /// One message from `from` to `to`, if `from` has one: its bytes.
    fn send(
        from: &mut AutoCommit,
        sf: &mut automerge::sync::State,
        to: &mut AutoCommit,
        st: &mut automerge::sync::State,
    ) -> Option<u64> {
        let enc = from.sync().generate_sync_message(sf)?.encode();
        let m = automerge::sync::Message::decode(&enc).unwrap();
        to.sync().receive_sync_message(st, m).unwrap();
        Some(enc.len() as u64)
    }
    let (mut bytes, mut msgs) = (0u64, 0u64);
    for _ in 0..1000 {
        let sent = [send(a, sa, b, sb), send(b, sb, a, sa)];
        if sent.iter().all(Option::is_none) {
            return (bytes, msgs);
        }
        for n in sent.into_iter().flatten() {
            bytes += n;
            msgs += 1;
        }
    }
    panic!("automerge sync did not settle");
}

fn automerge_case(docs: usize, per_doc: usize, touched: usize) {
    let mut alice: Vec<AutoCommit> = (0..docs)
        .map(|i| {
            let mut d = AutoCommit::new();
            for j in 0..per_doc {
                edit(&mut d, i, j).unwrap();
                d.commit();
            }
            d
        })
        .collect();
    let mut device: Vec<AutoCommit> = (0..docs).map(|_| AutoCommit::new()).collect();
    let mut states: Vec<(automerge::sync::State, automerge::sync::State)> = (0..docs)
        .map(|_| (Default::default(), Default::default()))
        .collect();
    let start = Instant::now();
    let (mut first_bytes, mut first_msgs) = (0, 0);
    for ((a, b), (sa, sb)) in alice
        .iter_mut()
        .zip(device.iter_mut())
        .zip(states.iter_mut())
    {
        let (by, m) = am_sync(a, b, sa, sb);
        first_bytes += by;
        first_msgs += m;
    }
    let first_ms = start.elapsed().as_secs_f64() * 1e3;
    for (i, a) in alice.iter_mut().take(touched).enumerate() {
        edit(a, i, per_doc).unwrap();
        a.commit();
    }
    let start = Instant::now();
    let (mut inc_bytes, mut inc_msgs) = (0, 0);
    // Each side runs the protocol per document with its kept state: the
    // untouched documents exchange too (that is how it learns nothing
    // changed).
    for ((a, b), (sa, sb)) in alice
        .iter_mut()
        .zip(device.iter_mut())
        .zip(states.iter_mut())
    {
        let (by, m) = am_sync(a, b, sa, sb);
        inc_bytes += by;
        inc_msgs += m;
    }
    let inc_ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "manydocs impl=automerge docs={docs} per_doc={per_doc} touched={touched} first_bytes={first_bytes} first_ms={first_ms:.1} inc_bytes={inc_bytes} inc_ms={inc_ms:.2} first_messages={first_msgs} inc_messages={inc_msgs} bytes_per_change={}",
        first_bytes / (docs * per_doc) as u64
    );
}
