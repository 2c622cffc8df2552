//! Pairing with every peer of a signaling room, and re-pairing with capped
//! backoff when a session is lost.
//!
//! Rules, so that each pair makes exactly one offer: a peer that (re)joins
//! offers to everyone present it is not paired with; when a session is
//! lost, the peer with the smaller id re-offers while the other is still
//! present; if offers cross, the smaller id's offer wins.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cairn::Result;
use cairn_protocol::{Backoff, Dialer, PeerId, classify};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::auth::RoomKey;
use crate::rtc::{PendingOffer, Setup};
use crate::signal::{SignalEvent, SignalMessage, Signaling};
use crate::store::{Inner, start};

/// Most members whose offer budgets are tracked at once.
const MAX_BUDGETS: usize = 4096;

struct Room<S> {
    inner: Arc<Inner>,
    sig: S,
    me: PeerId,
    present: HashSet<PeerId>,
    pending: HashMap<PeerId, (PendingOffer, Instant)>,
    due: HashMap<PeerId, Instant>,
    dialers: HashMap<PeerId, Dialer>,
    /// Answers in progress, one per member at most.
    answering: HashMap<PeerId, tokio::task::AbortHandle>,
    /// Each member's offer budget: tokens left and when they were counted.
    budgets: HashMap<PeerId, (f64, Instant)>,
    /// The room key every session of this room must prove, if any.
    room_key: Option<RoomKey>,
    done_tx: mpsc::UnboundedSender<(PeerId, bool, Result<PeerId>)>,
}

pub(crate) async fn run<S: Signaling>(inner: Arc<Inner>, sig: S) {
    let (lost_tx, mut lost_rx) = mpsc::unbounded_channel();
    *inner.lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(lost_tx);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let cancel = inner.cancel.clone();
    let mut room = Room {
        room_key: sig.room_key().or_else(|| inner.opts.room_key.clone()),
        me: inner.keypair.author(),
        inner,
        sig,
        present: HashSet::new(),
        pending: HashMap::new(),
        due: HashMap::new(),
        dialers: HashMap::new(),
        answering: HashMap::new(),
        budgets: HashMap::new(),
        done_tx,
    };
    loop {
        let next = room
            .due
            .values()
            .chain(room.pending.values().map(|(_, d)| d))
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = cancel.cancelled() => break,
            ev = room.sig.recv() => {
                let Some(ev) = ev else { break };
                room.event(ev).await;
            }
            lost = lost_rx.recv() => {
                let Some(peer) = lost else { break };
                if room.present.contains(&peer) && room.me < peer {
                    room.retry(peer);
                }
            }
            done = done_rx.recv() => {
                let Some((claimed, offered, r)) = done else { break };
                match r {
                    Ok(proven) => {
                        if proven != claimed {
                            warn!(%claimed, %proven, "the signaling named a different peer than the channel proved");
                        }
                        room.dialer(claimed).connected(std::time::Instant::now());
                    }
                    Err(e) => {
                        debug!(peer = %claimed, error = %e, "pairing failed");
                        // A refusal (the peer's policy, another store,
                        // another version) is not retried: the peer offers
                        // again if it rejoins.
                        if let Some(refusal) = classify(&e) {
                            warn!(peer = %claimed, ?refusal, error = %e, "the peer refused us; not retrying");
                        } else if offered && room.present.contains(&claimed) {
                            room.retry(claimed);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(next) => room.tick().await,
        }
    }
    debug!("left the room");
}

impl<S: Signaling> Room<S> {
    fn dialer(&mut self, peer: PeerId) -> &mut Dialer {
        let o = &self.inner.opts;
        let backoff = Backoff {
            min: o.backoff_min,
            max: o.backoff_max,
        };
        self.dialers
            .entry(peer)
            .or_insert_with(|| Dialer::new(backoff))
    }

    /// Pair with `peer` again after a transient failure or a lost session,
    /// with backoff that only a healthy session resets (see [`Dialer`]).
    fn retry(&mut self, peer: PeerId) {
        let now = std::time::Instant::now();
        let (at, state) = self.dialer(peer).failed(now, None);
        self.inner.set_state(state);
        self.due
            .insert(peer, Instant::now() + at.saturating_duration_since(now));
    }

    async fn event(&mut self, ev: SignalEvent) {
        match ev {
            SignalEvent::Present(peers) => {
                self.present = peers.into_iter().filter(|p| *p != self.me).collect();
                let now = Instant::now();
                for p in &self.present {
                    if !self.inner.is_paired(p) && !self.pending.contains_key(p) {
                        self.due.insert(*p, now);
                    }
                }
            }
            SignalEvent::Joined(p) => {
                if p != self.me {
                    self.present.insert(p);
                }
            }
            SignalEvent::Left(p) => {
                self.present.remove(&p);
                self.pending.remove(&p);
                self.due.remove(&p);
                self.dialers.remove(&p);
                self.budgets.remove(&p);
                if let Some(h) = self.answering.remove(&p) {
                    h.abort();
                }
            }
            SignalEvent::Message {
                from,
                message: SignalMessage::Offer { sdp },
            } => {
                if self.pending.contains_key(&from) && self.me < from {
                    debug!(peer = %from, "crossed offers; ours wins");
                    return;
                }
                if !self.offer_allowed(from) {
                    warn!(peer = %from, "too many offers from this peer; ignoring one");
                    return;
                }
                if let Some(h) = self.answering.remove(&from) {
                    debug!(peer = %from, "a newer offer replaces the one being answered");
                    h.abort();
                }
                self.pending.remove(&from);
                if self.handshakes() >= self.inner.opts.max_handshakes {
                    warn!(peer = %from, "too many pairings in progress; ignoring an offer");
                    return;
                }
                self.due.remove(&from);
                self.present.insert(from);
                if let Err(e) = self.answer(from, &sdp).await {
                    warn!(peer = %from, error = %e, "cannot answer the offer");
                }
            }
            SignalEvent::Message {
                from,
                message: SignalMessage::Answer { sdp },
            } => {
                let Some((pending, _)) = self.pending.remove(&from) else {
                    debug!(peer = %from, "answer to no pending offer");
                    return;
                };
                match pending.accept(&sdp, self.inner.opts.open_timeout) {
                    Ok(rx) => {
                        let inner = self.inner.clone();
                        let done = self.done_tx.clone();
                        let key = self.room_key.clone();
                        tokio::spawn(async move {
                            let r = start(inner, rx, key).await;
                            let _ = done.send((from, true, r));
                        });
                    }
                    Err(e) => {
                        warn!(peer = %from, error = %e, "bad answer");
                        self.retry(from);
                    }
                }
            }
        }
    }

    async fn answer(&mut self, from: PeerId, sdp: &str) -> Result<()> {
        let (answer, rx) = Setup::new(&self.inner.opts.ice())
            .await?
            .answer(sdp, self.inner.opts.open_timeout)?;
        self.sig
            .send(from, SignalMessage::Answer { sdp: answer })
            .await?;
        let inner = self.inner.clone();
        let done = self.done_tx.clone();
        let key = self.room_key.clone();
        let task = tokio::spawn(async move {
            let r = start(inner, rx, key).await;
            let _ = done.send((from, false, r));
        });
        self.answering.insert(from, task.abort_handle());
        Ok(())
    }

    /// Whether one more offer from `from` is within its budget (a token
    /// bucket of `offer_burst`, refilled every `offer_interval`).
    fn offer_allowed(&mut self, from: PeerId) -> bool {
        let o = &self.inner.opts;
        let burst = f64::from(o.offer_burst.max(1));
        let per = o.offer_interval.as_secs_f64().max(1e-3);
        let now = Instant::now();
        if !self.budgets.contains_key(&from) && self.budgets.len() >= MAX_BUDGETS {
            // Offers may claim any sender: forget the budgets that have
            // refilled (a new one starts full, so nothing changes), and
            // refuse newcomers while every budget is still in use.
            self.budgets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() / per < burst
            });
            if self.budgets.len() >= MAX_BUDGETS {
                return false;
            }
        }
        let (tokens, at) = self.budgets.entry(from).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() / per).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Pairings in progress: our offers waiting for answers, and answers
    /// whose channel is not established yet.
    fn handshakes(&mut self) -> usize {
        self.answering.retain(|_, h| !h.is_finished());
        self.pending.len() + self.answering.len()
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        // Offers nobody answered in time.
        let expired: Vec<PeerId> = self
            .pending
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in expired {
            self.pending.remove(&p);
            if self.present.contains(&p) {
                self.retry(p);
            }
        }
        let ready: Vec<PeerId> = self
            .due
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in ready {
            self.due.remove(&p);
            if !self.present.contains(&p) || self.inner.is_paired(&p) {
                continue;
            }
            if self.handshakes() >= self.inner.opts.max_handshakes {
                // Try again later, with backoff.
                self.retry(p);
                continue;
            }
            match self.offer(p).await {
                Ok(()) => info!(peer = %p, "offered"),
                Err(e) => {
                    debug!(peer = %p, error = %e, "offer failed");
                    self.retry(p);
                }
            }
        }
    }

    async fn offer(&mut self, to: PeerId) -> Result<()> {
        let (sdp, pending) = Setup::new(&self.inner.opts.ice()).await?.offer()?;
        self.sig.send(to, SignalMessage::Offer { sdp }).await?;
        let deadline = Instant::now() + self.inner.opts.handshake_timeout;
        self.pending.insert(to, (pending, deadline));
        Ok(())
    }
}
