//! The remote side of a connection as a store, and the frame arithmetic of
//! an append.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use cairn::encoding::encoded_meta_len;
use cairn::riblt::{SymbolReply, SymbolRequest};
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
    LEN_PREFIX + HEADER_LEN + 4 + 4 + encoded_meta_len(&change.meta) + 4 + change.payload.len()
}

/// Most ids a [`RemoteStore`] puts in one request.
const IDS_PER_REQUEST: usize = 8192;

/// The id after `id`, if there is one (for paging through id ranges).
fn successor(id: &ChangeId) -> Option<ChangeId> {
    let mut b = *id.as_bytes();
    for byte in b.iter_mut().rev() {
        if *byte == u8::MAX {
            *byte = 0;
        } else {
            *byte += 1;
            return Some(ChangeId::from_bytes(b));
        }
    }
    None
}

/// The peer at the other end of a [`Call`] as an [`AppendOnlyStore`], for
/// the sync engine and for fetching what a local cache lacks. The contract
/// is the trait's, whatever the peer's response caps: every method pages
/// transparently.
///
/// - `get_changes`, `get_metas` and `has_changes` send at most 8,192 ids per
///   request and ask again for the ids after the last one a capped answer
///   returned; ids asked twice are fetched once and returned twice.
/// - `scan` and `ids_in_range` ask again until they have `limit` items or
///   the peer has no more; `all_change_ids` pages with `ids_in_range`.
/// - `find_new_changes`, `find_new_changes_for_doc` and `changes_for_doc`
///   use the trait's default implementations (built on `scan`), so no
///   single answer is the size of the store.
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

impl<C: Call + ?Sized> RemoteStore<C> {
    /// `get_changes` of `ids` (`unique` is them without repeats), asking
    /// again after the last id of each capped answer; `first` is the answer
    /// already received to the first request (the first chunk of `unique`).
    async fn get_changes_paged(
        &self,
        ids: &[ChangeId],
        unique: &[ChangeId],
        mut first: Option<Vec<Change>>,
    ) -> Result<Vec<Change>> {
        let mut got: HashMap<ChangeId, Change> = HashMap::with_capacity(unique.len());
        for chunk in unique.chunks(IDS_PER_REQUEST) {
            let mut rest = chunk;
            // Bounded: every answer that is not empty shortens `rest`.
            while !rest.is_empty() {
                let answer = match first.take() {
                    Some(answer) => answer,
                    None => self.call.remote_get_changes(rest).await?,
                };
                let Some(pos) = last_position(rest, answer.iter().map(Change::id))? else {
                    break;
                };
                got.extend(answer.into_iter().map(|c| (c.id(), c)));
                rest = &rest[pos + 1..];
            }
        }
        if unique.len() == ids.len() {
            // Each id once: move the changes out instead of copying them.
            return Ok(ids.iter().filter_map(|id| got.remove(id)).collect());
        }
        Ok(ids.iter().filter_map(|id| got.get(id).cloned()).collect())
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
        let unique = coalesce(ids);
        if !ids.is_empty() && unique.len() == ids.len() && ids.len() <= IDS_PER_REQUEST {
            // The common case: one request, answered whole and in order.
            let answer = self.call.remote_get_changes(ids).await?;
            if answer.len() == ids.len() && answer.iter().zip(ids).all(|(c, id)| c.id() == *id) {
                return Ok(answer);
            }
            return self.get_changes_paged(ids, &unique, Some(answer)).await;
        }
        self.get_changes_paged(ids, &unique, None).await
    }
    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        let unique = coalesce(ids);
        let mut got: HashMap<ChangeId, ChangeMeta> = HashMap::with_capacity(unique.len());
        for chunk in unique.chunks(IDS_PER_REQUEST) {
            let mut rest = chunk;
            // Bounded: every answer that is not empty shortens `rest`.
            while !rest.is_empty() {
                let answer = self.call.remote_get_metas(rest).await?;
                let Some(pos) = last_position(rest, answer.iter().map(|m| m.id))? else {
                    break;
                };
                got.extend(answer.into_iter().map(|m| (m.id, m)));
                rest = &rest[pos + 1..];
            }
        }
        if unique.len() == ids.len() {
            return Ok(ids.iter().filter_map(|id| got.remove(id)).collect());
        }
        Ok(ids.iter().filter_map(|id| got.get(id).cloned()).collect())
    }
    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_REQUEST) {
            let answer = self.call.remote_has_changes(chunk).await?;
            if answer.len() != chunk.len() {
                return Err(Error::Protocol {
                    reason: format!(
                        "has_changes answered {} of {} ids",
                        answer.len(),
                        chunk.len()
                    ),
                });
            }
            out.extend(answer);
        }
        Ok(out)
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        let mut out: Vec<ScanItem> = Vec::new();
        let mut from = after;
        // Bounded: every page that is not empty adds at least one item.
        while out.len() < limit {
            let page = self.call.remote_scan(from, limit - out.len()).await?;
            let Some(last) = page.last() else { break };
            if last.seq <= from || page.len() > limit - out.len() {
                return Err(Error::Protocol {
                    reason: format!("scan after {from} answered out of order or too much"),
                });
            }
            from = last.seq;
            out.extend(page);
        }
        Ok(out)
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
    async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
        self.ids_in_range(&IdRange::ALL, usize::MAX).await
    }
    async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        self.call.remote_range_summary(range).await
    }
    async fn coded_symbols(&self, request: &SymbolRequest) -> Result<SymbolReply> {
        self.call.remote_coded_symbols(request).await
    }
    async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        let mut out: Vec<ChangeId> = Vec::new();
        let mut from = *range;
        // Bounded: every page that is not empty moves `from.start` past its
        // last id.
        while out.len() < limit {
            let page = self
                .call
                .remote_ids_in_range(&from, limit - out.len())
                .await?;
            let Some(last) = page.last().copied() else {
                break;
            };
            if last < from.start || !from.contains(&last) {
                return Err(Error::Protocol {
                    reason: "ids_in_range answered ids outside the range".into(),
                });
            }
            out.extend(page);
            match successor(&last) {
                Some(next) if from.end.is_none_or(|e| next < e) => from.start = next,
                _ => break,
            }
        }
        Ok(out)
    }
}

/// `ids` without repeats, in first-seen order.
fn coalesce(ids: &[ChangeId]) -> Vec<ChangeId> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// The position in `asked` of the last of `answered` (a peer answers a
/// prefix of what was asked: the held ids among it, in order), `None` if
/// nothing was answered, and an error if the peer answered what was not
/// asked.
fn last_position(
    asked: &[ChangeId],
    answered: impl Iterator<Item = ChangeId>,
) -> Result<Option<usize>> {
    let mut last = None;
    let set: HashSet<&ChangeId> = asked.iter().collect();
    for id in answered {
        if !set.contains(&id) {
            return Err(Error::Protocol {
                reason: format!("the peer answered {id}, which was not asked"),
            });
        }
        last = Some(id);
    }
    Ok(last.and_then(|l| asked.iter().position(|id| *id == l)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_carries_and_stops_at_the_end() {
        let mut b = [0u8; 32];
        b[31] = 0xff;
        b[30] = 0x01;
        let mut want = [0u8; 32];
        want[30] = 0x02;
        assert_eq!(
            successor(&ChangeId::from_bytes(b)),
            Some(ChangeId::from_bytes(want))
        );
        assert_eq!(successor(&ChangeId::MAX), None);
        assert_eq!(successor(&ChangeId::MIN).map(|i| i.as_bytes()[31]), Some(1));
    }
}
