//! The sync engine: pull, push and sync between any two stores.
//!
//! A transfer walks the source's arrival order ([`AppendOnlyStore::scan`]) a
//! page at a time from a saved cursor, asks the target which of the page's
//! ids it lacks, fetches those in batches bounded by count and bytes,
//! checks integrity and the [`Verifier`], and appends in dependency order.
//! While one page is appended, the next is planned and its first batch
//! fetched, and the one after is scanned, so source and target work at the
//! same time instead of waiting a round trip per page. Memory is bounded by
//! a few batches, never by the store size. The cursor
//! only advances after a batch is appended, so an interrupted sync is
//! completed by running it again: appends are idempotent, nothing is lost
//! and nothing is duplicated.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! # use cairn::*;
//! # #[derive(Debug)] struct Dummy;
//! // `pull(local, remote, opts)` copies what `remote` has and `local` lacks.
//! // See the quickstart example for a full run over two memory stores.
//! let opts = SyncOptions::default();
//! assert_eq!(opts.batch_changes, 1000);
//! # });
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::graph;
use crate::ids::ChangeId;
use crate::reconcile::{self, ReconcileOptions};
use crate::record::{Change, ChangeMeta};
use crate::store::{AppendOnlyStore, AppendOutcome, Head};
use crate::verify::{AcceptAll, RejectReason, Verifier};

/// Which way changes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// From the remote store into the local one.
    Pull,
    /// From the local store into the remote one.
    Push,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Pull => "pull",
            Direction::Push => "push",
        })
    }
}

/// Where previous syncs between two stores got to. Save it (it is serde)
/// and pass it back in [`SyncOptions::state`] to resume incrementally.
///
/// Besides the two cursors it remembers the changes the [`Verifier`]
/// refused (and those refused for integrity), so that the next sync
/// examines them again: a change rejected under yesterday's policy (a
/// directory that had not yet admitted its author) is accepted under
/// today's. Each list keeps at most [`MAX_RETRY`] ids; when a sync would
/// leave more, the oldest are dropped (logged as a warning). A dropped id is
/// examined again only by a sync from [`SyncState::default`] (a full scan or
/// reconciliation).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncState {
    /// The remote's position up to which everything was pulled.
    pub pulled: Option<Head>,
    /// The local store's position up to which everything was pushed.
    pub pushed: Option<Head>,
    /// Remote changes refused by earlier pulls, oldest first.
    #[serde(default)]
    pub retry_pull: Vec<ChangeId>,
    /// Local changes refused by earlier pushes, oldest first.
    #[serde(default)]
    pub retry_push: Vec<ChangeId>,
    /// The local store's epoch when `pulled` was saved. A store that comes
    /// back in a new epoch (a non-durable store after a crash, which may
    /// have lost changes it had pulled) gets everything examined again,
    /// instead of trusting a cursor that says those changes arrived.
    /// `None` (a state saved before this field existed) trusts `pulled`.
    #[serde(default)]
    pub pulled_into: Option<u64>,
    /// The remote's epoch when `pushed` was saved: the same for pushes.
    #[serde(default)]
    pub pushed_into: Option<u64>,
}

/// `cursor`, unless it was saved while the target was in another epoch
/// than `target_epoch`.
fn trusted(cursor: Option<Head>, saved_into: Option<u64>, target_epoch: u64) -> Option<Head> {
    cursor.filter(|_| saved_into.is_none_or(|e| e == target_epoch))
}

/// Most refused ids a [`SyncState`] remembers per direction.
pub const MAX_RETRY: usize = 10_000;

/// Something that happened during a sync, for progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncEvent {
    /// A transfer started; `total` changes of the source are to be examined.
    Started {
        /// Which way.
        direction: Direction,
        /// Source changes to examine (from the cursor to the source's head).
        total: u64,
    },
    /// A page of the source was examined and its missing changes appended.
    Progress {
        /// Which way.
        direction: Direction,
        /// Source changes examined so far.
        examined: u64,
        /// Of how many.
        total: u64,
        /// Changes appended to the target so far.
        transferred: u64,
        /// Payload bytes appended so far.
        bytes: u64,
    },
    /// Everything up to `cursor` in the source's arrival order was
    /// examined and appended (or refused): saving it as the direction's
    /// cursor lets an interrupted sync resume here. Emitted after each page
    /// of a scanning transfer (not by reconciliation, which finds the
    /// remaining difference again cheaply).
    Checkpoint {
        /// Which way.
        direction: Direction,
        /// The source position reached.
        cursor: Head,
    },
    /// A transfer finished.
    Finished {
        /// Which way.
        direction: Direction,
        /// Changes appended.
        transferred: u64,
    },
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&SyncEvent) + Send + Sync>;

/// How to sync.
#[derive(Clone)]
pub struct SyncOptions {
    /// Most changes examined and fetched per round (default 1000).
    pub batch_changes: usize,
    /// Most payload bytes fetched per `get_changes` call (default 8 MiB;
    /// a single larger change is still fetched, alone).
    pub batch_bytes: u64,
    /// Policy for accepting changes (default [`AcceptAll`]).
    pub verifier: Arc<dyn Verifier>,
    /// Called with progress events.
    pub progress: Option<ProgressFn>,
    /// Cancels the sync between rounds with [`Error::Cancelled`].
    pub cancel: CancellationToken,
    /// Where earlier syncs got to; `Default` starts from the beginning.
    pub state: SyncState,
    /// When to find the difference by set reconciliation instead of
    /// scanning the source (default [`Reconcile::Auto`]).
    pub reconcile: Reconcile,
}

/// When the sync engine uses set reconciliation
/// ([`crate::reconcile::difference`]) instead of scanning the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Reconcile {
    /// When there is no usable cursor (a first sync, or the source was
    /// reset), both stores answer range summaries natively, the source
    /// holds at least [`RECONCILE_MIN`] changes and the target at least half
    /// as many (so they likely share most of them).
    #[default]
    Auto,
    /// Whenever there is no usable cursor, native or not. The transfer then
    /// holds the metadata of the whole difference at once (bounded by the
    /// difference, not the store).
    Always,
    /// Never; always scan.
    Never,
}

/// The smallest source for which [`Reconcile::Auto`] reconciles.
pub const RECONCILE_MIN: u64 = 1024;

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            batch_changes: 1000,
            batch_bytes: 8 << 20,
            verifier: Arc::new(AcceptAll),
            progress: None,
            cancel: CancellationToken::new(),
            state: SyncState::default(),
            reconcile: Reconcile::Auto,
        }
    }
}

impl fmt::Debug for SyncOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncOptions")
            .field("batch_changes", &self.batch_changes)
            .field("batch_bytes", &self.batch_bytes)
            .field("verifier", &self.verifier)
            .field("progress", &self.progress.is_some())
            .field("state", &self.state)
            .field("reconcile", &self.reconcile)
            .finish()
    }
}

impl SyncOptions {
    /// Use `verifier` to accept or reject changes.
    pub fn verifier(mut self, verifier: impl Verifier + 'static) -> Self {
        self.verifier = Arc::new(verifier);
        self
    }

    /// Call `f` with progress events.
    pub fn on_progress(mut self, f: impl Fn(&SyncEvent) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Resume from a saved state.
    pub fn resume(mut self, state: SyncState) -> Self {
        self.state = state;
        self
    }
}

/// A change that was not appended, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The change.
    pub id: ChangeId,
    /// Why.
    pub reason: RejectReason,
}

/// What one direction of a sync did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TransferReport {
    /// Source changes examined.
    pub examined: u64,
    /// Changes appended to the target.
    pub changes: u64,
    /// Payload bytes appended to the target.
    pub bytes: u64,
    /// Changes refused, with reasons.
    pub rejected: Vec<Rejected>,
    /// Rounds (pages of the source, or batches of the difference).
    pub rounds: u64,
    /// Summary rounds of set reconciliation, if it was used (0 if the source
    /// was scanned).
    pub reconcile_rounds: u32,
    /// Time spent waiting because the target said it was over a rate limit
    /// (`Error::RateLimited { retry_after }`).
    #[serde(default)]
    pub throttled: Duration,
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncReport {
    /// Remote to local.
    pub pulled: TransferReport,
    /// Local to remote.
    pub pushed: TransferReport,
    /// Time taken.
    pub elapsed: Duration,
    /// Where this sync got to; pass it to the next one.
    pub state: SyncState,
}

impl SyncReport {
    /// Total rounds in both directions.
    pub fn rounds(&self) -> u64 {
        self.pulled.rounds + self.pushed.rounds
    }
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pulled {} changes ({} bytes), pushed {} changes ({} bytes), {} rejected, {} rounds, {:.1?}",
            self.pulled.changes,
            self.pulled.bytes,
            self.pushed.changes,
            self.pushed.bytes,
            self.pulled.rejected.len() + self.pushed.rejected.len(),
            self.rounds(),
            self.elapsed
        )?;
        let throttled = self.pulled.throttled + self.pushed.throttled;
        if !throttled.is_zero() {
            write!(f, " ({throttled:.1?} waiting on rate limits)")?;
        }
        Ok(())
    }
}

fn check_ids(local: &dyn AppendOnlyStore, remote: &dyn AppendOnlyStore) -> Result<()> {
    if local.store_id() != remote.store_id() {
        return Err(Error::StoreMismatch {
            expected: local.store_id().clone(),
            found: remote.store_id().clone(),
        });
    }
    Ok(())
}

/// The saved cursor's position, if it is usable against `head` (same epoch,
/// not ahead of it).
fn usable(cursor: Option<Head>, head: &Head) -> Option<u64> {
    match cursor {
        Some(c) if c.epoch == head.epoch && c.seq <= head.seq => Some(c.seq),
        _ => None,
    }
}

/// Whether a transfer from `source` (at `head`) to `target` (at
/// `target_head`) should find its changes by set reconciliation instead of
/// scanning.
fn wants_reconcile(
    opts: &SyncOptions,
    source: &dyn AppendOnlyStore,
    target: &dyn AppendOnlyStore,
    cursor: Option<Head>,
    head: &Head,
    target_head: &Head,
) -> bool {
    if usable(cursor, head).is_some() {
        return false;
    }
    match opts.reconcile {
        Reconcile::Never => false,
        Reconcile::Always => true,
        // Reconciliation pays off when the two stores share most of their
        // changes. When the target holds much less than the source, most of
        // the source must be sent anyway, and scanning does it with memory
        // bounded by the batch (reconciliation holds the difference's
        // metadata at once).
        Reconcile::Auto => {
            head.seq >= RECONCILE_MIN
                && target_head.seq.saturating_mul(2) >= head.seq
                && source.capabilities().native_reconciliation
                && target.capabilities().native_reconciliation
        }
    }
}

/// Copy into `local` every change `remote` holds that `local` lacks.
pub async fn pull(
    local: &dyn AppendOnlyStore,
    remote: &dyn AppendOnlyStore,
    opts: &SyncOptions,
) -> Result<SyncReport> {
    run(local, remote, opts, true, false).await
}

/// Copy into `remote` every change `local` holds that `remote` lacks.
pub async fn push(
    local: &dyn AppendOnlyStore,
    remote: &dyn AppendOnlyStore,
    opts: &SyncOptions,
) -> Result<SyncReport> {
    run(local, remote, opts, false, true).await
}

/// Pull, then push: afterwards both stores hold the union of what they held
/// (less rejected changes). When set reconciliation applies, one
/// reconciliation serves both directions.
///
/// ```
/// # async fn demo(a: &dyn cairn::AppendOnlyStore, b: &dyn cairn::AppendOnlyStore) -> cairn::Result<()> {
/// let report = cairn::sync::sync(a, b, &cairn::SyncOptions::default()).await?;
/// println!("{report}");
/// # Ok(()) }
/// ```
pub async fn sync(
    local: &dyn AppendOnlyStore,
    remote: &dyn AppendOnlyStore,
    opts: &SyncOptions,
) -> Result<SyncReport> {
    run(local, remote, opts, true, true).await
}

/// Pull and/or push. Heads are read first; when a direction has no usable
/// cursor and reconciliation applies, one reconciliation serves both.
async fn run(
    local: &dyn AppendOnlyStore,
    remote: &dyn AppendOnlyStore,
    opts: &SyncOptions,
    pull: bool,
    push: bool,
) -> Result<SyncReport> {
    check_ids(local, remote)?;
    if opts.batch_changes == 0 {
        return Err(Error::invalid("batch_changes must be at least 1"));
    }
    let start = Instant::now();
    let mut report = SyncReport {
        state: opts.state.clone(),
        ..SyncReport::default()
    };
    let (rh, lh) = futures::future::try_join(remote.head(), local.head()).await?;
    let pulled = trusted(opts.state.pulled, opts.state.pulled_into, lh.epoch);
    let pushed = trusted(opts.state.pushed, opts.state.pushed_into, rh.epoch);
    let pull_rec = pull && wants_reconcile(opts, remote, local, pulled, &rh, &lh);
    let push_rec = push && wants_reconcile(opts, local, remote, pushed, &lh, &rh);
    let diff = if pull_rec || push_rec {
        Some(reconcile::difference(local, remote, &ReconcileOptions::default()).await?)
    } else {
        None
    };
    if pull {
        let (mut t, cursor) = match &diff {
            Some(d) if pull_rec => {
                let ids = d.remote_only.clone();
                let mut t = transfer_ids(remote, local, Direction::Pull, ids, opts).await?;
                t.reconcile_rounds = d.rounds;
                (t, rh)
            }
            _ => transfer(remote, local, Direction::Pull, pulled, rh, opts).await?,
        };
        retry(remote, local, &opts.state.retry_pull, opts, &mut t).await?;
        report.state.retry_pull = remember(&t.rejected, Direction::Pull);
        report.pulled = t;
        report.state.pulled = Some(cursor);
        report.state.pulled_into = Some(lh.epoch);
    }
    if push {
        let (mut t, cursor) = match diff {
            Some(d) if push_rec => {
                let mut t =
                    transfer_ids(local, remote, Direction::Push, d.local_only, opts).await?;
                t.reconcile_rounds = d.rounds;
                (t, lh)
            }
            _ => {
                // After a pull the local head has moved: scan up to the new
                // one, so what was just pulled is examined now, not echoed
                // back in the next sync.
                let head = if pull { local.head().await? } else { lh };
                transfer(local, remote, Direction::Push, pushed, head, opts).await?
            }
        };
        retry(local, remote, &opts.state.retry_push, opts, &mut t).await?;
        report.state.retry_push = remember(&t.rejected, Direction::Push);
        report.pushed = t;
        report.state.pushed = Some(cursor);
        report.state.pushed_into = Some(rh.epoch);
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Examine again the changes refused by earlier syncs (`ids`, from the
/// saved state): those the source still holds and the target still lacks
/// are fetched, screened and appended like any other; refusals are added to
/// `rep.rejected` again.
async fn retry(
    source: &dyn AppendOnlyStore,
    target: &dyn AppendOnlyStore,
    ids: &[ChangeId],
    opts: &SyncOptions,
    rep: &mut TransferReport,
) -> Result<()> {
    // Bounded: at most MAX_RETRY ids, in pages of `batch_changes`.
    for chunk in ids.chunks(opts.batch_changes) {
        if opts.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let metas = source.get_metas(chunk).await?;
        if metas.is_empty() {
            continue;
        }
        rep.examined += metas.len() as u64;
        rep.rounds += 1;
        apply_page(source, target, metas, opts, rep).await?;
    }
    Ok(())
}

/// The refused ids to remember for the next sync: each once, oldest first,
/// at most [`MAX_RETRY`] (the oldest beyond that are dropped).
fn remember(rejected: &[Rejected], direction: Direction) -> Vec<ChangeId> {
    let mut seen = std::collections::HashSet::with_capacity(rejected.len());
    let mut ids: Vec<ChangeId> = rejected
        .iter()
        .map(|r| r.id)
        .filter(|id| seen.insert(*id))
        .collect();
    if ids.len() > MAX_RETRY {
        let dropped = ids.len() - MAX_RETRY;
        tracing::warn!(
            %direction,
            dropped,
            "more refused changes than the sync state remembers; the oldest are no longer retried"
        );
        ids.drain(..dropped);
    }
    ids
}

/// Copy the changes with these ids (found by reconciliation) from `source`
/// to `target`, deps first, in batches.
async fn transfer_ids(
    source: &dyn AppendOnlyStore,
    target: &dyn AppendOnlyStore,
    direction: Direction,
    ids: Vec<ChangeId>,
    opts: &SyncOptions,
) -> Result<TransferReport> {
    let total = ids.len() as u64;
    let mut rep = TransferReport::default();
    emit(opts, SyncEvent::Started { direction, total });
    // The difference's metadata (not payloads) is held at once so that the
    // whole transfer can go deps first; it is bounded by the difference,
    // not the store.
    let mut metas = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(opts.batch_changes) {
        let got = source.get_metas(chunk).await?;
        if got.len() != chunk.len() {
            let have: std::collections::HashSet<ChangeId> = got.iter().map(|m| m.id).collect();
            let missing = chunk.iter().find(|id| !have.contains(*id)).copied();
            return Err(Error::Protocol {
                reason: match missing {
                    Some(id) => format!(
                        "the source's reconciliation listed {id} but get_metas did not return it"
                    ),
                    None => format!(
                        "get_metas answered {} metadata records for {} ids",
                        got.len(),
                        chunk.len()
                    ),
                },
            });
        }
        metas.extend(got);
    }
    let metas = graph::topo_sort(metas, |m| m.id, |m| &m.deps);
    let mut pages = metas.into_iter().peekable();
    // Bounded: every round consumes up to `batch_changes` metas.
    while pages.peek().is_some() {
        if opts.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let page: Vec<ChangeMeta> = pages.by_ref().take(opts.batch_changes).collect();
        rep.examined += page.len() as u64;
        rep.rounds += 1;
        apply_page(source, target, page, opts, &mut rep).await?;
        emit_progress(opts, direction, total, &rep);
    }
    emit_finished(opts, direction, &rep);
    Ok(rep)
}

fn emit_progress(opts: &SyncOptions, direction: Direction, total: u64, rep: &TransferReport) {
    emit(
        opts,
        SyncEvent::Progress {
            direction,
            examined: rep.examined,
            total,
            transferred: rep.changes,
            bytes: rep.bytes,
        },
    );
}

fn emit_finished(opts: &SyncOptions, direction: Direction, rep: &TransferReport) {
    emit(
        opts,
        SyncEvent::Finished {
            direction,
            transferred: rep.changes,
        },
    );
}

fn emit(opts: &SyncOptions, ev: SyncEvent) {
    if let Some(p) = &opts.progress {
        p(&ev);
    }
}

async fn transfer(
    source: &dyn AppendOnlyStore,
    target: &dyn AppendOnlyStore,
    direction: Direction,
    cursor: Option<Head>,
    head: Head,
    opts: &SyncOptions,
) -> Result<(TransferReport, Head)> {
    // A cursor from another epoch (the source was reset) or from the future
    // is useless: start over. Appends are idempotent, so this is safe.
    let mut after = usable(cursor, &head).unwrap_or(0);
    let total = head.seq - after;
    let mut rep = TransferReport::default();
    emit(opts, SyncEvent::Started { direction, total });
    tracing::debug!(%direction, from = after, to = head.seq, "transfer start");
    // Three pages are in hand at once: one being appended, the next being
    // planned and fetched, and the one after that scanned.
    let mut staged = None;
    let mut ahead = None;
    if let Some(first) = scan_page(source, after, head.seq, opts).await? {
        let end = first.end;
        let (s, a) = futures::future::join(
            stage_page(source, target, first, opts),
            scan_page(source, end, head.seq, opts),
        )
        .await;
        staged = Some(s?);
        ahead = a?;
    }
    // Bounded: every round advances `after` by at least one (`scan_page`
    // checks it), and pages are only scanned while `after < head.seq`.
    while let Some(page) = staged.take() {
        if opts.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        rep.examined += page.examined;
        rep.rounds += 1;
        // While this page is appended, plan the next one (ask the target
        // which of it are missing, fetch the first group) and scan the one
        // after: the source works ahead while the target writes.
        let end = page.end;
        let scanned = ahead.take();
        let next = async {
            let Some(p) = scanned else {
                return Ok((None, None));
            };
            let p_end = p.end;
            let (s, a) = futures::future::join(
                stage_page(source, target, p, opts),
                scan_page(source, p_end, head.seq, opts),
            )
            .await;
            Ok::<_, Error>((Some(s?), a?))
        };
        // `next` is polled first: its requests are on their way before this
        // page's append, which may not yield until it is done, starts.
        let (next, applied) =
            futures::future::join(next, finish_page(source, target, page.plan, opts, &mut rep))
                .await;
        applied?;
        after = end;
        emit_progress(opts, direction, total, &rep);
        emit(
            opts,
            SyncEvent::Checkpoint {
                direction,
                cursor: Head {
                    epoch: head.epoch,
                    seq: after,
                },
            },
        );
        (staged, ahead) = next?;
    }
    emit_finished(opts, direction, &rep);
    Ok((
        rep,
        Head {
            epoch: head.epoch,
            seq: after,
        },
    ))
}

/// A page of the source's arrival order, ready to append: examined up to
/// `end`, its missing changes planned and the first group fetched.
struct Staged<'a> {
    end: u64,
    examined: u64,
    plan: Plan<'a>,
}

/// A page of the source's arrival order: its metadata, up to `end`.
struct Scanned {
    end: u64,
    metas: Vec<ChangeMeta>,
}

/// Scan the page of `source` after `after`, up to `head`; `None` if
/// `after` is `head` already or the source has nothing after it.
async fn scan_page(
    source: &dyn AppendOnlyStore,
    after: u64,
    head: u64,
    opts: &SyncOptions,
) -> Result<Option<Scanned>> {
    if after >= head {
        return Ok(None);
    }
    let page = source.scan(after, opts.batch_changes).await?;
    let Some(last) = page.last() else {
        return Ok(None);
    };
    if last.seq <= after {
        return Err(Error::Protocol {
            reason: format!("scan after {after} returned sequence {}", last.seq),
        });
    }
    let end = last.seq.min(head);
    let metas = page
        .into_iter()
        .filter(|i| i.seq > after && i.seq <= head)
        .map(|i| i.meta)
        .collect();
    Ok(Some(Scanned { end, metas }))
}

/// Plan a scanned page ([`plan_page`]) and fetch its first group.
async fn stage_page<'a>(
    source: &'a dyn AppendOnlyStore,
    target: &dyn AppendOnlyStore,
    page: Scanned,
    opts: &SyncOptions,
) -> Result<Staged<'a>> {
    let examined = page.metas.len() as u64;
    let plan = plan_page(target, page.metas, opts)
        .await?
        .start(source)
        .await;
    Ok(Staged {
        end: page.end,
        examined,
        plan,
    })
}

type Fetch<'a> = futures::future::BoxFuture<'a, Result<(Vec<ChangeId>, Vec<Change>)>>;

fn fetch(source: &dyn AppendOnlyStore, ids: Vec<ChangeId>) -> Fetch<'_> {
    Box::pin(async move {
        let got = source.get_changes(&ids).await?;
        Ok((ids, got))
    })
}

/// The changes of one page that the target lacks, deps first, in
/// byte-bounded groups of ids; once started, the first group's fetch.
struct Plan<'a> {
    groups: std::vec::IntoIter<Vec<ChangeId>>,
    first: Option<Fetch<'a>>,
}

impl<'a> Plan<'a> {
    /// Fetch the first group now; its result (an error too) is what
    /// [`finish_page`] starts with.
    async fn start(mut self, source: &'a dyn AppendOnlyStore) -> Plan<'a> {
        if self.first.is_none()
            && let Some(g) = self.groups.next()
        {
            let fetched = fetch(source, g).await;
            self.first = Some(Box::pin(futures::future::ready(fetched)));
        }
        self
    }
}

/// Ask `target` which of `metas` it lacks; sort those deps first and group
/// them by bytes.
async fn plan_page<'a>(
    target: &dyn AppendOnlyStore,
    metas: Vec<ChangeMeta>,
    opts: &SyncOptions,
) -> Result<Plan<'a>> {
    let ids: Vec<ChangeId> = metas.iter().map(|m| m.id).collect();
    let held = target.has_changes(&ids).await?;
    if held.len() != ids.len() {
        return Err(Error::Protocol {
            reason: format!("has_changes answered {} of {} ids", held.len(), ids.len()),
        });
    }
    let missing: Vec<ChangeMeta> = metas
        .into_iter()
        .zip(held)
        .filter_map(|(m, h)| (!h).then_some(m))
        .collect();
    let missing = graph::topo_sort(missing, |m| m.id, |m| &m.deps);
    let groups: Vec<Vec<ChangeId>> = byte_groups(&missing, opts.batch_bytes)
        .into_iter()
        .map(|g| g.iter().map(|m| m.id).collect())
        .collect();
    Ok(Plan {
        groups: groups.into_iter(),
        first: None,
    })
}

/// Copy the changes of one scanned page that `target` lacks: ask which are
/// missing, fetch them in byte-bounded groups, screen them, append deps
/// first ([`plan_page`], then [`finish_page`]).
async fn apply_page(
    source: &dyn AppendOnlyStore,
    target: &dyn AppendOnlyStore,
    metas: Vec<ChangeMeta>,
    opts: &SyncOptions,
    rep: &mut TransferReport,
) -> Result<()> {
    let plan = plan_page(target, metas, opts).await?;
    finish_page(source, target, plan, opts, rep).await
}

/// Fetch, screen and append the groups of `plan` in order. The next group
/// is fetched while the current one is appended, so at most two groups of
/// a page are in memory.
async fn finish_page<'a>(
    source: &'a dyn AppendOnlyStore,
    target: &dyn AppendOnlyStore,
    plan: Plan<'a>,
    opts: &SyncOptions,
    rep: &mut TransferReport,
) -> Result<()> {
    let Plan { mut groups, first } = plan;
    let mut in_flight = first.or_else(|| groups.next().map(|g| fetch(source, g)));
    while let Some(pending) = in_flight.take() {
        let (ids, fetched) = pending.await?;
        let accept = screen(&ids, fetched, opts, rep)?;
        let next = groups.next().map(|g| fetch(source, g));
        if accept.is_empty() {
            in_flight = next;
            continue;
        }
        let out = match next {
            Some(next) => {
                // The fetch first, so that its request is sent before the
                // append runs.
                let (prefetched, out) =
                    futures::future::join(next, append_checked(target, accept, rep)).await;
                in_flight = Some(Box::pin(futures::future::ready(prefetched)));
                out?
            }
            None => append_checked(target, accept, rep).await?,
        };
        rep.changes += out.new.len() as u64;
    }
    Ok(())
}

/// Most times one batch waits on a rate limit before the sync gives up
/// with the `RateLimited` error.
const MAX_RATE_WAITS: u32 = 64;

/// Longest single wait on a rate limit.
const MAX_RATE_WAIT: Duration = Duration::from_secs(60);

/// Append `batch`, whose integrity the target checks anyway (every store
/// runs `prepare_batch`), so it is not hashed twice. If the target refuses
/// the batch for integrity, each change is checked here: the bad ones are
/// reported as rejected and the rest appended. If the target's own policy
/// refuses a change ([`Error::Rejected`]), that change is reported as
/// rejected and the rest appended. If the target is over a rate limit, the
/// sync waits as long as it says (counted in `throttled`) and tries again.
async fn append_checked(
    target: &dyn AppendOnlyStore,
    mut batch: Vec<Change>,
    rep: &mut TransferReport,
) -> Result<AppendOutcome> {
    let mut waits = 0u32;
    // Bounded: each refusal removes one change from the batch, and rate
    // limits are waited on at most MAX_RATE_WAITS times.
    loop {
        if batch.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let bytes: u64 = batch.iter().map(|c| c.payload.len() as u64).sum();
        // The clone shares the payloads (`Bytes`); it keeps the batch for the
        // rare fallback, and costs far less than hashing every change twice.
        match target.append(batch.clone()).await {
            Ok(out) => {
                rep.bytes += bytes;
                return Ok(out);
            }
            Err(Error::Integrity { .. }) => {
                let before = batch.len();
                batch.retain(|c| match c.check_integrity() {
                    Ok(()) => true,
                    Err(e) => {
                        rep.rejected.push(Rejected {
                            id: c.id(),
                            reason: RejectReason::Integrity(e.to_string()),
                        });
                        false
                    }
                });
                if batch.len() == before {
                    // The target says integrity, every change checks out
                    // here: the target is wrong; give up on the batch.
                    return Err(Error::Protocol {
                        reason: "the target refused a batch for integrity, but every change in it is intact".into(),
                    });
                }
            }
            Err(Error::Rejected { id, reason }) if batch.iter().any(|c| c.id() == id) => {
                tracing::debug!(%id, %reason, "the target's policy refused a change");
                rep.rejected.push(Rejected { id, reason });
                batch.retain(|c| c.id() != id);
            }
            Err(Error::RateLimited { what, retry_after }) if waits < MAX_RATE_WAITS => {
                waits += 1;
                let wait = retry_after.min(MAX_RATE_WAIT);
                tracing::debug!(%what, ?wait, "the target is over a rate limit; waiting");
                tokio::time::sleep(wait).await;
                rep.throttled += wait;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Check fetched changes: every id asked must be there, and the verifier
/// decides what is accepted (integrity is checked by the target's append,
/// see [`append_checked`]); refusals are recorded.
fn screen(
    ids: &[ChangeId],
    fetched: Vec<Change>,
    opts: &SyncOptions,
    rep: &mut TransferReport,
) -> Result<Vec<Change>> {
    let mut accept: Vec<Change> = Vec::with_capacity(fetched.len());
    let mut got = std::collections::HashSet::with_capacity(fetched.len());
    for c in fetched {
        if !got.insert(c.id()) {
            continue;
        }
        if let Err(reason) = opts.verifier.verify(&c.meta) {
            tracing::warn!(id = %c.id(), %reason, "change rejected");
            rep.rejected.push(Rejected { id: c.id(), reason });
            continue;
        }
        accept.push(c);
    }
    if let Some(id) = ids.iter().find(|id| !got.contains(*id)) {
        return Err(Error::Protocol {
            reason: format!("source listed {id} in scan but did not return it"),
        });
    }
    Ok(accept)
}

/// Split `metas` into consecutive groups whose payloads add up to at most
/// `max_bytes` (a single larger change forms its own group).
fn byte_groups(metas: &[ChangeMeta], max_bytes: u64) -> Vec<&[ChangeMeta]> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, m) in metas.iter().enumerate() {
        if i > start && bytes.saturating_add(m.payload_len) > max_bytes {
            groups.push(&metas[start..i]);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(m.payload_len);
    }
    if start < metas.len() {
        groups.push(&metas[start..]);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChangeBuilder, ChangeKind, DocId};

    #[test]
    fn byte_groups_fill_up_to_the_limit_exactly() {
        let meta = |len: usize| {
            ChangeBuilder::new(ChangeKind::Change, DocId::new("d").unwrap())
                .payload(vec![0; len])
                .build()
                .unwrap()
                .meta
        };
        let metas = vec![meta(4), meta(6), meta(5), meta(5)];
        let sizes =
            |max| -> Vec<usize> { byte_groups(&metas, max).iter().map(|g| g.len()).collect() };
        // 4 + 6 = 10 fits a limit of 10 exactly, and so does 5 + 5.
        assert_eq!(sizes(10), vec![2, 2]);
        assert_eq!(sizes(9), vec![1, 1, 1, 1]);
        assert_eq!(sizes(20), vec![4]);
        assert!(byte_groups(&[], 10).is_empty());
        // A change larger than the limit goes alone, never after an empty group.
        let big = vec![meta(12), meta(3)];
        let sizes: Vec<usize> = byte_groups(&big, 10).iter().map(|g| g.len()).collect();
        assert_eq!(sizes, vec![1, 1]);
    }

    #[test]
    fn reports_and_directions_print_what_they_hold() {
        assert_eq!(Direction::Pull.to_string(), "pull");
        assert_eq!(Direction::Push.to_string(), "push");
        let mut r = SyncReport::default();
        r.pulled.changes = 3;
        r.pulled.bytes = 300;
        r.pulled.rounds = 2;
        r.pushed.changes = 1;
        r.pushed.bytes = 10;
        r.pushed.rounds = 5;
        r.elapsed = Duration::from_millis(1500);
        assert_eq!(r.rounds(), 7);
        assert_eq!(
            r.to_string(),
            "pulled 3 changes (300 bytes), pushed 1 changes (10 bytes), 0 rejected, 7 rounds, 1.5s"
        );
        r.pulled.throttled = Duration::from_millis(200);
        r.pushed.throttled = Duration::from_millis(100);
        assert!(
            r.to_string()
                .ends_with("1.5s (300.0ms waiting on rate limits)"),
            "{r}"
        );
        let dbg = format!("{:?}", SyncOptions::default());
        for field in [
            "batch_changes",
            "batch_bytes",
            "progress: false",
            "reconcile",
        ] {
            assert!(dbg.contains(field), "{dbg}");
        }
    }

    #[test]
    fn byte_groups_respect_limit_and_keep_everything() {
        let metas: Vec<ChangeMeta> = (0..10u8)
            .map(|i| {
                ChangeBuilder::new(ChangeKind::Change, DocId::new("d").unwrap())
                    .payload(vec![i; 40 * usize::from(i)])
                    .build()
                    .unwrap()
                    .meta
            })
            .collect();
        let groups = byte_groups(&metas, 100);
        assert_eq!(groups.iter().map(|g| g.len()).sum::<usize>(), 10);
        for g in &groups {
            let b: u64 = g.iter().map(|m| m.payload_len).sum();
            assert!(
                g.len() == 1 || b <= 100,
                "group of {} with {b} bytes",
                g.len()
            );
        }
    }
}
