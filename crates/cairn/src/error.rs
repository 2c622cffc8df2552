//! The one error type every Cairn store and the sync engine return.

use std::time::Duration;

use crate::{ChangeId, RejectReason, StoreId};

/// A `Result` whose error is Cairn's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Boxed error source carried by [`Error::Backend`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in Cairn.
///
/// Variants carry the context a caller needs to act (which store, which id,
/// what was expected). Use [`Error::is_retryable`] to decide whether trying
/// the same operation again can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A change failed its integrity check: its id or payload hash does not
    /// match its contents, or a field is out of bounds. Nothing of the batch
    /// that carried it was stored.
    #[error("change {id} failed its integrity check: {reason}")]
    Integrity {
        /// The id the change claimed.
        id: ChangeId,
        /// What did not match.
        reason: IntegrityError,
    },
    /// A requested change or object is not held by the store.
    #[error("not found: {what}")]
    NotFound {
        /// What was looked up.
        what: String,
    },
    /// Two stores with different store ids were asked to sync, or a request
    /// named a store the peer does not serve.
    #[error("store id mismatch: expected {expected:?}, found {found:?}")]
    StoreMismatch {
        /// The store id on this side.
        expected: StoreId,
        /// The store id on the other side.
        found: StoreId,
    },
    /// The caller is not allowed to do this.
    #[error("unauthorized: {reason}")]
    Unauthorized {
        /// Why access was refused.
        reason: String,
    },
    /// An argument was malformed (an empty id string, a limit of zero, …).
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What was wrong with it.
        reason: String,
    },
    /// A batch, payload or message is over a configured limit.
    #[error("{what} is too large: {actual} > limit {limit}")]
    TooLarge {
        /// What was measured ("batch", "payload", "frame", …).
        what: &'static str,
        /// The limit in force.
        limit: u64,
        /// The size that was offered.
        actual: u64,
    },
    /// The operation is not supported by this store.
    #[error("{store} does not support {what}")]
    Unsupported {
        /// The store type.
        store: &'static str,
        /// The missing operation.
        what: &'static str,
    },
    /// The peer broke the wire protocol.
    #[error("protocol error: {reason}")]
    Protocol {
        /// What was wrong with what the peer sent.
        reason: String,
    },
    /// Stored data is damaged or of an unknown format.
    #[error("{store} data is corrupt or unreadable: {reason}")]
    Corrupt {
        /// The store type.
        store: &'static str,
        /// What was found.
        reason: String,
    },
    /// Data (a change record, a file, a protocol frame) in a format version
    /// this library does not read.
    #[error(
        "{what} is format version {found}; this version of Cairn reads version {supported}: {hint}"
    )]
    UnsupportedVersion {
        /// What was read ("change record", "redb file", "protocol").
        what: &'static str,
        /// The version found.
        found: u32,
        /// The version this library reads.
        supported: u32,
        /// What to do about it.
        hint: String,
    },
    /// A change was refused by the policy (a [`Verifier`](crate::Verifier))
    /// at this store's door: an append, a notification, a fetch. Nothing of
    /// the batch that carried it was stored.
    #[error("change {id} refused by policy: {reason}")]
    Rejected {
        /// The refused change.
        id: ChangeId,
        /// Why.
        reason: RejectReason,
    },
    /// The peer is over a rate limit; retrying after `retry_after` can
    /// succeed.
    #[error("rate limited ({what}); retry after {retry_after:?}")]
    RateLimited {
        /// Which limit ("appends per second", "bytes per second", …).
        what: String,
        /// How long to wait before trying again.
        retry_after: Duration,
    },
    /// A stored-bytes (or similar) quota would be exceeded; nothing of the
    /// batch was stored. Retrying does not help until the quota changes.
    #[error("quota exceeded ({what}): {used} used + {requested} requested > limit {limit}")]
    QuotaExceeded {
        /// Which quota.
        what: String,
        /// The quota.
        limit: u64,
        /// What is used already.
        used: u64,
        /// What the refused operation needed.
        requested: u64,
    },
    /// An operation did not finish within its deadline.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The deadline.
        after: Duration,
    },
    /// An I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The store or connection is closed.
    #[error("the store or connection is closed")]
    Closed,
    /// The operation was cancelled by its caller.
    #[error("cancelled")]
    Cancelled,
    /// A backend-specific failure.
    #[error("{store} backend error: {source}")]
    Backend {
        /// The store type that failed.
        store: &'static str,
        /// Whether retrying can help (a timeout, a lost connection).
        retryable: bool,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Whether retrying the same operation can succeed.
    ///
    /// Permanent errors (integrity, a policy refusal, unauthorized, invalid
    /// input, corrupt data, an unsupported version, a quota) return `false`;
    /// transient ones (I/O interruptions, a closed connection, a timeout, a
    /// rate limit, a backend that said so) return `true`.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ),
            Error::Closed | Error::RateLimited { .. } | Error::Timeout { .. } => true,
            Error::Backend { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// Wrap a backend error.
    pub fn backend(store: &'static str, retryable: bool, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            store,
            retryable,
            source: source.into(),
        }
    }

    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            reason: reason.into(),
        }
    }
}

/// Why a change failed its integrity check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrityError {
    /// The id is not the hash of the header.
    #[error("id does not match the header (computed {computed})")]
    IdMismatch {
        /// The id computed from the header.
        computed: ChangeId,
    },
    /// The payload's blake3 hash differs from `payload_hash`.
    #[error("payload hash does not match the payload")]
    PayloadHashMismatch,
    /// The payload's length differs from `payload_len`.
    #[error("payload length {actual} differs from the declared {declared}")]
    PayloadLenMismatch {
        /// `payload_len` in the metadata.
        declared: u64,
        /// The payload's real length.
        actual: u64,
    },
    /// A change lists itself, or the same dependency twice.
    #[error("invalid dependency list: {0}")]
    BadDeps(&'static str),
    /// A field is over its limit.
    #[error("{field} is too long: {len} > {limit}")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}
