//! Set reconciliation: find which ids two stores do not share by comparing
//! fingerprints of id ranges, narrowing into the ranges that differ.
//!
//! Ids are uniform hashes, so a range of the id space is split into 16
//! ranges by the next hex digit of the id (a prefix tree of fan-out 16).
//! Both stores answer [`AppendOnlyStore::range_summary`] (count plus an
//! additive fingerprint) for every range of the current level at once; equal
//! summaries drop a range, and a range with few ids on either side is
//! settled by listing its ids. Two stores of a million changes that differ
//! by a handful settle in about five rounds, exchanging summaries for the
//! differing ranges only and the differing ids, instead of every id.

use std::collections::BTreeSet;

use futures::future::try_join_all;

use crate::error::{Error, Result};
use crate::ids::ChangeId;
use crate::store::{AppendOnlyStore, IdRange, RangeSummary};

/// Tuning for [`difference`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// A differing range with at most this many ids on either side is
    /// settled by listing ids (default 64).
    pub leaf_size: u64,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        ReconcileOptions { leaf_size: 64 }
    }
}

/// What [`difference`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Difference {
    /// Ids the local store holds and the remote lacks, sorted.
    pub local_only: Vec<ChangeId>,
    /// Ids the remote store holds and the local lacks, sorted.
    pub remote_only: Vec<ChangeId>,
    /// Levels of summaries exchanged (round trips, not counting id lists).
    pub rounds: u32,
    /// Range summaries asked of each side.
    pub summaries: u64,
    /// Ids listed by both sides together to settle leaf ranges.
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

/// Which ids `local` and `remote` do not share.
///
/// Correct for any two stores (the trait's default `range_summary` is built
/// on `all_change_ids`); fast when both answer summaries natively
/// ([`Capabilities::native_reconciliation`](crate::Capabilities)). The sync
/// engine uses it for a first sync between large stores; the conformance
/// case `sync::reconciliation_sync_transfers_only_the_difference` checks it
/// on every store.
pub async fn difference(
    local: &dyn AppendOnlyStore,
    remote: &dyn AppendOnlyStore,
    opts: &ReconcileOptions,
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
