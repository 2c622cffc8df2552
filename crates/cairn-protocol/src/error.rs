//! Typed errors on the wire, with numeric codes that map to and from
//! [`cairn::Error`].

use std::time::Duration;

use cairn::{AuthorId, ChangeId, Error, IntegrityError, RejectReason, StoreId};

use crate::wire::{MAX_TEXT, Reader, proto, put_str16, put_u16, put_u32, put_u64};

/// Numeric error codes (the `code` field of an `Error` response).
///
/// Codes are stable: new codes may be added, existing ones never change
/// meaning. A receiver that does not know a code treats it as a backend error
/// with the frame's `retryable` flag.
pub mod code {
    /// A change failed its integrity check (permanent).
    pub const INTEGRITY: u16 = 1;
    /// Something asked for is not held (permanent).
    pub const NOT_FOUND: u16 = 2;
    /// The store ids differ, or the peer does not serve that store (permanent).
    pub const STORE_MISMATCH: u16 = 3;
    /// The peer may not do this (permanent).
    pub const UNAUTHORIZED: u16 = 4;
    /// An argument was malformed (permanent).
    pub const INVALID_INPUT: u16 = 5;
    /// Over a configured limit (permanent).
    pub const TOO_LARGE: u16 = 6;
    /// The store does not support the operation (permanent).
    pub const UNSUPPORTED: u16 = 7;
    /// The peer broke the protocol (permanent).
    pub const PROTOCOL: u16 = 8;
    /// Stored data is damaged (permanent).
    pub const CORRUPT: u16 = 9;
    /// An I/O error (retryable depending on its kind).
    pub const IO: u16 = 10;
    /// The store or connection is closed (retryable).
    pub const CLOSED: u16 = 11;
    /// The operation was cancelled (permanent).
    pub const CANCELLED: u16 = 12;
    /// A backend failure (retryable as flagged).
    pub const BACKEND: u16 = 13;
    /// The server is at a limit (connections, concurrent requests); retry later.
    pub const BUSY: u16 = 14;
    /// Data or a peer in a format or protocol version this side does not
    /// read (permanent).
    pub const UNSUPPORTED_VERSION: u16 = 15;
    /// A change was refused by the receiver's policy (permanent).
    pub const REJECTED: u16 = 16;
    /// Over a rate limit; retry after the given delay (retryable).
    pub const RATE_LIMITED: u16 = 17;
    /// A quota would be exceeded (permanent).
    pub const QUOTA_EXCEEDED: u16 = 18;
    /// A deadline passed (retryable).
    pub const TIMEOUT: u16 = 19;
}

/// Why a change failed its integrity check, as carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireIntegrity {
    /// Reason 1: the id is not the hash of the header.
    IdMismatch {
        /// The id computed from the header.
        computed: ChangeId,
    },
    /// Reason 2: the payload hash does not match.
    PayloadHashMismatch,
    /// Reason 3: the payload length does not match.
    PayloadLenMismatch {
        /// Declared length.
        declared: u64,
        /// Real length.
        actual: u64,
    },
    /// Reason 4: an invalid dependency list.
    BadDeps {
        /// What was wrong.
        reason: String,
    },
    /// Reason 5: a field is too long.
    FieldTooLong {
        /// The field.
        field: String,
        /// Its length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// Reason 0 (or unknown): described by the message only.
    Other,
}

/// An error as carried in an `Error` response: a wire-level mirror of
/// [`cairn::Error`] with owned strings, so it can be decoded, compared and
/// converted back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// [`code::INTEGRITY`].
    Integrity {
        /// The id the change claimed.
        id: ChangeId,
        /// What did not match.
        reason: WireIntegrity,
    },
    /// [`code::NOT_FOUND`].
    NotFound {
        /// What was looked up.
        what: String,
    },
    /// [`code::STORE_MISMATCH`].
    StoreMismatch {
        /// The store id on the sender's side.
        expected: String,
        /// The other store id.
        found: String,
    },
    /// [`code::UNAUTHORIZED`].
    Unauthorized {
        /// Why access was refused.
        reason: String,
    },
    /// [`code::INVALID_INPUT`].
    InvalidInput {
        /// What was wrong.
        reason: String,
    },
    /// [`code::TOO_LARGE`].
    TooLarge {
        /// What was measured.
        what: String,
        /// The limit.
        limit: u64,
        /// The size offered.
        actual: u64,
    },
    /// [`code::UNSUPPORTED`].
    Unsupported {
        /// The store type.
        store: String,
        /// The missing operation.
        what: String,
    },
    /// [`code::PROTOCOL`].
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// [`code::CORRUPT`].
    Corrupt {
        /// The store type.
        store: String,
        /// What was found.
        reason: String,
    },
    /// [`code::IO`].
    Io {
        /// An [`io_kind`](crate::io_kind) byte.
        kind: u8,
        /// The error text.
        message: String,
    },
    /// [`code::CLOSED`].
    Closed,
    /// [`code::CANCELLED`].
    Cancelled,
    /// [`code::BACKEND`].
    Backend {
        /// The store type.
        store: String,
        /// Whether retrying can help.
        retryable: bool,
        /// The error text.
        message: String,
    },
    /// [`code::BUSY`]: a server limit was reached; always retryable.
    Busy {
        /// Which limit.
        reason: String,
    },
    /// [`code::UNSUPPORTED_VERSION`].
    UnsupportedVersion {
        /// What was read.
        what: String,
        /// The version found.
        found: u32,
        /// The version supported.
        supported: u32,
        /// What to do.
        hint: String,
    },
    /// [`code::REJECTED`].
    Rejected {
        /// The refused change.
        id: ChangeId,
        /// Why.
        reason: RejectReason,
    },
    /// [`code::RATE_LIMITED`].
    RateLimited {
        /// Which limit.
        what: String,
        /// Milliseconds to wait.
        retry_after_ms: u64,
    },
    /// [`code::QUOTA_EXCEEDED`].
    QuotaExceeded {
        /// Which quota.
        what: String,
        /// The quota.
        limit: u64,
        /// Used already.
        used: u64,
        /// Requested.
        requested: u64,
    },
    /// [`code::TIMEOUT`].
    Timeout {
        /// What timed out.
        what: String,
        /// The deadline in milliseconds.
        after_ms: u64,
    },
    /// A code this version does not know.
    Other {
        /// The numeric code.
        code: u16,
        /// The sender's `retryable` flag.
        retryable: bool,
        /// The sender's message.
        message: String,
    },
}

/// The I/O error kinds the protocol names (the `kind` byte of an `Io` error).
pub mod io_kind {
    /// Anything else.
    pub const OTHER: u8 = 0;
    /// Interrupted.
    pub const INTERRUPTED: u8 = 1;
    /// Timed out.
    pub const TIMED_OUT: u8 = 2;
    /// Would block.
    pub const WOULD_BLOCK: u8 = 3;
    /// Connection reset.
    pub const CONNECTION_RESET: u8 = 4;
    /// Connection aborted.
    pub const CONNECTION_ABORTED: u8 = 5;
    /// Broken pipe.
    pub const BROKEN_PIPE: u8 = 6;
    /// Not found.
    pub const NOT_FOUND: u8 = 7;
    /// Permission denied.
    pub const PERMISSION_DENIED: u8 = 8;
}

fn io_kind_byte(kind: std::io::ErrorKind) -> u8 {
    use std::io::ErrorKind as K;
    match kind {
        K::Interrupted => io_kind::INTERRUPTED,
        K::TimedOut => io_kind::TIMED_OUT,
        K::WouldBlock => io_kind::WOULD_BLOCK,
        K::ConnectionReset => io_kind::CONNECTION_RESET,
        K::ConnectionAborted => io_kind::CONNECTION_ABORTED,
        K::BrokenPipe => io_kind::BROKEN_PIPE,
        K::NotFound => io_kind::NOT_FOUND,
        K::PermissionDenied => io_kind::PERMISSION_DENIED,
        _ => io_kind::OTHER,
    }
}

fn io_kind_of(b: u8) -> std::io::ErrorKind {
    use std::io::ErrorKind as K;
    match b {
        io_kind::INTERRUPTED => K::Interrupted,
        io_kind::TIMED_OUT => K::TimedOut,
        io_kind::WOULD_BLOCK => K::WouldBlock,
        io_kind::CONNECTION_RESET => K::ConnectionReset,
        io_kind::CONNECTION_ABORTED => K::ConnectionAborted,
        io_kind::BROKEN_PIPE => K::BrokenPipe,
        io_kind::NOT_FOUND => K::NotFound,
        io_kind::PERMISSION_DENIED => K::PermissionDenied,
        _ => K::Other,
    }
}

/// `cairn::Error` carries some labels as `&'static str`; map a received label
/// back to a known one, or a generic one.
fn label(s: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "append batch (changes)",
        "append batch (bytes)",
        "payload",
        "dependency list",
        "frame",
        "message",
        "change",
        "deps",
        "doc_id",
        "key_id",
        "change record",
        "cairn-redb file",
        "protocol",
        crate::dispatch::FIND_NEW_TOO_LARGE,
        crate::dispatch::ALL_IDS_TOO_LARGE,
        crate::dispatch::DOC_TOO_LARGE,
        "memory",
        "redb",
        "quic",
        "webrtc",
        "factory",
        "reopen",
        "subscribe",
        "a change cannot depend on itself",
        "a dependency is listed twice",
    ];
    KNOWN.iter().find(|k| **k == s).copied().unwrap_or("remote")
}

/// The error text a peer sent, as a source for [`Error::Backend`].
#[derive(Debug)]
struct RemoteMessage(String);

impl std::fmt::Display for RemoteMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RemoteMessage {}

impl WireError {
    /// The numeric code.
    pub fn code(&self) -> u16 {
        match self {
            WireError::Integrity { .. } => code::INTEGRITY,
            WireError::NotFound { .. } => code::NOT_FOUND,
            WireError::StoreMismatch { .. } => code::STORE_MISMATCH,
            WireError::Unauthorized { .. } => code::UNAUTHORIZED,
            WireError::InvalidInput { .. } => code::INVALID_INPUT,
            WireError::TooLarge { .. } => code::TOO_LARGE,
            WireError::Unsupported { .. } => code::UNSUPPORTED,
            WireError::Protocol { .. } => code::PROTOCOL,
            WireError::Corrupt { .. } => code::CORRUPT,
            WireError::Io { .. } => code::IO,
            WireError::Closed => code::CLOSED,
            WireError::Cancelled => code::CANCELLED,
            WireError::Backend { .. } => code::BACKEND,
            WireError::Busy { .. } => code::BUSY,
            WireError::UnsupportedVersion { .. } => code::UNSUPPORTED_VERSION,
            WireError::Rejected { .. } => code::REJECTED,
            WireError::RateLimited { .. } => code::RATE_LIMITED,
            WireError::QuotaExceeded { .. } => code::QUOTA_EXCEEDED,
            WireError::Timeout { .. } => code::TIMEOUT,
            WireError::Other { code, .. } => *code,
        }
    }

    /// Whether retrying can help (the `retryable` byte on the wire).
    pub fn is_retryable(&self) -> bool {
        match self {
            WireError::Io { kind, .. } => matches!(
                *kind,
                io_kind::INTERRUPTED
                    | io_kind::TIMED_OUT
                    | io_kind::WOULD_BLOCK
                    | io_kind::CONNECTION_RESET
                    | io_kind::CONNECTION_ABORTED
                    | io_kind::BROKEN_PIPE
            ),
            WireError::Closed
            | WireError::Busy { .. }
            | WireError::RateLimited { .. }
            | WireError::Timeout { .. } => true,
            WireError::Backend { retryable, .. } | WireError::Other { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// A [`code::UNAUTHORIZED`] error.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        WireError::Unauthorized {
            reason: reason.into(),
        }
    }

    /// A [`code::PROTOCOL`] error.
    pub fn protocol(reason: impl Into<String>) -> Self {
        WireError::Protocol {
            reason: reason.into(),
        }
    }

    /// Convert to the core error type.
    pub fn into_error(self) -> Error {
        match self {
            WireError::Integrity { id, reason } => {
                let reason = match reason {
                    WireIntegrity::IdMismatch { computed } => {
                        IntegrityError::IdMismatch { computed }
                    }
                    WireIntegrity::PayloadHashMismatch => IntegrityError::PayloadHashMismatch,
                    WireIntegrity::PayloadLenMismatch { declared, actual } => {
                        IntegrityError::PayloadLenMismatch { declared, actual }
                    }
                    WireIntegrity::BadDeps { reason } => IntegrityError::BadDeps(label(&reason)),
                    WireIntegrity::FieldTooLong { field, len, limit } => {
                        IntegrityError::FieldTooLong {
                            field: label(&field),
                            len: usize::try_from(len).unwrap_or(usize::MAX),
                            limit: usize::try_from(limit).unwrap_or(usize::MAX),
                        }
                    }
                    WireIntegrity::Other => IntegrityError::BadDeps("remote"),
                };
                Error::Integrity { id, reason }
            }
            WireError::NotFound { what } => Error::NotFound { what },
            WireError::StoreMismatch { expected, found } => {
                match (StoreId::new(expected.clone()), StoreId::new(found.clone())) {
                    (Ok(expected), Ok(found)) => Error::StoreMismatch { expected, found },
                    _ => Error::Protocol {
                        reason: format!(
                            "store id mismatch: expected {expected:?}, found {found:?}"
                        ),
                    },
                }
            }
            WireError::Unauthorized { reason } => Error::Unauthorized { reason },
            WireError::InvalidInput { reason } => Error::InvalidInput { reason },
            WireError::TooLarge {
                what,
                limit,
                actual,
            } => Error::TooLarge {
                what: label(&what),
                limit,
                actual,
            },
            WireError::Unsupported { store, what } => Error::Unsupported {
                store: label(&store),
                what: label(&what),
            },
            WireError::Protocol { reason } => Error::Protocol { reason },
            WireError::Corrupt { store, reason } => Error::Corrupt {
                store: label(&store),
                reason,
            },
            WireError::Io { kind, message } => {
                Error::Io(std::io::Error::new(io_kind_of(kind), message))
            }
            WireError::Closed => Error::Closed,
            WireError::Cancelled => Error::Cancelled,
            WireError::Backend {
                store,
                retryable,
                message,
            } => Error::backend(label(&store), retryable, RemoteMessage(message)),
            WireError::Busy { reason } => Error::backend(
                "remote",
                true,
                RemoteMessage(format!("server busy: {reason}")),
            ),
            WireError::UnsupportedVersion {
                what,
                found,
                supported,
                hint,
            } => Error::UnsupportedVersion {
                what: label(&what),
                found,
                supported,
                hint,
            },
            WireError::Rejected { id, reason } => Error::Rejected { id, reason },
            WireError::RateLimited {
                what,
                retry_after_ms,
            } => Error::RateLimited {
                what,
                retry_after: Duration::from_millis(retry_after_ms),
            },
            WireError::QuotaExceeded {
                what,
                limit,
                used,
                requested,
            } => Error::QuotaExceeded {
                what,
                limit,
                used,
                requested,
            },
            WireError::Timeout { what, after_ms } => Error::Timeout {
                what,
                after: Duration::from_millis(after_ms),
            },
            WireError::Other {
                code,
                retryable,
                message,
            } => Error::backend(
                "remote",
                retryable,
                RemoteMessage(format!("error code {code}: {message}")),
            ),
        }
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        put_u16(out, self.code());
        out.push(u8::from(self.is_retryable()));
        let t = |out: &mut Vec<u8>, s: &str| put_str16(out, s, MAX_TEXT);
        match self {
            WireError::Integrity { id, reason } => {
                out.extend_from_slice(id.as_bytes());
                match reason {
                    WireIntegrity::IdMismatch { computed } => {
                        out.push(1);
                        out.extend_from_slice(computed.as_bytes());
                    }
                    WireIntegrity::PayloadHashMismatch => out.push(2),
                    WireIntegrity::PayloadLenMismatch { declared, actual } => {
                        out.push(3);
                        put_u64(out, *declared);
                        put_u64(out, *actual);
                    }
                    WireIntegrity::BadDeps { reason } => {
                        out.push(4);
                        t(out, reason);
                    }
                    WireIntegrity::FieldTooLong { field, len, limit } => {
                        out.push(5);
                        t(out, field);
                        put_u64(out, *len);
                        put_u64(out, *limit);
                    }
                    WireIntegrity::Other => out.push(0),
                }
            }
            WireError::NotFound { what: s }
            | WireError::Unauthorized { reason: s }
            | WireError::InvalidInput { reason: s }
            | WireError::Protocol { reason: s }
            | WireError::Busy { reason: s } => t(out, s),
            WireError::StoreMismatch {
                expected: a,
                found: b,
            }
            | WireError::Unsupported { store: a, what: b }
            | WireError::Corrupt {
                store: a,
                reason: b,
            } => {
                t(out, a);
                t(out, b);
            }
            WireError::TooLarge {
                what,
                limit,
                actual,
            } => {
                t(out, what);
                put_u64(out, *limit);
                put_u64(out, *actual);
            }
            WireError::Io { kind, message } => {
                out.push(*kind);
                t(out, message);
            }
            WireError::Closed | WireError::Cancelled => {}
            WireError::Backend { store, message, .. } => {
                t(out, store);
                t(out, message);
            }
            WireError::UnsupportedVersion {
                what,
                found,
                supported,
                hint,
            } => {
                t(out, what);
                put_u32(out, *found);
                put_u32(out, *supported);
                t(out, hint);
            }
            WireError::Rejected { id, reason } => {
                out.extend_from_slice(id.as_bytes());
                match reason {
                    RejectReason::Integrity(text) => {
                        out.push(1);
                        t(out, text);
                    }
                    RejectReason::MissingSignature => out.push(2),
                    RejectReason::BadSignature => out.push(3),
                    RejectReason::UntrustedAuthor(a) => {
                        out.push(4);
                        out.extend_from_slice(a.as_bytes());
                    }
                    RejectReason::Policy(text) => {
                        out.push(5);
                        t(out, text);
                    }
                    other => {
                        out.push(0);
                        t(out, &other.to_string());
                    }
                }
            }
            WireError::RateLimited {
                what,
                retry_after_ms,
            } => {
                t(out, what);
                put_u64(out, *retry_after_ms);
            }
            WireError::QuotaExceeded {
                what,
                limit,
                used,
                requested,
            } => {
                t(out, what);
                put_u64(out, *limit);
                put_u64(out, *used);
                put_u64(out, *requested);
            }
            WireError::Timeout { what, after_ms } => {
                t(out, what);
                put_u64(out, *after_ms);
            }
            WireError::Other { message, .. } => t(out, message),
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> cairn::Result<Self> {
        let code = r.u16()?;
        let retryable = r.bool()?;
        let s = |r: &mut Reader<'_>| r.str16().map(str::to_owned);
        Ok(match code {
            code::INTEGRITY => {
                let id = r.id()?;
                let reason = match r.u8()? {
                    1 => WireIntegrity::IdMismatch { computed: r.id()? },
                    2 => WireIntegrity::PayloadHashMismatch,
                    3 => WireIntegrity::PayloadLenMismatch {
                        declared: r.u64()?,
                        actual: r.u64()?,
                    },
                    4 => WireIntegrity::BadDeps { reason: s(r)? },
                    5 => WireIntegrity::FieldTooLong {
                        field: s(r)?,
                        len: r.u64()?,
                        limit: r.u64()?,
                    },
                    0 => WireIntegrity::Other,
                    other => return Err(proto(format!("unknown integrity reason {other}"))),
                };
                WireError::Integrity { id, reason }
            }
            code::NOT_FOUND => WireError::NotFound { what: s(r)? },
            code::STORE_MISMATCH => WireError::StoreMismatch {
                expected: s(r)?,
                found: s(r)?,
            },
            code::UNAUTHORIZED => WireError::Unauthorized { reason: s(r)? },
            code::INVALID_INPUT => WireError::InvalidInput { reason: s(r)? },
            code::TOO_LARGE => WireError::TooLarge {
                what: s(r)?,
                limit: r.u64()?,
                actual: r.u64()?,
            },
            code::UNSUPPORTED => WireError::Unsupported {
                store: s(r)?,
                what: s(r)?,
            },
            code::PROTOCOL => WireError::Protocol { reason: s(r)? },
            code::CORRUPT => WireError::Corrupt {
                store: s(r)?,
                reason: s(r)?,
            },
            code::IO => WireError::Io {
                kind: r.u8()?,
                message: s(r)?,
            },
            code::CLOSED => WireError::Closed,
            code::CANCELLED => WireError::Cancelled,
            code::BACKEND => WireError::Backend {
                store: s(r)?,
                retryable,
                message: s(r)?,
            },
            code::BUSY => WireError::Busy { reason: s(r)? },
            code::UNSUPPORTED_VERSION => WireError::UnsupportedVersion {
                what: s(r)?,
                found: r.u32()?,
                supported: r.u32()?,
                hint: s(r)?,
            },
            code::REJECTED => {
                let id = r.id()?;
                let reason = match r.u8()? {
                    1 => RejectReason::Integrity(s(r)?),
                    2 => RejectReason::MissingSignature,
                    3 => RejectReason::BadSignature,
                    4 => {
                        let mut a = [0u8; 32];
                        a.copy_from_slice(r.take(32)?);
                        RejectReason::UntrustedAuthor(AuthorId::from_bytes(a))
                    }
                    5 | 0 => RejectReason::Policy(s(r)?),
                    other => return Err(proto(format!("unknown rejection reason {other}"))),
                };
                WireError::Rejected { id, reason }
            }
            code::RATE_LIMITED => WireError::RateLimited {
                what: s(r)?,
                retry_after_ms: r.u64()?,
            },
            code::QUOTA_EXCEEDED => WireError::QuotaExceeded {
                what: s(r)?,
                limit: r.u64()?,
                used: r.u64()?,
                requested: r.u64()?,
            },
            code::TIMEOUT => WireError::Timeout {
                what: s(r)?,
                after_ms: r.u64()?,
            },
            code => {
                // Unknown code: its detail layout is unknown, keep the
                // message if the sender wrote one first, else nothing.
                let message = if r.remaining() >= 2 {
                    s(r).unwrap_or_default()
                } else {
                    String::new()
                };
                // Skip whatever detail follows.
                let rest = r.remaining();
                r.take(rest)?;
                WireError::Other {
                    code,
                    retryable,
                    message,
                }
            }
        })
    }
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        match e {
            Error::Integrity { id, reason } => WireError::Integrity {
                id: *id,
                reason: match reason {
                    IntegrityError::IdMismatch { computed } => WireIntegrity::IdMismatch {
                        computed: *computed,
                    },
                    IntegrityError::PayloadHashMismatch => WireIntegrity::PayloadHashMismatch,
                    IntegrityError::PayloadLenMismatch { declared, actual } => {
                        WireIntegrity::PayloadLenMismatch {
                            declared: *declared,
                            actual: *actual,
                        }
                    }
                    IntegrityError::BadDeps(r) => WireIntegrity::BadDeps {
                        reason: (*r).to_owned(),
                    },
                    IntegrityError::FieldTooLong { field, len, limit } => {
                        WireIntegrity::FieldTooLong {
                            field: (*field).to_owned(),
                            len: *len as u64,
                            limit: *limit as u64,
                        }
                    }
                    _ => WireIntegrity::Other,
                },
            },
            Error::NotFound { what } => WireError::NotFound { what: what.clone() },
            Error::StoreMismatch { expected, found } => WireError::StoreMismatch {
                expected: expected.to_string(),
                found: found.to_string(),
            },
            Error::Unauthorized { reason } => WireError::Unauthorized {
                reason: reason.clone(),
            },
            Error::InvalidInput { reason } => WireError::InvalidInput {
                reason: reason.clone(),
            },
            Error::TooLarge {
                what,
                limit,
                actual,
            } => WireError::TooLarge {
                what: (*what).to_owned(),
                limit: *limit,
                actual: *actual,
            },
            Error::Unsupported { store, what } => WireError::Unsupported {
                store: (*store).to_owned(),
                what: (*what).to_owned(),
            },
            Error::Protocol { reason } => WireError::Protocol {
                reason: reason.clone(),
            },
            Error::Corrupt { store, reason } => WireError::Corrupt {
                store: (*store).to_owned(),
                reason: reason.clone(),
            },
            Error::Io(io) => WireError::Io {
                kind: io_kind_byte(io.kind()),
                message: io.to_string(),
            },
            Error::Closed => WireError::Closed,
            Error::Cancelled => WireError::Cancelled,
            Error::Backend {
                store,
                retryable,
                source,
            } => WireError::Backend {
                store: (*store).to_owned(),
                retryable: *retryable,
                message: source.to_string(),
            },
            Error::UnsupportedVersion {
                what,
                found,
                supported,
                hint,
            } => WireError::UnsupportedVersion {
                what: (*what).to_owned(),
                found: *found,
                supported: *supported,
                hint: hint.clone(),
            },
            Error::Rejected { id, reason } => WireError::Rejected {
                id: *id,
                reason: reason.clone(),
            },
            Error::RateLimited { what, retry_after } => WireError::RateLimited {
                what: what.clone(),
                retry_after_ms: u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
            },
            Error::QuotaExceeded {
                what,
                limit,
                used,
                requested,
            } => WireError::QuotaExceeded {
                what: what.clone(),
                limit: *limit,
                used: *used,
                requested: *requested,
            },
            Error::Timeout { what, after } => WireError::Timeout {
                what: what.clone(),
                after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            },
            other => WireError::Other {
                code: 0,
                retryable: other.is_retryable(),
                message: other.to_string(),
            },
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        e.into_error()
    }
}
