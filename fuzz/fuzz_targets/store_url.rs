//! The CLI's store-URL parser on arbitrary text. It compiles the CLI's own
//! `crates/cairn-cli/src/url.rs` (the CLI is a binary crate; that module
//! depends on nothing else in it), with a resolver that does no DNS: a
//! literal `IP:PORT` resolves to itself, `localhost:PORT` to 127.0.0.1, and
//! every other host fails as an unknown name would.
//!
//! It asserts that parsing never panics, that every error names the URL
//! it refuses, and that what parses prints (`Display`) as a URL that
//! parses back to the same store (for `quic://`, whose printed form leaves
//! out `?peer=`, the same host and store id).
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/cairn-cli/src/url.rs"]
#[allow(dead_code, unused_macros)]
mod url;

use url::{StoreUrl, UrlError};

fn resolve(s: &str, host: &str) -> Result<SocketAddr, UrlError> {
    if let Ok(a) = host.parse::<SocketAddr>() {
        return Ok(a);
    }
    match host.strip_prefix("localhost:").map(str::parse::<u16>) {
        Some(Ok(port)) => Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        _ => Err(UrlError(format!("{s}: cannot resolve {host:?}: unknown host"))),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = url::redact_password(s);
    let _ = url::store_id(s);
    let parsed = match StoreUrl::parse_with(s, &resolve) {
        Ok(u) => u,
        Err(e) => {
            assert!(e.0.starts_with(s), "the error names the URL {s:?}: {e}");
            return;
        }
    };
    let printed = parsed.to_string();
    let again = StoreUrl::parse_with(&printed, &resolve);
    match (&parsed, again) {
        (StoreUrl::Quic { host, store, .. }, Err(e)) => {
            // Printed without ?peer=: refused for that, and nothing else.
            assert!(
                e.0.contains("missing ?peer="),
                "{s:?} printed as {printed:?}: {e}"
            );
            assert_eq!(printed, format!("quic://{host}/{store}"));
        }
        (StoreUrl::WebSocket { tls, host, store, .. }, Err(e)) => {
            assert!(
                e.0.contains("missing ?peer="),
                "{s:?} printed as {printed:?}: {e}"
            );
            let scheme = if *tls { "wss" } else { "ws" };
            assert_eq!(printed, format!("{scheme}://{host}/{store}"));
        }
        (StoreUrl::WebRtcRoom { signal, room, store, .. }, Ok(StoreUrl::WebRtcRoom { signal: s2, room: r2, store: st2, .. })) => {
            assert_eq!((signal, room, store), (&s2, &r2, &st2), "{s:?} printed as {printed:?}");
        }
        (StoreUrl::Postgres(_), Ok(StoreUrl::Postgres(p))) => {
            // Printed with the password hidden, which it keeps hidden.
            assert_eq!(p, printed);
        }
        (StoreUrl::WebRtcManual { offer, .. }, Ok(StoreUrl::WebRtcManual { offer: o2, .. })) => {
            assert_eq!(*offer, o2);
        }
        (StoreUrl::Memory, Ok(again)) => assert_eq!(again, StoreUrl::Memory),
        (StoreUrl::Redb(p), Ok(again)) => {
            // A path that is not UTF-8 cannot come from text; the printed
            // path is the one parsed.
            assert_eq!(again, StoreUrl::Redb(p.clone()), "{s:?} printed as {printed:?}");
        }
        (_, again) => panic!("{s:?} parsed as {parsed:?}, printed as {printed:?}, parsed again as {again:?}"),
    }
});
