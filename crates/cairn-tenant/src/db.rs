//! A database of Automerge documents over any Cairn store.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use automerge::{ActorId, AutoCommit, AutomergeError, ChangeHash};
use cairn::{
    AppendOnlyStore, Change, ChangeBuilder, ChangeId, ChangeKind, ChangeMeta, DocId,
    DynAppendOnlyStore, Head, KeyId, Keypair, RejectReason, Rejected,
};

use crate::Tenant;
use crate::directory::{Directory, Standing};
use crate::error::{Result, TenantError};

/// How a [`Database`] writes.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Write a snapshot after this many changes since the last one
    /// (default 50; 0 disables snapshots).
    pub snapshot_every: usize,
    /// The key that encrypts new payloads (default: the tenant key).
    pub key_id: KeyId,
    /// How many documents [`Database::update`] keeps open in memory between
    /// edits (default 16; 0 loads every document afresh for every edit).
    /// An open document is dropped as soon as a change to it arrives from
    /// elsewhere (a sync, another `Database` on the same store) or the
    /// directory changes, and loaded again on its next edit; the least
    /// recently edited goes first when the limit is reached.
    pub open_docs: usize,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            snapshot_every: 50,
            key_id: KeyId::default(),
            open_docs: 16,
        }
    }
}

/// A document as loaded: the Automerge document plus what was refused.
#[derive(Debug)]
pub struct LoadedDoc {
    /// The document.
    pub doc: AutoCommit,
    /// Changes that were not applied, with reasons (untrusted author, a
    /// revoked author's change outside what the revocation kept, bad
    /// signature, undecryptable payload, invalid Automerge data, or a
    /// dependency that was itself not applied).
    pub rejected: Vec<Rejected>,
    /// Whether a trusted author deleted the document.
    pub deleted: bool,
    /// Cairn changes whose content the document holds (the snapshot it was
    /// loaded from counts once), and deletes that took effect.
    pub applied: usize,
    /// Automerge change hash → the Cairn change that carries it (for the
    /// current heads and everything loaded individually).
    hash_ids: HashMap<ChangeHash, ChangeId>,
    /// Changes applied after the snapshot loading started from.
    since_snapshot: usize,
    /// Every Cairn change of the document this load considered (applied or
    /// not): a change arriving later that is not among them makes an open
    /// copy stale.
    known: HashSet<ChangeId>,
}

impl LoadedDoc {
    /// The Cairn ids for the document's current Automerge heads.
    fn cairn_heads(&mut self) -> Vec<ChangeId> {
        let heads = self.doc.get_heads();
        let set: BTreeSet<ChangeId> = heads
            .iter()
            .filter_map(|h| self.hash_ids.get(h).copied())
            .collect();
        set.into_iter().collect()
    }
}

/// A database of Automerge documents; every Automerge commit is one Cairn
/// change, encrypted with the tenant's key and signed by the user.
#[derive(Debug)]
pub struct Database {
    tenant: Tenant,
    store: Arc<DynAppendOnlyStore>,
    user: Keypair,
    actor: ActorId,
    options: DbOptions,
    open: Arc<Mutex<OpenDocs>>,
}

impl Database {
    pub(crate) fn new(
        tenant: Tenant,
        store: Arc<DynAppendOnlyStore>,
        user: Keypair,
        options: DbOptions,
    ) -> Self {
        Database {
            tenant,
            store,
            user,
            actor: ActorId::random(),
            options,
            open: Arc::new(Mutex::new(OpenDocs::default())),
        }
    }

    /// The store behind this database (sync it with `cairn::sync`).
    pub fn store(&self) -> &Arc<DynAppendOnlyStore> {
        &self.store
    }

    /// Create a document; `edit` fills it in. Returns its id.
    pub async fn create(
        &self,
        edit: impl FnOnce(&mut AutoCommit) -> std::result::Result<(), AutomergeError> + Send,
    ) -> Result<DocId> {
        let doc_id = DocId::random();
        let mut doc = AutoCommit::new().with_actor(self.actor.clone());
        edit(&mut doc)?;
        doc.commit();
        let mut am_changes = doc.get_changes(&[]);
        if am_changes.is_empty() {
            doc.empty_change(Default::default());
            am_changes = doc.get_changes(&[]);
        }
        let mut hash_ids = HashMap::new();
        let mut batch = Vec::with_capacity(am_changes.len());
        for (i, c) in am_changes.iter().enumerate() {
            let kind = if i == 0 {
                ChangeKind::Create
            } else {
                ChangeKind::Change
            };
            let change = self.encode(&doc_id, kind, c, &hash_ids)?;
            hash_ids.insert(c.hash(), change.id());
            batch.push(change);
        }
        self.store.append(batch).await?;
        Ok(doc_id)
    }

    /// Change a document; `edit` modifies it. Returns the new Cairn change ids
    /// (plus a snapshot's, if one was due).
    ///
    /// The document stays open in memory afterwards (up to
    /// [`DbOptions::open_docs`] of them), so the next edit costs what the
    /// edit costs, not a load of the whole history. Before each edit the
    /// changes the store took since the last one are checked (metadata
    /// only): one to an open document from anywhere but this `Database`
    /// closes it, and so does a change of the directory, so an edit always
    /// builds on everything the store holds.
    pub async fn update(
        &self,
        doc_id: &DocId,
        edit: impl FnOnce(&mut AutoCommit) -> std::result::Result<(), AutomergeError> + Send,
    ) -> Result<Vec<ChangeId>> {
        let (mut loaded, ticket) = self.checkout(doc_id).await?;
        let before = loaded.doc.get_heads();
        // On any error below the ticket is dropped unreturned, and the
        // document (perhaps half edited) is closed.
        edit(&mut loaded.doc)?;
        loaded.doc.commit();
        let new = loaded.doc.get_changes(&before);
        let mut batch = Vec::with_capacity(new.len());
        for c in &new {
            let change = self.encode(doc_id, ChangeKind::Change, c, &loaded.hash_ids)?;
            loaded.hash_ids.insert(c.hash(), change.id());
            batch.push(change);
        }
        let mut ids: Vec<ChangeId> = batch.iter().map(Change::id).collect();
        // Known before they are stored, so that a concurrent check of the
        // store does not take our own changes for someone else's.
        ticket.know(&ids);
        self.store.append(batch).await?;
        loaded.since_snapshot += new.len();
        let every = self.options.snapshot_every;
        if every > 0 && loaded.since_snapshot >= every {
            ids.push(self.snapshot(doc_id, &mut loaded, &ticket).await?);
        }
        ticket.put_back(loaded, self.options.open_docs);
        Ok(ids)
    }

    /// The document to edit: the open copy if it is current, else a fresh
    /// load (kept open afterwards if the ticket is put back).
    async fn checkout(&self, doc_id: &DocId) -> Result<(LoadedDoc, Ticket)> {
        self.tenant.ensure_fresh().await?;
        let directory = self.tenant.directory_head();
        self.check_open(directory).await?;
        let token = {
            let mut open = lock(&self.open);
            open.tick += 1;
            let tick = open.tick;
            match open.docs.get_mut(doc_id) {
                Some(e) if e.doc.is_some() => {
                    e.used = tick;
                    e.token = tick;
                    // An open copy is never deleted or empty: the change
                    // that made it so would have closed it.
                    if let Some(doc) = e.doc.take() {
                        return Ok((doc, Ticket::new(self.open.clone(), doc_id, tick)));
                    }
                    None
                }
                // Being edited by another call: that one keeps it open;
                // this one works on a fresh load of its own.
                Some(_) => None,
                None if self.options.open_docs == 0 => None,
                None => {
                    // A placeholder from now on: a change arriving while
                    // the load runs is checked against it (and, as nothing
                    // is known yet, makes it stale).
                    open.docs.insert(
                        doc_id.clone(),
                        OpenDoc {
                            known: HashSet::new(),
                            doc: None,
                            stale: false,
                            used: tick,
                            token: tick,
                        },
                    );
                    Some(tick)
                }
            }
        };
        // Made before the load, so that a failed or cancelled load drops
        // the placeholder.
        let ticket = Ticket::new(self.open.clone(), doc_id, token.unwrap_or(0));
        let mut loaded = self.load(doc_id).await?;
        if !loaded.rejected.is_empty() {
            // Some of this actor's own changes may be among those not
            // applied (a revocation dropped what they built on): a new
            // change under the same actor would reuse their sequence
            // numbers, and Automerge would never apply it. A fresh actor
            // for this document cannot collide.
            loaded.doc.set_actor(ActorId::random());
        }
        ticket.know_all(std::mem::take(&mut loaded.known));
        Ok((loaded, ticket))
    }

    /// Close every open document a change stored since the last check
    /// makes stale (one from anywhere but this `Database`), or all of them
    /// if the directory or the store's epoch changed, or the store took
    /// more than [`RECHECK_LIMIT`] changes since.
    async fn check_open(&self, directory: Option<Head>) -> Result<()> {
        let seen = {
            let mut open = lock(&self.open);
            if open.docs.is_empty() {
                // Nothing to check: just move the mark (below).
                None
            } else if open.directory != directory {
                open.docs.clear();
                None
            } else {
                open.seen
            }
        };
        let head = self.store.head().await?;
        let Some(seen) = seen.filter(|s| s.epoch == head.epoch && s.seq <= head.seq) else {
            let mut open = lock(&self.open);
            open.docs.clear();
            open.seen = Some(head);
            open.directory = directory;
            return Ok(());
        };
        if head.seq - seen.seq > RECHECK_LIMIT {
            let mut open = lock(&self.open);
            open.docs.clear();
            open.seen = Some(head);
            return Ok(());
        }
        let mut after = seen.seq;
        // Bounded: at most RECHECK_LIMIT changes, a page at a time, and
        // every page moves `after` on.
        while after < head.seq {
            let page = self
                .store
                .scan(after, (head.seq - after).min(1000) as usize)
                .await?;
            let Some(last) = page.last().map(|i| i.seq) else {
                break;
            };
            let mut open = lock(&self.open);
            for item in &page {
                let m = &item.meta;
                let stale = match open.docs.get_mut(&m.doc_id) {
                    Some(e) if !e.known.contains(&m.id) => {
                        e.stale = true;
                        e.doc.is_some()
                    }
                    _ => false,
                };
                if stale {
                    open.docs.remove(&m.doc_id);
                }
            }
            if open.seen.is_some_and(|s| s.seq < last) {
                open.seen = Some(Head {
                    epoch: head.epoch,
                    seq: last,
                });
            }
            after = last;
        }
        Ok(())
    }

    /// Write a snapshot of `loaded` now; returns its id.
    async fn snapshot(
        &self,
        doc_id: &DocId,
        loaded: &mut LoadedDoc,
        ticket: &Ticket,
    ) -> Result<ChangeId> {
        let deps = loaded.cairn_heads();
        let bytes = loaded.doc.save();
        let payload = self.tenant.keys().seal(
            self.tenant.id(),
            self.store.store_id(),
            doc_id,
            &self.options.key_id,
            &bytes,
        )?;
        let change = ChangeBuilder::new(ChangeKind::Snapshot, doc_id.clone())
            .deps(deps)
            .key_id(self.options.key_id.clone())
            .payload(payload)
            .sign(&self.user)?;
        let id = change.id();
        ticket.know(&[id]);
        self.store.append(vec![change]).await?;
        loaded.since_snapshot = 0;
        tracing::debug!(doc = %doc_id, %id, "snapshot written");
        Ok(id)
    }

    /// Delete a document (a signed delete change; history is kept).
    pub async fn delete(&self, doc_id: &DocId) -> Result<ChangeId> {
        let mut loaded = self.load(doc_id).await?;
        let deps = loaded.cairn_heads();
        let payload = self.tenant.keys().seal(
            self.tenant.id(),
            self.store.store_id(),
            doc_id,
            &self.options.key_id,
            &[],
        )?;
        let change = ChangeBuilder::new(ChangeKind::Delete, doc_id.clone())
            .deps(deps)
            .key_id(self.options.key_id.clone())
            .payload(payload)
            .sign(&self.user)?;
        let id = change.id();
        lock(&self.open).docs.remove(doc_id);
        self.store.append(vec![change]).await?;
        Ok(id)
    }

    /// Load a document: its latest usable snapshot plus every change that
    /// snapshot does not cover, verified and decrypted. Fails with
    /// [`TenantError::NotFound`] if nothing trusted exists or it was deleted.
    pub async fn load(&self, doc_id: &DocId) -> Result<LoadedDoc> {
        let loaded = self.load_any(doc_id).await?;
        if loaded.deleted || loaded.applied == 0 {
            return Err(TenantError::NotFound(doc_id.clone()));
        }
        Ok(loaded)
    }

    /// Like [`Database::load`], but also returns deleted or empty documents.
    ///
    /// Trust is decided from the directory as its store holds it now (it is
    /// reloaded if it changed) and from causality: a revoked user's change
    /// counts only if the revocation kept it or something depending on it.
    /// A snapshot is used only if every change it covers is trusted (a
    /// snapshot written by a device with a stale directory may carry a
    /// revoked user's later edits; it is then skipped and the history
    /// loaded instead). Every change not applied is reported.
    pub async fn load_any(&self, doc_id: &DocId) -> Result<LoadedDoc> {
        self.tenant.ensure_fresh().await?;
        let dir = self.tenant.directory();
        let all = self.store.changes_for_doc(doc_id, false).await?;
        let refused = refused_by_directory(&self.tenant, &dir, &all);
        // Snapshots that cover a refused change are not usable.
        let unusable = unusable_snapshots(&all, &refused);
        let candidates: Vec<ChangeMeta> = all
            .iter()
            .filter(|m| !unusable.contains(&m.id))
            .cloned()
            .collect();
        let plan = cairn::graph::plan_doc_load(candidates, true);
        let starts_with_snapshot = plan.first().is_some_and(|m| m.kind == ChangeKind::Snapshot);
        let mut loaded = self.apply_plan(&plan, &refused).await?;
        if starts_with_snapshot
            && let Some(snap) = plan.first().map(|m| m.id)
            && loaded.rejected.iter().any(|r| r.id == snap)
        {
            // The snapshot is not readable (a key this device lacks,
            // damaged Automerge data): the history it covers was skipped,
            // so load everything else instead.
            tracing::warn!(doc = %doc_id, %snap, "snapshot not usable; loading full history");
            let full: Vec<ChangeMeta> = all
                .iter()
                .filter(|m| m.kind != ChangeKind::Snapshot)
                .cloned()
                .collect();
            let snap_rejection = loaded.rejected.iter().find(|r| r.id == snap).cloned();
            loaded = self.apply_plan(&full, &refused).await?;
            if let Some(r) = snap_rejection {
                loaded.rejected.insert(0, r);
            }
        }
        loaded.known = all.iter().map(|m| m.id).collect();
        for m in &all {
            if unusable.contains(&m.id) && !refused.contains_key(&m.id) {
                loaded.rejected.push(Rejected {
                    id: m.id,
                    reason: RejectReason::Policy(
                        "snapshot not used: it covers a change the directory does not trust".into(),
                    ),
                });
            }
        }
        Ok(loaded)
    }

    /// The ids of `author`'s changes in this database that no other change
    /// of theirs depends on (what a revocation keeps, see
    /// [`Tenant::revoke_user`]). Reads metadata only, a page at a time.
    pub async fn heads_by(&self, author: &cairn::AuthorId) -> Result<Vec<ChangeId>> {
        let mut theirs: BTreeSet<ChangeId> = BTreeSet::new();
        let mut depended: HashSet<ChangeId> = HashSet::new();
        cairn::scan_all(self.store.as_ref(), |m| {
            if &m.author == author {
                theirs.insert(m.id);
                depended.extend(m.deps.iter().copied());
            }
        })
        .await?;
        Ok(theirs
            .into_iter()
            .filter(|id| !depended.contains(id))
            .collect())
    }

    async fn apply_plan(
        &self,
        plan: &[ChangeMeta],
        refused: &HashMap<ChangeId, RejectReason>,
    ) -> Result<LoadedDoc> {
        let keys = self.tenant.keys();
        let mut out = LoadedDoc {
            doc: AutoCommit::new().with_actor(self.actor.clone()),
            rejected: Vec::new(),
            deleted: false,
            applied: 0,
            hash_ids: HashMap::new(),
            since_snapshot: 0,
            known: HashSet::new(),
        };
        // Changes handed to Automerge one by one, by hash: checked at the
        // end against what the document holds.
        let mut handed: Vec<(ChangeId, ChangeHash)> = Vec::new();
        let ids: Vec<ChangeId> = plan
            .iter()
            .map(|m| m.id)
            .filter(|id| {
                if let Some(reason) = refused.get(id) {
                    out.rejected.push(Rejected {
                        id: *id,
                        reason: reason.clone(),
                    });
                    false
                } else {
                    true
                }
            })
            .collect();
        // Bounded memory: fetch in pages.
        for chunk in ids.chunks(128) {
            for c in self.store.get_changes(chunk).await? {
                let id = c.id();
                let reject = |reason| Rejected { id, reason };
                let plain = match keys.open(
                    self.tenant.id(),
                    self.store.store_id(),
                    &c.meta.doc_id,
                    &c.meta.key_id,
                    id,
                    &c.payload,
                ) {
                    Ok(p) => p,
                    Err(e) => {
                        out.rejected
                            .push(reject(RejectReason::Policy(e.to_string())));
                        continue;
                    }
                };
                match c.meta.kind {
                    ChangeKind::Delete => {
                        out.deleted = true;
                        out.applied += 1;
                    }
                    ChangeKind::Snapshot => match out.doc.load_incremental(&plain) {
                        Ok(_) => {
                            for h in out.doc.get_heads() {
                                out.hash_ids.entry(h).or_insert(id);
                            }
                            out.applied += 1;
                            if out.applied == 1 {
                                out.since_snapshot = 0;
                            }
                        }
                        Err(e) => out
                            .rejected
                            .push(reject(RejectReason::Policy(format!("automerge: {e}")))),
                    },
                    _ => match automerge::Change::from_bytes(plain) {
                        Ok(am) => {
                            let hash = am.hash();
                            match out.doc.apply_changes([am]) {
                                Ok(()) => {
                                    out.hash_ids.insert(hash, id);
                                    handed.push((id, hash));
                                }
                                Err(e) => out
                                    .rejected
                                    .push(reject(RejectReason::Policy(format!("automerge: {e}")))),
                            }
                        }
                        Err(e) => out
                            .rejected
                            .push(reject(RejectReason::Policy(format!("automerge: {e}")))),
                    },
                }
            }
        }
        // Automerge queues a change whose dependencies it lacks and applies
        // it later, or never: count only what the document holds, and
        // report the rest.
        for (id, hash) in handed {
            if out.doc.get_change_by_hash(&hash).is_some() {
                out.applied += 1;
                out.since_snapshot += 1;
            } else {
                out.hash_ids.remove(&hash);
                out.rejected.push(Rejected {
                    id,
                    reason: RejectReason::Policy(
                        "depends on a change that was not applied (refused, unreadable or missing)"
                            .into(),
                    ),
                });
            }
        }
        for r in &out.rejected {
            tracing::warn!(id = %r.id, reason = %r.reason, "change not applied");
        }
        Ok(out)
    }

    /// Ids of the documents that exist (with a change by a trusted author,
    /// or one a revocation kept, and not deleted), sorted. Reads metadata
    /// only.
    pub async fn list(&self) -> Result<Vec<DocId>> {
        self.tenant.ensure_fresh().await?;
        let dir = self.tenant.directory();
        let mut docs: BTreeMap<DocId, (bool, bool)> = BTreeMap::new();
        let tenant = &self.tenant;
        // A page at a time: memory holds the document list, not every change.
        cairn::scan_all(self.store.as_ref(), |m| {
            if !tenant.signature_valid(&m) {
                return;
            }
            let counts = match dir.standing(&m.author) {
                Standing::Trusted => true,
                // A revoked user's kept heads: one per document they
                // touched, enough to tell that the document exists.
                Standing::Revoked(keep) => keep.contains(&m.id),
                Standing::Unknown => false,
            };
            if !counts {
                return;
            }
            let deleted = m.kind == ChangeKind::Delete;
            let e = docs.entry(m.doc_id).or_default();
            if deleted {
                e.1 = true;
            } else {
                e.0 = true;
            }
        })
        .await?;
        Ok(docs
            .into_iter()
            .filter_map(|(d, (exists, deleted))| (exists && !deleted).then_some(d))
            .collect())
    }

    fn encode(
        &self,
        doc_id: &DocId,
        kind: ChangeKind,
        change: &automerge::Change,
        hash_ids: &HashMap<ChangeHash, ChangeId>,
    ) -> Result<Change> {
        let deps: BTreeSet<ChangeId> = change
            .deps()
            .iter()
            .filter_map(|h| hash_ids.get(h).copied())
            .collect();
        let payload = self.tenant.keys().seal(
            self.tenant.id(),
            self.store.store_id(),
            doc_id,
            &self.options.key_id,
            change.raw_bytes(),
        )?;
        Ok(ChangeBuilder::new(kind, doc_id.clone())
            .deps(deps)
            .key_id(self.options.key_id.clone())
            .payload(payload)
            .sign(&self.user)?)
    }
}

/// Changes a store may take between two edits before the open documents are
/// all closed rather than checked one change at a time (a big sync).
const RECHECK_LIMIT: u64 = 10_000;

fn lock(m: &Mutex<OpenDocs>) -> MutexGuard<'_, OpenDocs> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The documents a [`Database`] keeps open between edits.
#[derive(Debug, Default)]
struct OpenDocs {
    /// The store's head up to which stored changes were checked against
    /// the open documents.
    seen: Option<Head>,
    /// The directory's head the open documents were loaded under.
    directory: Option<Head>,
    docs: HashMap<DocId, OpenDoc>,
    /// A counter: recency of use, and checkout tokens.
    tick: u64,
}

#[derive(Debug)]
struct OpenDoc {
    /// Every change of the document the open copy accounts for.
    known: HashSet<ChangeId>,
    /// `None` while an edit has it checked out.
    doc: Option<LoadedDoc>,
    /// A change it does not account for arrived while checked out.
    stale: bool,
    used: u64,
    /// The checkout that may put it back.
    token: u64,
}

/// One edit's hold on an open document. Dropped without
/// [`Ticket::put_back`] (an error, a cancelled future), it closes the
/// document.
struct Ticket {
    open: Arc<Mutex<OpenDocs>>,
    doc: DocId,
    /// 0: the edit works on a copy that is not kept.
    token: u64,
    returned: bool,
}

impl Ticket {
    fn new(open: Arc<Mutex<OpenDocs>>, doc: &DocId, token: u64) -> Self {
        Ticket {
            open,
            doc: doc.clone(),
            token,
            returned: false,
        }
    }

    fn with_entry(&self, f: impl FnOnce(&mut OpenDoc)) {
        if self.token == 0 {
            return;
        }
        let mut open = lock(&self.open);
        if let Some(e) = open.docs.get_mut(&self.doc)
            && e.token == self.token
        {
            f(e);
        }
    }

    fn know(&self, ids: &[ChangeId]) {
        self.with_entry(|e| e.known.extend(ids.iter().copied()));
    }

    fn know_all(&self, ids: HashSet<ChangeId>) {
        self.with_entry(|e| {
            if e.known.is_empty() {
                e.known = ids;
            } else {
                e.known.extend(ids);
            }
        });
    }

    /// Keep `doc` open, unless it went stale meanwhile; then close the
    /// least recently used documents beyond `limit`.
    fn put_back(mut self, doc: LoadedDoc, limit: usize) {
        self.returned = true;
        if self.token == 0 {
            return;
        }
        let mut open = lock(&self.open);
        let keep = match open.docs.get_mut(&self.doc) {
            Some(e) if e.token == self.token && !e.stale => {
                e.doc = Some(doc);
                true
            }
            _ => false,
        };
        if !keep {
            if open
                .docs
                .get(&self.doc)
                .is_some_and(|e| e.token == self.token)
            {
                open.docs.remove(&self.doc);
            }
            return;
        }
        // Bounded: each pass removes one.
        while open.docs.values().filter(|e| e.doc.is_some()).count() > limit {
            let Some(oldest) = open
                .docs
                .iter()
                .filter(|(_, e)| e.doc.is_some())
                .min_by_key(|(_, e)| e.used)
                .map(|(d, _)| d.clone())
            else {
                break;
            };
            open.docs.remove(&oldest);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.returned || self.token == 0 {
            return;
        }
        let mut open = lock(&self.open);
        if open
            .docs
            .get(&self.doc)
            .is_some_and(|e| e.token == self.token)
        {
            open.docs.remove(&self.doc);
        }
    }
}

/// The changes of one document the directory refuses, with reasons:
/// missing or bad signatures, unknown authors, and a revoked author's
/// changes outside the causal past of what the revocation kept.
fn refused_by_directory(
    tenant: &Tenant,
    dir: &Directory,
    all: &[ChangeMeta],
) -> HashMap<ChangeId, RejectReason> {
    let mut refused = HashMap::new();
    // The causal past (within the document) of every revoked author's kept
    // changes: walked once, over the document's dependency graph.
    let deps: HashMap<ChangeId, &[ChangeId]> = all.iter().map(|m| (m.id, &m.deps[..])).collect();
    let mut kept: HashSet<ChangeId> = HashSet::new();
    let mut stack: Vec<ChangeId> = Vec::new();
    for m in all {
        if let Standing::Revoked(keep) = dir.standing(&m.author)
            && keep.contains(&m.id)
        {
            stack.push(m.id);
        }
    }
    // Bounded: each id is visited once.
    while let Some(id) = stack.pop() {
        if !kept.insert(id) {
            continue;
        }
        if let Some(ds) = deps.get(&id) {
            stack.extend(ds.iter().copied().filter(|d| !kept.contains(d)));
        }
    }
    for m in all {
        let reason = if m.signature.is_none() {
            Some(RejectReason::MissingSignature)
        } else if !tenant.signature_valid(m) {
            Some(RejectReason::BadSignature)
        } else {
            match dir.standing(&m.author) {
                Standing::Trusted => None,
                Standing::Revoked(_) if kept.contains(&m.id) => None,
                Standing::Revoked(_) => Some(RejectReason::Policy(format!(
                    "author {} was revoked, and this change is not among those the revocation kept",
                    m.author
                ))),
                Standing::Unknown => Some(RejectReason::UntrustedAuthor(m.author)),
            }
        };
        if let Some(r) = reason {
            refused.insert(m.id, r);
        }
    }
    refused
}

/// The snapshots of a document that cover (have in their causal past) a
/// refused change, or are refused themselves.
fn unusable_snapshots(
    all: &[ChangeMeta],
    refused: &HashMap<ChangeId, RejectReason>,
) -> HashSet<ChangeId> {
    let deps: HashMap<ChangeId, &[ChangeId]> = all.iter().map(|m| (m.id, &m.deps[..])).collect();
    // `all` is in dependency order, so whether a change's past holds a
    // refused change is known once its deps were seen.
    let mut tainted: HashSet<ChangeId> = HashSet::new();
    for m in all {
        let bad = refused.contains_key(&m.id)
            || deps
                .get(&m.id)
                .is_some_and(|ds| ds.iter().any(|d| tainted.contains(d)));
        if bad {
            tainted.insert(m.id);
        }
    }
    all.iter()
        .filter(|m| m.kind == ChangeKind::Snapshot && tainted.contains(&m.id))
        .map(|m| m.id)
        .collect()
}
