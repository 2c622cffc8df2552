//! Where a peer connection's packets go: the UDP sockets it binds (one per
//! interface address), the candidates it announces for them (host, plus
//! server-reflexive ones from STUN), and TURN allocations that relay its
//! packets when no direct path works.
//!
//! STUN is spoken with the `stun-types` crate and TURN with the sans-I/O
//! `turn-client-proto` client (RFC 5766/8656, long-term credentials, from
//! the same author); this module only moves their datagrams.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use cairn::{Error, Result};
use str0m::Candidate;
use tokio::net::UdpSocket;
use tracing::{debug, trace};
use turn_client_proto::api::{TurnConfig, TurnEvent, TurnPeerData, TurnPollRet, TurnRecvRet};
use turn_client_proto::prelude::*;
use turn_client_proto::types::{TransportType, TurnCredentials};
use turn_client_proto::udp::TurnClientUdp;

use crate::rtc::rtc_err;

/// A TURN server (UDP) and the long-term credentials it accepts.
///
/// Its `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnServer {
    /// Where it listens (UDP, usually port 3478).
    pub addr: SocketAddr,
    /// The username of its long-term credential.
    pub username: String,
    /// The password of its long-term credential.
    pub password: String,
}

impl TurnServer {
    /// A TURN server at `addr` with a long-term credential.
    pub fn new(addr: SocketAddr, username: impl Into<String>, password: impl Into<String>) -> Self {
        TurnServer {
            addr,
            username: username.into(),
            password: password.into(),
        }
    }
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("addr", &self.addr)
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// What one peer connection gathers candidates from.
#[derive(Debug, Clone)]
pub(crate) struct IceConfig {
    /// One address, or the unspecified address for every interface's.
    pub(crate) bind_ip: IpAddr,
    pub(crate) stun: Vec<SocketAddr>,
    pub(crate) turn: Vec<TurnServer>,
    /// Announce relayed candidates only.
    pub(crate) relay_only: bool,
}

impl IceConfig {
    /// Host candidates on `ip` only: no STUN, no TURN.
    pub(crate) fn host(ip: IpAddr) -> Self {
        IceConfig {
            bind_ip: ip,
            stun: Vec::new(),
            turn: Vec::new(),
            relay_only: false,
        }
    }
}

/// Most STUN servers asked per connection.
const MAX_STUN_SERVERS: usize = 4;
/// Most TURN servers allocated on per connection.
const MAX_TURN_SERVERS: usize = 2;
/// Most interface addresses bound per connection (one socket each).
const MAX_INTERFACES: usize = 8;
/// How long one STUN server has to answer (two requests).
const STUN_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long one TURN allocation may take (authentication round included).
const TURN_TIMEOUT: Duration = Duration::from_secs(3);
/// Most peer addresses one allocation creates permissions or channels
/// for: ICE tries a few candidates per peer; a peer announcing thousands
/// cannot make us flood the TURN server.
const MAX_PERMISSIONS: usize = 16;

/// The addresses to bind for `ip`: itself, or, for the unspecified
/// address, every up interface's (IPv4 and global IPv6; loopback only when
/// there is nothing else), at most [`MAX_INTERFACES`].
fn bind_addresses(ip: IpAddr) -> Result<Vec<IpAddr>> {
    if !ip.is_unspecified() {
        return Ok(vec![ip]);
    }
    let ifs = if_addrs::get_if_addrs().map_err(|e| rtc_err("listing network interfaces", e))?;
    let usable = |a: &IpAddr| match a {
        IpAddr::V4(v4) => !v4.is_link_local(),
        // Link-local IPv6 needs a scope id the candidate cannot carry.
        IpAddr::V6(v6) => !v6.is_unicast_link_local(),
    };
    let mut out: Vec<IpAddr> = ifs
        .iter()
        .map(|i| i.ip())
        .filter(|a| !a.is_loopback() && usable(a) && (a.is_ipv4() == ip.is_ipv4() || ip.is_ipv6()))
        .collect();
    out.dedup();
    if out.is_empty() {
        out.push(if ip.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        });
    }
    out.truncate(MAX_INTERFACES);
    Ok(out)
}

/// Ask `server` which address `socket`'s packets come from (a STUN Binding
/// request, RFC 8489, written and parsed with the `stun-types` crate): the
/// NAT's mapping, which becomes a server-reflexive candidate. Two requests
/// within `STUN_TIMEOUT`; datagrams that are not the answer are dropped
/// (the socket is not in use yet).
async fn stun_mapped(socket: &UdpSocket, server: SocketAddr) -> Result<SocketAddr> {
    use stun_types::attribute::XorMappedAddress;
    use stun_types::message::{BINDING, Message, MessageClass, MessageWriteVec};
    use stun_types::prelude::*;
    let req = Message::builder_request(BINDING, MessageWriteVec::new()).finish();
    let sent = Message::from_bytes(&req).map_err(|e| rtc_err("STUN request", e))?;
    let trans = sent.transaction_id();
    let deadline = tokio::time::Instant::now() + STUN_TIMEOUT;
    let mut buf = vec![0u8; 2048];
    for attempt in 0..2u32 {
        socket.send_to(&req, server).await?;
        let until = if attempt == 0 {
            tokio::time::Instant::now() + STUN_TIMEOUT / 2
        } else {
            deadline
        };
        // Bounded by `until`: each turn waits for a datagram.
        loop {
            let Ok(r) = tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await else {
                break;
            };
            let (len, from) = r?;
            if from != server {
                continue;
            }
            let Ok(m) = Message::from_bytes(&buf[..len]) else {
                continue;
            };
            if m.transaction_id() != trans || m.method() != BINDING {
                continue;
            }
            if !m.has_class(MessageClass::Success) {
                return Err(rtc_err("STUN answer", "the server refused the request"));
            }
            let a = m
                .attribute::<XorMappedAddress>()
                .map_err(|e| rtc_err("STUN answer", e))?;
            return Ok(a.addr(trans));
        }
    }
    Err(Error::Timeout {
        what: format!("STUN server {server}"),
        after: STUN_TIMEOUT,
    })
}

/// A TURN allocation: the relayed address peers send to, and the client
/// that wraps our packets for the server.
struct Relay {
    client: TurnClientUdp,
    /// Index of the socket the allocation was made from.
    sock: usize,
    server: SocketAddr,
    relayed: SocketAddr,
    /// Peer addresses a channel was asked for (bounded).
    channels: Vec<SocketAddr>,
    /// Peer IPs a permission was asked for (bounded).
    permitted: Vec<IpAddr>,
}

/// Map a clock reading to the TURN client's clock (nanoseconds since `epoch`).
fn turn_now(epoch: Instant, now: Instant) -> turn_client_proto::stun::Instant {
    let nanos = now.saturating_duration_since(epoch).as_nanos();
    turn_client_proto::stun::Instant::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

/// Allocate on `server` from `socket`; the client, once the server granted
/// a relayed address, within [`TURN_TIMEOUT`].
async fn turn_allocate(
    socket: &UdpSocket,
    server: &TurnServer,
    epoch: Instant,
) -> Result<(TurnClientUdp, SocketAddr)> {
    let local = socket.local_addr()?;
    let creds = TurnCredentials::new(&server.username, &server.password);
    let mut client = TurnClientUdp::allocate(local, server.addr, TurnConfig::new(creds));
    let deadline = tokio::time::Instant::now() + TURN_TIMEOUT;
    let mut buf = vec![0u8; 2048];
    let timeout = || Error::Timeout {
        what: format!("TURN allocation on {}", server.addr),
        after: TURN_TIMEOUT,
    };
    // Bounded by `deadline`: each turn sends what is due and waits for a
    // datagram or the client's next timer.
    loop {
        let now = Instant::now();
        let wait = match client.poll(turn_now(epoch, now)) {
            TurnPollRet::WaitUntil(t) => t.to_std(epoch),
            TurnPollRet::Closed => {
                return Err(rtc_err(
                    &format!("TURN server {}", server.addr),
                    "the allocation failed (wrong credentials, or refused)",
                ));
            }
            _ => now + Duration::from_millis(50),
        };
        while let Some(t) = client.poll_transmit(turn_now(epoch, Instant::now())) {
            socket.send_to(&t.data, t.to).await?;
        }
        while let Some(ev) = client.poll_event() {
            match ev {
                TurnEvent::AllocationCreated(TransportType::Udp, relayed) => {
                    return Ok((client, relayed));
                }
                TurnEvent::AllocationCreateFailed(_) => {
                    return Err(rtc_err(
                        &format!("TURN server {}", server.addr),
                        "the allocation was refused",
                    ));
                }
                other => trace!(?other, "TURN event"),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(timeout());
        }
        let until = tokio::time::Instant::from_std(wait).min(deadline);
        let Ok(r) = tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await else {
            continue;
        };
        let (n, from) = r?;
        if from != server.addr {
            continue;
        }
        let t = turn_client_proto::api::Transmit::new(&buf[..n], TransportType::Udp, from, local);
        let _ = client.recv(t, turn_now(epoch, Instant::now()));
    }
}

/// The socket whose address the OS would send from towards `to`, else the
/// first of `to`'s family, else the first.
fn route_socket(socks: &[(UdpSocket, SocketAddr)], to: SocketAddr) -> usize {
    let unspec: SocketAddr = if to.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let routed = std::net::UdpSocket::bind(unspec)
        .and_then(|s| s.connect(to).and_then(|()| s.local_addr()))
        .ok()
        .map(|a| a.ip());
    socks
        .iter()
        .position(|(_, a)| Some(a.ip()) == routed)
        .or_else(|| socks.iter().position(|(_, a)| a.is_ipv4() == to.is_ipv4()))
        .unwrap_or(0)
}

/// A datagram received: on which socket, from where.
pub(crate) struct Datagram {
    pub(crate) sock: usize,
    pub(crate) len: usize,
    pub(crate) from: SocketAddr,
}

/// What a datagram turned out to be.
pub(crate) enum Inbound<'a> {
    /// For ICE/DTLS: (source, destination, bytes).
    Packet(SocketAddr, SocketAddr, &'a [u8]),
    /// A peer's packet the TURN server relayed to our relayed address (the
    /// second field): its source is `peer`, its bytes `data()`.
    Relayed(TurnPeerData<&'a [u8]>, SocketAddr),
    /// TURN's own traffic, handled.
    Handled,
}

/// A peer connection's sockets and TURN allocations.
pub(crate) struct Net {
    socks: Vec<(UdpSocket, SocketAddr)>,
    relays: Vec<Relay>,
    epoch: Instant,
    /// The socket [`recv`](Net::recv) polls first next time.
    next_sock: AtomicUsize,
}

impl Net {
    /// Bind the sockets, ask STUN and TURN servers, and return the
    /// candidates to announce: a host candidate per socket, a
    /// server-reflexive one per distinct public mapping STUN (or TURN)
    /// reports, a relayed one per TURN allocation. Servers that do not
    /// answer in time are skipped (logged): ICE goes on with what it has.
    pub(crate) async fn gather(cfg: &IceConfig) -> Result<(Net, Vec<Candidate>)> {
        let mut socks = Vec::new();
        let mut cands = Vec::new();
        for ip in bind_addresses(cfg.bind_ip)? {
            let s = match UdpSocket::bind(SocketAddr::new(ip, 0)).await {
                Ok(s) => s,
                Err(e) if !cfg.bind_ip.is_unspecified() => return Err(e.into()),
                Err(e) => {
                    debug!(%ip, error = %e, "cannot bind an interface address; skipped");
                    continue;
                }
            };
            let a = s.local_addr()?;
            cands.push(Candidate::host(a, "udp").map_err(|e| rtc_err("host candidate", e))?);
            socks.push((s, a));
        }
        if socks.is_empty() {
            return Err(rtc_err("binding", "no interface address could be bound"));
        }
        let mut net = Net {
            socks,
            relays: Vec::new(),
            epoch: Instant::now(),
            next_sock: AtomicUsize::new(0),
        };
        let mut mapped_seen = Vec::new();
        for server in cfg.stun.iter().take(MAX_STUN_SERVERS) {
            let i = route_socket(&net.socks, *server);
            let (sock, base) = &net.socks[i];
            match stun_mapped(sock, *server).await {
                Ok(mapped) if mapped != *base && !mapped_seen.contains(&mapped) => {
                    mapped_seen.push(mapped);
                    debug!(%server, %mapped, "server-reflexive candidate");
                    match Candidate::server_reflexive(mapped, *base, "udp") {
                        Ok(c) => cands.push(c),
                        Err(e) => debug!(error = %e, "server-reflexive candidate refused"),
                    }
                }
                Ok(_) => {}
                Err(e) => debug!(%server, error = %e, "STUN server did not answer"),
            }
        }
        for server in cfg.turn.iter().take(MAX_TURN_SERVERS) {
            let i = route_socket(&net.socks, server.addr);
            match turn_allocate(&net.socks[i].0, server, net.epoch).await {
                Ok((client, relayed)) => {
                    debug!(server = %server.addr, %relayed, "relayed candidate");
                    // Kept even if str0m refuses the candidate, so that
                    // dropping `net` releases the allocation.
                    net.relays.push(Relay {
                        client,
                        sock: i,
                        server: server.addr,
                        relayed,
                        channels: Vec::new(),
                        permitted: Vec::new(),
                    });
                    match Candidate::relayed(relayed, net.socks[i].1, "udp") {
                        Ok(c) => cands.push(c),
                        Err(e) => debug!(error = %e, "relayed candidate refused"),
                    }
                }
                Err(e) => debug!(server = %server.addr, error = %e, "TURN allocation failed"),
            }
        }
        if cfg.relay_only {
            cands.retain(|c| c.kind() == str0m::CandidateKind::Relayed);
            if cands.is_empty() {
                return Err(rtc_err(
                    "relay-only ICE",
                    "no TURN server granted an allocation",
                ));
            }
        }
        Ok((net, cands))
    }

    /// Wait for a datagram on any socket, read into `buf`. Cancel-safe,
    /// and allocation-free: every socket is polled in turn, starting one
    /// further each call so that a busy socket cannot starve the others.
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> std::io::Result<Datagram> {
        let n = self.socks.len();
        let start = self.next_sock.fetch_add(1, Ordering::Relaxed) % n;
        std::future::poll_fn(|cx| {
            for k in 0..n {
                let sock = (start + k) % n;
                let mut rb = tokio::io::ReadBuf::new(buf);
                match self.socks[sock].0.poll_recv_from(cx, &mut rb) {
                    Poll::Ready(Ok(from)) => {
                        return Poll::Ready(Ok(Datagram {
                            sock,
                            len: rb.filled().len(),
                            from,
                        }));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Make sense of a datagram: TURN traffic goes through its client
    /// (data a peer sent to our relayed address comes out as a packet to
    /// it); anything else is for ICE, addressed to the socket it came in on.
    pub(crate) fn classify<'a>(&mut self, d: &Datagram, bytes: &'a [u8]) -> Inbound<'a> {
        let local = self.socks[d.sock].1;
        let now = turn_now(self.epoch, Instant::now());
        if let Some(r) = self
            .relays
            .iter_mut()
            .find(|r| r.sock == d.sock && r.server == d.from)
        {
            let t = turn_client_proto::api::Transmit::new(bytes, TransportType::Udp, d.from, local);
            return match r.client.recv(t, now) {
                TurnRecvRet::Handled => Inbound::Handled,
                TurnRecvRet::PeerData(p) => {
                    trace!(peer = %p.peer, relayed = %r.relayed, len = p.data().len(), "relayed packet in");
                    Inbound::Relayed(p, r.relayed)
                }
                TurnRecvRet::Ignored(_) => Inbound::Packet(d.from, local, bytes),
                TurnRecvRet::PeerIcmp { .. } => Inbound::Handled,
            };
        }
        Inbound::Packet(d.from, local, bytes)
    }

    /// Send a packet ICE or DTLS made, from `source` (one of our host
    /// addresses, or a relayed one) to `to`.
    pub(crate) async fn send(&mut self, source: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let now = turn_now(self.epoch, Instant::now());
        if let Some(r) = self.relays.iter_mut().find(|r| r.relayed == source) {
            let sock = &self.socks[r.sock].0;
            if !r.client.have_permission(TransportType::Udp, to.ip()) {
                // The packet is dropped; ICE retransmits once the server
                // lets the peer's address through.
                if admit(&mut r.permitted, to.ip(), MAX_PERMISSIONS)
                    && let Err(e) = r.client.create_permission(TransportType::Udp, to.ip(), now)
                {
                    debug!(peer = %to, error = %e, "TURN permission not requested");
                }
            } else {
                // A channel shrinks the relay header from 36 bytes to 4.
                if admit(&mut r.channels, to, MAX_PERMISSIONS)
                    && let Err(e) = r.client.bind_channel(TransportType::Udp, to, now)
                {
                    debug!(peer = %to, error = %e, "TURN channel not requested");
                }
                trace!(peer = %to, len = bytes.len(), "packet out through the relay");
                match r.client.send_to(TransportType::Udp, to, bytes, now) {
                    Ok(Some(t)) => {
                        let t = t.build();
                        if let Err(e) = sock.send_to(&t.data, t.to).await {
                            debug!(error = %e, server = %t.to, "send to TURN server failed");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => debug!(peer = %to, error = %e, "TURN send failed"),
                }
            }
            flush(&mut r.client, sock, self.epoch).await;
            return;
        }
        let (sock, _) = self
            .socks
            .iter()
            .find(|(_, a)| *a == source)
            .unwrap_or(&self.socks[0]);
        if let Err(e) = sock.send_to(bytes, to).await {
            debug!(error = %e, %to, "send failed");
        }
    }

    /// Run the TURN clients' timers (refreshes, retransmits); when the
    /// next one is due.
    pub(crate) async fn tick(&mut self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for r in &mut self.relays {
            let now = turn_now(self.epoch, Instant::now());
            if let TurnPollRet::WaitUntil(t) = r.client.poll(now) {
                let t = t.to_std(self.epoch);
                next = Some(next.map_or(t, |n| n.min(t)));
            }
            flush(&mut r.client, &self.socks[r.sock].0, self.epoch).await;
        }
        next
    }
}

impl Drop for Net {
    /// Release the TURN allocations (best effort: one datagram each, sent
    /// without waiting), so that a connection that ends, or a setup that
    /// is abandoned before it connects, does not hold a relay port on the
    /// server until the allocation expires.
    fn drop(&mut self) {
        for r in &mut self.relays {
            let now = turn_now(self.epoch, Instant::now());
            if r.client.delete(now).is_err() {
                continue;
            }
            // Bounded: a delete queues one request.
            for _ in 0..4 {
                let Some(t) = r.client.poll_transmit(turn_now(self.epoch, Instant::now())) else {
                    break;
                };
                let _ = self.socks[r.sock].0.try_send_to(&t.data, t.to);
            }
        }
    }
}

/// Add `x` to `seen` if it is new and `seen` holds fewer than `cap`:
/// whether it was added (so the caller acts once per address, and never
/// for more than `cap` of them).
fn admit<T: PartialEq>(seen: &mut Vec<T>, x: T, cap: usize) -> bool {
    if seen.len() >= cap || seen.contains(&x) {
        return false;
    }
    seen.push(x);
    true
}

/// Send what a TURN client has queued and log its events.
async fn flush(client: &mut TurnClientUdp, sock: &UdpSocket, epoch: Instant) {
    // Bounded: the client queues a handful of requests at a time.
    for _ in 0..64 {
        let Some(t) = client.poll_transmit(turn_now(epoch, Instant::now())) else {
            break;
        };
        if let Err(e) = sock.send_to(&t.data, t.to).await {
            debug!(error = %e, server = %t.to, "send to TURN server failed");
        }
    }
    while let Some(ev) = client.poll_event() {
        debug!(?ev, "TURN event");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A `Net` over two loopback sockets and no relay.
    async fn two_sockets() -> Net {
        let mut socks = Vec::new();
        for ip in ["127.0.0.1", "127.0.0.2"] {
            let s = UdpSocket::bind((ip, 0)).await.unwrap();
            let a = s.local_addr().unwrap();
            socks.push((s, a));
        }
        Net {
            socks,
            relays: Vec::new(),
            epoch: Instant::now(),
            next_sock: AtomicUsize::new(0),
        }
    }

    #[tokio::test]
    async fn recv_takes_datagrams_from_every_socket_and_none_starves() {
        let net = two_sockets().await;
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Socket 0 is busy (10 waiting), socket 1 has one.
        for _ in 0..10 {
            peer.send_to(b"zero", net.socks[0].1).unwrap();
        }
        peer.send_to(b"one", net.socks[1].1).unwrap();
        let mut buf = [0u8; 64];
        let mut seen = Vec::new();
        for _ in 0..2 {
            let d = tokio::time::timeout(Duration::from_secs(5), net.recv(&mut buf))
                .await
                .expect("a datagram within 5 s")
                .unwrap();
            assert_eq!(d.from, peer.local_addr().unwrap());
            let want: &[u8] = if d.sock == 0 { b"zero" } else { b"one" };
            assert_eq!(&buf[..d.len], want);
            seen.push(d.sock);
        }
        // Two calls start at different sockets: the quiet one is served
        // although the busy one always has a datagram ready.
        seen.sort();
        assert_eq!(seen, vec![0, 1]);
    }

    #[test]
    fn a_peer_announcing_many_addresses_gets_at_most_the_cap() {
        let mut seen = Vec::new();
        let admitted = (0..1000u32)
            .map(|i| IpAddr::from(i.to_be_bytes()))
            .filter(|ip| admit(&mut seen, *ip, MAX_PERMISSIONS))
            .count();
        assert_eq!(admitted, MAX_PERMISSIONS);
        assert_eq!(seen.len(), MAX_PERMISSIONS);
        // Asking again for one already admitted does nothing.
        assert!(!admit(
            &mut seen,
            IpAddr::from(0u32.to_be_bytes()),
            MAX_PERMISSIONS
        ));
    }
}
