//! Pluggable policies that decide which changes a sync accepts.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::AuthorId;
use crate::record::ChangeMeta;

/// Why a change was rejected by a [`Verifier`] or by its integrity check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// The id, payload hash or a field did not check out.
    #[error("integrity: {0}")]
    Integrity(String),
    /// The policy requires a signature and there is none.
    #[error("missing signature")]
    MissingSignature,
    /// The signature does not verify against the author key.
    #[error("invalid signature")]
    BadSignature,
    /// The author is not trusted by the policy.
    #[error("author {0} is not trusted")]
    UntrustedAuthor(AuthorId),
    /// A policy-specific reason.
    #[error("{0}")]
    Policy(String),
}

/// Decides whether a change may be appended during sync.
///
/// The integrity check (id and payload hash) always runs first; a verifier
/// adds policy on top: signatures, trusted authors, application rules.
pub trait Verifier: Send + Sync + fmt::Debug {
    /// `Ok(())` to accept `meta`, or the reason to reject it.
    fn verify(&self, meta: &ChangeMeta) -> Result<(), RejectReason>;
}

/// Accept every change that passes its integrity check.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAll;

impl Verifier for AcceptAll {
    fn verify(&self, _meta: &ChangeMeta) -> Result<(), RejectReason> {
        Ok(())
    }
}

/// Accept only changes with a valid Ed25519 signature by their author.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequireSignature;

impl Verifier for RequireSignature {
    fn verify(&self, meta: &ChangeMeta) -> Result<(), RejectReason> {
        if meta.signature.is_none() {
            return Err(RejectReason::MissingSignature);
        }
        if !meta.signature_valid() {
            return Err(RejectReason::BadSignature);
        }
        Ok(())
    }
}

/// Accept only validly signed changes whose author is in a set.
///
/// ```
/// use cairn::{ChangeBuilder, ChangeKind, DocId, Keypair, TrustedAuthors, Verifier};
/// let alice = Keypair::generate();
/// let mallory = Keypair::generate();
/// let policy = TrustedAuthors::new([alice.author()]);
/// let ok = ChangeBuilder::new(ChangeKind::Create, DocId::new("d")?).sign(&alice)?;
/// let bad = ChangeBuilder::new(ChangeKind::Create, DocId::new("d")?).sign(&mallory)?;
/// assert!(policy.verify(&ok.meta).is_ok());
/// assert!(policy.verify(&bad.meta).is_err());
/// # Ok::<(), cairn::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct TrustedAuthors {
    authors: HashSet<AuthorId>,
}

impl TrustedAuthors {
    /// Trust exactly these authors.
    pub fn new(authors: impl IntoIterator<Item = AuthorId>) -> Self {
        TrustedAuthors {
            authors: authors.into_iter().collect(),
        }
    }

    /// Add an author.
    pub fn insert(&mut self, author: AuthorId) {
        self.authors.insert(author);
    }

    /// Whether `author` is trusted.
    pub fn contains(&self, author: &AuthorId) -> bool {
        self.authors.contains(author)
    }
}

impl Verifier for TrustedAuthors {
    fn verify(&self, meta: &ChangeMeta) -> Result<(), RejectReason> {
        if !self.authors.contains(&meta.author) {
            return Err(RejectReason::UntrustedAuthor(meta.author));
        }
        RequireSignature.verify(meta)
    }
}

impl<V: Verifier + ?Sized> Verifier for Arc<V> {
    fn verify(&self, meta: &ChangeMeta) -> Result<(), RejectReason> {
        (**self).verify(meta)
    }
}
