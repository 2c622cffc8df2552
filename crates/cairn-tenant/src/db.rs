//! A database of Automerge documents over any Cairn store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use automerge::{ActorId, AutoCommit, AutomergeError, ChangeHash};
use cairn::{
    AppendOnlyStore, Change, ChangeBuilder, ChangeId, ChangeKind, ChangeMeta, DocId,
    DynAppendOnlyStore, KeyId, Keypair, RejectReason, Rejected,
};

use crate::Tenant;
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
    /// Changes that were not applied, with reasons (untrusted author, bad
    /// signature, undecryptable payload, invalid Automerge data).
    pub rejected: Vec<Rejected>,
    /// Whether a trusted author deleted the document.
    pub deleted: bool,
    /// Cairn changes applied.
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
        let payload =
            self.tenant
                .keys()
                .seal(self.tenant.id(), doc_id, &self.options.key_id, &bytes)?;
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
        let payload =
            self.tenant
                .keys()
                .seal(self.tenant.id(), doc_id, &self.options.key_id, &[])?;
        let change = ChangeBuilder::new(ChangeKind::Delete, doc_id.clone())
            .deps(deps)
            .key_id(self.options.key_id.clone())
            .payload(payload)
            .sign(&self.user)?;
        let id = change.id();
        self.store.append(vec![change]).await?;
        Ok(id)
    }

    /// Load a document: its latest trusted snapshot plus every change that
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
    pub async fn load_any(&self, doc_id: &DocId) -> Result<LoadedDoc> {
        let plan = self.store.changes_for_doc(doc_id, true).await?;
        let starts_with_snapshot = plan.first().is_some_and(|m| m.kind == ChangeKind::Snapshot);
        let loaded = self.apply_plan(&plan).await?;
        if starts_with_snapshot {
            let snap = plan[0].id;
            if loaded.rejected.iter().any(|r| r.id == snap) {
                // The snapshot is not usable (untrusted or unreadable): the
                // history it covers was skipped, so load everything instead.
                tracing::warn!(doc = %doc_id, %snap, "snapshot rejected; loading full history");
                let full: Vec<ChangeMeta> = self
                    .store
                    .changes_for_doc(doc_id, false)
                    .await?
                    .into_iter()
                    .filter(|m| m.id != snap)
                    .collect();
                let mut again = self.apply_plan(&full).await?;
                again.rejected.insert(0, loaded.rejected[0].clone());
                return Ok(again);
            }
        }
        Ok(loaded)
    }

    async fn apply_plan(&self, plan: &[ChangeMeta]) -> Result<LoadedDoc> {
        let keys = self.tenant.keys();
        let mut out = LoadedDoc {
            doc: AutoCommit::new().with_actor(self.actor.clone()),
            rejected: Vec::new(),
            deleted: false,
            applied: 0,
            hash_ids: HashMap::new(),
            since_snapshot: 0,
        };
        let ids: Vec<ChangeId> = plan.iter().map(|m| m.id).collect();
        // Bounded memory: fetch in pages.
        for chunk in ids.chunks(128) {
            for c in self.store.get_changes(chunk).await? {
                let id = c.id();
                let reject = |reason| Rejected { id, reason };
                if c.meta.signature.is_none() {
                    out.rejected.push(reject(RejectReason::MissingSignature));
                    continue;
                }
                if !c.meta.signature_valid() {
                    out.rejected.push(reject(RejectReason::BadSignature));
                    continue;
                }
                if !self.tenant.is_trusted(&c.meta.author) {
                    out.rejected
                        .push(reject(RejectReason::UntrustedAuthor(c.meta.author)));
                    continue;
                }
                let plain = match keys.open(
                    self.tenant.id(),
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
                                    out.applied += 1;
                                    out.since_snapshot += 1;
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
        for r in &out.rejected {
            tracing::warn!(id = %r.id, reason = %r.reason, "change not applied");
        }
        Ok(out)
    }

    /// Ids of the documents that exist (created by a trusted author and not
    /// deleted), sorted. Reads metadata only.
    pub async fn list(&self) -> Result<Vec<DocId>> {
        let mut docs: BTreeMap<DocId, (bool, bool)> = BTreeMap::new();
        // A page at a time: memory holds the document list, not every change.
        cairn::scan_all(self.store.as_ref(), |m| {
            if !m.signature_valid() || !self.tenant.is_trusted(&m.author) {
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
