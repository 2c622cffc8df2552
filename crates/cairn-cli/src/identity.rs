//! The peer identity: an Ed25519 seed in a file.

use std::path::{Path, PathBuf};

use cairn::Keypair;

use crate::error::{Result, fail};

/// Where the identity lives unless `--key` or `CAIRN_KEY` says otherwise.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("cairn").join("identity")
}

/// Read a key file (64 hex characters: the secret seed).
pub fn load(path: &Path) -> Result<Keypair> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        crate::error::CliError(format!("cannot read identity {}: {e}", path.display()))
    })?;
    let text = text.trim();
    let mut seed = [0u8; 32];
    if hex::decode_to_slice(text, &mut seed).is_err() {
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
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let kp = Keypair::generate();
    write_private(path, &format!("{}\n", hex::encode(kp.seed())))?;
    Ok(kp)
}

/// Load the identity at `path`, creating it if it does not exist yet.
pub fn load_or_create(path: &Path) -> Result<Keypair> {
    if path.exists() {
        load(path)
    } else {
        let kp = create(path)?;
        eprintln!(
            "created a new identity at {} (peer id {})",
            path.display(),
            kp.author()
        );
        Ok(kp)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)?;
    Ok(())
}

/// The peer id as a QR code for a terminal.
pub fn qr(text: &str) -> Result<String> {
    let code = qrcode::QrCode::new(text.as_bytes())
        .map_err(|e| crate::error::CliError(format!("QR code: {e}")))?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build())
}
