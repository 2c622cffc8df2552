//! `cairn signal`: the WebRTC signaling server.

use cairn_webrtc::{SignalingOptions, SignalingServer};

use crate::error::{Context, Exit, Result};
use crate::{note, outln};

/// `cairn signal`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  cairn signal --listen 127.0.0.1:8765
  cairn signal --listen 0.0.0.0:8765 --max-peers 32

Relays WebRTC offers and answers between the peers of a room (ROOM codes like ABC-DEF);
stores nothing and never sees the data. Stores then use
webrtc://HOST:PORT/ROOM/STORE_ID. Stops cleanly on SIGTERM or Ctrl-C.")]
pub struct Args {
    /// Address to listen on (HOST:PORT; host names are resolved).
    #[arg(long, default_value = "127.0.0.1:8765", env = "CAIRN_SIGNAL_LISTEN")]
    pub listen: String,
    /// Most peers per room.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(2..=10_000))]
    pub max_peers: u64,
    /// Most messages per second per client.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
}

/// Run until a signal.
pub async fn run(a: Args) -> Result<Exit> {
    let stop = super::shutdown_signal()?;
    let addr = super::serve::resolve_listen(&a.listen).await?;
    let server = SignalingServer::bind(
        addr,
        SignalingOptions {
            max_peers_per_room: usize::try_from(a.max_peers).unwrap_or(16),
            messages_per_second: a.rate,
            ..SignalingOptions::default()
        },
    )
    .await
    .ctx(format!("cannot listen on {addr}"))?;
    eprintln!("listening on {} (signaling)", server.url());
    outln!("{}", server.url());
    let sig = stop.await;
    note!("shutting down ({sig})");
    server.shutdown().await;
    note!("stopped");
    Ok(Exit::Ok)
}
