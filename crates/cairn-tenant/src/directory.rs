//! The tenant directory: which users (signing keys) belong to the tenant.
//!
//! The directory is itself a Cairn store (`<tenant>/directory`) holding one
//! document of changes signed by the tenant admin, encrypted with the tenant
//! key and synced like any database. Only admin-signed entries count.

use std::collections::BTreeMap;

use cairn::AuthorId;
use serde::{Deserialize, Serialize};

/// One directory entry, the plaintext of a directory change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DirectoryOp {
    /// Admit a user's signing key.
    AddUser {
        /// A display name.
        name: String,
        /// The user's public key.
        key: AuthorId,
    },
    /// Remove a user's key: their later changes are rejected.
    RevokeUser {
        /// The user's public key.
        key: AuthorId,
    },
}

/// A user in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    /// Display name.
    pub name: String,
    /// Whether the key was revoked.
    pub revoked: bool,
}

/// The directory as loaded: the admin plus the users it admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    admin: AuthorId,
    users: BTreeMap<AuthorId, UserEntry>,
}

impl Directory {
    /// An empty directory whose root of trust is `admin`.
    pub fn new(admin: AuthorId) -> Self {
        Directory {
            admin,
            users: BTreeMap::new(),
        }
    }

    /// Apply one entry.
    pub fn apply(&mut self, op: &DirectoryOp) {
        match op {
            DirectoryOp::AddUser { name, key } => {
                self.users.insert(
                    *key,
                    UserEntry {
                        name: name.clone(),
                        revoked: false,
                    },
                );
            }
            DirectoryOp::RevokeUser { key } => {
                if let Some(u) = self.users.get_mut(key) {
                    u.revoked = true;
                }
            }
        }
    }

    /// Whether changes by `author` are trusted: the admin, or a user in the
    /// directory who was not revoked.
    pub fn is_trusted(&self, author: &AuthorId) -> bool {
        *author == self.admin || self.users.get(author).is_some_and(|u| !u.revoked)
    }

    /// The admin key.
    pub fn admin(&self) -> AuthorId {
        self.admin
    }

    /// The users, by key.
    pub fn users(&self) -> &BTreeMap<AuthorId, UserEntry> {
        &self.users
    }
}
