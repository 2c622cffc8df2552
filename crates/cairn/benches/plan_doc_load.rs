//! `plan_doc_load`, the original algorithm (a walk of the ancestors of every
//! snapshot) against the current one, on documents of 10k changes with 1k
//! snapshots and 100k changes with 10k snapshots, in three shapes:
//!
//! - `history`: three devices' branches that merge now and then, every
//!   tenth change a snapshot of its device's head (the snapshots cover one
//!   another);
//! - `flood`: the same history, then the snapshots as fakes nobody builds
//!   on, each depending on one or two random changes (all concurrent);
//! - `wide`: the worst case of the current algorithm: the history has 128
//!   devices' branches (more than the 64 chains it labels), then the fake
//!   snapshots, each with a change built on it, so most coverage is only
//!   bounded and the snapshots the bounds cannot rule out are counted 64
//!   per sweep.
//!
//! One line per case: `plan_doc_load shape=… changes=… snapshots=… old_ms=…
//! new_ms=… order_only_ms=… speedup=… same=…` (new: the median of 5 runs;
//! old: one run; order_only: the median of 5 plans without snapshots, i.e.
//! the sort into dependency order alone).
//! The old algorithm takes minutes per 100k case: `CAIRN_PLAN_OLD=N` runs it
//! only on documents of at most N changes (`0`: never).
//!
//! Run: `cargo bench -p cairn --bench plan_doc_load`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

#[path = "reference/plan_doc_load.rs"]
mod reference;

use std::time::{Duration, Instant};

use cairn::graph::{plan_doc_load, topo_sort};
use cairn::{ChangeBuilder, ChangeId, ChangeKind, ChangeMeta, DocId};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

fn meta(kind: ChangeKind, deps: Vec<ChangeId>, t: u64, salt: u64) -> ChangeMeta {
    ChangeBuilder::new(kind, DocId::new("doc").unwrap())
        .deps(deps)
        .created_at(t)
        .payload(salt.to_be_bytes().to_vec())
        .build()
        .unwrap()
        .meta
}

/// `devices` branches; every 7th change also depends on another device's
/// head; every `snapshot_every`-th is a snapshot.
fn history(n: usize, devices: usize, snapshot_every: usize) -> Vec<ChangeMeta> {
    let mut metas = vec![meta(ChangeKind::Create, vec![], 0, 0)];
    let mut heads = vec![0usize; devices];
    for i in 1..n {
        let dev = i % devices;
        let mut deps = vec![metas[heads[dev]].id];
        if i % 7 == 0 {
            deps.push(metas[heads[(dev + 1) % devices]].id);
        }
        let kind = if snapshot_every > 0 && i % snapshot_every == 0 {
            ChangeKind::Snapshot
        } else {
            ChangeKind::Change
        };
        metas.push(meta(kind, deps, i as u64, i as u64));
        heads[dev] = metas.len() - 1;
    }
    metas
}

fn shape(name: &str, changes: usize, snapshots: usize) -> Vec<ChangeMeta> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ changes as u64);
    match name {
        "history" => history(changes, 3, changes / snapshots),
        "flood" | "wide" => {
            let built_on = name == "wide";
            let base = changes - snapshots - if built_on { snapshots } else { 0 };
            let mut metas = history(base, if built_on { 128 } else { 3 }, 0);
            for i in 0..snapshots {
                let mut deps = vec![metas[rng.below(base)].id];
                if i % 2 == 1 {
                    deps.push(metas[rng.below(base)].id);
                }
                let t = (base + rng.below(base)) as u64;
                let s = meta(ChangeKind::Snapshot, deps, t, (changes + i) as u64);
                if built_on {
                    let c = meta(
                        ChangeKind::Change,
                        vec![s.id],
                        t + 1,
                        (2 * changes + i) as u64,
                    );
                    metas.push(c);
                }
                metas.push(s);
            }
            metas
        }
        _ => unreachable!(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    // Run the old algorithm on documents of at most this many changes.
    let old_up_to: usize = std::env::var("CAIRN_PLAN_OLD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    for (changes, snapshots) in [(10_000, 1_000), (100_000, 10_000)] {
        for name in ["history", "flood", "wide"] {
            let metas = shape(name, changes, snapshots);
            assert_eq!(metas.len(), changes);
            let mut new_times = Vec::new();
            let mut plan = Vec::new();
            for _ in 0..5 {
                let input = metas.clone();
                let t = Instant::now();
                plan = plan_doc_load(input, true);
                new_times.push(t.elapsed());
            }
            new_times.sort();
            let new = new_times[new_times.len() / 2];
            // The part that does not look at snapshots: sort and order.
            let mut order_times = Vec::new();
            for _ in 0..5 {
                let input = metas.clone();
                let t = Instant::now();
                let all = plan_doc_load(input, false);
                order_times.push(t.elapsed());
                assert_eq!(all.len(), changes);
            }
            order_times.sort();
            let order = order_times[order_times.len() / 2];
            let (old, same) = if changes <= old_up_to {
                let input = metas.clone();
                let t = Instant::now();
                let want = reference::plan_doc_load(input, true);
                let old = t.elapsed();
                let same = want.iter().map(|m| m.id).eq(plan.iter().map(|m| m.id));
                (Some(old), Some(same))
            } else {
                (None, None)
            };
            println!(
                "plan_doc_load shape={name} changes={changes} snapshots={snapshots} planned={} old_ms={} new_ms={:.1} order_only_ms={:.1} speedup={} same={}",
                plan.len(),
                old.map_or("-".into(), |o| format!("{:.1}", ms(o))),
                ms(new),
                ms(order),
                old.map_or("-".into(), |o| format!(
                    "{:.0}x",
                    o.as_secs_f64() / new.as_secs_f64()
                )),
                same.map_or("-".into(), |s| s.to_string()),
            );
            if let Some(same) = same {
                assert!(same, "the new plan differs from the reference");
            }
        }
    }
}
