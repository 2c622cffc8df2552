//! The [`AppendOnlyStore`] implementation.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use cairn::tail::{SeqWatch, tail};
use cairn::{
    AppendOnlyStore, AppendOutcome, Bytes, Capabilities, Change, ChangeId, ChangeMeta,
    ChangeStream, DocId, Error, Fingerprint, FingerprintBuckets, Head, IdRange, RangeSummary,
    Result, ScanItem, StoreId,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Row;

use crate::error::{Fail, corrupt};
use crate::writer::{Encoded, Job, Verdict};
use crate::{PostgresDb, PostgresStore, retry, to_u64};

/// Batches above this many payload bytes are checked on the blocking pool,
/// so hashing them does not stall the executor.
const INLINE_CHECK_BYTES: usize = 256 << 10;

/// Page size of a subscription's catch-up scans.
const TAIL_PAGE: usize = 256;

pub(crate) struct StoreInner {
    pub(crate) db: PostgresDb,
    pub(crate) store_id: StoreId,
    /// The store's row in `stores`.
    pub(crate) key: i64,
    pub(crate) epoch: u64,
    /// Highest head known to be committed, shared by the handles of this
    /// store in this `PostgresDb`.
    pub(crate) watch: Arc<SeqWatch>,
    /// The writer task's queue (group commit).
    pub(crate) writer: mpsc::UnboundedSender<Job>,
    /// Coded symbols for reconciliation, folded in from `scan` on demand.
    pub(crate) riblt: cairn::riblt::LazyEncoder,
}

/// Metadata from a row, checked against the row's id column.
fn meta_of(id: &[u8], meta: &[u8]) -> Result<ChangeMeta> {
    let m = cairn::encoding::decode_meta(meta).map_err(|e| {
        corrupt(format!(
            "metadata of {}: {e}",
            ChangeId::from_slice(id).map_or_else(|_| "a malformed id".to_owned(), |i| i.to_hex())
        ))
    })?;
    if m.id.as_bytes().as_slice() != id {
        return Err(corrupt(format!(
            "row with id {} holds metadata of {}",
            ChangeId::from_slice(id).map_or_else(|_| "(malformed)".to_owned(), |i| i.to_hex()),
            m.id
        )));
    }
    Ok(m)
}

fn row_meta(row: &Row, id: usize, meta: usize) -> Result<ChangeMeta, Fail> {
    let i: &[u8] = row.try_get(id)?;
    let m: &[u8] = row.try_get(meta)?;
    Ok(meta_of(i, m)?)
}

fn row_change(row: &Row) -> Result<Change, Fail> {
    let meta = row_meta(row, 0, 1)?;
    let payload: Vec<u8> = row.try_get(2)?;
    let change = Change {
        meta,
        payload: Bytes::from(payload),
    };
    change
        .check_integrity()
        .map_err(|e| corrupt(format!("stored change does not check: {e}")))?;
    Ok(change)
}

fn row_id(row: &Row) -> Result<ChangeId, Fail> {
    row_id_at(row, 0)
}

fn row_id_at(row: &Row, idx: usize) -> Result<ChangeId, Fail> {
    let b: &[u8] = row.try_get(idx)?;
    Ok(ChangeId::from_slice(b).map_err(|_| corrupt("a stored id is not 32 bytes"))?)
}

fn row_seq(row: &Row) -> Result<u64, Fail> {
    Ok(to_u64(row.try_get::<_, i64>(0)?))
}

fn limit_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The id right after `id` in byte order, if any.
fn successor(id: &ChangeId) -> Option<ChangeId> {
    let mut b = *id.as_bytes();
    for byte in b.iter_mut().rev() {
        if *byte == u8::MAX {
            *byte = 0;
        } else {
            *byte += 1;
            return Some(ChangeId::from_bytes(b));
        }
    }
    None
}

impl StoreInner {
    fn page(&self) -> usize {
        self.db.inner.options.page_rows
    }

    async fn db_head(&self) -> Result<u64> {
        let key = self.key;
        let head = self
            .db
            .run(|client, sql| async move {
                let row = client.query_one(&sql.head, &[&key]).await?;
                row_seq(&row)
            })
            .await?;
        self.watch.publish(head);
        Ok(head)
    }

    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = self.key;
        let from = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = limit_i64(limit);
        let rows = self
            .db
            .run(|client, sql| async move {
                let stmt = client.prepare_cached(&sql.scan).await?;
                Ok(client.query(&stmt, &[&key, &from, &limit]).await?)
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut want = after;
        for row in &rows {
            let seq = row_seq(row).map_err(Fail::into_error)?;
            want += 1;
            if seq != want {
                return Err(corrupt(format!("sequence {want} is missing (found {seq})")));
            }
            out.push(ScanItem {
                seq,
                meta: row_meta(row, 1, 2).map_err(Fail::into_error)?,
            });
        }
        Ok(out)
    }

    /// Every held id in `[start, end)` (up to `limit`), ascending, a page
    /// at a time.
    async fn walk_ids(
        &self,
        range: &IdRange,
        limit: usize,
        mut visit: impl FnMut(ChangeId) + Send,
    ) -> Result<()> {
        if limit == 0 || range.end.is_some_and(|end| end <= range.start) {
            return Ok(());
        }
        let key = self.key;
        let page = self.page();
        let mut start = Some(range.start);
        let mut left = limit;
        while let (Some(from), true) = (start, left > 0) {
            let n = limit_i64(page.min(left));
            let end = range.end;
            let rows = self
                .db
                .run(|client, sql| async move {
                    let from = from.as_bytes().as_slice();
                    Ok(match end {
                        Some(end) => {
                            let stmt = client.prepare_cached(&sql.ids_in_range).await?;
                            let end = end.as_bytes().as_slice();
                            client.query(&stmt, &[&key, &from, &end, &n]).await?
                        }
                        None => {
                            let stmt = client.prepare_cached(&sql.ids_in_range_open).await?;
                            client.query(&stmt, &[&key, &from, &n]).await?
                        }
                    })
                })
                .await?;
            let got = rows.len();
            let mut last = None;
            for row in &rows {
                let id = row_id(row).map_err(Fail::into_error)?;
                visit(id);
                last = Some(id);
            }
            left -= got;
            if got < page.min(left + got) {
                break;
            }
            start = last.as_ref().and_then(successor);
        }
        Ok(())
    }

    pub(crate) async fn check_consistency(&self) -> Result<u64> {
        let key = self.key;
        let page = limit_i64(self.page());
        let sql = self.db.inner.sql.clone();
        let retries = self.db.inner.options.retries;
        retry(retries, || async {
            let mut client = self.db.inner.pool.get().await?;
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let head = row_seq(&tx.query_one(&sql.head, &[&key]).await?)?;
            let mut buckets = FingerprintBuckets::default();
            let mut after = 0u64;
            let stmt = format!(
                "SELECT seq, id, meta, payload FROM {}.changes
                 WHERE store_key = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                self.db.inner.options.schema
            );
            loop {
                let rows = tx.query(&stmt, &[&key, &(after as i64), &page]).await?;
                if rows.is_empty() {
                    break;
                }
                for row in &rows {
                    let seq = row_seq(row)?;
                    if seq != after + 1 {
                        return Err(corrupt(format!("sequence {} is missing", after + 1)).into());
                    }
                    after = seq;
                    let meta = row_meta(row, 1, 2)?;
                    let payload: &[u8] = row.try_get(3)?;
                    let change = Change {
                        meta,
                        payload: Bytes::copy_from_slice(payload),
                    };
                    change
                        .check_integrity()
                        .map_err(|e| corrupt(format!("change at seq {seq}: {e}")))?;
                    buckets.add(&change.meta.id);
                }
            }
            if after != head {
                return Err(
                    corrupt(format!("head is {head} but {after} changes are stored")).into(),
                );
            }
            let rows = tx
                .query(&sql.bucket_range, &[&key, &0i32, &4096i32])
                .await?;
            let mut stored = FingerprintBuckets::default();
            let mut unfolded = Vec::new();
            let mut count = 0usize;
            for row in &rows {
                match row.try_get::<_, Option<i32>>(0)? {
                    Some(b) => {
                        let sum: &str = row.try_get(1)?;
                        let n: i64 = row.try_get(2)?;
                        stored.set(b as usize, crate::fp::fingerprint_from(sum, n)?);
                        count += 1;
                    }
                    None => unfolded.push(row_id_at(row, 3)?),
                }
            }
            if count != FingerprintBuckets::COUNT {
                return Err(corrupt(format!("{count} bucket rows, not 4096")).into());
            }
            let bucket_head = row_seq(&tx.query_one(&sql.bucket_head, &[&key]).await?)?;
            if bucket_head > head || unfolded.len() as u64 != head - bucket_head {
                return Err(corrupt(format!(
                    "the buckets cover up to {bucket_head} of {head} changes, and {} are left to fold",
                    unfolded.len()
                ))
                .into());
            }
            unfolded.iter().for_each(|id| stored.add(id));
            if stored != buckets {
                return Err(corrupt("bucket fingerprints disagree with the stored ids").into());
            }
            Ok(head)
        })
        .await
    }
}

#[async_trait]
impl AppendOnlyStore for PostgresStore {
    fn store_id(&self) -> &StoreId {
        &self.inner.store_id
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            native_find_new: true,
            native_doc_index: true,
            native_reconciliation: true,
            durable: true,
            remote: false,
        }
    }

    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        let limits = self.inner.db.inner.options.limits;
        let size: usize = changes.iter().map(|c| c.payload.len()).sum();
        // A big batch is checked on the blocking pool while the writer
        // sends it: the check (blake3 over every payload) overlaps the
        // database's work instead of preceding it, and the writer commits
        // only once it has passed (`Verdict`). A small one is checked here.
        let (batch, repeats, check) = if size > INLINE_CHECK_BYTES {
            let (batch, repeats) = cairn::prepare_batch_unchecked(changes.clone(), &limits)?;
            let (tell, verdict) = Verdict::pending();
            let check = tokio::task::spawn_blocking(move || {
                let r = cairn::check_batch_integrity(&changes);
                tell.send_replace(Some(r.is_ok()));
                r
            });
            (batch, repeats, Some((check, verdict)))
        } else {
            let (batch, repeats) = cairn::prepare_batch(changes, &limits)?;
            (batch, repeats, None)
        };
        if batch.is_empty() {
            return Ok(AppendOutcome {
                new: Vec::new(),
                duplicates: repeats,
            });
        }
        let metas = batch
            .iter()
            .map(|c| cairn::encoding::encode_meta(&c.meta))
            .collect();
        let (check, verdict) = match check {
            Some((c, v)) => (Some(c), v),
            None => (None, Verdict::passed()),
        };
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(Job {
                enc: Encoded {
                    batch,
                    metas,
                    verdict,
                },
                reply,
            })
            .map_err(|_| Error::Closed)?;
        if let Some(check) = check {
            // A failed check: the writer rolls the batch back (it waits for
            // the verdict before COMMIT), and this is the caller's error.
            check.await.map_err(|_| Error::Cancelled)??;
        }
        let mut out = answer.await.map_err(|_| Error::Closed)??;
        out.duplicates += repeats;
        Ok(out)
    }

    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        let key = self.inner.key;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(self.inner.page()) {
            let asked: Vec<&[u8]> = chunk.iter().map(|i| i.as_bytes().as_slice()).collect();
            let asked = &asked;
            let found = self
                .inner
                .db
                .run(|client, sql| async move {
                    let stmt = client.prepare_cached(&sql.get_changes).await?;
                    let rows = client.query(&stmt, &[&key, asked]).await?;
                    let mut found = HashMap::with_capacity(rows.len());
                    for row in &rows {
                        let c = row_change(row)?;
                        found.insert(c.meta.id, c);
                    }
                    Ok(found)
                })
                .await?;
            out.extend(chunk.iter().filter_map(|id| found.get(id).cloned()));
        }
        Ok(out)
    }

    async fn get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        let key = self.inner.key;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(self.inner.page()) {
            let asked: Vec<&[u8]> = chunk.iter().map(|i| i.as_bytes().as_slice()).collect();
            let asked = &asked;
            let found = self
                .inner
                .db
                .run(|client, sql| async move {
                    let stmt = client.prepare_cached(&sql.get_metas).await?;
                    let rows = client.query(&stmt, &[&key, asked]).await?;
                    let mut found = HashMap::with_capacity(rows.len());
                    for row in &rows {
                        let m = row_meta(row, 0, 1)?;
                        found.insert(m.id, m);
                    }
                    Ok(found)
                })
                .await?;
            out.extend(chunk.iter().filter_map(|id| found.get(id).cloned()));
        }
        Ok(out)
    }

    async fn has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        let key = self.inner.key;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(self.inner.page()) {
            let asked: Vec<&[u8]> = chunk.iter().map(|i| i.as_bytes().as_slice()).collect();
            let asked = &asked;
            let held = self
                .inner
                .db
                .run(|client, sql| async move {
                    let stmt = client.prepare_cached(&sql.has).await?;
                    let rows = client.query(&stmt, &[&key, asked]).await?;
                    let mut held = HashSet::with_capacity(rows.len());
                    for row in &rows {
                        held.insert(row_id(row)?);
                    }
                    Ok(held)
                })
                .await?;
            out.extend(chunk.iter().map(|id| held.contains(id)));
        }
        Ok(out)
    }

    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.inner.scan(after, limit).await
    }

    async fn head(&self) -> Result<Head> {
        Ok(Head {
            epoch: self.inner.epoch,
            seq: self.inner.db_head().await?,
        })
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        // Register first, then read the committed head: everything up to it
        // was present before the call; everything after is delivered.
        let rx = self.inner.watch.receiver();
        let after = self.inner.db_head().await?;
        let weak: Weak<StoreInner> = Arc::downgrade(&self.inner);
        Ok(tail(rx, after, TAIL_PAGE, move |after, limit| {
            let inner = weak.upgrade();
            async move {
                match inner {
                    None => Ok(None),
                    Some(inner) => inner.scan(after, limit).await.map(Some),
                }
            }
        }))
    }

    async fn find_new_changes(&self, have: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        let have: HashSet<&ChangeId> = have.iter().collect();
        let end = i64::try_from(self.inner.db_head().await?).unwrap_or(i64::MAX);
        let key = self.inner.key;
        let page = limit_i64(self.inner.page());
        let mut out = Vec::new();
        let mut after = 0i64;
        while after < end {
            let rows = self
                .inner
                .db
                .run(|client, sql| async move {
                    let stmt = client.prepare_cached(&sql.scan_upto).await?;
                    Ok(client.query(&stmt, &[&key, &after, &end, &page]).await?)
                })
                .await?;
            let Some(last) = rows.last() else { break };
            after = row_seq(last).map_err(Fail::into_error)? as i64;
            for row in &rows {
                let id = row_id_at(row, 1).map_err(Fail::into_error)?;
                if have.contains(&id) {
                    continue;
                }
                out.push(row_meta(row, 1, 2).map_err(Fail::into_error)?);
            }
        }
        Ok(out)
    }

    async fn all_change_ids(&self) -> Result<Vec<ChangeId>> {
        let mut out = Vec::new();
        self.inner
            .walk_ids(&IdRange::ALL, usize::MAX, |id| out.push(id))
            .await?;
        Ok(out)
    }

    async fn changes_for_doc(
        &self,
        doc: &DocId,
        from_last_snapshot: bool,
    ) -> Result<Vec<ChangeMeta>> {
        let key = self.inner.key;
        let page = limit_i64(self.inner.page());
        let d = doc.as_str();
        let mut metas = Vec::new();
        let mut after = 0i64;
        loop {
            let rows = self
                .inner
                .db
                .run(|client, sql| async move {
                    let stmt = client.prepare_cached(&sql.doc).await?;
                    Ok(client.query(&stmt, &[&key, &d, &after, &page]).await?)
                })
                .await?;
            let Some(last) = rows.last() else { break };
            after = row_seq(last).map_err(Fail::into_error)? as i64;
            for row in &rows {
                metas.push(row_meta(row, 1, 2).map_err(Fail::into_error)?);
            }
            if (rows.len() as i64) < page {
                break;
            }
        }
        Ok(cairn::graph::plan_doc_load(metas, from_last_snapshot))
    }

    async fn range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        if let Some(covered) = FingerprintBuckets::aligned(range) {
            let mut fp = Fingerprint::default();
            if covered.is_empty() {
                return Ok(fp.summary());
            }
            let key = self.inner.key;
            let (lo, hi) = (covered.start as i32, covered.end as i32);
            let rows = self
                .inner
                .db
                .run(|client, sql| async move {
                    let stmt = client.prepare_cached(&sql.bucket_range).await?;
                    Ok(client.query(&stmt, &[&key, &lo, &hi]).await?)
                })
                .await?;
            let mut buckets = 0usize;
            for row in &rows {
                let pg = crate::error::map_pg;
                if row.try_get::<_, Option<i32>>(0).map_err(pg)?.is_some() {
                    let sum: &str = row.try_get(1).map_err(pg)?;
                    let n: i64 = row.try_get(2).map_err(pg)?;
                    fp.merge(&crate::fp::fingerprint_from(sum, n)?);
                    buckets += 1;
                } else {
                    // Appended since the last fold.
                    fp.add(&row_id_at(row, 3).map_err(Fail::into_error)?);
                }
            }
            if buckets != covered.len() {
                return Err(corrupt(format!(
                    "{buckets} bucket rows in buckets {lo}..{hi}, not {}",
                    covered.len()
                )));
            }
            return Ok(fp.summary());
        }
        let mut fp = Fingerprint::default();
        self.inner
            .walk_ids(range, usize::MAX, |id| fp.add(&id))
            .await?;
        Ok(fp.summary())
    }

    async fn coded_symbols(
        &self,
        request: &cairn::riblt::SymbolRequest,
    ) -> Result<cairn::riblt::SymbolReply> {
        self.inner.riblt.answer(self, request).await
    }

    async fn ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        let mut out = Vec::new();
        self.inner.walk_ids(range, limit, |id| out.push(id)).await?;
        Ok(out)
    }
}
