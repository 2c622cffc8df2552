#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod encoding;
mod error;
pub mod graph;
mod ids;
pub mod reconcile;
mod record;
pub mod riblt;
mod store;
pub mod sync;
pub mod tail;
mod verify;

pub use error::{BoxError, Error, IntegrityError, Result};
pub use ids::{AuthorId, ChangeId, Digest, DocId, KeyId, ParseIdError, StoreId};
pub use record::{Change, ChangeBuilder, ChangeKind, ChangeMeta, Keypair, now_millis};
pub use store::{
    AppendOnlyStore, AppendOnlyStoreExt, AppendOutcome, Capabilities, ChangeStream,
    DynAppendOnlyStore, Fingerprint, FingerprintBuckets, Head, IdRange, Limits, RangeSummary,
    ScanItem, check_batch_integrity, prepare_batch, prepare_batch_unchecked, scan_all,
};
pub use sync::{
    Direction, MAX_RETRY, ProgressFn, RECONCILE_MIN, Reconcile, Rejected, SyncEvent, SyncOptions,
    SyncReport, SyncState, TransferReport,
};
pub use verify::{AcceptAll, RejectReason, RequireSignature, TrustedAuthors, Verifier};

pub use bytes::Bytes;
pub use tokio_util::sync::CancellationToken;

/// `N` random bytes for identifiers that need to be unique, not secret
/// (document ids, epochs). Keys never use this: see `Keypair::generate`.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if getrandom::fill(&mut out).is_err() {
        // No OS randomness is a broken platform; fall back to hashing the
        // clock and address-space state rather than panicking.
        let seed = format!("{:?}{:p}", std::time::SystemTime::now(), &out);
        let mut h = blake3::Hasher::new();
        h.update(seed.as_bytes());
        h.finalize_xof().fill(&mut out);
    }
    out
}

/// A fresh random 64-bit number (for store epochs).
pub fn random_u64() -> u64 {
    u64::from_le_bytes(random_bytes::<8>())
}
