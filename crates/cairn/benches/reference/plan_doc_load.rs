//! The original `plan_doc_load` (before issue 10), kept as the reference the
//! new one is tested against (`graph.rs` tests) and timed against (the
//! `plan_doc_load` bench). It walks the ancestors of every snapshot:
//! O(snapshots × changes).
//!
//! Included with `#[path]` by both; the includer provides `topo_sort`,
//! `ChangeId`, `ChangeKind` and `ChangeMeta` in its own scope.

use std::collections::HashMap;

use super::{ChangeId, ChangeKind, ChangeMeta, topo_sort};

/// The plan as it was: same contract as `cairn::graph::plan_doc_load`.
pub(super) fn plan_doc_load(
    mut metas: Vec<ChangeMeta>,
    from_last_snapshot: bool,
) -> Vec<ChangeMeta> {
    metas.sort_by_key(|m| (m.created_at, m.id));
    metas.dedup_by_key(|m| m.id);
    let metas = topo_sort(metas, |m| m.id, |m| &m.deps);
    if !from_last_snapshot {
        return metas;
    }
    let index: HashMap<ChangeId, usize> =
        metas.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
    // (snapshot index, what it covers, ranking key)
    type Best = (usize, Vec<bool>, (usize, u64, ChangeId));
    let mut best: Option<Best> = None;
    for (s, m) in metas.iter().enumerate() {
        if m.kind != ChangeKind::Snapshot {
            continue;
        }
        let covered = ancestors(&metas, &index, s);
        let count = covered.iter().filter(|&&c| c).count();
        let key = (count, m.created_at, m.id);
        if best.as_ref().is_none_or(|(_, _, k)| key > *k) {
            best = Some((s, covered, key));
        }
    }
    let Some((s, covered, _)) = best else {
        return metas;
    };
    let mut out = Vec::with_capacity(metas.len());
    let mut rest = Vec::new();
    for (i, m) in metas.into_iter().enumerate() {
        if i == s {
            out.push(m);
        } else if !covered[i] {
            rest.push(m);
        }
    }
    out.extend(rest);
    out
}

/// Which of `metas` are transitive deps of `metas[start]` (not counting itself).
fn ancestors(metas: &[ChangeMeta], index: &HashMap<ChangeId, usize>, start: usize) -> Vec<bool> {
    let mut covered = vec![false; metas.len()];
    let mut stack: Vec<usize> = metas[start]
        .deps
        .iter()
        .filter_map(|d| index.get(d).copied())
        .collect();
    while let Some(i) = stack.pop() {
        if covered[i] || i == start {
            continue;
        }
        covered[i] = true;
        stack.extend(metas[i].deps.iter().filter_map(|d| index.get(d).copied()));
    }
    covered
}
