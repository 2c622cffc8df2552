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
//! lock, it reads which ids are already present, numbers the new changes
//! `head + 1 …`, inserts them, sets `head` and commits, which releases the
//! lock. So:
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
//! The same lock makes the id check exact (nobody else can insert into this
//! store meanwhile); `ON CONFLICT DO NOTHING` stays as a second guard, and a
//! guard on the inserted count aborts the transaction rather than leave a
//! gap if that guard ever fires.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cairn::tail::SeqWatch;
use cairn::{AppendOutcome, Change, ChangeId, Error, Fingerprint, FingerprintBuckets, Result};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use crate::error::{Fail, corrupt};
use crate::{PostgresDb, retry, retry_fail, to_u64};

/// Most changes merged into one group commit.
const GROUP_MAX_CHANGES: usize = 10_000;
/// Most payload bytes merged into one group commit.
const GROUP_MAX_BYTES: usize = 64 << 20;

/// A batch checked by `prepare_batch`, with its encoded metadata.
pub(crate) struct Encoded {
    pub(crate) batch: Vec<Change>,
    pub(crate) metas: Vec<Vec<u8>>,
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
        let group: Vec<&Encoded> = jobs.iter().map(|j| &j.enc).collect();
        match retry_fail(retries, || w.commit(&group)).await {
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
        let key = self.key;
        let lock = client.prepare_cached(&sql.lock_head).await?;
        let existing = client.prepare_cached(&sql.existing).await?;
        let buckets_of = client.prepare_cached(&sql.buckets_of).await?;
        let insert = client.prepare_cached(&sql.insert).await?;
        let update_buckets = client.prepare_cached(&sql.update_buckets).await?;
        let set_head = client.prepare_cached(&sql.set_head).await?;
        let notify = client.prepare_cached(&sql.notify).await?;

        let all = || group.iter().flat_map(|e| e.batch.iter());
        let ids: Vec<&[u8]> = all().map(|c| c.meta.id.as_bytes().as_slice()).collect();
        let mut touched: Vec<i32> = all()
            .map(|c| FingerprintBuckets::bucket_of(&c.meta.id) as i32)
            .collect();
        touched.sort_unstable();
        touched.dedup();

        // Round trip 1: BEGIN, lock the counter row, then (run by the
        // server after the lock is granted, so they see every earlier
        // append) the ids already present and the touched buckets.
        let p_lock: [&(dyn ToSql + Sync); 1] = [&key];
        let p_existing: [&(dyn ToSql + Sync); 2] = [&key, &ids];
        let p_buckets: [&(dyn ToSql + Sync); 2] = [&key, &touched];
        let ((), head_row, existing_rows, bucket_rows) = futures::try_join!(
            client.batch_execute("BEGIN"),
            client.query_one(&lock, &p_lock),
            client.query(&existing, &p_existing),
            client.query(&buckets_of, &p_buckets),
        )?;
        let head = to_u64(head_row.try_get::<_, i64>(0)?);
        let mut present: HashSet<ChangeId> = HashSet::with_capacity(existing_rows.len());
        for row in &existing_rows {
            let b: &[u8] = row.try_get(0)?;
            present.insert(
                ChangeId::from_slice(b).map_err(|_| corrupt("a stored id is not 32 bytes"))?,
            );
        }
        let mut fps: HashMap<i32, Fingerprint> = HashMap::with_capacity(bucket_rows.len());
        for row in &bucket_rows {
            let b: i32 = row.try_get(0)?;
            let fp: &[u8] = row.try_get(1)?;
            fps.insert(b, crate::store::fingerprint_of(fp)?);
        }

        // Number the new changes, batch after batch; a change repeated in
        // a later batch of the group is that batch's duplicate.
        let mut outs = Vec::with_capacity(group.len());
        let (mut seqs, mut new_ids, mut docs, mut kinds, mut metas, mut payloads) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut next = head;
        for enc in group {
            let mut out = AppendOutcome::default();
            for (c, meta) in enc.batch.iter().zip(&enc.metas) {
                let id = &c.meta.id;
                if !present.insert(*id) {
                    out.duplicates += 1;
                    continue;
                }
                let b = FingerprintBuckets::bucket_of(id) as i32;
                fps.get_mut(&b)
                    .ok_or_else(|| corrupt(format!("bucket {b} is missing")))?
                    .add(id);
                next += 1;
                out.new.push(*id);
                seqs.push(next as i64);
                new_ids.push(id.as_bytes().as_slice());
                docs.push(c.meta.doc_id.as_str());
                kinds.push(i16::from(c.meta.kind.code()));
                metas.push(meta.as_slice());
                payloads.push(c.payload.as_ref());
            }
            outs.push(out);
        }
        if next == head {
            // Nothing new: end the transaction (and release the lock).
            client.batch_execute("ROLLBACK").await?;
            return Ok(outs);
        }

        // Round trip 2: insert, buckets, head, notify, COMMIT. If any
        // statement fails, the transaction is aborted and COMMIT only rolls
        // it back; try_join reports the first failure.
        let (bkeys, bvals): (Vec<i32>, Vec<[u8; 40]>) = touched
            .iter()
            .filter_map(|b| fps.get(b).map(|fp| (*b, fp.to_bytes())))
            .unzip();
        let bvals: Vec<&[u8]> = bvals.iter().map(|v| v.as_slice()).collect();
        let count = seqs.len() as i64;
        let new_head = next as i64;
        let note = format!("{key} {next}");
        let p_insert: [&(dyn ToSql + Sync); 8] = [
            &key, &seqs, &new_ids, &docs, &kinds, &metas, &payloads, &count,
        ];
        let p_buckets: [&(dyn ToSql + Sync); 3] = [&key, &bkeys, &bvals];
        let p_head: [&(dyn ToSql + Sync); 2] = [&key, &new_head];
        let p_note: [&(dyn ToSql + Sync); 2] = [&sql.channel, &note];
        let r = futures::try_join!(
            client.execute(&insert, &p_insert),
            client.execute(&update_buckets, &p_buckets),
            client.execute(&set_head, &p_head),
            client.execute(&notify, &p_note),
            client.batch_execute("COMMIT"),
        );
        if let Err(e) = r {
            return Err(commit_failure(e));
        }
        self.watch.publish(next);
        Ok(outs)
    }
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
