//! `cairn put`.

use std::collections::HashSet;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use cairn::{ChangeBuilder, ChangeId, ChangeKind, DocId, KeyId};
use serde_json::json;

use super::StoreIdArg;
use crate::error::{CliError, Context, Exit, Result, usage};
use crate::open::{Access, NetArgs, open_single};
use crate::{identity, outln};

/// `cairn put`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = concat!("Examples:
  echo 'buy milk' | cairn put redb:notes.redb --create --store-id acme/notes --doc shopping
  cairn put 'quic://relay.example:4433/acme/notes?peer=5f1c…' photo.jpg --doc album-7

", crate::url_help!()))]
pub struct Args {
    /// The store to append to.
    pub url: String,
    /// The payload file ("-" or none: stdin).
    pub file: Option<PathBuf>,
    /// The document the change belongs to.
    #[arg(long)]
    pub doc: String,
    /// What the change does [default: create for a new document, else change].
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    /// A change this one depends on (64 hex digits; repeatable)
    /// [default: the document's current heads].
    #[arg(long = "dep", value_name = "ID")]
    pub deps: Vec<ChangeId>,
    /// Which key encrypts the payload (recorded, not used by cairn).
    #[arg(long, default_value = "default")]
    pub key_id: String,
    /// Create the redb file if it does not exist (needs a store id).
    #[arg(long)]
    pub create: bool,
    /// Print a JSON object instead of the id.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sid: StoreIdArg,
    #[command(flatten)]
    pub net: NetArgs,
}

/// `--kind`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// The first change of a document.
    Create,
    /// An edit.
    Change,
    /// A full snapshot; loading can start here.
    Snapshot,
    /// Marks the document deleted.
    Delete,
}

impl From<Kind> for ChangeKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Create => ChangeKind::Create,
            Kind::Change => ChangeKind::Change,
            Kind::Snapshot => ChangeKind::Snapshot,
            Kind::Delete => ChangeKind::Delete,
        }
    }
}

fn read_payload(file: Option<&PathBuf>) -> Result<Vec<u8>> {
    match file {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::read(p).ctx(format!("cannot read {}", p.display()))
        }
        _ => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return usage("no payload: give a FILE, or pipe it in (echo hello | cairn put …)");
            }
            let mut buf = Vec::new();
            stdin.lock().read_to_end(&mut buf).ctx("reading stdin")?;
            Ok(buf)
        }
    }
}

/// Append one signed change.
pub async fn run(a: Args) -> Result<Exit> {
    let url = super::url(&a.url)?;
    let doc = DocId::new(&a.doc).map_err(|e| CliError::usage(format!("--doc: {e}")))?;
    let key_id = KeyId::new(&a.key_id).map_err(|e| CliError::usage(format!("--key-id: {e}")))?;
    let key = identity::load(&a.net.key_path())?;
    let payload = read_payload(a.file.as_ref())?;
    let s = open_single(
        url,
        Access::Write { create: a.create },
        a.sid.store_id.as_ref(),
        &a.net,
    )
    .await?;
    let existing = s.store.changes_for_doc(&doc, false).await.ctx(&s.url)?;
    let deps = if a.deps.is_empty() {
        let referenced: HashSet<ChangeId> = existing.iter().flat_map(|m| m.deps.clone()).collect();
        existing
            .iter()
            .map(|m| m.id)
            .filter(|id| !referenced.contains(id))
            .collect()
    } else {
        a.deps.clone()
    };
    let kind = a
        .kind
        .map(ChangeKind::from)
        .unwrap_or(if existing.is_empty() {
            ChangeKind::Create
        } else {
            ChangeKind::Change
        });
    let change = ChangeBuilder::new(kind, doc.clone())
        .deps(deps.clone())
        .key_id(key_id)
        .payload(payload)
        .sign(&key)
        .map_err(|e| {
            CliError::usage(format!(
                "cannot build the change: {}",
                crate::error::cause(&e)
            ))
        })?;
    let id = change.id();
    let len = change.payload.len();
    let out = s.store.append(vec![change]).await.ctx(&s.url)?;
    s.deliver(a.net.timeout()).await?;
    let new = !out.new.is_empty();
    if a.json {
        crate::output::json_line(&json!({
            "id": id.to_hex(),
            "new": new,
            "store": s.store.store_id().as_str(),
            "doc": doc.as_str(),
            "kind": kind.to_string(),
            "deps": deps.iter().map(|d| d.to_hex()).collect::<Vec<_>>(),
            "payload_len": len,
            "author": key.author().to_hex(),
        }))?;
    } else {
        outln!("{id}");
        if !new {
            crate::note!(
                "(already in {}: the same change was appended before)",
                s.url
            );
        }
    }
    s.close().await;
    Ok(Exit::Ok)
}
