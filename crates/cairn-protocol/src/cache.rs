//! What every network store does the same way, whatever carries the
//! bytes: answer from a local cache, check every change that arrives
//! against the local policy, fetch what the cache lacks from the peers,
//! apply notifications, catch up, deliver the outbox, back off between
//! attempts.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn::riblt::{SymbolReply, SymbolRequest};
use cairn::sync::{Direction, SyncEvent, SyncOptions, SyncReport, SyncState};
use cairn::{
    AppendOnlyStore, AppendOutcome, Capabilities, Change, ChangeId, ChangeMeta, ChangeStream,
    DocId, DynAppendOnlyStore, Error, Head, IdRange, RangeSummary, RejectReason, Result, ScanItem,
    StoreId, Verifier,
};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::outbox::{DeliveryFailure, DeliveryOptions, Outbox};
use crate::peer::PeerId;

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

/// Where a change offered by a peer came from, for [`StoreEvent::Refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Arrival {
    /// A live notification.
    Notification,
    /// The sync run when a session starts.
    CatchUp,
    /// A read that fetched what the cache lacked.
    FetchOnMiss,
    /// An append request from the peer, served by this side.
    Append,
}

/// Something a network store wants its user to know, from
/// [`Node::events`]. Delivered on a bounded broadcast channel: a receiver
/// that falls more than 1,024 events behind loses the oldest (the counters
/// [`Node::refused`] and [`Outbox::failures`] stay exact).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreEvent {
    /// A change offered by `peer` failed this store's policy and was not
    /// stored.
    Refused {
        /// The peer that offered it.
        peer: PeerId,
        /// The change.
        id: ChangeId,
        /// Why.
        reason: RejectReason,
        /// How it arrived.
        via: Arrival,
    },
    /// A peer refused local changes for good (they stay in the cache).
    DeliveryRefused(DeliveryFailure),
}

/// Capacity of the event channel.
const EVENTS: usize = 1024;

/// The local half of a network store, shared by its store handle and its
/// sessions: the cache, the policy at its door, the outbox of undelivered
/// appends, and the event channel.
///
/// Every change that enters the cache from a peer — a notification, the
/// catch-up sync, a fetch on a cache miss — and every local append is first
/// checked by the [`Verifier`]; a refused change never enters the cache.
pub struct Node {
    cache: Arc<DynAppendOnlyStore>,
    verifier: Arc<dyn Verifier>,
    outbox: Outbox,
    events: broadcast::Sender<StoreEvent>,
    refused: AtomicU64,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("cache", &self.cache)
            .field("verifier", &self.verifier)
            .field("pending", &self.outbox.pending())
            .finish()
    }
}

impl Node {
    /// A node over `cache` whose door applies `verifier`.
    pub fn new(cache: Arc<DynAppendOnlyStore>, verifier: Arc<dyn Verifier>) -> Arc<Self> {
        let events = broadcast::Sender::new(EVENTS);
        Arc::new(Node {
            cache,
            verifier,
            outbox: Outbox::with_events(events.clone()),
            events,
            refused: AtomicU64::new(0),
        })
    }

    /// The local cache.
    pub fn cache(&self) -> &Arc<DynAppendOnlyStore> {
        &self.cache
    }

    /// The policy at this node's door.
    pub fn verifier(&self) -> &Arc<dyn Verifier> {
        &self.verifier
    }

    /// The outbox of local appends not yet delivered.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Receive events (refused changes, refused deliveries) from now on.
    pub fn events(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// How many changes offered by peers this node refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn emit(&self, event: StoreEvent) {
        let _ = self.events.send(event);
    }

    /// Record that `id`, offered by `peer`, was refused by the policy.
    pub fn report_refused(&self, peer: PeerId, id: ChangeId, reason: RejectReason, via: Arrival) {
        warn!(%peer, %id, %reason, ?via, "change refused by the local policy");
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.emit(StoreEvent::Refused {
            peer,
            id,
            reason,
            via,
        });
    }

    /// Keep the changes the policy accepts; report the rest.
    fn screen(&self, peer: PeerId, via: Arrival, changes: Vec<Change>) -> Vec<Change> {
        changes
            .into_iter()
            .filter(|c| match self.verifier.verify(&c.meta) {
                Ok(()) => true,
                Err(reason) => {
                    self.report_refused(peer, c.id(), reason, via);
                    false
                }
            })
            .collect()
    }

    /// A local append: the policy (a refused change is
    /// [`Error::Rejected`] and nothing is stored), then the cache, then
    /// the outbox. Never waits on a peer.
    pub async fn append_local(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        check_local(&*self.verifier, &changes)?;
        let sizes: HashMap<ChangeId, u64> = changes
            .iter()
            .map(|c| (c.id(), c.payload.len() as u64))
            .collect();
        // Reserved while the cache stores them: a peer's subscription that
        // sees them in the cache already knows the outbox brings them.
        let ids: Vec<ChangeId> = sizes.keys().copied().collect();
        self.outbox.reserve(&ids);
        let out = self.cache.append(changes).await;
        if let Ok(out) = &out {
            self.outbox.add(
                out.new
                    .iter()
                    .map(|id| (*id, sizes.get(id).copied().unwrap_or(0))),
            );
        }
        self.outbox.release(&ids);
        out
    }

    /// Apply a notification from `peer` (reached as `remote`): the changes
    /// of `metas` that the policy accepts and the cache lacks are fetched
    /// and cached. Refusals are reported, not returned; fetch and cache
    /// errors are returned.
    pub async fn ingest(
        &self,
        peer: PeerId,
        remote: &DynAppendOnlyStore,
        metas: &[ChangeMeta],
    ) -> Result<()> {
        let mut wanted = Vec::with_capacity(metas.len());
        for m in metas {
            match self.verifier.verify(m) {
                Ok(()) => wanted.push(m.id),
                Err(reason) => self.report_refused(peer, m.id, reason, Arrival::Notification),
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let have = self.cache.has_changes(&wanted).await?;
        let missing: Vec<ChangeId> = wanted
            .into_iter()
            .zip(have)
            .filter_map(|(id, h)| (!h).then_some(id))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let asked: HashSet<ChangeId> = missing.iter().copied().collect();
        let fetched: Vec<Change> = remote
            .get_changes(&missing)
            .await?
            .into_iter()
            .filter(|c| asked.contains(&c.id()))
            .collect();
        let accepted = self.screen(peer, Arrival::Notification, fetched);
        if !accepted.is_empty() {
            self.cache.append(accepted).await?;
        }
        Ok(())
    }

    /// [`ingest`](Node::ingest), retrying a retryable failure (a busy
    /// cache, a peer that timed out) up to `attempts` times with `backoff`
    /// before giving up with the error. A session that follows a peer uses
    /// it, so a brief failure does not cost a reconnect and a full
    /// catch-up.
    pub async fn follow(
        &self,
        peer: PeerId,
        remote: &DynAppendOnlyStore,
        metas: &[ChangeMeta],
        backoff: &Backoff,
        attempts: u32,
    ) -> Result<()> {
        let mut attempt = 0;
        // Bounded by `attempts`.
        loop {
            match self.ingest(peer, remote, metas).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && attempt < attempts => {
                    attempt += 1;
                    let delay = backoff.delay(attempt);
                    debug!(%peer, error = %e, ?delay, "applying a notification failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fetch `missing` (ids the cache was just found to lack) from the
    /// peers, in order, until none is missing; cache what the policy
    /// accepts. A peer failing with a retryable error is skipped; a
    /// permanent error is returned.
    pub async fn fetch_missing(
        &self,
        remotes: &[(PeerId, Arc<DynAppendOnlyStore>)],
        missing: impl Iterator<Item = ChangeId>,
    ) -> Result<()> {
        if remotes.is_empty() {
            return Ok(());
        }
        let mut seen = HashSet::new();
        let mut missing: Vec<ChangeId> = missing.filter(|id| seen.insert(*id)).collect();
        for (peer, remote) in remotes {
            if missing.is_empty() {
                break;
            }
            match remote.get_changes(&missing).await {
                Ok(changes) if !changes.is_empty() => {
                    let asked: HashSet<ChangeId> = missing.iter().copied().collect();
                    let changes: Vec<Change> = changes
                        .into_iter()
                        .filter(|c| asked.contains(&c.id()))
                        .collect();
                    let got: HashSet<ChangeId> = changes.iter().map(|c| c.id()).collect();
                    let accepted = self.screen(*peer, Arrival::FetchOnMiss, changes);
                    if !accepted.is_empty() {
                        self.cache.append(accepted).await?;
                    }
                    // Refused ones are not asked of the next peer either:
                    // the id names the same bytes everywhere.
                    missing.retain(|id| !got.contains(id));
                }
                Ok(_) => {}
                Err(e) if e.is_retryable() => {
                    debug!(%peer, error = %e, "fetch from a peer failed; answering from the cache");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The sync a session runs when it starts: pull (under this node's
    /// policy) if `pull`, then push if `push`, from and to `state`, which is
    /// updated as pages complete (so an interrupted catch-up resumes where
    /// it stopped). Refused changes are reported as events. Unless
    /// `opts.strict`, a push the peer refuses for good (a read-only peer) is
    /// reported as a [`StoreEvent::DeliveryRefused`] and does not fail the
    /// catch-up. The outbox entries the peer now holds are confirmed.
    pub async fn catch_up(
        &self,
        peer: PeerId,
        remote: &DynAppendOnlyStore,
        state: &Arc<Mutex<SyncState>>,
        opts: CatchUp,
    ) -> Result<SyncReport> {
        let saved = state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let progress_state = state.clone();
        let sync_opts = SyncOptions {
            state: saved,
            batch_bytes: opts.batch_bytes,
            verifier: self.verifier.clone(),
            ..SyncOptions::default()
        }
        .on_progress(move |ev| {
            if let SyncEvent::Checkpoint { direction, cursor } = ev {
                let mut s = progress_state.lock().unwrap_or_else(|e| e.into_inner());
                match direction {
                    Direction::Pull => s.pulled = Some(*cursor),
                    Direction::Push => s.pushed = Some(*cursor),
                }
            }
        });
        let mut report = SyncReport::default();
        if opts.pull {
            report = cairn::sync::pull(&*self.cache, remote, &sync_opts).await?;
            for r in &report.pulled.rejected {
                self.report_refused(peer, r.id, r.reason.clone(), Arrival::CatchUp);
            }
            *state.lock().unwrap_or_else(|e| e.into_inner()) = report.state.clone();
        }
        if opts.push {
            let push_opts = SyncOptions {
                state: state.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                ..sync_opts
            };
            match cairn::sync::push(&*self.cache, remote, &push_opts).await {
                Ok(pushed) => {
                    *state.lock().unwrap_or_else(|e| e.into_inner()) = pushed.state.clone();
                    report.pushed = pushed.pushed;
                    report.state = pushed.state;
                    report.elapsed += pushed.elapsed;
                }
                Err(e) if !e.is_retryable() && !opts.strict => {
                    let failure = DeliveryFailure {
                        peer,
                        ids: Vec::new(),
                        error: crate::WireError::from(&e),
                    };
                    warn!(%peer, error = %e, "the peer refuses our changes; following it read-only");
                    // Nothing local can reach this peer: stop holding the
                    // outbox for it (that reports the refusal), or report
                    // it alone.
                    let pending = self.outbox.pending_ids();
                    if pending.is_empty() {
                        self.emit(StoreEvent::DeliveryRefused(failure));
                    } else {
                        self.outbox.refuse(peer, &pending, &e);
                    }
                    return Ok(report);
                }
                Err(e) => return Err(e),
            }
        }
        self.confirm_held(peer, remote).await?;
        Ok(report)
    }

    /// Confirm the outbox entries `remote` already holds (after a sync).
    async fn confirm_held(&self, peer: PeerId, remote: &DynAppendOnlyStore) -> Result<()> {
        let pending = self.outbox.pending_ids();
        for chunk in pending.chunks(1000) {
            let held = remote.has_changes(chunk).await?;
            let ids: Vec<ChangeId> = chunk
                .iter()
                .zip(held)
                .filter_map(|(id, h)| h.then_some(*id))
                .collect();
            self.outbox.confirm(peer, &ids);
        }
        Ok(())
    }

    /// Deliver the outbox to `peer` until the cache fails or the future is
    /// dropped (see [`crate::deliver`]); the peer is detached when it
    /// returns or is dropped.
    pub async fn deliver(
        &self,
        peer: PeerId,
        remote: &DynAppendOnlyStore,
        opts: &DeliveryOptions,
    ) -> Result<()> {
        struct Detach<'a>(&'a Outbox, PeerId);
        impl Drop for Detach<'_> {
            fn drop(&mut self) {
                self.0.detach(&self.1);
            }
        }
        let _detach = Detach(&self.outbox, peer);
        crate::outbox::deliver(&self.outbox, &*self.cache, remote, peer, opts).await
    }
}

/// What [`Node::catch_up`] does.
#[derive(Debug, Clone, Copy)]
pub struct CatchUp {
    /// Pull what the peer has.
    pub pull: bool,
    /// Push what the peer lacks.
    pub push: bool,
    /// Most payload bytes per fetch.
    pub batch_bytes: u64,
    /// Return a push the peer refuses for good as the error (an explicit
    /// sync a user asked for), instead of reporting it as an event and
    /// following the peer read-only (a session's catch-up).
    pub strict: bool,
}

/// The policy at a local append's door: `Ok` if `verifier` accepts every
/// change, else [`Error::Rejected`] for the first it refuses — or, when the
/// batch is also malformed or over a limit, that error, as any store would
/// report it first. Nothing is stored either way.
pub fn check_local(verifier: &dyn Verifier, changes: &[Change]) -> Result<()> {
    for c in changes {
        if let Err(reason) = verifier.verify(&c.meta) {
            cairn::prepare_batch(changes.to_vec(), &cairn::Limits::DEFAULT)?;
            return Err(Error::Rejected { id: c.id(), reason });
        }
    }
    Ok(())
}

/// The parts of a [`CacheFirst`] store that depend on the transport.
pub trait Transport: Send + Sync {
    /// The peers to fetch missing changes from (typically
    /// [`RemoteStore`](crate::RemoteStore)s), in order of preference; empty
    /// while offline.
    fn remotes(&self) -> Vec<(PeerId, Arc<DynAppendOnlyStore>)>;
}

/// An [`AppendOnlyStore`] over a [`Node`] (a local cache with a policy and
/// an outbox) and the peers of a [`Transport`].
///
/// - Reads answer from the cache. `get_changes` and `get_metas` fetch the
///   ids the cache lacks from the peers, in order, and cache what the
///   policy accepts; a peer failing with a retryable error (say a lost
///   connection) is skipped, so reads answer from the cache while offline;
///   a permanent error (unauthorized, integrity) is returned.
/// - `has_changes` and the listing methods (`scan`, `head`, `subscribe`,
///   `find_new_changes`, `all_change_ids`, …) describe the cache: what this
///   store holds. (`has_changes` does not fetch: the sync engine asks it
///   which changes to bring, and screens them on the way.)
/// - `append` checks the policy, writes the cache and queues the new
///   changes in the outbox; it never waits on a peer. The transport's
///   sessions deliver the outbox (see [`Node::deliver`]).
/// - The store id is the cache's; the capabilities are the cache's, with
///   `remote` set.
///
/// A network store keeps one and forwards to it with
/// [`forward_store!`](crate::forward_store).
pub struct CacheFirst<T: ?Sized> {
    node: Arc<Node>,
    transport: Arc<T>,
}

impl<T: ?Sized> fmt::Debug for CacheFirst<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheFirst")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl<T: Transport + ?Sized> CacheFirst<T> {
    /// A store over `node`, fetching from the peers of `transport`.
    pub fn new(node: Arc<Node>, transport: Arc<T>) -> Self {
        CacheFirst { node, transport }
    }

    /// The local cache.
    pub fn cache(&self) -> &Arc<DynAppendOnlyStore> {
        self.node.cache()
    }

    /// The node (policy, outbox, events).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }
}

#[async_trait]
impl<T: Transport + ?Sized> AppendOnlyStore for CacheFirst<T> {
    fn store_id(&self) -> &StoreId {
        self.node.cache.store_id()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            remote: true,
            ..self.node.cache.capabilities()
        }
    }

    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        self.node.append_local(changes).await
    }

    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        let cache = &self.node.cache;
        let local = cache.get_changes(ids).await?;
        if local.len() >= ids.len() {
            return Ok(local);
        }
        let have: HashSet<ChangeId> = local.iter().map(|c| c.id()).collect();
        let remotes = self.transport.remotes();
        if remotes.is_empty() {
            return Ok(local);
        }
        self.node
            .fetch_missing(
                &remotes,
                ids.iter().copied().filter(|id| !have.contains(id)),
            )
            .await?;
        cache.get_changes(ids).await
    }

    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        let cache = &self.node.cache;
        let local = cache.get_metas(ids).await?;
        if local.len() >= ids.len() {
            return Ok(local);
        }
        let have: HashSet<ChangeId> = local.iter().map(|m| m.id).collect();
        let remotes = self.transport.remotes();
        if remotes.is_empty() {
            return Ok(local);
        }
        self.node
            .fetch_missing(
                &remotes,
                ids.iter().copied().filter(|id| !have.contains(id)),
            )
            .await?;
        cache.get_metas(ids).await
    }

    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        self.node.cache.has_changes(ids).await
    }

    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.node.cache.scan(after, limit).await
    }

    async fn head(&self) -> Result<Head> {
        self.node.cache.head().await
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        self.node.cache.subscribe().await
    }

    async fn find_new_changes(&self, have: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        self.node.cache.find_new_changes(have).await
    }

    async fn find_new_changes_for_doc(
        &self,
        have: &[ChangeId],
        doc: &DocId,
    ) -> Result<Vec<ChangeMeta>> {
        self.node.cache.find_new_changes_for_doc(have, doc).await
    }

    async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
        self.node.cache.all_change_ids().await
    }

    async fn changes_for_doc(
        &self,
        doc: &DocId,
        from_last_snapshot: bool,
    ) -> Result<Vec<ChangeMeta>> {
        self.node
            .cache
            .changes_for_doc(doc, from_last_snapshot)
            .await
    }

    async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        self.node.cache.range_summary(range).await
    }

    async fn coded_symbols(&self, request: &SymbolRequest) -> Result<SymbolReply> {
        self.node.cache.coded_symbols(request).await
    }

    async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        self.node.cache.ids_in_range(range, limit).await
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
                async fn coded_symbols(
                    &self,
                    request: &cairn::riblt::SymbolRequest,
                ) -> Result<cairn::riblt::SymbolReply> {
                    self.$field.coded_symbols(request).await
                }
            }
        };
    };
}
