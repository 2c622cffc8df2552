//! `cairn id`.

use std::path::PathBuf;

use crate::error::{Exit, Result};
use crate::identity;
use crate::output::stdout_is_terminal;
use crate::{note, outln};

/// `cairn id new|show`.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Create a new identity (refuses to overwrite one); prints the peer id.
    #[command(after_help = "Examples:
  cairn id new                  # yours, at ~/.config/cairn/identity
  cairn id new --server         # a server's host key, at ~/.config/cairn/server-identity
  cairn id new --key ./bob.key  # a second peer on this machine (then: --key ./bob.key or CAIRN_KEY)")]
    New {
        #[command(flatten)]
        which: Which,
    },
    /// Show the peer id (with a QR code on a terminal).
    #[command(after_help = "Examples:
  cairn id show --plain
  cairn id show --server --plain   # the peer id that clients put in ?peer=")]
    Show {
        /// Print only the peer id.
        #[arg(long)]
        plain: bool,
        /// Print the QR code even when stdout is not a terminal.
        #[arg(long, conflicts_with = "plain")]
        qr: bool,
        #[command(flatten)]
        which: Which,
    },
}

/// Which identity file.
#[derive(Debug, clap::Args)]
pub struct Which {
    /// The identity file [default: $XDG_CONFIG_HOME/cairn/identity, i.e.
    /// ~/.config/cairn/identity].
    #[arg(
        long,
        env = "CAIRN_KEY",
        value_name = "FILE",
        conflicts_with = "server"
    )]
    key: Option<PathBuf>,
    /// The server's host key instead ($CAIRN_SERVER_KEY, or
    /// ~/.config/cairn/server-identity), as `cairn serve` uses it.
    #[arg(long)]
    server: bool,
}

impl Which {
    fn path(&self) -> PathBuf {
        if self.server {
            std::env::var_os("CAIRN_SERVER_KEY")
                .map(PathBuf::from)
                .unwrap_or_else(identity::default_server_path)
        } else {
            self.key.clone().unwrap_or_else(identity::default_path)
        }
    }
}

/// `cairn id new|show`.
pub fn run(action: Action) -> Result<Exit> {
    let (kp, plain, qr) = match &action {
        Action::New { which } => {
            let path = which.path();
            let kp = identity::create(&path)?;
            note!("wrote {}", path.display());
            (kp, false, false)
        }
        Action::Show { plain, qr, which } => (identity::load(&which.path())?, *plain, *qr),
    };
    let peer = kp.author().to_string();
    outln!("{peer}");
    if !plain && (qr || stdout_is_terminal()) {
        outln!("{}", identity::qr(&peer)?);
    }
    Ok(Exit::Ok)
}
