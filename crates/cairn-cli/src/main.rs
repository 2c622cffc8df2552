//! `cairn`: the command-line tool for Cairn stores. See docs/cli.md for
//! the exit codes and the `--json` formats.

// A binary: `pub` marks what modules share, not a public API.
#![allow(unreachable_pub)]

mod bundle;
mod cmd;
mod demo;
mod error;
mod identity;
mod open;
mod output;
mod url;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::error::{CliError, Exit};

/// Cairn: append-only, content-addressed change stores that sync.
///
/// Every change is an immutable record (a blake3 id over its header:
/// document, deps, Ed25519 author and signature, payload hash); a store only
/// grows; two stores sync by handing over what the other lacks. Stores live
/// in memory, in a redb file, or behind a peer (`cairn serve` over QUIC,
/// WebRTC rooms). Run `cairn help COMMAND` for examples.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about, after_long_help = EXIT_HELP)]
struct Cli {
    /// Print only errors (no notes, progress or warnings).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More log output on stderr: -v info, -vv debug, -vvv trace
    /// (RUST_LOG, when set, decides instead).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

const EXIT_HELP: &str = "\
Exit codes: 0 done; 1 failed; 2 bad usage (nothing done); 3 partly done (some changes were
rejected or not delivered; the output says how many). A closed output pipe (`| head`) ends
the command quietly with 0. Output: results on stdout (`--json` for scripts), notes and
errors on stderr, one line per error. NO_COLOR is respected; no colour when not a terminal.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Append a change (payload from a file or stdin); prints its id.
    Put(cmd::put::Args),
    /// Write a change's payload to stdout (or its metadata with --meta).
    Cat(cmd::cat::Args),
    /// List a store's changes in arrival order (newest first with --reverse).
    Log(cmd::log::Args),
    /// Summarise a store: head, changes, documents, authors, bytes.
    Stats(cmd::stats::Args),
    /// Show a store's head and capabilities without reading its changes.
    Status(cmd::status::Args),
    /// Copy changes from one store to another (and back with --both).
    Sync(cmd::sync::Args),
    /// Write a bundle file of changes (optionally encrypted to a peer).
    Export(cmd::bundle::ExportArgs),
    /// Read a bundle file into a store: checked, then a report of new,
    /// duplicate and rejected changes.
    Import(cmd::bundle::ImportArgs),
    /// Check every change's integrity and signature and the store's own
    /// consistency; exit 1 on any problem.
    Check(cmd::check::Args),
    /// Print new changes as they arrive, like `tail -f`.
    Watch(cmd::watch::Args),
    /// Serve stores over QUIC (and in WebRTC rooms) until SIGTERM or Ctrl-C.
    Serve(cmd::serve::Args),
    /// Run the WebRTC signaling server (rooms for webrtc:// URLs).
    Signal(cmd::signal::Args),
    /// Make or show an identity (your peer id).
    Id {
        #[command(subcommand)]
        action: cmd::id::Action,
    },
    /// Run the conformance suite against fresh stores and print its table.
    Conformance(cmd::conformance::Args),
    /// Run the demo: a QUIC relay over redb and two devices of one tenant
    /// that edit offline, sync, and see each other's changes live.
    Demo {
        /// Notes each device writes while offline (shows progress).
        #[arg(long, default_value_t = 300)]
        notes: usize,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (or write one page per command into --out DIR).
    Man {
        /// Write cairn.1, cairn-put.1, … into this directory.
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    // Panics are bugs or a damaged file caught below; never print Rust's
    // panic message or a backtrace, only one line (-vv logs the details).
    std::panic::set_hook(Box::new(|info| {
        tracing::debug!("panic: {info}");
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(msg));
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { Exit::Usage as u8 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    output::set_quiet(cli.quiet);
    if let Err(e) = init_logging(&cli) {
        return report(e);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return report(CliError::new(format!(
                "cannot start the async runtime: {e}"
            )));
        }
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(run(cli.command))
    }));
    // Do not wait for background tasks (a peer that never answers).
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(Ok(exit)) => ExitCode::from(exit as u8),
        Ok(Err(e)) => report(e),
        Err(_) => {
            let msg = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_default();
            report(CliError::new(format!(
                "internal error (a bug in cairn; please report it): {msg}"
            )))
        }
    }
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn report(e: CliError) -> ExitCode {
    if !e.is_quiet() {
        eprintln!("error: {}", e.msg);
    }
    ExitCode::from(e.exit as u8)
}

fn init_logging(cli: &Cli) -> error::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v)
            .map_err(|e| CliError::usage(format!("invalid RUST_LOG={v:?}: {e}")))?,
        _ => EnvFilter::new(match (cli.quiet, cli.verbose) {
            (true, _) => "off",
            // Libraries log connection trouble as warnings; the command's
            // own error line says what matters, so they stay quiet here.
            (false, 0) => "error",
            (false, 1) => "info",
            (false, 2) => "debug",
            (false, _) => "trace",
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(output::color_on_stderr())
        .try_init()
        .map_err(|e| CliError::new(format!("cannot start logging: {e}")))
}

async fn run(command: Command) -> error::Result<Exit> {
    match command {
        Command::Put(a) => cmd::put::run(a).await,
        Command::Cat(a) => cmd::cat::run(a).await,
        Command::Log(a) => cmd::log::run(a).await,
        Command::Stats(a) => cmd::stats::run(a).await,
        Command::Status(a) => cmd::status::run(a).await,
        Command::Sync(a) => cmd::sync::run(a).await,
        Command::Export(a) => cmd::bundle::export(a).await,
        Command::Import(a) => cmd::bundle::import(a).await,
        Command::Check(a) => cmd::check::run(a).await,
        Command::Watch(a) => cmd::watch::run(a).await,
        Command::Serve(a) => cmd::serve::run(a).await,
        Command::Signal(a) => cmd::signal::run(a).await,
        Command::Id { action } => cmd::id::run(action),
        Command::Conformance(a) => cmd::conformance::run(a).await,
        Command::Demo { notes } => demo::run(notes).await.map(|()| Exit::Ok),
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut buf);
            output::write_bytes(&buf)?;
            Ok(Exit::Ok)
        }
        Command::Man { out } => cmd::man(Cli::command(), out),
    }
}
