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
//! `head` from the locked row), moves `head` and commits, which releases
//! the lock (the bucket fingerprints are left to a fold, see [`run`]). So:
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
//! # Checked while written
//!
//! A big batch reaches the writer before its integrity check has finished
//! (`Verdict`): the statements go out at once, and `COMMIT` only once every
//! batch of the group has passed; otherwise `ROLLBACK`, and the group's
//! other batches commit again without the failed one.
//!
//! # One round trip
//!
//! The common case sends `BEGIN`, the lock, the insert, the head update,
//! `NOTIFY` and `COMMIT` at once and reads the answers together. It assumes every id is new; if one is stored already,
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
/// The writer folds once this many of its changes wait for a fold.
pub(crate) const FOLD_AT: u64 = 1_000;
/// ... or once no append has come for this long.
pub(crate) const FOLD_IDLE: std::time::Duration = std::time::Duration::from_millis(50);
/// Most changes one fold transaction adds.
const FOLD_MAX: i64 = 20_000;
/// Most fold transactions one [`fold`] runs.
const FOLD_ROUNDS: usize = 64;

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
///
/// # Folds
///
/// An append leaves the buckets alone; the writer folds its changes into
/// them afterwards ([`fold`]), on another connection, while it goes on
/// committing: once [`FOLD_AT`] changes are waiting, or when no append
/// has come for [`FOLD_IDLE`]. One fold at a time, and never waited for
/// (see [`fold_soon`]): the changes readers must add themselves are those
/// committed since the running fold read the head. A fold that fails is
/// retried with the next one; readers are right either way. At start, the
/// writer folds what an earlier process may have left.
pub(crate) async fn run(w: Writer, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut folding = Some(spawn_fold(&w));
    let mut unfolded = 0u64;
    loop {
        let first = match tokio::time::timeout(FOLD_IDLE, rx.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => break,
            Err(_) => {
                // Idle: fold what is waiting (once the running fold, if
                // any, is done), then wait for appends. At most three
                // rounds: a fold ends, one starts, `unfolded` is 0.
                let mut next = None;
                for _ in 0..3 {
                    if unfolded == 0 {
                        break;
                    }
                    match folding.as_mut() {
                        Some(h) if !h.is_finished() => {
                            let job = tokio::select! {
                                job = rx.recv() => Some(job),
                                _ = h => None,
                            };
                            match job {
                                Some(job) => {
                                    next = Some(job);
                                    break;
                                }
                                None => folding = None,
                            }
                        }
                        _ => fold_soon(&w, &mut folding, &mut unfolded),
                    }
                }
                let job = match next {
                    Some(job) => job,
                    None => rx.recv().await,
                };
                match job {
                    Some(job) => job,
                    None => break,
                }
            }
        };
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
        unfolded += commit_jobs(&w, jobs).await;
        if unfolded >= FOLD_AT {
            fold_soon(&w, &mut folding, &mut unfolded);
        }
    }
    if unfolded > 0 && folding.as_ref().is_none_or(|h| h.is_finished()) {
        // Left running: whoever opens the store next folds the rest.
        drop(spawn_fold(&w));
    }
}

/// Start a fold unless one is running. A running fold is never waited
/// for, since it may wait on another process's fold: appends go on, and
/// `unfolded` keeps counting until a fold can start (a running fold also
/// reads the head again each round, so it catches up by itself).
fn fold_soon(w: &Writer, folding: &mut Option<tokio::task::JoinHandle<()>>, unfolded: &mut u64) {
    if folding.as_ref().is_none_or(|h| h.is_finished()) {
        *folding = Some(spawn_fold(w));
        *unfolded = 0;
    }
}

/// Run [`fold`] in the background, logging a failure.
fn spawn_fold(w: &Writer) -> tokio::task::JoinHandle<()> {
    let (db, key) = (w.db.clone(), w.key);
    tokio::spawn(async move {
        if let Err(e) = fold(&db, key).await {
            tracing::warn!(
                store_key = key,
                error = %e.into_error(),
                "cairn-postgres: folding changes into the bucket fingerprints failed; the next fold retries"
            );
        }
    })
}

/// Commit `jobs` as one group, answering each; returns how many changes
/// were added.
async fn commit_jobs(w: &Writer, mut jobs: Vec<Job>) -> u64 {
    let retries = w.db.inner.options.retries;
    let mut added = 0u64;
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
            return 0;
        }
        group = jobs.iter().map(|j| &j.enc).collect();
        result = retry_fail(retries, || w.commit(&group)).await;
    }
    drop(group);
    match result {
        Ok(outs) => {
            for (job, out) in jobs.into_iter().zip(outs) {
                added += out.new.len() as u64;
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
            // Maybe added: let a fold look.
            added += jobs.iter().map(|j| j.enc.batch.len() as u64).sum::<u64>();
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
                if let Ok(o) = &out {
                    added += o.new.len() as u64;
                }
                let _ = job.reply.send(out);
            }
        }
    }
    added
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

    /// Insert `rows` as the next sequence numbers, move the head and
    /// notify: statements sent at once (inside a transaction that holds the
    /// counter row), their answers awaited together. The buckets are left
    /// to the next fold.
    async fn write(
        &self,
        client: &deadpool_postgres::Object,
        st: &Statements,
        rows: &[(&Change, &[u8])],
    ) -> Result<(), tokio_postgres::Error> {
        let key = self.key;
        let (mut ids, mut docs, mut kinds, mut metas, mut payloads) = (
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
        );
        for (c, meta) in rows {
            ids.push(c.meta.id.as_bytes().as_slice());
            docs.push(c.meta.doc_id.as_str());
            kinds.push(i16::from(c.meta.kind.code()));
            metas.push(*meta);
            payloads.push(c.payload.as_ref());
        }
        let count = rows.len() as i64;
        let p_insert: [&(dyn ToSql + Sync); 6] = [&key, &ids, &docs, &kinds, &metas, &payloads];
        let p_head: [&(dyn ToSql + Sync); 2] = [&key, &count];
        let p_note: [&(dyn ToSql + Sync); 2] = [&self.db.inner.sql.channel, &key];
        futures::try_join!(
            client.execute(&st.insert, &p_insert),
            client.execute(&st.set_head, &p_head),
            client.execute(&st.notify, &p_note),
        )?;
        Ok(())
    }
}

/// Add a store's changes after its bucket head to the buckets, in
/// transactions of at most [`FOLD_MAX`] changes, until the buckets are at
/// the store's head as it was read. Returns the bucket head reached.
///
/// Safe from any process at any time: a fold takes its store's
/// `bucket_heads` row `FOR UPDATE` first, so folds of one store run one at
/// a time, and it reads the head after taking it, so it only adds
/// committed changes, each exactly once. Appends never take that row.
pub(crate) async fn fold(db: &PostgresDb, key: i64) -> Result<u64, Fail> {
    let mut reached = 0u64;
    // Each round either reaches the head it read or adds FOLD_MAX changes;
    // the bound only stops a store that appends faster than it folds.
    for _ in 0..FOLD_ROUNDS {
        let (at, head) = fold_once(db, key).await?;
        reached = at;
        if at >= head {
            break;
        }
    }
    Ok(reached)
}

/// One fold transaction: (bucket head after it, store head it read).
async fn fold_once(db: &PostgresDb, key: i64) -> Result<(u64, u64), Fail> {
    let sql = &db.inner.sql;
    let client = db.inner.pool.get().await?;
    let r = async {
        let lock = client.prepare_cached(&sql.lock_bucket_head).await?;
        let ids = client.prepare_cached(&sql.fold_ids).await?;
        let add = client.prepare_cached(&sql.add_buckets).await?;
        let set = client.prepare_cached(&sql.set_bucket_head).await?;
        let head_stmt = client.prepare_cached(&sql.head).await?;
        let p_key: [&(dyn ToSql + Sync); 1] = [&key];
        // The head is read by a statement of its own after the lock is
        // taken: a fresh snapshot, so it includes every append committed
        // while this fold waited for the lock.
        let ((), locked, head_row) = futures::try_join!(
            client.batch_execute("BEGIN"),
            client.query_one(&lock, &p_key),
            client.query_one(&head_stmt, &p_key),
        )?;
        let (from, head): (i64, i64) = (locked.try_get(0)?, head_row.try_get(0)?);
        if from >= head {
            client.batch_execute("COMMIT").await?;
            return Ok((to_u64(from), to_u64(head)));
        }
        let to = head.min(from + FOLD_MAX);
        let rows = client.query(&ids, &[&key, &from, &to]).await?;
        if rows.len() as i64 != to - from {
            return Err(Fail::Cairn(corrupt(format!(
                "{} changes stored at sequence numbers {} to {to}, not {}",
                rows.len(),
                from + 1,
                to - from
            ))));
        }
        let mut deltas: BTreeMap<i32, Delta> = BTreeMap::new();
        for row in &rows {
            let b: &[u8] = row.try_get(0)?;
            let id = ChangeId::from_slice(b).map_err(|_| corrupt("a stored id is not 32 bytes"))?;
            deltas
                .entry(FingerprintBuckets::bucket_of(&id) as i32)
                .or_default()
                .add(&id);
        }
        let bkeys: Vec<i32> = deltas.keys().copied().collect();
        let bsums: Vec<String> = deltas.values().map(Delta::decimal).collect();
        let bcounts: Vec<i64> = deltas.values().map(|d| d.count() as i64).collect();
        let touched = bkeys.len() as i64;
        let p_add: [&(dyn ToSql + Sync); 5] = [&key, &bkeys, &bsums, &bcounts, &touched];
        let p_set: [&(dyn ToSql + Sync); 3] = [&key, &to, &from];
        let (_, moved, ()) = futures::try_join!(
            client.execute(&add, &p_add),
            client.execute(&set, &p_set),
            client.batch_execute("COMMIT"),
        )?;
        if moved != 1 {
            return Err(Fail::Cairn(corrupt(format!(
                "the bucket head of store_key {key} moved during a fold"
            ))));
        }
        Ok((to_u64(to), to_u64(head)))
    }
    .await;
    if r.is_err() {
        // Possibly inside an aborted transaction: never back to the pool.
        drop(deadpool_postgres::Object::take(client));
    }
    r
}

/// The prepared statements of one append.
struct Statements {
    lock: tokio_postgres::Statement,
    existing: tokio_postgres::Statement,
    insert: tokio_postgres::Statement,
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
