//! Appends: one writer task per open store and process, which merges the
//! appends waiting for it into one transaction (group commit), and the
//! transaction itself.
//!
//! # Sequence numbers
//!
//! Every store has one row in `stores` whose `head` column is its last
//! sequence number. A transaction that appends first takes that row with
//! `SELECT head … FOR UPDATE`; every other appender of the same store, in
//! any process, blocks there until it commits or rolls back. Holding the
//! lock, it inserts the new changes as `head + 1 …` (the insert reads
//! `head` from the locked row), adds their ids to the bucket sums, moves
//! `head` and commits, which releases the lock. So:
//!
//! - numbers are assigned in commit order: the next appender reads `head`
//!   only after this one's commit (`READ COMMITTED` takes a fresh snapshot
//!   per statement, and the locking read sees the latest committed row);
//! - there are no gaps: a failed or rolled-back transaction assigned
//!   nothing that survives, unlike a `SERIAL`/sequence, whose numbers are
//!   taken outside the transaction;
//! - a reader never sees `N + 1` without `N`: PostgreSQL makes a
//!   transaction visible before it releases its locks, so when the next
//!   appender can commit `N + 1`, everything up to `N` is already visible
//!   to every new snapshot, and one `scan` query reads one snapshot.
//!
//! # One round trip
//!
//! The common case sends `BEGIN`, the lock, the insert, the bucket
//! update, the head update, `NOTIFY` and `COMMIT` at once and reads the
//! answers together. It assumes every id is new; if one is stored already,
//! the insert violates the unique index `changes_by_id`, which aborts the
//! transaction (so `COMMIT` only rolls back and nothing is visible), and
//! the writer appends again on the same connection, this time reading
//! which ids are present under the lock first (two round trips). The
//! lock makes that check exact: nobody else can insert into this store
//! meanwhile. Every input row yields exactly one inserted row (the head
//! subquery yields one row, since the lock found the store's row), so the
//! numbering has no gaps.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use cairn::tail::SeqWatch;
use cairn::{AppendOutcome, Change, ChangeId, Error, FingerprintBuckets, Result};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::types::ToSql;

use crate::error::{Fail, corrupt};
use crate::fp::Delta;
use crate::{PostgresDb, retry, retry_fail, to_u64};

/// Most changes merged into one group commit.
const GROUP_MAX_CHANGES: usize = 10_000;
/// Most payload bytes merged into one group commit.
const GROUP_MAX_BYTES: usize = 64 << 20;

/// A batch ordered by `prepare_batch` (or `prepare_batch_unchecked`, with
/// its integrity check still running), with its encoded metadata.
pub(crate) struct Encoded {
    pub(crate) batch: Vec<Change>,
    pub(crate) metas: Vec<Vec<u8>>,
    pub(crate) verdict: Verdict,
}

/// Whether a batch passed its integrity check. The check of a big batch
/// runs while the writer sends it; the writer waits for the verdict before
/// `COMMIT`, and rolls back unless it is a pass. A check that ended without
/// a verdict (its task gone) counts as a failure.
#[derive(Clone)]
pub(crate) struct Verdict(Option<watch::Receiver<Option<bool>>>);

impl Verdict {
    /// Checked already, and passed.
    pub(crate) fn passed() -> Self {
        Verdict(None)
    }

    /// A check still to run: it reports through the sender.
    pub(crate) fn pending() -> (watch::Sender<Option<bool>>, Self) {
        let (tx, rx) = watch::channel(None);
        (tx, Verdict(Some(rx)))
    }

    /// Wait for the check; true if it passed.
    async fn pass(&self) -> bool {
        match &self.0 {
            None => true,
            Some(rx) => {
                let mut rx = rx.clone();
                matches!(
                    rx.wait_for(Option::is_some).await.as_deref(),
                    Ok(Some(true))
                )
            }
        }
    }
}

/// Whether every batch of `group` passed its check.
async fn all_pass(group: &[&Encoded]) -> bool {
    for enc in group {
        if !enc.verdict.pass().await {
            return false;
        }
    }
    true
}

/// End the transaction: `COMMIT` if every batch passed its check (true),
/// else `ROLLBACK` (false). Sent after the statements, so the database
/// works on them while the checks finish.
async fn finish(
    client: &deadpool_postgres::Object,
    group: &[&Encoded],
) -> Result<bool, tokio_postgres::Error> {
    if all_pass(group).await {
        client.batch_execute("COMMIT").await.map(|()| true)
    } else {
        client.batch_execute("ROLLBACK").await.map(|()| false)
    }
}

pub(crate) struct Job {
    pub(crate) enc: Encoded,
    pub(crate) reply: oneshot::Sender<Result<AppendOutcome>>,
}

/// What the writer task needs.
pub(crate) struct Writer {
    pub(crate) db: PostgresDb,
    pub(crate) key: i64,
    pub(crate) watch: Arc<SeqWatch>,
}

/// The writer task: ends when every sender (every handle of the store in
/// this `PostgresDb`) is gone.
pub(crate) async fn run(w: Writer, mut rx: mpsc::UnboundedReceiver<Job>) {
    let retries = w.db.inner.options.retries;
    while let Some(first) = rx.recv().await {
        let mut changes = first.enc.batch.len();
        let mut bytes = payload_bytes(&first.enc);
        let mut jobs = vec![first];
        while changes < GROUP_MAX_CHANGES && bytes < GROUP_MAX_BYTES {
            match rx.try_recv() {
                Ok(job) => {
                    changes += job.enc.batch.len();
                    bytes += payload_bytes(&job.enc);
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut group: Vec<&Encoded> = jobs.iter().map(|j| &j.enc).collect();
        let mut result = retry_fail(retries, || w.commit(&group)).await;
        if matches!(result, Err(Fail::Rejected)) {
            // A batch failed its check and the group was rolled back. Its
            // caller reports the check's error; the rest commit again (every
            // verdict is in now, so this cannot be rejected twice).
            let mut kept = Vec::with_capacity(jobs.len());
            for job in jobs {
                if job.enc.verdict.pass().await {
                    kept.push(job);
                } else {
                    let _ = job.reply.send(Err(Fail::Rejected.into_error()));
                }
            }
            jobs = kept;
            if jobs.is_empty() {
                continue;
            }
            group = jobs.iter().map(|j| &j.enc).collect();
            result = retry_fail(retries, || w.commit(&group)).await;
        }
        drop(group);
        match result {
            Ok(outs) => {
                for (job, out) in jobs.into_iter().zip(outs) {
                    let _ = job.reply.send(Ok(out));
                }
            }
            Err(e) if jobs.len() == 1 => {
                if let Some(job) = jobs.into_iter().next() {
                    let _ = job.reply.send(Err(e.into_error()));
                }
            }
            // The group may have committed: committing its batches again
            // would report them as duplicates of themselves. Every member
            // gets the ambiguous (retryable) error; appending again is safe.
            Err(Fail::Ambiguous(e)) => {
                let why = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(Error::backend(
                        "postgres",
                        true,
                        std::io::Error::other(format!(
                            "the connection was lost while committing; the batch may or may not be stored (appending it again is safe): {why}"
                        )),
                    )));
                }
            }
            // Each batch on its own, so every caller gets its own error (or
            // success: one bad group member must not fail the others).
            Err(_) => {
                for job in jobs {
                    let one = [&job.enc];
                    let out = retry(retries, || w.commit(&one)).await.and_then(|v| {
                        v.into_iter()
                            .next()
                            .ok_or_else(|| corrupt("a commit returned no outcome"))
                    });
                    let _ = job.reply.send(out);
                }
            }
        }
    }
}

fn payload_bytes(enc: &Encoded) -> usize {
    enc.batch.iter().map(|c| c.payload.len()).sum()
}

impl Writer {
    /// One attempt at committing `group` (one outcome per batch, in order):
    /// one transaction in two pipelined round trips.
    async fn commit(&self, group: &[&Encoded]) -> Result<Vec<AppendOutcome>, Fail> {
        let mut client = self.db.inner.pool.get().await?;
        match self.commit_on(&mut client, group).await {
            Ok(v) => Ok(v),
            Err(e) => {
                // The connection may be inside an aborted or unfinished
                // transaction: never give it back to the pool.
                drop(deadpool_postgres::Object::take(client));
                Err(e)
            }
        }
    }

    async fn commit_on(
        &self,
        client: &mut deadpool_postgres::Object,
        group: &[&Encoded],
    ) -> Result<Vec<AppendOutcome>, Fail> {
        let sql = &self.db.inner.sql;
        let st = Statements {
            lock: client.prepare_cached(&sql.lock_head).await?,
            existing: client.prepare_cached(&sql.existing).await?,
            insert: client.prepare_cached(&sql.insert).await?,
            add_buckets: client.prepare_cached(&sql.add_buckets).await?,
            set_head: client.prepare_cached(&sql.set_head).await?,
            notify: client.prepare_cached(&sql.notify).await?,
        };

        // The common case, one round trip: BEGIN, lock the counter row,
        // insert everything (numbered by the server from the locked head),
        // add to the buckets, move the head, notify, COMMIT. An id already
        // stored violates `changes_by_id`, which aborts the transaction.
        let (outs, rows) = plan(group, &HashSet::new());
        let key = self.key;
        let p_lock: [&(dyn ToSql + Sync); 1] = [&key];
        let (begun, locked, written, committed) = futures::join!(
            client.batch_execute("BEGIN"),
            client.query_one(&st.lock, &p_lock),
            self.write(client, &st, &rows),
            finish(client, group),
        );
        match (begun, locked, written, committed) {
            // A batch failed its check: rolled back, nothing written.
            (_, _, _, Ok(false)) => return Err(Fail::Rejected),
            (Ok(()), Ok(head_row), Ok(()), Ok(true)) => {
                // Committed: nothing after this point may fail the append.
                if let Ok(head) = head_row.try_get::<_, i64>(0) {
                    self.watch.publish(to_u64(head) + rows.len() as u64);
                }
                return Ok(outs);
            }
            // An id is already stored: nothing was written (the violation
            // aborted the transaction, so COMMIT rolled it back). Append
            // again, checking first.
            (Ok(()), Ok(_), Err(e), Ok(true)) if is_stored_id(&e) => {}
            (b, l, w, c) => {
                // Report the first failure in pipeline order; one carried by
                // the COMMIT's round trip may leave the outcome unknown.
                let first = b.err().or(l.err()).or(w.err()).or(c.err());
                return Err(first.map_or_else(
                    || corrupt("an append failed without an error").into(),
                    commit_failure,
                ));
            }
        }

        // Some ids are stored already: BEGIN, lock, read which (round trip
        // 1), then write the rest and COMMIT (round trip 2).
        let ids: Vec<&[u8]> = rows
            .iter()
            .map(|r| r.0.meta.id.as_bytes().as_slice())
            .collect();
        let p_existing: [&(dyn ToSql + Sync); 2] = [&key, &ids];
        let ((), head_row, existing_rows) = futures::try_join!(
            client.batch_execute("BEGIN"),
            client.query_one(&st.lock, &p_lock),
            client.query(&st.existing, &p_existing),
        )?;
        let head = to_u64(head_row.try_get::<_, i64>(0)?);
        let mut present: HashSet<ChangeId> = HashSet::with_capacity(existing_rows.len());
        for row in &existing_rows {
            let b: &[u8] = row.try_get(0)?;
            present.insert(
                ChangeId::from_slice(b).map_err(|_| corrupt("a stored id is not 32 bytes"))?,
            );
        }
        let (outs, rows) = plan(group, &present);
        if rows.is_empty() {
            // Nothing new: end the transaction (and release the lock). A
            // batch that failed its check fails even if all of it is stored.
            client.batch_execute("ROLLBACK").await?;
            return if all_pass(group).await {
                Ok(outs)
            } else {
                Err(Fail::Rejected)
            };
        }
        let r = futures::try_join!(self.write(client, &st, &rows), finish(client, group));
        match r {
            Ok(((), true)) => {}
            Ok(((), false)) => return Err(Fail::Rejected),
            Err(e) => return Err(commit_failure(e)),
        }
        self.watch.publish(head + rows.len() as u64);
        Ok(outs)
    }

    /// Insert `rows` as the next sequence numbers, add them to their
    /// buckets, move the head and notify: statements sent at once (inside a
    /// transaction that holds the counter row), their answers awaited
    /// together.
    async fn write(
        &self,
        client: &deadpool_postgres::Object,
        st: &Statements,
        rows: &[(&Change, &[u8])],
    ) -> Result<(), tokio_postgres::Error> {
        let key = self.key;
        let mut deltas: BTreeMap<i32, Delta> = BTreeMap::new();
        let (mut ids, mut docs, mut kinds, mut metas, mut payloads) = (
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
        );
        for (c, meta) in rows {
            let id = &c.meta.id;
            deltas
                .entry(FingerprintBuckets::bucket_of(id) as i32)
                .or_default()
                .add(id);
            ids.push(id.as_bytes().as_slice());
            docs.push(c.meta.doc_id.as_str());
            kinds.push(i16::from(c.meta.kind.code()));
            metas.push(*meta);
            payloads.push(c.payload.as_ref());
        }
        let bkeys: Vec<i32> = deltas.keys().copied().collect();
        let bsums: Vec<String> = deltas.values().map(Delta::decimal).collect();
        let bcounts: Vec<i64> = deltas.values().map(|d| d.count() as i64).collect();
        let count = rows.len() as i64;
        let touched = bkeys.len() as i64;
        let p_insert: [&(dyn ToSql + Sync); 6] = [&key, &ids, &docs, &kinds, &metas, &payloads];
        let p_buckets: [&(dyn ToSql + Sync); 5] = [&key, &bkeys, &bsums, &bcounts, &touched];
        let p_head: [&(dyn ToSql + Sync); 2] = [&key, &count];
        let p_note: [&(dyn ToSql + Sync); 2] = [&self.db.inner.sql.channel, &key];
        futures::try_join!(
            client.execute(&st.insert, &p_insert),
            client.execute(&st.add_buckets, &p_buckets),
            client.execute(&st.set_head, &p_head),
            client.execute(&st.notify, &p_note),
        )?;
        Ok(())
    }
}

/// The prepared statements of one append.
struct Statements {
    lock: tokio_postgres::Statement,
    existing: tokio_postgres::Statement,
    insert: tokio_postgres::Statement,
    add_buckets: tokio_postgres::Statement,
    set_head: tokio_postgres::Statement,
    notify: tokio_postgres::Statement,
}

/// Split `group` into each batch's outcome and the rows to insert, in
/// order: a change already `stored`, or repeated in an earlier batch of the
/// group, is a duplicate of its batch.
fn plan<'a>(
    group: &[&'a Encoded],
    stored: &HashSet<ChangeId>,
) -> (Vec<AppendOutcome>, Vec<(&'a Change, &'a [u8])>) {
    let mut seen: HashSet<ChangeId> = HashSet::new();
    let mut outs = Vec::with_capacity(group.len());
    let mut rows = Vec::new();
    for enc in group {
        let mut out = AppendOutcome::default();
        for (c, meta) in enc.batch.iter().zip(&enc.metas) {
            let id = c.meta.id;
            if stored.contains(&id) || !seen.insert(id) {
                out.duplicates += 1;
                continue;
            }
            out.new.push(id);
            rows.push((c, meta.as_slice()));
        }
        outs.push(out);
    }
    (outs, rows)
}

/// The insert failed because an id of the batch is already stored.
fn is_stored_id(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && d.constraint() == Some("changes_by_id")
    })
}

/// Classify a failure of the round trip that carries `COMMIT`. A
/// serialization failure or deadlock aborted the transaction before it
/// could commit (the `COMMIT` then only rolled back): safe to retry. Any
/// sign of a lost connection (no SQLSTATE, class 08, or a server shutting
/// down, which reports 57P01/57P02 even after it ran the `COMMIT`) means
/// the batch may or may not be stored: ambiguous, never retried here.
pub(crate) fn commit_failure(e: tokio_postgres::Error) -> Fail {
    use tokio_postgres::error::SqlState;
    let aborted = e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    });
    if !aborted && (e.code().is_none() || crate::error::transient(&e)) {
        Fail::Ambiguous(e)
    } else {
        Fail::Db(e)
    }
}
