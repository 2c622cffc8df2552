//! One error type for the CLI: every failure becomes one line on stderr.

use std::fmt;

/// A CLI failure with a human-readable message.
#[derive(Debug)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

macro_rules! from_err {
    ($($t:ty),*) => {$(
        impl From<$t> for CliError {
            fn from(e: $t) -> Self {
                CliError(e.to_string())
            }
        }
    )*};
}

from_err!(
    cairn::Error,
    cairn_tenant::TenantError,
    std::io::Error,
    automerge::AutomergeError,
    serde_json::Error,
    cairn::ParseIdError
);

/// Result with [`CliError`].
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// Fail with a message.
pub fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(CliError(msg.into()))
}
