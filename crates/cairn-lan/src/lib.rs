//! Opt-in LAN discovery for Cairn peers, over mDNS / DNS-SD
//! ([`mdns-sd`](https://docs.rs/mdns-sd)).
//!
//! A peer that serves stores (a `QuicServer`, a `WsServer`) can
//! [`announce`](Lan::announce) itself on the local network as a
//! `_cairn._udp.local.` service; another peer on the same link
//! [`find`](Lan::find)s it by its peer id and connects directly, with that
//! peer id pinned as always. Nothing is announced unless asked, and nothing
//! found is trusted: a record only says where a peer claims to listen, and
//! the connection's handshake proves the key.
//!
//! # What an announcement says
//!
//! The service instance is named after the peer id's first 16 hex digits;
//! its TXT record holds:
//!
//! | key | value |
//! |---|---|
//! | `v` | `1` (this format) |
//! | `peer` | the peer id, 64 hex digits |
//! | `quic` | the QUIC port (also the service's SRV port) |
//! | `ws` | the WebSocket port, if one is announced |
//! | `s0`, `s1`, … | only with [`Announcement::stores`]: comma-separated 16-hex-digit tags, one per store, see [`store_tag`] |
//!
//! plus the addresses of the host's interfaces (A and AAAA records). That
//! is exactly what anyone who connects learns anyway (the address, the
//! ports, the peer id from the handshake), except the store tags: a tag is
//! a keyed hash of the store id, so a listener cannot read store ids off
//! the network, but one who guesses an id can test it. Leave `stores` empty
//! (the default) unless peers need to find "whoever serves store X"
//! without knowing its key.
//!
//! # Bounds
//!
//! Records come from anyone on the link. A [`LanBrowser`] keeps at most
//! [`MAX_PEERS`] peers and [`MAX_ADDRS`] addresses per peer; a record that
//! is malformed (no or bad `peer`, port 0, an unknown `v`) is ignored; every
//! wait ([`Lan::find`]) has a deadline.
//!
//! ```no_run
//! # async fn f(server_peer: cairn_protocol::PeerId) -> cairn::Result<()> {
//! use std::time::Duration;
//! use cairn_lan::{Announcement, Lan};
//! // On the serving peer:
//! let lan = Lan::new()?;
//! let _announced = lan.announce(&Announcement::new(server_peer, 4433))?;
//! // On a peer that knows `server_peer`'s key:
//! let found = Lan::new()?.find(&server_peer, Duration::from_secs(5)).await?;
//! let addr = found.quic_addr(); // connect QuicStore::new(cache, addr, server_peer, …)
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cairn::{Error, Result, StoreId};
use cairn_protocol::PeerId;
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use tracing::debug;

/// The DNS-SD service type Cairn peers announce.
pub const SERVICE_TYPE: &str = "_cairn._udp.local.";
/// Most peers a [`LanBrowser`] keeps (records for more are ignored).
pub const MAX_PEERS: usize = 256;
/// Most addresses kept per peer.
pub const MAX_ADDRS: usize = 16;
/// Most store tags one announcement carries.
pub const MAX_STORES: usize = 64;
/// Store tags per TXT string (`sN=` and 14 × 17 bytes stay under 255).
const TAGS_PER_KEY: usize = 14;

fn lan_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(format!("mDNS: {what}: {e}")))
}

/// The tag announcing that `peer` serves `store`: the first 8 bytes of a
/// BLAKE3 hash keyed by its context, over the peer id and the store id, in
/// hex. Keyed by the peer, so one store's tags differ from peer to peer.
pub fn store_tag(peer: &PeerId, store: &StoreId) -> String {
    let mut h = blake3::Hasher::new_derive_key("cairn-lan v1 store tag");
    h.update(peer.as_bytes());
    h.update(store.as_str().as_bytes());
    hex::encode(&h.finalize().as_bytes()[..8])
}

/// What a peer announces.
#[derive(Debug, Clone)]
pub struct Announcement {
    /// Its peer id (the key its servers prove).
    pub peer: PeerId,
    /// Its QUIC server's port.
    pub quic_port: u16,
    /// Its WebSocket server's port, if any.
    pub ws_port: Option<u16>,
    /// Stores to announce as tags (default none; see the crate docs).
    pub stores: Vec<StoreId>,
    /// The addresses to announce (at most [`MAX_ADDRS`]); empty (the
    /// default) announces every interface's, IPv6 included. A server bound
    /// to one address should announce just that one
    /// ([`for_server`](Announcement::for_server) does), so that finders
    /// never try an address nothing listens on.
    pub addrs: Vec<IpAddr>,
}

impl Announcement {
    /// A peer with a QUIC server on `quic_port`, announcing no stores and
    /// every interface's addresses.
    pub fn new(peer: PeerId, quic_port: u16) -> Self {
        Announcement {
            peer,
            quic_port,
            ws_port: None,
            stores: Vec::new(),
            addrs: Vec::new(),
        }
    }

    /// A peer whose QUIC server is bound to `bound`: its port, and its
    /// address unless that is unspecified (`0.0.0.0`, `::`: every
    /// interface's, as [`new`](Announcement::new)).
    pub fn for_server(peer: PeerId, bound: SocketAddr) -> Self {
        let mut a = Announcement::new(peer, bound.port());
        if !bound.ip().is_unspecified() {
            a.addrs = vec![bound.ip()];
        }
        a
    }
}

/// A peer found on the LAN: where it says it listens. Connect with its
/// [`peer`](LanPeer::peer) pinned; the handshake proves the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanPeer {
    /// The announced peer id.
    pub peer: PeerId,
    /// Its addresses, IPv4 first, link-local IPv6 last (at most
    /// [`MAX_ADDRS`]).
    pub addrs: Vec<IpAddr>,
    /// Its QUIC port.
    pub quic_port: u16,
    /// Its WebSocket port, if announced.
    pub ws_port: Option<u16>,
    tags: Vec<String>,
}

impl LanPeer {
    /// The first QUIC address (IPv4 preferred).
    pub fn quic_addr(&self) -> SocketAddr {
        SocketAddr::new(
            self.addrs
                .first()
                .copied()
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
            self.quic_port,
        )
    }

    /// The first WebSocket URL (`ws://ADDR:PORT/`), if a port is announced.
    pub fn ws_url(&self) -> Option<String> {
        let port = self.ws_port?;
        let ip = self.addrs.first()?;
        Some(match ip {
            IpAddr::V4(v4) => format!("ws://{v4}:{port}/"),
            IpAddr::V6(v6) => format!("ws://[{v6}]:{port}/"),
        })
    }

    /// Whether it announced `store` (only if it announces stores at all).
    pub fn announces(&self, store: &StoreId) -> bool {
        let tag = store_tag(&self.peer, store);
        self.tags.contains(&tag)
    }

    fn from_service(s: &mdns_sd::ResolvedService) -> Option<LanPeer> {
        let props = &s.txt_properties;
        if props.get_property_val_str("v") != Some("1") {
            return None;
        }
        let peer: PeerId = props.get_property_val_str("peer")?.parse().ok()?;
        let quic_port: u16 = props.get_property_val_str("quic")?.parse().ok()?;
        if quic_port == 0 {
            return None;
        }
        let ws_port = match props.get_property_val_str("ws") {
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
            None => None,
        };
        let mut tags = Vec::new();
        for k in 0..MAX_STORES.div_ceil(TAGS_PER_KEY) {
            let Some(v) = props.get_property_val_str(&format!("s{k}")) else {
                break;
            };
            for t in v.split(',').take(TAGS_PER_KEY) {
                if t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                    tags.push(t.to_ascii_lowercase());
                }
            }
        }
        let addrs = usable_addrs(s.addresses.iter().map(|a| a.to_ip_addr()));
        if addrs.is_empty() {
            // Address records can trail the others: a later update of the
            // record, with an address, is another event.
            return None;
        }
        Some(LanPeer {
            peer,
            addrs,
            quic_port,
            ws_port,
            tags,
        })
    }
}

/// How long a search that found a record with only a link-local address
/// waits for the same record with a routable one.
const ROUTABLE_GRACE: Duration = Duration::from_secs(2);

fn is_link_local(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local())
}

/// The addresses to try, at most [`MAX_ADDRS`]: IPv4 first, then routable
/// IPv6, link-local IPv6 last (an `IpAddr` cannot say which interface one
/// belongs to, so connecting to it may fail; announce an explicit address,
/// as [`Announcement::for_server`] does, to avoid them); unspecified and
/// multicast ones are left out.
fn usable_addrs(found: impl Iterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = found
        .filter(|a| match a {
            IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_multicast() && !v4.is_broadcast(),
            IpAddr::V6(v6) => !v6.is_unspecified() && !v6.is_multicast(),
        })
        .collect();
    addrs.sort_by_key(|a| (a.is_ipv6(), is_link_local(a), *a));
    addrs.dedup();
    addrs.truncate(MAX_ADDRS);
    addrs
}

/// The TXT properties announcing `a` (`v` first, `peer` second).
fn txt(a: &Announcement) -> Result<Vec<(String, String)>> {
    if a.quic_port == 0 {
        return Err(Error::InvalidInput {
            reason: "LAN announcement: the QUIC port is 0 (announce the bound port)".into(),
        });
    }
    if a.stores.len() > MAX_STORES {
        return Err(Error::InvalidInput {
            reason: format!(
                "LAN announcement: {} stores, at most {MAX_STORES} fit",
                a.stores.len()
            ),
        });
    }
    let mut props: Vec<(String, String)> = vec![
        ("v".into(), "1".into()),
        ("peer".into(), a.peer.to_hex()),
        ("quic".into(), a.quic_port.to_string()),
    ];
    if let Some(ws) = a.ws_port {
        props.push(("ws".into(), ws.to_string()));
    }
    let tags: Vec<String> = a.stores.iter().map(|s| store_tag(&a.peer, s)).collect();
    for (k, chunk) in tags.chunks(TAGS_PER_KEY).enumerate() {
        props.push((format!("s{k}"), chunk.join(",")));
    }
    Ok(props)
}

/// The mDNS responder and browser of this process (its own thread, from
/// `mdns-sd`). Cheap to keep; [`shutdown`](Lan::shutdown) stops it, and so
/// does dropping it.
pub struct Lan {
    daemon: ServiceDaemon,
    /// The last record [`find`](Lan::find) returned per peer (at most
    /// [`MAX_PEERS`]), so that finding a peer again, to reconnect, does
    /// not wait for a new mDNS exchange; [`forget`](Lan::forget) drops
    /// one that stopped working.
    known: std::sync::Mutex<HashMap<PeerId, LanPeer>>,
}

impl std::fmt::Debug for Lan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lan").finish_non_exhaustive()
    }
}

/// An announcement in force; dropping it withdraws it (a goodbye packet).
pub struct Announced {
    daemon: ServiceDaemon,
    fullname: String,
}

impl std::fmt::Debug for Announced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announced")
            .field("fullname", &self.fullname)
            .finish()
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        if let Err(e) = self.daemon.unregister(&self.fullname) {
            debug!(error = %e, "mDNS: withdrawing {}", self.fullname);
        }
    }
}

impl Lan {
    /// Start the mDNS daemon on every interface with an address.
    pub fn new() -> Result<Lan> {
        let daemon = ServiceDaemon::new().map_err(|e| lan_err("cannot start", e))?;
        Ok(Lan {
            daemon,
            known: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Announce `a` on every interface until the returned handle drops.
    pub fn announce(&self, a: &Announcement) -> Result<Announced> {
        let props = txt(a)?;
        let short = &props[1].1[..16];
        if a.addrs.len() > MAX_ADDRS {
            return Err(Error::InvalidInput {
                reason: format!(
                    "LAN announcement: {} addresses, at most {MAX_ADDRS}",
                    a.addrs.len()
                ),
            });
        }
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &format!("cairn-{short}"),
            &format!("cairn-{short}.local."),
            &a.addrs[..],
            a.quic_port,
            &props[..],
        )
        .map_err(|e| lan_err("announcement", e))?;
        let info = if a.addrs.is_empty() {
            info.enable_addr_auto()
        } else {
            info
        };
        let fullname = info.get_fullname().to_owned();
        self.daemon
            .register(info)
            .map_err(|e| lan_err("cannot announce", e))?;
        Ok(Announced {
            daemon: self.daemon.clone(),
            fullname,
        })
    }

    /// Browse for Cairn peers.
    pub fn browse(&self) -> Result<LanBrowser> {
        let rx = self
            .daemon
            .browse(SERVICE_TYPE)
            .map_err(|e| lan_err("cannot browse", e))?;
        Ok(LanBrowser {
            daemon: self.daemon.clone(),
            rx,
            peers: HashMap::new(),
        })
    }

    /// Find `peer` on the LAN within `timeout`: [`Error::Timeout`] naming
    /// the peer if no valid record for it arrives in time. A peer found
    /// before is returned at once, from memory, until
    /// [`forget`](Lan::forget) drops it (do so when connecting to it
    /// fails: it may have moved).
    pub async fn find(&self, peer: &PeerId, timeout: Duration) -> Result<LanPeer> {
        if let Some(p) = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
        {
            return Ok(p.clone());
        }
        let p = self
            .search(|p| p.peer == *peer, timeout)
            .await?
            .ok_or_else(|| Error::Timeout {
                what: format!("peer {} on the LAN (mDNS)", peer.short()),
                after: timeout,
            })?;
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= MAX_PEERS {
            known.clear();
        }
        known.insert(p.peer, p.clone());
        Ok(p)
    }

    /// The first record `wanted` accepts within `timeout`. mDNS sends a
    /// record's A and AAAA records apart, so one may first arrive with only
    /// a link-local IPv6 address (which may not be served, and cannot be
    /// connected to without its interface): such a record is kept while
    /// up to [`ROUTABLE_GRACE`] more is waited for an update with a
    /// routable address, and returned if none comes.
    async fn search(
        &self,
        wanted: impl Fn(&LanPeer) -> bool,
        timeout: Duration,
    ) -> Result<Option<LanPeer>> {
        let mut b = self.browse()?;
        let mut deadline = tokio::time::Instant::now() + timeout;
        let mut fallback: Option<LanPeer> = None;
        // Bounded by the deadline.
        loop {
            match tokio::time::timeout_at(deadline, b.next()).await {
                Ok(Some(p)) if wanted(&p) => {
                    if p.addrs.first().is_some_and(|a| !is_link_local(a)) {
                        return Ok(Some(p));
                    }
                    if fallback.is_none() {
                        deadline = deadline.min(tokio::time::Instant::now() + ROUTABLE_GRACE);
                    }
                    fallback = Some(p);
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Err(lan_err("browsing", "the daemon stopped")),
                Err(_) => return Ok(fallback),
            }
        }
    }

    /// Drop what [`find`](Lan::find) remembers of `peer`: the next find
    /// asks the network again.
    pub fn forget(&self, peer: &PeerId) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
    }

    /// Find any peer that announces `store` within `timeout`.
    pub async fn find_store(&self, store: &StoreId, timeout: Duration) -> Result<LanPeer> {
        self.search(|p| p.announces(store), timeout)
            .await?
            .ok_or_else(|| Error::Timeout {
                what: format!("a LAN peer announcing store {store} (mDNS)"),
                after: timeout,
            })
    }

    /// Stop the daemon (announcements are withdrawn first).
    pub fn shutdown(self) {
        let _ = self.daemon.shutdown();
    }
}

/// Peers as they are found, bounded (see the crate docs).
pub struct LanBrowser {
    daemon: ServiceDaemon,
    rx: mdns_sd::Receiver<ServiceEvent>,
    peers: HashMap<String, LanPeer>,
}

impl std::fmt::Debug for LanBrowser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LanBrowser")
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl LanBrowser {
    /// The next peer found or changed (address, ports); `None` once the
    /// daemon has stopped.
    pub async fn next(&mut self) -> Option<LanPeer> {
        // Each turn consumes one event; the daemon's channel ends when it
        // stops.
        loop {
            let ev = self.rx.recv_async().await.ok()?;
            match ev {
                ServiceEvent::ServiceResolved(s) => {
                    let Some(p) = LanPeer::from_service(&s) else {
                        debug!(
                            "mDNS: ignoring a record that is malformed or has no usable address yet: {}",
                            s.fullname
                        );
                        continue;
                    };
                    if !self.peers.contains_key(&s.fullname) && self.peers.len() >= MAX_PEERS {
                        debug!("mDNS: {MAX_PEERS} peers known; ignoring {}", s.fullname);
                        continue;
                    }
                    if self.peers.get(&s.fullname) == Some(&p) {
                        continue;
                    }
                    self.peers.insert(s.fullname.clone(), p.clone());
                    return Some(p);
                }
                ServiceEvent::ServiceRemoved(_, fullname) => {
                    self.peers.remove(&fullname);
                }
                _ => {}
            }
        }
    }

    /// The peers known now.
    pub fn peers(&self) -> impl Iterator<Item = &LanPeer> {
        self.peers.values()
    }
}

impl Drop for LanBrowser {
    fn drop(&mut self) {
        let _ = self.daemon.stop_browse(SERVICE_TYPE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_ipv6_goes_last_and_unusable_addresses_are_left_out() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let found = [
            ip("fe80::3014:38ff:fe8b:8c01"),
            ip("2001:db8::7"),
            ip("0.0.0.0"),
            ip("224.0.0.251"),
            ip("192.0.2.1"),
            ip("192.0.2.1"),
        ];
        assert_eq!(
            usable_addrs(found.into_iter()),
            vec![
                ip("192.0.2.1"),
                ip("2001:db8::7"),
                ip("fe80::3014:38ff:fe8b:8c01")
            ]
        );
        assert!(usable_addrs([ip("224.0.0.251")].into_iter()).is_empty());
    }

    #[test]
    fn tags_depend_on_peer_and_store() {
        let a = cairn::Keypair::generate().author();
        let b = cairn::Keypair::generate().author();
        let s = StoreId::new("acme/db").unwrap();
        let t = StoreId::new("acme/other").unwrap();
        assert_eq!(store_tag(&a, &s), store_tag(&a, &s));
        assert_eq!(store_tag(&a, &s).len(), 16);
        assert_ne!(store_tag(&a, &s), store_tag(&b, &s));
        assert_ne!(store_tag(&a, &s), store_tag(&a, &t));
    }

    #[test]
    fn announcements_fit_txt_strings_and_bad_ones_are_typed_errors() {
        let peer = cairn::Keypair::generate().author();
        let e = txt(&Announcement::new(peer, 0)).unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
        let mut a = Announcement::new(peer, 1);
        a.stores = (0..=MAX_STORES)
            .map(|i| StoreId::new(format!("s{i}")).unwrap())
            .collect();
        let e = txt(&a).unwrap_err();
        assert!(e.to_string().contains("stores"), "{e}");
        a.stores.pop();
        a.ws_port = Some(8080);
        let props = txt(&a).unwrap();
        assert_eq!(props[1], ("peer".to_owned(), peer.to_hex()));
        // Every TXT string (key=value) stays within DNS's 255 bytes.
        for (k, v) in &props {
            assert!(k.len() + 1 + v.len() <= 255, "{k}");
        }
        let tags: usize = props
            .iter()
            .filter(|(k, _)| k.starts_with('s'))
            .map(|(_, v)| v.split(',').count())
            .sum();
        assert_eq!(tags, MAX_STORES);
    }
}

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
