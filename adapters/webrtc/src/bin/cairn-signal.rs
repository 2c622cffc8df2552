//! `cairn-signal`: a self-hostable signaling server for cairn-webrtc rooms.

use std::net::SocketAddr;

use cairn_webrtc::{SignalingOptions, SignalingServer};
use clap::Parser;

/// Relay WebRTC offers and answers between the peers of Cairn rooms.
/// Stores nothing; never sees the data.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8765", env = "CAIRN_SIGNAL_LISTEN")]
    listen: SocketAddr,
    /// Most peers per room.
    #[arg(long, default_value_t = 16)]
    max_peers: usize,
    /// Most messages per second per client.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Most connections at once from one address (IPv6: per /64).
    #[arg(long, default_value_t = 32)]
    max_per_ip: usize,
    /// Seconds a member may stay silent (it is pinged after half of it).
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let server = SignalingServer::bind(
        args.listen,
        SignalingOptions {
            max_peers_per_room: args.max_peers,
            messages_per_second: args.rate,
            max_connections_per_ip: args.max_per_ip,
            idle_timeout: std::time::Duration::from_secs(args.idle_secs.max(1)),
            ..SignalingOptions::default()
        },
    )
    .await?;
    // Tests and scripts read this line to learn the port.
    println!("listening {}", server.url());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
