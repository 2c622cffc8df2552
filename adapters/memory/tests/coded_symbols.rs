//! `cairn::reconcile::difference` (coded symbols) between memory stores:
//! any two sets reconcile exactly, the native encoder answers like the
//! trait's default, the round trips and symbols stay near RIBLT's
//! expectation, and a remote that changes or lies cannot make it wrong or
//! make it hang.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use cairn::reconcile::{ReconcileOptions, difference};
use cairn::riblt::{CodedSymbol, SymbolReply, SymbolRequest};
use cairn::{
    AppendOnlyStore, AppendOutcome, Change, ChangeBuilder, ChangeId, ChangeKind, ChangeStream,
    DocId, Error, Head, Result, ScanItem, StoreId,
};
use cairn_memory::MemoryStore;

mod common;
use common::RequiredOnly;
use proptest::prelude::*;

fn change(n: u32) -> Change {
    ChangeBuilder::new(ChangeKind::Change, DocId::new("d").unwrap())
        .payload(n.to_le_bytes().to_vec())
        .created_at(1)
        .build()
        .unwrap()
}

async fn store(ns: impl IntoIterator<Item = u32>) -> MemoryStore {
    let s = MemoryStore::new(StoreId::new("t").unwrap());
    s.append(ns.into_iter().map(change).collect())
        .await
        .unwrap();
    s
}

fn ids(ns: impl IntoIterator<Item = u32>) -> Vec<ChangeId> {
    let set: BTreeSet<ChangeId> = ns.into_iter().map(|n| change(n).id()).collect();
    set.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Two sets drawn as overlapping ranges (on either side of the size
    /// where the memory store starts keeping an encoder) reconcile exactly,
    /// both ways, native or by the trait's default.
    #[test]
    fn any_two_sets_reconcile_exactly(
        a in 0u32..1500, alen in 0u32..1500, b in 0u32..1500, blen in 0u32..1500,
        plain_remote in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let local = store(a..a + alen).await;
            let remote = store(b..b + blen).await;
            let plain = RequiredOnly(remote.clone());
            let remote: &dyn AppendOnlyStore = if plain_remote { &plain } else { &remote };
            let d = difference(&local, remote, &ReconcileOptions::default()).await.unwrap();
            let (la, lb) = ((a..a + alen).collect::<BTreeSet<_>>(), (b..b + blen).collect::<BTreeSet<_>>());
            prop_assert_eq!(d.local_only, ids(la.difference(&lb).copied()));
            prop_assert_eq!(d.remote_only, ids(lb.difference(&la).copied()));
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn the_native_encoder_answers_like_the_default() {
    let s = store(0..5000).await;
    let plain = RequiredOnly(s.clone());
    for req in [
        SymbolRequest {
            start: 0,
            count: 100,
            sketch: true,
        },
        SymbolRequest {
            start: 32_700,
            count: 200,
            sketch: false,
        },
        SymbolRequest {
            start: 1 << 20,
            count: 3,
            sketch: true,
        },
    ] {
        assert_eq!(
            s.coded_symbols(&req).await.unwrap(),
            plain.coded_symbols(&req).await.unwrap(),
            "{req:?}"
        );
    }
    let too_far = SymbolRequest {
        start: u64::MAX - 1,
        count: 2,
        sketch: false,
    };
    assert!(matches!(
        s.coded_symbols(&too_far).await,
        Err(Error::InvalidInput { .. })
    ));
}

#[tokio::test]
async fn small_differences_take_one_round_trip_and_larger_ones_two() {
    let n = 20_000;
    let local = store(0..n).await;
    let same = store(0..n).await;
    let d = difference(&local, &same, &ReconcileOptions::default())
        .await
        .unwrap();
    assert!(d.local_only.is_empty() && d.remote_only.is_empty());
    assert_eq!((d.rounds, d.symbols), (1, 8));

    let one = store(0..n + 1).await;
    let d = difference(&local, &one, &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(d.remote_only, ids([n]));
    assert_eq!(d.rounds, 1);

    // One way: the counts' gap is the difference, so the second request
    // is sized right.
    let more = store(0..n + 1000).await;
    let d = difference(&local, &more, &ReconcileOptions::default())
        .await
        .unwrap();
    assert!(
        d.remote_only == ids(n..n + 1000),
        "{} remote-only ids",
        d.remote_only.len()
    );
    assert!(d.rounds <= 2, "{} rounds", d.rounds);
    assert!(d.symbols <= 1600, "{} symbols for 1,000 ids", d.symbols);
}

/// What [`Hooked`] does to the answers of the store it wraps.
#[derive(Debug)]
enum Hook {
    /// Append a change after answering the first request.
    AppendAfterFirst,
    /// Replace every symbol with noise.
    Noise,
}

/// A remote whose `coded_symbols` misbehaves as its [`Hook`] says.
#[derive(Debug)]
struct Hooked {
    inner: MemoryStore,
    hook: Hook,
    calls: AtomicU32,
}

impl Hooked {
    fn new(inner: MemoryStore, hook: Hook) -> Self {
        Hooked {
            inner,
            hook,
            calls: AtomicU32::new(0),
        }
    }
}

#[async_trait]
impl AppendOnlyStore for Hooked {
    fn store_id(&self) -> &StoreId {
        self.inner.store_id()
    }
    async fn append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        self.inner.append(changes).await
    }
    async fn get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        self.inner.get_changes(ids).await
    }
    async fn scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        self.inner.scan(after, limit).await
    }
    async fn head(&self) -> Result<Head> {
        self.inner.head().await
    }
    async fn subscribe(&self) -> Result<ChangeStream> {
        self.inner.subscribe().await
    }
    async fn coded_symbols(&self, request: &SymbolRequest) -> Result<SymbolReply> {
        let mut reply = self.inner.coded_symbols(request).await?;
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        match self.hook {
            Hook::AppendAfterFirst if first => {
                self.inner.append(vec![change(1_000_000)]).await?;
            }
            Hook::AppendAfterFirst => {}
            Hook::Noise => {
                for (i, s) in reply.symbols.iter_mut().enumerate() {
                    let k = request.start + i as u64;
                    let h = blake3::hash(&k.to_le_bytes());
                    *s = CodedSymbol {
                        sum: *h.as_bytes(),
                        check: k,
                    };
                }
            }
        }
        Ok(reply)
    }
}

#[tokio::test]
async fn a_remote_that_changes_between_requests_is_reconciled_as_it_is_now() {
    let local = store(0..3000).await;
    let remote = Hooked::new(store(0..3100).await, Hook::AppendAfterFirst);
    let d = difference(&local, &remote, &ReconcileOptions::default())
        .await
        .unwrap();
    let mut want: Vec<u32> = (3000..3100).collect();
    want.push(1_000_000);
    assert!(
        d.remote_only == ids(want),
        "{} remote-only ids",
        d.remote_only.len()
    );
    assert!(d.local_only.is_empty());
    assert!(remote.calls.load(Ordering::SeqCst) >= 3, "it started again");
}

#[tokio::test]
async fn noise_for_symbols_is_a_protocol_error_within_the_round_limit() {
    let local = store(0..100).await;
    let remote = Hooked::new(store(0..100).await, Hook::Noise);
    let opts = ReconcileOptions {
        max_rounds: 6,
        ..ReconcileOptions::default()
    };
    match difference(&local, &remote, &opts).await {
        Err(Error::Protocol { reason }) => assert!(reason.contains("6 requests"), "{reason}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}
