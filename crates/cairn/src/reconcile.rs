//! Set reconciliation: find which ids two stores do not share.
//!
//! [`difference`] asks the remote for a prefix of the coded symbols of its
//! ids (a rateless IBLT, [`crate::riblt`]), subtracts the local store's
//! symbols for the same indices, and peels the result into the symmetric
//! difference. The first request carries a small sketch of the remote set,
//! from which the second request is sized, so that a difference of `d` ids
//! costs about `1.4 d` symbols of 40 bytes and, for one-way differences up
//! to several thousand ids, two round trips, whatever the stores' sizes.
//!
//! [`difference_by_ranges`] is the older exchange: ids are uniform hashes,
//! so a range of the id space is split into 16 ranges by the next hex digit
//! of the id (a prefix tree of fan-out 16); both stores answer
//! [`AppendOnlyStore::range_summary`] for every range of the current level,
//! equal summaries drop a range, and a range with few ids on either side is
//! settled by listing its ids.

use std::collections::BTreeSet;

use futures::future::try_join_all;

use crate::error::{Error, Result};
use crate::ids::ChangeId;
use crate::riblt::{self, Decoder, MAX_SYMBOLS_PER_REQUEST, SymbolReply, SymbolRequest};
use crate::store::{AppendOnlyStore, IdRange, RangeSummary};

/// Tuning for [`difference`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// Symbols asked for in the first request, with the sketch (default 8:
    /// enough for a difference of a few ids in one round trip).
    pub first_symbols: u32,
    /// Requests made before giving up with [`Error::Protocol`] (default
    /// 64); a store that keeps changing between requests falls back to
    /// [`difference_by_ranges`] after 4 restarts instead.
    pub max_rounds: u32,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        ReconcileOptions {
            first_symbols: 8,
            max_rounds: 64,
        }
    }
}

/// From this estimated difference on (both ways), [`difference`] favours
/// bytes over round trips.
const LARGE: u64 = 2000;

/// Symbols to have after the sketch estimated a difference of `d`: RIBLT's
/// expected `1.35 d`, with a margin that shrinks as `d` grows (measured:
/// `d` = 100 needs 134-159, 1,000 needs 1,330-1,430, 10,000 needs
/// 13,490-13,750).
fn symbols_for(d: u64) -> u64 {
    let d = d as f64;
    (d * (1.35 + 3.0 / d.max(1.0).sqrt())).ceil() as u64 + 8
}

/// Which ids `local` and `remote` do not share, by coded symbols: see the
/// module docs.
///
/// Correct for any two stores (the trait's default `coded_symbols` is built
/// on `all_change_ids`); fast when both keep an encoder
/// ([`Capabilities::native_reconciliation`](crate::Capabilities)). The sync
/// engine uses it for a first sync between large stores; the conformance
/// case `sync::reconciliation_sync_transfers_only_the_difference` checks it
/// on every store.
///
/// # Errors
/// [`Error::Protocol`] if the remote's symbols do not decode within
/// `max_rounds` requests (they are forged, or the difference is past
/// [`riblt::MAX_SYMBOL_INDEX`]); the stores' own errors.
pub async fn difference(
    local: &dyn AppendOnlyStore,
    remote: &dyn AppendOnlyStore,
    opts: &ReconcileOptions,
) -> Result<Difference> {
    let mut rounds = 0;
    for _restart in 0..4 {
        match decode(local, remote, opts, &mut rounds).await? {
            Some(mut d) => {
                d.rounds = rounds;
                return Ok(d);
            }
            // A set changed between two requests: start again.
            None => continue,
        }
    }
    let mut d = difference_by_ranges(local, remote, &RangeOptions::default()).await?;
    d.rounds += rounds;
    Ok(d)
}

/// One attempt: `None` if either set changed between requests.
async fn decode(
    local: &dyn AppendOnlyStore,
    remote: &dyn AppendOnlyStore,
    opts: &ReconcileOptions,
    rounds: &mut u32,
) -> Result<Option<Difference>> {
    let mut decoder = Decoder::default();
    let mut out = Difference::default();
    let mut have = 0u64;
    let mut want = u64::from(opts.first_symbols.clamp(1, MAX_SYMBOLS_PER_REQUEST));
    let mut versions: Option<[(u64, u64); 2]> = None;
    loop {
        if *rounds >= opts.max_rounds.max(1) {
            return Err(Error::Protocol {
                reason: format!(
                    "reconciliation did not decode within {} requests ({have} symbols)",
                    opts.max_rounds.max(1)
                ),
            });
        }
        let count = want
            .saturating_sub(have)
            .clamp(1, u64::from(MAX_SYMBOLS_PER_REQUEST))
            .min(riblt::MAX_SYMBOL_INDEX.saturating_sub(have)) as u32;
        if count == 0 {
            return Err(Error::Protocol {
                reason: format!(
                    "reconciliation did not decode within {} symbols",
                    riblt::MAX_SYMBOL_INDEX
                ),
            });
        }
        let request = SymbolRequest {
            start: have,
            count,
            sketch: have == 0,
        };
        *rounds += 1;
        let (r, l) = futures::future::try_join(
            remote.coded_symbols(&request),
            local.coded_symbols(&request),
        )
        .await?;
        check_reply(&r, &request, "the remote")?;
        check_reply(&l, &request, "the local store")?;
        let now = [(r.total, r.digest), (l.total, l.digest)];
        if versions.is_some_and(|v| v != now) {
            return Ok(None);
        }
        versions = Some(now);
        decoder.extend(&r.symbols, &l.symbols)?;
        out.symbols += u64::from(count);
        have += u64::from(count);
        if decoder.is_complete() {
            break;
        }
        want = match (&r.sketch, &l.sketch) {
            (Some(rs), Some(ls)) => {
                let sketched = riblt::estimate_difference(rs, ls);
                let apart = r.total.abs_diff(l.total);
                // A difference about as large as the counts' gap is most
                // likely one-way, and then the gap is exact.
                if apart > 0 && apart * 10 >= sketched * 7 {
                    symbols_for(apart).max(have + 1)
                } else if sketched > LARGE {
                    // A large difference both ways: the sketch is good to
                    // about 30%, so ask for what the low end needs and grow
                    // from there; bytes matter more than round trips here.
                    ((sketched as f64 * 0.75 * 1.35) as u64).max(have + 1)
                } else {
                    symbols_for(sketched.max(apart)).max(have + 1)
                }
            }
            // Past the estimate: grow by an eighth (bytes over round trips).
            _ => have + (have / 8).max(8),
        };
    }
    let found: Vec<ChangeId> = decoder.ids().copied().collect();
    let mut local_only = Vec::new();
    let mut remote_only = Vec::new();
    for chunk in found.chunks(4096) {
        let held = local.has_changes(chunk).await?;
        if held.len() != chunk.len() {
            return Err(Error::Protocol {
                reason: "the local store answered has_changes with the wrong count".into(),
            });
        }
        for (id, held) in chunk.iter().zip(held) {
            if held {
                local_only.push(*id);
            } else {
                remote_only.push(*id);
            }
        }
    }
    local_only.sort_unstable();
    remote_only.sort_unstable();
    out.local_only = local_only;
    out.remote_only = remote_only;
    Ok(Some(out))
}

fn check_reply(reply: &SymbolReply, request: &SymbolRequest, who: &str) -> Result<()> {
    if reply.symbols.len() != request.count as usize {
        return Err(Error::Protocol {
            reason: format!(
                "{who} answered {} coded symbols for a request of {}",
                reply.symbols.len(),
                request.count
            ),
        });
    }
    if request.sketch && reply.sketch.is_none() {
        return Err(Error::Protocol {
            reason: format!("{who} answered a coded symbol request without its sketch"),
        });
    }
    Ok(())
}

/// Tuning for [`difference_by_ranges`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeOptions {
    /// A differing range with at most this many ids on either side is
    /// settled by listing ids (default 64).
    pub leaf_size: u64,
}

impl Default for RangeOptions {
    fn default() -> Self {
        RangeOptions { leaf_size: 64 }
    }
}

/// What [`difference`] or [`difference_by_ranges`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Difference {
    /// Ids the local store holds and the remote lacks, sorted.
    pub local_only: Vec<ChangeId>,
    /// Ids the remote store holds and the local lacks, sorted.
    pub remote_only: Vec<ChangeId>,
    /// Round trips to the remote: symbol requests ([`difference`]), or
    /// levels of summaries not counting id lists ([`difference_by_ranges`]).
    pub rounds: u32,
    /// Coded symbols received from the remote ([`difference`]).
    pub symbols: u64,
    /// Range summaries asked of each side ([`difference_by_ranges`]).
    pub summaries: u64,
    /// Ids listed by both sides together to settle leaf ranges
    /// ([`difference_by_ranges`]).
    pub ids_listed: u64,
}

/// A range of ids sharing a prefix of hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prefix {
    nibbles: Vec<u8>,
}

impl Prefix {
    fn range(&self) -> IdRange {
        let mut start = [0u8; 32];
        for (i, n) in self.nibbles.iter().enumerate() {
            start[i / 2] |= if i % 2 == 0 { n << 4 } else { *n };
        }
        // The end is the prefix plus one in its last digit, carried left;
        // a prefix of all `f`s has no upper bound.
        let mut digits = self.nibbles.clone();
        let mut end = None;
        while let Some(last) = digits.pop() {
            if last < 15 {
                digits.push(last + 1);
                let mut e = [0u8; 32];
                for (i, n) in digits.iter().enumerate() {
                    e[i / 2] |= if i % 2 == 0 { n << 4 } else { *n };
                }
                end = Some(ChangeId::from_bytes(e));
                break;
            }
        }
        IdRange {
            start: ChangeId::from_bytes(start),
            end,
        }
    }

    fn children(&self) -> impl Iterator<Item = Prefix> + '_ {
        (0u8..16).map(move |n| {
            let mut nibbles = self.nibbles.clone();
            nibbles.push(n);
            Prefix { nibbles }
        })
    }
}

async fn summaries(store: &dyn AppendOnlyStore, ranges: &[IdRange]) -> Result<Vec<RangeSummary>> {
    try_join_all(ranges.iter().map(|r| store.range_summary(r))).await
}

async fn all_ids(store: &dyn AppendOnlyStore, range: &IdRange) -> Result<BTreeSet<ChangeId>> {
    let mut out = BTreeSet::new();
    let mut r = *range;
    // Bounded: every page either ends the loop or moves `r.start` past an id.
    for _ in 0..=u32::MAX {
        let page = store.ids_in_range(&r, 4096).await?;
        let Some(last) = page.last().copied() else {
            break;
        };
        let full = page.len() == 4096;
        out.extend(page);
        if !full {
            break;
        }
        let mut next = *last.as_bytes();
        // The smallest id greater than `last`.
        let mut carry = true;
        for b in next.iter_mut().rev() {
            if carry {
                let (v, c) = b.overflowing_add(1);
                *b = v;
                carry = c;
            }
        }
        if carry {
            break;
        }
        r.start = ChangeId::from_bytes(next);
    }
    Ok(out)
}

/// Which ids `local` and `remote` do not share, by comparing fingerprints
/// of id ranges level by level (one `range_summary` request per range).
///
/// The older exchange: [`difference`] needs far fewer bytes and round trips.
/// Kept for peers and stores that answer range summaries only, and as the
/// fallback when a store keeps changing under [`difference`].
pub async fn difference_by_ranges(
    local: &dyn AppendOnlyStore,
    remote: &dyn AppendOnlyStore,
    opts: &RangeOptions,
) -> Result<Difference> {
    let mut out = Difference::default();
    let mut level = vec![Prefix {
        nibbles: Vec::new(),
    }];
    let mut local_only = BTreeSet::new();
    let mut remote_only = BTreeSet::new();
    // Bounded: ids have 64 hex digits, so the tree has at most 65 levels.
    while !level.is_empty() {
        if out.rounds > 64 {
            return Err(Error::Protocol {
                reason: "reconciliation did not converge within 65 levels".into(),
            });
        }
        out.rounds += 1;
        let ranges: Vec<IdRange> = level.iter().map(Prefix::range).collect();
        let (ls, rs) =
            futures::future::try_join(summaries(local, &ranges), summaries(remote, &ranges))
                .await?;
        if ls.len() != ranges.len() || rs.len() != ranges.len() {
            return Err(Error::Protocol {
                reason: "a store answered the wrong number of range summaries".into(),
            });
        }
        out.summaries += ranges.len() as u64;
        let mut next = Vec::new();
        for ((prefix, range), (l, r)) in level.iter().zip(&ranges).zip(ls.iter().zip(&rs)) {
            if l == r {
                continue;
            }
            let deepest = prefix.nibbles.len() >= 64;
            if l.count <= opts.leaf_size || r.count <= opts.leaf_size || deepest {
                let (li, ri) =
                    futures::future::try_join(all_ids(local, range), all_ids(remote, range))
                        .await?;
                out.ids_listed += (li.len() + ri.len()) as u64;
                local_only.extend(li.difference(&ri).copied());
                remote_only.extend(ri.difference(&li).copied());
            } else {
                next.extend(prefix.children());
            }
        }
        level = next;
    }
    out.local_only = local_only.into_iter().collect();
    out.remote_only = remote_only.into_iter().collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_tile_the_id_space() {
        let root = Prefix { nibbles: vec![] }.range();
        assert_eq!(root, IdRange::ALL);
        let kids: Vec<IdRange> = Prefix { nibbles: vec![] }
            .children()
            .map(|p| p.range())
            .collect();
        assert_eq!(kids[0].start, ChangeId::MIN);
        for w in kids.windows(2) {
            assert_eq!(w[0].end, Some(w[1].start), "children are contiguous");
        }
        assert_eq!(kids[15].end, None);
        let p = Prefix {
            nibbles: vec![0xa, 0xf],
        }
        .range();
        assert_eq!(p.start.as_bytes()[0], 0xaf);
        assert_eq!(p.end.map(|e| e.as_bytes()[0]), Some(0xb0));
        let deep = Prefix {
            nibbles: vec![0xf; 64],
        }
        .range();
        assert_eq!(deep.start, ChangeId::MAX);
        assert_eq!(deep.end, None);
    }

    fn bytes(prefix: &[u8]) -> ChangeId {
        let mut b = [0u8; 32];
        b[..prefix.len()].copy_from_slice(prefix);
        ChangeId::from_bytes(b)
    }

    #[test]
    fn deeper_prefix_ranges_end_at_the_next_prefix_carried_left() {
        for (nibbles, start, end) in [
            (
                vec![1, 2, 3],
                bytes(&[0x12, 0x30]),
                Some(bytes(&[0x12, 0x40])),
            ),
            (vec![1, 0xf], bytes(&[0x1f]), Some(bytes(&[0x20]))),
            (
                vec![0xa, 0xf, 0xf],
                bytes(&[0xaf, 0xf0]),
                Some(bytes(&[0xb0])),
            ),
            (
                vec![3, 4, 0xf, 2],
                bytes(&[0x34, 0xf2]),
                Some(bytes(&[0x34, 0xf3])),
            ),
            (vec![0xf, 0xf, 0xf], bytes(&[0xff, 0xf0]), None),
        ] {
            let r = Prefix {
                nibbles: nibbles.clone(),
            }
            .range();
            assert_eq!((r.start, r.end), (start, end), "{nibbles:?}");
        }
    }
}
