//! What a serving side lets in: response caps, append rate limits per peer
//! and per store, and a stored-bytes quota per store. Shared by every
//! connection of a server, whatever the transport.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn::{AppendOnlyStore, Change, Error, Result, StoreId};

use crate::peer::PeerId;

/// Caps on one response, enforced by [`dispatch`](crate::dispatch) for
/// every transport. A request whose answer would pass them is answered in
/// part where the protocol allows it (`get_changes`, `get_metas`, `scan`,
/// `ids_in_range`: a prefix, which clients page through transparently) and
/// refused with `TOO_LARGE` otherwise (`find_new_changes`,
/// `all_change_ids`, `changes_for_doc`: page with `SCAN` or `IDS_IN_RANGE`
/// instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseLimits {
    /// Most items (changes, metadata records, ids) in one response
    /// (default 65,536).
    pub max_items: usize,
    /// Most payload bytes in one `get_changes` response (default 64 MiB); a
    /// single larger change is still sent, alone.
    pub max_bytes: u64,
}

impl Default for ResponseLimits {
    fn default() -> Self {
        ResponseLimits {
            max_items: 65_536,
            max_bytes: 64 << 20,
        }
    }
}

/// A token-bucket rate: `per_second` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained rate per second.
    pub per_second: f64,
    /// Most that may be spent at once.
    pub burst: f64,
}

/// Append rate limits and a stored-bytes quota. `None` fields are off.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AdmissionOptions {
    /// Changes appended per second, per peer.
    pub changes_per_peer: Option<Rate>,
    /// Payload bytes appended per second, per peer.
    pub bytes_per_peer: Option<Rate>,
    /// Changes appended per second, per store (all peers together).
    pub changes_per_store: Option<Rate>,
    /// Payload bytes appended per second, per store.
    pub bytes_per_store: Option<Rate>,
    /// Most payload bytes a store may hold; an append that would pass it is
    /// refused with `QUOTA_EXCEEDED` and stores nothing.
    pub store_quota: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: &Rate, now: Instant) -> Self {
        Bucket {
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: &Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate.per_second).min(rate.burst);
        self.at = now;
    }

    /// How long until `n` tokens are there (zero if they are).
    fn wait(&self, rate: &Rate, n: f64) -> Duration {
        let need = n.min(rate.burst) - self.tokens;
        if need <= 0.0 || rate.per_second <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(need / rate.per_second)
    }
}

/// Most peers (and stores) whose buckets are remembered; idle full buckets
/// are forgotten first, so a peer cannot make the table grow without bound.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Default)]
struct State {
    peers: HashMap<PeerId, [Option<Bucket>; 2]>,
    stores: HashMap<StoreId, [Option<Bucket>; 2]>,
    used: HashMap<StoreId, u64>,
}

/// The shared admission state of one server.
#[derive(Debug, Default)]
pub struct Admission {
    opts: AdmissionOptions,
    state: Mutex<State>,
    refused: std::sync::atomic::AtomicU64,
}

fn take<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, [Option<Bucket>; 2]>,
    key: &K,
    rates: [Option<&Rate>; 2],
    cost: [f64; 2],
    now: Instant,
) -> Option<(usize, Duration)> {
    if rates.iter().all(Option::is_none) {
        return None;
    }
    if map.len() >= MAX_TRACKED && !map.contains_key(key) {
        // Forget buckets that have refilled (their owners are idle).
        map.retain(|_, b| {
            b.iter().zip(rates).any(|(b, r)| match (b, r) {
                (Some(b), Some(r)) => {
                    let mut b = *b;
                    b.refill(r, now);
                    b.tokens < r.burst
                }
                _ => false,
            })
        });
    }
    let entry = map.entry(key.clone()).or_insert([None, None]);
    let mut worst: Option<(usize, Duration)> = None;
    for i in 0..2 {
        if let Some(r) = rates[i] {
            let b = entry[i].get_or_insert_with(|| Bucket::full(r, now));
            b.refill(r, now);
            let w = b.wait(r, cost[i]);
            if w > Duration::ZERO && worst.is_none_or(|(_, x)| w > x) {
                worst = Some((i, w));
            }
        }
    }
    if worst.is_none() {
        for i in 0..2 {
            if let (Some(b), Some(_)) = (&mut entry[i], rates[i]) {
                b.tokens -= cost[i];
            }
        }
    }
    worst
}

impl Admission {
    /// Admission under `opts`.
    pub fn new(opts: AdmissionOptions) -> Self {
        Admission {
            opts,
            state: Mutex::new(State::default()),
            refused: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Appends refused so far (rate limits and quota).
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn refuse(&self, e: Error) -> Result<()> {
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Err(e)
    }

    /// The options in force.
    pub fn options(&self) -> &AdmissionOptions {
        &self.opts
    }

    /// Admit an append of `changes` by `peer` to `store`, or refuse it
    /// with [`Error::RateLimited`] (retry after the given delay) or
    /// [`Error::QuotaExceeded`]. Counts the batch against the limits when
    /// admitted. Call [`Admission::stored`] once the append succeeded.
    pub async fn admit(
        &self,
        peer: &PeerId,
        store: &dyn AppendOnlyStore,
        changes: &[Change],
    ) -> Result<()> {
        let n = changes.len() as f64;
        let bytes: u64 = changes.iter().map(|c| c.payload.len() as u64).sum();
        let now = Instant::now();
        {
            let o = &self.opts;
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let by_peer = take(
                &mut s.peers,
                peer,
                [o.changes_per_peer.as_ref(), o.bytes_per_peer.as_ref()],
                [n, bytes as f64],
                now,
            );
            if let Some((i, wait)) = by_peer {
                return self.refuse(Error::RateLimited {
                    what: format!(
                        "{} per second for peer {}",
                        if i == 0 { "changes" } else { "bytes" },
                        peer
                    ),
                    retry_after: wait,
                });
            }
            let by_store = take(
                &mut s.stores,
                store.store_id(),
                [o.changes_per_store.as_ref(), o.bytes_per_store.as_ref()],
                [n, bytes as f64],
                now,
            );
            if let Some((i, wait)) = by_store {
                return self.refuse(Error::RateLimited {
                    what: format!(
                        "{} per second for store {}",
                        if i == 0 { "changes" } else { "bytes" },
                        store.store_id()
                    ),
                    retry_after: wait,
                });
            }
        }
        if let Some(limit) = self.opts.store_quota {
            let used = self.used(store).await?;
            // Only changes the store does not hold count.
            let ids: Vec<_> = changes.iter().map(Change::id).collect();
            let held = store.has_changes(&ids).await?;
            let adding: u64 = changes
                .iter()
                .zip(held)
                .filter(|(_, h)| !h)
                .map(|(c, _)| c.payload.len() as u64)
                .sum();
            if used.saturating_add(adding) > limit {
                return self.refuse(Error::QuotaExceeded {
                    what: format!("stored payload bytes of store {}", store.store_id()),
                    limit,
                    used,
                    requested: adding,
                });
            }
        }
        Ok(())
    }

    /// The payload bytes `store` holds, counted once (one scan of its
    /// metadata, a page at a time) and kept up to date by
    /// [`Admission::stored`].
    async fn used(&self, store: &dyn AppendOnlyStore) -> Result<u64> {
        if let Some(u) = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .used
            .get(store.store_id())
        {
            return Ok(*u);
        }
        let mut total = 0u64;
        cairn::scan_all(store, |m| total = total.saturating_add(m.payload_len)).await?;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(*s.used.entry(store.store_id().clone()).or_insert(total))
    }

    /// `bytes` of new payloads were stored in `store`.
    pub fn stored(&self, store: &StoreId, bytes: u64) {
        if self.opts.store_quota.is_none() {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = s.used.get_mut(store) {
            *u = u.saturating_add(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_and_caps_at_its_burst() {
        let r = Rate {
            per_second: 10.0,
            burst: 5.0,
        };
        let t0 = Instant::now();
        let mut map: HashMap<u8, [Option<Bucket>; 2]> = HashMap::new();
        // The burst goes through at once, then the next one waits.
        for _ in 0..5 {
            assert!(take(&mut map, &1, [Some(&r), None], [1.0, 0.0], t0).is_none());
        }
        let (i, wait) = take(&mut map, &1, [Some(&r), None], [1.0, 0.0], t0).unwrap();
        assert_eq!(i, 0);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // 100 ms later one token is back; a second later the bucket is full
        // again, not fuller.
        assert!(
            take(
                &mut map,
                &1,
                [Some(&r), None],
                [1.0, 0.0],
                t0 + Duration::from_millis(100)
            )
            .is_none()
        );
        let later = t0 + Duration::from_secs(10);
        for _ in 0..5 {
            assert!(take(&mut map, &1, [Some(&r), None], [1.0, 0.0], later).is_none());
        }
        assert!(take(&mut map, &1, [Some(&r), None], [1.0, 0.0], later).is_some());
        // Another key has its own bucket.
        assert!(take(&mut map, &2, [Some(&r), None], [1.0, 0.0], later).is_none());
    }

    #[test]
    fn a_batch_larger_than_the_burst_waits_for_a_full_bucket_not_forever() {
        let r = Rate {
            per_second: 100.0,
            burst: 10.0,
        };
        let t0 = Instant::now();
        let mut map: HashMap<u8, [Option<Bucket>; 2]> = HashMap::new();
        // Spend the bucket, then ask for more than it can ever hold: the
        // wait is for a full bucket (0.1 s), and the batch then passes.
        assert!(take(&mut map, &1, [Some(&r), None], [10.0, 0.0], t0).is_none());
        let (_, wait) = take(&mut map, &1, [Some(&r), None], [50.0, 0.0], t0).unwrap();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
    }
}
