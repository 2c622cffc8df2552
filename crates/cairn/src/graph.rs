//! Dependency ordering: topological sort and the plan for loading one document.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use crate::ids::ChangeId;
use crate::record::{ChangeKind, ChangeMeta};

/// Order `items` so that every item comes after those of its deps that are
/// also in `items`. Among items whose deps are satisfied, the input order is
/// kept (the sort is stable); deps outside the set are ignored. Cycles cannot
/// occur between content-addressed changes, but if given one anyway the
/// remaining items are appended in input order, so nothing is ever dropped.
pub fn topo_sort<T>(
    items: Vec<T>,
    id_of: impl Fn(&T) -> ChangeId,
    deps_of: impl Fn(&T) -> &[ChangeId],
) -> Vec<T> {
    let n = items.len();
    if n < 2 {
        return items;
    }
    let index: HashMap<ChangeId, usize> = items
        .iter()
        .enumerate()
        .map(|(i, t)| (id_of(t), i))
        .collect();
    let mut indegree = vec![0usize; n];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut already_sorted = true;
    for (i, t) in items.iter().enumerate() {
        let mut seen = HashSet::new();
        for d in deps_of(t) {
            if let Some(&j) = index.get(d)
                && j != i
                && seen.insert(j)
            {
                indegree[i] += 1;
                children[j].push(i);
                if j > i {
                    already_sorted = false;
                }
            }
        }
    }
    if already_sorted {
        return items;
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| indegree[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    let mut placed = vec![false; n];
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        placed[i] = true;
        for &c in &children[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.push(Reverse(c));
            }
        }
    }
    // Only reachable with a dependency cycle (impossible for real ids).
    order.extend((0..n).filter(|&i| !placed[i]));
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// The metadata needed to load one document, given all of its changes.
///
/// With `from_last_snapshot == false`: every change, in dependency order
/// (ties broken by `created_at`, then id).
///
/// With `true`: the snapshot that covers the most history (its transitive
/// deps within the document; ties go to the later `created_at`, then the
/// higher id), followed by every change that snapshot does not cover, in
/// dependency order. Changes made concurrently with the snapshot (an offline
/// branch) are not covered and so are always included. Without any snapshot
/// it is the same as `false`.
pub fn plan_doc_load(mut metas: Vec<ChangeMeta>, from_last_snapshot: bool) -> Vec<ChangeMeta> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChangeBuilder, DocId};

    fn mk(kind: ChangeKind, deps: &[&ChangeMeta], t: u64) -> ChangeMeta {
        ChangeBuilder::new(kind, DocId::new("d").unwrap())
            .deps(deps.iter().map(|m| m.id))
            .created_at(t)
            .build()
            .unwrap()
            .meta
    }

    #[test]
    fn topo_sort_orders_deps_first_and_is_stable() {
        let a = mk(ChangeKind::Create, &[], 1);
        let b = mk(ChangeKind::Change, &[&a], 2);
        let c = mk(ChangeKind::Change, &[&b], 3);
        let x = mk(ChangeKind::Change, &[], 9);
        let sorted = topo_sort(
            vec![c.clone(), x.clone(), b.clone(), a.clone()],
            |m| m.id,
            |m| &m.deps,
        );
        let ids: Vec<_> = sorted.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![x.id, a.id, b.id, c.id]);
    }

    #[test]
    fn load_plan_keeps_concurrent_branch() {
        // a <- b <- snap ; a <- offline (concurrent with b and snap) ; snap <- after
        let a = mk(ChangeKind::Create, &[], 1);
        let b = mk(ChangeKind::Change, &[&a], 2);
        let offline = mk(ChangeKind::Change, &[&a], 3);
        let snap = mk(ChangeKind::Snapshot, &[&b], 4);
        let after = mk(ChangeKind::Change, &[&snap], 5);
        let all = vec![
            after.clone(),
            offline.clone(),
            snap.clone(),
            b.clone(),
            a.clone(),
        ];
        let plan: Vec<_> = plan_doc_load(all.clone(), true)
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(plan, vec![snap.id, offline.id, after.id]);
        let full: Vec<_> = plan_doc_load(all, false).iter().map(|m| m.id).collect();
        assert_eq!(full, vec![a.id, b.id, offline.id, snap.id, after.id]);
    }

    #[test]
    fn load_plan_picks_snapshot_covering_most() {
        let a = mk(ChangeKind::Create, &[], 1);
        let s1 = mk(ChangeKind::Snapshot, &[&a], 2);
        let b = mk(ChangeKind::Change, &[&a], 3);
        let c = mk(ChangeKind::Change, &[&b], 4);
        let s2 = mk(ChangeKind::Snapshot, &[&c], 5);
        let plan: Vec<_> = plan_doc_load(vec![a.clone(), s1.clone(), b, c, s2.clone()], true)
            .iter()
            .map(|m| m.id)
            .collect();
        // s2 covers a, b, c; s1 only a (and is itself not covered by s2).
        assert_eq!(plan, vec![s2.id, s1.id]);
    }
}
