//! Mapping PostgreSQL and pool errors into [`cairn::Error`], and the rules
//! for which failures the store retries by itself.

use cairn::Error;
use tokio_postgres::error::SqlState;

/// The store name used in [`Error::Corrupt`] and [`Error::Backend`].
pub(crate) const STORE: &str = "postgres";

/// What can go wrong that is particular to the PostgreSQL store. It reaches
/// callers as the `source` of [`Error::Backend`]; downcast to act on it:
///
/// ```
/// # fn f(e: &cairn::Error) -> bool {
/// use cairn_postgres::PostgresError;
/// matches!(
///     e,
///     cairn::Error::Backend { source, .. }
///         if matches!(source.downcast_ref::<PostgresError>(), Some(PostgresError::SchemaTooNew { .. }))
/// )
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// The database schema was written by a newer cairn-postgres. Nothing
    /// was changed.
    #[error(
        "PostgreSQL schema {schema:?} is at cairn-postgres schema version {found}, newer than this \
         build supports ({supported}); upgrade cairn-postgres on every process that opens this \
         database, or point this one at another schema (PostgresOptions::schema)"
    )]
    SchemaTooNew {
        /// The PostgreSQL schema (namespace) holding the tables.
        schema: String,
        /// The version recorded in its `schema_version` table.
        found: i32,
        /// The newest version this build knows.
        supported: i32,
    },
    /// The connection URL or an option could not be used.
    #[error("invalid PostgreSQL configuration: {0}")]
    Config(String),
    /// An error from PostgreSQL or the connection to it.
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// The connection pool could not hand out a connection.
    #[error("connection pool: {0}")]
    Pool(String),
}

/// A failure inside one attempt of an operation, before it is mapped into
/// [`Error`]: says whether running the attempt again is safe and useful.
#[derive(Debug)]
pub(crate) enum Fail {
    /// A database error; the attempt's transaction (if any) did not commit.
    Db(tokio_postgres::Error),
    /// The connection failed while `COMMIT` was in flight: the transaction
    /// may or may not have committed. Never retried internally.
    Ambiguous(tokio_postgres::Error),
    /// No connection could be had from the pool.
    Pool(deadpool_postgres::PoolError),
    /// Anything else, already mapped (corrupt rows, bad input).
    Cairn(Error),
    /// A batch of the attempt failed the integrity check that ran while it
    /// was sent, so the transaction was rolled back: nothing committed.
    /// That batch's caller reports the check's own error.
    Rejected,
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Db(e)
    }
}

impl From<deadpool_postgres::PoolError> for Fail {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Fail::Pool(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Cairn(e)
    }
}

impl Fail {
    /// Whether the store may run the same attempt again by itself: a
    /// serialization failure or deadlock (40001, 40P01), or a lost or
    /// refused connection, when the attempt certainly did not commit.
    pub(crate) fn retry_safe(&self) -> bool {
        match self {
            Fail::Db(e) => transient(e),
            Fail::Pool(p) => match p {
                deadpool_postgres::PoolError::Backend(e) => transient(e),
                deadpool_postgres::PoolError::Timeout(_) => true,
                _ => false,
            },
            Fail::Ambiguous(_) | Fail::Cairn(_) | Fail::Rejected => false,
        }
    }

    /// The caller's error.
    pub(crate) fn into_error(self) -> Error {
        match self {
            Fail::Db(e) | Fail::Ambiguous(e) => map_pg(e),
            Fail::Pool(p) => map_pool(p),
            Fail::Cairn(e) => e,
            Fail::Rejected => Error::backend(
                STORE,
                false,
                std::io::Error::other("a batch failed its integrity check; nothing was stored"),
            ),
        }
    }
}

/// A failure that retrying can cure: serialization failures, deadlocks,
/// and every way a connection is lost or refused while the server restarts.
pub(crate) fn transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || code.code().starts_with("08")
        }
        // No SQLSTATE: an I/O or protocol-level failure of the connection.
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// Map a PostgreSQL error, retryable where [`transient`] says so.
pub(crate) fn map_pg(e: tokio_postgres::Error) -> Error {
    let retryable = transient(&e);
    Error::backend(STORE, retryable, PostgresError::Db(e))
}

fn map_pool(p: deadpool_postgres::PoolError) -> Error {
    use deadpool_postgres::PoolError as P;
    match p {
        P::Backend(e) => map_pg(e),
        P::Closed => Error::Closed,
        P::Timeout(t) => Error::backend(
            STORE,
            true,
            PostgresError::Pool(format!("timed out waiting for a connection ({t:?})")),
        ),
        other => Error::backend(STORE, false, PostgresError::Pool(other.to_string())),
    }
}

/// Stored data that does not read back as written.
pub(crate) fn corrupt(reason: impl Into<String>) -> Error {
    Error::Corrupt {
        store: STORE,
        reason: reason.into(),
    }
}

/// A configuration problem, reported as invalid input.
pub(crate) fn config(reason: impl Into<String>) -> Error {
    Error::backend(STORE, false, PostgresError::Config(reason.into()))
}
