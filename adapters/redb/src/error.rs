//! Mapping redb's errors into [`cairn::Error`].
//!
//! Precise where a caller acts on the kind (corrupt data, I/O, a closed
//! store, a file of another format), generic (`Error::Backend`) otherwise.

use std::any::Any;
use std::sync::Arc;

use cairn::Error;

/// The store name used in [`Error::Corrupt`] and [`Error::Backend`].
pub(crate) const STORE: &str = "redb";

/// A damaged or foreign file.
pub(crate) fn corrupt(reason: impl Into<String>) -> Error {
    Error::Corrupt {
        store: STORE,
        reason: reason.into(),
    }
}

/// Map any redb error into a Cairn error.
pub(crate) fn map(e: impl Into<redb::Error>) -> Error {
    map_redb(e.into())
}

fn map_redb(e: redb::Error) -> Error {
    use redb::Error as R;
    match e {
        R::Corrupted(reason) => corrupt(reason),
        R::Io(io) => Error::Io(io),
        R::UpgradeRequired(v) => corrupt(format!(
            "the file uses redb format {v}, which this redb version cannot read without an upgrade"
        )),
        R::TableDoesNotExist(name) => corrupt(format!("table `{name}` is missing")),
        R::TableTypeMismatch { table, .. } => corrupt(format!(
            "table `{table}` has different key or value types: not a cairn-redb file of this schema"
        )),
        R::TableIsMultimap(name) | R::TableIsNotMultimap(name) => corrupt(format!(
            "table `{name}` has the wrong kind: not a cairn-redb file of this schema"
        )),
        R::TypeDefinitionChanged { name, .. } => corrupt(format!(
            "type `{}` changed definition: not a cairn-redb file of this schema",
            name.name()
        )),
        R::DatabaseClosed => Error::Closed,
        R::DatabaseAlreadyOpen => Error::backend(
            STORE,
            true,
            "the database file is already open (by this process or another)",
        ),
        other => Error::backend(STORE, false, other),
    }
}

/// One failure reported to several callers (a failed group commit): each
/// gets its own [`Error`] built from the shared one.
pub(crate) fn map_shared(e: &Arc<redb::Error>) -> Error {
    use redb::Error as R;
    match &**e {
        R::Corrupted(reason) => corrupt(reason.clone()),
        R::Io(io) => Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        R::DatabaseClosed => Error::Closed,
        _ => Error::backend(STORE, false, SharedError(e.clone())),
    }
}

/// A redb error shared between the callers of one group commit.
#[derive(Debug)]
struct SharedError(Arc<redb::Error>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {}

/// A panic inside redb (it may panic on a file damaged outside redb),
/// reported as corrupt data instead of unwinding into the caller.
pub(crate) fn from_panic(payload: Box<dyn Any + Send>) -> Error {
    corrupt(format!(
        "redb panicked (the file is probably damaged): {}",
        panic_message(payload.as_ref())
    ))
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}
