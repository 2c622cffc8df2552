//! `cairn stats`.

use std::collections::{BTreeMap, HashSet};

use cairn::Capabilities;
use serde_json::json;

use super::StoreIdArg;
use crate::error::{Context, Exit, Result};
use crate::open::{Access, NetArgs, Opened, open_single};
use crate::outln;
use crate::output::{self, head_json, size, thousands};

/// `cairn stats`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = concat!("Examples:
  cairn stats redb:notes.redb
  cairn stats 'quic://127.0.0.1:4433/acme/notes?peer=5f1c…' --json

Reads every change's metadata (not the payloads); `cairn status` reads only the head.

", crate::url_help!()))]
pub struct Args {
    /// The store to summarise.
    pub url: String,
    /// One JSON object instead of the table (see docs/cli.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sid: StoreIdArg,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Where a store lives, in words.
pub fn location(s: &Opened) -> String {
    if let Some((server, peer)) = s.server_peer() {
        return format!("remote: {server}, server peer {peer}");
    }
    if let Some(w) = s.webrtc() {
        return format!("remote: {} paired WebRTC peer(s)", w.peers().borrow().len());
    }
    if let Some(r) = s.redb() {
        return format!(
            "redb file {}{}",
            r.path().display(),
            if r.is_read_only() {
                " (opened read-only)"
            } else {
                ""
            }
        );
    }
    "memory (gone when the command ends)".into()
}

/// Capabilities in words.
pub fn caps_words(c: &Capabilities) -> String {
    let yes = |b: bool| if b { "native" } else { "by scanning" };
    format!(
        "find-new {}, document index {}, set reconciliation {}",
        yes(c.native_find_new),
        yes(c.native_doc_index),
        yes(c.native_reconciliation)
    )
}

/// Capabilities as JSON.
pub fn caps_json(c: &Capabilities) -> serde_json::Value {
    json!({
        "native_find_new": c.native_find_new,
        "native_doc_index": c.native_doc_index,
        "native_reconciliation": c.native_reconciliation,
        "durable": c.durable,
        "remote": c.remote,
    })
}

/// Summarise a store.
pub async fn run(a: Args) -> Result<Exit> {
    let url = super::url(&a.url)?;
    let s = open_single(url, Access::Read, a.sid.store_id.as_ref(), &a.net).await?;
    let head = s.store.head().await.ctx(&s.url)?;
    let mut docs = HashSet::new();
    let mut authors = HashSet::new();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let (mut bytes, mut signed, mut count) = (0u64, 0u64, 0u64);
    cairn::scan_all(s.store.as_ref(), |m| {
        count += 1;
        bytes += m.payload_len;
        signed += u64::from(m.signature.is_some());
        *kinds.entry(m.kind.to_string()).or_default() += 1;
        docs.insert(m.doc_id);
        authors.insert(m.author);
    })
    .await
    .ctx(&s.url)?;
    let caps = s.store.capabilities();
    if a.json {
        output::json_line(&json!({
            "url": s.url.to_string(),
            "store": s.store.store_id().as_str(),
            "location": location(&s),
            "head": head_json(&head),
            "changes": count,
            "signed": signed,
            "documents": docs.len(),
            "authors": authors.len(),
            "payload_bytes": bytes,
            "kinds": kinds,
            "capabilities": caps_json(&caps),
        }))?;
    } else {
        outln!("store        {}", s.store.store_id());
        outln!("location     {}", location(&s));
        outln!(
            "changes      {} ({} signed, {} unsigned)",
            thousands(count),
            thousands(signed),
            thousands(count - signed)
        );
        outln!("documents    {}", thousands(docs.len() as u64));
        outln!("authors      {}", thousands(authors.len() as u64));
        outln!("payloads     {}", size(bytes));
        if !kinds.is_empty() {
            let k: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
            outln!("kinds        {}", k.join(", "));
        }
        outln!("head         seq {}, epoch {:016x}", head.seq, head.epoch);
        outln!("durable      {}", if caps.durable { "yes" } else { "no" });
        outln!("indexes      {}", caps_words(&caps));
    }
    s.close().await;
    Ok(Exit::Ok)
}
