//! The whole conformance suite against a store that implements only the
//! trait's required methods (`store_id`, `append`, `get_changes`, `scan`,
//! `head`, `subscribe`), by forwarding them to a `MemoryStore`: every other
//! method runs the trait's default, built on `scan`. So the defaults a new
//! backend starts with are held to the same semantics as every store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use async_trait::async_trait;
use cairn::{DynAppendOnlyStore, StoreId};
use cairn_conformance::StoreFactory;
use cairn_memory::MemoryStore;

mod common;
use common::RequiredOnly;

struct Defaults;

#[async_trait]
impl StoreFactory for Defaults {
    fn name(&self) -> String {
        "memory (required methods only; trait defaults)".into()
    }
    async fn create(&self, id: &StoreId) -> cairn::Result<Arc<DynAppendOnlyStore>> {
        Ok(Arc::new(RequiredOnly(MemoryStore::new(id.clone()))))
    }
}

cairn_conformance::conformance_tests!(Defaults);

#[tokio::test]
async fn the_extension_methods_answer_for_one_change_and_one_document() {
    use cairn::{AppendOnlyStoreExt, ChangeBuilder, ChangeKind, DocId};
    let s = RequiredOnly(MemoryStore::new(StoreId::new("t").unwrap()));
    let doc = DocId::new("notes").unwrap();
    let create = ChangeBuilder::new(ChangeKind::Create, doc.clone())
        .created_at(1)
        .payload(b"a".to_vec())
        .build()
        .unwrap();
    let snap = ChangeBuilder::new(ChangeKind::Snapshot, doc.clone())
        .deps([create.id()])
        .created_at(2)
        .payload(b"s".to_vec())
        .build()
        .unwrap();
    let after = ChangeBuilder::new(ChangeKind::Change, doc.clone())
        .deps([snap.id()])
        .created_at(3)
        .payload(b"b".to_vec())
        .build()
        .unwrap();
    let other = ChangeBuilder::new(ChangeKind::Create, DocId::new("other").unwrap())
        .created_at(4)
        .build()
        .unwrap();
    assert!(!s.has_change(&create.id()).await.unwrap());
    assert_eq!(s.get_change(&create.id()).await.unwrap(), None);
    assert!(s.append_one(create.clone()).await.unwrap(), "new");
    assert!(!s.append_one(create.clone()).await.unwrap(), "already held");
    assert!(s.has_change(&create.id()).await.unwrap());
    assert_eq!(
        s.get_change(&create.id()).await.unwrap(),
        Some(create.clone())
    );
    for c in [&snap, &after, &other] {
        assert!(s.append_one(c.clone()).await.unwrap());
    }
    // From the latest snapshot: the snapshot, then what came after it.
    assert_eq!(s.load_doc(&doc).await.unwrap(), vec![snap, after]);
    assert!(
        s.load_doc(&DocId::new("none").unwrap())
            .await
            .unwrap()
            .is_empty()
    );
}
