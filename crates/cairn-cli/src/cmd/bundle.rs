//! `cairn export` and `cairn import`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use cairn::{AuthorId, ChangeId, ChangeMeta, DocId, RejectReason};
use serde_json::json;

use super::{PolicyArgs, StoreIdArg};
use crate::bundle::{self, Bundle};
use crate::error::{CliError, Context, Exit, Result, usage};
use crate::identity;
use crate::open::{Access, NetArgs, open_single};
use crate::output::{self, size};
use crate::{note, outln};

/// `cairn export`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = concat!("Examples:
  cairn export redb:notes.redb --out notes.cairn
  cairn export redb:notes.redb --doc shopping --to 9e0d… --out bob.cairn  # for bob's eyes
  cairn export redb:notes.redb --since 250 --out - | ssh host cairn import redb:notes.redb -


", crate::url_help!()))]
pub struct ExportArgs {
    /// The store to export from.
    pub url: String,
    /// The bundle file to write ("-": stdout, not a terminal).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Only this document (repeatable).
    #[arg(long = "doc", value_name = "DOC")]
    pub docs: Vec<String>,
    /// Only documents whose id starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub doc_prefix: Option<String>,
    /// Only changes after this sequence number (the SEQ column of `cairn log`).
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
    /// Seal the bundle to this peer id: only its identity can import it.
    #[arg(long, value_name = "PEER_ID")]
    pub to: Option<AuthorId>,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print one JSON object about what was written (see docs/cli.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sid: StoreIdArg,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Write a bundle.
pub async fn export(a: ExportArgs) -> Result<Exit> {
    let url = super::url(&a.url)?;
    let to_stdout = a.out.as_os_str() == "-";
    if to_stdout && std::io::stdout().is_terminal() {
        return usage("--out -: stdout is a terminal; redirect it to a file or a pipe");
    }
    if !to_stdout && a.out.exists() && !a.force {
        return usage(format!(
            "{} exists; pass --force to overwrite it",
            a.out.display()
        ));
    }
    let docs: Vec<DocId> = a
        .docs
        .iter()
        .map(DocId::new)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| CliError::usage(format!("--doc: {e}")))?;
    let s = open_single(url, Access::Read, a.sid.store_id.as_ref(), &a.net).await?;
    let since = a.since.unwrap_or(0);
    let mut ids: Vec<ChangeId> = Vec::new();
    let wanted = |m: &ChangeMeta| {
        (docs.is_empty() || docs.contains(&m.doc_id))
            && a.doc_prefix
                .as_deref()
                .is_none_or(|p| m.doc_id.as_str().starts_with(p))
    };
    let head = s.store.head().await.ctx(&s.url)?;
    let mut after = since.min(head.seq);
    while after < head.seq {
        let page = s.store.scan(after, 1000).await.ctx(&s.url)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        ids.extend(page.iter().filter(|i| wanted(&i.meta)).map(|i| i.meta.id));
    }
    let mut changes = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(256) {
        changes.extend(s.store.get_changes(chunk).await.ctx(&s.url)?);
    }
    let b = Bundle {
        store_id: s.store.store_id().clone(),
        changes,
    };
    let bytes = bundle::encode(&b, a.to.as_ref())?;
    if to_stdout {
        output::write_bytes(&bytes)?;
    } else {
        write_atomically(&a.out, &bytes)?;
    }
    let total: u64 = b.changes.iter().map(|c| c.payload.len() as u64).sum();
    let target = if to_stdout {
        "stdout".to_owned()
    } else {
        a.out.display().to_string()
    };
    if a.json && !to_stdout {
        output::json_line(&json!({
            "file": target,
            "store": b.store_id.as_str(),
            "changes": b.changes.len(),
            "payload_bytes": total,
            "bundle_bytes": bytes.len(),
            "sealed_to": a.to.map(|p| p.to_hex()),
        }))?;
    } else {
        note!(
            "exported {} change(s) ({}) of {} to {target}{}",
            b.changes.len(),
            size(total),
            b.store_id,
            a.to.map(|p| format!(", sealed to {}", p.short()))
                .unwrap_or_default()
        );
    }
    s.close().await;
    Ok(Exit::Ok)
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let what = || format!("cannot write {}", path.display());
    let mut tmp = tempfile::NamedTempFile::new_in(dir).ctx(what())?;
    std::io::Write::write_all(&mut tmp, bytes).ctx(what())?;
    tmp.persist(path).map_err(|e| e.error).ctx(what())?;
    Ok(())
}

/// `cairn import`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = concat!("Examples:
  cairn import redb:notes.redb notes.cairn
  cairn import redb:new.redb for-bob.cairn --create --trust 5f1c…
  cat notes.cairn | cairn import 'quic://127.0.0.1:4433/acme/notes?peer=5f1c…' - --json

Every change is checked (id, payload hash, and the policy flags) before anything is
appended; exit 3 if some were rejected.

", crate::url_help!()))]
pub struct ImportArgs {
    /// The store to import into.
    pub url: String,
    /// The bundle file ("-": stdin).
    pub file: PathBuf,
    /// Create the redb file if missing (with the bundle's store id).
    #[arg(long)]
    pub create: bool,
    /// Print one JSON object (see docs/cli.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub sid: StoreIdArg,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Read a bundle into a store.
pub async fn import(a: ImportArgs) -> Result<Exit> {
    let url = super::url(&a.url)?;
    let name = a.file.display().to_string();
    let bytes = if a.file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut buf)
            .ctx("reading stdin")?;
        buf
    } else {
        std::fs::read(&a.file).ctx(format!("cannot read {name}"))?
    };
    let key =
        match bundle::sealed_to(&bytes).map_err(|e| CliError::new(format!("{name}: {}", e.msg)))? {
            Some(_) => Some(identity::load(&a.net.key_path())?),
            None => None,
        };
    let b = bundle::decode(&bytes, key.as_ref())
        .map_err(|e| CliError::new(format!("{name}: {}", e.msg)))?;
    if let Some(flag) = &a.sid.store_id
        && flag != &b.store_id
    {
        return usage(format!(
            "{name} holds changes of store {}, not {flag} (--store-id)",
            b.store_id
        ));
    }
    let s = open_single(
        url,
        Access::Write { create: a.create },
        Some(&b.store_id),
        &a.net,
    )
    .await?;
    let verifier = a.policy.verifier();
    let mut rejected: Vec<(ChangeId, RejectReason)> = Vec::new();
    let mut good = Vec::new();
    for c in b.changes {
        if let Err(e) = c.check_integrity() {
            rejected.push((c.meta.id, RejectReason::Integrity(crate::error::cause(&e))));
        } else if let Err(r) = verifier.verify(&c.meta) {
            rejected.push((c.id(), r));
        } else {
            good.push(c);
        }
    }
    let total = good.len();
    let good = cairn::graph::topo_sort(good, |c| c.id(), |c| &c.meta.deps);
    let (mut new, mut dup) = (0usize, 0usize);
    let mut batch = Vec::new();
    let mut bytes_in_batch = 0usize;
    let flush = |batch: &mut Vec<cairn::Change>| {
        let batch = std::mem::take(batch);
        let store = s.store.clone();
        async move { store.append(batch).await }
    };
    for c in good {
        bytes_in_batch += c.payload.len();
        batch.push(c);
        if batch.len() >= 1000 || bytes_in_batch >= 4 << 20 {
            let out = flush(&mut batch)
                .await
                .map_err(|e| import_stopped(&s.url, new, total, &e))?;
            new += out.new.len();
            dup += out.duplicates;
            bytes_in_batch = 0;
        }
    }
    if !batch.is_empty() {
        let out = flush(&mut batch)
            .await
            .map_err(|e| import_stopped(&s.url, new, total, &e))?;
        new += out.new.len();
        dup += out.duplicates;
    }
    s.deliver(a.net.timeout())
        .await
        .map_err(|e| CliError::with_exit(e.msg, Exit::Partial))?;
    if a.json {
        output::json_line(&json!({
            "file": name,
            "url": s.url.to_string(),
            "store": b.store_id.as_str(),
            "new": new,
            "duplicates": dup,
            "rejected": rejected.iter().map(|(id, r)| json!({"id": id.to_hex(), "reason": r.to_string()})).collect::<Vec<_>>(),
        }))?;
    } else {
        outln!(
            "imported {name} into {}: {new} new, {dup} already present, {} rejected",
            s.url,
            rejected.len()
        );
        for (id, r) in &rejected {
            outln!("  rejected {id}: {r}");
        }
    }
    s.close().await;
    Ok(if rejected.is_empty() {
        Exit::Ok
    } else {
        Exit::Partial
    })
}

fn import_stopped(
    url: &crate::url::StoreUrl,
    new: usize,
    total: usize,
    e: &cairn::Error,
) -> CliError {
    let msg = format!(
        "{url}: import stopped after {new} of {total} change(s): {}",
        crate::error::cause(e)
    );
    if new > 0 {
        CliError::with_exit(msg, Exit::Partial)
    } else {
        CliError::new(msg)
    }
}
