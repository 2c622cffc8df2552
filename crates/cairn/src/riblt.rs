//! Rateless invertible Bloom lookup tables over change ids: the coded
//! symbols of one-message set reconciliation.
//!
//! This follows the construction of Yang, Gilad and Alizadeh, "Practical
//! Rateless Set Reconciliation" (SIGCOMM 2024); the code is this crate's own.
//! A set of ids is encoded as an endless sequence of [`CodedSymbol`]s. Each
//! id is XORed into symbol 0 and into a random, ever sparser subset of the
//! later ones: into symbol `i` with probability about `1 / (1 + i / 2)`, so
//! every id touches about `2 ln(m)` of the first `m` symbols. Symbols of two
//! sets subtract (XOR) into the symbols of their symmetric difference, and a
//! difference of `d` ids decodes, by peeling symbols that hold a single id,
//! from the first `1.35 d` to `1.7 d` symbols in expectation, whatever the
//! sets' sizes. A receiver therefore asks for a prefix of the other side's
//! symbols, as long as it needs, and nothing else crosses.
//!
//! A [`Sketch`] (strata of one-byte checksums, a few hundred bytes) lets the
//! receiver estimate `d` before it asks, so that a difference of up to a few
//! thousand ids needs two requests.
//!
//! Everything here is deterministic and platform-independent (IEEE-754 square
//! roots are exact), because both sides must map every id to the same
//! symbols. The repository's `docs/protocol.md` (section "Set
//! reconciliation") gives the mapping byte by byte.
//!
//! ```
//! use cairn::ChangeId;
//! use cairn::riblt::{Decoder, encode};
//!
//! let id = |n: u8| ChangeId::from_bytes(*blake3::hash(&[n]).as_bytes());
//! let ours: Vec<ChangeId> = (0..100).map(id).collect();
//! let mut theirs: Vec<ChangeId> = (1..100).map(id).collect();
//! theirs.push(id(200));
//!
//! let mut decoder = Decoder::default();
//! let mut have = 0;
//! while !decoder.is_complete() {
//!     let (remote, local) = (encode(theirs.iter(), have, 8), encode(ours.iter(), have, 8));
//!     decoder.extend(&remote, &local)?;
//!     have += 8;
//! }
//! let mut found: Vec<ChangeId> = decoder.ids().copied().collect();
//! found.sort();
//! let mut expected = vec![id(0), id(200)];
//! expected.sort();
//! assert_eq!(found, expected);
//! # Ok::<(), cairn::Error>(())
//! ```

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::ids::ChangeId;

/// Bytes of one coded symbol on the wire: the 32-byte XOR of its ids, then
/// the little-endian XOR of their 64-bit checksums.
pub const SYMBOL_BYTES: usize = 40;

/// The highest symbol index (exclusive) a store answers: 2^24, enough for a
/// difference of about ten million ids. Bounds what one request can make a
/// store compute.
pub const MAX_SYMBOL_INDEX: u64 = 1 << 24;

/// The most symbols one request may ask for (2.5 MiB of answer).
pub const MAX_SYMBOLS_PER_REQUEST: u32 = 1 << 16;

/// Strata in a [`Sketch`]: ids are split by the trailing zeros of a hash.
pub const STRATA: usize = 32;

/// One-byte buckets per stratum of a [`Sketch`].
pub const STRATUM_BUCKETS: usize = 16;

/// Symbols a [`Encoder`] keeps up to date on every add: the first 2^15
/// (1.25 MiB), which settle a difference of about 20,000 ids without
/// walking the whole set.
pub const CACHED_SYMBOLS: usize = 1 << 15;

/// One coded symbol: the XOR of the ids mapped to it and of their checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct CodedSymbol {
    /// XOR of the ids mapped here.
    pub sum: [u8; 32],
    /// XOR of their [`checksum`]s.
    pub check: u64,
}

impl CodedSymbol {
    /// XOR one id (with its checksum) in or out.
    #[inline]
    fn toggle(&mut self, id: &[u8; 32], check: u64) {
        for (a, b) in self.sum.iter_mut().zip(id) {
            *a ^= b;
        }
        self.check ^= check;
    }

    /// XOR another symbol in (subtracting the sets they encode).
    #[inline]
    fn merge(&mut self, other: &CodedSymbol) {
        self.toggle(&other.sum, other.check);
    }

    /// Holds no id (or ids that cancel).
    pub fn is_empty(&self) -> bool {
        self.check == 0 && self.sum == [0u8; 32]
    }

    /// Holds exactly one id, by its checksum: that id, if so.
    fn pure(&self) -> Option<[u8; 32]> {
        (!self.is_empty() && checksum(&self.sum) == self.check).then_some(self.sum)
    }

    /// The 40 wire bytes.
    pub fn to_bytes(&self) -> [u8; SYMBOL_BYTES] {
        let mut out = [0u8; SYMBOL_BYTES];
        out[..32].copy_from_slice(&self.sum);
        out[32..].copy_from_slice(&self.check.to_le_bytes());
        out
    }

    /// From the 40 wire bytes.
    pub fn from_bytes(bytes: &[u8; SYMBOL_BYTES]) -> Self {
        let mut sum = [0u8; 32];
        sum.copy_from_slice(&bytes[..32]);
        let mut check = [0u8; 8];
        check.copy_from_slice(&bytes[32..]);
        CodedSymbol {
            sum,
            check: u64::from_le_bytes(check),
        }
    }
}

/// The SplitMix64 finalizer: a bijective, non-linear mix of 64 bits.
#[inline]
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// An id's 64-bit checksum: a non-linear hash of all its bytes, so that the
/// XOR of several ids never passes for one id (except with probability
/// 2^-64).
#[inline]
pub fn checksum(id: &[u8; 32]) -> u64 {
    let w = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&id[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    mix(w(0) ^ mix(w(1) ^ mix(w(2) ^ mix(w(3) ^ GOLDEN))))
}

/// The symbols one id maps to, in increasing order: 0, then gaps drawn so
/// that index `i` is hit with probability about `2 / (i + 2)`.
#[derive(Debug, Clone, Copy)]
struct Walk {
    state: u64,
    next: u64,
}

impl Walk {
    #[inline]
    fn new(check: u64) -> Self {
        Walk {
            state: check,
            next: 0,
        }
    }

    /// Move to the next index this id maps to.
    #[inline]
    fn advance(&mut self) {
        self.state = self.state.wrapping_add(GOLDEN);
        let r = mix(self.state) as f64;
        // With u = r / 2^64 uniform, the gap g has P(g > x) =
        // ((i + 1.5) / (i + 1.5 + x))^2: the continuous form of hitting
        // index j with probability 2 / (j + 2).
        let gap = ((self.next as f64 + 1.5) * (4_294_967_296.0 / (r + 1.0).sqrt() - 1.0)).ceil();
        // `as` saturates; a gap of 0 (r within 2^-54 of its top) becomes 1.
        self.next = self.next.saturating_add((gap as u64).max(1));
    }
}

/// Strata of one-byte checksums, for estimating the size of a difference
/// before asking for symbols (see [`estimate_difference`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sketch {
    /// `STRATA` strata of `STRATUM_BUCKETS` bytes; stratum `k` holds the ids
    /// whose stratum hash has `k` trailing zeros (`STRATA - 1` or more for
    /// the last).
    pub strata: [[u8; STRATUM_BUCKETS]; STRATA],
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch {
            strata: [[0u8; STRATUM_BUCKETS]; STRATA],
        }
    }
}

impl Sketch {
    #[inline]
    fn toggle(&mut self, check: u64) {
        let h = mix(check ^ 0x5851_f42d_4c95_7f2d);
        let k = (h.trailing_zeros() as usize).min(STRATA - 1);
        let bucket = (h >> 60) as usize;
        self.strata[k][bucket] ^= (h >> 40) as u8;
    }

    /// Strata up to the last that is not all zeros (what the wire carries).
    pub fn used(&self) -> usize {
        self.strata
            .iter()
            .rposition(|s| s.iter().any(|&b| b != 0))
            .map_or(0, |k| k + 1)
    }
}

/// The maximum-likelihood size of the symmetric difference of two sets from
/// their sketches. 0 when every bucket matches.
pub fn estimate_difference(a: &Sketch, b: &Sketch) -> u64 {
    let mut differ = [0u32; STRATA];
    for (n, (x, y)) in differ.iter_mut().zip(a.strata.iter().zip(&b.strata)) {
        *n = x.iter().zip(y).filter(|(p, q)| p != q).count() as u32;
    }
    if differ.iter().all(|&n| n == 0) {
        return 0;
    }
    let log_likelihood = |d: f64| -> f64 {
        let mut ll = 0.0;
        for (k, &n) in differ.iter().enumerate() {
            let share = if k == STRATA - 1 {
                0.5f64.powi(k as i32)
            } else {
                0.5f64.powi(k as i32 + 1)
            };
            let lambda = d * share / STRATUM_BUCKETS as f64;
            let empty = (-lambda).exp();
            // A bucket with differing ids still matches 1 time in 256.
            let equal = empty + (1.0 - empty) / 256.0;
            ll += n as f64 * (1.0 - equal).max(1e-300).ln()
                + (STRATUM_BUCKETS as u32 - n) as f64 * equal.ln();
        }
        ll
    };
    // A geometric grid from 1 to 2^27 (past what MAX_SYMBOL_INDEX can
    // decode), then refined around the best point.
    let mut best = (1.0, f64::NEG_INFINITY);
    let mut d = 1.0f64;
    while d < 1.35e8 {
        let ll = log_likelihood(d);
        if ll > best.1 {
            best = (d, ll);
        }
        d *= 1.1;
    }
    let (lo, mut d) = (best.0 / 1.1, best.0 / 1.1);
    while d < lo * 1.21 {
        let ll = log_likelihood(d);
        if ll > best.1 {
            best = (d, ll);
        }
        d *= 1.01;
    }
    best.0.round().max(1.0) as u64
}

/// What a [`SymbolRequest`] asks of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymbolRequest {
    /// The first symbol index wanted.
    pub start: u64,
    /// How many symbols from `start` (at most [`MAX_SYMBOLS_PER_REQUEST`];
    /// `start + count` at most [`MAX_SYMBOL_INDEX`]).
    pub count: u32,
    /// Whether to include the store's [`Sketch`].
    pub sketch: bool,
}

impl SymbolRequest {
    /// An [`Error::InvalidInput`] naming the bound a request breaks.
    pub fn check(&self) -> Result<()> {
        if self.count > MAX_SYMBOLS_PER_REQUEST {
            return Err(Error::InvalidInput {
                reason: format!(
                    "coded symbol request for {} symbols; at most {MAX_SYMBOLS_PER_REQUEST}",
                    self.count
                ),
            });
        }
        if self.start.saturating_add(u64::from(self.count)) > MAX_SYMBOL_INDEX {
            return Err(Error::InvalidInput {
                reason: format!(
                    "coded symbol request reaches index {}; at most {MAX_SYMBOL_INDEX}",
                    self.start.saturating_add(u64::from(self.count))
                ),
            });
        }
        Ok(())
    }
}

/// A store's answer to a [`SymbolRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolReply {
    /// How many ids the store holds.
    pub total: u64,
    /// The XOR of all their checksums (symbol 0's `check`): with `total`, a
    /// version of the set, so that a receiver notices a set that changed
    /// between two requests.
    pub digest: u64,
    /// The sketch, if asked for (boxed: 512 bytes).
    pub sketch: Option<Box<Sketch>>,
    /// The symbols `start .. start + count`.
    pub symbols: Vec<CodedSymbol>,
}

/// Symbols `start .. start + count` of a set of ids, computed by walking
/// every id (the default for a store without maintained state).
pub fn encode<'a>(
    ids: impl IntoIterator<Item = &'a ChangeId>,
    start: u64,
    count: u32,
) -> Vec<CodedSymbol> {
    let end = start.saturating_add(u64::from(count));
    let mut out = vec![CodedSymbol::default(); count as usize];
    for id in ids {
        let bytes = id.as_bytes();
        let check = checksum(bytes);
        let mut walk = Walk::new(check);
        while walk.next < start {
            walk.advance();
        }
        while walk.next < end {
            out[(walk.next - start) as usize].toggle(bytes, check);
            walk.advance();
        }
    }
    out
}

/// Answer `request` over a set of ids by walking all of them.
pub fn answer<'a>(
    ids: impl IntoIterator<Item = &'a ChangeId> + Clone,
    request: &SymbolRequest,
) -> Result<SymbolReply> {
    request.check()?;
    let mut total = 0u64;
    let mut digest = 0u64;
    let mut sketch = Sketch::default();
    for id in ids.clone() {
        let check = checksum(id.as_bytes());
        total += 1;
        digest ^= check;
        sketch.toggle(check);
    }
    Ok(SymbolReply {
        total,
        digest,
        sketch: request.sketch.then(|| Box::new(sketch)),
        symbols: encode(ids, request.start, request.count),
    })
}

/// Maintained state for answering [`SymbolRequest`]s: the count, digest,
/// sketch and first [`CACHED_SYMBOLS`] symbols of a set, updated on every
/// add (about 20 symbol updates an id).
#[derive(Debug, Clone)]
pub struct Encoder {
    total: u64,
    digest: u64,
    sketch: Sketch,
    symbols: Vec<CodedSymbol>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            total: 0,
            digest: 0,
            sketch: Sketch::default(),
            symbols: vec![CodedSymbol::default(); CACHED_SYMBOLS],
        }
    }
}

impl Encoder {
    /// An encoder holding `ids`.
    pub fn from_ids<'a>(ids: impl IntoIterator<Item = &'a ChangeId>) -> Self {
        let mut e = Encoder::default();
        for id in ids {
            e.add(id);
        }
        e
    }

    /// Add one id (the caller adds each id once).
    pub fn add(&mut self, id: &ChangeId) {
        let bytes = id.as_bytes();
        let check = checksum(bytes);
        self.total += 1;
        self.digest ^= check;
        self.sketch.toggle(check);
        let mut walk = Walk::new(check);
        while let Some(s) = self.symbols.get_mut(walk.next as usize) {
            s.toggle(bytes, check);
            walk.advance();
        }
    }

    /// Ids added.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Answer `request`; symbols past the cached ones are computed by
    /// walking `ids` (which must be the ids added).
    pub fn answer<'a>(
        &self,
        request: &SymbolRequest,
        ids: impl FnOnce() -> Box<dyn Iterator<Item = &'a ChangeId> + 'a>,
    ) -> Result<SymbolReply> {
        request.check()?;
        let start = request.start;
        let end = start + u64::from(request.count);
        let cached = CACHED_SYMBOLS as u64;
        let symbols = if end <= cached {
            self.symbols[start as usize..end as usize].to_vec()
        } else {
            let mut out = self.symbols[(start.min(cached)) as usize..].to_vec();
            let from = start.max(cached);
            out.extend(encode(ids(), from, (end - from) as u32));
            out
        };
        Ok(SymbolReply {
            total: self.total,
            digest: self.digest,
            sketch: request.sketch.then(|| Box::new(self.sketch.clone())),
            symbols,
        })
    }
}

/// An [`Encoder`] folded in from a store's `scan` when asked, for stores
/// that cannot update one inside their append path (redb's writer thread,
/// PostgreSQL): each [`answer`](Self::answer) first adds the changes
/// appended since the last one, so the first costs a walk of the store and
/// later ones only what is new. Append-only sequence numbers make this
/// exact: the encoder covers exactly the changes `1..=covered`.
#[derive(Debug, Default)]
pub struct LazyEncoder {
    state: tokio::sync::Mutex<Option<Folded>>,
}

#[derive(Debug)]
struct Folded {
    epoch: u64,
    covered: u64,
    encoder: Encoder,
}

/// Changes asked of `scan` per page while folding.
const FOLD_PAGE: usize = 4096;

impl LazyEncoder {
    /// Answer `request` for `store` (the store this encoder belongs to).
    pub async fn answer<S: crate::AppendOnlyStore + ?Sized>(
        &self,
        store: &S,
        request: &SymbolRequest,
    ) -> Result<SymbolReply> {
        request.check()?;
        let mut guard = self.state.lock().await;
        let head = store.head().await?;
        let folded = match guard.as_mut() {
            Some(f) if f.epoch == head.epoch && f.covered <= head.seq => f,
            _ => guard.insert(Folded {
                epoch: head.epoch,
                covered: 0,
                encoder: Encoder::default(),
            }),
        };
        // Bounded: every page moves `covered` forward, up to the head.
        while folded.covered < head.seq {
            let page = store.scan(folded.covered, FOLD_PAGE).await?;
            let Some(last) = page.last().map(|i| i.seq) else {
                break;
            };
            if last <= folded.covered {
                break;
            }
            for item in page.iter().filter(|i| i.seq > folded.covered) {
                folded.encoder.add(&item.meta.id);
            }
            folded.covered = last;
        }
        let end = request.start + u64::from(request.count);
        let beyond: Vec<ChangeId> = if end > CACHED_SYMBOLS as u64 {
            // Symbols past the cache walk exactly the covered changes.
            let mut ids = Vec::new();
            let mut after = 0;
            while after < folded.covered {
                let page = store
                    .scan(after, FOLD_PAGE.min((folded.covered - after) as usize))
                    .await?;
                let Some(last) = page.last().map(|i| i.seq) else {
                    break;
                };
                if last <= after {
                    break;
                }
                ids.extend(
                    page.iter()
                        .filter(|i| i.seq <= folded.covered)
                        .map(|i| i.meta.id),
                );
                after = last;
            }
            ids
        } else {
            Vec::new()
        };
        folded.encoder.answer(request, || Box::new(beyond.iter()))
    }
}

/// Peels the difference of two symbol sequences, received a prefix at a
/// time, into the ids of the symmetric difference.
#[derive(Debug, Default)]
pub struct Decoder {
    diff: Vec<CodedSymbol>,
    /// Ids peeled so far, with their walks at the end of `diff`.
    peeled: Vec<(ChangeId, u64, Walk)>,
    seen: HashSet<[u8; 32]>,
}

impl Decoder {
    /// Symbols received so far.
    pub fn len(&self) -> usize {
        self.diff.len()
    }

    /// No symbol received yet.
    pub fn is_empty(&self) -> bool {
        self.diff.is_empty()
    }

    /// Every id of the difference is peeled: symbol 0, which every id maps
    /// to, is empty.
    pub fn is_complete(&self) -> bool {
        self.diff.first().is_some_and(CodedSymbol::is_empty)
    }

    /// Ids of the symmetric difference peeled so far (all of them once
    /// [`is_complete`](Self::is_complete)).
    pub fn ids(&self) -> impl Iterator<Item = &ChangeId> {
        self.peeled.iter().map(|(id, _, _)| id)
    }

    /// Add the next symbols of both sides (the same indices, continuing
    /// where the last call ended) and peel what they free.
    ///
    /// An [`Error::Protocol`] if the sequences differ in length, or if the
    /// symbols peel into more ids than could be honest (hostile symbols).
    pub fn extend(&mut self, remote: &[CodedSymbol], local: &[CodedSymbol]) -> Result<()> {
        if remote.len() != local.len() {
            return Err(Error::Protocol {
                reason: format!(
                    "{} coded symbols to subtract from {}",
                    local.len(),
                    remote.len()
                ),
            });
        }
        let from = self.diff.len();
        self.diff.extend(remote.iter().zip(local).map(|(r, l)| {
            let mut s = *r;
            s.merge(l);
            s
        }));
        let end = self.diff.len() as u64;
        for (id, check, walk) in &mut self.peeled {
            while walk.next < end {
                self.diff[walk.next as usize].toggle(id.as_bytes(), *check);
                walk.advance();
            }
        }
        self.peel(from)
    }

    fn peel(&mut self, from: usize) -> Result<()> {
        let end = self.diff.len() as u64;
        let mut queue: Vec<usize> = (from..self.diff.len()).rev().collect();
        // An honest difference of `d` ids needs more than `d` symbols, so
        // more ids than twice the symbols means the symbols are forged.
        let most = 2 * self.diff.len() + 16;
        while let Some(i) = queue.pop() {
            let Some(id) = self.diff[i].pure() else {
                continue;
            };
            let check = self.diff[i].check;
            // A pure symbol's id must map to it; a forged or colliding one
            // seldom does.
            let mut walk = Walk::new(check);
            while walk.next < i as u64 {
                walk.advance();
            }
            if walk.next != i as u64 {
                continue;
            }
            if !self.seen.insert(id) || self.peeled.len() >= most {
                return Err(Error::Protocol {
                    reason: "the peer's coded symbols do not decode (an id peeled twice, or more ids than symbols)".into(),
                });
            }
            let mut walk = Walk::new(check);
            while walk.next < end {
                self.diff[walk.next as usize].toggle(&id, check);
                queue.push(walk.next as usize);
                walk.advance();
            }
            self.peeled.push((ChangeId::from_bytes(id), check, walk));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> ChangeId {
        ChangeId::from_bytes(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    #[test]
    fn the_mapping_hits_index_i_about_two_in_i_plus_two() {
        let n = 20_000u64;
        let mut hits = vec![0u32; 64];
        for k in 0..n {
            let mut w = Walk::new(checksum(id(k).as_bytes()));
            while w.next < 64 {
                hits[w.next as usize] += 1;
                w.advance();
            }
        }
        assert_eq!(hits[0] as u64, n, "every id maps to symbol 0");
        for (i, &h) in hits.iter().enumerate().skip(1) {
            let want = n as f64 * 2.0 / (i as f64 + 2.0);
            let got = h as f64;
            assert!(
                (got - want).abs() < 0.1 * want + 60.0,
                "index {i}: {got} hits, expected about {want}"
            );
        }
    }

    #[test]
    fn the_encoder_agrees_with_walking_every_id() {
        let ids: Vec<ChangeId> = (0..3000).map(id).collect();
        let e = Encoder::from_ids(&ids);
        for (start, count) in [(0u64, 10u32), (100, 500), (32_760, 20), (40_000, 5)] {
            let req = SymbolRequest {
                start,
                count,
                sketch: true,
            };
            let a = e.answer(&req, || Box::new(ids.iter())).unwrap();
            let b = answer(ids.iter(), &req).unwrap();
            assert_eq!(a, b, "start {start} count {count}");
        }
    }

    #[test]
    fn requests_past_the_bounds_are_refused() {
        for req in [
            SymbolRequest {
                start: 0,
                count: MAX_SYMBOLS_PER_REQUEST + 1,
                sketch: false,
            },
            SymbolRequest {
                start: MAX_SYMBOL_INDEX,
                count: 1,
                sketch: false,
            },
            SymbolRequest {
                start: u64::MAX,
                count: 1,
                sketch: false,
            },
        ] {
            assert!(matches!(
                answer([id(1)].iter(), &req),
                Err(Error::InvalidInput { .. })
            ));
        }
    }

    #[test]
    fn the_sketch_estimate_is_within_a_factor_of_two() {
        let base: Vec<ChangeId> = (0..20_000).map(id).collect();
        let mut a = Sketch::default();
        for i in &base {
            a.toggle(checksum(i.as_bytes()));
        }
        for d in [1u64, 10, 100, 1000, 10_000] {
            let mut b = a.clone();
            for k in 0..d {
                b.toggle(checksum(id(1_000_000 + k).as_bytes()));
            }
            let e = estimate_difference(&a, &b) as f64;
            assert!(
                e >= d as f64 / 2.0 && e <= d as f64 * 2.0,
                "d {d}: estimated {e}"
            );
        }
    }

    #[test]
    fn any_symbols_peel_into_a_bounded_number_of_ids() {
        // Symbols that each hold one id mapped to them: they all peel, and
        // each peel scatters its id into other symbols.
        let mut remote = Vec::new();
        let mut k = 0u64;
        for i in 0..256u64 {
            let x = loop {
                k += 1;
                let x = id(k);
                let mut w = Walk::new(checksum(x.as_bytes()));
                while w.next < i {
                    w.advance();
                }
                if w.next == i {
                    break x;
                }
            };
            let mut s = CodedSymbol::default();
            s.toggle(x.as_bytes(), checksum(x.as_bytes()));
            remote.push(s);
        }
        let local = vec![CodedSymbol::default(); remote.len()];
        let mut d = Decoder::default();
        match d.extend(&remote, &local) {
            Ok(()) => assert!(d.ids().count() <= 2 * remote.len() + 16),
            Err(e) => assert!(matches!(e, Error::Protocol { .. }), "{e}"),
        }
        assert!(matches!(
            d.extend(&remote[..1], &[]),
            Err(Error::Protocol { .. })
        ));
    }
}
