//! `cairn cat`.

use super::StoreIdArg;
use crate::error::{Context, Exit, Result, fail};
use crate::open::{Access, NetArgs, open_single};
use crate::outln;
use crate::output::{self, meta_json};

/// `cairn cat`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = concat!("Examples:
  cairn cat redb:notes.redb 3f2a9c > note.txt
  cairn cat redb:notes.redb 3f2a9c --meta
  cairn cat 'quic://127.0.0.1:4433/acme/notes?peer=5f1c…' 3f2a9c --json


", crate::url_help!()))]
pub struct Args {
    /// The store to read.
    pub url: String,
    /// The change id (64 hex digits, or a unique prefix of at least 4).
    pub id: String,
    /// Print the metadata instead of the payload.
    #[arg(long)]
    pub meta: bool,
    /// Print the metadata as JSON (implies --meta).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sid: StoreIdArg,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Write one change's payload or metadata.
pub async fn run(a: Args) -> Result<Exit> {
    let url = super::url(&a.url)?;
    let s = open_single(url, Access::Read, a.sid.store_id.as_ref(), &a.net).await?;
    let id = super::resolve_id(s.store.as_ref(), &s.url, &a.id).await?;
    let Some(change) = s.store.get_changes(&[id]).await.ctx(&s.url)?.pop() else {
        return fail(format!("{}: change {id} not found", s.url));
    };
    let m = &change.meta;
    if a.json {
        output::json_line(&meta_json(None, m))?;
    } else if a.meta {
        outln!("id            {}", m.id);
        outln!("kind          {}", m.kind);
        outln!("doc           {}", m.doc_id);
        outln!(
            "deps          {}",
            if m.deps.is_empty() {
                "(none)".to_owned()
            } else {
                m.deps
                    .iter()
                    .map(|d| d.to_hex())
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        );
        outln!(
            "created       {} ({} ms)",
            output::time(m.created_at),
            m.created_at
        );
        outln!("author        {}", m.author);
        outln!("key id        {}", m.key_id);
        outln!(
            "payload       {}, blake3 {}",
            output::size(m.payload_len),
            m.payload_hash.to_hex()
        );
        outln!(
            "signature     {}",
            match &m.signature {
                None => "none",
                Some(_) if m.signature_valid() => "valid (Ed25519, by the author)",
                Some(_) => "INVALID",
            }
        );
    } else {
        output::write_bytes(&change.payload)?;
    }
    s.close().await;
    Ok(Exit::Ok)
}
