//! The writer thread: the only place that writes to the file.
//!
//! Appends arrive on a channel. The thread takes the first one, drains
//! everything else already queued (the appends that arrived while the
//! previous commit was in flight), writes all of those batches in one redb
//! write transaction, commits once, publishes the new head, and only then
//! answers each caller with its own [`AppendOutcome`]. That is group commit:
//! one fsync covers many callers, and each caller still returns only after
//! its data is durable.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn::tail::SeqWatch;
use cairn::{AppendOutcome, Change, Error, Fingerprint, FingerprintBuckets, Result};
use redb::{Database, ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use crate::error::{corrupt, map, map_shared, panic_message};
use crate::schema::{self, BUCKETS, CHANGES, DOCS, KEY_BUCKETS_SEQ, META, PAYLOADS, SEQS};

/// Most changes merged into one group commit; a single batch larger than
/// this still commits alone.
const GROUP_MAX_CHANGES: usize = 100_000;
/// Most payload bytes merged into one group commit.
const GROUP_MAX_BYTES: u64 = 256 << 20;
/// The bucket fingerprints are checkpointed to the file by the commit that
/// brings this many changes since the last checkpoint (and at close); at
/// most this many ids (plus one group) are replayed on open.
const BUCKET_CHECKPOINT: u64 = 10_000;
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
        buckets: Arc<RwLock<FingerprintBuckets>>,
        (dirty, since_checkpoint): (BTreeSet<u16>, u64),
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            db,
            durability,
            head,
            watch,
            counters,
            poisoned: None,
            buckets,
            dirty,
            since_checkpoint,
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
    /// The bucket fingerprints of everything committed (shared with readers).
    buckets: Arc<RwLock<FingerprintBuckets>>,
    /// Buckets changed since the last checkpoint.
    dirty: BTreeSet<u16>,
    /// Changes committed since the last checkpoint.
    since_checkpoint: u64,
}

/// What one group's transaction did besides the outcomes.
struct Written {
    outcomes: Vec<AppendOutcome>,
    head: u64,
    /// New fingerprints of the buckets this group touched.
    touched: BTreeMap<u16, Fingerprint>,
    /// Whether the transaction wrote a bucket checkpoint.
    checkpointed: bool,
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
        // Closing: checkpoint the bucket fingerprints, and in non-durable
        // mode make everything committed so far durable, in one durable
        // commit.
        let non_durable = matches!(self.durability, redb::Durability::None);
        if (non_durable || !self.dirty.is_empty()) && self.poisoned.is_none() {
            let _ = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
                let mut wtx = self.db.begin_write().map_err(map)?;
                wtx.set_durability(redb::Durability::Immediate)
                    .map_err(map)?;
                self.checkpoint(&wtx, &BTreeMap::new(), self.head)
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
            Ok(Ok(Written {
                outcomes,
                head,
                touched,
                checkpointed,
            })) => {
                if head != self.head {
                    // Readers see the new fingerprints no later than the
                    // new head.
                    {
                        let mut b = self.buckets.write().unwrap_or_else(|e| e.into_inner());
                        for (k, fp) in &touched {
                            b.set(usize::from(*k), *fp);
                        }
                    }
                    if checkpointed {
                        self.dirty.clear();
                        self.since_checkpoint = 0;
                    } else {
                        self.dirty.extend(touched.keys().copied());
                        self.since_checkpoint += head - self.head;
                    }
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
    fn write(&self, jobs: &[Job]) -> Result<Written, redb::Error> {
        let mut wtx = self.db.begin_write()?;
        wtx.set_durability(self.durability)?;
        let mut written = self.fill(&wtx, jobs)?;
        if written.head == self.head {
            // Only duplicates: nothing to commit.
            wtx.abort()?;
        } else {
            if self.since_checkpoint + (written.head - self.head) >= BUCKET_CHECKPOINT {
                self.checkpoint(&wtx, &written.touched, written.head)?;
                written.checkpointed = true;
            }
            wtx.commit()?;
        }
        Ok(written)
    }

    /// Write every dirty bucket (the committed fingerprint, or this group's
    /// newer one in `touched`) and record that the table reflects `head`.
    fn checkpoint(
        &self,
        wtx: &WriteTransaction,
        touched: &BTreeMap<u16, Fingerprint>,
        head: u64,
    ) -> Result<(), redb::Error> {
        let mut table = wtx.open_table(BUCKETS)?;
        let current = self.buckets.read().unwrap_or_else(|e| e.into_inner());
        for k in self.dirty.iter().chain(touched.keys()) {
            let fp = match touched.get(k) {
                Some(fp) => *fp,
                None => current.get(usize::from(*k)).copied().unwrap_or_default(),
            };
            table.insert(*k, &fp.to_bytes()[..])?;
        }
        let mut meta = wtx.open_table(META)?;
        meta.insert(KEY_BUCKETS_SEQ, &head.to_be_bytes()[..])?;
        Ok(())
    }

    fn fill(&self, wtx: &WriteTransaction, jobs: &[Job]) -> Result<Written, redb::Error> {
        let mut changes = wtx.open_table(CHANGES)?;
        let mut payloads = wtx.open_table(PAYLOADS)?;
        let mut seqs = wtx.open_table(SEQS)?;
        let mut docs = wtx.open_table(DOCS)?;
        // Bucket fingerprints touched by this group, from the committed ones.
        let mut touched: BTreeMap<u16, Fingerprint> = BTreeMap::new();
        let committed = self.buckets.read().unwrap_or_else(|e| e.into_inner());
        let mut head = self.head;
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut value = Vec::new();
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
                schema::encode_change_value(head, &c.meta, &mut value);
                changes.insert(key, value.as_slice())?;
                payloads.insert(head, &c.payload[..])?;
                seqs.insert(head, key)?;
                docs.insert((c.meta.doc_id.as_str(), head), key)?;
                let b = FingerprintBuckets::bucket_of(&id);
                touched
                    .entry(b as u16)
                    .or_insert_with(|| committed.get(b).copied().unwrap_or_default())
                    .add(&id);
                out.new.push(id);
            }
            outcomes.push(out);
        }
        Ok(Written {
            outcomes,
            head,
            touched,
            checkpointed: false,
        })
    }
}

fn payload_bytes(batch: &[Change]) -> u64 {
    batch.iter().map(|c| c.payload.len() as u64).sum()
}
