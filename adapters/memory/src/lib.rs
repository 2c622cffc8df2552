#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use async_trait::async_trait;
use cairn::riblt::{self, Encoder, SymbolReply, SymbolRequest};
use cairn::tail::{SeqWatch, tail};
use cairn::{
    AppendOnlyStore, AppendOutcome, Capabilities, Change, ChangeId, ChangeMeta, ChangeStream,
    DocId, Fingerprint, FingerprintBuckets, Head, IdRange, Limits, RangeSummary, Result, ScanItem,
    StoreId,
};

/// An in-memory [`AppendOnlyStore`]; cheap to clone (clones share the data).
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store_id: StoreId,
    epoch: u64,
    limits: Limits,
    state: RwLock<State>,
    watch: SeqWatch,
}

#[derive(Debug, Default)]
struct State {
    /// Changes in arrival order: `log[seq - 1]`.
    log: Vec<Change>,
    /// id → seq.
    by_id: HashMap<ChangeId, u64>,
    /// All ids, sorted, for `all_change_ids` and reconciliation.
    sorted: BTreeSet<ChangeId>,
    /// doc → seqs of its changes, ascending.
    by_doc: HashMap<DocId, Vec<u64>>,
    /// Fingerprints per id bucket, for reconciliation.
    buckets: FingerprintBuckets,
    /// Coded symbols of `log[..covered]`, folded in when asked (so that
    /// appends pay nothing for them), from [`ENCODER_FROM`] changes on
    /// (below that, walking every id is cheaper than the encoder's 1.25
    /// MiB).
    riblt: Mutex<Option<(usize, Encoder)>>,
}

/// The size from which a store keeps an encoder.
const ENCODER_FROM: usize = 1024;

impl State {
    fn get(&self, id: &ChangeId) -> Option<&Change> {
        let seq = *self.by_id.get(id)?;
        self.log.get(usize::try_from(seq).ok()?.checked_sub(1)?)
    }

    fn at(&self, seq: u64) -> Option<&Change> {
        self.log.get(usize::try_from(seq).ok()?.checked_sub(1)?)
    }
}

impl MemoryStore {
    /// An empty store with a fresh random epoch and the default [`Limits`].
    pub fn new(store_id: StoreId) -> Self {
        Self::with_limits(store_id, Limits::default())
    }

    /// An empty store enforcing `limits` on each append.
    pub fn with_limits(store_id: StoreId, limits: Limits) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                store_id,
                epoch: cairn::random_u64(),
                limits,
                state: RwLock::new(State::default()),
                watch: SeqWatch::new(0),
            }),
        }
    }

    /// Number of changes held.
    pub fn len(&self) -> usize {
        self.inner.read().log.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    // The lock is never held across an await or a call that can panic, so a
    // poisoned lock still guards consistent data: take it.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn scan(&self, after: u64, limit: usize) -> Vec<ScanItem> {
        let st = self.read();
        let start = usize::try_from(after).unwrap_or(usize::MAX);
        st.log
            .iter()
            .enumerate()
            .skip(start)
            .take(limit)
            .map(|(i, c)| ScanItem {
                seq: i as u64 + 1,
                meta: c.meta.clone(),
            })
            .collect()
    }
}

#[async_trait]
impl AppendOnlyStore for MemoryStore {
    fn store_id(&self) -> &StoreId {
        &self.inner.store_id
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            native_find_new: true,
            native_doc_index: true,
            native_reconciliation: true,
            durable: false,
            remote: false,
        }
    }

    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        let (mut batch, repeats) = cairn::prepare_batch(changes, &self.inner.limits)?;
        // Give each payload its shared form now, outside the lock: a
        // `Bytes` built from a `Vec` allocates its reference count on its
        // first clone, so otherwise the first read of each change (every
        // `get_changes` clones) would grow the store by 24 bytes a change,
        // and a pull of the whole store would look like it grew with it.
        for c in &mut batch {
            c.payload = c.payload.clone();
        }
        let mut out = AppendOutcome {
            new: Vec::with_capacity(batch.len()),
            duplicates: repeats,
        };
        let seq = {
            let mut st = self.inner.write();
            for c in batch {
                if st.by_id.contains_key(&c.id()) {
                    out.duplicates += 1;
                    continue;
                }
                let seq = st.log.len() as u64 + 1;
                st.by_id.insert(c.id(), seq);
                st.sorted.insert(c.id());
                st.buckets.add(&c.id());
                // Look the document up before cloning its id: most changes
                // belong to a document the store already holds.
                match st.by_doc.get_mut(&c.meta.doc_id) {
                    Some(seqs) => seqs.push(seq),
                    None => {
                        st.by_doc.insert(c.meta.doc_id.clone(), vec![seq]);
                    }
                }
                out.new.push(c.id());
                st.log.push(c);
            }
            st.log.len() as u64
        };
        self.inner.watch.publish(seq);
        Ok(out)
    }

    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        let st = self.inner.read();
        Ok(ids.iter().filter_map(|id| st.get(id).cloned()).collect())
    }

    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        let st = self.inner.read();
        Ok(ids
            .iter()
            .filter_map(|id| st.get(id).map(|c| c.meta.clone()))
            .collect())
    }

    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        let st = self.inner.read();
        Ok(ids.iter().map(|id| st.by_id.contains_key(id)).collect())
    }

    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        Ok(self.inner.scan(after, limit))
    }

    async fn head(&self) -> Result<Head> {
        Ok(Head {
            epoch: self.inner.epoch,
            seq: self.inner.read().log.len() as u64,
        })
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        // Read the head and register under the same lock, so no append can
        // slip between "now" and the subscription.
        let (after, rx) = {
            let st = self.inner.read();
            (st.log.len() as u64, self.inner.watch.receiver())
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        Ok(tail(rx, after, 256, move |after, limit| {
            let inner = weak.upgrade();
            async move { Ok(inner.map(|i| i.scan(after, limit))) }
        }))
    }

    async fn find_new_changes(&self, have: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        let have: std::collections::HashSet<&ChangeId> = have.iter().collect();
        let st = self.inner.read();
        Ok(st
            .log
            .iter()
            .filter(|c| !have.contains(&c.meta.id))
            .map(|c| c.meta.clone())
            .collect())
    }

    async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
        Ok(self.inner.read().sorted.iter().copied().collect())
    }

    async fn changes_for_doc(
        &self,
        doc: &DocId,
        from_last_snapshot: bool,
    ) -> Result<Vec<ChangeMeta>> {
        let metas: Vec<ChangeMeta> = {
            let st = self.inner.read();
            st.by_doc
                .get(doc)
                .map(|seqs| {
                    seqs.iter()
                        .filter_map(|&s| st.at(s).map(|c| c.meta.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(cairn::graph::plan_doc_load(metas, from_last_snapshot))
    }

    async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        let st = self.inner.read();
        if let Some(summary) = st.buckets.summary(range) {
            return Ok(summary);
        }
        let mut fp = Fingerprint::default();
        for id in range_iter(&st.sorted, range) {
            fp.add(id);
        }
        Ok(fp.summary())
    }

    async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        let st = self.inner.read();
        Ok(range_iter(&st.sorted, range).take(limit).copied().collect())
    }

    async fn coded_symbols(&self, request: &SymbolRequest) -> Result<SymbolReply> {
        request.check()?;
        let st = self.inner.read();
        if st.log.len() < ENCODER_FROM {
            return riblt::answer(&st.sorted, request);
        }
        // Readers hold the state's read lock, so `log` cannot grow while
        // the encoder catches up with it.
        let mut guard = st.riblt.lock().unwrap_or_else(|e| e.into_inner());
        let (covered, encoder) = guard.get_or_insert_with(|| (0, Encoder::default()));
        for c in &st.log[(*covered).min(st.log.len())..] {
            encoder.add(&c.id());
        }
        *covered = st.log.len();
        encoder.answer(request, || Box::new(st.sorted.iter()))
    }
}

fn range_iter<'a>(
    set: &'a BTreeSet<ChangeId>,
    range: &IdRange,
) -> Box<dyn Iterator<Item = &'a ChangeId> + 'a> {
    match range.end {
        Some(end) if end <= range.start => Box::new(std::iter::empty()),
        Some(end) => Box::new(set.range(range.start..end)),
        None => Box::new(set.range(range.start..)),
    }
}
