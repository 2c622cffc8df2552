//! Errors of the tenant layer.

use cairn::{AuthorId, ChangeId, DocId, KeyId};

use crate::crypto::KeyVersion;

/// What can go wrong in the tenant layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TenantError {
    /// The underlying store failed.
    #[error(transparent)]
    Store(#[from] cairn::Error),
    /// A payload could not be decrypted (wrong key, or tampered).
    #[error("cannot decrypt change {id}: {reason}")]
    Decrypt {
        /// The change.
        id: ChangeId,
        /// Why.
        reason: String,
    },
    /// The key (or key version) a payload names is not in the key ring.
    #[error("unknown key {key_id}{}", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    UnknownKey {
        /// The key.
        key_id: KeyId,
        /// The version asked for, if one was.
        version: Option<KeyVersion>,
    },
    /// Automerge refused a change or document.
    #[error("automerge: {0}")]
    Automerge(String),
    /// The document does not exist (or was deleted).
    #[error("document {0} not found")]
    NotFound(DocId),
    /// Only the tenant admin may do this.
    #[error("only the tenant admin may {0}")]
    NotAdmin(&'static str),
    /// The acting user is not in the tenant directory.
    #[error("user {0} is not in the tenant directory")]
    UnknownUser(AuthorId),
    /// Malformed input.
    #[error("invalid: {0}")]
    Invalid(String),
}

impl From<automerge::AutomergeError> for TenantError {
    fn from(e: automerge::AutomergeError) -> Self {
        TenantError::Automerge(e.to_string())
    }
}

/// Result with [`TenantError`].
pub type Result<T, E = TenantError> = std::result::Result<T, E>;
