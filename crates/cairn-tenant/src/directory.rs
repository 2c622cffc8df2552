//! The tenant directory: which users (signing keys) belong to the tenant.
//!
//! The directory is itself a Cairn store (`<tenant>/directory`) holding one
//! document of changes signed by the tenant admin, encrypted with the tenant
//! key and synced like any database. Only admin-signed entries count.
//!
//! # What revocation means
//!
//! A revocation names the revoked user's changes that stay valid: the heads
//! of that user's changes (in every database the admin's device holds) at
//! the moment of revoking. A change by a revoked user is valid exactly when
//! it is one of those changes or in their causal past (reachable through
//! dependencies, through anyone's changes); every other change of theirs —
//! made later, concurrently offline and not yet seen by the admin, or
//! backdated with an earlier `created_at` — is rejected. Validity follows
//! causality, never the author's clock. Adding the user again restores
//! full trust.

use std::collections::{BTreeMap, BTreeSet};

use cairn::{AuthorId, ChangeId};
use serde::{Deserialize, Serialize};

/// One directory entry, the plaintext of a directory change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DirectoryOp {
    /// Admit a user's signing key (again, if it was revoked).
    AddUser {
        /// A display name.
        name: String,
        /// The user's public key.
        key: AuthorId,
    },
    /// Revoke a user's key: their changes outside the causal past of
    /// `keep` are rejected from now on (see the module docs).
    RevokeUser {
        /// The user's public key.
        key: AuthorId,
        /// The revoked user's changes that stay valid, with everything
        /// they depend on.
        #[serde(default)]
        keep: BTreeSet<ChangeId>,
    },
}

/// A user in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    /// Display name.
    pub name: String,
    /// Whether the key was revoked.
    pub revoked: bool,
    /// For a revoked user, the changes that stay valid (with their causal
    /// past).
    pub keep: BTreeSet<ChangeId>,
}

/// How far a directory trusts an author.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing<'a> {
    /// The admin, or a user who is not revoked: every validly signed change
    /// counts.
    Trusted,
    /// A revoked user: only these changes, and their causal past, count.
    Revoked(&'a BTreeSet<ChangeId>),
    /// Not in the directory.
    Unknown,
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
                        keep: BTreeSet::new(),
                    },
                );
            }
            DirectoryOp::RevokeUser { key, keep } => {
                if let Some(u) = self.users.get_mut(key) {
                    // Two revocations (say from two admin devices) keep
                    // what either kept.
                    if !u.revoked {
                        u.keep.clear();
                    }
                    u.revoked = true;
                    u.keep.extend(keep.iter().copied());
                }
            }
        }
    }

    /// How far changes by `author` are trusted.
    pub fn standing(&self, author: &AuthorId) -> Standing<'_> {
        if *author == self.admin {
            return Standing::Trusted;
        }
        match self.users.get(author) {
            Some(u) if !u.revoked => Standing::Trusted,
            Some(u) => Standing::Revoked(&u.keep),
            None => Standing::Unknown,
        }
    }

    /// Whether every change by `author` is trusted: the admin, or a user in
    /// the directory who was not revoked.
    pub fn is_trusted(&self, author: &AuthorId) -> bool {
        matches!(self.standing(author), Standing::Trusted)
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
