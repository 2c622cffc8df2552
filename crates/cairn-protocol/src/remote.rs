//! The remote side of a connection as a store, and the frame arithmetic of
//! an append.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use cairn::encoding::encode_meta;
use cairn::{
    AppendOnlyStore, AppendOutcome, Capabilities, Change, ChangeId, ChangeMeta, ChangeStream,
    Error, Head, IdRange, RangeSummary, Result, ScanItem, StoreId,
};

use crate::client::{Call, RemoteCalls};
use crate::codec::{HEADER_LEN, LEN_PREFIX};
use crate::message::Hello;

/// Bytes `change` takes in an `Append` request frame of its own: length
/// prefix, header, item count, then the change (meta length, meta, payload
/// length, payload). A change larger than the frame limit is split across
/// frames ([`FrameEncoder`](crate::FrameEncoder)).
pub fn framed_size(change: &Change) -> usize {
    LEN_PREFIX + HEADER_LEN + 4 + 4 + encode_meta(&change.meta).len() + 4 + change.payload.len()
}

/// The peer at the other end of a [`Call`] as an [`AppendOnlyStore`]: every
/// method is one remote call (see [`RemoteCalls`]), for the sync engine and
/// for fetching what a local cache lacks.
///
/// - `find_new_changes_for_doc` and `changes_for_doc` use the trait's
///   default implementations (built on `scan`).
/// - `subscribe` is [`Error::Unsupported`]: subscriptions keep state on the
///   connection, so the transport handles them.
/// - [`capabilities`](AppendOnlyStore::capabilities) are the peer's, from its
///   hello, with `remote` set.
pub struct RemoteStore<C: ?Sized> {
    name: &'static str,
    store_id: StoreId,
    capabilities: Capabilities,
    call: Arc<C>,
}

impl<C: Call + ?Sized> RemoteStore<C> {
    /// The store `store_id` at the peer behind `call`, which greeted with
    /// `hello`. `name` is the transport ("quic", "webrtc"), named in errors.
    pub fn new(name: &'static str, store_id: StoreId, hello: &Hello, call: Arc<C>) -> Self {
        RemoteStore {
            name,
            store_id,
            capabilities: Capabilities {
                remote: true,
                ..hello.capabilities
            },
            call,
        }
    }

    /// The connection the calls go through.
    pub fn call(&self) -> &Arc<C> {
        &self.call
    }
}

impl<C: ?Sized> fmt::Debug for RemoteStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStore")
            .field("transport", &self.name)
            .field("store_id", &self.store_id)
            .finish()
    }
}

#[async_trait]
impl<C: Call + ?Sized> AppendOnlyStore for RemoteStore<C> {
    fn store_id(&self) -> &StoreId {
        &self.store_id
    }
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        self.call.remote_append(changes).await
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        self.call.remote_get_changes(ids).await
    }
    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        self.call.remote_get_metas(ids).await
    }
    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        self.call.remote_has_changes(ids).await
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.call.remote_scan(after, limit).await
    }
    async fn head(&self) -> Result<Head> {
        self.call.remote_head().await
    }
    async fn subscribe(&self) -> Result<ChangeStream> {
        Err(Error::Unsupported {
            store: self.name,
            what: "subscribe",
        })
    }
    async fn find_new_changes(&self, have: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        self.call.remote_find_new_changes(have).await
    }
    async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
        self.call.remote_all_change_ids().await
    }
    async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        self.call.remote_range_summary(range).await
    }
    async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        self.call.remote_ids_in_range(range, limit).await
    }
}
