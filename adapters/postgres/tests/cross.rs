//! Across pools: the concurrency and subscribe cases with two
//! `PostgresStore` handles on one database from two pools (appends and
//! scans alternate between them; the subscription is on the second, so it
//! hears the first one's appends only through the database), with
//! `LISTEN`/`NOTIFY` and with the polling fallback. Then what is particular
//! to this store: schema versions, store ids sharing a schema, a listener
//! that loses its connection, consistency.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cairn::{
    AppendOnlyStore, AppendOutcome, Capabilities, Change, ChangeBuilder, ChangeId, ChangeKind,
    ChangeMeta, ChangeStream, DocId, DynAppendOnlyStore, Head, Result, ScanItem, StoreId,
};
use cairn_conformance::{CaseFuture, Outcome, StoreFactory, cases};
use cairn_postgres::{LiveUpdates, PostgresDb, PostgresError, PostgresStore};
use common::{db, fresh_schema, url};
use futures::StreamExt;

const POLL: LiveUpdates = LiveUpdates::Poll(Duration::from_millis(25));
const PATIENCE: Duration = Duration::from_secs(20);

/// One store seen through two handles from two pools.
#[derive(Debug)]
struct TwoPools {
    a: PostgresStore,
    b: PostgresStore,
    turn: AtomicUsize,
}

impl TwoPools {
    fn next(&self) -> &PostgresStore {
        if self.turn.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
            &self.a
        } else {
            &self.b
        }
    }
}

#[async_trait]
impl AppendOnlyStore for TwoPools {
    fn store_id(&self) -> &StoreId {
        self.a.store_id()
    }
    fn capabilities(&self) -> Capabilities {
        self.a.capabilities()
    }
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        self.next().append(changes).await
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        self.next().get_changes(ids).await
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.next().scan(after, limit).await
    }
    async fn head(&self) -> Result<Head> {
        self.next().head().await
    }
    async fn subscribe(&self) -> Result<ChangeStream> {
        self.b.subscribe().await
    }
    async fn find_new_changes(&self, have: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        self.next().find_new_changes(have).await
    }
}

/// `create` makes a fresh schema and opens it twice: two pools, two
/// listeners (the second with `live`).
struct TwoPoolFactory {
    live: LiveUpdates,
}

#[async_trait]
impl StoreFactory for TwoPoolFactory {
    fn name(&self) -> String {
        format!("postgres, two pools ({:?})", self.live)
    }
    async fn create(&self, store_id: &StoreId) -> Result<Arc<DynAppendOnlyStore>> {
        let schema = fresh_schema();
        let a = db(&schema, LiveUpdates::Listen).await;
        let b = db(&schema, self.live).await;
        Ok(Arc::new(TwoPools {
            a: a.store(store_id.clone()).await?,
            b: b.store(store_id.clone()).await?,
            turn: AtomicUsize::new(0),
        }))
    }
}

async fn run(
    factory: &dyn StoreFactory,
    name: &str,
    case: for<'a> fn(&'a dyn StoreFactory) -> CaseFuture<'a>,
) {
    match case(factory).await {
        Ok(Outcome::Passed) => {}
        other => panic!("{name} for {}: {other:?}", factory.name()),
    }
}

macro_rules! across_pools {
    ($($group:ident :: $case:ident),* $(,)?) => {
        mod listen {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let f = TwoPoolFactory { live: LiveUpdates::Listen };
                    run(&f, stringify!($case), |f| Box::pin(cases::$group::$case(f))).await;
                }
            )*
        }
        mod poll {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let f = TwoPoolFactory { live: POLL };
                    run(&f, stringify!($case), |f| Box::pin(cases::$group::$case(f))).await;
                }
            )*
        }
    };
}

across_pools! {
    concurrency::concurrent_appends_lose_nothing,
    concurrency::concurrent_scans_never_skip_a_sequence,
    concurrency::concurrent_duplicate_appends_store_once,
    subscribe::subscribe_delivers_every_append_once,
    subscribe::subscribe_skips_changes_before_it,
    subscribe::slow_subscriber_loses_nothing,
    contract::scan_is_gapless_and_paged,
    contract::head_counts_changes_and_keeps_epoch,
}

fn sid(s: &str) -> StoreId {
    StoreId::new(s).unwrap()
}

fn change(doc: &str, n: u64) -> Change {
    ChangeBuilder::new(ChangeKind::Change, DocId::new(doc).unwrap())
        .created_at(n)
        .payload(n.to_be_bytes().to_vec())
        .build()
        .unwrap()
}

async fn next_within(sub: &mut ChangeStream) -> ChangeMeta {
    match tokio::time::timeout(PATIENCE, sub.next()).await {
        Ok(Some(Ok(m))) => m,
        other => panic!("no delivery within {PATIENCE:?}: {other:?}"),
    }
}

#[tokio::test]
async fn a_newer_schema_version_is_a_clear_typed_error() {
    let schema = fresh_schema();
    drop(db(&schema, LiveUpdates::Listen).await);
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute(
            &format!("UPDATE {schema}.schema_version SET version = 99"),
            &[],
        )
        .await
        .unwrap();
    let err = PostgresDb::connect_with(&url(), common::opts(&schema))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let cairn::Error::Backend { source, .. } = &err else {
        panic!("not a backend error: {err:?}");
    };
    match source.downcast_ref::<PostgresError>() {
        Some(PostgresError::SchemaTooNew {
            found, supported, ..
        }) => {
            assert_eq!((*found, *supported), (99, 1));
        }
        other => panic!("wrong error: {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("upgrade cairn-postgres"),
        "says what to do: {text}"
    );
    // Nothing was changed.
    let v: i32 = client
        .query_one(&format!("SELECT version FROM {schema}.schema_version"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 99);
}

#[tokio::test]
async fn connecting_again_and_concurrently_migrates_once() {
    let schema = fresh_schema();
    let u = url();
    let opens = (0..4).map(|_| PostgresDb::connect_with(&u, common::opts(&schema)));
    for r in futures::future::join_all(opens).await {
        r.unwrap();
    }
    // And concurrent first opens of one store agree on its row.
    let d = db(&schema, LiveUpdates::Listen).await;
    let e = db(&schema, LiveUpdates::Listen).await;
    let (s1, s2) = tokio::join!(d.store(sid("x/y")), e.store(sid("x/y")));
    let (s1, s2) = (s1.unwrap(), s2.unwrap());
    assert_eq!(s1.head().await.unwrap(), s2.head().await.unwrap());
    s1.append(vec![change("d", 1)]).await.unwrap();
    assert_eq!(s2.head().await.unwrap().seq, 1);
}

#[tokio::test]
async fn bad_options_and_unreachable_servers_are_typed_errors() {
    let err = PostgresDb::connect_with(&url(), common::opts("Bad-Name"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("schema name"), "{err}");
    // A closed port on loopback: a retryable error, after the bounded retries.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = PostgresDb::connect_with(
        &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        common::opts("cairn").retries(1),
    )
    .await
    .unwrap_err();
    assert!(err.is_retryable(), "connection refused is retryable: {err}");
    let err = PostgresDb::connect("postgres://[nonsense")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("URL"), "{err}");
}

#[tokio::test]
async fn store_ids_share_a_schema_independently() {
    let d = db(&fresh_schema(), LiveUpdates::Listen).await;
    let a = d.store(sid("acme/a")).await.unwrap();
    let b = d.store(sid("acme/b")).await.unwrap();
    let c = change("doc", 7);
    a.append(vec![c.clone()]).await.unwrap();
    // The same change in another store is new there, with its own seq 1.
    let out = b.append(vec![c.clone(), change("doc", 8)]).await.unwrap();
    assert_eq!(out.new.len(), 2);
    assert_eq!(a.head().await.unwrap().seq, 1);
    assert_eq!(b.head().await.unwrap().seq, 2);
    assert_ne!(a.head().await.unwrap().epoch, b.head().await.unwrap().epoch);
    assert_eq!(a.check_consistency().await.unwrap(), 1);
    assert_eq!(b.check_consistency().await.unwrap(), 2);
    let mut sub = a.subscribe().await.unwrap();
    b.append(vec![change("doc", 9)]).await.unwrap();
    let mine = change("doc", 10);
    a.append(vec![mine.clone()]).await.unwrap();
    assert_eq!(
        next_within(&mut sub).await.id,
        mine.id(),
        "only its own store's changes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_loses_its_connection_reconnects_and_misses_nothing() {
    let schema = fresh_schema();
    let writer = db(&schema, LiveUpdates::Listen)
        .await
        .store(sid("l/r"))
        .await
        .unwrap();
    let reader = db(&schema, LiveUpdates::Listen)
        .await
        .store(sid("l/r"))
        .await
        .unwrap();
    let mut sub = reader.subscribe().await.unwrap();
    let first = change("d", 1);
    writer.append(vec![first.clone()]).await.unwrap();
    assert_eq!(next_within(&mut sub).await.id, first.id());
    // Kill every LISTEN connection on the server, then append at once:
    // the notification may be lost; the reconnect's head refresh is not.
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let killed: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE query LIKE 'LISTEN \"cairn.' || $1 || '\"%'",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 2, "both listeners found");
    let second = change("d", 2);
    writer.append(vec![second.clone()]).await.unwrap();
    assert_eq!(next_within(&mut sub).await.id, second.id());
    let third = change("d", 3);
    writer.append(vec![third.clone()]).await.unwrap();
    assert_eq!(next_within(&mut sub).await.id, third.id());
}

#[tokio::test]
async fn a_failed_batch_leaves_nothing_and_the_store_stays_consistent() {
    let s = db(&fresh_schema(), LiveUpdates::Listen)
        .await
        .store(sid("f/b"))
        .await
        .unwrap();
    s.append((0..50).map(|n| change("d", n)).collect())
        .await
        .unwrap();
    let mut bad = change("d", 1000);
    bad.payload = cairn::Bytes::from_static(b"tampered");
    let err = s.append(vec![change("d", 999), bad]).await.unwrap_err();
    assert!(matches!(err, cairn::Error::Integrity { .. }), "{err}");
    assert_eq!(s.head().await.unwrap().seq, 50);
    assert_eq!(s.check_consistency().await.unwrap(), 50);
    // Pages smaller than the store: reads walk them all.
    let small =
        PostgresDb::connect_with(&url(), common::opts(&s.db().options().schema).page_rows(7))
            .await
            .unwrap()
            .store(sid("f/b"))
            .await
            .unwrap();
    assert_eq!(small.all_change_ids().await.unwrap().len(), 50);
    assert_eq!(small.find_new_changes(&[]).await.unwrap().len(), 50);
    assert_eq!(
        small
            .changes_for_doc(&DocId::new("d").unwrap(), false)
            .await
            .unwrap()
            .len(),
        50
    );
    let ids = small.all_change_ids().await.unwrap();
    assert_eq!(small.get_changes(&ids).await.unwrap().len(), 50);
    assert_eq!(small.check_consistency().await.unwrap(), 50);
}
