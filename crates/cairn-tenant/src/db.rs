//! A database of Automerge documents over any Cairn store.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use automerge::{ActorId, AutoCommit, AutomergeError, ChangeHash};
use cairn::{
    AppendOnlyStore, Change, ChangeBuilder, ChangeId, ChangeKind, ChangeMeta, DocId,
    DynAppendOnlyStore, KeyId, Keypair, RejectReason, Rejected,
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
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            snapshot_every: 50,
            key_id: KeyId::default(),
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
    pub async fn update(
        &self,
        doc_id: &DocId,
        edit: impl FnOnce(&mut AutoCommit) -> std::result::Result<(), AutomergeError> + Send,
    ) -> Result<Vec<ChangeId>> {
        let mut loaded = self.load(doc_id).await?;
        let before = loaded.doc.get_heads();
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
        self.store.append(batch).await?;
        loaded.since_snapshot += new.len();
        let every = self.options.snapshot_every;
        if every > 0 && loaded.since_snapshot >= every {
            ids.push(self.snapshot(doc_id, &mut loaded).await?);
        }
        Ok(ids)
    }

    /// Write a snapshot of `loaded` now; returns its id.
    async fn snapshot(&self, doc_id: &DocId, loaded: &mut LoadedDoc) -> Result<ChangeId> {
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
        self.store.append(vec![change]).await?;
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
        let refused = refused_by_directory(&dir, &all);
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
        // A page at a time: memory holds the document list, not every change.
        cairn::scan_all(self.store.as_ref(), |m| {
            if !m.signature_valid() {
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

/// The changes of one document the directory refuses, with reasons:
/// missing or bad signatures, unknown authors, and a revoked author's
/// changes outside the causal past of what the revocation kept.
fn refused_by_directory(dir: &Directory, all: &[ChangeMeta]) -> HashMap<ChangeId, RejectReason> {
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
        } else if !m.signature_valid() {
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
