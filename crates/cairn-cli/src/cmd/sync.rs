//! `cairn sync`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn::{SyncEvent, SyncOptions, SyncReport, TransferReport};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{PolicyArgs, StoreIdArg};
use crate::error::{CliError, Exit, Result, cause, usage};
use crate::open::{Access, NetArgs, open};
use crate::output::{self, size};
use crate::{note, outln};

/// `cairn sync`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = concat!("Examples:
  cairn sync --from redb:laptop.redb --to 'quic://127.0.0.1:4433/acme/notes?peer=5f1c…'
  cairn sync --from 'quic://127.0.0.1:4433/acme/notes?peer=5f1c…' --to redb:phone.redb --create
  cairn sync --from redb:a.redb --to redb:b.redb --both --trust 5f1c…   # only 5f1c…'s changes

A change is reported as pushed only once the target has stored it. If a sync stops
part-way it exits 3 and says how many changes were delivered; run it again to finish.

", crate::url_help!()))]
pub struct Args {
    /// Where changes come from.
    #[arg(long)]
    pub from: String,
    /// Where they go.
    #[arg(long)]
    pub to: String,
    /// Also copy what --to has and --from lacks.
    #[arg(long)]
    pub both: bool,
    /// Changes per round.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Create a missing redb file (the target's, or either with --both).
    #[arg(long)]
    pub create: bool,
    /// Print one JSON object instead of the report (see docs/cli.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub sid: StoreIdArg,
    #[command(flatten)]
    pub net: NetArgs,
}

fn transfer_json(t: &TransferReport) -> serde_json::Value {
    json!({
        "examined": t.examined,
        "changes": t.changes,
        "bytes": t.bytes,
        "rounds": t.rounds,
        "rejected": t.rejected.iter().map(|r| json!({"id": r.id.to_hex(), "reason": r.reason.to_string()})).collect::<Vec<_>>(),
    })
}

/// Copy changes.
pub async fn run(a: Args) -> Result<Exit> {
    let (from, to) = (super::url(&a.from)?, super::url(&a.to)?);
    if from == to && from != crate::url::StoreUrl::Memory {
        return usage("--from and --to are the same store");
    }
    let from_access = if a.both {
        Access::Write { create: a.create }
    } else {
        Access::Read
    };
    let mut opened = open(
        vec![
            (from, from_access),
            (to, Access::Write { create: a.create }),
        ],
        a.sid.store_id.as_ref(),
        &a.net,
    )
    .await?;
    let (Some(dst), Some(src)) = (opened.pop(), opened.pop()) else {
        return crate::error::fail("stores not opened");
    };
    let max_frame = [src.hello(), dst.hello()]
        .into_iter()
        .flatten()
        .map(|h| u64::from(h.max_frame))
        .min();
    let bar = if output::progress_allowed() && !a.json {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>5} [{bar:40}] {pos}/{len} examined, {msg}")
            .map_err(|e| CliError::new(e.to_string()))?
            .progress_chars("=> "),
    );
    let delivered = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let (b, d) = (bar.clone(), delivered.clone());
    let mut opts = SyncOptions {
        batch_changes: usize::try_from(a.batch).unwrap_or(1000),
        verifier: a.policy.verifier(),
        ..SyncOptions::default()
    };
    if let Some(f) = max_frame {
        opts.batch_bytes = opts.batch_bytes.min(f / 2).max(1);
    }
    let opts = opts.on_progress(move |ev| match ev {
        SyncEvent::Started { direction, total } => {
            b.reset();
            b.set_prefix(direction.to_string());
            b.set_length(*total);
        }
        SyncEvent::Progress {
            direction,
            examined,
            transferred,
            bytes,
            ..
        } => {
            b.set_position(*examined);
            b.set_message(format!("{transferred} copied, {bytes} bytes"));
            let i = usize::from(*direction == cairn::Direction::Push);
            d[i].store(*transferred, Ordering::Relaxed);
        }
        _ => {}
    });
    let result = if a.both {
        cairn::sync::sync(dst.store.as_ref(), src.store.as_ref(), &opts).await
    } else {
        cairn::sync::pull(dst.store.as_ref(), src.store.as_ref(), &opts).await
    };
    bar.finish_and_clear();
    // `pull(dst, src)`: "pulled" is from → to; "pushed" (with --both) is to → from.
    let report: SyncReport = match result {
        Ok(r) => r,
        Err(e) => {
            let moved = delivered[0].load(Ordering::Relaxed) + delivered[1].load(Ordering::Relaxed);
            let msg = format!(
                "sync from {} to {} stopped: {}; {moved} change(s) were delivered before that (run it again to finish)",
                src.url,
                dst.url,
                cause(&e)
            );
            return Err(if moved > 0 {
                CliError::with_exit(msg, Exit::Partial)
            } else {
                CliError::new(msg)
            });
        }
    };
    if let Err(e) = dst.deliver(a.net.timeout()).await {
        return Err(CliError::with_exit(e.msg, Exit::Partial));
    }
    if a.both {
        src.deliver(a.net.timeout())
            .await
            .map_err(|e| CliError::with_exit(e.msg, Exit::Partial))?;
    }
    let rejected = report.pulled.rejected.len() + report.pushed.rejected.len();
    if a.json {
        output::json_line(&json!({
            "from": src.url.to_string(),
            "to": dst.url.to_string(),
            "store": dst.store.store_id().as_str(),
            "forward": transfer_json(&report.pulled),
            "back": a.both.then(|| transfer_json(&report.pushed)),
            "rejected": rejected,
            "elapsed_ms": report.elapsed.as_secs_f64() * 1000.0,
        }))?;
    } else {
        let line = |t: &TransferReport,
                    from: &dyn std::fmt::Display,
                    to: &dyn std::fmt::Display| {
            format!(
                "copied {} change(s) ({}) from {from} to {to}; {} examined, {} rejected, {} round(s)",
                t.changes,
                size(t.bytes),
                t.examined,
                t.rejected.len(),
                t.rounds
            )
        };
        outln!("{}", line(&report.pulled, &src.url, &dst.url));
        if a.both {
            outln!("{}", line(&report.pushed, &dst.url, &src.url));
        }
        for r in report.pulled.rejected.iter().chain(&report.pushed.rejected) {
            outln!("  rejected {}: {}", r.id, r.reason);
        }
        note!("done in {:.1?}", report.elapsed);
    }
    src.close().await;
    dst.close().await;
    if rejected > 0 {
        note!("{rejected} change(s) were rejected by the policy or their integrity check");
        return Ok(Exit::Partial);
    }
    Ok(Exit::Ok)
}
