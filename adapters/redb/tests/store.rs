//! RedbStore-specific behaviour: group commit, opening foreign or other-schema
//! files, reopening, non-durable mode, consistency checks.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use cairn::{AppendOnlyStore, Error, StoreId};
use cairn_redb::{Durability, RedbOptions, RedbStore};
use common::{chain, change, doc, sid};
use futures::StreamExt;
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_merges_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("g.redb"), sid())
        .await
        .unwrap();
    let barrier = Arc::new(Barrier::new(16));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let c = change(&doc(&format!("d{i}")), &[], 64);
            barrier.wait().await;
            let out = store.append(vec![c.clone()]).await.unwrap();
            assert_eq!(out.new, vec![c.id()]);
            c.id()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let stats = store.stats();
    assert_eq!(stats.batches, 16);
    assert_eq!(stats.changes, 16);
    assert!(
        stats.commits < 16,
        "16 concurrent appends took {} commits",
        stats.commits
    );
    assert!(stats.largest_group > 1);
    assert_eq!(store.has_changes(&ids).await.unwrap(), vec![true; 16]);
    assert_eq!(store.head().await.unwrap().seq, 16);
    let report = store.check_consistency().await.unwrap();
    assert_eq!(report.changes, 16);
    assert_eq!(report.docs, 16);
}

#[tokio::test]
async fn duplicates_across_merged_batches_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("d.redb"), sid())
        .await
        .unwrap();
    let c = change(&doc("a"), &[], 10);
    let (a, b) = tokio::join!(store.append(vec![c.clone()]), store.append(vec![c.clone()]));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.new.len() + b.new.len(), 1);
    assert_eq!(a.duplicates + b.duplicates, 1);
    assert_eq!(store.head().await.unwrap().seq, 1);
    store.check_consistency().await.unwrap();
}

#[tokio::test]
async fn reopen_keeps_changes_epoch_and_doc_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let d = doc("doc");
    let changes = chain(&d, 20, 100);
    let epoch = {
        let store = RedbStore::open(&path, sid()).await.unwrap();
        store.append(changes.clone()).await.unwrap();
        store.head().await.unwrap().epoch
    };
    let store = RedbStore::open(&path, sid()).await.unwrap();
    assert_eq!(store.head().await.unwrap().seq, 20);
    assert_eq!(store.head().await.unwrap().epoch, epoch);
    let ids: Vec<_> = changes.iter().map(|c| c.id()).collect();
    let metas = store.changes_for_doc(&d, false).await.unwrap();
    assert_eq!(metas.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert_eq!(store.get_changes(&ids).await.unwrap(), changes);
    let more = change(&d, &[ids[19]], 5);
    assert_eq!(
        store.append(vec![more.clone()]).await.unwrap().new,
        vec![more.id()]
    );
    assert_eq!(store.scan(20, 10).await.unwrap()[0].seq, 21);
}

#[tokio::test]
async fn other_store_id_is_a_store_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    drop(RedbStore::open(&path, sid()).await.unwrap());
    let other = StoreId::new("someone/else").unwrap();
    match RedbStore::open(&path, other.clone()).await {
        Err(Error::StoreMismatch { expected, found }) => {
            assert_eq!(expected, other);
            assert_eq!(found, sid());
        }
        r => panic!("expected StoreMismatch, got {r:?}"),
    }
}

#[tokio::test]
async fn other_schema_versions_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.redb");
    drop(RedbStore::open(&path, sid()).await.unwrap());
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut meta = w
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            meta.insert("schema_version", &99u32.to_be_bytes()[..])
                .unwrap();
        }
        w.commit().unwrap();
    }
    match RedbStore::open(&path, sid()).await {
        Err(e @ Error::UnsupportedVersion { found: 99, .. }) => {
            assert!(e.to_string().contains("newer"), "{e}")
        }
        r => panic!("expected UnsupportedVersion, got {r:?}"),
    }
    // A schema 3 file holds format v1 changes: refused, saying why and
    // what to do.
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut meta = w
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            meta.insert("schema_version", &3u32.to_be_bytes()[..])
                .unwrap();
        }
        w.commit().unwrap();
    }
    match RedbStore::open(&path, sid()).await {
        Err(e @ Error::UnsupportedVersion { found: 3, .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("format v1") && msg.contains("sync"), "{msg}")
        }
        r => panic!("expected UnsupportedVersion, got {r:?}"),
    }
}

#[tokio::test]
async fn a_redb_file_that_is_not_a_cairn_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A foreign table, and a `meta` table with other types.
    for table in ["stuff", "meta"] {
        let path = dir.path().join(format!("foreign-{table}.redb"));
        {
            let db = redb::Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w
                    .open_table(redb::TableDefinition::<u64, u64>::new(table))
                    .unwrap();
                t.insert(1, 2).unwrap();
            }
            w.commit().unwrap();
        }
        let r = RedbStore::open(&path, sid()).await;
        assert!(matches!(r, Err(Error::Corrupt { .. })), "{table}: {r:?}");
    }
}

#[tokio::test]
async fn an_empty_redb_database_becomes_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.redb");
    drop(redb::Database::create(&path).unwrap());
    let store = RedbStore::open(&path, sid()).await.unwrap();
    assert_eq!(store.head().await.unwrap().seq, 0);
}

#[tokio::test]
async fn opening_a_file_twice_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twice.redb");
    let _a = RedbStore::open(&path, sid()).await.unwrap();
    let b = RedbStore::open(&path, sid()).await;
    assert!(
        matches!(
            b,
            Err(Error::Backend {
                retryable: true,
                ..
            })
        ),
        "{b:?}"
    );
}

#[tokio::test]
async fn tampered_payload_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.redb");
    let c = change(&doc("a"), &[], 32);
    {
        let store = RedbStore::open(&path, sid()).await.unwrap();
        store.append(vec![c.clone()]).await.unwrap();
    }
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w
                .open_table(redb::TableDefinition::<u64, &[u8]>::new("payloads"))
                .unwrap();
            t.insert(1, &[0u8; 32][..]).unwrap();
        }
        w.commit().unwrap();
    }
    let store = RedbStore::open(&path, sid()).await.unwrap();
    assert!(matches!(
        store.check_consistency().await,
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(
        store.get_changes(&[c.id()]).await,
        Err(Error::Corrupt { .. })
    ));
    // Metadata alone is intact.
    assert_eq!(store.get_metas(&[c.id()]).await.unwrap(), vec![c.meta]);
}

#[tokio::test]
async fn non_durable_mode_is_flushed_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nd.redb");
    let changes = chain(&doc("a"), 10, 10);
    {
        let store = RedbStore::open_non_durable(&path, sid()).await.unwrap();
        assert!(!store.capabilities().durable);
        for c in &changes {
            store.append(vec![c.clone()]).await.unwrap();
        }
    }
    let store = RedbStore::open(&path, sid()).await.unwrap();
    assert!(store.capabilities().durable);
    assert_eq!(store.head().await.unwrap().seq, 10);
    store.check_consistency().await.unwrap();
}

#[tokio::test]
async fn subscription_ends_when_the_store_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("s.redb"), sid())
        .await
        .unwrap();
    let mut stream = store.subscribe().await.unwrap();
    let c = change(&doc("a"), &[], 1);
    store.append(vec![c.clone()]).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().id, c.id());
    drop(store);
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn limits_are_enforced_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let limits = cairn::Limits {
        max_batch_changes: 3,
        ..cairn::Limits::DEFAULT
    };
    let store = RedbStore::open_with(
        dir.path().join("l.redb"),
        sid(),
        RedbOptions::default()
            .limits(limits)
            .durability(Durability::Immediate),
    )
    .await
    .unwrap();
    let r = store.append(chain(&doc("a"), 4, 1)).await;
    assert!(matches!(r, Err(Error::TooLarge { .. })));
    assert_eq!(store.head().await.unwrap().seq, 0);
    assert_eq!(store.stats().commits, 0);
}

#[test]
fn works_without_a_tokio_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nort.redb");
    futures::executor::block_on(async {
        let store = RedbStore::open(&path, sid()).await.unwrap();
        let c = change(&doc("a"), &[], 3);
        store.append(vec![c.clone()]).await.unwrap();
        assert_eq!(store.get_changes(&[c.id()]).await.unwrap(), vec![c]);
        store.check_consistency().await.unwrap();
    });
}

#[tokio::test]
async fn large_batches_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("big.redb"), sid())
        .await
        .unwrap();
    let changes = chain(&doc("big"), 300, 4096);
    let out = store.append(changes.clone()).await.unwrap();
    assert_eq!(out.new.len(), 300);
    let ids: Vec<_> = changes.iter().map(|c| c.id()).collect();
    assert_eq!(store.get_changes(&ids).await.unwrap(), changes);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(store.all_change_ids().await.unwrap(), sorted);
    let report = store.check_consistency().await.unwrap();
    assert_eq!(report.payload_bytes, 300 * 4096);
}

/// The bucket fingerprints are checkpointed every 10,000 changes and at
/// close; across checkpoints and a reopen they still equal a walk over the
/// ids, and the file passes its consistency check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_checkpoints_stay_consistent_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.redb");
    let walk = |ids: &[cairn::ChangeId], r: &cairn::IdRange| {
        let mut fp = cairn::Fingerprint::default();
        ids.iter().filter(|i| r.contains(i)).for_each(|i| fp.add(i));
        fp.summary()
    };
    let mut half = [0u8; 32];
    half[0] = 0x80;
    let ranges = [
        cairn::IdRange::ALL,
        cairn::IdRange {
            start: cairn::ChangeId::from_bytes(half),
            end: None,
        },
    ];
    {
        let store = RedbStore::open_non_durable(&path, sid()).await.unwrap();
        // 23 batches of 1,000: checkpoints at 10,000 and 20,000, 3,000 after.
        for i in 0..23 {
            store
                .append(chain(&doc(&format!("d{i}")), 1000, 8))
                .await
                .unwrap();
        }
        store.check_consistency().await.unwrap();
        let ids = store.all_change_ids().await.unwrap();
        for r in &ranges {
            assert_eq!(store.range_summary(r).await.unwrap(), walk(&ids, r));
        }
    }
    let store = RedbStore::open(&path, sid()).await.unwrap();
    let report = store.check_consistency().await.unwrap();
    assert_eq!(report.changes, 23_000);
    store.append(chain(&doc("more"), 50, 8)).await.unwrap();
    store.check_consistency().await.unwrap();
    let ids = store.all_change_ids().await.unwrap();
    for r in &ranges {
        assert_eq!(store.range_summary(r).await.unwrap(), walk(&ids, r));
    }
}

#[tokio::test]
async fn read_only_and_existing_opens_never_create_and_take_the_id_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.redb");
    for r in [
        RedbStore::open_read_only(&missing).await.map(|_| ()),
        RedbStore::open_existing(&missing, RedbOptions::default())
            .await
            .map(|_| ()),
    ] {
        assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
    }
    assert!(!missing.exists(), "nothing was created");
    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    for r in [
        RedbStore::open_read_only(&empty).await.map(|_| ()),
        RedbStore::open_existing(&empty, RedbOptions::default())
            .await
            .map(|_| ()),
    ] {
        assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
    }
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0, "left alone");

    let path = dir.path().join("s.redb");
    let batch = chain(&doc("d"), 5, 10);
    {
        let s = RedbStore::open(&path, sid()).await.unwrap();
        s.append(batch.clone()).await.unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    {
        let ro = RedbStore::open_read_only(&path).await.unwrap();
        assert!(ro.is_read_only());
        assert_eq!(ro.store_id(), &sid());
        assert_eq!(ro.head().await.unwrap().seq, 5);
        assert_eq!(ro.scan(0, 10).await.unwrap().len(), 5);
        ro.check_consistency().await.unwrap();
        let r = ro.append(chain(&doc("e"), 1, 10)).await;
        assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "read-only wrote nothing"
    );
    let rw = RedbStore::open_existing(&path, RedbOptions::default())
        .await
        .unwrap();
    assert_eq!(rw.store_id(), &sid());
    assert!(!rw.is_read_only());
    rw.append(chain(&doc("e"), 1, 10)).await.unwrap();
    assert_eq!(rw.head().await.unwrap().seq, 6);
}

/// Found by the simulator (cairn-sim, seeds 123, 163, 642, 707, 809 with
/// saved sync cursors): a non-durable store that lost acknowledged appends
/// in a crash reused their sequence numbers under the same epoch, so a
/// cursor saved before the crash skipped the changes that took them.
#[tokio::test]
async fn non_durable_store_reports_a_new_epoch_on_every_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nd-epoch.redb");
    let first = {
        let store = RedbStore::open_non_durable(&path, sid()).await.unwrap();
        store.append(chain(&doc("a"), 3, 4)).await.unwrap();
        store.head().await.unwrap().epoch
    };
    let store = RedbStore::open_non_durable(&path, sid()).await.unwrap();
    let head = store.head().await.unwrap();
    assert_eq!(head.seq, 3);
    assert_ne!(
        head.epoch, first,
        "a saved cursor must not be trusted after a reopen"
    );
    drop(store);
    // A durable store keeps its epoch (its acknowledged appends survive).
    let a = RedbStore::open(&path, sid())
        .await
        .unwrap()
        .head()
        .await
        .unwrap()
        .epoch;
    let b = RedbStore::open(&path, sid())
        .await
        .unwrap()
        .head()
        .await
        .unwrap()
        .epoch;
    assert_eq!(a, b);
}
