//! `cairn status`.

use std::time::{Duration, Instant};

use serde_json::json;

use super::StoreIdArg;
use super::stats::{caps_json, caps_words, location};
use crate::error::{Context, Exit, Result};
use crate::open::{Access, NetArgs, open_single};
use crate::outln;
use crate::output::{self, head_json};

/// `cairn status`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = concat!("Examples:
  cairn status 'quic://127.0.0.1:4433/acme/notes?peer=5f1c…'
  cairn status --wait --timeout 30 'quic://127.0.0.1:4433/acme/notes?peer=5f1c…'   # in scripts
  cairn status redb:notes.redb --json

A plain connection: nothing is downloaded or cached.

", crate::url_help!()))]
pub struct Args {
    /// The store.
    pub url: String,
    /// Keep trying until the store answers or --timeout passes (for
    /// scripts that start a server, then use it).
    #[arg(long)]
    pub wait: bool,
    /// One JSON object (see docs/cli.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sid: StoreIdArg,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Show head and capabilities.
pub async fn run(a: Args) -> Result<Exit> {
    let url = super::url(&a.url)?;
    let deadline = Instant::now() + a.net.timeout();
    let s = loop {
        match open_single(url.clone(), Access::Read, a.sid.store_id.as_ref(), &a.net).await {
            Ok(s) => break s,
            Err(e) if a.wait && e.transient && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let start = Instant::now();
    let head = s.store.head().await.ctx(&s.url)?;
    let rtt = start.elapsed();
    let caps = s.store.capabilities();
    if a.json {
        let hello = s
            .hello()
            .map(|h| json!({ "protocol": h.version, "max_frame": h.max_frame }));
        output::json_line(&json!({
            "url": s.url.to_string(),
            "store": s.store.store_id().as_str(),
            "location": location(&s),
            "server_peer": s.server_peer().map(|(_, p)| p.to_hex()),
            "head": head_json(&head),
            "capabilities": caps_json(&caps),
            "protocol": hello,
            "round_trip_ms": rtt.as_secs_f64() * 1000.0,
        }))?;
    } else {
        outln!("store        {}", s.store.store_id());
        outln!("location     {}", location(&s));
        outln!("head         seq {}, epoch {:016x}", head.seq, head.epoch);
        outln!("durable      {}", if caps.durable { "yes" } else { "no" });
        outln!("indexes      {}", caps_words(&caps));
        if let Some(h) = s.hello() {
            outln!(
                "protocol     version {}, frames up to {}",
                h.version,
                output::size(u64::from(h.max_frame))
            );
            outln!("round trip   {:.1} ms", rtt.as_secs_f64() * 1000.0);
        }
    }
    s.close().await;
    Ok(Exit::Ok)
}
