//! `cairn::reconcile::difference_by_ranges` between memory stores: the differences
//! it finds, and the work it does (rounds, summaries, ids listed), checked
//! against a plain count of ids by prefix. The conformance case
//! `reconciliation_sync_transfers_only_the_difference` checks the result
//! on every store; these pin the walk itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use cairn::reconcile::{RangeOptions, difference_by_ranges as difference};
use cairn::{
    AppendOnlyStore, AppendOutcome, Change, ChangeBuilder, ChangeId, ChangeKind, ChangeStream,
    Digest, DocId, Head, IdRange, RangeSummary, Result, ScanItem, StoreId,
};
use cairn_memory::MemoryStore;

fn changes(n: usize, salt: u8) -> Vec<Change> {
    (0..n)
        .map(|i| {
            ChangeBuilder::new(ChangeKind::Change, DocId::new("d").unwrap())
                .payload(vec![salt, i as u8, (i >> 8) as u8, (i >> 16) as u8])
                .build()
                .unwrap()
        })
        .collect()
}

async fn store(cs: &[Change]) -> MemoryStore {
    let s = MemoryStore::new(StoreId::new("t").unwrap());
    s.append(cs.to_vec()).await.unwrap();
    s
}

fn nibble(id: &ChangeId, i: usize) -> u8 {
    let b = id.as_bytes()[i / 2];
    if i.is_multiple_of(2) { b >> 4 } else { b & 0xf }
}

/// How many of `ids` share the first `k` hex digits of `x`.
fn sharing(ids: &[ChangeId], x: &ChangeId, k: usize) -> u64 {
    ids.iter()
        .filter(|id| (0..k).all(|i| nibble(id, i) == nibble(x, i)))
        .count() as u64
}

#[tokio::test]
async fn one_extra_id_is_found_down_one_path_of_the_prefix_tree() {
    let common = changes(3000, 1);
    let extra = changes(1, 2).remove(0);
    let mut with = common.clone();
    with.push(extra.clone());
    let (local, remote) = (store(&with).await, store(&common).await);
    let local_ids: Vec<ChangeId> = with.iter().map(Change::id).collect();
    let remote_ids: Vec<ChangeId> = common.iter().map(Change::id).collect();
    for leaf_size in [0u64, 1, 8, 64, 500] {
        let opts = RangeOptions { leaf_size };
        let d = difference(&local, &remote, &opts).await.unwrap();
        assert_eq!(d.local_only, vec![extra.id()], "leaf_size {leaf_size}");
        assert!(d.remote_only.is_empty());
        // The walk: at depth k only the range holding the extra id
        // differs; it is listed at the first depth where either side holds
        // at most `leaf_size` ids in it, else split into 16.
        let x = extra.id();
        let k = (0..=64)
            .find(|&k| sharing(&local_ids, &x, k).min(sharing(&remote_ids, &x, k)) <= leaf_size)
            .unwrap();
        assert_eq!(d.rounds, k as u32 + 1, "leaf_size {leaf_size}: rounds");
        assert_eq!(
            d.summaries,
            1 + 16 * k as u64,
            "leaf_size {leaf_size}: summaries"
        );
        assert_eq!(
            d.ids_listed,
            sharing(&local_ids, &x, k) + sharing(&remote_ids, &x, k),
            "leaf_size {leaf_size}: ids listed"
        );
        // The other way round: the same walk, the sides swapped.
        let back = difference(&remote, &local, &opts).await.unwrap();
        assert_eq!(back.remote_only, vec![x]);
        assert!(back.local_only.is_empty());
        assert_eq!(
            (back.rounds, back.summaries, back.ids_listed),
            (d.rounds, d.summaries, d.ids_listed)
        );
    }
}

#[tokio::test]
async fn equal_stores_settle_in_one_round_without_listing() {
    let cs = changes(500, 3);
    let (a, b) = (store(&cs).await, store(&cs).await);
    let d = difference(&a, &b, &RangeOptions::default()).await.unwrap();
    assert!(d.local_only.is_empty() && d.remote_only.is_empty());
    assert_eq!((d.rounds, d.summaries, d.ids_listed), (1, 1, 0));
}

#[tokio::test]
async fn a_leaf_of_more_than_one_page_is_listed_in_full() {
    // The remote is empty, so the root is a leaf at once and the local side
    // lists its 5,000 ids in pages of 4,096.
    let cs = changes(5000, 4);
    let (local, remote) = (store(&cs).await, store(&[]).await);
    let d = difference(&local, &remote, &RangeOptions::default())
        .await
        .unwrap();
    let mut want: Vec<ChangeId> = cs.iter().map(Change::id).collect();
    want.sort();
    assert_eq!(d.local_only, want);
    assert_eq!((d.rounds, d.summaries, d.ids_listed), (1, 1, 5000));
}

/// A remote whose summaries of ranges holding `lie_about` never match (a
/// fingerprint off by one): the walk follows that id down to a range of
/// one id, 64 digits deep, and settles it by listing.
#[derive(Debug)]
struct Liar {
    inner: MemoryStore,
    lie_about: ChangeId,
}

#[async_trait]
impl AppendOnlyStore for Liar {
    fn store_id(&self) -> &StoreId {
        self.inner.store_id()
    }
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        self.inner.append(changes).await
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        self.inner.get_changes(ids).await
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
    async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        self.inner.ids_in_range(range, limit).await
    }
    async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        let mut s = self.inner.range_summary(range).await?;
        let x = self.lie_about;
        if x >= range.start && range.end.is_none_or(|e| x < e) {
            let mut b = *s.fingerprint.as_bytes();
            b[0] ^= 1;
            s.fingerprint = Digest::from_bytes(b);
        }
        Ok(s)
    }
}

#[tokio::test]
async fn a_range_that_never_matches_is_listed_at_the_deepest_level() {
    let cs = changes(40, 5);
    let local = store(&cs).await;
    let remote = Liar {
        inner: store(&cs).await,
        lie_about: cs[7].id(),
    };
    // leaf_size 0: only an empty side, or the deepest level, ends the walk.
    let d = difference(&local, &remote, &RangeOptions { leaf_size: 0 })
        .await
        .unwrap();
    assert!(d.local_only.is_empty() && d.remote_only.is_empty());
    assert_eq!(d.rounds, 65, "levels 0 to 64");
    assert_eq!(d.summaries, 1 + 16 * 64);
    assert_eq!(d.ids_listed, 2, "the one id, once from each side");
}
