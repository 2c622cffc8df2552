//! Bad input gets a typed error and leaves the store as it was.

use std::collections::BTreeSet;
use std::sync::Arc;

use cairn::sync::{pull, sync};
use cairn::{
    AppendOnlyStore, Bytes, Change, ChangeId, ChangeKind, DynAppendOnlyStore, Error, Head,
    IntegrityError, Keypair, Limits, RejectReason, RequireSignature, StoreId, SyncOptions,
};
use cairn_memory::MemoryStore;

use crate::util::{chain, change, doc, id_set, sid, signed};
use crate::{CaseResult, Failure, Outcome, StoreFactory, ensure, ensure_eq};

async fn snapshot(s: &dyn AppendOnlyStore) -> Result<(Head, BTreeSet<ChangeId>), Failure> {
    Ok((s.head().await?, id_set(s).await?))
}

async fn seeded(f: &dyn StoreFactory) -> Result<Arc<DynAppendOnlyStore>, Failure> {
    let s = f.create(&sid()).await?;
    s.append(chain(&doc("seed"), 3, 16)).await?;
    Ok(s)
}

async fn expect_integrity(
    s: &dyn AppendOnlyStore,
    batch: Vec<Change>,
    what: &str,
) -> Result<(), Failure> {
    let before = snapshot(s).await?;
    match s.append(batch).await {
        Err(Error::Integrity { .. }) => {}
        other => {
            return Err(Failure(format!(
                "{what}: expected Error::Integrity, got {other:?}"
            )));
        }
    }
    ensure!(snapshot(s).await? == before, "{what}: the store changed");
    Ok(())
}

/// A payload that does not match its hash is refused.
pub async fn tampered_payload_is_rejected_and_store_unchanged(f: &dyn StoreFactory) -> CaseResult {
    let s = seeded(f).await?;
    let mut c = change(&doc("x"), ChangeKind::Create, &[], 32);
    let mut p = c.payload.to_vec();
    p[0] ^= 1;
    c.payload = Bytes::from(p);
    expect_integrity(s.as_ref(), vec![c.clone()], "flipped payload bit").await?;
    c.payload = Bytes::from_static(b"short");
    expect_integrity(s.as_ref(), vec![c], "payload of the wrong length").await?;
    Ok(Outcome::Passed)
}

/// An id that is not the hash of the header is refused.
pub async fn tampered_id_is_rejected_and_store_unchanged(f: &dyn StoreFactory) -> CaseResult {
    let s = seeded(f).await?;
    let mut c = change(&doc("x"), ChangeKind::Create, &[], 8);
    c.meta.id = ChangeId::from_bytes([0x42; 32]);
    expect_integrity(s.as_ref(), vec![c.clone()], "forged id").await?;
    let mut c = change(&doc("x"), ChangeKind::Create, &[], 8);
    c.meta.created_at += 1;
    expect_integrity(s.as_ref(), vec![c], "header field changed after hashing").await?;
    Ok(Outcome::Passed)
}

/// Deps changed after the id was computed, or listing a dep twice, are refused.
pub async fn tampered_deps_are_rejected_and_store_unchanged(f: &dyn StoreFactory) -> CaseResult {
    let s = seeded(f).await?;
    let mut c = change(&doc("x"), ChangeKind::Change, &[ChangeId::MIN], 8);
    c.meta.deps.push(ChangeId::MAX);
    expect_integrity(s.as_ref(), vec![c], "added dep").await?;
    let mut c = change(&doc("x"), ChangeKind::Change, &[ChangeId::MIN], 8);
    c.meta.deps.clear();
    expect_integrity(s.as_ref(), vec![c], "removed dep").await?;
    // A duplicated dep with a correctly recomputed id is still refused.
    let mut c = change(&doc("x"), ChangeKind::Change, &[ChangeId::MIN], 8);
    c.meta.deps.push(ChangeId::MIN);
    c.meta.id = cairn::encoding::compute_id(&c.meta);
    let before = snapshot(s.as_ref()).await?;
    match s.append(vec![c]).await {
        Err(Error::Integrity {
            reason: IntegrityError::BadDeps(_),
            ..
        }) => {}
        other => {
            return Err(Failure(format!(
                "duplicate dep: expected BadDeps, got {other:?}"
            )));
        }
    }
    ensure!(snapshot(s.as_ref()).await? == before, "the store changed");
    Ok(Outcome::Passed)
}

/// One bad change in a batch refuses the whole batch.
pub async fn bad_change_poisons_whole_batch(f: &dyn StoreFactory) -> CaseResult {
    let s = seeded(f).await?;
    let mut batch = chain(&doc("x"), 4, 8);
    let mut bad = change(&doc("x"), ChangeKind::Change, &[], 8);
    bad.payload = Bytes::from_static(b"tampered");
    batch.insert(2, bad);
    expect_integrity(s.as_ref(), batch.clone(), "batch with one bad change").await?;
    let good: Vec<Change> = batch
        .into_iter()
        .filter(|c| c.check_integrity().is_ok())
        .collect();
    ensure!(
        !s.has_changes(&crate::util::ids(&good))
            .await?
            .contains(&true),
        "no good change of the refused batch may be stored"
    );
    Ok(Outcome::Passed)
}

/// Under `RequireSignature`, a change with a forged signature is rejected
/// during sync and the target is unchanged.
pub async fn bad_signature_rejected_by_verifying_sync(f: &dyn StoreFactory) -> CaseResult {
    let target = seeded(f).await?;
    let source = MemoryStore::new(sid());
    let alice = Keypair::generate();
    let mallory = Keypair::generate();
    let mut forged = signed(&alice, &doc("x"), &[]);
    forged.meta.signature = Some(mallory.sign(&cairn::encoding::signing_hash(&forged.meta)));
    // A well-formed change (its id covers the forged signature) that no
    // verifier requiring a signature accepts.
    forged.meta.id = cairn::encoding::compute_id(&forged.meta);
    let unsigned = change(&doc("x"), ChangeKind::Change, &[], 8);
    source
        .append(vec![forged.clone(), unsigned.clone()])
        .await?;
    let before = snapshot(target.as_ref()).await?;
    let r = pull(
        target.as_ref(),
        &source,
        &SyncOptions::default().verifier(RequireSignature),
    )
    .await?;
    let reasons: Vec<(ChangeId, RejectReason)> = r
        .pulled
        .rejected
        .iter()
        .map(|x| (x.id, x.reason.clone()))
        .collect();
    ensure!(
        reasons.contains(&(forged.id(), RejectReason::BadSignature)),
        "forged: {reasons:?}"
    );
    ensure!(
        reasons.contains(&(unsigned.id(), RejectReason::MissingSignature)),
        "unsigned: {reasons:?}"
    );
    ensure_eq!(r.pulled.changes, 0, "nothing appended");
    ensure!(
        snapshot(target.as_ref()).await? == before,
        "the target changed"
    );
    Ok(Outcome::Passed)
}

/// Stores with different store ids refuse to sync with `StoreMismatch`.
pub async fn wrong_store_id_sync_is_refused(f: &dyn StoreFactory) -> CaseResult {
    let a = seeded(f).await?;
    let other_id = StoreId::new("conformance/other").map_err(Failure::from)?;
    let b = f.create(&other_id).await?;
    b.append(chain(&doc("b"), 2, 8)).await?;
    let (sa, sb) = (snapshot(a.as_ref()).await?, snapshot(b.as_ref()).await?);
    match sync(a.as_ref(), b.as_ref(), &SyncOptions::default()).await {
        Err(Error::StoreMismatch { .. }) => {}
        other => return Err(Failure(format!("expected StoreMismatch, got {other:?}"))),
    }
    ensure!(
        snapshot(a.as_ref()).await? == sa && snapshot(b.as_ref()).await? == sb,
        "a store changed"
    );
    Ok(Outcome::Passed)
}

/// A batch with more changes than the default limit is refused whole.
pub async fn oversized_batch_is_refused(f: &dyn StoreFactory) -> CaseResult {
    let s = seeded(f).await?;
    let n = Limits::DEFAULT.max_batch_changes + 1;
    let template = change(&doc("x"), ChangeKind::Change, &[], 8);
    let batch: Vec<Change> = (0..n)
        .map(|i| {
            let mut c = template.clone();
            c.meta.created_at = i as u64;
            c.meta.id = cairn::encoding::compute_id(&c.meta);
            c
        })
        .collect();
    let before = snapshot(s.as_ref()).await?;
    match s.append(batch).await {
        Err(Error::TooLarge { .. }) => {}
        other => {
            return Err(Failure(format!(
                "expected TooLarge, got {:?}",
                other.map(|o| o.new.len())
            )));
        }
    }
    ensure!(snapshot(s.as_ref()).await? == before, "the store changed");
    Ok(Outcome::Passed)
}

/// A payload over the default limit is refused with `TooLarge`.
pub async fn oversized_payload_is_refused(f: &dyn StoreFactory) -> CaseResult {
    let s = seeded(f).await?;
    let mut c = change(&doc("x"), ChangeKind::Change, &[], 8);
    // Zeroed memory is not touched until written, so this is cheap.
    c.payload = Bytes::from(vec![0u8; (Limits::DEFAULT.max_payload_bytes + 1) as usize]);
    let before = snapshot(s.as_ref()).await?;
    match s.append(vec![c]).await {
        Err(Error::TooLarge {
            what: "payload", ..
        }) => {}
        other => return Err(Failure(format!("expected TooLarge payload, got {other:?}"))),
    }
    ensure!(snapshot(s.as_ref()).await? == before, "the store changed");
    Ok(Outcome::Passed)
}
