//! Peak heap while one big change travels, over QUIC and over WebRTC, both
//! ways: a counting allocator records the highest number of bytes
//! allocated at once while a change of 17 MiB or 100 MiB goes from a redb
//! store on one side into a redb store on the other (so neither store holds
//! it in memory) and is confirmed.
//!
//! Both sides run in this process. The floor is the change read out of the
//! sending store (one copy) plus what appending it to the receiving redb
//! store costs on its own, measured first in the same run
//! (`direction=local_append`); `transport_mib` is the peak above that
//! floor: what the transport holds while the change travels.
//!
//! Run: `cargo bench -p cairn-webrtc --bench big_change` (`CAIRN_BIG_MIB`
//! for other sizes, comma separated).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
// The one unsafe piece: a counting wrapper around the system allocator,
// which is how a peak heap is measured in-process.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cairn::{AppendOnlyStore, Change, ChangeBuilder, ChangeKind, DocId, Keypair, StoreId};
use cairn_quic::{QuicServer, QuicStore, QuicStoreOptions, ServerOptions};
use cairn_redb::RedbStore;
use cairn_webrtc::{Acl, WebRtcStore, WebRtcStoreOptions};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, counting sizes on the way.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = NOW.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) };
        NOW.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: as above.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new > l.size() {
                let now = NOW.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                NOW.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

const T: Duration = Duration::from_secs(600);
const MIB: f64 = (1 << 20) as f64;

fn sid() -> StoreId {
    StoreId::new("bench/big").unwrap()
}

fn big(mib: usize, salt: u8) -> Change {
    let mut payload = vec![salt; mib << 20];
    for (i, b) in payload.iter_mut().enumerate().step_by(4096) {
        *b = (i / 4096) as u8 ^ salt;
    }
    ChangeBuilder::new(ChangeKind::Change, DocId::new("big").unwrap())
        .payload(payload)
        .build()
        .unwrap()
}

/// A redb store with a small page cache, so that what redb keeps cached
/// does not count as the transport's.
async fn redb(dir: &tempfile::TempDir, name: &str) -> Arc<RedbStore> {
    let mut opts = cairn_redb::RedbOptions::default();
    opts.cache_size = Some(4 << 20);
    Arc::new(
        RedbStore::open_with(dir.path().join(name), sid(), opts)
            .await
            .unwrap(),
    )
}

/// The in-run baseline: the peak heap of appending the change to a local
/// redb store (the caller's copy not counted), in MiB.
async fn local_append(mib: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = redb(&dir, "l.redb").await;
    let c = big(mib, 9);
    let base = reset();
    store.append(vec![c]).await.unwrap();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base) as f64 / MIB;
    println!(
        "big_change transport=none direction=local_append size_mib={mib} peak_heap_mib={peak:.1}"
    );
    peak
}

/// Reset the peak to what is allocated now; returns it.
fn reset() -> usize {
    let now = NOW.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// What the work itself must hold at once, counted from `base`: the
/// sender's copy of the change, read out of its store, and what the
/// receiving store's append costs by itself (`local`, the in-run
/// baseline). The rest is the transport's.
fn report(transport: &str, dir: &str, mib: usize, base: usize, local: f64, t: Duration) {
    let extra = PEAK.load(Ordering::Relaxed).saturating_sub(base) as f64 / MIB;
    let floor = mib as f64 + local;
    let over = extra - floor;
    println!(
        "big_change transport={transport} direction={dir} size_mib={mib} peak_heap_mib={extra:.1} floor_mib={floor:.1} transport_mib={over:.1} s={:.2}",
        t.as_secs_f64()
    );
}

async fn wait_has(store: &dyn AppendOnlyStore, id: cairn::ChangeId) {
    let deadline = Instant::now() + T;
    // Bounded by the deadline; a held change needs no more polling.
    while !store.has_changes(&[id]).await.unwrap()[0] {
        assert!(Instant::now() < deadline, "the change never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn quic(mib: usize, local: f64) {
    let dir = tempfile::tempdir().unwrap();
    let (server_side, client_side) = (redb(&dir, "s.redb").await, redb(&dir, "c.redb").await);
    let down = big(mib, 1);
    server_side.append(vec![down.clone()]).await.unwrap();
    let srv = QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &Keypair::generate(),
        Arc::new(cairn_quic::Stores::new().with(server_side.clone())),
        Arc::new(cairn_quic::Acl::open()),
        ServerOptions::default(),
    )
    .unwrap();
    // Pull: the server reads the change out of redb (one copy), the client
    // reassembles it (one copy).
    let base = reset();
    let t = Instant::now();
    let store = QuicStore::new(
        client_side.clone(),
        srv.local_addr(),
        srv.peer_id(),
        &Keypair::generate(),
        QuicStoreOptions::default(),
    )
    .unwrap();
    store.wait_connected(T).await.unwrap();
    wait_has(&*client_side, down.id()).await;
    report("quic", "pull", mib, base, local, t.elapsed());
    drop(down);
    // Push: the caller's copy is in the base (the append takes it); the
    // server reassembles one.
    let up = big(mib, 2);
    let base = reset();
    let t = Instant::now();
    let id = up.id();
    store.append(vec![up]).await.unwrap();
    store.flush(T).await.unwrap();
    wait_has(&*server_side, id).await;
    report("quic", "push", mib, base, local, t.elapsed());
    store.close().await;
    srv.shutdown().await;
}

async fn webrtc(mib: usize, local: f64) {
    let dir = tempfile::tempdir().unwrap();
    let (a_side, b_side) = (redb(&dir, "a.redb").await, redb(&dir, "b.redb").await);
    let down = big(mib, 3);
    a_side.append(vec![down.clone()]).await.unwrap();
    // `down` stays allocated through the pull; the base counts it.
    let a = WebRtcStore::new(
        a_side.clone(),
        &Keypair::generate(),
        Arc::new(Acl::open()),
        WebRtcStoreOptions::loopback(),
    );
    let b = WebRtcStore::new(
        b_side.clone(),
        &Keypair::generate(),
        Arc::new(Acl::open()),
        WebRtcStoreOptions::loopback(),
    );
    let base = reset();
    let t = Instant::now();
    let (offer, pending) = a.offer().await.unwrap();
    let answer = b.answer(&offer).await.unwrap();
    pending.accept(&answer).await.unwrap();
    wait_has(&*b_side, down.id()).await;
    report("webrtc", "pull", mib, base, local, t.elapsed());
    drop(down);
    let up = big(mib, 4);
    let base = reset();
    let t = Instant::now();
    let id = up.id();
    b.append(vec![up]).await.unwrap();
    b.flush(T).await.unwrap();
    wait_has(&*a_side, id).await;
    report("webrtc", "push", mib, base, local, t.elapsed());
    a.close().await;
    b.close().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = std::env::var("CAIRN_BIG_MIB")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![17, 100]);
    for &mib in &sizes {
        let local = local_append(mib).await;
        quic(mib, local).await;
        webrtc(mib, local).await;
    }
}
