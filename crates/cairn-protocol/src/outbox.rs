//! The outbox: changes appended locally that a peer has not confirmed yet,
//! and the loop that delivers them.
//!
//! A network store's `append` returns once the change is in its local cache
//! and in the outbox; it never waits on a peer. One delivery loop per
//! connected peer ([`deliver`]) sends what that peer has not confirmed, in
//! append order, in bounded batches, retrying transient failures with
//! backoff while the connection lasts. A permanent refusal (unauthorized, a
//! policy rejection, over a limit) ends the change's delivery to that peer
//! and is recorded, never retried in a loop. [`Outbox::flush`] waits until
//! nothing is pending and reports such refusals.
//!
//! A change leaves the outbox when at least one peer has confirmed (or
//! refused) it and every peer attached at that moment has too. A peer that
//! attaches later, or reconnects, catches up by syncing, not from the
//! outbox. The outbox is in memory: after a restart, a durable cache's
//! undelivered changes reach the peers through that catch-up sync.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use cairn::{AppendOnlyStore, ChangeId, Error, Result};
use tokio::sync::{broadcast, watch};
use tracing::{debug, warn};

use crate::cache::{Backoff, StoreEvent};
use crate::error::WireError;
use crate::peer::PeerId;

/// Most recent permanent refusals an outbox remembers.
const MAX_FAILURES: usize = 64;

/// A local change a peer refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFailure {
    /// The peer that refused.
    pub peer: PeerId,
    /// The changes it refused.
    pub ids: Vec<ChangeId>,
    /// Why (as carried on the wire; [`WireError::into_error`] gives the
    /// typed error).
    pub error: WireError,
}

#[derive(Debug)]
struct Entry {
    id: ChangeId,
    bytes: u64,
    /// Peers that confirmed or refused it.
    done: Vec<PeerId>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    entries: BTreeMap<u64, Entry>,
    by_id: HashMap<ChangeId, u64>,
    attached: BTreeSet<PeerId>,
    /// Ids being appended locally right now (counted), not yet added.
    reserved: HashMap<ChangeId, u32>,
    failures: VecDeque<DeliveryFailure>,
    /// Failures not yet reported by `flush`.
    unreported: usize,
}

impl State {
    /// Remove the entries every attached peer is done with (and at least
    /// one peer is).
    fn sweep(&mut self, keys: impl IntoIterator<Item = u64>) {
        for k in keys {
            let finished = self.entries.get(&k).is_some_and(|e| {
                !e.done.is_empty() && self.attached.iter().all(|p| e.done.contains(p))
            });
            if finished && let Some(e) = self.entries.remove(&k) {
                self.by_id.remove(&e.id);
            }
        }
    }

    fn mark(&mut self, peer: PeerId, ids: &[ChangeId]) {
        let keys: Vec<u64> = ids
            .iter()
            .filter_map(|id| self.by_id.get(id))
            .copied()
            .collect();
        for k in &keys {
            if let Some(e) = self.entries.get_mut(k)
                && !e.done.contains(&peer)
            {
                e.done.push(peer);
            }
        }
        self.sweep(keys);
    }
}

/// Changes appended locally that are not yet delivered (see the module
/// docs). Shared by a network store's `append` and its delivery loops.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    events: Option<broadcast::Sender<StoreEvent>>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            changed: watch::Sender::new(0),
            events: None,
        }
    }
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty outbox that announces each refusal as a
    /// [`StoreEvent::DeliveryRefused`] on `events`.
    pub fn with_events(events: broadcast::Sender<StoreEvent>) -> Self {
        Outbox {
            events: Some(events),
            ..Self::default()
        }
    }

    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut s)
        };
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
        r
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Add newly appended changes (id and payload size), in append order.
    /// An id already pending is not added twice.
    pub fn add(&self, items: impl IntoIterator<Item = (ChangeId, u64)>) {
        self.update(|s| {
            for (id, bytes) in items {
                if s.by_id.contains_key(&id) {
                    continue;
                }
                let k = s.next;
                s.next += 1;
                s.by_id.insert(id, k);
                s.entries.insert(
                    k,
                    Entry {
                        id,
                        bytes,
                        done: Vec::new(),
                    },
                );
            }
        });
    }

    /// Mark `ids` as about to be added (a local append is storing them), so
    /// [`delivers_to`](Self::delivers_to) already answers for them; undo
    /// with [`release`](Self::release) once they are added or the append
    /// failed.
    pub fn reserve(&self, ids: &[ChangeId]) {
        self.update(|s| {
            for id in ids {
                *s.reserved.entry(*id).or_default() += 1;
            }
        });
    }

    /// Undo a [`reserve`](Self::reserve).
    pub fn release(&self, ids: &[ChangeId]) {
        self.update(|s| {
            for id in ids {
                if let Some(n) = s.reserved.get_mut(id) {
                    *n -= 1;
                    if *n == 0 {
                        s.reserved.remove(id);
                    }
                }
            }
        });
    }

    /// Whether the outbox will deliver `id` to `peer` (attached, and it
    /// has neither confirmed nor refused it), or `id` is being appended
    /// locally right now. A notification to `peer` about such a change is
    /// redundant: the change itself is on its way.
    pub fn delivers_to(&self, peer: &PeerId, id: &ChangeId) -> bool {
        self.read(|s| {
            s.reserved.contains_key(id)
                || (s.attached.contains(peer)
                    && s.by_id
                        .get(id)
                        .and_then(|k| s.entries.get(k))
                        .is_some_and(|e| !e.done.contains(peer)))
        })
    }

    /// A peer can now be delivered to (its session is up).
    pub fn attach(&self, peer: PeerId) {
        self.update(|s| {
            s.attached.insert(peer);
        });
    }

    /// A peer's session ended: it no longer holds changes back.
    pub fn detach(&self, peer: &PeerId) {
        self.update(|s| {
            s.attached.remove(peer);
            let keys: Vec<u64> = s.entries.keys().copied().collect();
            s.sweep(keys);
        });
    }

    /// Changes pending (not yet delivered).
    pub fn pending(&self) -> usize {
        self.read(|s| s.entries.len())
    }

    /// The ids pending, in append order.
    pub fn pending_ids(&self) -> Vec<ChangeId> {
        self.read(|s| s.entries.values().map(|e| e.id).collect())
    }

    /// The next changes to send `peer`: the oldest it has not confirmed or
    /// refused, at most `max_changes`, and at most `max_bytes` of payload
    /// (but at least one).
    pub fn batch(&self, peer: &PeerId, max_changes: usize, max_bytes: u64) -> Vec<ChangeId> {
        self.read(|s| {
            let mut out = Vec::new();
            let mut bytes = 0u64;
            for e in s.entries.values().filter(|e| !e.done.contains(peer)) {
                if out.len() >= max_changes.max(1)
                    || (!out.is_empty() && bytes.saturating_add(e.bytes) > max_bytes)
                {
                    break;
                }
                bytes = bytes.saturating_add(e.bytes);
                out.push(e.id);
            }
            out
        })
    }

    /// `peer` holds these changes now.
    pub fn confirm(&self, peer: PeerId, ids: &[ChangeId]) {
        self.update(|s| s.mark(peer, ids));
    }

    /// `peer` refused these changes for good.
    pub fn refuse(&self, peer: PeerId, ids: &[ChangeId], error: &Error) {
        warn!(%peer, changes = ids.len(), %error, "the peer refused local changes");
        let failure = DeliveryFailure {
            peer,
            ids: ids.to_vec(),
            error: WireError::from(error),
        };
        self.update(|s| {
            s.mark(peer, ids);
            if s.failures.len() == MAX_FAILURES {
                s.failures.pop_front();
            }
            s.failures.push_back(failure.clone());
            s.unreported = (s.unreported + 1).min(MAX_FAILURES);
        });
        if let Some(tx) = &self.events {
            let _ = tx.send(StoreEvent::DeliveryRefused(failure));
        }
    }

    /// The most recent permanent refusals (at most 64), oldest first.
    pub fn failures(&self) -> Vec<DeliveryFailure> {
        self.read(|s| s.failures.iter().cloned().collect())
    }

    /// A receiver that changes whenever the outbox does.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wait until nothing is pending, at most `timeout`.
    ///
    /// - `Ok(())` when every change appended so far was delivered.
    /// - The typed error of the first permanent refusal not yet reported
    ///   by an earlier `flush` ([`Outbox::failures`] lists them all).
    /// - [`Error::Timeout`] naming how many changes are still pending.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.watch();
        // Drop the watch guard at once: `update` below takes the write side.
        let done = tokio::time::timeout(timeout, async {
            rx.wait_for(|_| self.pending() == 0).await.is_ok()
        })
        .await;
        let failure = self.update(|s| {
            let n = s.unreported;
            s.unreported = 0;
            let first = s.failures.len().saturating_sub(n);
            s.failures.get(first).cloned()
        });
        if let Some(f) = failure {
            return Err(f.error.into_error());
        }
        match done {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                what: format!("delivering {} pending changes", self.pending()),
                after: timeout,
            }),
        }
    }
}

/// How [`deliver`] batches and retries.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryOptions {
    /// Spacing of retries after transient failures.
    pub backoff: Backoff,
    /// Most changes per append request (default 1000).
    pub max_changes: usize,
    /// Most payload bytes per append request (default 8 MiB; a single
    /// larger change is sent alone).
    pub max_bytes: u64,
    /// Longest wait a `RateLimited { retry_after }` answer is honoured for
    /// (default 60 s).
    pub max_rate_wait: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            backoff: Backoff {
                min: Duration::from_millis(50),
                max: Duration::from_secs(5),
            },
            max_changes: 1000,
            max_bytes: 8 << 20,
            max_rate_wait: Duration::from_secs(60),
        }
    }
}

/// Deliver `outbox`'s changes to `peer` (reached as `remote`), reading them
/// from `cache`, until the cache fails (the error is returned) or the
/// caller drops the future (when the session ends). Attaches the peer on
/// start; the caller detaches it when the session ends.
///
/// Transient failures are retried with backoff, honouring a peer's
/// `RateLimited { retry_after }`; a [`Error::Rejected`] change is refused
/// alone and the rest go on; a batch over the peer's size limit is split
/// until the change that is too large is found and refused; any other
/// permanent error refuses the batch ([`Outbox::refuse`]).
pub async fn deliver(
    outbox: &Outbox,
    cache: &dyn AppendOnlyStore,
    remote: &dyn AppendOnlyStore,
    peer: PeerId,
    opts: &DeliveryOptions,
) -> Result<()> {
    outbox.attach(peer);
    let mut rx = outbox.watch();
    let mut attempt: u32 = 0;
    let mut max_changes = opts.max_changes.max(1);
    loop {
        rx.borrow_and_update();
        let ids = outbox.batch(&peer, max_changes, opts.max_bytes);
        if ids.is_empty() {
            if rx.changed().await.is_err() {
                return Ok(());
            }
            continue;
        }
        let changes = cache.get_changes(&ids).await?;
        if changes.len() != ids.len() {
            // A cache only grows, so this cannot happen; drop what it lacks
            // rather than loop on it.
            let held: std::collections::HashSet<ChangeId> =
                changes.iter().map(|c| c.id()).collect();
            let lost: Vec<ChangeId> = ids.iter().filter(|i| !held.contains(i)).copied().collect();
            outbox.refuse(
                peer,
                &lost,
                &Error::NotFound {
                    what: format!("{} outbox changes in the local cache", lost.len()),
                },
            );
            continue;
        }
        match remote.append(changes).await {
            Ok(_) => {
                outbox.confirm(peer, &ids);
                attempt = 0;
                max_changes = opts.max_changes.max(1);
            }
            Err(Error::RateLimited { retry_after, what }) => {
                let wait = retry_after.min(opts.max_rate_wait);
                debug!(%peer, %what, ?wait, "rate limited; delivery waits");
                tokio::time::sleep(wait).await;
            }
            Err(Error::Rejected { id, reason }) if ids.contains(&id) => {
                let e = Error::Rejected { id, reason };
                outbox.refuse(peer, &[id], &e);
            }
            Err(Error::TooLarge { .. }) if ids.len() > 1 => {
                // Find the change that is too large by halving the batch.
                max_changes = (ids.len() / 2).max(1);
            }
            Err(e) if e.is_retryable() => {
                attempt = attempt.saturating_add(1);
                let delay = opts.backoff.delay(attempt);
                debug!(%peer, error = %e, ?delay, "delivery failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => outbox.refuse(peer, &ids, &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChangeId {
        ChangeId::from_bytes([n; 32])
    }

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    #[test]
    fn a_change_leaves_once_every_attached_peer_is_done() {
        let o = Outbox::new();
        o.add([(id(1), 10), (id(2), 10)]);
        assert_eq!(o.pending(), 2);
        o.attach(peer(1));
        o.attach(peer(2));
        o.confirm(peer(1), &[id(1)]);
        assert_eq!(o.pending(), 2, "peer 2 has not confirmed");
        assert_eq!(o.batch(&peer(1), 10, 100), vec![id(2)]);
        assert_eq!(o.batch(&peer(2), 10, 100), vec![id(1), id(2)]);
        o.confirm(peer(2), &[id(1)]);
        assert_eq!(o.pending_ids(), vec![id(2)]);
        // Peer 2 goes away: a change peer 1 holds is delivered.
        o.confirm(peer(1), &[id(2)]);
        o.detach(&peer(2));
        assert_eq!(o.pending(), 0);
    }

    #[test]
    fn nothing_leaves_without_a_peer() {
        let o = Outbox::new();
        o.add([(id(1), 1)]);
        o.attach(peer(1));
        o.detach(&peer(1));
        assert_eq!(o.pending(), 1, "never confirmed by anyone");
        o.add([(id(1), 1)]);
        assert_eq!(o.pending(), 1, "an id is pending once");
    }

    #[test]
    fn batches_are_bounded_by_count_and_bytes_but_never_empty() {
        let o = Outbox::new();
        o.add((0..10).map(|i| (id(i), 100)));
        assert_eq!(o.batch(&peer(1), 3, 1_000_000).len(), 3);
        assert_eq!(o.batch(&peer(1), 100, 250).len(), 2);
        assert_eq!(o.batch(&peer(1), 100, 1).len(), 1);
    }

    #[tokio::test]
    async fn flush_reports_refusals_once_and_times_out_naming_the_pending() {
        let o = Outbox::new();
        o.add([(id(1), 1), (id(2), 1)]);
        o.attach(peer(1));
        o.confirm(peer(1), &[id(1)]);
        match o.flush(Duration::from_millis(20)).await {
            Err(Error::Timeout { what, .. }) => assert!(what.contains("1 pending"), "{what}"),
            other => panic!("{other:?}"),
        }
        o.refuse(
            peer(1),
            &[id(2)],
            &Error::Unauthorized {
                reason: "read-only".into(),
            },
        );
        assert_eq!(o.pending(), 0);
        assert!(matches!(
            o.flush(Duration::from_secs(1)).await,
            Err(Error::Unauthorized { .. })
        ));
        assert!(
            o.flush(Duration::from_secs(1)).await.is_ok(),
            "reported once"
        );
        assert_eq!(o.failures().len(), 1);
    }
}
