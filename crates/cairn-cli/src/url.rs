//! Store URLs: one enum, one parser. Every form is described in
//! [`url_help!`](crate::url_help), shown by `--help`.
//!
//! This module depends on nothing else in the CLI (its error is its own
//! [`UrlError`]), so the fuzz target `store_url` compiles this very file
//! (`fuzz/fuzz_targets/store_url.rs`). Parsing does no I/O but for host
//! names, which [`StoreUrl::parse`] resolves with the system resolver and
//! [`StoreUrl::parse_with`] with a resolver the caller gives.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use cairn::{AuthorId, StoreId};
use cairn_webrtc::RoomCode;

/// A store URL that does not parse, or names a host that does not resolve.
/// The message names the URL and says which form is expected; the CLI
/// reports it as bad usage (exit 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

/// Result with [`UrlError`].
pub type Result<T, E = UrlError> = std::result::Result<T, E>;

fn usage<T>(msg: impl Into<String>) -> Result<T> {
    Err(UrlError(msg.into()))
}

/// Resolves `HOST:PORT` (the second argument) of the URL `s` (the first,
/// for messages) to one socket address.
pub type Resolve<'a> = &'a dyn Fn(&str, &str) -> Result<SocketAddr>;

/// The store-URL forms, for `--help` of every command that takes a URL
/// (a macro, so `concat!` can put it after each command's examples).
#[macro_export]
macro_rules! url_help {
    () => {
        "\
Store URLs:
  memory:           a fresh in-memory store, gone when the command ends
  redb:PATH         a redb file; it must exist (commands that write take --create)
  quic://HOST:PORT/STORE_ID?peer=PEER_ID
                    a store served by `cairn serve`; PEER_ID is the server's peer id,
                    which it prints at start (its key is pinned)
  ws://HOST:PORT/STORE_ID?peer=PEER_ID, wss://HOST:PORT/STORE_ID?peer=PEER_ID[&ca=FILE]
                    the same over WebSocket (`cairn serve --ws`), for networks that
                    block UDP; wss:// is TLS, trusting the Mozilla roots, or only the
                    PEM certificates in FILE with &ca=
  webrtc://HOST:PORT/ROOM/STORE_ID[?password=PW][&peers=N][&bind=IP]
                    the peers in ROOM (like ABC-DEF) of the signaling server that
                    `cairn signal` runs at HOST:PORT; waits for N peers (default 1);
                    binds every interface's address, or only IP with &bind=
  postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?…]
                    a store in a PostgreSQL database (libpq URL); many store ids share
                    one database, so give the store id (--store-id, or ID=postgres://…
                    for serve); several `cairn serve` processes may serve one database
  webrtc:offer, webrtc:answer[?bind=IP]
                    pair with one peer by hand: `offer` prints an offer line on stderr
                    and reads the answer line on stdin; `answer` reads the offer on
                    stdin and prints the answer on stderr
A store id comes from the URL (quic://, webrtc://), from the file (redb:) or from
--store-id; when several name one, they must agree. The old `quic://…&cache=FILE` form
is gone: sync into a local store instead (cairn sync --from quic://… --to redb:FILE)."
    };
}

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A fresh in-memory store.
    Memory,
    /// A redb file.
    Redb(PathBuf),
    /// A remote store over QUIC.
    Quic {
        /// `HOST:PORT` as written.
        host: String,
        /// The resolved server address.
        addr: SocketAddr,
        /// The store on the server.
        store: StoreId,
        /// The server's peer id (pinned).
        peer: AuthorId,
    },
    /// A remote store over WebSocket.
    WebSocket {
        /// `wss://` (TLS) rather than `ws://`.
        tls: bool,
        /// `HOST:PORT` as written.
        host: String,
        /// The resolved server address.
        addr: SocketAddr,
        /// The store on the server.
        store: StoreId,
        /// The server's peer id (pinned).
        peer: AuthorId,
        /// PEM file of the certificates to trust for `wss://` (`&ca=`),
        /// instead of the Mozilla roots.
        ca: Option<PathBuf>,
    },
    /// The peers of a room on a signaling server.
    WebRtcRoom {
        /// `ws://HOST:PORT`.
        signal: String,
        /// The room.
        room: RoomCode,
        /// The store.
        store: StoreId,
        /// The room password.
        password: Option<String>,
        /// Peers to wait for.
        peers: usize,
        /// The only address to bind and announce (default: every interface's).
        bind: Option<IpAddr>,
    },
    /// A store in a PostgreSQL database (the whole URL, as libpq takes it).
    Postgres(String),
    /// Manual pairing with one peer.
    WebRtcManual {
        /// `true` for `webrtc:offer`, `false` for `webrtc:answer`.
        offer: bool,
        /// The only address to bind and announce (default: every interface's).
        bind: Option<IpAddr>,
    },
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("memory:"),
            StoreUrl::Redb(p) => write!(f, "redb:{}", p.display()),
            StoreUrl::Quic { host, store, .. } => write!(f, "quic://{host}/{store}"),
            StoreUrl::WebSocket {
                tls, host, store, ..
            } => write!(f, "{}://{host}/{store}", if *tls { "wss" } else { "ws" }),
            StoreUrl::WebRtcRoom {
                signal,
                room,
                store,
                ..
            } => write!(
                f,
                "webrtc://{}/{room}/{store}",
                signal.trim_start_matches("ws://")
            ),
            StoreUrl::Postgres(url) => f.write_str(&redact_password(url)),
            StoreUrl::WebRtcManual { offer: true, .. } => f.write_str("webrtc:offer"),
            StoreUrl::WebRtcManual { offer: false, .. } => f.write_str("webrtc:answer"),
        }
    }
}

/// `url` with the password of its user part (`user:PASSWORD@`) replaced by
/// `***`, for messages.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((user, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match user.split_once(':') {
        Some((name, _)) => format!("{scheme}://{name}:***@{host}"),
        None => url.to_owned(),
    }
}

/// A store id that can appear in a URL: `[A-Za-z0-9._-]` segments joined
/// by `/`, at most 255 bytes.
pub fn store_id(s: &str) -> Result<StoreId> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if s.is_empty()
        || s.len() > 255
        || s.split('/')
            .any(|seg| seg.is_empty() || !seg.chars().all(ok_char))
    {
        return usage(format!(
            "invalid store id {s:?}: use letters, digits, '.', '_' and '-' in segments joined by '/' (e.g. acme/contacts)"
        ));
    }
    StoreId::new(s).map_err(|e| UrlError(format!("store id {s:?}: {e}")))
}

fn query(q: &str) -> Vec<(&str, &str)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect()
}

/// The system resolver ([`ToSocketAddrs`]): the first address `host`
/// resolves to.
pub fn system_resolve(s: &str, host: &str) -> Result<SocketAddr> {
    let mut addrs = host.to_socket_addrs().map_err(|e| {
        let cause = e.to_string();
        // Without Rust's "(os error N)" suffix.
        let cause = cause.split(" (os error").next().unwrap_or_default();
        UrlError(format!("{s}: cannot resolve {host:?}: {cause}"))
    })?;
    match addrs.next() {
        Some(a) => Ok(a),
        None => usage(format!("{s}: {host:?} resolves to no address")),
    }
}

fn bind_ip(s: &str, v: &str) -> Result<IpAddr> {
    v.parse()
        .map_err(|_| UrlError(format!("{s}: bind={v:?} is not an IP address")))
}

impl StoreUrl {
    /// Parse a URL, resolving host names with the system resolver; the
    /// error says which form is expected.
    pub fn parse(s: &str) -> Result<StoreUrl> {
        Self::parse_with(s, &system_resolve)
    }

    /// Parse a URL, resolving the `HOST:PORT` of `quic://` and `webrtc://`
    /// URLs with `resolve` (which the fuzz target gives, so that it does no
    /// DNS).
    pub fn parse_with(s: &str, resolve: Resolve<'_>) -> Result<StoreUrl> {
        if s == "memory:" || s == "memory" {
            return Ok(StoreUrl::Memory);
        }
        if let Some(path) = s.strip_prefix("redb:") {
            if path.is_empty() {
                return usage("redb: needs a path, e.g. redb:./data.redb");
            }
            return Ok(StoreUrl::Redb(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("quic://") {
            return Self::parse_quic(s, rest, resolve);
        }
        for (scheme, tls) in [("ws://", false), ("wss://", true)] {
            if let Some(rest) = s.strip_prefix(scheme) {
                return Self::parse_ws(s, rest, tls, resolve);
            }
        }
        if let Some(rest) = s.strip_prefix("webrtc://") {
            return Self::parse_room(s, rest, resolve);
        }
        if let Some(rest) = s.strip_prefix("webrtc:") {
            let (role, q) = rest.split_once('?').unwrap_or((rest, ""));
            let offer = match role {
                "offer" => true,
                "answer" => false,
                _ => {
                    return usage(format!(
                        "{s}: expected webrtc:offer, webrtc:answer or webrtc://HOST:PORT/ROOM/STORE_ID"
                    ));
                }
            };
            let mut bind = None;
            for (k, v) in query(q) {
                match k {
                    "bind" => bind = Some(bind_ip(s, v)?),
                    _ => return usage(format!("{s}: unknown parameter {k:?} (known: bind)")),
                }
            }
            return Ok(StoreUrl::WebRtcManual { offer, bind });
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(s.to_owned()));
        }
        usage(format!(
            "{s}: unknown store URL (expected memory:, redb:PATH, quic://HOST:PORT/STORE_ID?peer=PEER_ID, ws[s]://HOST:PORT/STORE_ID?peer=PEER_ID, postgres://USER@HOST/DB, webrtc://HOST:PORT/ROOM/STORE_ID, webrtc:offer or webrtc:answer)"
        ))
    }

    fn parse_quic(s: &str, rest: &str, resolve: Resolve<'_>) -> Result<StoreUrl> {
        let (main, q) = rest.split_once('?').unwrap_or((rest, ""));
        let Some((host, store)) = main.split_once('/') else {
            return usage(format!(
                "{s}: expected quic://HOST:PORT/STORE_ID?peer=PEER_ID"
            ));
        };
        let store = store_id(store).map_err(|e| UrlError(format!("{s}: {e}")))?;
        let mut peer = None;
        for (k, v) in query(q) {
            match k {
                "peer" => {
                    peer = Some(
                        v.parse::<AuthorId>()
                            .map_err(|e| UrlError(format!("{s}: peer: {e}")))?,
                    )
                }
                "cache" => {
                    return usage(format!(
                        "{s}: the &cache= form is gone; sync into a local store instead (cairn sync --from quic://… --to redb:FILE)"
                    ));
                }
                _ => return usage(format!("{s}: unknown parameter {k:?} (known: peer)")),
            }
        }
        let Some(peer) = peer else {
            return usage(format!(
                "{s}: missing ?peer=PEER_ID (the server prints it at start)"
            ));
        };
        let addr = resolve(s, host)?;
        Ok(StoreUrl::Quic {
            host: host.to_owned(),
            addr,
            store,
            peer,
        })
    }

    fn parse_ws(s: &str, rest: &str, tls: bool, resolve: Resolve<'_>) -> Result<StoreUrl> {
        let scheme = if tls { "wss" } else { "ws" };
        let (main, q) = rest.split_once('?').unwrap_or((rest, ""));
        let Some((host, store)) = main.split_once('/') else {
            return usage(format!(
                "{s}: expected {scheme}://HOST:PORT/STORE_ID?peer=PEER_ID"
            ));
        };
        let store = store_id(store).map_err(|e| UrlError(format!("{s}: {e}")))?;
        let (mut peer, mut ca) = (None, None);
        for (k, v) in query(q) {
            match k {
                "peer" => {
                    peer = Some(
                        v.parse::<AuthorId>()
                            .map_err(|e| UrlError(format!("{s}: peer: {e}")))?,
                    )
                }
                "ca" if tls && !v.is_empty() => ca = Some(PathBuf::from(v)),
                "ca" if tls => return usage(format!("{s}: ca= needs a PEM file")),
                "ca" => {
                    return usage(format!("{s}: ca= is for wss:// (ws:// has no TLS)"));
                }
                _ => {
                    let known = if tls { "peer, ca" } else { "peer" };
                    return usage(format!("{s}: unknown parameter {k:?} (known: {known})"));
                }
            }
        }
        let Some(peer) = peer else {
            return usage(format!(
                "{s}: missing ?peer=PEER_ID (the server prints it at start)"
            ));
        };
        let addr = resolve(s, host)?;
        Ok(StoreUrl::WebSocket {
            tls,
            host: host.to_owned(),
            addr,
            store,
            peer,
            ca,
        })
    }

    fn parse_room(s: &str, rest: &str, resolve: Resolve<'_>) -> Result<StoreUrl> {
        let (main, q) = rest.split_once('?').unwrap_or((rest, ""));
        let mut parts = main.splitn(3, '/');
        let (Some(host), Some(room), Some(store)) = (parts.next(), parts.next(), parts.next())
        else {
            return usage(format!(
                "{s}: expected webrtc://HOST:PORT/ROOM/STORE_ID (ROOM like ABC-DEF)"
            ));
        };
        resolve(s, host)?;
        let room: RoomCode = room
            .parse()
            .map_err(|e| UrlError(format!("{s}: room {room:?}: {e}")))?;
        let store = store_id(store).map_err(|e| UrlError(format!("{s}: {e}")))?;
        let (mut password, mut peers, mut bind) = (None, 1, None);
        for (k, v) in query(q) {
            match k {
                "password" => password = Some(v.to_owned()),
                "peers" => {
                    peers = v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        UrlError(format!("{s}: peers={v:?} is not a count of at least 1"))
                    })?
                }
                "bind" => bind = Some(bind_ip(s, v)?),
                _ => {
                    return usage(format!(
                        "{s}: unknown parameter {k:?} (known: password, peers, bind)"
                    ));
                }
            }
        }
        Ok(StoreUrl::WebRtcRoom {
            signal: format!("ws://{host}"),
            room,
            store,
            password,
            peers,
            bind,
        })
    }

    /// The store id this URL names, if it names one.
    pub fn named_id(&self) -> Option<&StoreId> {
        match self {
            StoreUrl::Quic { store, .. }
            | StoreUrl::WebSocket { store, .. }
            | StoreUrl::WebRtcRoom { store, .. } => Some(store),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_parse_and_hide_their_password() {
        let u = StoreUrl::parse("postgres://u:secret@127.0.0.1:5432/db").unwrap();
        assert_eq!(
            u,
            StoreUrl::Postgres("postgres://u:secret@127.0.0.1:5432/db".into())
        );
        assert_eq!(u.to_string(), "postgres://u:***@127.0.0.1:5432/db");
        assert_eq!(
            StoreUrl::parse("postgresql://u@h/db").unwrap().to_string(),
            "postgresql://u@h/db"
        );
    }

    #[test]
    fn parses_every_form_and_explains_errors() {
        assert_eq!(StoreUrl::parse("memory:").unwrap(), StoreUrl::Memory);
        assert_eq!(
            StoreUrl::parse("redb:/tmp/x.redb").unwrap(),
            StoreUrl::Redb("/tmp/x.redb".into())
        );
        let peer = "ab".repeat(32);
        match StoreUrl::parse(&format!(
            "quic://127.0.0.1:4433/acme/db/contacts?peer={peer}"
        ))
        .unwrap()
        {
            StoreUrl::Quic { addr, store, .. } => {
                assert_eq!(addr.port(), 4433);
                assert_eq!(store.as_str(), "acme/db/contacts");
            }
            other => panic!("{other:?}"),
        }
        match StoreUrl::parse("webrtc://localhost:8765/ABC-DEF/acme/db?password=pw&peers=2")
            .unwrap()
        {
            StoreUrl::WebRtcRoom {
                signal,
                store,
                password,
                peers,
                ..
            } => {
                assert_eq!(signal, "ws://localhost:8765");
                assert_eq!(store.as_str(), "acme/db");
                assert_eq!(password.as_deref(), Some("pw"));
                assert_eq!(peers, 2);
            }
            other => panic!("{other:?}"),
        }
        match StoreUrl::parse(&format!(
            "wss://localhost:443/acme/db?peer={peer}&ca=/tmp/ca.pem"
        ))
        .unwrap()
        {
            StoreUrl::WebSocket {
                tls,
                addr,
                store,
                ca,
                ..
            } => {
                assert!(tls);
                assert_eq!(addr.port(), 443);
                assert_eq!(store.as_str(), "acme/db");
                assert_eq!(ca.as_deref(), Some(std::path::Path::new("/tmp/ca.pem")));
            }
            other => panic!("{other:?}"),
        }
        let ws = StoreUrl::parse(&format!("ws://127.0.0.1:8080/acme/db?peer={peer}")).unwrap();
        assert_eq!(ws.to_string(), "ws://127.0.0.1:8080/acme/db");
        assert_eq!(ws.named_id().map(|s| s.as_str()), Some("acme/db"));
        assert!(matches!(
            StoreUrl::parse("webrtc:offer").unwrap(),
            StoreUrl::WebRtcManual { offer: true, .. }
        ));
        for bad in [
            "",
            "redb:",
            "quic://127.0.0.1:1/x",
            "quic://127.0.0.1:1/x?peer=zz",
            &format!("quic://127.0.0.1:1/a b?peer={peer}"),
            &format!("quic://127.0.0.1:1/x?peer={peer}&cache=c.redb"),
            "ftp://x",
            "quic://nohost",
            "ws://127.0.0.1:1/x",
            &format!("ws://127.0.0.1:1?peer={peer}"),
            &format!("ws://127.0.0.1:1/x?peer={peer}&ca=c.pem"),
            &format!("wss://127.0.0.1:1/x?peer={peer}&ca="),
            &format!("wss://127.0.0.1:1/x?peer={peer}&cert=c.pem"),
            "webrtc:maybe",
            "webrtc://127.0.0.1:1/NOTAROOM!/x",
        ] {
            let e = StoreUrl::parse(bad).unwrap_err();
            assert!(
                e.0.starts_with(bad),
                "the message names the URL: {bad}: {e}"
            );
            let cli: crate::error::CliError = e.into();
            assert_eq!(cli.exit, crate::error::Exit::Usage, "{bad}");
        }
    }

    #[test]
    fn store_ids_are_url_safe() {
        assert!(store_id("acme/contacts").is_ok());
        for bad in ["", "a b", "/a", "a/", "a//b", "a?b"] {
            assert!(store_id(bad).is_err(), "{bad:?}");
        }
    }
}
