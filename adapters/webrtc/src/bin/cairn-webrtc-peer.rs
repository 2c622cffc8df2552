//! `cairn-webrtc-peer`: join a room with an in-memory store, optionally
//! fill it, and report when it holds a given number of changes. A demo
//! tool, and the Rust side of the browser test.

use std::sync::Arc;
use std::time::Duration;

use cairn::{AppendOnlyStore, ChangeBuilder, ChangeKind, DocId, Keypair, StoreId};
use cairn_memory::MemoryStore;
use cairn_webrtc::{Acl, RoomCode, WebRtcStore, WebRtcStoreOptions, WsSignaling};
use clap::Parser;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

/// Join a cairn-webrtc room with an in-memory store.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Signaling server, `ws://host:port`.
    #[arg(long)]
    signal: String,
    /// Room code (`ABC-DEF`).
    #[arg(long)]
    room: RoomCode,
    /// Room password.
    #[arg(long)]
    password: Option<String>,
    /// Store id.
    #[arg(long, default_value = "demo/notes")]
    store: String,
    /// Make this many signed changes first.
    #[arg(long, default_value_t = 0)]
    generate: usize,
    /// Payload bytes of the first generated change (the others are small).
    #[arg(long, default_value_t = 64)]
    first_payload: usize,
    /// Print `holds N` once the store holds at least this many changes.
    #[arg(long)]
    expect: Option<usize>,
    /// Address to bind (`0.0.0.0`: every interface's).
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Give up (exit 1) after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let key = Keypair::generate();
    let cache = Arc::new(MemoryStore::new(StoreId::new(args.store.clone())?));
    let mut batch = Vec::with_capacity(args.generate);
    for i in 0..args.generate {
        let size = if i == 0 { args.first_payload } else { 64 };
        let mut payload = format!("rust change {i} ").into_bytes();
        payload.resize(size.max(payload.len()), b'r');
        batch.push(
            ChangeBuilder::new(ChangeKind::Create, DocId::new(format!("rust-{i}"))?)
                .created_at(i as u64)
                .payload(payload)
                .sign(&key)?,
        );
    }
    cache.append(batch).await?;
    let store = WebRtcStore::new(cache.clone(), &key, Arc::new(Acl::open()), {
        let mut o = WebRtcStoreOptions::default();
        o.bind_ip = args.bind;
        o
    });
    println!("peer {}", key.author().to_hex());
    let sig =
        WsSignaling::connect(&args.signal, &args.room, args.password.as_deref(), &key).await?;
    store.join(sig);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    if let Some(want) = args.expect {
        let mut sub = cache.subscribe().await?;
        let mut held = cache.head().await?.seq as usize;
        while held < want {
            match tokio::time::timeout_at(deadline, sub.next()).await {
                Ok(Some(Ok(_))) => held += 1,
                Ok(_) => return Err("subscription ended".into()),
                Err(_) => {
                    eprintln!("timed out holding {held} of {want} changes");
                    std::process::exit(1);
                }
            }
        }
        println!("holds {held}");
    }
    // Stay in the room until stdin closes, ctrl-c, or the deadline.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = tokio::time::sleep_until(deadline) => {}
        _ = async { while let Ok(n) = stdin.read(&mut buf).await { if n == 0 { break } } } => {}
    }
    store.close().await;
    Ok(())
}
