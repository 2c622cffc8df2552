#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Every store method through encode → dispatch → reply → decode, against a
//! memory store, compared with calling the store directly.

use std::sync::Mutex;

use async_trait::async_trait;
use cairn::{
    AppendOnlyStore, Change, ChangeBuilder, ChangeKind, DocId, Error, IdRange, Result, StoreId,
};
use cairn_memory::MemoryStore;
use cairn_protocol::*;

/// A `Call` that goes through the byte encoding with a tiny frame limit, so
/// every list is split.
struct Loopback {
    store: MemoryStore,
    corr: Mutex<Correlator<()>>,
}

const MAX: u32 = MIN_MAX_FRAME;

#[async_trait]
impl Call for Loopback {
    async fn call(&self, request: Request) -> Result<Response> {
        let msg = self.corr.lock().unwrap().request(request, ());
        let wire = encode(&msg, MAX)?;
        let mut server = FrameDecoder::new(MAX);
        server.push(&wire);
        let Some(Message::Request { id, body }) = server.pop()? else {
            panic!("no request")
        };
        let bytes = reply(
            id,
            dispatch(
                &self.store,
                &PeerId::from_bytes([1; 32]),
                body,
                &ServeOptions::default(),
            )
            .await,
            MAX,
        );
        let mut client = FrameDecoder::new(MAX);
        client.push(&bytes);
        let msg = client.pop()?.expect("a response");
        match self.corr.lock().unwrap().handle(msg) {
            Incoming::Response { result, .. } => result,
            other => panic!("{other:?}"),
        }
    }
}

fn chain(doc: &str, n: usize) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    for i in 0..n {
        let kind = if i == 0 {
            ChangeKind::Create
        } else if i % 7 == 0 {
            ChangeKind::Snapshot
        } else {
            ChangeKind::Change
        };
        let c = ChangeBuilder::new(kind, DocId::new(doc).unwrap())
            .deps(out.last().map(|c| c.id()))
            .created_at(i as u64)
            .payload(vec![i as u8; 300])
            .build()
            .unwrap();
        out.push(c);
    }
    out
}

#[tokio::test]
async fn every_method_matches_the_store() {
    let sid = StoreId::new("t/db").unwrap();
    let store = MemoryStore::new(sid.clone());
    let remote = Loopback {
        store: store.clone(),
        corr: Mutex::new(Correlator::new()),
    };
    let a = chain("a", 40);
    let b = chain("b", 25);
    let out = remote.remote_append(a.clone()).await.unwrap();
    assert_eq!(out.new.len(), 40);
    let out = remote
        .remote_append([b.clone(), a[..3].to_vec()].concat())
        .await
        .unwrap();
    assert_eq!((out.new.len(), out.duplicates), (25, 3));

    let ids: Vec<_> = a.iter().chain(&b).map(|c| c.id()).collect();
    assert_eq!(
        remote.remote_get_changes(&ids).await.unwrap(),
        store.get_changes(&ids).await.unwrap()
    );
    assert_eq!(
        remote.remote_get_metas(&ids).await.unwrap(),
        store.get_metas(&ids).await.unwrap()
    );
    assert_eq!(
        remote.remote_has_changes(&ids).await.unwrap(),
        store.has_changes(&ids).await.unwrap()
    );
    assert_eq!(
        remote.remote_scan(10, 30).await.unwrap(),
        store.scan(10, 30).await.unwrap()
    );
    assert_eq!(
        remote.remote_head().await.unwrap(),
        store.head().await.unwrap()
    );
    assert_eq!(
        remote.remote_find_new_changes(&ids[..20]).await.unwrap(),
        store.find_new_changes(&ids[..20]).await.unwrap()
    );
    let doc = DocId::new("a").unwrap();
    assert_eq!(
        remote
            .remote_find_new_changes_for_doc(&ids[..5], &doc)
            .await
            .unwrap(),
        store
            .find_new_changes_for_doc(&ids[..5], &doc)
            .await
            .unwrap()
    );
    assert_eq!(
        remote.remote_all_change_ids().await.unwrap(),
        store.all_change_ids().await.unwrap()
    );
    for snap in [false, true] {
        assert_eq!(
            remote.remote_changes_for_doc(&doc, snap).await.unwrap(),
            store.changes_for_doc(&doc, snap).await.unwrap()
        );
    }
    let mut sorted = ids.clone();
    sorted.sort();
    let range = IdRange {
        start: sorted[10],
        end: Some(sorted[50]),
    };
    assert_eq!(
        remote.remote_range_summary(&range).await.unwrap(),
        store.range_summary(&range).await.unwrap()
    );
    assert_eq!(
        remote.remote_ids_in_range(&range, 7).await.unwrap(),
        store.ids_in_range(&range, 7).await.unwrap()
    );

    // Errors keep their type.
    let mut bad = chain("c", 1).remove(0);
    bad.payload = bytes::Bytes::from_static(b"tampered");
    match remote.remote_append(vec![bad]).await {
        Err(Error::Integrity { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        remote.call(Request::Subscribe).await,
        Err(Error::Protocol { .. })
    ));
}
