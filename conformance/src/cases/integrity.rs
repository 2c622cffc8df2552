//! Integrity end to end: no copy of a change can shadow the genuine one.
//!
//! A change's id covers its signature (format v2), so a copy with the
//! signature stripped or altered is a different change: appending it first
//! must never stop the genuine change from arriving, being reported as
//! missing, or being served intact.

use cairn::sync::pull;
use cairn::{AppendOnlyStore, Change, Keypair, RequireSignature, SyncOptions};
use cairn_memory::MemoryStore;

use crate::util::{check_store, doc, sid, signed};
use crate::{CaseResult, Outcome, StoreFactory, ensure, ensure_eq};

/// A copy of `genuine` with its signature removed.
pub fn stripped(genuine: &Change) -> Change {
    let mut c = genuine.clone();
    c.meta.signature = None;
    c.meta.id = cairn::encoding::compute_id(&c.meta);
    c
}

/// A copy of `genuine` with its signature's bytes flipped.
pub fn garbled(genuine: &Change) -> Change {
    let mut c = genuine.clone();
    if let Some(sig) = c.meta.signature {
        let mut b = sig.to_bytes();
        b[7] ^= 0x40;
        c.meta.signature = Some(ed25519_dalek::Signature::from_bytes(&b));
    }
    c.meta.id = cairn::encoding::compute_id(&c.meta);
    c
}

async fn copy_cannot_shadow(f: &dyn StoreFactory, copy: fn(&Change) -> Change) -> CaseResult {
    let author = Keypair::from_seed([42; 32]);
    let honest = MemoryStore::new(sid());
    let genuine = signed(&author, &doc("shadow"), &[]);
    honest.append(vec![genuine.clone()]).await?;
    let fake = copy(&genuine);
    ensure!(
        fake.check_integrity().is_ok(),
        "the altered copy must itself be a well-formed change (it is a different change)"
    );
    ensure!(
        fake.id() != genuine.id(),
        "a copy with an altered signature must have a different id"
    );
    let target = f.create(&sid()).await?;
    target.append(vec![fake.clone()]).await?;
    ensure_eq!(
        target.has_changes(&[genuine.id()]).await?,
        vec![false],
        "the store must not report the genuine change held after appending an altered copy"
    );
    let opts = SyncOptions::default().verifier(RequireSignature);
    let report = pull(target.as_ref(), &honest, &opts).await?;
    ensure_eq!(report.pulled.changes, 1, "the genuine change is pulled");
    let got = target.get_changes(&[genuine.id()]).await?;
    ensure_eq!(got.len(), 1, "the genuine change is served");
    ensure!(
        got[0] == genuine,
        "the genuine change is served intact, signature included"
    );
    ensure!(got[0].meta.signature_valid(), "its signature verifies");
    check_store(target.as_ref()).await?;
    Ok(Outcome::Passed)
}

/// A copy with its signature stripped, appended first, cannot hide the
/// genuine change: it still arrives by sync and is served intact.
pub async fn stripped_signature_copy_cannot_shadow_the_genuine_change(
    f: &dyn StoreFactory,
) -> CaseResult {
    copy_cannot_shadow(f, stripped).await
}

/// A copy with a garbled signature, appended first, cannot hide the genuine
/// change: it still arrives by sync and is served intact.
pub async fn garbled_signature_copy_cannot_shadow_the_genuine_change(
    f: &dyn StoreFactory,
) -> CaseResult {
    copy_cannot_shadow(f, garbled).await
}
