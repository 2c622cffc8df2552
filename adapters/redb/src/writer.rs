//! The writer thread: the only place that writes to the file.
//!
//! Appends arrive on a channel. The thread takes the first one, drains
//! everything else already queued (the appends that arrived while the
//! previous commit was in flight), writes all of those batches in one redb
//! write transaction, commits once, publishes the new head, and only then
//! answers each caller with its own [`AppendOutcome`]. That is group commit:
//! one fsync covers many callers, and each caller still returns only after
//! its data is durable.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn::tail::SeqWatch;
use cairn::{AppendOutcome, Change, Error, Result};
use redb::{Database, ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use crate::error::{corrupt, map, map_shared, panic_message};
use crate::schema::{self, BUCKETS, CHANGES, DOCS, KEY_HEAD, META, PAYLOADS, SEQS};

/// Most changes merged into one group commit; a single batch larger than
/// this still commits alone.
const GROUP_MAX_CHANGES: usize = 100_000;
/// Most payload bytes merged into one group commit.
const GROUP_MAX_BYTES: u64 = 256 << 20;
/// Longest the writer waits for more appends before a commit.
const MAX_GATHER: Duration = Duration::from_millis(2);

/// One queued append: a batch already checked by `prepare_batch`.
pub(crate) struct Job {
    pub(crate) batch: Vec<Change>,
    pub(crate) repeats: usize,
    pub(crate) reply: oneshot::Sender<Result<AppendOutcome>>,
}

/// Counters the writer keeps; read through `RedbStore::stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) changes: AtomicU64,
    pub(crate) largest_group: AtomicU64,
    pub(crate) failed_commits: AtomicU64,
}

/// The store's handle on its writer thread. Dropping it closes the channel
/// and joins the thread, which drops its handle on the database.
#[derive(Debug)]
pub(crate) struct WriterHandle {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl WriterHandle {
    pub(crate) fn spawn(
        db: Arc<Database>,
        durability: redb::Durability,
        head: u64,
        watch: Arc<SeqWatch>,
        counters: Arc<Counters>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            db,
            durability,
            head,
            watch,
            counters,
            poisoned: None,
        };
        let thread = std::thread::Builder::new()
            .name("cairn-redb-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(WriterHandle {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queue a job; `Err(Closed)` if the writer is gone.
    pub(crate) fn send(&self, job: Job) -> Result<()> {
        self.tx
            .as_ref()
            .ok_or(Error::Closed)?
            .send(job)
            .map_err(|_| Error::Closed)
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop after the queued jobs.
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            // Waits for at most the commit in flight. A panic in the thread
            // was already reported to the callers it concerned.
            let _ = t.join();
        }
    }
}

struct Writer {
    db: Arc<Database>,
    durability: redb::Durability,
    /// Highest committed sequence number.
    head: u64,
    watch: Arc<SeqWatch>,
    counters: Arc<Counters>,
    /// Set if redb panicked mid-write; every later append fails with it.
    poisoned: Option<String>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        // Size and duration of the last group commit: the gather window.
        let mut last_group = 1usize;
        let mut last_commit = Duration::ZERO;
        while let Ok(first) = rx.recv() {
            let mut changes = first.batch.len();
            let mut bytes = payload_bytes(&first.batch);
            let mut jobs = vec![first];
            // Take what is queued. If the last group was larger, its callers
            // are likely about to append again: wait for them, at most a
            // fraction of a commit's time (a sequential appender, whose
            // groups are of one, never waits).
            let deadline = Instant::now() + (last_commit / 2).min(MAX_GATHER);
            while changes < GROUP_MAX_CHANGES && bytes < GROUP_MAX_BYTES {
                let next = match rx.try_recv() {
                    Ok(job) => Some(job),
                    Err(mpsc::TryRecvError::Disconnected) => None,
                    Err(mpsc::TryRecvError::Empty) if jobs.len() < last_group => {
                        let now = Instant::now();
                        if now >= deadline {
                            None
                        } else {
                            rx.recv_timeout(deadline - now).ok()
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => None,
                };
                let Some(job) = next else { break };
                changes += job.batch.len();
                bytes += payload_bytes(&job.batch);
                jobs.push(job);
            }
            last_group = jobs.len();
            let start = Instant::now();
            self.commit_group(jobs);
            last_commit = start.elapsed();
        }
        // Closing: in non-durable mode, make everything committed so far
        // durable with one empty durable commit.
        if matches!(self.durability, redb::Durability::None) && self.poisoned.is_none() {
            let _ = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
                let mut wtx = self.db.begin_write().map_err(map)?;
                wtx.set_durability(redb::Durability::Immediate)
                    .map_err(map)?;
                wtx.commit().map_err(map)
            }));
        }
        // This is normally the last handle: close the file here, where a
        // panic of redb on a damaged file cannot reach the caller.
        let db = self.db;
        let _ = catch_unwind(AssertUnwindSafe(move || match Arc::try_unwrap(db) {
            Ok(db) => {
                let _ = db.close();
            }
            Err(db) => drop(db),
        }));
    }

    fn commit_group(&mut self, jobs: Vec<Job>) {
        if let Some(reason) = &self.poisoned {
            for job in jobs {
                let _ = job.reply.send(Err(corrupt(reason.clone())));
            }
            return;
        }
        let result = catch_unwind(AssertUnwindSafe(|| self.write(&jobs)));
        match result {
            Ok(Ok((outcomes, head))) => {
                if head != self.head {
                    self.head = head;
                    self.counters.commits.fetch_add(1, Ordering::Relaxed);
                    self.watch.publish(head);
                }
                self.counters
                    .batches
                    .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                self.counters
                    .largest_group
                    .fetch_max(jobs.len() as u64, Ordering::Relaxed);
                for (job, out) in jobs.into_iter().zip(outcomes) {
                    self.counters
                        .changes
                        .fetch_add(out.new.len() as u64, Ordering::Relaxed);
                    let _ = job.reply.send(Ok(out));
                }
            }
            Ok(Err(e)) => {
                self.counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                let e = Arc::new(e);
                for job in jobs {
                    let _ = job.reply.send(Err(map_shared(&e)));
                }
            }
            Err(panic) => {
                self.counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                let reason = format!(
                    "redb panicked while writing (the file is probably damaged): {}",
                    panic_message(panic.as_ref())
                );
                for job in jobs {
                    let _ = job.reply.send(Err(corrupt(reason.clone())));
                }
                self.poisoned = Some(reason);
            }
        }
    }

    /// Write every job's batch in one transaction and commit it. Returns
    /// each job's outcome and the new head. Nothing is stored on error.
    fn write(&self, jobs: &[Job]) -> Result<(Vec<AppendOutcome>, u64), redb::Error> {
        let mut wtx = self.db.begin_write()?;
        wtx.set_durability(self.durability)?;
        let (outcomes, head) = self.fill(&wtx, jobs)?;
        if head == self.head {
            // Only duplicates: nothing to commit.
            wtx.abort()?;
        } else {
            wtx.commit()?;
        }
        Ok((outcomes, head))
    }

    fn fill(
        &self,
        wtx: &WriteTransaction,
        jobs: &[Job],
    ) -> Result<(Vec<AppendOutcome>, u64), redb::Error> {
        let mut changes = wtx.open_table(CHANGES)?;
        let mut payloads = wtx.open_table(PAYLOADS)?;
        let mut seqs = wtx.open_table(SEQS)?;
        let mut docs = wtx.open_table(DOCS)?;
        let mut buckets = wtx.open_table(BUCKETS)?;
        // Bucket fingerprints touched by this group, written once at the end.
        let mut touched: std::collections::BTreeMap<u16, cairn::Fingerprint> =
            std::collections::BTreeMap::new();
        let mut head = self.head;
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs {
            let mut out = AppendOutcome {
                new: Vec::with_capacity(job.batch.len()),
                duplicates: job.repeats,
            };
            for c in &job.batch {
                let id = c.id();
                let key = id.as_bytes();
                // Sees this transaction's own writes, so a change in two
                // merged batches is stored once.
                if changes.get(key)?.is_some() {
                    out.duplicates += 1;
                    continue;
                }
                head += 1;
                changes.insert(key, schema::encode_change_value(head, &c.meta).as_slice())?;
                payloads.insert(head, &c.payload[..])?;
                seqs.insert(head, key)?;
                docs.insert((c.meta.doc_id.as_str(), head), key)?;
                let b = cairn::FingerprintBuckets::bucket_of(&id) as u16;
                if let std::collections::btree_map::Entry::Vacant(e) = touched.entry(b) {
                    let current = match buckets.get(b)? {
                        Some(v) => schema::decode_bucket(v.value())
                            .map_err(|e| redb::Error::Corrupted(format!("bucket {b}: {e}")))?,
                        None => cairn::Fingerprint::default(),
                    };
                    e.insert(current);
                }
                if let Some(fp) = touched.get_mut(&b) {
                    fp.add(&id);
                }
                out.new.push(id);
            }
            outcomes.push(out);
        }
        for (b, fp) in &touched {
            buckets.insert(*b, &fp.to_bytes()[..])?;
        }
        if head != self.head {
            let mut meta = wtx.open_table(META)?;
            meta.insert(KEY_HEAD, &head.to_be_bytes()[..])?;
        }
        Ok((outcomes, head))
    }
}

fn payload_bytes(batch: &[Change]) -> u64 {
    batch.iter().map(|c| c.payload.len() as u64).sum()
}
