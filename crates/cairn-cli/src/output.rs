//! Writing results: stdout lines that turn a broken pipe into a quiet exit,
//! terminal detection, and the shared formats (sizes, times, change
//! metadata as a table row or JSON).

use std::io::{IsTerminal, Write};

use cairn::{ChangeMeta, Head};
use serde_json::{Value, json};

/// Print one line to stdout; a closed pipe ends the command quietly.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::write_line(format_args!(""))?
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))?
    };
}

/// Print one line to stderr unless `-q` was given.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        if !$crate::output::quiet() {
            eprintln!($($arg)*);
        }
    };
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set by `-q`.
pub fn set_quiet(q: bool) {
    QUIET.store(q, std::sync::atomic::Ordering::Relaxed);
}

/// Whether `-q` was given.
pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// Write one line to stdout (flushed, so pipes see it at once).
pub fn write_line(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Write raw bytes to stdout.
pub fn write_bytes(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// Print a JSON value as one line.
pub fn json_line(v: &Value) -> crate::error::Result<()> {
    write_line(format_args!("{v}"))?;
    Ok(())
}

/// Whether stdout is a terminal.
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// Whether stderr is a terminal.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Whether to use colour on stderr: a terminal, and `NO_COLOR` unset or empty.
pub fn color_on_stderr() -> bool {
    stderr_is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether progress bars may be drawn (stderr is a terminal, not `-q`).
pub fn progress_allowed() -> bool {
    stderr_is_terminal() && !quiet()
}

/// `1.2 MiB (1,234,567 bytes)`, or `12 bytes`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit} ({} bytes)", thousands(bytes))
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds since the Unix epoch as `2024-05-01T12:00:00Z` (UTC).
pub fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A change's metadata as the documented JSON object (docs/cli.md).
pub fn meta_json(seq: Option<u64>, m: &ChangeMeta) -> Value {
    json!({
        "seq": seq,
        "id": m.id.to_hex(),
        "kind": m.kind.to_string(),
        "doc": m.doc_id.as_str(),
        "deps": m.deps.iter().map(|d| d.to_hex()).collect::<Vec<_>>(),
        "created_at": m.created_at,
        "created": time(m.created_at),
        "author": m.author.to_hex(),
        "key_id": m.key_id.as_str(),
        "payload_hash": m.payload_hash.to_hex(),
        "payload_len": m.payload_len,
        "signed": m.signature.is_some(),
        "signature_valid": m.signature.is_some().then(|| m.signature_valid()),
    })
}

/// A head as JSON.
pub fn head_json(h: &Head) -> Value {
    json!({ "seq": h.seq, "epoch": format!("{:016x}", h.epoch) })
}

/// The column header of a change listing.
pub fn meta_header(full: bool) -> String {
    let w = if full { 64 } else { 12 };
    format!(
        "{:>8}  {:<w$}  {:<8}  {:<20}  {:<w$}  {:>4}  {:>10}  {:<8}  CREATED",
        "SEQ", "ID", "KIND", "DOC", "AUTHOR", "DEPS", "SIZE", "SIGNED"
    )
}

/// One change as a row under [`meta_header`].
pub fn meta_row(seq: Option<u64>, m: &ChangeMeta, full: bool) -> String {
    let w = if full { 64 } else { 12 };
    let id = |x: String| if full { x } else { x[..12].to_owned() };
    let signed = match &m.signature {
        None => "no",
        Some(_) if m.signature_valid() => "yes",
        Some(_) => "INVALID",
    };
    format!(
        "{:>8}  {:<w$}  {:<8}  {:<20}  {:<w$}  {:>4}  {:>10}  {:<8}  {}",
        seq.map_or_else(|| "-".to_owned(), |s| s.to_string()),
        id(m.id.to_hex()),
        m.kind.to_string(),
        m.doc_id.as_str(),
        id(m.author.to_hex()),
        m.deps.len(),
        m.payload_len,
        signed,
        time(m.created_at)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(1_709_210_096_000), "2024-02-29T12:34:56Z");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(size(12), "12 bytes");
        assert_eq!(size(2048), "2.0 KiB (2,048 bytes)");
    }
}
