//! `cairn watch`.

use std::collections::HashSet;

use cairn::{ChangeId, ChangeStream};
use futures::StreamExt;

use super::StoreIdArg;
use crate::error::{Context, Exit, Result, usage};
use crate::open::{Access, NetArgs, Opened, open_single};
use crate::output::{self, meta_header, meta_json, meta_row};
use crate::url::StoreUrl;
use crate::{note, outln};

/// `cairn watch`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = concat!("Examples:
  cairn watch 'quic://127.0.0.1:4433/acme/notes?peer=5f1c…'
  cairn watch 'quic://127.0.0.1:4433/acme/notes?peer=5f1c…' --since 0 --json  # all, then live
  cairn watch webrtc://127.0.0.1:8765/ABC-DEF/acme/notes --count 1

Runs until Ctrl-C or SIGTERM (or --count changes). A redb file or memory: store gets
no changes from elsewhere while this command holds it, so watch a server instead.

", crate::url_help!()))]
pub struct Args {
    /// The store to follow (quic:// or webrtc://).
    pub url: String,
    /// First print the changes after this sequence number (0: all).
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
    /// Stop after printing this many changes.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Full 64-digit ids and authors.
    #[arg(long)]
    pub full: bool,
    /// One JSON object per line (see docs/cli.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sid: StoreIdArg,
    #[command(flatten)]
    pub net: NetArgs,
}

/// How many of the newest backlog ids to remember, to skip notifications
/// of changes the backlog already printed.
const RECENT: u64 = 4096;

async fn subscribe(s: &Opened) -> Result<ChangeStream> {
    match s.remote() {
        Some(c) => c.subscribe().await.ctx(&s.url),
        None => s.store.subscribe().await.ctx(&s.url),
    }
}

/// Follow a store.
pub async fn run(a: Args) -> Result<Exit> {
    let url = super::url(&a.url)?;
    if matches!(url, StoreUrl::Memory | StoreUrl::Redb(_)) {
        return usage(format!(
            "{url}: nothing else can append to it while watch holds it; watch the server that serves it (quic://… or ws://…) instead"
        ));
    }
    let s = open_single(url, Access::Read, a.sid.store_id.as_ref(), &a.net).await?;
    let stop = super::shutdown_signal()?;
    tokio::pin!(stop);
    let mut sub = subscribe(&s).await?;
    let head = s.store.head().await.ctx(&s.url)?;
    let limit = a.count.unwrap_or(u64::MAX);
    let mut shown = 0u64;
    let print = |seq: u64, m: &cairn::ChangeMeta| -> Result<()> {
        if a.json {
            output::json_line(&meta_json(Some(seq), m))
        } else {
            outln!("{}", meta_row(Some(seq), m, a.full));
            Ok(())
        }
    };
    if !a.json {
        outln!("{}", meta_header(a.full));
    }
    let mut recent: HashSet<ChangeId> = HashSet::new();
    if let Some(since) = a.since {
        let mut after = since.min(head.seq);
        while after < head.seq && shown < limit {
            let page = s.store.scan(after, 500).await.ctx(&s.url)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for item in &page {
                if shown >= limit {
                    break;
                }
                print(item.seq, &item.meta)?;
                shown += 1;
                if item.seq + RECENT > head.seq {
                    recent.insert(item.meta.id);
                }
            }
        }
    }
    note!("watching {} (from seq {}; Ctrl-C stops)", s.url, head.seq);
    let mut seq = head.seq;
    while shown < limit {
        let next = tokio::select! {
            sig = &mut stop => {
                note!("stopped ({sig})");
                break;
            }
            n = sub.next() => n,
        };
        let m = match next {
            None => {
                return crate::error::fail(format!("{}: the subscription ended", s.url));
            }
            Some(r) => r.ctx(&s.url)?,
        };
        // Changes appended between subscribing and reading the head come
        // first; the backlog printed them already.
        if recent.remove(&m.id) {
            continue;
        }
        seq += 1;
        print(seq, &m)?;
        shown += 1;
    }
    drop(sub);
    s.close().await;
    Ok(Exit::Ok)
}
