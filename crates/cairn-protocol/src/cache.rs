//! What every network store does the same way, whatever carries the
//! bytes: answer from a local cache, fetch what the cache lacks from the
//! peers, apply notifications, back off between attempts.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn::{
    AppendOnlyStore, AppendOutcome, Capabilities, Change, ChangeId, ChangeMeta, ChangeStream,
    DocId, DynAppendOnlyStore, Head, IdRange, RangeSummary, Result, ScanItem, StoreId,
};
use tracing::debug;

use crate::remote::check_frame_size;

/// Capped exponential backoff between connection attempts.
///
/// ```
/// use std::time::Duration;
/// use cairn_protocol::Backoff;
/// let b = Backoff { min: Duration::from_millis(50), max: Duration::from_secs(5) };
/// assert_eq!(b.delay(1), Duration::from_millis(50));
/// assert_eq!(b.delay(3), Duration::from_millis(200));
/// assert_eq!(b.delay(100), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub min: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// How long to wait before attempt number `attempt` (1 for the first
    /// retry; 0 counts as 1): `min` doubled `attempt - 1` times (at most 16
    /// times), never more than `max`. Never overflows.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.min.saturating_mul(factor).min(self.max)
    }
}

/// The parts of a [`CacheFirst`] store that depend on the transport.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Largest frame the peers accept: [`CacheFirst`]'s `append` refuses a
    /// change that does not fit (see
    /// [`check_frame_size`](crate::check_frame_size)) before touching the
    /// cache.
    fn max_frame(&self) -> usize;

    /// The peers to fetch changes from (typically [`RemoteStore`](crate::RemoteStore)s), in
    /// order of preference; empty while offline.
    fn remotes(&self) -> Vec<Arc<DynAppendOnlyStore>>;

    /// Append a batch that fits in a frame: to `cache`, and to the peers as
    /// this transport does it (at once, later, or both).
    async fn append(
        &self,
        cache: &DynAppendOnlyStore,
        changes: Vec<Change>,
    ) -> Result<AppendOutcome>;
}

/// An [`AppendOnlyStore`] over a local cache and the peers of a
/// [`Transport`].
///
/// - Reads answer from the cache; changes asked for by id that the cache
///   lacks are fetched from the peers, in order, and cached
///   (`get_changes`, `get_metas`, `has_changes`). A peer failing with a
///   retryable error (say a lost connection) is skipped, so reads answer
///   from the cache while offline; a permanent error (unauthorized,
///   integrity) is returned. Listing methods
///   (`scan`, `head`, `subscribe`, `find_new_changes`, `all_change_ids`, …)
///   describe the cache.
/// - `append` refuses changes larger than the peers' frame limit, then
///   hands the batch to [`Transport::append`].
/// - The store id is the cache's; the capabilities are the cache's, with
///   `remote` set.
///
/// A network store keeps one and forwards to it with
/// [`forward_store!`](crate::forward_store).
pub struct CacheFirst<T: ?Sized> {
    cache: Arc<DynAppendOnlyStore>,
    transport: Arc<T>,
}

impl<T: ?Sized> fmt::Debug for CacheFirst<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheFirst")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl<T: Transport + ?Sized> CacheFirst<T> {
    /// A store over `cache`, fetching from and appending through
    /// `transport`.
    pub fn new(cache: Arc<DynAppendOnlyStore>, transport: Arc<T>) -> Self {
        CacheFirst { cache, transport }
    }

    /// The local cache.
    pub fn cache(&self) -> &Arc<DynAppendOnlyStore> {
        &self.cache
    }

    /// Fetch `missing` (ids the cache was just found to lack) from the
    /// peers, in order, until none is missing, and cache them.
    async fn fetch_missing(&self, missing: impl Iterator<Item = ChangeId>) -> Result<()> {
        let remotes = self.transport.remotes();
        if remotes.is_empty() {
            return Ok(());
        }
        let mut seen = HashSet::new();
        let mut missing: Vec<ChangeId> = missing.filter(|id| seen.insert(*id)).collect();
        for remote in &remotes {
            if missing.is_empty() {
                break;
            }
            match remote.get_changes(&missing).await {
                Ok(changes) if !changes.is_empty() => {
                    let got: HashSet<ChangeId> = changes.iter().map(|c| c.id()).collect();
                    self.cache.append(changes).await?;
                    missing.retain(|id| !got.contains(id));
                }
                Ok(_) => {}
                Err(e) if e.is_retryable() => {
                    debug!(error = %e, "fetch from a peer failed; answering from the cache");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Apply a notification from `remote`: fetch the changes of `metas` that
/// `cache` lacks and append them to it. Errors (the fetch, the append) are
/// returned.
pub async fn ingest(
    cache: &DynAppendOnlyStore,
    remote: &DynAppendOnlyStore,
    metas: &[ChangeMeta],
) -> Result<()> {
    let ids: Vec<ChangeId> = metas.iter().map(|m| m.id).collect();
    let have = cache.has_changes(&ids).await?;
    let missing: Vec<ChangeId> = ids
        .into_iter()
        .zip(have)
        .filter(|(_, h)| !h)
        .map(|(id, _)| id)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let changes = remote.get_changes(&missing).await?;
    cache.append(changes).await?;
    Ok(())
}

#[async_trait]
impl<T: Transport + ?Sized> AppendOnlyStore for CacheFirst<T> {
    fn store_id(&self) -> &StoreId {
        self.cache.store_id()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            remote: true,
            ..self.cache.capabilities()
        }
    }

    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        check_frame_size(&changes, self.transport.max_frame())?;
        self.transport.append(&*self.cache, changes).await
    }

    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        let local = self.cache.get_changes(ids).await?;
        if local.len() >= ids.len() {
            return Ok(local);
        }
        let have: HashSet<ChangeId> = local.iter().map(|c| c.id()).collect();
        self.fetch_missing(ids.iter().copied().filter(|id| !have.contains(id)))
            .await?;
        self.cache.get_changes(ids).await
    }

    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        let local = self.cache.get_metas(ids).await?;
        if local.len() >= ids.len() {
            return Ok(local);
        }
        let have: HashSet<ChangeId> = local.iter().map(|m| m.id).collect();
        self.fetch_missing(ids.iter().copied().filter(|id| !have.contains(id)))
            .await?;
        self.cache.get_metas(ids).await
    }

    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        let local = self.cache.has_changes(ids).await?;
        if local.iter().all(|h| *h) {
            return Ok(local);
        }
        let missing = ids.iter().zip(&local).filter(|(_, h)| !**h);
        self.fetch_missing(missing.map(|(id, _)| *id)).await?;
        self.cache.has_changes(ids).await
    }

    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.cache.scan(after, limit).await
    }

    async fn head(&self) -> Result<Head> {
        self.cache.head().await
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        self.cache.subscribe().await
    }

    async fn find_new_changes(&self, have: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        self.cache.find_new_changes(have).await
    }

    async fn find_new_changes_for_doc(
        &self,
        have: &[ChangeId],
        doc: &DocId,
    ) -> Result<Vec<ChangeMeta>> {
        self.cache.find_new_changes_for_doc(have, doc).await
    }

    async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
        self.cache.all_change_ids().await
    }

    async fn changes_for_doc(
        &self,
        doc: &DocId,
        from_last_snapshot: bool,
    ) -> Result<Vec<ChangeMeta>> {
        self.cache.changes_for_doc(doc, from_last_snapshot).await
    }

    async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        self.cache.range_summary(range).await
    }

    async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        self.cache.ids_in_range(range, limit).await
    }
}

/// Implement [`AppendOnlyStore`] for a type by forwarding every method to
/// one of its fields, itself a store — a network store to its
/// [`CacheFirst`]:
///
/// ```ignore
/// pub struct QuicStore { inner: Arc<Inner>, store: CacheFirst<Inner> }
/// cairn_protocol::forward_store!(QuicStore => store);
/// ```
///
/// Expands to `#[async_trait] impl AppendOnlyStore for QuicStore`, so it
/// goes where that impl would.
#[macro_export]
macro_rules! forward_store {
    ($ty:ty => $field:ident) => {
        const _: () = {
            use $crate::__private::async_trait;
            use $crate::__private::cairn::{
                AppendOnlyStore, AppendOutcome, Capabilities, Change, ChangeId, ChangeMeta,
                ChangeStream, DocId, Head, IdRange, RangeSummary, Result, ScanItem, StoreId,
            };

            #[async_trait]
            impl AppendOnlyStore for $ty {
                fn store_id(&self) -> &StoreId {
                    self.$field.store_id()
                }
                fn capabilities(&self) -> Capabilities {
                    self.$field.capabilities()
                }
                async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
                    self.$field.append(changes).await
                }
                async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
                    self.$field.get_changes(ids).await
                }
                async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
                    self.$field.get_metas(ids).await
                }
                async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
                    self.$field.has_changes(ids).await
                }
                async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
                    self.$field.scan(after, limit).await
                }
                async fn head(&self) -> Result<Head> {
                    self.$field.head().await
                }
                async fn subscribe(&self) -> Result<ChangeStream> {
                    self.$field.subscribe().await
                }
                async fn find_new_changes(&self, have: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
                    self.$field.find_new_changes(have).await
                }
                async fn find_new_changes_for_doc(
                    &self,
                    have: &[ChangeId],
                    doc: &DocId,
                ) -> Result<Vec<ChangeMeta>> {
                    self.$field.find_new_changes_for_doc(have, doc).await
                }
                async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
                    self.$field.all_change_ids().await
                }
                async fn changes_for_doc(
                    &self,
                    doc: &DocId,
                    from_last_snapshot: bool,
                ) -> Result<Vec<ChangeMeta>> {
                    self.$field.changes_for_doc(doc, from_last_snapshot).await
                }
                async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
                    self.$field.range_summary(range).await
                }
                async fn ids_in_range(
                    &self,
                    range: &IdRange,
                    limit: usize,
                ) -> Result<Vec<ChangeId>> {
                    self.$field.ids_in_range(range, limit).await
                }
            }
        };
    };
}
