//! Helpers the Connector's integration tests share.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn::{Change, ChangeBuilder, ChangeKind, DocId, Keypair, StoreId};
use cairn_connect::{Connector, PathKind};

pub fn sid() -> StoreId {
    StoreId::new("team/notes").unwrap()
}

/// Change `n` of `kp`: document `n<n>`, 32 bytes.
pub fn change(kp: &Keypair, n: usize) -> Change {
    ChangeBuilder::new(ChangeKind::Create, DocId::new(format!("n{n}")).unwrap())
        .payload(vec![n as u8; 32])
        .sign(kp)
        .unwrap()
}

/// Wait until the connector's path is `kind`, at most `within`; returns the
/// state's words.
pub async fn path_becomes(c: &Connector, kind: PathKind, within: Duration) -> String {
    let mut rx = c.state();
    let state = tokio::time::timeout(within, rx.wait_for(|s| s.path() == Some(kind)))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "never on {kind:?} within {within:?}: {}",
                *c.state().borrow()
            )
        })
        .unwrap()
        .clone();
    state.to_string()
}
