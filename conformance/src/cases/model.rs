//! Property tests: random operations against a reference model, and random
//! histories with random sync schedules that must converge.
//!
//! The runner is proptest's, driven by hand so each generated case can run
//! async against fresh stores; it is seeded deterministically, so a failure
//! reproduces, and the failure message carries the generated input.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use cairn::sync::sync;
use cairn::{
    AppendOnlyStore, Change, ChangeBuilder, ChangeId, ChangeKind, ChangeMeta, DocId,
    DynAppendOnlyStore, SyncOptions,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use crate::util::{check_store, id_set, sid};
use crate::{CaseResult, Failure, Outcome, StoreFactory, ensure, ensure_eq};

const DOCS: [&str; 3] = ["alpha", "beta", "gamma"];

/// A pool of changes with random deps on earlier ones.
fn pool_strategy(size: usize) -> impl Strategy<Value = Vec<Change>> {
    proptest::collection::vec(
        (
            0..DOCS.len(),
            proptest::collection::vec(any::<Index>(), 0..3),
            0u8..4,
            0usize..64,
        ),
        size,
    )
    .prop_map(|specs| {
        let mut out: Vec<Change> = Vec::with_capacity(specs.len());
        for (i, (d, deps, kind, len)) in specs.into_iter().enumerate() {
            let deps: Vec<ChangeId> = if i == 0 {
                Vec::new()
            } else {
                deps.iter().map(|ix| out[ix.index(i)].id()).collect()
            };
            let kind = match kind {
                0 => ChangeKind::Create,
                1 => ChangeKind::Snapshot,
                _ => ChangeKind::Change,
            };
            let c =
                ChangeBuilder::new(kind, DocId::new(DOCS[d]).unwrap_or_else(|_| unreachable!()))
                    .deps(deps)
                    .created_at(i as u64)
                    .payload(vec![i as u8; len])
                    .build()
                    .unwrap_or_else(|_| unreachable!());
            out.push(c);
        }
        out
    })
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Index>),
    Get(Vec<Index>),
    Has(Vec<Index>),
    FindNew(Vec<Index>),
    FindNewForDoc(Vec<Index>, usize),
    Scan(u64, usize),
    ForDoc(usize, bool),
    AllIds,
    Head,
}

fn idx_list() -> impl Strategy<Value = Vec<Index>> {
    proptest::collection::vec(any::<Index>(), 0..8)
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => idx_list().prop_map(Op::Append),
        1 => idx_list().prop_map(Op::Get),
        1 => idx_list().prop_map(Op::Has),
        1 => idx_list().prop_map(Op::FindNew),
        1 => (idx_list(), 0..DOCS.len()).prop_map(|(h, d)| Op::FindNewForDoc(h, d)),
        1 => (0u64..40, 0usize..12).prop_map(|(a, l)| Op::Scan(a, l)),
        1 => (0..DOCS.len(), any::<bool>()).prop_map(|(d, s)| Op::ForDoc(d, s)),
        1 => Just(Op::AllIds),
        1 => Just(Op::Head),
    ]
}

/// The reference model: a log in arrival order and a map by id.
#[derive(Default)]
struct Model {
    log: Vec<ChangeId>,
    by_id: HashMap<ChangeId, Change>,
}

impl Model {
    fn metas_of(&self, doc: &DocId) -> Vec<ChangeMeta> {
        self.log
            .iter()
            .filter_map(|id| self.by_id.get(id))
            .filter(|c| &c.meta.doc_id == doc)
            .map(|c| c.meta.clone())
            .collect()
    }
}

/// Whether `order` lists every dep (present in `order`) before its dependent.
fn is_dependency_order(order: &[ChangeMeta]) -> bool {
    let pos: HashMap<ChangeId, usize> = order.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
    order
        .iter()
        .enumerate()
        .all(|(i, m)| m.deps.iter().all(|d| pos.get(d).is_none_or(|&j| j < i)))
}

fn pick(pool: &[Change], ix: &[Index]) -> Vec<Change> {
    ix.iter()
        .map(|i| pool[i.index(pool.len())].clone())
        .collect()
}

async fn run_ops(s: &dyn AppendOnlyStore, pool: &[Change], ops: &[Op]) -> Result<(), Failure> {
    let mut m = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let ctx = format!("step {step} ({op:?})");
        match op {
            Op::Append(ix) => {
                let batch = pick(pool, ix);
                let mut seen = HashSet::new();
                let want: HashSet<ChangeId> = batch
                    .iter()
                    .map(Change::id)
                    .filter(|id| seen.insert(*id) && !m.by_id.contains_key(id))
                    .collect();
                let out = s.append(batch.clone()).await?;
                ensure_eq!(
                    out.new.iter().copied().collect::<HashSet<_>>(),
                    want,
                    "{ctx}: new ids"
                );
                ensure_eq!(out.new.len(), want.len(), "{ctx}: new ids repeated");
                ensure_eq!(
                    out.duplicates,
                    batch.len() - want.len(),
                    "{ctx}: duplicates"
                );
                for id in &out.new {
                    m.log.push(*id);
                    if let Some(c) = batch.iter().find(|c| c.id() == *id) {
                        m.by_id.insert(*id, c.clone());
                    }
                }
                let new_metas: Vec<ChangeMeta> = out
                    .new
                    .iter()
                    .filter_map(|id| m.by_id.get(id))
                    .map(|c| c.meta.clone())
                    .collect();
                ensure!(
                    is_dependency_order(&new_metas),
                    "{ctx}: batch not stored deps first"
                );
            }
            Op::Get(ix) => {
                let ask: Vec<ChangeId> = pick(pool, ix).iter().map(Change::id).collect();
                let want: Vec<Change> = ask
                    .iter()
                    .filter_map(|id| m.by_id.get(id).cloned())
                    .collect();
                ensure!(
                    s.get_changes(&ask).await? == want,
                    "{ctx}: get_changes differs from model"
                );
            }
            Op::Has(ix) => {
                let ask: Vec<ChangeId> = pick(pool, ix).iter().map(Change::id).collect();
                let want: Vec<bool> = ask.iter().map(|id| m.by_id.contains_key(id)).collect();
                ensure_eq!(s.has_changes(&ask).await?, want, "{ctx}: has_changes");
            }
            Op::FindNew(ix) => {
                let have: Vec<ChangeId> = pick(pool, ix).iter().map(Change::id).collect();
                let hs: HashSet<&ChangeId> = have.iter().collect();
                let want: Vec<ChangeId> = m
                    .log
                    .iter()
                    .filter(|id| !hs.contains(id))
                    .copied()
                    .collect();
                let got: Vec<ChangeId> = s
                    .find_new_changes(&have)
                    .await?
                    .iter()
                    .map(|x| x.id)
                    .collect();
                ensure_eq!(got, want, "{ctx}: find_new_changes");
            }
            Op::FindNewForDoc(ix, d) => {
                let doc = DocId::new(DOCS[*d]).map_err(Failure::from)?;
                let have: Vec<ChangeId> = pick(pool, ix).iter().map(Change::id).collect();
                let hs: HashSet<&ChangeId> = have.iter().collect();
                let want: BTreeSet<ChangeId> = m
                    .metas_of(&doc)
                    .iter()
                    .map(|x| x.id)
                    .filter(|id| !hs.contains(id))
                    .collect();
                let got = s.find_new_changes_for_doc(&have, &doc).await?;
                ensure!(is_dependency_order(&got), "{ctx}: not in dependency order");
                ensure_eq!(
                    got.iter().map(|x| x.id).collect::<BTreeSet<_>>(),
                    want,
                    "{ctx}: set"
                );
                ensure_eq!(got.len(), want.len(), "{ctx}: repeats");
            }
            Op::Scan(after, limit) => {
                let got = s.scan(*after, *limit).await?;
                let start = (*after as usize).min(m.log.len());
                let end = start.saturating_add(*limit).min(m.log.len());
                let want: Vec<(u64, ChangeId)> =
                    (start..end).map(|i| (i as u64 + 1, m.log[i])).collect();
                let got: Vec<(u64, ChangeId)> = got.iter().map(|i| (i.seq, i.meta.id)).collect();
                ensure_eq!(got, want, "{ctx}: scan");
            }
            Op::ForDoc(d, snap) => {
                let doc = DocId::new(DOCS[*d]).map_err(Failure::from)?;
                let want = cairn::graph::plan_doc_load(m.metas_of(&doc), *snap);
                let got = s.changes_for_doc(&doc, *snap).await?;
                ensure_eq!(
                    got.iter().map(|x| x.id).collect::<BTreeSet<_>>(),
                    want.iter().map(|x| x.id).collect::<BTreeSet<_>>(),
                    "{ctx}: changes_for_doc set"
                );
                ensure_eq!(got.len(), want.len(), "{ctx}: changes_for_doc repeats");
                ensure_eq!(
                    got.first().map(|x| x.kind),
                    want.first().map(|x| x.kind),
                    "{ctx}: starts with"
                );
                let body = if *snap && got.first().is_some_and(|x| x.kind == ChangeKind::Snapshot) {
                    &got[1..]
                } else {
                    &got[..]
                };
                ensure!(is_dependency_order(body), "{ctx}: not in dependency order");
            }
            Op::AllIds => {
                let want: Vec<ChangeId> = m
                    .by_id
                    .keys()
                    .copied()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                ensure_eq!(s.all_change_ids().await?, want, "{ctx}: all_change_ids");
            }
            Op::Head => {
                ensure_eq!(s.head().await?.seq, m.log.len() as u64, "{ctx}: head.seq");
            }
        }
    }
    Ok(())
}

/// Random operation sequences give the same answers as the reference model.
pub async fn model_random_operations_match_reference(f: &dyn StoreFactory) -> CaseResult {
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 24,
            ..Config::default()
        },
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let strategy = (
        pool_strategy(24),
        proptest::collection::vec(op_strategy(), 1..40),
    );
    for case in 0..24 {
        let (pool, ops) = strategy
            .new_tree(&mut runner)
            .map_err(|e| Failure(format!("generator: {e}")))?
            .current();
        let s = f.create(&sid()).await?;
        if let Err(e) = run_ops(s.as_ref(), &pool, &ops).await {
            return Err(Failure(format!("case {case}: {e}\nops: {ops:?}")));
        }
        check_store(s.as_ref()).await?;
    }
    Ok(Outcome::Passed)
}

#[derive(Debug, Clone)]
enum Step {
    Append(usize, Vec<Index>),
    Sync(usize, usize),
}

/// N stores with random histories and a random sync schedule, finished by
/// one gossip pass, all end with exactly the union.
pub async fn convergence_random_histories_and_schedules(f: &dyn StoreFactory) -> CaseResult {
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 12,
            ..Config::default()
        },
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let step = prop_oneof![
        3 => (0usize..4, idx_list()).prop_map(|(s, ix)| Step::Append(s, ix)),
        2 => (0usize..4, 0usize..4).prop_map(|(a, b)| Step::Sync(a, b)),
    ];
    let strategy = (
        2usize..=4,
        pool_strategy(40),
        proptest::collection::vec(step, 1..30),
    );
    for case in 0..12 {
        let (n, pool, steps) = strategy
            .new_tree(&mut runner)
            .map_err(|e| Failure(format!("generator: {e}")))?
            .current();
        let mut stores: Vec<Arc<DynAppendOnlyStore>> = Vec::with_capacity(n);
        for _ in 0..n {
            stores.push(f.create(&sid()).await?);
        }
        let mut union = BTreeSet::new();
        let opts = SyncOptions {
            batch_changes: 7,
            ..SyncOptions::default()
        };
        for st in &steps {
            match st {
                Step::Append(i, ix) => {
                    let batch = pick(&pool, ix);
                    union.extend(batch.iter().map(Change::id));
                    stores[i % n].append(batch).await?;
                }
                Step::Sync(a, b) if a % n != b % n => {
                    sync(stores[a % n].as_ref(), stores[b % n].as_ref(), &opts).await?;
                }
                Step::Sync(..) => {}
            }
        }
        for i in (0..n - 1).chain((0..n - 1).rev()) {
            sync(stores[i].as_ref(), stores[i + 1].as_ref(), &opts).await?;
        }
        for (i, st) in stores.iter().enumerate() {
            let got = id_set(st.as_ref()).await?;
            if got != union {
                return Err(Failure(format!(
                    "case {case}: store {i} of {n} holds {} ids, union is {}\nsteps: {steps:?}",
                    got.len(),
                    union.len()
                )));
            }
            check_store(st.as_ref()).await?;
        }
    }
    Ok(Outcome::Passed)
}
