//! Peer identities: an Ed25519 seed in a file, 64 hex characters.
//!
//! Your identity: `--key`, else `$CAIRN_KEY`, else
//! `$XDG_CONFIG_HOME/cairn/identity` (`~/.config/cairn/identity`). Only
//! `cairn id new` creates it. A server's host key is a separate file
//! (`server-identity` beside it, or `serve --key`), which `serve` creates
//! on first start and announces on stderr.

use std::path::{Path, PathBuf};

use cairn::Keypair;

use crate::error::{CliError, Context, Result, fail};

fn config_dir() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("cairn")
}

/// Where your identity lives unless `--key` or `CAIRN_KEY` says otherwise.
pub fn default_path() -> PathBuf {
    config_dir().join("identity")
}

/// Where `cairn serve` keeps its host key unless `serve --key` or
/// `CAIRN_SERVER_KEY` says otherwise.
pub fn default_server_path() -> PathBuf {
    config_dir().join("server-identity")
}

/// Read a key file; a missing one says how to make it.
pub fn load(path: &Path) -> Result<Keypair> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(format!(
                "no identity at {}: make one with `cairn id new` (or pass --key FILE)",
                path.display()
            ));
        }
        Err(e) => {
            return Err(e).ctx(format!("cannot read identity {}", path.display()));
        }
    };
    let mut seed = [0u8; 32];
    if hex::decode_to_slice(text.trim(), &mut seed).is_err() {
        return fail(format!(
            "identity {} is not 64 hex characters (make one with `cairn id new`)",
            path.display()
        ));
    }
    Ok(Keypair::from_seed(seed))
}

/// Write a new identity to `path` (refusing to overwrite one).
pub fn create(path: &Path) -> Result<Keypair> {
    if path.exists() {
        return fail(format!(
            "{} already exists; not overwriting an identity",
            path.display()
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).ctx(format!("cannot create {}", dir.display()))?;
    }
    let kp = Keypair::try_generate()
        .map_err(|e| CliError::new(format!("cannot generate a key: {e}")))?;
    write_private(path, &format!("{}\n", hex::encode(kp.seed())))
        .ctx(format!("cannot write {}", path.display()))?;
    Ok(kp)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// `text` as a QR code for a terminal.
pub fn qr(text: &str) -> Result<String> {
    let code =
        qrcode::QrCode::new(text.as_bytes()).map_err(|e| CliError::new(format!("QR code: {e}")))?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build())
}
