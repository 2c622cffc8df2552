//! `cairn`: the command-line tool for Cairn stores.

// A binary: `pub` marks what modules share, not a public API.
#![allow(unreachable_pub)]

mod commands;
mod demo;
mod error;
mod identity;
mod url;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Cairn: append-only change stores that sync.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about = None)]
struct Cli {
    /// Identity file (an Ed25519 seed in hex). Default:
    /// $XDG_CONFIG_HOME/cairn/identity or ~/.config/cairn/identity.
    #[arg(long, global = true, env = "CAIRN_KEY")]
    key: Option<PathBuf>,

    /// Store id for local stores (memory:, redb:) that a URL does not name.
    #[arg(long, global = true, default_value = "cairn/default")]
    store_id: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the demo: a QUIC relay over redb and two devices of one tenant
    /// that edit offline, sync, and see each other's changes live.
    Demo {
        /// Notes each device writes while offline (shows progress).
        #[arg(long, default_value_t = 300)]
        notes: usize,
    },
    /// Serve stores over QUIC.
    Serve(commands::ServeArgs),
    /// Copy changes between two stores (and back with --both).
    Sync(commands::SyncArgs),
    /// List a store's changes in arrival order.
    Log(commands::LogArgs),
    /// Summarise a store.
    Stats(commands::StatsArgs),
    /// Manage this peer's identity.
    Id {
        #[command(subcommand)]
        action: commands::IdAction,
    },
    /// Run the conformance suite against a store URL and print its table.
    Conformance(commands::ConformanceArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> error::Result<ExitCode> {
    let key_path = cli.key.clone().unwrap_or_else(identity::default_path);
    let store_id = cairn::StoreId::new(&cli.store_id)?;
    let ctx = commands::Ctx { key_path, store_id };
    match cli.command {
        Command::Demo { notes } => demo::run(notes).await.map(|()| ExitCode::SUCCESS),
        Command::Serve(a) => commands::serve(&ctx, a).await.map(|()| ExitCode::SUCCESS),
        Command::Sync(a) => commands::sync(&ctx, a).await.map(|()| ExitCode::SUCCESS),
        Command::Log(a) => commands::log(&ctx, a).await.map(|()| ExitCode::SUCCESS),
        Command::Stats(a) => commands::stats(&ctx, a).await.map(|()| ExitCode::SUCCESS),
        Command::Id { action } => commands::id(&ctx, action).map(|()| ExitCode::SUCCESS),
        Command::Conformance(a) => commands::conformance(&ctx, a).await,
    }
}
