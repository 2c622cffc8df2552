//! Stateless relays: two `cairn serve` processes over one PostgreSQL
//! database (`CAIRN_PG_URL`; `cargo xtask test` starts a throwaway one),
//! with QUIC clients on each. Offline edits made on both sides converge
//! through either server, and a live append through server 1 reaches a
//! subscriber on server 2 (through `LISTEN`/`NOTIFY`: the servers share
//! nothing else).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::{
    AppendOnlyStore, AuthorId, ChangeBuilder, ChangeId, ChangeKind, DocId, DynAppendOnlyStore,
    Keypair, StoreId,
};
use cairn_memory::MemoryStore;
use cairn_quic::{QuicStore, QuicStoreOptions};
use futures::StreamExt;

const DEADLINE: Duration = Duration::from_secs(30);

fn pg_url() -> String {
    match std::env::var("CAIRN_PG_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "CAIRN_PG_URL is not set, so there is no PostgreSQL server for the relay test. Run \
             `cargo xtask test` (it installs the Debian package `postgresql` if needed and starts \
             a throwaway cluster), or set CAIRN_PG_URL=postgres://USER@HOST:PORT/DB."
        ),
    }
}

/// A `cairn serve` child, killed on drop.
struct Relay {
    child: Child,
    addr: SocketAddr,
    peer: AuthorId,
    _dir: tempfile::TempDir,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn relay(store: &StoreId, url: &str) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "serve",
            "--open",
            "--create",
            "--listen",
            "127.0.0.1:0",
            "--store",
        ])
        .arg(format!("{store}={url}"))
        .arg("--key")
        .arg(dir.path().join("server.key"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run cairn serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The store's URL, `quic://ADDR/STORE_ID?peer=PEER`; bounded by the
    // child's output (it exits, closing stdout, if it cannot start).
    let first = lines
        .next()
        .expect("cairn serve printed nothing")
        .expect("read cairn serve's stdout");
    let rest = first
        .strip_prefix("quic://")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"));
    let (addr, query) = rest.split_once('/').unwrap();
    let (_, peer) = query.split_once("?peer=").unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    let peer: AuthorId = peer.trim().parse().unwrap();
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Relay {
        child,
        addr,
        peer,
        _dir: dir,
    }
}

async fn client(relay: &Relay, cache: Arc<MemoryStore>) -> QuicStore {
    let q = QuicStore::new(
        cache,
        relay.addr,
        relay.peer,
        &Keypair::generate(),
        QuicStoreOptions::default(),
    )
    .unwrap();
    q.wait_connected(DEADLINE).await.unwrap();
    q
}

fn edits(doc: &str, n: usize) -> Vec<cairn::Change> {
    let mut out: Vec<cairn::Change> = Vec::new();
    for i in 0..n {
        let deps: Vec<ChangeId> = out.last().map(|c| vec![c.id()]).unwrap_or_default();
        out.push(
            ChangeBuilder::new(ChangeKind::Change, DocId::new(doc).unwrap())
                .deps(deps)
                .created_at(i as u64 + 1)
                .payload(format!("{doc} edit {i}").into_bytes())
                .build()
                .unwrap(),
        );
    }
    out
}

async fn ids_of(s: &dyn AppendOnlyStore) -> BTreeSet<ChangeId> {
    s.all_change_ids().await.unwrap().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_over_one_database_converge_and_forward_live_appends() {
    let url = pg_url();
    let store = StoreId::new(format!("relay/{:x}", cairn::random_u64())).unwrap();
    let (r1, r2) = (relay(&store, &url), relay(&store, &url));
    assert_ne!(r1.peer, r2.peer, "two independent relays");

    // Offline edits on both sides, before either client connects.
    let (a_edits, b_edits) = (edits("alice", 5), edits("bob", 7));
    let cache_a = Arc::new(MemoryStore::new(store.clone()));
    let cache_b = Arc::new(MemoryStore::new(store.clone()));
    cache_a.append(a_edits.clone()).await.unwrap();
    cache_b.append(b_edits.clone()).await.unwrap();
    let want: BTreeSet<ChangeId> = a_edits.iter().chain(&b_edits).map(|c| c.id()).collect();

    let a = client(&r1, cache_a.clone()).await;
    let b = client(&r2, cache_b.clone()).await;
    let start = Instant::now();
    loop {
        let (ha, hb) = (
            ids_of(cache_a.as_ref()).await,
            ids_of(cache_b.as_ref()).await,
        );
        if ha == want && hb == want {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no convergence within {DEADLINE:?}: a has {}, b has {} of {}",
            ha.len(),
            hb.len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The database holds exactly the union, once.
    let direct = cairn_postgres::PostgresStore::connect(&url, store.clone())
        .await
        .unwrap();
    assert_eq!(ids_of(&direct).await, want);
    assert_eq!(direct.head().await.unwrap().seq, want.len() as u64);
    assert_eq!(direct.check_consistency().await.unwrap(), want.len() as u64);

    // A live append through server 1 reaches a subscriber on server 2.
    let watcher_cache = Arc::new(MemoryStore::new(store.clone()));
    let watcher = client(&r2, watcher_cache).await;
    let mut sub = watcher.subscribe().await.unwrap();
    let live = edits("carol", 1).remove(0);
    let remote: &DynAppendOnlyStore = &a;
    remote.append(vec![live.clone()]).await.unwrap();
    let got = tokio::time::timeout(DEADLINE, async {
        // Bounded: the subscription may first replay the catch-up.
        for _ in 0..1000 {
            match sub.next().await {
                Some(Ok(m)) if m.id == live.id() => return Ok(()),
                Some(Ok(_)) => continue,
                other => return Err(format!("subscription ended: {other:?}")),
            }
        }
        Err("1000 other deliveries".to_owned())
    })
    .await;
    match got {
        Ok(Ok(())) => {}
        other => panic!("the live append did not reach server 2's subscriber: {other:?}"),
    }
    drop((a, b, watcher));
}

#[test]
fn sync_and_stats_take_postgres_urls() {
    let url = pg_url();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("cli/{:x}", cairn::random_u64());
    let path = dir.path().join("laptop.redb");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = cairn_redb::RedbStore::open(&path, StoreId::new(store.as_str()).unwrap())
            .await
            .unwrap();
        s.append(edits("dave", 5)).await.unwrap();
    });
    let cairn = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(args)
            .args(["--store-id", store.as_str()])
            .env("CAIRN_KEY", dir.path().join("identity"))
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cairn {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stats = |url: &str| -> serde_json::Value {
        serde_json::from_str(&cairn(&["stats", "--json", url])).unwrap()
    };
    let redb = format!("redb:{}", path.display());
    cairn(&["sync", "--from", &redb, "--to", &url, "--create"]);
    let s = stats(&url);
    assert_eq!(s["changes"], 5, "{s}");
    assert_eq!(s["capabilities"]["native_reconciliation"], true, "{s}");
    // Again: nothing new, nothing duplicated.
    cairn(&["sync", "--from", &redb, "--to", &url]);
    assert_eq!(stats(&url)["head"]["seq"], 5);
    // A read of a store the database does not hold creates nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["stats", &url, "--store-id", "cli/no-such-store"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no store cli/no-such-store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["stats", &url, "--store-id", "cli/no-such-store"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "still absent: the first read created nothing"
    );
}
