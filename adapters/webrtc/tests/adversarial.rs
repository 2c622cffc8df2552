#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Hostile room members against a real peer, on 127.0.0.1: each attack
//! asserts a bound, and a legitimate member is served during it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn::{Keypair, Result};
use cairn_conformance::util::sid;
use cairn_memory::MemoryStore;
use cairn_webrtc::*;
use tokio::sync::mpsc;

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
        WebRtcStoreOptions::default(),
    )
}

/// The next answer the peer sends to `to`, skipping answers to others.
async fn answer_to(
    sent: &mut mpsc::UnboundedReceiver<(PeerId, SignalMessage)>,
    to: PeerId,
    others: &mut usize,
) -> String {
    loop {
        let (peer, msg) = tokio::time::timeout(Duration::from_secs(20), sent.recv())
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
    assert!(
        grown <= 8,
        "the flood opened {grown} file descriptors (bound: 8)"
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
