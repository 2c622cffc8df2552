#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod crypto;
mod db;
mod directory;
mod error;
mod verified;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use cairn::{
    AppendOnlyStore, ChangeBuilder, ChangeId, ChangeKind, ChangeMeta, DocId, DynAppendOnlyStore,
    Head, KeyId, Keypair, RejectReason, Rejected, StoreId,
};
use serde::{Deserialize, Serialize};

pub use automerge;
pub use crypto::{KeyRing, KeyVersion, SymmetricKey};
pub use db::{Database, DbOptions, LoadedDoc};
pub use directory::{Directory, DirectoryOp, Standing, UserEntry};
pub use error::{Result, TenantError};

/// What a device needs to act in a tenant: its id, the admin's public key
/// (the root of trust) and the symmetric keys. Share it with a new device
/// over a secure channel; it contains secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantConfig {
    /// The tenant id (also the prefix of its store ids).
    pub id: String,
    /// The admin's Ed25519 public key.
    pub admin: cairn::AuthorId,
    /// The tenant key (`default`) and named keys.
    pub keys: KeyRing,
}

impl TenantConfig {
    /// A new tenant: a fresh admin key pair (returned; keep it safe) and a
    /// fresh tenant key.
    pub fn create(id: &str) -> Result<(TenantConfig, Keypair)> {
        // Validate the id by building the store id it implies.
        directory_store_id(id)?;
        let admin = Keypair::generate();
        Ok((
            TenantConfig {
                id: id.to_owned(),
                admin: admin.author(),
                keys: KeyRing::new()?,
            },
            admin,
        ))
    }
}

/// The store id of a tenant's directory: `<tenant>/directory`.
pub fn directory_store_id(tenant: &str) -> Result<StoreId> {
    if tenant.is_empty() || tenant.contains('/') {
        return Err(TenantError::Invalid(format!(
            "tenant id {tenant:?} must be non-empty and contain no '/'"
        )));
    }
    Ok(StoreId::new(format!("{tenant}/directory"))?)
}

/// The store id of one of a tenant's databases: `<tenant>/db/<name>`.
pub fn db_store_id(tenant: &str, name: &str) -> Result<StoreId> {
    directory_store_id(tenant)?;
    if name.is_empty() || name.contains('/') {
        return Err(TenantError::Invalid(format!(
            "database name {name:?} must be non-empty and contain no '/'"
        )));
    }
    Ok(StoreId::new(format!("{tenant}/db/{name}"))?)
}

const DIRECTORY_DOC: &str = "directory";

/// A tenant: its keys and its directory of users. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tenant {
    inner: Arc<TenantInner>,
}

#[derive(Debug)]
struct TenantInner {
    id: String,
    admin: cairn::AuthorId,
    /// Replaced whole on rotation, so readers take a cheap snapshot.
    keys: RwLock<Arc<KeyRing>>,
    directory_store: Arc<DynAppendOnlyStore>,
    directory: RwLock<Directory>,
    /// The directory store's head when the directory was last loaded.
    directory_head: Mutex<Option<Head>>,
    /// Signatures already found valid (shared by the tenant's databases).
    verified: verified::Verified,
}

impl Tenant {
    /// Open a tenant with its directory store (which must have the store
    /// id [`directory_store_id`]) and load the directory.
    pub async fn open(
        config: TenantConfig,
        directory_store: Arc<DynAppendOnlyStore>,
    ) -> Result<Tenant> {
        let expected = directory_store_id(&config.id)?;
        if directory_store.store_id() != &expected {
            return Err(cairn::Error::StoreMismatch {
                expected,
                found: directory_store.store_id().clone(),
            }
            .into());
        }
        let tenant = Tenant {
            inner: Arc::new(TenantInner {
                id: config.id,
                admin: config.admin,
                keys: RwLock::new(Arc::new(config.keys)),
                directory_store,
                directory: RwLock::new(Directory::new(config.admin)),
                directory_head: Mutex::new(None),
                verified: verified::Verified::default(),
            }),
        };
        tenant.refresh_directory().await?;
        Ok(tenant)
    }

    /// The tenant id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The configuration to share with another device of this tenant.
    pub fn config(&self) -> TenantConfig {
        TenantConfig {
            id: self.inner.id.clone(),
            admin: self.inner.admin,
            keys: KeyRing::clone(&self.keys()),
        }
    }

    /// The directory store (sync it like any database).
    pub fn directory_store(&self) -> &Arc<DynAppendOnlyStore> {
        &self.inner.directory_store
    }

    /// A copy of the directory as last loaded.
    pub fn directory(&self) -> Directory {
        self.inner
            .directory
            .read()
            .map(|d| d.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// A snapshot of the key ring (an `Arc` clone, not a copy of the keys).
    pub(crate) fn keys(&self) -> Arc<KeyRing> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reload the directory if its store changed since it was last loaded
    /// (a sync or a live update brought entries). Databases call it before
    /// every load, so trust always reflects the directory store as it is.
    pub async fn ensure_fresh(&self) -> Result<()> {
        let head = self.inner.directory_store.head().await?;
        let seen = *self
            .inner
            .directory_head
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if seen != Some(head) {
            self.refresh_directory().await?;
        }
        Ok(())
    }

    /// [`ChangeMeta::signature_valid`], remembering valid signatures.
    pub(crate) fn signature_valid(&self, m: &ChangeMeta) -> bool {
        self.inner.verified.check(m)
    }

    /// The directory store's head when the directory was last loaded.
    pub(crate) fn directory_head(&self) -> Option<Head> {
        *self
            .inner
            .directory_head
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Add a new version of a named key (or create it). New payloads use
    /// it; old ones keep opening. Share [`Tenant::config`] again afterwards.
    pub fn rotate_key(&self, key_id: &KeyId) -> Result<KeyVersion> {
        let mut keys = self.inner.keys.write().unwrap_or_else(|e| e.into_inner());
        Arc::make_mut(&mut *keys).rotate(key_id)
    }

    /// Admit a user's signing key. Only the admin can.
    pub async fn add_user(&self, admin: &Keypair, name: &str, key: cairn::AuthorId) -> Result<()> {
        self.write_directory(
            admin,
            DirectoryOp::AddUser {
                name: name.to_owned(),
                key,
            },
        )
        .await
    }

    /// Revoke a user's key. Only the admin can.
    ///
    /// The user's changes that `databases` hold now — their heads, and
    /// everything those depend on — stay valid; every other change of
    /// theirs (later, concurrent and not yet synced here, or backdated) is
    /// rejected from now on (see [`directory`](crate::Directory) and the
    /// crate docs). Pass every database the user wrote to; a change in a
    /// database not passed here is rejected.
    pub async fn revoke_user(
        &self,
        admin: &Keypair,
        key: cairn::AuthorId,
        databases: &[&Database],
    ) -> Result<()> {
        let mut keep = BTreeSet::new();
        for db in databases {
            keep.extend(db.heads_by(&key).await?);
        }
        self.write_directory(admin, DirectoryOp::RevokeUser { key, keep })
            .await
    }

    async fn write_directory(&self, admin: &Keypair, op: DirectoryOp) -> Result<()> {
        if admin.author() != self.inner.admin {
            return Err(TenantError::NotAdmin("change the directory"));
        }
        let doc = DocId::new(DIRECTORY_DOC)?;
        let store = &self.inner.directory_store;
        let metas = store.changes_for_doc(&doc, false).await?;
        let heads = heads_of(&metas);
        let plain = serde_json::to_vec(&op).map_err(|e| TenantError::Invalid(e.to_string()))?;
        let payload = self.keys().seal(
            &self.inner.id,
            store.store_id(),
            &doc,
            &KeyId::default(),
            &plain,
        )?;
        let kind = if metas.is_empty() {
            ChangeKind::Create
        } else {
            ChangeKind::Change
        };
        let change = ChangeBuilder::new(kind, doc)
            .deps(heads)
            .payload(payload)
            .sign(admin)?;
        store.append(vec![change]).await?;
        self.refresh_directory().await?;
        Ok(())
    }

    /// Reload the directory from its store. Entries not signed by the
    /// admin are rejected and returned, never applied. Loading a document
    /// does this by itself when the directory store changed
    /// ([`Tenant::ensure_fresh`]).
    pub async fn refresh_directory(&self) -> Result<Vec<Rejected>> {
        let doc = DocId::new(DIRECTORY_DOC)?;
        let store = &self.inner.directory_store;
        let head = store.head().await?;
        let ids: Vec<ChangeId> = store
            .changes_for_doc(&doc, false)
            .await?
            .iter()
            .map(|m| m.id)
            .collect();
        let keys = self.keys();
        let mut dir = Directory::new(self.inner.admin);
        let mut rejected = Vec::new();
        for chunk in ids.chunks(256) {
            for c in store.get_changes(chunk).await? {
                if c.meta.author != self.inner.admin {
                    rejected.push(Rejected {
                        id: c.id(),
                        reason: RejectReason::UntrustedAuthor(c.meta.author),
                    });
                    continue;
                }
                if !self.signature_valid(&c.meta) {
                    rejected.push(Rejected {
                        id: c.id(),
                        reason: RejectReason::BadSignature,
                    });
                    continue;
                }
                let op = keys
                    .open(
                        &self.inner.id,
                        store.store_id(),
                        &c.meta.doc_id,
                        &c.meta.key_id,
                        c.id(),
                        &c.payload,
                    )
                    .and_then(|p| {
                        serde_json::from_slice::<DirectoryOp>(&p)
                            .map_err(|e| TenantError::Invalid(e.to_string()))
                    });
                match op {
                    Ok(op) => dir.apply(&op),
                    Err(e) => rejected.push(Rejected {
                        id: c.id(),
                        reason: RejectReason::Policy(e.to_string()),
                    }),
                }
            }
        }
        for r in &rejected {
            tracing::warn!(id = %r.id, reason = %r.reason, "directory entry rejected");
        }
        *self
            .inner
            .directory
            .write()
            .unwrap_or_else(|e| e.into_inner()) = dir;
        *self
            .inner
            .directory_head
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(head);
        Ok(rejected)
    }

    /// Open database `name` over `store` (whose store id must be
    /// [`db_store_id`]) acting as `user`.
    pub async fn open_db(
        &self,
        name: &str,
        store: Arc<DynAppendOnlyStore>,
        user: Keypair,
        options: DbOptions,
    ) -> Result<Database> {
        let expected = db_store_id(&self.inner.id, name)?;
        if store.store_id() != &expected {
            return Err(cairn::Error::StoreMismatch {
                expected,
                found: store.store_id().clone(),
            }
            .into());
        }
        Ok(Database::new(self.clone(), store, user, options))
    }
}

/// The ids among `metas` that no other change in `metas` depends on.
pub(crate) fn heads_of(metas: &[ChangeMeta]) -> Vec<ChangeId> {
    let referenced: HashSet<ChangeId> = metas.iter().flat_map(|m| m.deps.iter().copied()).collect();
    metas
        .iter()
        .map(|m| m.id)
        .filter(|id| !referenced.contains(id))
        .collect()
}
