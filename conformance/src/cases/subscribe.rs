//! `subscribe`: every append delivered once, in order, nothing lost on lag.

use cairn::{AppendOnlyStore, ChangeId, ChangeKind};

use crate::util::{chain, change, doc, ids, sid, take};
use crate::{CaseResult, Outcome, StoreFactory, ensure_eq};

/// Every change appended after `subscribe` is delivered exactly once, in
/// sequence order.
pub async fn subscribe_delivers_every_append_once(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let mut sub = s.subscribe().await?;
    let mut want: Vec<ChangeId> = Vec::new();
    for d in ["a", "b", "c"] {
        let c = chain(&doc(d), 4, 16);
        want.extend(ids(&c));
        s.append(c.clone()).await?;
        // Re-appending must not produce a second delivery.
        s.append(c).await?;
    }
    let got: Vec<ChangeId> = take(&mut sub, want.len())
        .await?
        .iter()
        .map(|m| m.id)
        .collect();
    ensure_eq!(got, want, "each change once, in sequence order");
    // The next delivery must be a new marker, not a repeat of anything.
    let marker = change(&doc("m"), ChangeKind::Create, &[], 8);
    s.append(vec![marker.clone()]).await?;
    let next = take(&mut sub, 1).await?;
    ensure_eq!(
        next[0].id,
        marker.id(),
        "no duplicate deliveries before the marker"
    );
    Ok(Outcome::Passed)
}

/// Changes present before `subscribe` are not delivered.
pub async fn subscribe_skips_changes_before_it(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    s.append(chain(&doc("old"), 5, 8)).await?;
    let mut sub = s.subscribe().await?;
    let fresh = change(&doc("new"), ChangeKind::Create, &[], 8);
    s.append(vec![fresh.clone()]).await?;
    let got = take(&mut sub, 1).await?;
    ensure_eq!(
        got[0].id,
        fresh.id(),
        "the first delivery is the first change after subscribe"
    );
    Ok(Outcome::Passed)
}

/// A subscriber that does not read while many changes arrive still gets
/// every one of them, in order.
pub async fn slow_subscriber_loses_nothing(f: &dyn StoreFactory) -> CaseResult {
    let s = f.create(&sid()).await?;
    let mut sub = s.subscribe().await?;
    let mut want = Vec::new();
    for i in 0..20 {
        let c = chain(&doc(&format!("d{i}")), 100, 8);
        want.extend(ids(&c));
        s.append(c).await?;
    }
    let got: Vec<ChangeId> = take(&mut sub, want.len())
        .await?
        .iter()
        .map(|m| m.id)
        .collect();
    ensure_eq!(got.len(), want.len(), "every change delivered");
    ensure_eq!(got, want, "in order");
    Ok(Outcome::Passed)
}
