//! One error type for the CLI: every failure is one line on stderr and an
//! exit code (see [`Exit`]).

use std::fmt;

/// The exit codes, documented in docs/cli.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Ok = 0,
    /// 1: failed (nothing, or nothing certain, was done).
    Failure = 1,
    /// 2: bad usage: a bad flag, URL or argument; nothing was done.
    Usage = 2,
    /// 3: partly done: some changes were rejected or not delivered (the
    /// output says which and how many).
    Partial = 3,
}

/// A CLI failure: the message (one line) and the exit code.
#[derive(Debug)]
pub struct CliError {
    /// What to print after `error: ` (empty for a quiet exit).
    pub msg: String,
    /// How to exit.
    pub exit: Exit,
    /// Whether trying again later may help (nothing listening yet, no
    /// answer in time), for `status --wait`.
    pub transient: bool,
}

impl CliError {
    /// A failure (exit 1).
    pub fn new(msg: impl Into<String>) -> Self {
        CliError {
            msg: msg.into(),
            exit: Exit::Failure,
            transient: false,
        }
    }

    /// A failure that may pass (exit 1).
    pub fn transient(msg: impl Into<String>) -> Self {
        CliError {
            transient: true,
            ..CliError::new(msg)
        }
    }

    /// A failure with another exit code.
    pub fn with_exit(msg: impl Into<String>, exit: Exit) -> Self {
        CliError {
            exit,
            ..CliError::new(msg)
        }
    }

    /// Bad usage (exit 2).
    pub fn usage(msg: impl Into<String>) -> Self {
        CliError {
            exit: Exit::Usage,
            ..CliError::new(msg)
        }
    }

    /// Stdout was closed by the reader (`| head`): exit quietly.
    pub fn broken_pipe() -> Self {
        CliError {
            exit: Exit::Ok,
            ..CliError::new(String::new())
        }
    }

    /// Whether this is the quiet broken-pipe exit.
    pub fn is_quiet(&self) -> bool {
        self.msg.is_empty() && self.exit == Exit::Ok
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for CliError {}

/// The real cause of a Cairn error, in words, with its source chain.
pub fn cause(e: &cairn::Error) -> String {
    use cairn::Error as E;
    let mut s = match e {
        E::NotFound { what } => format!("{what} not found"),
        E::Io(io) => io_cause(io),
        E::Backend { store, source, .. } => {
            let mut s = format!("{store}: {source}");
            let mut next = source.source();
            while let Some(c) = next {
                let t = c.to_string();
                if !s.contains(&t) {
                    s.push_str(": ");
                    s.push_str(&t);
                }
                next = c.source();
            }
            s
        }
        other => other.to_string(),
    };
    if s.ends_with('.') {
        s.pop();
    }
    s
}

/// An I/O error without Rust's "(os error N)" suffix.
pub fn io_cause(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// Add what an error concerns ("redb:./x.redb", "quic://…") to it.
pub trait Context<T> {
    /// `what: cause`.
    fn ctx(self, what: impl fmt::Display) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, cairn::Error> {
    fn ctx(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| CliError::new(format!("{what}: {}", cause(&e))))
    }
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn ctx(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                CliError::broken_pipe()
            } else {
                CliError::new(format!("{what}: {}", io_cause(&e)))
            }
        })
    }
}

impl From<cairn::Error> for CliError {
    fn from(e: cairn::Error) -> Self {
        CliError::new(cause(&e))
    }
}

impl From<cairn_tenant::TenantError> for CliError {
    fn from(e: cairn_tenant::TenantError) -> Self {
        CliError::new(e.to_string())
    }
}

impl From<automerge::AutomergeError> for CliError {
    fn from(e: automerge::AutomergeError) -> Self {
        CliError::new(e.to_string())
    }
}

impl From<crate::url::UrlError> for CliError {
    fn from(e: crate::url::UrlError) -> Self {
        CliError::usage(e.0)
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> Self {
        CliError::new(format!("JSON: {e}"))
    }
}

/// Writing to stdout or stderr: a broken pipe is the quiet exit.
impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::broken_pipe()
        } else {
            CliError::new(format!("writing output: {}", io_cause(&e)))
        }
    }
}

/// Result with [`CliError`].
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// Fail with a message (exit 1).
pub fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(CliError::new(msg))
}

/// Fail with a usage message (exit 2).
pub fn usage<T>(msg: impl Into<String>) -> Result<T> {
    Err(CliError::usage(msg))
}
