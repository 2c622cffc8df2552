#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The server's response limits at their exact edges: what fits is
//! answered, one item more is a prefix or a `TooLarge` error saying how to
//! page; error replies, hello checks.

use cairn::{
    AppendOnlyStore, Change, ChangeBuilder, ChangeId, ChangeKind, DocId, IdRange, StoreId,
};
use cairn_memory::MemoryStore;
use cairn_protocol::*;

fn sid() -> StoreId {
    StoreId::new("t/db").unwrap()
}

fn changes(n: usize, size: usize) -> Vec<Change> {
    (0..n)
        .map(|i| {
            ChangeBuilder::new(ChangeKind::Change, DocId::new("d").unwrap())
                .created_at(i as u64)
                .payload(vec![i as u8; size])
                .build()
                .unwrap()
        })
        .collect()
}

async fn store(cs: &[Change]) -> MemoryStore {
    let s = MemoryStore::new(sid());
    s.append(cs.to_vec()).await.unwrap();
    s
}

fn opts(max_items: usize, max_bytes: u64) -> ServeOptions {
    ServeOptions {
        limits: ResponseLimits {
            max_items,
            max_bytes,
        },
        ..ServeOptions::default()
    }
}

async fn ask(s: &MemoryStore, req: Request, o: &ServeOptions) -> Response {
    dispatch(s, &PeerId::from_bytes([1; 32]), req, o).await
}

fn ids_of(cs: &[Change]) -> Vec<ChangeId> {
    cs.iter().map(Change::id).collect()
}

#[tokio::test]
async fn get_changes_fills_the_byte_cap_exactly_and_sends_one_big_change_alone() {
    let cs = changes(3, 10);
    let s = store(&cs).await;
    for (max_bytes, want) in [(30, 3), (20, 2), (19, 1), (5, 1)] {
        match ask(&s, Request::GetChanges(ids_of(&cs)), &opts(100, max_bytes)).await {
            Response::Changes(got) => {
                assert_eq!(got.len(), want, "max_bytes {max_bytes}");
                assert_eq!(ids_of(&got), ids_of(&cs[..want]));
            }
            other => panic!("{other:?}"),
        }
    }
}

fn too_large(r: Response) -> (u64, u64) {
    match r {
        Response::Error(e) => match e.into_error() {
            cairn::Error::TooLarge { limit, actual, .. } => (limit, actual),
            other => panic!("{other:?}"),
        },
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[tokio::test]
async fn whole_answers_up_to_max_items_and_too_large_one_past_it() {
    let cs = changes(5, 1);
    let s = store(&cs).await;
    let doc = DocId::new("d").unwrap();
    let requests = || {
        vec![
            Request::FindNewChanges(Vec::new()),
            Request::FindNewChangesForDoc {
                doc: doc.clone(),
                have: Vec::new(),
            },
            Request::AllChangeIds,
            Request::ChangesForDoc {
                doc: doc.clone(),
                from_last_snapshot: false,
            },
        ]
    };
    for req in requests() {
        let name = format!("{req:?}");
        match ask(&s, req, &opts(5, u64::MAX)).await {
            Response::Metas(v) => assert_eq!(v.len(), 5, "{name}"),
            Response::Ids(v) => assert_eq!(v.len(), 5, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    for req in requests() {
        let name = format!("{req:?}");
        assert_eq!(
            too_large(ask(&s, req, &opts(4, u64::MAX)).await),
            (4, 5),
            "{name}"
        );
    }
    // Prefix answers instead: scan and ids_in_range stop at max_items.
    match ask(
        &s,
        Request::IdsInRange {
            range: IdRange::ALL,
            limit: 100,
        },
        &opts(4, u64::MAX),
    )
    .await
    {
        Response::Ids(v) => assert_eq!(v.len(), 4),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_error_reply_decodes_to_the_error() {
    let bytes = error_reply(
        9,
        &cairn::Error::NotFound {
            what: "store x".into(),
        },
        MIN_MAX_FRAME,
    );
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME);
    dec.push(&bytes);
    match dec.pop().unwrap() {
        Some(Message::Response {
            id: 9,
            body: Response::Error(e),
        }) => assert!(e.into_error().to_string().contains("store x")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_hello_for_another_store_is_refused() {
    let s = store(&[]).await;
    let hello = server_hello(&s, DEFAULT_MAX_FRAME).await.unwrap();
    let ok = check_hello(Message::Hello(hello.clone()), Some(&sid())).unwrap();
    assert_eq!(ok.store_id, sid());
    assert!(check_hello(Message::Hello(hello.clone()), None).is_ok());
    let other = StoreId::new("t/other").unwrap();
    match check_hello(Message::Hello(hello), Some(&other)) {
        Err(cairn::Error::StoreMismatch { expected, found }) => {
            assert_eq!((expected, found), (other, sid()));
        }
        other => panic!("{other:?}"),
    }
    assert!(format!("{:?}", ServeOptions::default()).starts_with("ServeOptions"));
}
