//! Driving one str0m peer connection over a tokio UDP socket: the only
//! place that does I/O for WebRTC. It opens one reliable, ordered data
//! channel and moves whole byte strings over it in chunks of at most
//! [`CHUNK`] bytes.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cairn::{Error, Result};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::{mpsc, oneshot};

use crate::ice::{IceConfig, Inbound, Net};
use tracing::{debug, trace, warn};

/// Largest data channel message sent: browsers reject messages over
/// 256 KiB, and 64 KiB is what every implementation accepts.
pub const CHUNK: usize = 64 * 1024;

/// Label of Cairn's data channel.
pub const LABEL: &str = "cairn/1";

/// Outgoing byte strings queued towards the driver (each may be large; the
/// driver cuts them into chunks).
const OUT_QUEUE: usize = 4;

/// Sent as a text message when this side hangs up. The protocol's bytes
/// always travel as binary messages, so any text message means the peer is
/// gone: str0m 0.24 does not tell the peer about a closed channel, and
/// without this it would notice only when ICE gives up, about 20 s later.
const GOODBYE: &[u8] = b"cairn: goodbye";

/// Data-channel messages (each at most a [`CHUNK`]) waiting for the
/// protocol layer to take them. When this many wait, the driver stops
/// reading its socket: the kernel's buffer fills, and SCTP's flow control
/// slows the peer down. A peer can make us hold about 2 × 64 × 64 KiB.
const IN_QUEUE: usize = 64;

pub(crate) fn rtc_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::backend(
        "webrtc",
        false,
        std::io::Error::other(format!("{what}: {e}")),
    )
}

fn lost(what: &str) -> Error {
    Error::backend(
        "webrtc",
        true,
        std::io::Error::new(std::io::ErrorKind::ConnectionReset, what.to_owned()),
    )
}

/// An open data channel: a byte pipe with message boundaries, plus the DTLS
/// fingerprints of the session it runs on (for authentication).
#[derive(Debug)]
pub(crate) struct Channel {
    /// Send one byte string (cut into chunks by the driver).
    pub(crate) tx: mpsc::Sender<Vec<u8>>,
    /// Channel messages as they arrive.
    pub(crate) rx: mpsc::Receiver<Vec<u8>>,
    /// SHA-256 of our DTLS certificate.
    pub(crate) local_fp: Vec<u8>,
    /// SHA-256 of the peer's DTLS certificate (checked by DTLS against the SDP).
    pub(crate) remote_fp: Vec<u8>,
    /// The (local, remote) addresses of the candidate pair ICE chose: where
    /// our packets go when the channel opens.
    pub(crate) path: Option<(SocketAddr, SocketAddr)>,
}

/// A peer connection being set up.
pub(crate) struct Setup {
    rtc: Rtc,
    net: Net,
}

impl Setup {
    /// Bind the connection's sockets and gather its candidates (see
    /// [`Net::gather`]).
    pub(crate) async fn new(cfg: &IceConfig) -> Result<Self> {
        let (net, cands) = Net::gather(cfg).await?;
        let mut rtc = Rtc::builder()
            .set_stats_interval(None)
            .build(Instant::now());
        for c in cands {
            rtc.add_local_candidate(c);
        }
        Ok(Setup { rtc, net })
    }

    /// Make an offer with Cairn's data channel.
    pub(crate) fn offer(mut self) -> Result<(String, PendingOffer)> {
        let mut api = self.rtc.sdp_api();
        api.add_channel(LABEL.to_owned());
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| rtc_err("offer", "nothing to negotiate"))?;
        Ok((
            offer.to_sdp_string(),
            PendingOffer {
                setup: self,
                pending,
            },
        ))
    }

    /// Answer a remote offer; the connection starts at once.
    pub(crate) fn answer(
        mut self,
        offer: &str,
        open_timeout: Duration,
    ) -> Result<(String, oneshot::Receiver<Result<Channel>>)> {
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| rtc_err("offer", e))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| rtc_err("accept offer", e))?;
        let rx = spawn_driver(self.rtc, self.net, open_timeout);
        Ok((answer.to_sdp_string(), rx))
    }
}

/// An offer waiting for its answer.
pub(crate) struct PendingOffer {
    setup: Setup,
    pending: SdpPendingOffer,
}

impl std::fmt::Debug for PendingOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingOffer")
    }
}

impl PendingOffer {
    /// Apply the answer; the connection starts.
    pub(crate) fn accept(
        self,
        answer: &str,
        open_timeout: Duration,
    ) -> Result<oneshot::Receiver<Result<Channel>>> {
        let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| rtc_err("answer", e))?;
        let mut rtc = self.setup.rtc;
        rtc.sdp_api()
            .accept_answer(self.pending, answer)
            .map_err(|e| rtc_err("accept answer", e))?;
        Ok(spawn_driver(rtc, self.setup.net, open_timeout))
    }
}

fn spawn_driver(rtc: Rtc, net: Net, open_timeout: Duration) -> oneshot::Receiver<Result<Channel>> {
    let (open_tx, open_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut d = Driver {
            rtc,
            net,
            open_tx: Some(open_tx),
            in_tx: None,
            inbound: VecDeque::new(),
            channel: None,
            queue: VecDeque::new(),
            offset: 0,
            last_path: None,
        };
        let r = d.run(open_timeout).await;
        if let Some(tx) = d.open_tx.take() {
            let _ = tx.send(Err(match r {
                Err(e) => e,
                Ok(()) => lost("peer connection ended before the data channel opened"),
            }));
        } else if let Err(e) = r {
            debug!(error = %e, "peer connection ended");
        }
    });
    open_rx
}

struct Driver {
    rtc: Rtc,
    net: Net,
    open_tx: Option<oneshot::Sender<Result<Channel>>>,
    in_tx: Option<mpsc::Sender<Vec<u8>>>,
    /// Received messages the protocol layer has not taken yet.
    inbound: VecDeque<Vec<u8>>,
    channel: Option<ChannelId>,
    queue: VecDeque<Vec<u8>>,
    offset: usize,
    /// (source, destination) of the last packet sent.
    last_path: Option<(SocketAddr, SocketAddr)>,
}

enum Step {
    Continue,
    Stop,
}

impl Driver {
    async fn run(&mut self, open_timeout: Duration) -> Result<()> {
        let open_deadline = tokio::time::Instant::now() + open_timeout;
        // Start ICE now: str0m runs its agent on inputs, and the first
        // timeout it asks for can be far off, so without this the side
        // whose peer's checks cannot reach it (behind a NAT) would wait
        // for that timeout before sending its own.
        self.rtc
            .handle_input(Input::Timeout(Instant::now()))
            .map_err(|e| rtc_err("timeout", e))?;
        let mut cmd_rx: Option<mpsc::Receiver<Vec<u8>>> = None;
        let mut buf = vec![0u8; 65_536];
        loop {
            // Drain every output after each mutation (str0m's contract).
            let timeout = match self.drain(&mut cmd_rx).await? {
                (Step::Stop, _) => return Ok(()),
                (Step::Continue, t) => t,
            };
            if !self.rtc.is_alive() {
                return Ok(());
            }
            // One write per mutation, then drain again.
            if self.write_some()? {
                continue;
            }
            if self.open_tx.as_ref().is_some_and(|t| t.is_closed()) {
                // Nobody waits for this channel any more (a newer offer
                // replaced it, or the store closed): free the socket now
                // rather than at the open deadline.
                debug!("pairing abandoned; closing its socket");
                self.rtc.disconnect();
                let _ = self.drain(&mut None).await;
                return Ok(());
            }
            if self.open_tx.is_some() && tokio::time::Instant::now() >= open_deadline {
                return Err(Error::backend(
                    "webrtc",
                    true,
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "data channel did not open in time",
                    ),
                ));
            }
            // Hand over what was received, as far as the reader keeps up.
            if let Some(tx) = &self.in_tx {
                while let Some(front) = self.inbound.pop_front() {
                    match tx.try_send(front) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(back)) => {
                            self.inbound.push_front(back);
                            break;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            self.hang_up().await;
                            return Ok(());
                        }
                    }
                }
            }
            let timeout = match self.net.tick().await {
                Some(t) => timeout.min(t),
                None => timeout,
            };
            let wait = timeout
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500));
            let want_cmd = self.queue.len() < 2;
            // Backpressure: stop reading the socket while the reader lags.
            let want_input = self.inbound.len() < IN_QUEUE;
            let has_inbound = !self.inbound.is_empty();
            let in_tx = if has_inbound {
                self.in_tx.clone()
            } else {
                None
            };
            tokio::select! {
                permit = async { match in_tx { Some(t) => t.reserve_owned().await, None => std::future::pending().await } }, if has_inbound => {
                    match permit {
                        Ok(p) => {
                            if let Some(front) = self.inbound.pop_front() {
                                p.send(front);
                            }
                        }
                        Err(_) => {
                            self.hang_up().await;
                            return Ok(());
                        }
                    }
                }
                r = self.net.recv(&mut buf), if want_input => {
                    let d = r?;
                    let bytes = &buf[..d.len];
                    let rx = match self.net.classify(&d, bytes) {
                        Inbound::Handled => continue,
                        Inbound::Packet(source, dest, b) => Receive::new(Protocol::Udp, source, dest, b),
                        Inbound::Relayed(p, relayed) => {
                            // Through the relay: str0m sees it arrive at
                            // the relayed candidate, from the peer.
                            let Ok(rx) = Receive::new(Protocol::Udp, p.peer, relayed, p.data()) else {
                                trace!("ignoring an unparseable relayed datagram");
                                continue;
                            };
                            self.rtc
                                .handle_input(Input::Receive(Instant::now(), rx))
                                .map_err(|e| rtc_err("input", e))?;
                            continue;
                        }
                    };
                    let Ok(rx) = rx else {
                        trace!("ignoring an unparseable datagram");
                        continue;
                    };
                    self.rtc
                        .handle_input(Input::Receive(Instant::now(), rx))
                        .map_err(|e| rtc_err("input", e))?;
                }
                cmd = async { match cmd_rx.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } }, if want_cmd => {
                    match cmd {
                        Some(bytes) => {
                            if !bytes.is_empty() {
                                self.queue.push_back(bytes);
                            }
                        }
                        None => {
                            // Our side dropped the channel: close it politely.
                            debug!("closing the data channel");
                            self.hang_up().await;
                            return Ok(());
                        }
                    }
                }
                _ = tokio::time::sleep(wait) => {
                    self.rtc
                        .handle_input(Input::Timeout(Instant::now()))
                        .map_err(|e| rtc_err("timeout", e))?;
                }
                _ = async { match self.in_tx.as_ref() { Some(t) => t.closed().await, None => std::future::pending().await } } => {
                    // Nobody reads any more.
                    self.hang_up().await;
                    return Ok(());
                }
            }
        }
    }

    /// End the connection: say goodbye (see [`GOODBYE`]), close the data
    /// channel, then the peer connection.
    async fn hang_up(&mut self) {
        if let Some(id) = self.channel.take() {
            if let Some(mut ch) = self.rtc.channel(id)
                && let Err(e) = ch.write(false, GOODBYE)
            {
                debug!(error = %e, "could not say goodbye");
            }
            let _ = self.drain(&mut None).await;
            self.rtc.direct_api().close_data_channel(id);
            let _ = self.drain(&mut None).await;
        }
        self.rtc.disconnect();
        let _ = self.drain(&mut None).await;
    }

    /// Write the next chunk if the channel takes it. Returns whether a write
    /// happened (a mutation, so the caller drains).
    fn write_some(&mut self) -> Result<bool> {
        let (Some(id), Some(front)) = (self.channel, self.queue.front()) else {
            return Ok(false);
        };
        let end = (self.offset + CHUNK).min(front.len());
        let Some(mut ch) = self.rtc.channel(id) else {
            return Err(lost("data channel gone"));
        };
        match ch.write(true, &front[self.offset..end]) {
            Ok(true) => {
                if end == front.len() {
                    self.queue.pop_front();
                    self.offset = 0;
                } else {
                    self.offset = end;
                }
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => Err(rtc_err("data channel write", e)),
        }
    }

    async fn drain(
        &mut self,
        cmd_rx: &mut Option<mpsc::Receiver<Vec<u8>>>,
    ) -> Result<(Step, Instant)> {
        // Bounded: str0m ends every drain with a timeout; the bound only
        // guards against a bug turning this into a spin.
        for _ in 0..1_000_000 {
            let out = self.rtc.poll_output().map_err(|e| rtc_err("poll", e))?;
            match out {
                Output::Timeout(t) => return Ok((Step::Continue, t)),
                Output::Transmit(t) => {
                    self.last_path = Some((t.source, t.destination));
                    self.net.send(t.source, t.destination, &t.contents).await;
                }
                Output::Event(e) => {
                    if let Step::Stop = self.event(e, cmd_rx) {
                        return Ok((Step::Stop, Instant::now()));
                    }
                }
            }
        }
        Err(rtc_err("poll", "str0m produced output without end"))
    }

    fn event(&mut self, e: Event, cmd_rx: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Step {
        match e {
            Event::ChannelOpen(id, label) => {
                if label != LABEL || self.channel.is_some() {
                    warn!(%label, "ignoring an unexpected data channel");
                    return Step::Continue;
                }
                debug!("data channel open");
                self.channel = Some(id);
                let (tx, rx) = mpsc::channel(OUT_QUEUE);
                let (in_tx, in_rx) = mpsc::channel(IN_QUEUE);
                *cmd_rx = Some(rx);
                self.in_tx = Some(in_tx);
                let api = self.rtc.direct_api();
                let local_fp = api.local_dtls_fingerprint().bytes.clone();
                let remote_fp = api
                    .remote_dtls_fingerprint()
                    .map(|f| f.bytes.clone())
                    .unwrap_or_default();
                if let Some(open) = self.open_tx.take() {
                    let _ = open.send(Ok(Channel {
                        tx,
                        rx: in_rx,
                        local_fp,
                        remote_fp,
                        path: self.last_path,
                    }));
                }
                Step::Continue
            }
            Event::ChannelData(d) if Some(d.id) == self.channel && !d.binary => {
                debug!("the peer hung up");
                // Ours is closed too: nothing more to say.
                self.channel = None;
                Step::Stop
            }
            Event::ChannelData(d) => {
                if Some(d.id) == self.channel && self.in_tx.is_some() {
                    self.inbound.push_back(d.data);
                }
                Step::Continue
            }
            Event::ChannelClose(id) => {
                if Some(id) == self.channel {
                    debug!("data channel closed by the peer");
                    Step::Stop
                } else {
                    Step::Continue
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                debug!("ICE disconnected");
                Step::Stop
            }
            _ => Step::Continue,
        }
    }
}

/// A bare data channel between two endpoints of this process (no auth, no
/// Cairn protocol): the baseline the benchmark compares against.
#[derive(Debug)]
pub struct RawChannel {
    inner: Channel,
}

impl RawChannel {
    /// Open a channel between two new peer connections on `ip` (offer,
    /// answer, ICE, DTLS, SCTP), as the manual pairing does.
    pub async fn pair(ip: IpAddr, timeout: Duration) -> Result<(RawChannel, RawChannel)> {
        let cfg = IceConfig::host(ip);
        let (offer, pending) = Setup::new(&cfg).await?.offer()?;
        let (answer, b) = Setup::new(&cfg).await?.answer(&offer, timeout)?;
        let a = pending.accept(&answer, timeout)?;
        let a = a.await.map_err(|_| Error::Closed)??;
        let b = b.await.map_err(|_| Error::Closed)??;
        Ok((RawChannel { inner: a }, RawChannel { inner: b }))
    }

    /// Answer a peer's `offer` (SDP text, as the signaling or
    /// [`decode_sdp`](crate::decode_sdp) gives it) from a new peer
    /// connection on `ip`: the answer SDP, and the channel once it is open.
    /// Nothing above the data channel is spoken: this is how tests play a
    /// hostile peer byte by byte.
    pub async fn answer(
        ip: IpAddr,
        offer: &str,
        timeout: Duration,
    ) -> Result<(String, impl Future<Output = Result<RawChannel>> + use<>)> {
        let (answer, rx) = Setup::new(&IceConfig::host(ip))
            .await?
            .answer(offer, timeout)?;
        Ok((answer, async move {
            let ch = rx.await.map_err(|_| Error::Closed)??;
            Ok(RawChannel { inner: ch })
        }))
    }

    /// SHA-256 of this side's DTLS certificate, then of the peer's: what
    /// the auth message signs.
    pub fn fingerprints(&self) -> (&[u8], &[u8]) {
        (&self.inner.local_fp, &self.inner.remote_fp)
    }

    /// Send a byte string (cut into messages of at most [`CHUNK`] bytes).
    pub async fn send(&self, bytes: Vec<u8>) -> Result<()> {
        self.inner.tx.send(bytes).await.map_err(|_| Error::Closed)
    }

    /// The next message; `None` once the channel is closed.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.inner.rx.recv().await
    }
}
