//! Cases every network store (a local cache in front of a peer) must pass,
//! whatever carries the bytes: the policy at its door, changes larger than
//! a frame, delivery that survives a busy peer. Run them with
//! [`network_tests!`](crate::network_tests) over a [`NetworkFactory`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn::{
    AppendOnlyStore, Change, ChangeBuilder, ChangeKind, DynAppendOnlyStore, Keypair,
    RequireSignature, Result, Verifier,
};
use cairn_memory::MemoryStore;
use futures::StreamExt;
use tokio::sync::watch;

use crate::cases::integrity::{garbled, stripped};
use crate::faults::FlakyAppends;
use crate::util::{PATIENCE, doc, sid, signed};
use crate::{CaseResult, Failure, Outcome, ensure, ensure_eq};

/// Whether a network store's connection is up (a transport's own state
/// type, reduced to what the cases need).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Connected and caught up.
    Up,
    /// Anything else.
    Down,
}

/// A network store under test: the store, plus what only network stores
/// have. `link` must only notify when the state really changes.
#[async_trait]
pub trait NetworkClient: Send + Sync {
    /// The store (reads answer from its cache).
    fn store(&self) -> Arc<DynAppendOnlyStore>;
    /// Its local cache.
    fn cache(&self) -> Arc<DynAppendOnlyStore>;
    /// Wait until connected and caught up.
    async fn wait_connected(&self, timeout: Duration) -> Result<()>;
    /// Wait until every local append is confirmed by the peer.
    async fn flush(&self, timeout: Duration) -> Result<()>;
    /// Local appends not yet confirmed.
    fn pending(&self) -> usize;
    /// How many changes from the peer the local policy refused.
    fn refused(&self) -> u64;
    /// The connection's state, as it changes.
    fn link(&self) -> watch::Receiver<Link>;
    /// Close the connection.
    async fn close(&self);
}

/// How the cases want a client set up.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The policy at the cache's door.
    pub verifier: Arc<dyn Verifier>,
    /// How long one request may wait for the peer's answer (the
    /// transport's request timeout).
    pub request_timeout: Duration,
}

impl ClientOptions {
    /// `verifier`, and a request timeout of a minute.
    pub fn new(verifier: Arc<dyn Verifier>) -> Self {
        ClientOptions {
            verifier,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Makes network stores for the cases. Implement it once per transport.
#[async_trait]
pub trait NetworkFactory: Send + Sync {
    /// A short name ("quic", "webrtc").
    fn name(&self) -> String;
    /// Serve `backing` (a store on the other side, with the suite's store
    /// id) and return a connected-or-connecting network store over a fresh
    /// memory cache, set up as `opts` says.
    async fn connect(
        &self,
        backing: Arc<DynAppendOnlyStore>,
        opts: ClientOptions,
    ) -> Result<Box<dyn NetworkClient>>;
}

fn big(kp: &Keypair, name: &str, len: usize) -> Change {
    let mut payload = vec![0u8; len];
    for (i, b) in payload.iter_mut().enumerate().step_by(4096) {
        *b = (i / 4096) as u8;
    }
    ChangeBuilder::new(ChangeKind::Change, doc(name))
        .payload(payload)
        .sign(kp)
        .unwrap_or_else(|_| unreachable!())
}

/// A peer holding unsigned and garbled copies of signed changes: a client
/// whose policy requires signatures lets none of them into its cache,
/// whether they come by the catch-up sync, a live notification or a fetch
/// on a cache miss; the genuine changes arrive.
pub async fn refused_changes_never_enter_the_cache(f: &dyn NetworkFactory) -> CaseResult {
    let kp = Keypair::generate();
    let backing = Arc::new(MemoryStore::new(sid()));
    let genuine: Vec<Change> = (0..3).map(|_| signed(&kp, &doc("d"), &[])).collect();
    let fakes: Vec<Change> = genuine
        .iter()
        .map(stripped)
        .chain(genuine.iter().map(garbled))
        .collect();
    backing.append(fakes.clone()).await?;
    backing.append(genuine[..2].to_vec()).await?;
    let client = f
        .connect(
            backing.clone(),
            ClientOptions::new(Arc::new(RequireSignature)),
        )
        .await?;
    client.wait_connected(PATIENCE).await?;
    let cache = client.cache();
    // Catch-up: only the two genuine changes.
    let mut held = cache.all_change_ids().await?;
    held.sort();
    let mut want: Vec<_> = genuine[..2].iter().map(Change::id).collect();
    want.sort();
    ensure_eq!(
        held,
        want,
        "after catch-up the cache holds the genuine changes only"
    );
    // Fetch on a cache miss: refused, not cached, not returned.
    let got = client.store().get_changes(&[fakes[0].id()]).await?;
    ensure!(
        got.is_empty(),
        "a fetch on a miss returned a refused change"
    );
    // Live: a fake, then a genuine change; the genuine one arrives and the
    // fake (notified first) never entered.
    let mut sub = client.store().subscribe().await?;
    backing.append(vec![fakes[2].clone()]).await?;
    backing.append(vec![genuine[2].clone()]).await?;
    let next = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .map_err(|_| Failure("the live genuine change did not arrive".into()))?;
    match next {
        Some(Ok(m)) => ensure_eq!(m.id, genuine[2].id(), "the live change"),
        other => return Err(Failure(format!("subscription: {other:?}"))),
    }
    for fake in &fakes {
        ensure_eq!(
            cache.has_changes(&[fake.id()]).await?,
            vec![false],
            "a refused change entered the cache"
        );
    }
    ensure!(
        client.refused() >= 3,
        "refusals are counted: {}",
        client.refused()
    );
    client.close().await;
    Ok(Outcome::Passed)
}

/// A 17 MiB change between small ones travels both ways, intact, and
/// everything after it arrives too.
pub async fn a_change_larger_than_a_frame_travels_both_ways(f: &dyn NetworkFactory) -> CaseResult {
    let kp = Keypair::generate();
    let backing = Arc::new(MemoryStore::new(sid()));
    let down = vec![
        signed(&kp, &doc("a"), &[]),
        big(&kp, "big-down", 17 << 20),
        signed(&kp, &doc("b"), &[]),
    ];
    backing.append(down.clone()).await?;
    let client = f
        .connect(
            backing.clone(),
            ClientOptions::new(Arc::new(RequireSignature)),
        )
        .await?;
    client.wait_connected(PATIENCE).await?;
    let got = client
        .cache()
        .get_changes(&down.iter().map(Change::id).collect::<Vec<_>>())
        .await?;
    ensure!(
        got == down,
        "the big change and the ones after it arrived intact"
    );
    let up = vec![
        signed(&kp, &doc("c"), &[]),
        big(&kp, "big-up", 17 << 20),
        signed(&kp, &doc("e"), &[]),
    ];
    client.store().append(up.clone()).await?;
    client.flush(PATIENCE * 3).await?;
    ensure_eq!(client.pending(), 0, "nothing pending after flush");
    let got = backing
        .get_changes(&up.iter().map(Change::id).collect::<Vec<_>>())
        .await?;
    ensure!(got == up, "the big local change reached the peer intact");
    client.close().await;
    Ok(Outcome::Passed)
}

/// A 100 MiB change round-trips: up to the peer, and down to a second
/// client.
pub async fn a_100_mib_change_round_trips(f: &dyn NetworkFactory) -> CaseResult {
    let kp = Keypair::generate();
    let backing = Arc::new(MemoryStore::new(sid()));
    let a = f
        .connect(
            backing.clone(),
            ClientOptions::new(Arc::new(RequireSignature)),
        )
        .await?;
    a.wait_connected(PATIENCE).await?;
    let c = big(&kp, "huge", 100 << 20);
    let id = c.id();
    a.store().append(vec![c]).await?;
    a.flush(PATIENCE * 6).await?;
    ensure_eq!(
        backing.has_changes(&[id]).await?,
        vec![true],
        "the peer holds it"
    );
    a.close().await;
    let b = f
        .connect(
            backing.clone(),
            ClientOptions::new(Arc::new(RequireSignature)),
        )
        .await?;
    b.wait_connected(PATIENCE * 6).await?;
    let got = b.cache().get_changes(&[id]).await?;
    ensure!(
        got.len() == 1 && got[0].check_integrity().is_ok() && got[0].payload.len() == 100 << 20,
        "the second client holds it intact"
    );
    b.close().await;
    Ok(Outcome::Passed)
}

/// A peer that answers the first three appends with a retryable error:
/// the client delivers within the patience window, on the same
/// connection, and `pending` counts what is not yet delivered.
pub async fn retryable_append_errors_are_retried_on_the_same_connection(
    f: &dyn NetworkFactory,
) -> CaseResult {
    let kp = Keypair::generate();
    let inner = Arc::new(MemoryStore::new(sid()));
    let backing = Arc::new(FlakyAppends::new(inner.clone(), 3));
    let client = f
        .connect(
            backing.clone(),
            ClientOptions::new(Arc::new(RequireSignature)),
        )
        .await?;
    client.wait_connected(PATIENCE).await?;
    let mut link = client.link();
    tokio::time::timeout(PATIENCE, link.wait_for(|l| *l == Link::Up))
        .await
        .map_err(|_| Failure("the link never came up".into()))?
        .map_err(|_| Failure("the link state ended".into()))?;
    link.borrow_and_update();
    let cs: Vec<Change> = (0..5).map(|_| signed(&kp, &doc("d"), &[])).collect();
    client.store().append(cs.clone()).await?;
    ensure!(client.pending() <= 5, "pending counts the appended changes");
    client.flush(PATIENCE).await?;
    ensure_eq!(client.pending(), 0, "nothing pending after flush");
    ensure_eq!(
        backing.refused.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "three appends were refused before one went through"
    );
    let ids: Vec<_> = cs.iter().map(Change::id).collect();
    ensure_eq!(
        inner.has_changes(&ids).await?,
        vec![true; 5],
        "all delivered"
    );
    ensure!(
        !link.has_changed().unwrap_or(true) && *link.borrow() == Link::Up,
        "the connection stayed up (no reconnect)"
    );
    client.close().await;
    Ok(Outcome::Passed)
}

/// A peer that takes an append and never answers (a frozen tab, a hung
/// disk) does not stall delivery for good: the request times out, the
/// outbox tries again on the same connection, and the changes arrive.
pub async fn a_peer_that_never_answers_an_append_does_not_stall_delivery(
    f: &dyn NetworkFactory,
) -> CaseResult {
    let kp = Keypair::generate();
    let inner = Arc::new(MemoryStore::new(sid()));
    let backing = Arc::new(FlakyAppends::silent(inner.clone(), 1));
    let mut opts = ClientOptions::new(Arc::new(RequireSignature));
    opts.request_timeout = Duration::from_secs(2);
    let client = f.connect(backing.clone(), opts).await?;
    client.wait_connected(PATIENCE).await?;
    let cs: Vec<Change> = (0..3).map(|_| signed(&kp, &doc("d"), &[])).collect();
    // The append itself never waits on the peer.
    tokio::time::timeout(Duration::from_secs(5), client.store().append(cs.clone()))
        .await
        .map_err(|_| Failure("a local append waited on a silent peer".into()))??;
    client.flush(PATIENCE).await.map_err(|e| {
        Failure(format!(
            "the outbox never got past the unanswered append: {e}"
        ))
    })?;
    ensure_eq!(
        backing.refused.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the first append went unanswered"
    );
    let ids: Vec<_> = cs.iter().map(Change::id).collect();
    ensure_eq!(
        inner.has_changes(&ids).await?,
        vec![true; 3],
        "all delivered by the retry"
    );
    client.close().await;
    Ok(Outcome::Passed)
}

/// Expands `$callback! { case, … }` over every network case.
#[macro_export]
#[doc(hidden)]
macro_rules! __for_each_network_case {
    ($callback:ident ! $args:tt) => {
        $crate::$callback! { $args
            refused_changes_never_enter_the_cache,
            a_change_larger_than_a_frame_travels_both_ways,
            a_100_mib_change_round_trips,
            retryable_append_errors_are_retried_on_the_same_connection,
            a_peer_that_never_answers_an_append_does_not_stall_delivery,
        }
    };
}

/// Expand every network case into a `#[tokio::test]`, inside a module named
/// `network`. `$factory` is an expression evaluated afresh in each test.
#[macro_export]
macro_rules! network_tests {
    ($factory:expr) => {
        mod network {
            #[allow(unused_imports)]
            use super::*;
            $crate::__for_each_network_case!(__emit_network_tests![$factory]);
        }
    };
}

/// Cases of one test binary take turns with the heavy ones: a heavy case
/// runs alone, the others together.
static TURNS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The guard of [`take_turn`].
#[doc(hidden)]
#[derive(Debug)]
pub enum Turn {
    /// A heavy case, running alone.
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
    /// Any other case.
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
}

/// Wait for `case`'s turn (used by [`network_tests!`](crate::network_tests)).
#[doc(hidden)]
pub async fn take_turn(case: &str) -> Turn {
    if case == "a_100_mib_change_round_trips" {
        Turn::Alone(TURNS.write().await)
    } else {
        Turn::Shared(TURNS.read().await)
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __emit_network_tests {
    ([$factory:expr] $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                // The 100 MiB case saturates both cores of a small machine;
                // the others' deadlines must not measure that.
                let _turn = $crate::network::take_turn(stringify!($case)).await;
                let factory = $factory;
                match $crate::network::$case(&factory).await {
                    Ok($crate::Outcome::Passed) => {}
                    Ok($crate::Outcome::Skipped(why)) => {
                        println!("network::{} skipped for {}: {why}", stringify!($case), $crate::network::NetworkFactory::name(&factory));
                    }
                    Err(f) => panic!("network::{} failed for {}: {f}", stringify!($case), $crate::network::NetworkFactory::name(&factory)),
                }
            }
        )*
    };
}
