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
    ChangeMeta, ChangeStream, DocId, DynAppendOnlyStore, FingerprintBuckets, Head, IdRange, Result,
    ScanItem, StoreId,
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
            assert_eq!((*found, *supported), (99, 3));
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

/// The version-1 schema exactly as version 1 of this crate created it
/// (bucket fingerprints as 40-byte `bytea`s, foreign keys to `stores`): a
/// frozen fixture, so that the migration to the current version is tested
/// on the real thing.
const SCHEMA_V1: &str = "
    CREATE SCHEMA {s};
    CREATE TABLE {s}.schema_version (
        one     boolean PRIMARY KEY DEFAULT true CHECK (one),
        version integer NOT NULL
    );
    INSERT INTO {s}.schema_version (one, version) VALUES (true, 1);
    CREATE TABLE {s}.stores (
        store_key bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        store_id  text   NOT NULL UNIQUE,
        epoch     bigint NOT NULL,
        head      bigint NOT NULL DEFAULT 0 CHECK (head >= 0)
    );
    CREATE TABLE {s}.changes (
        store_key bigint   NOT NULL REFERENCES {s}.stores,
        seq       bigint   NOT NULL CHECK (seq > 0),
        id        bytea    NOT NULL CHECK (length(id) = 32),
        doc_id    text     NOT NULL,
        kind      smallint NOT NULL,
        meta      bytea    NOT NULL,
        payload   bytea    NOT NULL,
        PRIMARY KEY (store_key, seq)
    );
    CREATE UNIQUE INDEX changes_by_id ON {s}.changes (store_key, id);
    CREATE INDEX changes_by_doc ON {s}.changes (store_key, doc_id, seq);
    CREATE TABLE {s}.buckets (
        store_key bigint  NOT NULL REFERENCES {s}.stores,
        bucket    integer NOT NULL CHECK (bucket >= 0 AND bucket < 4096),
        fp        bytea   NOT NULL CHECK (length(fp) = 40),
        PRIMARY KEY (store_key, bucket)
    );";

#[tokio::test]
async fn a_version_1_database_migrates_with_its_changes_and_fingerprints() {
    let schema = fresh_schema();
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&SCHEMA_V1.replace("{s}", &schema))
        .await
        .unwrap();
    // A store of 300 changes written the way version 1 wrote them.
    let key: i64 = client
        .query_one(
            &format!(
                "INSERT INTO {schema}.stores (store_id, epoch, head) VALUES ('old/one', 7, 300)
                 RETURNING store_key"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let changes: Vec<Change> = (0..300)
        .map(|i| change(&format!("d{}", i % 7), i))
        .collect();
    let mut fps = FingerprintBuckets::default();
    let insert = format!("INSERT INTO {schema}.changes VALUES ($1, $2, $3, $4, $5, $6, $7)");
    for (i, c) in changes.iter().enumerate() {
        fps.add(&c.meta.id);
        let meta = cairn::encoding::encode_meta(&c.meta);
        client
            .execute(
                &insert,
                &[
                    &key,
                    &(i as i64 + 1),
                    &c.meta.id.as_bytes().as_slice(),
                    &c.meta.doc_id.as_str(),
                    &i16::from(c.meta.kind.code()),
                    &meta,
                    &c.payload.as_ref(),
                ],
            )
            .await
            .unwrap();
    }
    let put = format!("INSERT INTO {schema}.buckets VALUES ($1, $2, $3)");
    for b in 0..FingerprintBuckets::COUNT {
        let fp = fps.get(b).copied().unwrap_or_default().to_bytes();
        client
            .execute(&put, &[&key, &(b as i32), &fp.as_slice()])
            .await
            .unwrap();
    }

    // Opening migrates it: same changes, same fingerprints, still appendable.
    let d = db(&schema, LiveUpdates::Listen).await;
    let v: i32 = client
        .query_one(&format!("SELECT version FROM {schema}.schema_version"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 3);
    let s = d.store(sid("old/one")).await.unwrap();
    assert_eq!(s.check_consistency().await.unwrap(), 300);
    let memory = cairn_memory::MemoryStore::new(sid("old/one"));
    memory.append(changes.clone()).await.unwrap();
    let mut half = [0u8; 32];
    half[0] = 0x80;
    let ranges = [
        IdRange::ALL,
        IdRange {
            start: ChangeId::MIN,
            end: Some(ChangeId::from_bytes(half)),
        },
    ];
    for r in &ranges {
        assert!(FingerprintBuckets::aligned(r).is_some());
        assert_eq!(
            s.range_summary(r).await.unwrap(),
            memory.range_summary(r).await.unwrap()
        );
    }
    let more = change("d-new", 1_000);
    let out = s
        .append(vec![changes[5].clone(), more.clone()])
        .await
        .unwrap();
    assert_eq!((out.new, out.duplicates), (vec![more.meta.id], 1));
    memory.append(vec![more]).await.unwrap();
    assert_eq!(s.check_consistency().await.unwrap(), 301);
    // A process of an older version still running would update `sum`
    // behind the folds' back: its statements now fail instead.
    let old = client
        .execute(
            &format!("UPDATE {schema}.buckets SET sum = sum + 1 WHERE store_key = 0"),
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        old.code(),
        Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN)
    );
    for r in &ranges {
        assert_eq!(
            s.range_summary(r).await.unwrap(),
            memory.range_summary(r).await.unwrap()
        );
    }
}

#[tokio::test]
async fn a_group_with_stored_ids_numbers_only_the_new_ones() {
    // The one-round-trip append assumes every id is new; a batch mixing
    // stored and new ids must take the checking path and stay gap-free.
    let schema = fresh_schema();
    let d = db(&schema, LiveUpdates::Listen).await;
    let s = d.store(sid("dup/mix")).await.unwrap();
    let a: Vec<Change> = (0..50).map(|i| change("a", i)).collect();
    assert_eq!(s.append(a.clone()).await.unwrap().new.len(), 50);
    // Concurrent appends (one group commit) mixing old, new and repeated.
    let b: Vec<Change> = (50..80).map(|i| change("a", i)).collect();
    let mut mixed = a[10..20].to_vec();
    mixed.extend(b[..10].iter().cloned());
    let (r1, r2, r3) = tokio::join!(
        s.append(mixed),
        s.append(b.clone()),
        s.append(a[..5].to_vec())
    );
    let (r1, r2, r3) = (r1.unwrap(), r2.unwrap(), r3.unwrap());
    assert_eq!(r1.new.len() + r2.new.len(), 30, "{r1:?} {r2:?}");
    assert_eq!(r1.duplicates + r2.duplicates, 10 + 10);
    assert_eq!((r3.new.len(), r3.duplicates), (0, 5));
    assert_eq!(s.head().await.unwrap().seq, 80);
    assert_eq!(s.check_consistency().await.unwrap(), 80);
    let seqs: Vec<u64> = s
        .scan(0, 1_000)
        .await
        .unwrap()
        .iter()
        .map(|i| i.seq)
        .collect();
    assert_eq!(seqs, (1..=80).collect::<Vec<u64>>());
}

/// `n` changes of 8 KiB in `doc`: 64 of them are past the size above which
/// the store checks a batch while it writes it.
fn big(doc: &str, from: u64, n: u64) -> Vec<Change> {
    (from..from + n)
        .map(|i| {
            ChangeBuilder::new(ChangeKind::Change, DocId::new(doc).unwrap())
                .created_at(i)
                .payload(vec![(i % 251) as u8; 8 << 10])
                .build()
                .unwrap()
        })
        .collect()
}

/// `batch` with its `k`th change's payload swapped for other bytes of the
/// same length: the hash no longer matches.
fn tampered(mut batch: Vec<Change>, k: usize) -> (Vec<Change>, ChangeId) {
    let mut bytes = batch[k].payload.to_vec();
    bytes[0] ^= 0xff;
    batch[k].payload = cairn::Bytes::from(bytes);
    let id = batch[k].meta.id;
    (batch, id)
}

fn ready<T>(p: std::task::Poll<T>) -> Option<T> {
    match p {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

fn integrity_of(r: Result<AppendOutcome>) -> ChangeId {
    match r {
        Err(cairn::Error::Integrity { id, .. }) => id,
        other => panic!("expected an integrity error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_batch_that_fails_its_check_while_written_stores_nothing_and_spares_its_group() {
    // A big batch is checked while the writer sends it; COMMIT waits for
    // the verdict. A failed check must roll back everything, on either
    // path (all new, or some stored), and leave the rest of its group
    // commit to commit.
    let schema = fresh_schema();
    let d = db(&schema, LiveUpdates::Listen).await;
    let s = d.store(sid("big/check")).await.unwrap();
    let a = big("a", 0, 64);
    assert_eq!(s.append(a.clone()).await.unwrap().new.len(), 64);

    // All new: the one-round-trip path.
    let (b, bad) = tampered(big("b", 100, 64), 40);
    assert_eq!(integrity_of(s.append(b.clone()).await), bad);
    // Some stored: the checking path.
    let mut mixed = a[..10].to_vec();
    mixed.extend(b);
    assert_eq!(integrity_of(s.append(mixed).await), bad);
    // All stored, one copy tampered: nothing to write, still refused.
    let (copy, bad_copy) = tampered(a.clone(), 3);
    assert_eq!(integrity_of(s.append(copy).await), bad_copy);
    assert_eq!(s.head().await.unwrap().seq, 64);

    // A group: hold the store's counter row from another connection so
    // that the first append waits on it inside the writer, queue a bad and
    // a good batch behind it (one group commit), then let go.
    let (raw, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    raw.batch_execute(&format!(
        "BEGIN; SELECT head FROM {schema}.stores WHERE store_id = 'big/check' FOR UPDATE"
    ))
    .await
    .unwrap();
    let first = big("c", 200, 64);
    let mut fa = Box::pin(s.append(first.clone()));
    assert!(futures::poll!(&mut fa).is_pending());
    let needle = format!("{schema}.stores");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        // Inside a transaction, PostgreSQL keeps the first snapshot of
        // pg_stat_activity until told to drop it.
        raw.batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        let waiting: i64 = raw
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND position($1 in query) > 0",
                &[&needle],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer never waited on the counter row"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (bad_batch, bad_id) = tampered(big("d", 300, 64), 63);
    let good = big("e", 400, 64);
    let mut fb = Box::pin(s.append(bad_batch.clone()));
    let mut fc = Box::pin(s.append(good.clone()));
    // One poll each sends the batch to the writer, which is still busy (the
    // bad one may already be done: its check can fail before the commit).
    let early_b = ready(futures::poll!(&mut fb));
    let early_c = ready(futures::poll!(&mut fc));
    raw.batch_execute("COMMIT").await.unwrap();
    let ra = fa.await;
    let rb = match early_b {
        Some(r) => r,
        None => fb.await,
    };
    let rc = match early_c {
        Some(r) => r,
        None => fc.await,
    };
    assert_eq!(ra.unwrap().new.len(), 64);
    assert_eq!(integrity_of(rb), bad_id);
    assert_eq!(rc.unwrap().new.len(), 64);

    assert_eq!(s.head().await.unwrap().seq, 192);
    assert_eq!(s.check_consistency().await.unwrap(), 192);
    let seqs: Vec<u64> = s
        .scan(0, 1_000)
        .await
        .unwrap()
        .iter()
        .map(|i| i.seq)
        .collect();
    assert_eq!(seqs, (1..=192).collect::<Vec<u64>>());
    let bad_ids: Vec<ChangeId> = bad_batch.iter().map(|c| c.meta.id).collect();
    assert!(s.has_changes(&bad_ids).await.unwrap().iter().all(|h| !h));
    let good_ids: Vec<ChangeId> = good.iter().map(|c| c.meta.id).collect();
    assert!(s.has_changes(&good_ids).await.unwrap().iter().all(|h| *h));
    drop(raw);
    let _ = conn.await;
}

async fn bucket_head(c: &tokio_postgres::Client, schema: &str, store: &str) -> u64 {
    let row = c
        .query_one(
            &format!(
                "SELECT b.head FROM {schema}.bucket_heads b JOIN {schema}.stores s USING (store_key)
                 WHERE s.store_id = $1"
            ),
            &[&store],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_add_what_no_fold_has_reached_and_the_writer_folds_it_when_idle() {
    // Appends leave the buckets to a fold. Hold every fold off (take the
    // store's bucket_heads row from another connection), append, and every
    // aligned range summary must still equal a memory store's; let go, and
    // the writer's own fold brings the buckets to the head by itself.
    let schema = fresh_schema();
    let d = db(&schema, LiveUpdates::Listen).await;
    let s = d.store(sid("fold/lag")).await.unwrap();
    let memory = cairn_memory::MemoryStore::new(sid("fold/lag"));
    let (raw, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let (peek, conn2) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn2 = tokio::spawn(conn2);
    raw.batch_execute(&format!(
        "BEGIN; SELECT b.head FROM {schema}.bucket_heads b JOIN {schema}.stores s USING (store_key)
         WHERE s.store_id = 'fold/lag' FOR UPDATE OF b"
    ))
    .await
    .unwrap();
    let mut all = Vec::new();
    for k in 0..6u64 {
        // Small batches and one big enough to be checked while written.
        let batch = if k == 3 {
            big("big", 10_000, 40)
        } else {
            (k * 500..k * 500 + 500).map(|i| change("f", i)).collect()
        };
        s.append(batch.clone()).await.unwrap();
        memory.append(batch.clone()).await.unwrap();
        all.extend(batch);
    }
    let head = s.head().await.unwrap().seq;
    assert_eq!(head, all.len() as u64);
    assert_eq!(bucket_head(&peek, &schema, "fold/lag").await, 0);
    let bound = |b: u8| {
        let mut x = [0u8; 32];
        x[0] = b;
        ChangeId::from_bytes(x)
    };
    let ranges = [
        IdRange::ALL,
        IdRange {
            start: ChangeId::MIN,
            end: Some(bound(0x40)),
        },
        IdRange {
            start: bound(0x40),
            end: Some(bound(0x41)),
        },
        IdRange {
            start: bound(0xf0),
            end: None,
        },
    ];
    let same = |label: &'static str| {
        let (s, memory, ranges) = (&s, &memory, &ranges);
        async move {
            for r in ranges {
                assert!(FingerprintBuckets::aligned(r).is_some());
                assert_eq!(
                    s.range_summary(r).await.unwrap(),
                    memory.range_summary(r).await.unwrap(),
                    "{label}: {r:?}"
                );
            }
        }
    };
    same("nothing folded").await;
    assert_eq!(s.check_consistency().await.unwrap(), head);

    // Let go: the writer is idle, so its own fold reaches the head.
    raw.batch_execute("COMMIT").await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while bucket_head(&peek, &schema, "fold/lag").await < head {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer never folded its changes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(bucket_head(&peek, &schema, "fold/lag").await, head);
    same("all folded").await;
    assert_eq!(s.check_consistency().await.unwrap(), head);
    assert_eq!(s.fold_fingerprints().await.unwrap(), head);

    // A fold run by hand covers what was just appended.
    let more: Vec<Change> = (5_000..5_300).map(|i| change("g", i)).collect();
    s.append(more.clone()).await.unwrap();
    memory.append(more).await.unwrap();
    assert_eq!(s.fold_fingerprints().await.unwrap(), head + 300);
    assert_eq!(bucket_head(&peek, &schema, "fold/lag").await, head + 300);
    same("folded by hand").await;
    drop((raw, peek));
    let _ = (conn.await, conn2.await);
}
