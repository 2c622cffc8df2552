//! The [`AppendOnlyStore`] contract and the types its methods exchange.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph;
use crate::ids::{ChangeId, Digest, DocId, StoreId};
use crate::record::{Change, ChangeMeta};
use crate::riblt::{self, SymbolReply, SymbolRequest};

/// A live stream of newly appended metadata, from [`AppendOnlyStore::subscribe`].
pub type ChangeStream = BoxStream<'static, Result<ChangeMeta>>;

/// The trait object type: `Arc<DynAppendOnlyStore>` holds any store.
pub type DynAppendOnlyStore = dyn AppendOnlyStore;

/// A store's position: every change it holds has a sequence number in
/// `1..=seq`, in local arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Head {
    /// Identifies this incarnation of the store. It changes when the store is
    /// reset or recreated, which invalidates saved cursors.
    pub epoch: u64,
    /// The highest sequence number assigned (0 for an empty store).
    pub seq: u64,
}

/// One entry of [`AppendOnlyStore::scan`]: a change's metadata and its local
/// sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanItem {
    /// Local arrival sequence number (starts at 1).
    pub seq: u64,
    /// The change's metadata.
    pub meta: ChangeMeta,
}

/// What [`AppendOnlyStore::append`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AppendOutcome {
    /// Ids stored by this call, in the order they were given sequence numbers.
    pub new: Vec<ChangeId>,
    /// How many changes of the batch were already present (or repeated in it).
    pub duplicates: usize,
}

/// A half-open range of change ids `[start, end)`; `end == None` means
/// unbounded. Used by set reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdRange {
    /// Inclusive lower bound.
    pub start: ChangeId,
    /// Exclusive upper bound, or `None` for no upper bound.
    pub end: Option<ChangeId>,
}

impl IdRange {
    /// Every id.
    pub const ALL: IdRange = IdRange {
        start: ChangeId::MIN,
        end: None,
    };

    /// Whether `id` lies in the range.
    pub fn contains(&self, id: &ChangeId) -> bool {
        *id >= self.start && self.end.is_none_or(|e| *id < e)
    }
}

/// Count and fingerprint of the ids in a range. Two stores hold the same ids
/// in a range exactly when (with overwhelming probability) their summaries
/// are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RangeSummary {
    /// Number of ids in the range.
    pub count: u64,
    /// [`Fingerprint`] of the ids in the range.
    pub fingerprint: Digest,
}

/// An order-independent, incrementally updatable fingerprint of a set of ids:
/// the sum of the ids as 256-bit little-endian integers (mod 2^256), hashed
/// with the count. Adding ids in any order gives the same result, so stores
/// can keep it up to date on append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint {
    sum: [u64; 4],
    count: u64,
}

impl Fingerprint {
    /// Add one id.
    pub fn add(&mut self, id: &ChangeId) {
        let b = id.as_bytes();
        let mut carry = 0u128;
        for (i, limb) in self.sum.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            let v = u128::from(*limb) + u128::from(u64::from_le_bytes(w)) + carry;
            *limb = v as u64;
            carry = v >> 64;
        }
        self.count += 1;
    }

    /// Add everything `other` holds (the fingerprint of the union of two
    /// disjoint sets).
    pub fn merge(&mut self, other: &Fingerprint) {
        let mut carry = 0u128;
        for (limb, o) in self.sum.iter_mut().zip(other.sum) {
            let v = u128::from(*limb) + u128::from(o) + carry;
            *limb = v as u64;
            carry = v >> 64;
        }
        self.count += other.count;
    }

    /// How many ids were added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// A fixed 40-byte encoding (sum little-endian, then count big-endian),
    /// for stores that persist fingerprints.
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        for (i, limb) in self.sum.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
        }
        out[32..].copy_from_slice(&self.count.to_be_bytes());
        out
    }

    /// Read [`Fingerprint::to_bytes`].
    pub fn from_bytes(bytes: &[u8; 40]) -> Self {
        let mut fp = Fingerprint::default();
        for (i, limb) in fp.sum.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            *limb = u64::from_le_bytes(w);
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&bytes[32..]);
        fp.count = u64::from_be_bytes(c);
        fp
    }

    /// The summary of everything added.
    pub fn summary(&self) -> RangeSummary {
        let mut h = blake3::Hasher::new();
        for limb in self.sum {
            h.update(&limb.to_le_bytes());
        }
        h.update(&self.count.to_be_bytes());
        RangeSummary {
            count: self.count,
            fingerprint: Digest::from_bytes(*h.finalize().as_bytes()),
        }
    }
}

/// Fingerprints of the ids in each of 4,096 buckets (ids sharing their
/// first 12 bits), kept up to date on append, so that
/// [`AppendOnlyStore::range_summary`] of any range on bucket boundaries —
/// every range of the first three levels of [`crate::reconcile`]'s prefix
/// tree — is a merge of at most 4,096 bucket fingerprints instead of a walk
/// over the ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FingerprintBuckets {
    buckets: Vec<Fingerprint>,
}

impl Default for FingerprintBuckets {
    fn default() -> Self {
        FingerprintBuckets {
            buckets: vec![Fingerprint::default(); Self::COUNT],
        }
    }
}

impl FingerprintBuckets {
    /// Number of buckets.
    pub const COUNT: usize = 4096;

    /// The bucket an id falls in (its first 12 bits).
    pub fn bucket_of(id: &ChangeId) -> usize {
        let b = id.as_bytes();
        (usize::from(b[0]) << 4) | usize::from(b[1] >> 4)
    }

    /// Add one id to its bucket.
    pub fn add(&mut self, id: &ChangeId) {
        self.buckets[Self::bucket_of(id)].add(id);
    }

    /// One bucket's fingerprint (`None` past the last bucket).
    pub fn get(&self, bucket: usize) -> Option<&Fingerprint> {
        self.buckets.get(bucket)
    }

    /// Replace one bucket's fingerprint (for stores that persist them).
    pub fn set(&mut self, bucket: usize, fp: Fingerprint) {
        if let Some(b) = self.buckets.get_mut(bucket) {
            *b = fp;
        }
    }

    /// The buckets `range` covers exactly, if it starts and ends on bucket
    /// boundaries.
    pub fn aligned(range: &IdRange) -> Option<std::ops::Range<usize>> {
        fn boundary(id: &ChangeId) -> Option<usize> {
            let b = id.as_bytes();
            (b[1] & 0x0f == 0 && b[2..].iter().all(|&x| x == 0))
                .then(|| FingerprintBuckets::bucket_of(id))
        }
        let start = boundary(&range.start)?;
        let end = match &range.end {
            None => Self::COUNT,
            Some(e) => boundary(e)?,
        };
        Some(start..end.max(start))
    }

    /// The summary of `range` from the buckets, if it is aligned.
    pub fn summary(&self, range: &IdRange) -> Option<RangeSummary> {
        let covered = Self::aligned(range)?;
        let mut fp = Fingerprint::default();
        for b in &self.buckets[covered] {
            fp.merge(b);
        }
        Some(fp.summary())
    }
}

/// What a store supports natively. The conformance suite and the sync engine
/// read this to choose a fast path or a correct default.
///
/// Construct with `Capabilities { durable: true, ..Capabilities::default() }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// `find_new_changes` and `all_change_ids` answer from an index, without
    /// scanning every change.
    pub native_find_new: bool,
    /// `changes_for_doc` and `find_new_changes_for_doc` use a per-document index.
    pub native_doc_index: bool,
    /// `range_summary` and `ids_in_range` answer from maintained state.
    pub native_reconciliation: bool,
    /// Acknowledged appends survive a process crash; the store can be reopened.
    pub durable: bool,
    /// The store is (or fronts) a remote peer.
    pub remote: bool,
}

/// Limits a store enforces on one `append` batch. Exceeding one is an
/// [`Error::TooLarge`] and stores nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most changes in one batch.
    pub max_batch_changes: usize,
    /// Most bytes (payloads plus headers) in one batch.
    pub max_batch_bytes: u64,
    /// Largest single payload.
    pub max_payload_bytes: u64,
}

impl Limits {
    /// The defaults: 100,000 changes, 1 GiB per batch, 256 MiB per payload.
    pub const DEFAULT: Limits = Limits {
        max_batch_changes: 100_000,
        max_batch_bytes: 1 << 30,
        max_payload_bytes: 256 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Check a batch for `append` and put it in the order to store it.
///
/// Every store calls this first, so they all reject the same input the same
/// way: limits ([`Error::TooLarge`]), then each change's integrity
/// ([`Error::Integrity`]). It drops repeats within the batch (counted in the
/// second return value) and sorts the rest so deps come first. Nothing is
/// stored if it returns an error.
pub fn prepare_batch(changes: Vec<Change>, limits: &Limits) -> Result<(Vec<Change>, usize)> {
    check_batch_limits(&changes, limits)?;
    check_batch_integrity(&changes)?;
    Ok(order_batch(changes))
}

/// [`prepare_batch`] without the integrity check, for a store that checks
/// the batch while it writes it and must then commit nothing unless
/// [`check_batch_integrity`] of the same input (every change, repeats
/// included) passes. Limits are checked as `prepare_batch` checks them.
///
/// ```
/// # use cairn::{ChangeBuilder, ChangeKind, DocId, Limits};
/// let c = ChangeBuilder::new(ChangeKind::Change, DocId::new("d")?)
///     .payload(b"hi".to_vec())
///     .build()?;
/// let input = vec![c.clone(), c];
/// let (batch, repeats) = cairn::prepare_batch_unchecked(input.clone(), &Limits::DEFAULT)?;
/// assert_eq!((batch.len(), repeats), (1, 1));
/// // ... start writing `batch`, and meanwhile:
/// cairn::check_batch_integrity(&input)?; // commit only if this passes
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn prepare_batch_unchecked(
    changes: Vec<Change>,
    limits: &Limits,
) -> Result<(Vec<Change>, usize)> {
    check_batch_limits(&changes, limits)?;
    Ok(order_batch(changes))
}

/// Check every change of a batch as [`prepare_batch`] does: the first
/// that fails gives its [`Error::Integrity`], naming its id.
pub fn check_batch_integrity(changes: &[Change]) -> Result<()> {
    changes.iter().try_for_each(Change::check_integrity)
}

fn check_batch_limits(changes: &[Change], limits: &Limits) -> Result<()> {
    if changes.len() > limits.max_batch_changes {
        return Err(Error::TooLarge {
            what: "append batch (changes)",
            limit: limits.max_batch_changes as u64,
            actual: changes.len() as u64,
        });
    }
    let mut bytes = 0u64;
    for c in changes {
        let len = c.payload.len() as u64;
        if len > limits.max_payload_bytes {
            return Err(Error::TooLarge {
                what: "payload",
                limit: limits.max_payload_bytes,
                actual: len,
            });
        }
        bytes = bytes.saturating_add(c.size_hint() as u64);
    }
    if bytes > limits.max_batch_bytes {
        return Err(Error::TooLarge {
            what: "append batch (bytes)",
            limit: limits.max_batch_bytes,
            actual: bytes,
        });
    }
    Ok(())
}

/// Drop repeats (counted) and sort so that deps come first.
fn order_batch(changes: Vec<Change>) -> (Vec<Change>, usize) {
    let before = changes.len();
    let mut seen = HashSet::with_capacity(before);
    let unique: Vec<Change> = changes
        .into_iter()
        .filter(|c| seen.insert(c.id()))
        .collect();
    let repeats = before - unique.len();
    (
        graph::topo_sort(unique, |c| c.id(), |c| &c.meta.deps),
        repeats,
    )
}

/// Page size the default method implementations scan with.
const DEFAULT_PAGE: usize = 1024;

/// An append-only, content-addressed store of changes.
///
/// # Contract
///
/// - A store only grows: a change, once acknowledged by `append`, is returned
///   by every later read, unchanged, for the life of the store (its epoch).
/// - Changes are identified by content: the same id always means the same
///   bytes, and every change a store returns passes
///   [`Change::check_integrity`].
/// - Every change has a local sequence number in arrival order; sequence
///   numbers are `1, 2, 3, …` with no gaps, and a reader never sees `N + 1`
///   without `N`.
/// - No method panics on any input; bad input is a typed [`Error`] and leaves
///   the store as it was.
/// - All methods may be called concurrently from many tasks.
///
/// Only `store_id`, `append`, `get_changes`, `scan`, `head` and `subscribe`
/// are required. The others have correct defaults built on `scan`; a store
/// overrides them when it can answer from an index, and says so in
/// [`capabilities`](AppendOnlyStore::capabilities).
#[async_trait]
pub trait AppendOnlyStore: Send + Sync + fmt::Debug {
    /// The store id: only stores with the same id sync with each other.
    fn store_id(&self) -> &StoreId;

    /// What this store supports natively.
    ///
    /// # Behavior
    /// - Must not change over the life of the store object.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Append a batch of changes; returns which were new.
    ///
    /// # Behavior
    /// - Must check every change's integrity (id and payload hash recomputed)
    ///   and enforce its [`Limits`]; on any failure it must return the error
    ///   and store nothing of the batch.
    /// - A batch must be atomic: readers see all of its new changes or none.
    /// - Appending a change that is already present must succeed and change
    ///   nothing (idempotent by id); it is counted in `duplicates`.
    /// - New changes must get consecutive sequence numbers, deps before
    ///   dependents within the batch.
    /// - Missing deps must be accepted: a store holds what it is given.
    /// - An empty batch must succeed and change nothing.
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome>;

    /// The full changes for the ids this store holds, in the order asked.
    ///
    /// # Behavior
    /// - Ids the store does not hold must be skipped, not an error.
    /// - Must return changes in the order their ids were asked; an id asked
    ///   twice is returned twice.
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>>;

    /// Metadata for the ids this store holds, in the order asked.
    ///
    /// # Behavior
    /// - Same as `get_changes`, without payloads.
    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        Ok(self
            .get_changes(ids)
            .await?
            .into_iter()
            .map(|c| c.meta)
            .collect())
    }

    /// For each id, whether the store holds it.
    ///
    /// # Behavior
    /// - Must return one bool per id, in the order asked.
    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        let held: HashSet<ChangeId> = self
            .get_metas(ids)
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect();
        Ok(ids.iter().map(|id| held.contains(id)).collect())
    }

    /// Changes in local arrival order, after sequence number `after`.
    ///
    /// # Behavior
    /// - Must return at most `limit` items with sequence numbers greater than
    ///   `after`, in increasing order with no gaps.
    /// - `scan(0, n)` must start at the first change.
    /// - A change with sequence number N + 1 must never be returned unless N
    ///   is visible too.
    /// - `limit == 0` must return nothing.
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>>;

    /// The store's epoch and highest sequence number.
    ///
    /// # Behavior
    /// - `seq` must equal the number of changes held.
    /// - `epoch` must stay the same for the life of the store, including
    ///   across reopening a durable store.
    async fn head(&self) -> Result<Head>;

    /// A live stream of the metadata of changes appended from now on.
    ///
    /// # Behavior
    /// - Every change appended after `subscribe` returns must be delivered
    ///   exactly once, in sequence order, including changes appended while
    ///   the subscriber is slow (nothing is dropped on lag).
    /// - Changes present before the call must not be delivered.
    async fn subscribe(&self) -> Result<ChangeStream>;

    /// Metadata of every change this store holds whose id is not in `have`.
    ///
    /// # Behavior
    /// - Must return exactly the held changes not in `have`, each once, in
    ///   arrival order; ids in `have` the store does not hold are ignored.
    async fn find_new_changes(&self, have: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        let have: HashSet<&ChangeId> = have.iter().collect();
        let mut out = Vec::new();
        scan_all(self, |m| {
            if !have.contains(&m.id) {
                out.push(m);
            }
        })
        .await?;
        Ok(out)
    }

    /// Like `find_new_changes`, within one document.
    ///
    /// # Behavior
    /// - Must return exactly the held changes of `doc` not in `have`, in
    ///   dependency order.
    async fn find_new_changes_for_doc(
        &self,
        have: &[ChangeId],
        doc: &DocId,
    ) -> Result<Vec<ChangeMeta>> {
        let have: HashSet<&ChangeId> = have.iter().collect();
        Ok(self
            .changes_for_doc(doc, false)
            .await?
            .into_iter()
            .filter(|m| !have.contains(&m.id))
            .collect())
    }

    /// Every change id the store holds, sorted ascending.
    ///
    /// # Behavior
    /// - Must return each held id once, sorted.
    async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
        let mut out = Vec::new();
        scan_all(self, |m| out.push(m.id)).await?;
        out.sort_unstable();
        Ok(out)
    }

    /// The metadata needed to load one document.
    ///
    /// # Behavior
    /// - With `from_last_snapshot == false`: every change of `doc`, in
    ///   dependency order.
    /// - With `true`: the snapshot covering the most history, then every
    ///   change of `doc` it does not cover, in dependency order; a change
    ///   concurrent with the snapshot must never be skipped. Without a
    ///   snapshot, the same as `false`. See [`graph::plan_doc_load`].
    /// - An unknown document must give an empty list.
    async fn changes_for_doc(
        &self,
        doc: &DocId,
        from_last_snapshot: bool,
    ) -> Result<Vec<ChangeMeta>> {
        let mut metas = Vec::new();
        scan_all(self, |m| {
            if &m.doc_id == doc {
                metas.push(m);
            }
        })
        .await?;
        Ok(graph::plan_doc_load(metas, from_last_snapshot))
    }

    /// Count and fingerprint of the ids in `range` (for set reconciliation).
    ///
    /// # Behavior
    /// - Must equal [`Fingerprint`] over exactly the held ids in `range`.
    async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        let mut fp = Fingerprint::default();
        for id in self.all_change_ids().await? {
            if range.contains(&id) {
                fp.add(&id);
            }
        }
        Ok(fp.summary())
    }

    /// Up to `limit` held ids in `range`, ascending.
    ///
    /// # Behavior
    /// - Must return the smallest `limit` held ids in `range`, sorted.
    async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        Ok(self
            .all_change_ids()
            .await?
            .into_iter()
            .filter(|id| range.contains(id))
            .take(limit)
            .collect())
    }

    /// Coded symbols of the held ids, for one-message set reconciliation
    /// ([`crate::reconcile::difference`]; the encoding is [`crate::riblt`]).
    ///
    /// # Behavior
    /// - Must refuse a request past [`riblt::MAX_SYMBOLS_PER_REQUEST`] or
    ///   [`riblt::MAX_SYMBOL_INDEX`] with [`Error::InvalidInput`]
    ///   ([`SymbolRequest::check`]).
    /// - Must equal [`riblt::answer`] over exactly the held ids: the same
    ///   total, digest, sketch (if asked) and symbols.
    /// - A store with `native_reconciliation` keeps an [`riblt::Encoder`]
    ///   instead of walking every id: updated on append, or folded in from
    ///   the changes appended since the last call (as the memory store and
    ///   [`riblt::LazyEncoder`] do, so that appends pay nothing).
    async fn coded_symbols(&self, request: &SymbolRequest) -> Result<SymbolReply> {
        request.check()?;
        let ids = self.all_change_ids().await?;
        riblt::answer(ids.iter(), request)
    }
}

/// Visit every change's metadata in arrival order, one bounded page at a
/// time, up to the head at the time of the call.
pub async fn scan_all<S: AppendOnlyStore + ?Sized>(
    store: &S,
    mut visit: impl FnMut(ChangeMeta) + Send,
) -> Result<()> {
    let end = store.head().await?.seq;
    let mut after = 0;
    while after < end {
        let page = store.scan(after, DEFAULT_PAGE).await?;
        let Some(last) = page.last() else { break };
        if last.seq <= after {
            return Err(Error::Protocol {
                reason: format!("scan after {after} returned sequence {}", last.seq),
            });
        }
        after = last.seq;
        for item in page {
            visit(item.meta);
        }
    }
    Ok(())
}

macro_rules! forward_store {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: AppendOnlyStore + ?Sized> AppendOnlyStore for $ptr<T> {
            fn store_id(&self) -> &StoreId { (**self).store_id() }
            fn capabilities(&self) -> Capabilities { (**self).capabilities() }
            async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
                (**self).append(changes).await
            }
            async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
                (**self).get_changes(ids).await
            }
            async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
                (**self).get_metas(ids).await
            }
            async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
                (**self).has_changes(ids).await
            }
            async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
                (**self).scan(after, limit).await
            }
            async fn head(&self) -> Result<Head> { (**self).head().await }
            async fn subscribe(&self) -> Result<ChangeStream> { (**self).subscribe().await }
            async fn find_new_changes(&self, have: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
                (**self).find_new_changes(have).await
            }
            async fn find_new_changes_for_doc(&self, have: &[ChangeId], doc: &DocId) -> Result<Vec<ChangeMeta>> {
                (**self).find_new_changes_for_doc(have, doc).await
            }
            async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
                (**self).all_change_ids().await
            }
            async fn changes_for_doc(&self, doc: &DocId, from_last_snapshot: bool) -> Result<Vec<ChangeMeta>> {
                (**self).changes_for_doc(doc, from_last_snapshot).await
            }
            async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
                (**self).range_summary(range).await
            }
            async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
                (**self).ids_in_range(range, limit).await
            }
            async fn coded_symbols(&self, request: &SymbolRequest) -> Result<SymbolReply> {
                (**self).coded_symbols(request).await
            }
        }
    )*};
}

forward_store!(Arc, Box);

/// Conveniences over [`AppendOnlyStore`], for every store.
#[async_trait]
pub trait AppendOnlyStoreExt: AppendOnlyStore {
    /// Append one change; `true` if it was new.
    async fn append_one(&self, change: Change) -> Result<bool> {
        Ok(!self.append(vec![change]).await?.new.is_empty())
    }

    /// One change by id, if held.
    async fn get_change(&self, id: &ChangeId) -> Result<Option<Change>> {
        Ok(self.get_changes(std::slice::from_ref(id)).await?.pop())
    }

    /// Whether one change is held.
    async fn has_change(&self, id: &ChangeId) -> Result<bool> {
        Ok(self
            .has_changes(std::slice::from_ref(id))
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }

    /// The full changes to load `doc` from its latest snapshot, in order.
    async fn load_doc(&self, doc: &DocId) -> Result<Vec<Change>> {
        let ids: Vec<ChangeId> = self
            .changes_for_doc(doc, true)
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect();
        self.get_changes(&ids).await
    }
}

impl<S: AppendOnlyStore + ?Sized> AppendOnlyStoreExt for S {}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8, m: u8) -> ChangeId {
        let mut b = [n; 32];
        b[1] = m;
        ChangeId::from_bytes(b)
    }

    #[test]
    fn a_fingerprint_counts_what_it_holds() {
        let mut fp = Fingerprint::default();
        assert_eq!(fp.count(), 0);
        for n in 0..5u8 {
            fp.add(&id(n, n));
        }
        assert_eq!(fp.count(), 5);
        assert_eq!(fp.summary().count, 5);
        let mut two = Fingerprint::default();
        two.add(&id(9, 9));
        two.add(&id(8, 8));
        fp.merge(&two);
        assert_eq!(fp.count(), 7);
    }

    #[test]
    fn buckets_hold_what_is_set_and_add_to_the_right_one() {
        let mut buckets = FingerprintBuckets::default();
        let x = id(0xab, 0xcd);
        assert_eq!(FingerprintBuckets::bucket_of(&x), 0xabc);
        buckets.add(&x);
        let mut want = Fingerprint::default();
        want.add(&x);
        assert_eq!(buckets.get(0xabc), Some(&want));
        assert_eq!(buckets.get(0xabb), Some(&Fingerprint::default()));
        assert_eq!(buckets.get(FingerprintBuckets::COUNT), None);
        let mut other = Fingerprint::default();
        other.add(&id(1, 2));
        buckets.set(7, other);
        assert_eq!(buckets.get(7), Some(&other));
        // Past the last bucket: ignored, nothing panics.
        buckets.set(FingerprintBuckets::COUNT, other);
        assert_eq!(buckets.get(FingerprintBuckets::COUNT), None);
    }

    fn small(n: usize, len: usize) -> Vec<Change> {
        (0..n)
            .map(|i| {
                crate::ChangeBuilder::new(
                    crate::ChangeKind::Change,
                    crate::DocId::new("d").unwrap(),
                )
                .created_at(1)
                .payload(vec![i as u8; len])
                .build()
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn batch_limits_are_exact() {
        let three = small(3, 10);
        let bytes: u64 = three.iter().map(|c| c.size_hint() as u64).sum();
        let at = Limits {
            max_batch_changes: 3,
            max_batch_bytes: bytes,
            max_payload_bytes: 10,
        };
        let (kept, repeats) = prepare_batch(three.clone(), &at).unwrap();
        assert_eq!((kept.len(), repeats), (3, 0));
        for (limits, what) in [
            (
                Limits {
                    max_batch_changes: 2,
                    ..at
                },
                "append batch (changes)",
            ),
            (
                Limits {
                    max_batch_bytes: bytes - 1,
                    ..at
                },
                "append batch (bytes)",
            ),
            (
                Limits {
                    max_payload_bytes: 9,
                    ..at
                },
                "payload",
            ),
        ] {
            match prepare_batch(three.clone(), &limits) {
                Err(Error::TooLarge { what: w, .. }) => assert_eq!(w, what),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_unchecked_half_orders_and_the_check_names_the_bad_change() {
        let mut three = small(3, 10);
        three.push(three[0].clone());
        let mut bad = three[1].clone();
        bad.payload = bytes::Bytes::from_static(b"not what was hashed");
        bad.meta.payload_len = bad.payload.len() as u64;
        let tampered = vec![three[0].clone(), bad.clone(), three[2].clone()];

        // Unchecked: drops the repeat, keeps a tampered change, enforces limits.
        let (kept, repeats) = prepare_batch_unchecked(three.clone(), &Limits::DEFAULT).unwrap();
        assert_eq!((kept.len(), repeats), (3, 1));
        let (kept, _) = prepare_batch_unchecked(tampered.clone(), &Limits::DEFAULT).unwrap();
        assert!(kept.iter().any(|c| c.payload == bad.payload));
        let tight = Limits {
            max_batch_changes: 2,
            ..Limits::DEFAULT
        };
        assert!(matches!(
            prepare_batch_unchecked(three.clone(), &tight),
            Err(Error::TooLarge { .. })
        ));

        // The check passes the genuine batch and names the tampered change.
        check_batch_integrity(&three).unwrap();
        match check_batch_integrity(&tampered) {
            Err(Error::Integrity { id, .. }) => assert_eq!(id, bad.meta.id),
            other => panic!("{other:?}"),
        }
        // prepare_batch is the two together.
        assert!(matches!(
            prepare_batch(tampered, &Limits::DEFAULT),
            Err(Error::Integrity { .. })
        ));
        assert_eq!(prepare_batch(three, &Limits::DEFAULT).unwrap().1, 1);
    }

    #[test]
    fn merge_equals_adding_everything() {
        let ids: Vec<ChangeId> = (0..50u8).map(|i| id(i.wrapping_mul(37), i)).collect();
        let mut all = Fingerprint::default();
        ids.iter().for_each(|i| all.add(i));
        let (mut a, mut b) = (Fingerprint::default(), Fingerprint::default());
        ids[..20].iter().for_each(|i| a.add(i));
        ids[20..].iter().for_each(|i| b.add(i));
        a.merge(&b);
        assert_eq!(a.summary(), all.summary());
        assert_eq!(Fingerprint::from_bytes(&all.to_bytes()), all);
    }

    #[test]
    fn buckets_answer_aligned_ranges_like_a_walk() {
        let ids: Vec<ChangeId> = (0..=255u8).map(|i| id(i, i.wrapping_mul(13))).collect();
        let mut buckets = FingerprintBuckets::default();
        ids.iter().for_each(|i| buckets.add(i));
        let walk = |r: &IdRange| {
            let mut fp = Fingerprint::default();
            ids.iter().filter(|i| r.contains(i)).for_each(|i| fp.add(i));
            fp.summary()
        };
        let mut lo = [0u8; 32];
        lo[0] = 0x40;
        let mut hi = [0u8; 32];
        hi[0] = 0x9a;
        hi[1] = 0xb0;
        for r in [
            IdRange::ALL,
            IdRange {
                start: ChangeId::from_bytes(lo),
                end: Some(ChangeId::from_bytes(hi)),
            },
            IdRange {
                start: ChangeId::from_bytes(hi),
                end: None,
            },
            IdRange {
                start: ChangeId::from_bytes(hi),
                end: Some(ChangeId::from_bytes(lo)),
            },
        ] {
            assert_eq!(buckets.summary(&r), Some(walk(&r)), "{r:?}");
        }
        let mut odd = [0u8; 32];
        odd[5] = 1;
        assert_eq!(
            buckets.summary(&IdRange {
                start: ChangeId::from_bytes(odd),
                end: None
            }),
            None
        );
    }
}
