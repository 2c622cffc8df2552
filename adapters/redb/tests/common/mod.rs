//! Helpers shared by the redb tests.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};

use cairn::{Change, ChangeBuilder, ChangeId, ChangeKind, DocId, StoreId};

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// The store id the tests use.
pub fn sid() -> StoreId {
    StoreId::new("redb/test").unwrap()
}

/// A document id.
pub fn doc(name: &str) -> DocId {
    DocId::new(name).unwrap()
}

/// A new unique change of `doc` with a `len`-byte payload.
pub fn change(doc_id: &DocId, deps: &[ChangeId], len: usize) -> Change {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) ^ ((std::process::id() as u64) << 40);
    let mut payload = n.to_be_bytes().to_vec();
    payload.resize(len.max(8), (n % 251) as u8);
    ChangeBuilder::new(ChangeKind::Change, doc_id.clone())
        .deps(deps.iter().copied())
        .created_at(n)
        .payload(payload)
        .build()
        .unwrap()
}

/// `n` changes of `doc`, each depending on the previous one.
pub fn chain(doc_id: &DocId, n: usize, len: usize) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::with_capacity(n);
    for _ in 0..n {
        let deps: Vec<ChangeId> = out.last().map(|c| vec![c.id()]).unwrap_or_default();
        out.push(change(doc_id, &deps, len));
    }
    out
}

/// A small deterministic PRNG (xorshift64*), seeded for reproducibility.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}
