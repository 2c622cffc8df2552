//! `cairn check`.

use std::collections::HashSet;

use cairn::{ChangeId, ScanItem};
use serde_json::json;

use super::StoreIdArg;
use crate::error::{Exit, Result, cause};
use crate::open::{Access, NetArgs, open_single};
use crate::outln;
use crate::output::{self, thousands};

/// `cairn check`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = concat!("Examples:
  cairn check redb:notes.redb
  cairn check 'quic://127.0.0.1:4433/acme/notes?peer=5f1c…' --json

Checks: sequence numbers 1..=head without gaps; every change is held and passes its
integrity check (id and payload hash recomputed); signatures verify; the id list agrees
with the arrival order; for redb files, the file's own consistency check. Exit 1 on any
problem.

", crate::url_help!()))]
pub struct Args {
    /// The store to check.
    pub url: String,
    /// One JSON object (see docs/cli.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sid: StoreIdArg,
    #[command(flatten)]
    pub net: NetArgs,
}

const PAGE: usize = 256;
const SHOW: usize = 20;

/// Check a store.
pub async fn run(a: Args) -> Result<Exit> {
    let url = super::url(&a.url)?;
    let s = open_single(url, Access::Read, a.sid.store_id.as_ref(), &a.net).await?;
    let mut problems: Vec<String> = Vec::new();
    let (mut count, mut signed, mut bad_sigs, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut seen: HashSet<ChangeId> = HashSet::new();
    let head = match s.store.head().await {
        Ok(h) => Some(h),
        Err(e) => {
            problems.push(format!("head: {}", cause(&e)));
            None
        }
    };
    if let Some(head) = head {
        let mut after = 0u64;
        'scan: while after < head.seq {
            let page: Vec<ScanItem> = match s.store.scan(after, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!("scan after seq {after}: {}", cause(&e)));
                    break;
                }
            };
            if page.is_empty() {
                problems.push(format!(
                    "the head says seq {} but the scan ends at {after}",
                    head.seq
                ));
                break;
            }
            for item in &page {
                if item.seq != after + 1 {
                    problems.push(format!("sequence gap: {} follows {after}", item.seq));
                    break 'scan;
                }
                after = item.seq;
            }
            let ids: Vec<ChangeId> = page.iter().map(|i| i.meta.id).collect();
            match s.store.get_changes(&ids).await {
                Err(e) => problems.push(format!(
                    "reading changes {}..={}: {}",
                    page[0].seq,
                    after,
                    cause(&e)
                )),
                Ok(changes) => {
                    let got: HashSet<ChangeId> = changes.iter().map(|c| c.id()).collect();
                    for item in &page {
                        if !got.contains(&item.meta.id) {
                            problems.push(format!(
                                "seq {}: change {} is listed but not held",
                                item.seq, item.meta.id
                            ));
                        }
                    }
                    for c in &changes {
                        count += 1;
                        bytes += c.payload.len() as u64;
                        if let Err(e) = c.check_integrity() {
                            problems.push(cause(&e));
                        }
                        if c.meta.signature.is_some() {
                            signed += 1;
                            if !c.meta.signature_valid() {
                                bad_sigs += 1;
                                problems.push(format!(
                                    "change {}: the signature does not verify against its author {}",
                                    c.id(),
                                    c.meta.author
                                ));
                            }
                        }
                        if !seen.insert(c.id()) {
                            problems.push(format!("change {} appears twice", c.id()));
                        }
                    }
                }
            }
        }
        match s.store.all_change_ids().await {
            Ok(ids) => {
                let listed: HashSet<ChangeId> = ids.iter().copied().collect();
                if ids.windows(2).any(|w| w[0] >= w[1]) {
                    problems.push("the id list is not sorted or has repeats".into());
                }
                if listed != seen {
                    problems.push(format!(
                        "the id list ({}) differs from the arrival order ({})",
                        listed.len(),
                        seen.len()
                    ));
                }
            }
            Err(e) => problems.push(format!("listing ids: {}", cause(&e))),
        }
    }
    let consistency = match s.redb() {
        Some(r) => match r.check_consistency().await {
            Ok(rep) => Some(format!(
                "redb file consistent: {} change(s), {} document(s)",
                rep.changes, rep.docs
            )),
            Err(e) => {
                problems.push(format!("redb consistency: {}", cause(&e)));
                None
            }
        },
        None => None,
    };
    let ok = problems.is_empty();
    if a.json {
        output::json_line(&json!({
            "url": s.url.to_string(),
            "store": s.store.store_id().as_str(),
            "ok": ok,
            "changes": count,
            "signed": signed,
            "bad_signatures": bad_sigs,
            "payload_bytes": bytes,
            "problems": problems,
        }))?;
    } else {
        outln!(
            "{} change(s) checked ({} signed, {} unsigned), {}",
            thousands(count),
            thousands(signed),
            thousands(count - signed),
            output::size(bytes)
        );
        if let Some(c) = &consistency {
            outln!("{c}");
        }
        for p in problems.iter().take(SHOW) {
            outln!("problem: {p}");
        }
        if problems.len() > SHOW {
            outln!("… and {} more problems", problems.len() - SHOW);
        }
        if ok {
            outln!("ok: no problems found in {}", s.url);
        }
    }
    let url_text = s.url.to_string();
    s.close().await;
    if ok {
        Ok(Exit::Ok)
    } else {
        crate::error::fail(format!("{} problem(s) found in {url_text}", problems.len()))
    }
}
