//! `cairn log`.

use cairn::DocId;

use super::StoreIdArg;
use crate::error::{CliError, Context, Exit, Result};
use crate::open::{Access, NetArgs, open_single};
use crate::output::{self, meta_header, meta_json, meta_row};
use crate::{note, outln};

/// `cairn log`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = concat!("Examples:
  cairn log redb:notes.redb
  cairn log redb:notes.redb --reverse --limit 10 --full
  cairn log redb:notes.redb --since 250 --json | jq .id
  cairn log 'quic://127.0.0.1:4433/acme/notes?peer=5f1c…' --doc shopping

Columns: SEQ (arrival order in this store), ID, KIND, DOC, AUTHOR, DEPS (how many),
SIZE (payload bytes), SIGNED (yes, no, INVALID), CREATED (the author's clock, UTC).

", crate::url_help!()))]
pub struct Args {
    /// The store to list.
    pub url: String,
    /// Only this document, in dependency order (no SEQ column).
    #[arg(long, conflicts_with = "since")]
    pub doc: Option<String>,
    /// At most this many changes (0: all); says so on stderr when it stops early.
    #[arg(long, default_value_t = 1000)]
    pub limit: u64,
    /// Newest first.
    #[arg(long)]
    pub reverse: bool,
    /// Only changes after this sequence number (the SEQ column).
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
    /// Full 64-digit ids and authors instead of 12.
    #[arg(long)]
    pub full: bool,
    /// One JSON object per line instead of the table (see docs/cli.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sid: StoreIdArg,
    #[command(flatten)]
    pub net: NetArgs,
}

const PAGE: u64 = 500;

struct Printer {
    json: bool,
    full: bool,
    shown: u64,
}

impl Printer {
    fn row(&mut self, seq: Option<u64>, m: &cairn::ChangeMeta) -> Result<()> {
        if self.json {
            output::json_line(&meta_json(seq, m))?;
        } else {
            outln!("{}", meta_row(seq, m, self.full));
        }
        self.shown += 1;
        Ok(())
    }
}

/// List changes.
pub async fn run(a: Args) -> Result<Exit> {
    let url = super::url(&a.url)?;
    let doc = a
        .doc
        .as_deref()
        .map(DocId::new)
        .transpose()
        .map_err(|e| CliError::usage(format!("--doc: {e}")))?;
    let s = open_single(url, Access::Read, a.sid.store_id.as_ref(), &a.net).await?;
    let limit = if a.limit == 0 { u64::MAX } else { a.limit };
    let mut p = Printer {
        json: a.json,
        full: a.full,
        shown: 0,
    };
    if !a.json {
        outln!("{}", meta_header(a.full));
    }
    let (total, next) = if let Some(doc) = doc {
        let mut metas = s.store.changes_for_doc(&doc, false).await.ctx(&s.url)?;
        if a.reverse {
            metas.reverse();
        }
        for m in metas
            .iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
        {
            p.row(None, m)?;
        }
        (metas.len() as u64, None)
    } else {
        let head = s.store.head().await.ctx(&s.url)?;
        let since = a.since.unwrap_or(0).min(head.seq);
        let total = head.seq - since;
        if a.reverse {
            let mut cursor = head.seq;
            while cursor > since && p.shown < limit {
                let want = (cursor - since).min(PAGE).min(limit - p.shown);
                let start = cursor - want;
                let page = s.store.scan(start, want as usize).await.ctx(&s.url)?;
                if page.is_empty() {
                    break;
                }
                for item in page.iter().rev() {
                    p.row(Some(item.seq), &item.meta)?;
                }
                cursor = start;
            }
            (total, None)
        } else {
            let mut after = since;
            while p.shown < limit && after < head.seq {
                let want = (limit - p.shown).min(PAGE) as usize;
                let page = s.store.scan(after, want).await.ctx(&s.url)?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for item in &page {
                    p.row(Some(item.seq), &item.meta)?;
                }
            }
            (total, Some(after))
        }
    };
    if p.shown < total {
        let more = total - p.shown;
        match next {
            Some(seq) => note!(
                "(stopped at --limit {}: {more} more; `--since {seq}` continues, `--limit 0` shows all)",
                a.limit
            ),
            None => note!(
                "(stopped at --limit {}: {more} more; `--limit 0` shows all)",
                a.limit
            ),
        }
    } else if total == 0 {
        note!("(no changes)");
    }
    s.close().await;
    Ok(Exit::Ok)
}
