//! One case per `# Behavior` bullet of the `AppendOnlyStore` trait.

use std::collections::HashSet;
use std::sync::Arc;

use cairn::{
    AppendOnlyStore, ChangeId, ChangeKind, DynAppendOnlyStore, Error, Fingerprint, IdRange,
};

use crate::util::{chain, change, doc, id_set, ids, sid};
use crate::{CaseResult, Outcome, StoreFactory, ensure, ensure_eq};

/// `append` stores new changes, returns their ids in sequence order, and
/// they read back unchanged.
pub async fn append_stores_new_changes_and_reports_them(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let batch = chain(&doc("a"), 3, 64);
    let out = s.append(batch.clone()).await?;
    ensure_eq!(
        out.new,
        ids(&batch),
        "append must report the new ids in order"
    );
    ensure_eq!(out.duplicates, 0, "nothing was a duplicate");
    let got = s.get_changes(&ids(&batch)).await?;
    ensure!(got == batch, "changes must read back exactly as appended");
    crate::util::check_store(s.as_ref()).await?;
    Ok(Outcome::Passed)
}

/// Appending a change that is already present must succeed and change nothing.
pub async fn append_is_idempotent_by_id(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let batch = chain(&doc("a"), 3, 16);
    s.append(batch.clone()).await?;
    let head = s.head().await?;
    let again = s.append(batch.clone()).await?;
    ensure!(
        again.new.is_empty(),
        "re-append reported new changes: {:?}",
        again.new
    );
    ensure_eq!(again.duplicates, 3, "all three must count as duplicates");
    ensure_eq!(s.head().await?, head, "head must not move on re-append");
    let mixed = vec![
        batch[0].clone(),
        change(&doc("a"), ChangeKind::Change, &[], 8),
    ];
    let out = s.append(mixed.clone()).await?;
    ensure_eq!(
        out.new,
        vec![mixed[1].id()],
        "only the unseen change is new"
    );
    ensure_eq!(s.head().await?.seq, 4, "one more change stored");
    Ok(Outcome::Passed)
}

/// A change repeated inside one batch is stored once.
pub async fn append_dedups_repeats_within_a_batch(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let a = change(&doc("a"), ChangeKind::Create, &[], 8);
    let b = change(&doc("a"), ChangeKind::Change, &[a.id()], 8);
    let out = s.append(vec![a.clone(), a.clone(), b.clone()]).await?;
    ensure_eq!(out.new, vec![a.id(), b.id()], "each change stored once");
    ensure_eq!(out.duplicates, 1, "the repeat is a duplicate");
    ensure_eq!(s.head().await?.seq, 2, "two changes stored");
    Ok(Outcome::Passed)
}

/// An empty batch must succeed and change nothing.
pub async fn empty_append_succeeds_and_changes_nothing(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let before = s.head().await?;
    let out = s.append(Vec::new()).await?;
    ensure!(
        out.new.is_empty() && out.duplicates == 0,
        "empty append reported {out:?}"
    );
    ensure_eq!(s.head().await?, before, "head must not move");
    Ok(Outcome::Passed)
}

/// Missing deps must be accepted: a store holds what it is given.
pub async fn append_accepts_missing_deps(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let orphan = change(
        &doc("a"),
        ChangeKind::Change,
        &[ChangeId::from_bytes([7; 32])],
        8,
    );
    let out = s.append(vec![orphan.clone()]).await?;
    ensure_eq!(
        out.new,
        vec![orphan.id()],
        "a change with unknown deps is stored"
    );
    Ok(Outcome::Passed)
}

/// New changes get consecutive sequence numbers, deps before dependents.
pub async fn append_orders_deps_first_within_a_batch(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let c = chain(&doc("a"), 4, 8);
    let reversed: Vec<_> = c.iter().rev().cloned().collect();
    let out = s.append(reversed).await?;
    ensure_eq!(out.new, ids(&c), "append must report deps-first order");
    let scanned: Vec<ChangeId> = s
        .scan(0, 10)
        .await?
        .into_iter()
        .map(|i| i.meta.id)
        .collect();
    ensure_eq!(
        scanned,
        ids(&c),
        "sequence numbers must be assigned deps first"
    );
    Ok(Outcome::Passed)
}

/// `get_changes` skips unknown ids and keeps the order asked (repeats too).
pub async fn get_changes_returns_held_in_order_asked(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let c = chain(&doc("a"), 3, 32);
    s.append(c.clone()).await?;
    let unknown = ChangeId::from_bytes([9; 32]);
    let got = s
        .get_changes(&[c[2].id(), unknown, c[0].id(), c[2].id()])
        .await?;
    ensure_eq!(
        ids(&got),
        vec![c[2].id(), c[0].id(), c[2].id()],
        "order asked, unknown skipped"
    );
    ensure!(
        got[0] == c[2] && got[1] == c[0],
        "full changes returned unchanged"
    );
    ensure!(s.get_changes(&[]).await?.is_empty(), "no ids, no changes");
    Ok(Outcome::Passed)
}

/// `get_metas` is `get_changes` without payloads.
pub async fn get_metas_matches_get_changes(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let c = chain(&doc("a"), 5, 100);
    s.append(c.clone()).await?;
    let ask = [c[4].id(), ChangeId::MAX, c[1].id()];
    let metas = s.get_metas(&ask).await?;
    let full: Vec<_> = s
        .get_changes(&ask)
        .await?
        .into_iter()
        .map(|c| c.meta)
        .collect();
    ensure_eq!(metas, full, "get_metas must match get_changes' metadata");
    ensure_eq!(metas.len(), 2, "unknown id skipped");
    Ok(Outcome::Passed)
}

/// `has_changes` answers one bool per id, in order.
pub async fn has_changes_answers_each_id(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let c = chain(&doc("a"), 2, 8);
    s.append(vec![c[0].clone()]).await?;
    let got = s.has_changes(&[c[1].id(), c[0].id(), c[0].id()]).await?;
    ensure_eq!(got, vec![false, true, true], "one answer per id asked");
    ensure!(s.has_changes(&[]).await?.is_empty(), "no ids, no answers");
    Ok(Outcome::Passed)
}

/// `find_new_changes` returns exactly the held changes not in `have`, in
/// arrival order; unknown ids in `have` are ignored.
pub async fn find_new_changes_returns_exactly_the_unknown(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let a = chain(&doc("a"), 4, 8);
    let b = chain(&doc("b"), 3, 8);
    s.append(a.clone()).await?;
    s.append(b.clone()).await?;
    let have = vec![a[1].id(), b[0].id(), ChangeId::from_bytes([3; 32])];
    let got: Vec<ChangeId> = s
        .find_new_changes(&have)
        .await?
        .iter()
        .map(|m| m.id)
        .collect();
    let want = vec![a[0].id(), a[2].id(), a[3].id(), b[1].id(), b[2].id()];
    ensure_eq!(
        got,
        want,
        "exactly the changes not in have, in arrival order"
    );
    ensure_eq!(
        s.find_new_changes(&[]).await?.len(),
        7,
        "empty have returns everything"
    );
    let all = s.all_change_ids().await?;
    ensure!(
        s.find_new_changes(&all).await?.is_empty(),
        "full have returns nothing"
    );
    Ok(Outcome::Passed)
}

/// `find_new_changes_for_doc` stays within the document.
pub async fn find_new_changes_for_doc_stays_in_doc(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let a = chain(&doc("a"), 4, 8);
    let b = chain(&doc("b"), 3, 8);
    s.append(a.clone()).await?;
    s.append(b.clone()).await?;
    let got: Vec<ChangeId> = s
        .find_new_changes_for_doc(&[a[0].id(), b[1].id()], &doc("a"))
        .await?
        .iter()
        .map(|m| m.id)
        .collect();
    ensure_eq!(
        got,
        vec![a[1].id(), a[2].id(), a[3].id()],
        "only doc a's new changes"
    );
    Ok(Outcome::Passed)
}

/// `all_change_ids` returns every held id once, sorted.
pub async fn all_change_ids_is_sorted_and_complete(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let mut want: Vec<ChangeId> = Vec::new();
    for d in ["a", "b", "c"] {
        let c = chain(&doc(d), 5, 8);
        want.extend(ids(&c));
        s.append(c).await?;
    }
    want.sort_unstable();
    ensure_eq!(
        s.all_change_ids().await?,
        want,
        "sorted, complete, no repeats"
    );
    Ok(Outcome::Passed)
}

/// `changes_for_doc(doc, false)` returns every change of the document in
/// dependency order, even when they arrived out of order.
pub async fn changes_for_doc_is_in_dependency_order(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let d = doc("dag");
    let root = change(&d, ChangeKind::Create, &[], 8);
    let left = change(&d, ChangeKind::Change, &[root.id()], 8);
    let right = change(&d, ChangeKind::Change, &[root.id()], 8);
    let merge = change(&d, ChangeKind::Change, &[left.id(), right.id()], 8);
    // Arrive out of causal order, one batch each.
    for c in [&merge, &right, &root, &left] {
        s.append(vec![c.clone()]).await?;
    }
    s.append(chain(&doc("other"), 3, 8)).await?;
    let got = s.changes_for_doc(&d, false).await?;
    ensure_eq!(got.len(), 4, "every change of the doc, nothing else");
    let pos = |id: ChangeId| got.iter().position(|m| m.id == id).unwrap_or(usize::MAX);
    ensure!(pos(root.id()) < pos(left.id()), "root before left");
    ensure!(pos(root.id()) < pos(right.id()), "root before right");
    ensure!(pos(left.id()) < pos(merge.id()), "left before merge");
    ensure!(pos(right.id()) < pos(merge.id()), "right before merge");
    Ok(Outcome::Passed)
}

/// With `from_last_snapshot`, the snapshot covering the most history comes
/// first, then every change it does not cover — a concurrent offline branch
/// is never skipped.
pub async fn changes_for_doc_from_snapshot_keeps_concurrent_branch(
    f: &dyn StoreFactory,
) -> CaseResult {
    let s = f.create(&sid()).await?;
    let d = doc("snap");
    let a = change(&d, ChangeKind::Create, &[], 8);
    let b = change(&d, ChangeKind::Change, &[a.id()], 8);
    let offline = change(&d, ChangeKind::Change, &[a.id()], 8);
    let snap = change(&d, ChangeKind::Snapshot, &[b.id()], 64);
    let after = change(&d, ChangeKind::Change, &[snap.id()], 8);
    s.append(vec![a.clone(), b.clone(), snap.clone(), after.clone()])
        .await?;
    s.append(vec![offline.clone()]).await?;
    let got: Vec<ChangeId> = s
        .changes_for_doc(&d, true)
        .await?
        .iter()
        .map(|m| m.id)
        .collect();
    ensure_eq!(
        got.first().copied(),
        Some(snap.id()),
        "the snapshot comes first"
    );
    let rest: HashSet<ChangeId> = got[1..].iter().copied().collect();
    let want: HashSet<ChangeId> = [offline.id(), after.id()].into_iter().collect();
    ensure_eq!(
        rest,
        want,
        "exactly the uncovered changes (the offline branch and the later change)"
    );
    ensure_eq!(got.len(), 3, "nothing covered is repeated");
    let full = s.changes_for_doc(&d, false).await?;
    ensure_eq!(full.len(), 5, "without snapshot: everything");
    Ok(Outcome::Passed)
}

/// An unknown document gives an empty list.
pub async fn changes_for_unknown_doc_is_empty(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    s.append(chain(&doc("a"), 2, 8)).await?;
    ensure!(
        s.changes_for_doc(&doc("nope"), true).await?.is_empty(),
        "unknown doc, snapshot"
    );
    ensure!(
        s.changes_for_doc(&doc("nope"), false).await?.is_empty(),
        "unknown doc, full"
    );
    Ok(Outcome::Passed)
}

/// `scan` pages through arrival order with consecutive sequence numbers.
pub async fn scan_is_gapless_and_paged(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let mut order = Vec::new();
    for d in ["a", "b", "c", "d", "e"] {
        let c = chain(&doc(d), 5, 8);
        order.extend(ids(&c));
        s.append(c).await?;
    }
    let mut after = 0;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let page = s.scan(after, 7).await?;
        ensure!(
            page.len() <= 7,
            "scan returned {} items for limit 7",
            page.len()
        );
        if page.is_empty() {
            break;
        }
        for item in page {
            ensure_eq!(item.seq, after + 1, "sequence numbers must be consecutive");
            after = item.seq;
            seen.push(item.meta.id);
        }
    }
    ensure_eq!(seen, order, "scan must return arrival order");
    ensure!(s.scan(25, 10).await?.is_empty(), "nothing after the head");
    ensure!(
        s.scan(u64::MAX, 10).await?.is_empty(),
        "a cursor far past the head is empty"
    );
    let mid = s.scan(10, 3).await?;
    ensure_eq!(
        mid.iter().map(|i| i.seq).collect::<Vec<_>>(),
        vec![11, 12, 13],
        "scan from the middle"
    );
    Ok(Outcome::Passed)
}

/// `limit == 0` returns nothing.
pub async fn scan_with_zero_limit_is_empty(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    s.append(chain(&doc("a"), 3, 8)).await?;
    ensure!(
        s.scan(0, 0).await?.is_empty(),
        "limit 0 must return nothing"
    );
    Ok(Outcome::Passed)
}

/// `head.seq` counts changes; `epoch` never changes.
pub async fn head_counts_changes_and_keeps_epoch(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let h0 = s.head().await?;
    ensure_eq!(h0.seq, 0, "an empty store has seq 0");
    s.append(chain(&doc("a"), 3, 8)).await?;
    s.append(chain(&doc("b"), 2, 8)).await?;
    let h1 = s.head().await?;
    ensure_eq!(h1.seq, 5, "seq counts changes");
    ensure_eq!(h1.epoch, h0.epoch, "epoch is stable");
    let other = f.create(&sid()).await?;
    ensure!(
        other.head().await?.epoch != h0.epoch,
        "two stores must not share an epoch"
    );
    Ok(Outcome::Passed)
}

fn boundary(b0: u8, b1: u8) -> ChangeId {
    let mut b = [0u8; 32];
    b[0] = b0;
    b[1] = b1;
    ChangeId::from_bytes(b)
}

/// `range_summary` equals the fingerprint of exactly the held ids in range.
pub async fn range_summary_matches_fingerprint(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    s.append(chain(&doc("a"), 40, 8)).await?;
    // More ids in a second batch: maintained fingerprints must add up.
    s.append(chain(&doc("b"), 60, 8)).await?;
    let all = s.all_change_ids().await?;
    let mid = all[all.len() / 2];
    let ranges = [
        IdRange::ALL,
        IdRange {
            start: ChangeId::MIN,
            end: Some(mid),
        },
        IdRange {
            start: mid,
            end: None,
        },
        IdRange {
            start: all[3],
            end: Some(all[9]),
        },
        IdRange {
            start: mid,
            end: Some(mid),
        },
        // On 12-bit bucket boundaries, where stores may answer from
        // maintained per-bucket fingerprints.
        IdRange {
            start: boundary(0x80, 0x00),
            end: None,
        },
        IdRange {
            start: boundary(0x10, 0x20),
            end: Some(boundary(0xc0, 0x00)),
        },
        IdRange {
            start: boundary(0x00, 0x00),
            end: Some(boundary(0x00, 0x10)),
        },
    ];
    for r in ranges {
        let mut fp = Fingerprint::default();
        all.iter()
            .filter(|id| r.contains(id))
            .for_each(|id| fp.add(id));
        ensure_eq!(s.range_summary(&r).await?, fp.summary(), "summary of {r:?}");
    }
    Ok(Outcome::Passed)
}

/// `ids_in_range` returns the smallest `limit` ids in range, sorted.
pub async fn ids_in_range_is_sorted_and_limited(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    s.append(chain(&doc("a"), 30, 8)).await?;
    let all = s.all_change_ids().await?;
    let r = IdRange {
        start: all[5],
        end: Some(all[20]),
    };
    ensure_eq!(
        s.ids_in_range(&r, 100).await?,
        all[5..20].to_vec(),
        "whole range"
    );
    ensure_eq!(s.ids_in_range(&r, 4).await?, all[5..9].to_vec(), "limited");
    ensure!(s.ids_in_range(&r, 0).await?.is_empty(), "limit 0");
    Ok(Outcome::Passed)
}

/// `coded_symbols` answers exactly what `cairn::riblt::answer` computes
/// over the held ids (native encoders included, before and after more
/// appends, inside and past the cached symbols), and refuses requests past
/// its bounds with `InvalidInput`, storing nothing.
pub async fn coded_symbols_encode_exactly_the_held_ids(f: &dyn StoreFactory) -> CaseResult {
    use cairn::riblt::{MAX_SYMBOL_INDEX, MAX_SYMBOLS_PER_REQUEST, SymbolRequest, answer};
    let s = f.create(&sid()).await?;
    let requests = [
        SymbolRequest {
            start: 0,
            count: 64,
            sketch: true,
        },
        SymbolRequest {
            start: 1000,
            count: 16,
            sketch: false,
        },
        SymbolRequest {
            start: 32_760,
            count: 16,
            sketch: true,
        },
    ];
    for (round, n) in [(0, 0usize), (1, 40), (2, 1100)] {
        if n > 0 {
            s.append(chain(&doc(&format!("r{round}")), n, 8)).await?;
        }
        let all = s.all_change_ids().await?;
        for req in &requests {
            ensure_eq!(
                s.coded_symbols(req).await?,
                answer(all.iter(), req)?,
                "symbols of {} ids for {req:?}",
                all.len()
            );
        }
    }
    let head = s.head().await?;
    for bad in [
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
            count: u32::MAX,
            sketch: true,
        },
    ] {
        ensure!(
            matches!(s.coded_symbols(&bad).await, Err(Error::InvalidInput { .. })),
            "{bad:?} is refused as invalid input"
        );
    }
    ensure_eq!(s.head().await?, head, "refusals change nothing");
    Ok(Outcome::Passed)
}

/// The store works behind `Arc<dyn AppendOnlyStore>` and `Box<dyn …>`.
pub async fn works_as_dyn_store_in_arc_and_box(f: &dyn StoreFactory) -> CaseResult {
    let s: Arc<DynAppendOnlyStore> = f.create(&sid()).await?;
    let boxed: Box<DynAppendOnlyStore> = Box::new(Arc::clone(&s));
    let c = chain(&doc("a"), 2, 8);
    boxed.append(c.clone()).await?;
    ensure_eq!(
        id_set(s.as_ref()).await?.len(),
        2,
        "append through Box visible through Arc"
    );
    ensure_eq!(boxed.store_id(), s.store_id(), "same store id");
    ensure_eq!(boxed.capabilities(), s.capabilities(), "same capabilities");
    let via_box = boxed.get_changes(&ids(&c)).await?;
    ensure!(via_box == c, "reads through Box");
    Ok(Outcome::Passed)
}
