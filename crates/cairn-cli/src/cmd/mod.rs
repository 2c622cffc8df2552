//! The subcommands, one module each.

pub mod bundle;
pub mod cat;
pub mod check;
pub mod conformance;
pub mod id;
pub mod log;
pub mod put;
pub mod serve;
pub mod signal;
pub mod stats;
pub mod status;
pub mod sync;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;

use cairn::{AuthorId, StoreId, Verifier};

use crate::error::{CliError, Context, Exit, Result};
use crate::url::StoreUrl;

/// `--store-id`, on the commands that open stores.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreIdArg {
    /// The store id, for stores whose URL and file do not record one
    /// (memory:, a new redb file, webrtc:offer|answer). When a URL or file
    /// names one, this must agree with it.
    #[arg(long, value_name = "ID", value_parser = parse_store_id)]
    pub store_id: Option<StoreId>,
}

pub fn parse_store_id(s: &str) -> std::result::Result<StoreId, String> {
    crate::url::store_id(s).map_err(|e| e.0)
}

/// Parse a store URL argument.
pub fn url(s: &str) -> Result<StoreUrl> {
    Ok(StoreUrl::parse(s)?)
}

/// The acceptance policy for sync and import.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Accept only changes with a valid signature by their author.
    #[arg(long)]
    pub require_signed: bool,
    /// Accept only validly signed changes by this author (peer id;
    /// repeatable). Implies --require-signed.
    #[arg(long = "trust", value_name = "PEER_ID")]
    pub trust: Vec<AuthorId>,
}

impl PolicyArgs {
    /// The verifier these flags describe.
    pub fn verifier(&self) -> Arc<dyn Verifier> {
        if !self.trust.is_empty() {
            Arc::new(cairn::TrustedAuthors::new(self.trust.iter().copied()))
        } else if self.require_signed {
            Arc::new(cairn::RequireSignature)
        } else {
            Arc::new(cairn::AcceptAll)
        }
    }
}

/// Watch for SIGINT (Ctrl-C) and SIGTERM from now on (the handlers are
/// installed before this returns, so a signal sent right after the
/// command announces itself is never the default "terminate at once");
/// the future resolves with the signal's name.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = &'static str>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).ctx("cannot watch for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).ctx("cannot watch for SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}

/// `cairn man`: the page for `cairn`, or one page per command in `out`.
pub fn man(cmd: clap::Command, out: Option<PathBuf>) -> Result<Exit> {
    let Some(dir) = out else {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut buf)
            .map_err(|e| CliError::new(format!("man page: {e}")))?;
        crate::output::write_bytes(&buf)?;
        return Ok(Exit::Ok);
    };
    std::fs::create_dir_all(&dir).ctx(format!("cannot create {}", dir.display()))?;
    let mut pages = vec![("cairn".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("cairn-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut buf)
            .map_err(|e| CliError::new(format!("man page {name}: {e}")))?;
        std::fs::write(&path, buf).ctx(format!("cannot write {}", path.display()))?;
        crate::note!("wrote {}", path.display());
    }
    Ok(Exit::Ok)
}

/// Resolve a change id given in full (64 hex) or as a unique prefix of at
/// least 4 hex characters.
pub async fn resolve_id(
    store: &cairn::DynAppendOnlyStore,
    what: &StoreUrl,
    text: &str,
) -> Result<cairn::ChangeId> {
    let t = text.to_ascii_lowercase();
    if t.len() == 64 {
        return t
            .parse()
            .map_err(|e| CliError::usage(format!("change id {text:?}: {e}")));
    }
    if t.len() < 4 || t.len() > 64 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return crate::error::usage(format!(
            "change id {text:?}: give the 64 hex digits or a prefix of at least 4"
        ));
    }
    let ids = store.all_change_ids().await.ctx(what)?;
    let mut hits = ids.iter().filter(|id| id.to_hex().starts_with(&t));
    match (hits.next(), hits.next()) {
        (Some(id), None) => Ok(*id),
        (None, _) => crate::error::fail(format!("{what}: no change id starts with {t}")),
        (Some(_), Some(_)) => crate::error::usage(format!(
            "{what}: more than one change id starts with {t}; give more digits"
        )),
    }
}
