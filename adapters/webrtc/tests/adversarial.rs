#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Hostile room members against a real peer, on 127.0.0.1: each attack
//! asserts a bound, and a legitimate member is served during it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn::{AppendOnlyStore, ChangeBuilder, ChangeKind, Keypair, Result};
use cairn_conformance::util::{doc, sid};
use cairn_memory::MemoryStore;
use cairn_protocol::{
    DEFAULT_MAX_FRAME, FrameDecoder, MIN_MAX_FRAME, Message, Request, Response, client_hello,
    encode,
};
use cairn_webrtc::*;
use tokio::sync::mpsc;

/// These tests measure this process's RSS and descriptors, and `cargo test`
/// runs a file's tests as threads of one process: they take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const T: Duration = Duration::from_secs(20);

fn lo() -> std::net::IpAddr {
    [127, 0, 0, 1].into()
}

fn rss_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

/// A hostile peer on a raw data channel: it pairs with `victim` by hand,
/// authenticates as `key` (a caller only: it serves nothing) and greets;
/// then the test speaks the protocol byte by byte.
struct Hostile {
    ch: RawChannel,
    dec: FrameDecoder,
}

impl Hostile {
    async fn pair(victim: &WebRtcStore, key: &Keypair) -> Hostile {
        let (offer, pending) = victim.offer().await.unwrap();
        let (answer, open) = RawChannel::answer(lo(), &decode_sdp(&offer).unwrap(), T)
            .await
            .unwrap();
        let answer = encode_sdp(&answer);
        // The victim's side finishes once it has pulled from us, which a
        // caller-only peer never lets it do; it is not waited for.
        tokio::spawn(async move {
            let _ = pending.accept(&answer).await;
        });
        let mut ch = tokio::time::timeout(T, open).await.unwrap().unwrap();
        let (local, remote) = ch.fingerprints();
        let mut signed = AUTH_CONTEXT.to_vec();
        signed.extend_from_slice(local);
        signed.extend_from_slice(remote);
        let mut auth = AUTH_MAGIC.to_vec();
        auth.extend_from_slice(key.author().as_bytes());
        auth.push(ROLE_CALLS);
        auth.extend_from_slice(&key.sign(&signed).to_bytes());
        ch.send(auth).await.unwrap();
        let theirs = tokio::time::timeout(T, ch.recv()).await.unwrap().unwrap();
        assert_eq!(theirs.len(), AUTH_LEN, "the victim's auth message");
        let mut h = Hostile {
            ch,
            dec: FrameDecoder::new(DEFAULT_MAX_FRAME),
        };
        match h.next().await {
            Message::Hello(_) => {}
            other => panic!("expected the victim's hello, got {other:?}"),
        }
        let hello = client_hello(victim.cache().store_id().clone(), DEFAULT_MAX_FRAME);
        h.ch.send(encode(&Message::Hello(hello), MIN_MAX_FRAME).unwrap())
            .await
            .unwrap();
        h
    }

    async fn request(&self, id: u32, body: Request) {
        let msg = Message::Request { id, body };
        self.ch
            .send(encode(&msg, DEFAULT_MAX_FRAME).unwrap())
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Message {
        loop {
            if let Some(m) = self.dec.pop().unwrap() {
                return m;
            }
            let bytes = tokio::time::timeout(T, self.ch.recv())
                .await
                .expect("the victim went silent")
                .expect("the victim closed the channel");
            self.dec.push(&bytes);
        }
    }

    /// Responses until the one to request `id`; the others are returned
    /// too (id, body).
    async fn until(&mut self, id: u32) -> (Response, Vec<(u32, Response)>) {
        let mut others = Vec::new();
        // Bounded: each step waits at most T for the next message.
        for _ in 0..100_000 {
            match self.next().await {
                Message::Response { id: got, body } if got == id => return (body, others),
                Message::Response { id: got, body } => others.push((got, body)),
                _ => {}
            }
        }
        panic!("no answer to request {id}");
    }
}

/// Signaling the test drives by hand: it feeds the events and sees every
/// message the peer sends.
struct Scripted {
    events: mpsc::UnboundedReceiver<SignalEvent>,
    sent: mpsc::UnboundedSender<(PeerId, SignalMessage)>,
}

#[async_trait]
impl Signaling for Scripted {
    async fn recv(&mut self) -> Option<SignalEvent> {
        self.events.recv().await
    }
    async fn send(&mut self, to: PeerId, message: SignalMessage) -> Result<()> {
        let _ = self.sent.send((to, message));
        Ok(())
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn store(key: &Keypair) -> WebRtcStore {
    WebRtcStore::new(
        Arc::new(MemoryStore::new(sid())),
        key,
        Arc::new(Acl::open()),
        WebRtcStoreOptions::loopback(),
    )
}

/// The next answer the peer sends to `to`, skipping answers to others.
async fn answer_to(
    sent: &mut mpsc::UnboundedReceiver<(PeerId, SignalMessage)>,
    to: PeerId,
    others: &mut usize,
) -> String {
    loop {
        let (peer, msg) = tokio::time::timeout(T, sent.recv())
            .await
            .expect("the peer never answered the legitimate offer")
            .expect("signaling closed");
        match msg {
            SignalMessage::Answer { sdp } if peer == to => return sdp,
            SignalMessage::Answer { .. } => *others += 1,
            SignalMessage::Offer { .. } => {}
        }
    }
}

/// A member sending 50 offers at once gets a handful answered (each answer
/// opens a UDP socket), a newer offer replaces the one being answered, the
/// process's file descriptors stay bounded, and another member pairs
/// during the flood. Before offers were limited, every offer opened a
/// socket for up to 20 s: 50 offers were 50 more descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_flood_opens_a_bounded_number_of_sockets() {
    let _serial = SERIAL.lock().await;
    let (kv, ka, kc) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    let victim = store(&kv);
    let (ev_tx, events) = mpsc::unbounded_channel();
    let (sent_tx, mut sent) = mpsc::unbounded_channel();
    victim.join(Scripted {
        events,
        sent: sent_tx,
    });
    // A real offer from the attacker, replayed 50 times.
    let attacker = store(&ka);
    let (encoded, _attacker_pending) = attacker.offer().await.unwrap();
    let sdp = decode_sdp(&encoded).unwrap();
    let before = open_fds();
    for _ in 0..50 {
        ev_tx
            .send(SignalEvent::Message {
                from: ka.author(),
                message: SignalMessage::Offer { sdp: sdp.clone() },
            })
            .unwrap();
    }
    // A legitimate member offers after the flood; the room handles events
    // in order, so its answer means every offer before it was handled.
    let honest = store(&kc);
    let (encoded, pending) = honest.offer().await.unwrap();
    ev_tx
        .send(SignalEvent::Message {
            from: kc.author(),
            message: SignalMessage::Offer {
                sdp: decode_sdp(&encoded).unwrap(),
            },
        })
        .unwrap();
    let mut to_attacker = 0;
    let answer = answer_to(&mut sent, kc.author(), &mut to_attacker).await;
    let grown = open_fds().saturating_sub(before);
    assert!(
        to_attacker <= 4,
        "{to_attacker} of 50 offers were answered (burst is 4)"
    );
    // The burst's sockets (4; a replaced one closes within half a second),
    // the legitimate pairing's two, and slack for the runtime: far below
    // the 50 that one socket per offer would open.
    assert!(
        grown <= 16,
        "the flood opened {grown} file descriptors (bound: 16)"
    );
    let proven = tokio::time::timeout(
        Duration::from_secs(20),
        pending.accept(&encode_sdp(&answer)),
    )
    .await
    .expect("the legitimate member never paired")
    .unwrap();
    assert_eq!(proven, kv.author());
    victim.close().await;
    honest.close().await;
    attacker.close().await;
}

/// Served subscriptions hold no request permits: a peer that opens 70 of
/// them gets 8 and an error for each of the rest, and its next request is
/// still answered. Before, each subscription held one of the 64 permits
/// for life and the 65th request was never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_capped_and_never_starve_requests() {
    let _serial = SERIAL.lock().await;
    let victim = store(&Keypair::generate());
    let mut h = Hostile::pair(&victim, &Keypair::generate()).await;
    for id in 1..=70 {
        h.request(id, Request::Subscribe).await;
    }
    h.request(100, Request::Head).await;
    let (head, others) = h.until(100).await;
    assert!(matches!(head, Response::Head(_)), "{head:?}");
    // Every subscription was answered before the head (they are handled
    // in order): 8 accepted, the rest refused.
    let done = others
        .iter()
        .filter(|(_, b)| matches!(b, Response::Done))
        .count();
    let refused = others
        .iter()
        .filter(|(_, b)| matches!(b, Response::Error(_)))
        .count();
    assert_eq!((done, refused), (8, 62), "{others:?}");
    victim.close().await;
}

/// One request naming a 1 MiB change 20,000 times is answered with the
/// change once, and the victim's memory stays flat; an unbounded scan is
/// capped. Before dispatch coalesced ids and capped responses, the answer
/// would have been 20 GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_ids_and_unbounded_scans_are_bounded() {
    let _serial = SERIAL.lock().await;
    let victim = store(&Keypair::generate());
    let big = ChangeBuilder::new(ChangeKind::Change, doc("d"))
        .payload(vec![7u8; 1 << 20])
        .build()
        .unwrap();
    let id = big.id();
    victim.cache().append(vec![big]).await.unwrap();
    let mut h = Hostile::pair(&victim, &Keypair::generate()).await;
    let rss0 = rss_mib();
    h.request(1, Request::GetChanges(vec![id; 20_000])).await;
    match h.until(1).await.0 {
        Response::Changes(v) => assert_eq!(v.len(), 1, "repeated ids are coalesced"),
        other => panic!("{other:?}"),
    }
    h.request(
        2,
        Request::Scan {
            after: 0,
            limit: u64::MAX,
        },
    )
    .await;
    match h.until(2).await.0 {
        Response::ScanItems(v) => assert_eq!(v.len(), 1),
        other => panic!("{other:?}"),
    }
    assert!(
        rss_mib() < rss0 + 64,
        "RSS grew from {rss0} to {} MiB",
        rss_mib()
    );
    victim.close().await;
}

/// A store whose live feed fails: every subscription yields one error.
#[derive(Debug)]
struct BrokenFeed(MemoryStore);

#[async_trait]
impl cairn::AppendOnlyStore for BrokenFeed {
    fn store_id(&self) -> &cairn::StoreId {
        self.0.store_id()
    }
    fn capabilities(&self) -> cairn::Capabilities {
        self.0.capabilities()
    }
    async fn append(&self, changes: Vec<cairn::Change>) -> Result<cairn::AppendOutcome> {
        self.0.append(changes).await
    }
    async fn get_changes(&self, ids: &[cairn::ChangeId]) -> Result<Vec<cairn::Change>> {
        self.0.get_changes(ids).await
    }
    async fn get_metas(&self, ids: &[cairn::ChangeId]) -> Result<Vec<cairn::ChangeMeta>> {
        self.0.get_metas(ids).await
    }
    async fn has_changes(&self, ids: &[cairn::ChangeId]) -> Result<Vec<bool>> {
        self.0.has_changes(ids).await
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<cairn::ScanItem>> {
        self.0.scan(after, limit).await
    }
    async fn head(&self) -> Result<cairn::Head> {
        self.0.head().await
    }
    async fn subscribe(&self) -> Result<cairn::ChangeStream> {
        use futures::StreamExt;
        let e = cairn::Error::backend("feed", true, std::io::Error::other("the feed broke"));
        Ok(futures::stream::once(async move { Err(e) }).boxed())
    }
}

/// A served subscription whose feed fails tells its subscriber with an
/// error for that subscription, so live updates do not just stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_served_subscription_reaches_the_subscriber() {
    let _serial = SERIAL.lock().await;
    let victim = WebRtcStore::new(
        Arc::new(BrokenFeed(MemoryStore::new(sid()))),
        &Keypair::generate(),
        Arc::new(Acl::open()),
        WebRtcStoreOptions::loopback(),
    );
    let mut h = Hostile::pair(&victim, &Keypair::generate()).await;
    h.request(5, Request::Subscribe).await;
    let (first, _) = h.until(5).await;
    assert!(matches!(first, Response::Done), "{first:?}");
    let (second, _) = h.until(5).await;
    match second {
        Response::Error(e) => assert!(e.into_error().to_string().contains("feed broke")),
        other => panic!("expected the subscription's error, got {other:?}"),
    }
    victim.close().await;
}
