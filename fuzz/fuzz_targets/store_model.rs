//! Random operation sequences applied to a `MemoryStore` and a `RedbStore`,
//! each compared after every step with a plain model: the ids in arrival
//! order (`Vec`) and their changes (`BTreeMap`), as redb's own fuzzer
//! compares redb with a `BTreeMap`.
//!
//! The redb store runs on an in-memory redb backend wrapped to fail its
//! I/O on demand (`FailAfter`: the N-th backend call from now fails, and
//! every one after it until the store is reopened). While failures are
//! armed, a redb answer that is `Ok` must still be right; the first error
//! makes the redb store "faulted" (its answers are not compared, but it
//! must not panic) until `Reopen`, which closes it, disarms the failures
//! and opens it again on the same bytes. The reopened store must open,
//! pass `check_consistency`, hold every change it acknowledged at the
//! sequence number it gave, and of each append that failed, all of its
//! new changes or none (a commit that failed may or may not have reached
//! the backend). Then the model takes what the store holds, and the
//! changes redb lacks are appended again, so both stores hold one set.
#![no_main]

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use cairn::{
    AppendOnlyStore, AppendOutcome, Change, ChangeBuilder, ChangeId, ChangeKind, DocId,
    Fingerprint, IdRange, Keypair, Result, StoreId,
};
use cairn_memory::MemoryStore;
use cairn_redb::{RedbOptions, RedbStore};
use libfuzzer_sys::fuzz_target;
use redb::StorageBackend;
use redb::backends::InMemoryBackend;

/// Changes the operations pick from (by index mod `POOL`).
const POOL: usize = 24;

/// At most this many operations per input (inputs are bounded anyway;
/// this keeps one execution short).
const MAX_OPS: usize = 64;

/// One step. The input is a sequence of them, each an opcode byte (mod 9,
/// in the order below) and its arguments: a list is a length byte (mod 16)
/// and that many bytes; `fail` is one byte, `u8` arguments one byte each
/// (missing bytes read as 0). `fuzz/examples/seeds.rs` writes seeds in
/// this form.
#[derive(Debug)]
enum Op {
    /// Append these pool changes (repeats and any order allowed); with
    /// `fail`, the redb backend's `fail`-th I/O call from now fails (and
    /// every one after it), as with `FailAfter`.
    Append(Vec<u8>, Option<u8>),
    /// Append these pool changes with one of them damaged (payload
    /// altered): both stores must refuse the whole batch.
    AppendDamaged(Vec<u8>, u8),
    Get(Vec<u8>),
    Has(Vec<u8>),
    Scan { after: u8, limit: u8 },
    FindNew(Vec<u8>),
    /// `range_summary` and `ids_in_range` over ids whose first byte is in
    /// `[start, end)` (`end == 0`: unbounded).
    Range { start: u8, end: u8, limit: u8 },
    /// The redb backend's `n`-th I/O call from now fails, and every call
    /// after it.
    FailAfter(u8),
    /// Close the redb store and open it again on the same bytes, with the
    /// failures disarmed.
    Reopen,
}

fn list(byte: &mut impl FnMut() -> Option<u8>) -> Vec<u8> {
    let n = byte().unwrap_or(0) % 16;
    (0..n).map_while(|_| byte()).collect()
}

fn parse(data: &[u8]) -> Vec<Op> {
    let mut it = data.iter().copied();
    let mut byte = move || it.next();
    let mut ops = Vec::new();
    while let Some(code) = byte() {
        if ops.len() == MAX_OPS {
            break;
        }
        let op = match code % 9 {
            0 => Op::Append(list(&mut byte), None),
            1 => {
                let l = list(&mut byte);
                Op::Append(l, Some(byte().unwrap_or(0)))
            }
            2 => {
                let l = list(&mut byte);
                Op::AppendDamaged(l, byte().unwrap_or(0))
            }
            3 => Op::Get(list(&mut byte)),
            4 => Op::Has(list(&mut byte)),
            5 => Op::Scan {
                after: byte().unwrap_or(0),
                limit: byte().unwrap_or(0),
            },
            6 => Op::FindNew(list(&mut byte)),
            7 => match byte().unwrap_or(0) % 3 {
                0 => Op::FailAfter(byte().unwrap_or(0)),
                1 => Op::Reopen,
                _ => Op::Range {
                    start: byte().unwrap_or(0),
                    end: byte().unwrap_or(0),
                    limit: byte().unwrap_or(0),
                },
            },
            _ => Op::Range {
                start: byte().unwrap_or(0),
                end: 0,
                limit: byte().unwrap_or(0),
            },
        };
        ops.push(op);
    }
    ops
}

/// The changes: deps only on earlier ones, three documents, signed.
fn pool() -> &'static [Change] {
    static POOL_CHANGES: OnceLock<Vec<Change>> = OnceLock::new();
    POOL_CHANGES.get_or_init(|| {
        let key = Keypair::from_seed([7; 32]);
        let docs: Vec<DocId> = ["a", "b", "c"]
            .iter()
            .map(|d| DocId::new(*d).expect("doc id"))
            .collect();
        let mut out: Vec<Change> = Vec::with_capacity(POOL);
        for i in 0..POOL {
            let deps: Vec<ChangeId> = [i.wrapping_sub(1), i / 2, i.wrapping_sub(5)]
                .into_iter()
                .filter(|&j| j < i)
                .map(|j| out[j].id())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let payload = vec![i as u8; i * 3];
            let change = ChangeBuilder::new(ChangeKind::Change, docs[i % 3].clone())
                .deps(deps)
                .created_at(1_700_000_000_000 + i as u64)
                .payload(payload)
                .sign(&key)
                .expect("pool change");
            out.push(change);
        }
        out
    })
}

fn pick(indexes: &[u8]) -> Vec<Change> {
    indexes
        .iter()
        .take(POOL * 2)
        .map(|i| pool()[usize::from(*i) % POOL].clone())
        .collect()
}

fn ids(indexes: &[u8]) -> Vec<ChangeId> {
    pick(indexes).iter().map(Change::id).collect()
}

/// Fails every I/O call once `countdown` reaches zero (`u64::MAX`: never).
#[derive(Debug)]
struct Faulty {
    inner: Arc<InMemoryBackend>,
    countdown: Arc<AtomicU64>,
}

impl Faulty {
    fn check(&self) -> io::Result<()> {
        let left = self
            .countdown
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 | u64::MAX => None,
                n => Some(n - 1),
            })
            .unwrap_or_else(|n| n);
        if left == 0 || left == 1 {
            self.countdown.store(0, Ordering::SeqCst);
            return Err(io::Error::other("injected I/O failure"));
        }
        Ok(())
    }
}

impl StorageBackend for Faulty {
    fn len(&self) -> io::Result<u64> {
        self.check()?;
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.check()?;
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
}

/// What one store should hold: ids in arrival order (seq = index + 1).
#[derive(Default, Debug)]
struct Model {
    order: Vec<ChangeId>,
    held: HashSet<ChangeId>,
}

impl Model {
    fn expect_append(&self, batch: &[Change]) -> (HashSet<ChangeId>, usize) {
        let mut new = HashSet::new();
        for c in batch {
            if !self.held.contains(&c.id()) {
                new.insert(c.id());
            }
        }
        let dups = batch.len() - new.len();
        (new, dups)
    }

    /// Check an acknowledged append against the model, then record it.
    fn acknowledged(&mut self, who: &str, batch: &[Change], out: &AppendOutcome) {
        let (new, dups) = self.expect_append(batch);
        let got: HashSet<ChangeId> = out.new.iter().copied().collect();
        assert_eq!(got.len(), out.new.len(), "{who}: an id stored twice");
        assert_eq!(got, new, "{who}: new ids");
        assert_eq!(out.duplicates, dups, "{who}: duplicates");
        // Deps before dependents within the batch.
        for (k, id) in out.new.iter().enumerate() {
            let c = batch.iter().find(|c| c.id() == *id).expect("in batch");
            for d in &c.meta.deps {
                if let Some(j) = out.new.iter().position(|x| x == d) {
                    assert!(j < k, "{who}: dep {d} after its dependent {id}");
                }
            }
        }
        self.order.extend(out.new.iter().copied());
        self.held.extend(out.new.iter().copied());
    }
}

/// Compare one store's answers with its model (and the content map).
async fn compare(who: &str, s: &dyn AppendOnlyStore, m: &Model, op: &Op) -> Result<()> {
    let content: BTreeMap<ChangeId, &Change> = pool().iter().map(|c| (c.id(), c)).collect();
    match op {
        Op::Get(ix) => {
            let asked = ids(ix);
            let got = s.get_changes(&asked).await?;
            let want: Vec<&Change> = asked
                .iter()
                .filter(|id| m.held.contains(id))
                .map(|id| content[id])
                .collect();
            assert_eq!(got.iter().collect::<Vec<_>>(), want, "{who}: get_changes");
            let metas = s.get_metas(&asked).await?;
            let want: Vec<_> = want.iter().map(|c| &c.meta).collect();
            assert_eq!(metas.iter().collect::<Vec<_>>(), want, "{who}: get_metas");
        }
        Op::Has(ix) => {
            let asked = ids(ix);
            let got = s.has_changes(&asked).await?;
            let want: Vec<bool> = asked.iter().map(|id| m.held.contains(id)).collect();
            assert_eq!(got, want, "{who}: has_changes");
        }
        Op::Scan { after, limit } => {
            let (after, limit) = (u64::from(*after % 32), usize::from(*limit % 32));
            let got = s.scan(after, limit).await?;
            let want: Vec<(u64, ChangeId)> = m
                .order
                .iter()
                .enumerate()
                .map(|(i, id)| (i as u64 + 1, *id))
                .skip(after as usize)
                .take(limit)
                .collect();
            let got: Vec<(u64, ChangeId)> = got.iter().map(|i| (i.seq, i.meta.id)).collect();
            assert_eq!(got, want, "{who}: scan({after}, {limit})");
        }
        Op::FindNew(ix) => {
            let have: HashSet<ChangeId> = ids(ix).into_iter().collect();
            let have_v: Vec<ChangeId> = have.iter().copied().collect();
            let got: Vec<ChangeId> = s
                .find_new_changes(&have_v)
                .await?
                .iter()
                .map(|m| m.id)
                .collect();
            let want: Vec<ChangeId> = m
                .order
                .iter()
                .filter(|id| !have.contains(id))
                .copied()
                .collect();
            assert_eq!(got, want, "{who}: find_new_changes");
        }
        Op::Range { start, end, limit } => {
            let bound = |b: u8| {
                let mut x = [0u8; 32];
                x[0] = b;
                ChangeId::from_bytes(x)
            };
            let range = IdRange {
                start: bound(*start),
                end: (*end != 0).then(|| bound(*end)),
            };
            let mut inside: Vec<ChangeId> = m
                .held
                .iter()
                .filter(|id| *id >= &range.start && range.end.is_none_or(|e| *id < &e))
                .copied()
                .collect();
            inside.sort();
            let mut fp = Fingerprint::default();
            for id in &inside {
                fp.add(id);
            }
            let got = s.range_summary(&range).await?;
            assert_eq!(got, fp.summary(), "{who}: range_summary");
            let limit = usize::from(*limit % 32);
            let got = s.ids_in_range(&range, limit).await?;
            inside.truncate(limit);
            assert_eq!(got, inside, "{who}: ids_in_range");
        }
        _ => {}
    }
    let head = s.head().await?;
    assert_eq!(head.seq, m.order.len() as u64, "{who}: head");
    Ok(())
}

struct Redb {
    backend: Arc<InMemoryBackend>,
    countdown: Arc<AtomicU64>,
    store: Option<RedbStore>,
    model: Model,
    /// Set by the first error while failures are armed.
    faulted: bool,
    /// The new ids each failed append would have stored.
    uncertain: Vec<Vec<ChangeId>>,
    epoch: u64,
}

fn store_id() -> StoreId {
    StoreId::new("fuzz/model").expect("store id")
}

impl Redb {
    async fn open(&mut self) -> RedbStore {
        let backend = Faulty {
            inner: self.backend.clone(),
            countdown: self.countdown.clone(),
        };
        RedbStore::open_with_backend(backend, store_id(), RedbOptions::default())
            .await
            .expect("redb opens with failures disarmed")
    }

    fn store(&self) -> &RedbStore {
        self.store.as_ref().expect("open")
    }

    /// An error from redb: allowed only while failures are armed.
    fn failed(&mut self, what: &str, e: &cairn::Error) {
        assert_ne!(
            self.countdown.load(Ordering::SeqCst),
            u64::MAX,
            "redb failed ({what}) with no failure injected: {e}"
        );
        self.faulted = true;
    }

    /// Close, disarm, reopen, and check what the store kept.
    async fn reopen(&mut self, memory: &MemoryStore) {
        drop(self.store.take());
        self.countdown.store(u64::MAX, Ordering::SeqCst);
        let store = self.open().await;
        let report = store
            .check_consistency()
            .await
            .expect("consistent after reopen");
        let head = store.head().await.expect("head");
        assert_eq!(report.changes, head.seq);
        assert_eq!(head.epoch, self.epoch, "a durable store keeps its epoch");
        let items = store
            .scan(0, usize::MAX)
            .await
            .expect("scan after reopen");
        let held: Vec<ChangeId> = items.iter().map(|i| i.meta.id).collect();
        for (i, item) in items.iter().enumerate() {
            assert_eq!(item.seq, i as u64 + 1, "gap-free after reopen");
        }
        // Nothing acknowledged is lost or moved.
        assert!(
            held.len() >= self.model.order.len() && held[..self.model.order.len()] == self.model.order[..],
            "acknowledged changes lost or moved by a failed write: had {:?}, now {:?}",
            self.model.order,
            held
        );
        let held_set: HashSet<ChangeId> = held.iter().copied().collect();
        // Each failed append is all or nothing: a batch not wholly present
        // may show an id only through another failed batch that is.
        let whole: Vec<&Vec<ChangeId>> = self
            .uncertain
            .iter()
            .filter(|b| b.iter().all(|id| held_set.contains(id)))
            .collect();
        let mut allowed: HashSet<ChangeId> = self.model.held.clone();
        for batch in &self.uncertain {
            if !batch.iter().all(|id| held_set.contains(id)) {
                for id in batch.iter().filter(|id| held_set.contains(id)) {
                    assert!(
                        whole.iter().any(|w| w.contains(id)),
                        "a failed append is half visible: {batch:?} in {held:?}"
                    );
                }
            }
            allowed.extend(batch.iter().copied());
        }
        for id in &held {
            assert!(allowed.contains(id), "redb holds {id}, never appended");
        }
        self.model.order = held;
        self.model.held = held_set;
        self.uncertain.clear();
        self.faulted = false;
        // Give redb what the memory store holds and it lacks.
        let mem: Vec<ChangeId> = memory
            .scan(0, usize::MAX)
            .await
            .expect("memory scan")
            .iter()
            .map(|i| i.meta.id)
            .filter(|id| !self.model.held.contains(id))
            .collect();
        let again = memory.get_changes(&mem).await.expect("memory get");
        let out = store.append(again.clone()).await.expect("redb re-append");
        self.model.acknowledged("redb", &again, &out);
        self.store = Some(store);
    }
}

async fn run(ops: Vec<Op>) {
    let memory = MemoryStore::new(store_id());
    let mut mem_model = Model::default();
    let mut redb = Redb {
        backend: Arc::new(InMemoryBackend::new()),
        countdown: Arc::new(AtomicU64::new(u64::MAX)),
        store: None,
        model: Model::default(),
        faulted: false,
        uncertain: Vec::new(),
        epoch: 0,
    };
    let first = redb.open().await;
    redb.epoch = first.head().await.expect("head").epoch;
    redb.store = Some(first);

    for op in ops.iter().take(MAX_OPS) {
        match op {
            Op::Append(ix, fail) => {
                if let (Some(n), false) = (fail, redb.faulted) {
                    redb.countdown.store(u64::from(*n) + 1, Ordering::SeqCst);
                }
                let batch = pick(ix);
                let out = memory.append(batch.clone()).await.expect("memory append");
                mem_model.acknowledged("memory", &batch, &out);
                let (expect, _) = redb.model.expect_append(&batch);
                let expect: Vec<ChangeId> = expect.into_iter().collect();
                match redb.store().append(batch.clone()).await {
                    // Once faulted, an append that succeeds anyway is still
                    // only "maybe stored": the model is not compared then.
                    Ok(_) if redb.faulted => redb.uncertain.push(expect),
                    Ok(out) => redb.model.acknowledged("redb", &batch, &out),
                    Err(e) => {
                        if !redb.faulted {
                            redb.failed("append", &e);
                        }
                        redb.uncertain.push(expect);
                    }
                }
            }
            Op::AppendDamaged(ix, which) => {
                let mut batch = pick(ix);
                if batch.is_empty() {
                    batch.push(pool()[0].clone());
                }
                let k = usize::from(*which) % batch.len();
                let mut p = batch[k].payload.to_vec();
                p.push(0xff);
                batch[k].payload = p.into();
                assert!(memory.append(batch.clone()).await.is_err(), "memory took a damaged change");
                let got = redb.store().append(batch).await;
                if !redb.faulted {
                    match got {
                        Ok(_) => panic!("redb took a damaged change"),
                        // An integrity error, or an injected failure.
                        Err(cairn::Error::Integrity { .. }) => {}
                        Err(e) => redb.failed("damaged append", &e),
                    }
                }
                compare("memory", &memory, &mem_model, &Op::Scan { after: 0, limit: 255 })
                    .await
                    .expect("memory");
            }
            Op::FailAfter(n) => {
                if !redb.faulted {
                    redb.countdown.store(u64::from(*n) + 1, Ordering::SeqCst);
                }
            }
            Op::Reopen => redb.reopen(&memory).await,
            read => {
                compare("memory", &memory, &mem_model, read)
                    .await
                    .expect("memory reads");
                if !redb.faulted {
                    if let Err(e) = compare("redb", redb.store(), &redb.model, read).await {
                        redb.failed("read", &e);
                    }
                }
            }
        }
    }
    // At the end: reopen, and both hold one set.
    redb.reopen(&memory).await;
    assert_eq!(redb.model.held, mem_model.held, "memory and redb hold one set");
}

fuzz_target!(|data: &[u8]| {
    let ops = parse(data);
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    });
    rt.block_on(run(ops));
});
