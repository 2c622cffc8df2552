//! The simulated network: connections carrying real protocol frames, a
//! virtual clock and one event queue, all driven by one seeded RNG.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use cairn::{Error, Result};
use cairn_protocol::{Call, Correlator, FrameDecoder, Incoming, Message, Request, Response};

use crate::Rng;

/// Lock a mutex, taking the data of a poisoned one (a panic is reported
/// separately by the simulator).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a response is delivered to the waiting call.
pub(crate) type Slot = Arc<Mutex<Option<Result<Response>>>>;

/// Virtual milliseconds a request waits for its answer.
pub(crate) const TIMEOUT_MS: u64 = 500;

/// A link between a client peer and a serving peer: `(client, server)`.
pub(crate) type Link = (usize, usize);

/// Link faults in force, as percentages and a delay bound.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    pub(crate) loss: u64,
    pub(crate) dup: u64,
    pub(crate) delay_max: u64,
    pub(crate) disconnect: u64,
}

/// One connection: the client's correlator and decoder, the server's
/// decoder, and what the server really answered (to catch mis-matches).
pub(crate) struct Conn {
    pub(crate) generation: u64,
    pub(crate) corr: Correlator<Slot>,
    pub(crate) client_dec: FrameDecoder,
    pub(crate) server_dec: FrameDecoder,
    /// Every answer the server sent per request id (a duplicated request is
    /// answered twice, maybe differently).
    pub(crate) sent: HashMap<u32, Vec<Message>>,
    pub(crate) recorded: Vec<Vec<u8>>,
}

/// What happens at a point of virtual time.
#[derive(Debug)]
pub(crate) enum Event {
    ToServer {
        link: Link,
        generation: u64,
        bytes: Vec<u8>,
    },
    ToClient {
        link: Link,
        generation: u64,
        bytes: Vec<u8>,
    },
    Timeout {
        link: Link,
        generation: u64,
        id: u32,
    },
}

/// The network state shared by every simulated call.
pub(crate) struct Net {
    pub(crate) now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Event>,
    pub(crate) conns: BTreeMap<Link, Conn>,
    next_generation: u64,
    pub(crate) rng: Rng,
    pub(crate) faults: Faults,
    /// Unordered pairs of peers that cannot reach each other.
    pub(crate) cut: BTreeSet<(usize, usize)>,
    pub(crate) max_frame: u32,
    trace: blake3::Hasher,
    pub(crate) events: u64,
    pub(crate) unsolicited: u64,
}

impl Net {
    pub(crate) fn new(rng: Rng, max_frame: u32) -> Self {
        Net {
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_generation: 1,
            rng,
            faults: Faults::default(),
            cut: BTreeSet::new(),
            max_frame,
            trace: blake3::Hasher::new(),
            events: 0,
            unsolicited: 0,
        }
    }

    /// Add an event to the trace hash.
    pub(crate) fn trace(&mut self, tag: u8, a: u64, b: u64) {
        self.events += 1;
        self.trace.update(&[tag]);
        self.trace.update(&a.to_le_bytes());
        self.trace.update(&b.to_le_bytes());
        self.trace.update(&self.now.to_le_bytes());
    }

    pub(crate) fn trace_hash(&self) -> String {
        self.trace.finalize().to_hex().to_string()
    }

    fn schedule(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    /// The next event, advancing the clock to it.
    pub(crate) fn pop(&mut self) -> Option<Event> {
        let ((at, _), ev) = self.queue.pop_first()?;
        self.now = self.now.max(at);
        Some(ev)
    }

    pub(crate) fn pending_events(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_cut(&self, link: Link) -> bool {
        let pair = (link.0.min(link.1), link.0.max(link.1));
        self.cut.contains(&pair)
    }

    /// Close a connection: every waiting call fails with `Closed`; frames
    /// still in flight are dropped on arrival (their generation is gone).
    pub(crate) fn close(&mut self, link: Link) {
        if let Some(mut c) = self.conns.remove(&link) {
            self.trace(b'x', link.0 as u64, link.1 as u64);
            for slot in c.corr.fail_all() {
                *lock(&slot) = Some(Err(Error::Closed));
            }
        }
    }

    /// Send a request on `link`, opening a connection if there is none.
    fn send_request(&mut self, link: Link, request: Request, slot: Slot) -> Result<()> {
        if !self.conns.contains_key(&link) {
            let generation = self.next_generation;
            self.next_generation += 1;
            self.trace(b'o', link.0 as u64, generation);
            self.conns.insert(
                link,
                Conn {
                    generation,
                    corr: Correlator::new(),
                    client_dec: FrameDecoder::new(self.max_frame),
                    server_dec: FrameDecoder::new(self.max_frame),
                    sent: HashMap::new(),
                    recorded: Vec::new(),
                },
            );
        }
        let max_frame = self.max_frame;
        let Some(conn) = self.conns.get_mut(&link) else {
            return Err(Error::Closed);
        };
        let msg = conn.corr.request(request, slot);
        let id = msg.id();
        let generation = conn.generation;
        let frames = match cairn_protocol::encode_frames(&msg, max_frame) {
            Ok(f) => f,
            Err(e) => {
                conn.corr.cancel(id);
                return Err(e);
            }
        };
        self.trace(b'q', link.1 as u64, u64::from(id));
        self.send_frames(link, generation, true, frames);
        let at = self.now + TIMEOUT_MS;
        self.schedule(
            at,
            Event::Timeout {
                link,
                generation,
                id,
            },
        );
        Ok(())
    }

    /// Carry the frames of one message, subject to the link's faults.
    /// Frames of one message keep their order; messages may overtake each
    /// other.
    pub(crate) fn send_frames(
        &mut self,
        link: Link,
        generation: u64,
        to_server: bool,
        frames: Vec<Vec<u8>>,
    ) {
        if self.is_cut(link) || self.rng.chance(self.faults.loss) {
            self.trace(b'l', link.0 as u64, link.1 as u64);
            return;
        }
        let copies = if self.rng.chance(self.faults.dup) {
            2
        } else {
            1
        };
        let mut t = self.now;
        for _ in 0..copies {
            t += 1 + self.rng.below(self.faults.delay_max + 1);
            for f in &frames {
                t += self.rng.below(3);
                let ev = if to_server {
                    Event::ToServer {
                        link,
                        generation,
                        bytes: f.clone(),
                    }
                } else {
                    Event::ToClient {
                        link,
                        generation,
                        bytes: f.clone(),
                    }
                };
                self.schedule(t, ev);
            }
        }
    }

    /// Bytes for the client side of `link`: route every whole message.
    pub(crate) fn deliver_to_client(
        &mut self,
        link: Link,
        generation: u64,
        bytes: &[u8],
        violations: &mut Vec<String>,
    ) {
        let Some(conn) = self.conns.get_mut(&link) else {
            return;
        };
        if conn.generation != generation {
            return;
        }
        conn.client_dec.push(bytes);
        let mut close = false;
        let mut unsolicited = 0;
        // Bounded: every pop consumes buffered bytes.
        for _ in 0..10_000 {
            match conn.client_dec.pop() {
                Ok(None) => break,
                Ok(Some(msg)) => {
                    let genuine = conn.sent.get(&msg.id()).is_some_and(|v| v.contains(&msg));
                    match conn.corr.handle(msg.clone()) {
                        Incoming::Response { waiter, result } => {
                            if !genuine {
                                violations.push(format!(
                                    "the correlator matched a frame that is not the answer to request {} on link {link:?}",
                                    msg.id()
                                ));
                            }
                            *lock(&waiter) = Some(result);
                        }
                        Incoming::Unsolicited(_) => unsolicited += 1,
                        Incoming::ConnectionError(_) => close = true,
                        Incoming::Notify { .. } | Incoming::Unexpected(_) => {}
                    }
                }
                Err(_) => {
                    close = true;
                    break;
                }
            }
        }
        self.unsolicited += unsolicited;
        if close {
            self.close(link);
        }
    }
}

/// A [`Call`] over a simulated link: the request is framed with the real
/// codec and answered by the real dispatch on the serving peer.
pub(crate) struct SimCall {
    pub(crate) net: Arc<Mutex<Net>>,
    pub(crate) link: Link,
}

#[async_trait]
impl Call for SimCall {
    async fn call(&self, request: Request) -> Result<Response> {
        let slot: Slot = Arc::new(Mutex::new(None));
        lock(&self.net).send_request(self.link, request, slot.clone())?;
        Wait(slot).await
    }
}

/// Resolves once the simulator fills the slot (the executor polls every
/// operation after every event, so no waker is needed).
struct Wait(Slot);

impl Future for Wait {
    type Output = Result<Response>;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        match lock(&self.0).take() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

/// The error a timed-out request gets.
pub(crate) fn timeout() -> Error {
    Error::Timeout {
        what: "simulated request".into(),
        after: Duration::from_millis(TIMEOUT_MS),
    }
}
