//! Set reconciliation over QUIC, side by side with negentropy on the same
//! ids: `cargo bench -p cairn-quic --bench reconcile`.
//!
//! Each case builds two memory stores holding the same N changes, plus
//! `d_local` only the local store holds and `d_remote` only the remote
//! holds. The remote is served by a `QuicServer`; `cairn::reconcile::
//! difference` runs against it through a `RemoteStore` whose calls are
//! counted as encoded request and response frames (what QUIC carries).
//! negentropy 0.5 (unbounded frames) runs on the same ids in process, its
//! bytes counted as message lengths. `server_ms` is the time the serving
//! side spent answering (the store's `coded_symbols` for Cairn, `reconcile`
//! for negentropy). A memory store folds its ids into its coded symbols on
//! the first request after appends, not on append; `fold_ms` is that
//! once-per-store cost, measured before the reconciliation (per store).
//!
//! One line per case:
//! `reconcile impl=<cairn|negentropy> N=<n> d_local=<a> d_remote=<b> bytes=<total> round_trips=<r> ms=<t> server_ms=<s>`
//!
//! `CAIRN_BENCH_N=100000,1000000` and `CAIRN_BENCH_D=1,100,10000` pick the
//! cases (these are the defaults); each d runs one way (all remote) and
//! both ways (half each).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use cairn::reconcile::{ReconcileOptions, difference};
use cairn::riblt::{SymbolReply, SymbolRequest};
use cairn::{
    AppendOnlyStore, AppendOutcome, Change, ChangeBuilder, ChangeId, ChangeKind, ChangeStream,
    DocId, Head, Keypair, Result, ScanItem, StoreId,
};
use cairn_memory::MemoryStore;
use cairn_protocol::{Call, Message, RemoteStore, Request, Response, encode_frames};
use cairn_quic::{Acl, Permission, QuicClient, QuicServer, ServerOptions, Stores};
use negentropy::{Id, Negentropy, NegentropyStorageVector};

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
    async fn call(&self, request: Request) -> Result<Response> {
        let msg = Message::Request {
            id: 1,
            body: request,
        };
        self.bytes.fetch_add(framed(&msg), Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let Message::Request { body, .. } = msg else {
            unreachable!()
        };
        let msg = Message::Response {
            id: 1,
            body: self.inner.call(body).await?,
        };
        self.bytes.fetch_add(framed(&msg), Ordering::Relaxed);
        let Message::Response { body, .. } = msg else {
            unreachable!()
        };
        Ok(body)
    }
}

/// The served store, timing its answers to `coded_symbols`.
#[derive(Debug)]
struct Timed {
    inner: MemoryStore,
    nanos: AtomicU64,
}

#[async_trait]
impl AppendOnlyStore for Timed {
    fn store_id(&self) -> &StoreId {
        self.inner.store_id()
    }
    fn capabilities(&self) -> cairn::Capabilities {
        self.inner.capabilities()
    }
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        self.inner.append(changes).await
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        self.inner.get_changes(ids).await
    }
    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        self.inner.has_changes(ids).await
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.inner.scan(after, limit).await
    }
    async fn head(&self) -> Result<Head> {
        self.inner.head().await
    }
    async fn subscribe(&self) -> Result<ChangeStream> {
        self.inner.subscribe().await
    }
    async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
        self.inner.all_change_ids().await
    }
    async fn coded_symbols(&self, request: &SymbolRequest) -> Result<SymbolReply> {
        let t = Instant::now();
        let r = self.inner.coded_symbols(request).await;
        self.nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }
}

fn change(n: u64) -> Change {
    ChangeBuilder::new(ChangeKind::Change, DocId::new("d").unwrap())
        .payload(n.to_le_bytes().to_vec())
        .created_at(1)
        .build()
        .unwrap()
}

fn list(var: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(var).map_or_else(
        |_| default.to_vec(),
        |v| v.split(',').map(|s| s.trim().parse().unwrap()).collect(),
    )
}

async fn cairn_case(base: &[Change], local_extra: &[Change], remote_extra: &[Change]) {
    let sid = StoreId::new("bench").unwrap();
    let local = MemoryStore::new(sid.clone());
    let remote = Arc::new(Timed {
        inner: MemoryStore::new(sid.clone()),
        nanos: AtomicU64::new(0),
    });
    for chunk in base.chunks(65_536) {
        local.append(chunk.to_vec()).await.unwrap();
        remote.append(chunk.to_vec()).await.unwrap();
    }
    local.append(local_extra.to_vec()).await.unwrap();
    remote.append(remote_extra.to_vec()).await.unwrap();
    // Appends leave the coded symbols to the first request: fold them in
    // now, and report that once-per-store cost apart.
    let warm = SymbolRequest {
        start: 0,
        count: 1,
        sketch: false,
    };
    let fold = Instant::now();
    local.coded_symbols(&warm).await.unwrap();
    remote.inner.coded_symbols(&warm).await.unwrap();
    let fold_ms = fold.elapsed().as_secs_f64() * 1e3 / 2.0;

    let skey = Keypair::generate();
    let ckey = Keypair::generate();
    let served: Arc<cairn::DynAppendOnlyStore> = remote.clone();
    let server = QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &skey,
        Arc::new(Stores::new().with(served)),
        Arc::new(Acl::new().allow(&sid, ckey.author(), Permission::Read)),
        ServerOptions::default(),
    )
    .unwrap();
    let client = QuicClient::connect(
        server.local_addr(),
        server.peer_id(),
        &ckey,
        &sid,
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
    let remote_view = RemoteStore::new("quic", sid.clone(), &hello, counted.clone());
    let start = Instant::now();
    let d = difference(&local, &remote_view, &ReconcileOptions::default())
        .await
        .unwrap();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    assert_eq!(d.local_only.len(), local_extra.len(), "local-only ids");
    assert_eq!(d.remote_only.len(), remote_extra.len(), "remote-only ids");
    println!(
        "reconcile impl=cairn N={} d_local={} d_remote={} bytes={} round_trips={} ms={ms:.1} server_ms={:.1} symbols={} fold_ms={fold_ms:.1}",
        base.len(),
        local_extra.len(),
        remote_extra.len(),
        counted.bytes.load(Ordering::Relaxed),
        counted.requests.load(Ordering::Relaxed),
        remote.nanos.load(Ordering::Relaxed) as f64 / 1e6,
        d.symbols,
    );
    server.shutdown().await;
}

fn negentropy_case(base: &[ChangeId], local_extra: &[ChangeId], remote_extra: &[ChangeId]) {
    let storage = |extra: &[ChangeId]| {
        let mut s = NegentropyStorageVector::with_capacity(base.len() + extra.len());
        for id in base.iter().chain(extra) {
            s.insert(0, Id::from_byte_array(*id.as_bytes())).unwrap();
        }
        s.seal().unwrap();
        s
    };
    let (ls, rs) = (storage(local_extra), storage(remote_extra));
    let start = Instant::now();
    let mut client = Negentropy::borrowed(&ls, 0).unwrap();
    let mut server = Negentropy::borrowed(&rs, 0).unwrap();
    let mut server_nanos = 0u128;
    let mut bytes = 0u64;
    let mut round_trips = 0u64;
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let mut msg = client.initiate().unwrap();
    // Bounded: negentropy converges in a logarithmic number of rounds.
    for _ in 0..64 {
        bytes += msg.len() as u64;
        round_trips += 1;
        let t = Instant::now();
        let answer = server.reconcile(&msg).unwrap();
        server_nanos += t.elapsed().as_nanos();
        bytes += answer.len() as u64;
        match client
            .reconcile_with_ids(&answer, &mut have, &mut need)
            .unwrap()
        {
            Some(next) => msg = next,
            None => break,
        }
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    assert_eq!(have.len(), local_extra.len(), "negentropy: local-only ids");
    assert_eq!(
        need.len(),
        remote_extra.len(),
        "negentropy: remote-only ids"
    );
    println!(
        "reconcile impl=negentropy N={} d_local={} d_remote={} bytes={bytes} round_trips={round_trips} ms={ms:.1} server_ms={:.1}",
        base.len(),
        local_extra.len(),
        remote_extra.len(),
        server_nanos as f64 / 1e6,
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ns = list("CAIRN_BENCH_N", &[100_000, 1_000_000]);
    let ds = list("CAIRN_BENCH_D", &[1, 100, 10_000]);
    for &n in &ns {
        let base: Vec<Change> = (0..n).map(change).collect();
        let base_ids: Vec<ChangeId> = base.iter().map(Change::id).collect();
        for &d in &ds {
            let mut shapes = vec![(0, d)];
            if d >= 2 {
                shapes.push((d / 2, d - d / 2));
            }
            for (dl, dr) in shapes {
                let local_extra: Vec<Change> = (0..dl).map(|k| change(1 << 40 | k)).collect();
                let remote_extra: Vec<Change> = (0..dr).map(|k| change(1 << 41 | k)).collect();
                rt.block_on(cairn_case(&base, &local_extra, &remote_extra));
                let li: Vec<ChangeId> = local_extra.iter().map(Change::id).collect();
                let ri: Vec<ChangeId> = remote_extra.iter().map(Change::id).collect();
                negentropy_case(&base_ids, &li, &ri);
            }
        }
    }
}
