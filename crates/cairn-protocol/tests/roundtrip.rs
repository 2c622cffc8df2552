#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Round trips for every message type, chunking, limits and robustness.

use bytes::Bytes;
use cairn::riblt::{CodedSymbol, STRATA, STRATUM_BUCKETS, Sketch, SymbolReply, SymbolRequest};
use cairn::{
    AppendOutcome, Capabilities, Change, ChangeBuilder, ChangeId, ChangeKind, ChangeMeta, Digest,
    DocId, Error, Head, IdRange, KeyId, Keypair, RangeSummary, RejectReason, ScanItem, StoreId,
};
use cairn_protocol::*;
use proptest::prelude::*;

fn arb_id() -> impl Strategy<Value = ChangeId> {
    any::<[u8; 32]>().prop_map(ChangeId::from_bytes)
}

fn arb_ids() -> impl Strategy<Value = Vec<ChangeId>> {
    prop::collection::vec(arb_id(), 0..20)
}

fn arb_doc() -> impl Strategy<Value = DocId> {
    "[a-z0-9/é-]{1,40}".prop_map(|s| DocId::new(s).unwrap())
}

fn arb_change() -> impl Strategy<Value = Change> {
    (
        0u8..4,
        arb_doc(),
        prop::collection::vec(arb_id(), 0..4),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..200),
        any::<bool>(),
        "[a-z]{1,10}",
        any::<[u8; 32]>(),
    )
        .prop_map(|(k, doc, deps, at, payload, sign, key, seed)| {
            let kind = ChangeKind::from_code(k + 1).unwrap();
            let b = ChangeBuilder::new(kind, doc)
                .deps(deps)
                .created_at(at)
                .key_id(KeyId::new(key).unwrap())
                .payload(payload);
            if sign {
                b.sign(&Keypair::from_seed(seed)).unwrap()
            } else {
                b.build().unwrap()
            }
        })
}

fn arb_changes() -> impl Strategy<Value = Vec<Change>> {
    prop::collection::vec(arb_change(), 0..6)
}

fn arb_metas() -> impl Strategy<Value = Vec<ChangeMeta>> {
    arb_changes().prop_map(|v| v.into_iter().map(|c| c.meta).collect())
}

fn arb_range() -> impl Strategy<Value = IdRange> {
    (arb_id(), prop::option::of(arb_id())).prop_map(|(start, end)| IdRange { start, end })
}

fn arb_text() -> impl Strategy<Value = String> {
    "[ -~é]{0,30}"
}

fn arb_error() -> impl Strategy<Value = WireError> {
    prop_oneof![
        (arb_id(), arb_id()).prop_map(|(id, computed)| WireError::Integrity {
            id,
            reason: WireIntegrity::IdMismatch { computed }
        }),
        arb_id().prop_map(|id| WireError::Integrity {
            id,
            reason: WireIntegrity::PayloadHashMismatch
        }),
        (arb_id(), any::<u64>(), any::<u64>()).prop_map(|(id, declared, actual)| {
            WireError::Integrity {
                id,
                reason: WireIntegrity::PayloadLenMismatch { declared, actual },
            }
        }),
        (arb_id(), arb_text()).prop_map(|(id, reason)| WireError::Integrity {
            id,
            reason: WireIntegrity::BadDeps { reason }
        }),
        (arb_id(), arb_text(), any::<u64>(), any::<u64>()).prop_map(|(id, field, len, limit)| {
            WireError::Integrity {
                id,
                reason: WireIntegrity::FieldTooLong { field, len, limit },
            }
        }),
        arb_id().prop_map(|id| WireError::Integrity {
            id,
            reason: WireIntegrity::Other
        }),
        arb_text().prop_map(|what| WireError::NotFound { what }),
        ("[a-z/]{1,20}", "[a-z/]{1,20}")
            .prop_map(|(expected, found)| WireError::StoreMismatch { expected, found }),
        arb_text().prop_map(|reason| WireError::Unauthorized { reason }),
        arb_text().prop_map(|reason| WireError::InvalidInput { reason }),
        (arb_text(), any::<u64>(), any::<u64>()).prop_map(|(what, limit, actual)| {
            WireError::TooLarge {
                what,
                limit,
                actual,
            }
        }),
        (arb_text(), arb_text()).prop_map(|(store, what)| WireError::Unsupported { store, what }),
        arb_text().prop_map(|reason| WireError::Protocol { reason }),
        (arb_text(), arb_text()).prop_map(|(store, reason)| WireError::Corrupt { store, reason }),
        (any::<u8>(), arb_text()).prop_map(|(kind, message)| WireError::Io { kind, message }),
        Just(WireError::Closed),
        Just(WireError::Cancelled),
        (arb_text(), any::<bool>(), arb_text()).prop_map(|(store, retryable, message)| {
            WireError::Backend {
                store,
                retryable,
                message,
            }
        }),
        arb_text().prop_map(|reason| WireError::Busy { reason }),
        (arb_text(), any::<u32>(), any::<u32>(), arb_text()).prop_map(
            |(what, found, supported, hint)| WireError::UnsupportedVersion {
                what,
                found,
                supported,
                hint
            }
        ),
        (arb_id(), arb_text()).prop_map(|(id, t)| WireError::Rejected {
            id,
            reason: RejectReason::Policy(t)
        }),
        (arb_id(), arb_text()).prop_map(|(id, t)| WireError::Rejected {
            id,
            reason: RejectReason::Integrity(t)
        }),
        arb_id().prop_map(|id| WireError::Rejected {
            id,
            reason: RejectReason::MissingSignature
        }),
        arb_id().prop_map(|id| WireError::Rejected {
            id,
            reason: RejectReason::BadSignature
        }),
        (arb_id(), arb_id()).prop_map(|(id, a)| WireError::Rejected {
            id,
            reason: RejectReason::UntrustedAuthor(cairn::AuthorId::from_bytes(*a.as_bytes()))
        }),
        (arb_text(), 0u64..u64::MAX / 2).prop_map(|(what, retry_after_ms)| {
            WireError::RateLimited {
                what,
                retry_after_ms,
            }
        }),
        (arb_text(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(what, limit, used, requested)| WireError::QuotaExceeded {
                what,
                limit,
                used,
                requested
            }
        ),
        (arb_text(), 0u64..u64::MAX / 2)
            .prop_map(|(what, after_ms)| WireError::Timeout { what, after_ms }),
        (1000u16.., any::<bool>(), arb_text()).prop_map(|(code, retryable, message)| {
            WireError::Other {
                code,
                retryable,
                message,
            }
        }),
    ]
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        arb_changes().prop_map(Request::Append),
        arb_ids().prop_map(Request::GetChanges),
        arb_ids().prop_map(Request::GetMetas),
        arb_ids().prop_map(Request::HasChanges),
        (any::<u64>(), any::<u64>()).prop_map(|(after, limit)| Request::Scan { after, limit }),
        Just(Request::Head),
        arb_ids().prop_map(Request::FindNewChanges),
        (arb_doc(), arb_ids()).prop_map(|(doc, have)| Request::FindNewChangesForDoc { doc, have }),
        Just(Request::AllChangeIds),
        (arb_doc(), any::<bool>()).prop_map(|(doc, from_last_snapshot)| {
            Request::ChangesForDoc {
                doc,
                from_last_snapshot,
            }
        }),
        arb_range().prop_map(Request::RangeSummary),
        (arb_range(), any::<u64>()).prop_map(|(range, limit)| Request::IdsInRange { range, limit }),
        Just(Request::Subscribe),
        any::<u32>().prop_map(|subscription| Request::Unsubscribe { subscription }),
        (any::<u64>(), any::<u32>(), any::<bool>()).prop_map(|(start, count, sketch)| {
            Request::CodedSymbols(SymbolRequest {
                start,
                count,
                sketch,
            })
        }),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (arb_ids(), 0usize..1000)
            .prop_map(|(new, duplicates)| Response::Appended(AppendOutcome { new, duplicates })),
        arb_changes().prop_map(Response::Changes),
        arb_metas().prop_map(Response::Metas),
        prop::collection::vec(any::<bool>(), 0..50).prop_map(Response::Bools),
        (arb_metas(), any::<u64>()).prop_map(|(m, base)| Response::ScanItems(
            m.into_iter()
                .enumerate()
                .map(|(i, meta)| ScanItem {
                    seq: base.wrapping_add(i as u64),
                    meta
                })
                .collect()
        )),
        (any::<u64>(), any::<u64>()).prop_map(|(epoch, seq)| Response::Head(Head { epoch, seq })),
        arb_ids().prop_map(Response::Ids),
        (any::<u64>(), any::<[u8; 32]>()).prop_map(|(count, fp)| Response::Summary(RangeSummary {
            count,
            fingerprint: Digest::from_bytes(fp)
        })),
        Just(Response::Done),
        (
            any::<u64>(),
            any::<u64>(),
            prop::option::of(prop::collection::vec(
                any::<[u8; STRATUM_BUCKETS]>(),
                0..=STRATA
            )),
            prop::collection::vec((any::<[u8; 32]>(), any::<u64>()), 0..200),
        )
            .prop_map(|(total, digest, strata, symbols)| {
                Response::Symbols(SymbolReply {
                    total,
                    digest,
                    sketch: strata.map(|v| {
                        let mut sk = Sketch::default();
                        for (s, b) in sk.strata.iter_mut().zip(v) {
                            *s = b;
                        }
                        Box::new(sk)
                    }),
                    symbols: symbols
                        .into_iter()
                        .map(|(sum, check)| CodedSymbol { sum, check })
                        .collect(),
                })
            }),
        arb_error().prop_map(Response::Error),
    ]
}

fn arb_caps() -> impl Strategy<Value = Capabilities> {
    any::<[bool; 5]>().prop_map(|b| Capabilities {
        native_find_new: b[0],
        native_doc_index: b[1],
        native_reconciliation: b[2],
        durable: b[3],
        remote: b[4],
    })
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            "[a-z/]{1,30}",
            arb_caps(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(
                |(s, capabilities, epoch, seq, max_frame)| Message::Hello(Hello {
                    version: VERSION,
                    store_id: StoreId::new(s).unwrap(),
                    capabilities,
                    head: Head { epoch, seq },
                    max_frame,
                })
            ),
        (any::<u32>(), arb_request()).prop_map(|(id, body)| Message::Request { id, body }),
        (any::<u32>(), arb_response()).prop_map(|(id, body)| Message::Response { id, body }),
        (any::<u32>(), arb_metas()).prop_map(|(subscription, metas)| Message::Notify {
            subscription,
            metas
        }),
    ]
}

fn decode_all(bytes: &[u8], max_frame: u32, step: usize) -> Vec<Message> {
    let mut dec = FrameDecoder::new(max_frame);
    let mut out = Vec::new();
    for chunk in bytes.chunks(step.max(1)) {
        dec.push(chunk);
        while let Some(m) = dec.pop().unwrap() {
            out.push(m);
        }
    }
    assert!(dec.is_idle());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(msg in arb_message(), step in 1usize..64) {
        let bytes = encode(&msg, DEFAULT_MAX_FRAME).unwrap();
        let back = decode_all(&bytes, DEFAULT_MAX_FRAME, step);
        prop_assert_eq!(back, vec![msg]);
    }

    #[test]
    fn small_frames_split_and_reassemble(msg in arb_message(), max in 4096u32..6000) {
        let bytes = encode(&msg, max).unwrap();
        for f in encode_frames(&msg, max).unwrap() {
            prop_assert!(f.len() - LEN_PREFIX <= max as usize);
        }
        prop_assert_eq!(decode_all(&bytes, max, 997), vec![msg]);
    }

    #[test]
    fn items_of_any_size_split_and_reassemble(
        sizes in prop::collection::vec(0usize..20_000, 0..6),
        max in 4096u32..9000,
        step in 1usize..5000,
        request in any::<bool>(),
    ) {
        let cs: Vec<Change> = sizes.iter().enumerate().map(|(i, n)| change(i as u32, *n)).collect();
        let msg = if request {
            Message::Request { id: 4, body: Request::Append(cs) }
        } else {
            Message::Response { id: 4, body: Response::Changes(cs) }
        };
        for f in encode_frames(&msg, max).unwrap() {
            prop_assert!(f.len() - LEN_PREFIX <= max as usize);
        }
        let bytes = encode(&msg, max).unwrap();
        prop_assert_eq!(decode_all(&bytes, max, step), vec![msg]);
    }

    #[test]
    fn errors_map_to_cairn_and_back(e in arb_error()) {
        let retryable = e.is_retryable();
        let core: Error = e.clone().into_error();
        prop_assert_eq!(core.is_retryable(), retryable);
        let again = WireError::from(&core);
        prop_assert_eq!(again.code(), if matches!(e, WireError::Busy{..} | WireError::Other{..}) { code::BACKEND } else { e.code() });
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut dec = FrameDecoder::new(MIN_MAX_FRAME);
        dec.push(&bytes);
        for _ in 0..100 {
            match dec.pop() {
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => break,
            }
        }
        let _ = decode_body(&bytes);
    }

    #[test]
    fn decoding_mutated_frames_never_panics(msg in arb_message(), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = encode(&msg, DEFAULT_MAX_FRAME).unwrap();
        for (pos, b) in flips {
            let n = bytes.len();
            bytes[pos % n] ^= b;
        }
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        dec.push(&bytes);
        for _ in 0..100 {
            match dec.pop() {
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => break,
            }
        }
    }
}

fn change(i: u32, payload: usize) -> Change {
    ChangeBuilder::new(
        ChangeKind::Change,
        DocId::new(format!("doc-{}", i % 10)).unwrap(),
    )
    .created_at(u64::from(i))
    .payload(Bytes::from(vec![(i % 251) as u8; payload]))
    .build()
    .unwrap()
}

#[test]
fn large_results_are_split_never_truncated() {
    // 1M ids (32 MB) under a 16 MiB frame limit.
    let ids: Vec<ChangeId> = numbered_ids(1_000_000);
    let msg = Message::Response {
        id: 9,
        body: Response::Ids(ids),
    };
    let frames = encode_frames(&msg, DEFAULT_MAX_FRAME).unwrap();
    assert!(frames.len() >= 2, "{} frames", frames.len());
    let bytes = encode(&msg, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(decode_all(&bytes, DEFAULT_MAX_FRAME, 1 << 20), vec![msg]);

    // 20k changes of 1 KiB under a 1 MiB limit.
    let changes: Vec<Change> = (0..20_000).map(|i| change(i, 1024)).collect();
    let msg = Message::Response {
        id: 3,
        body: Response::Changes(changes),
    };
    let frames = encode_frames(&msg, 1 << 20).unwrap();
    assert!(frames.len() > 20);
    assert!(frames[..frames.len() - 1].iter().all(|f| f[5] == FLAG_MORE));
    assert_eq!(frames.last().unwrap()[5], 0);
    let bytes = encode(&msg, 1 << 20).unwrap();
    assert_eq!(decode_all(&bytes, 1 << 20, 65536), vec![msg]);
}

#[test]
fn interleaved_split_messages_reassemble_by_id() {
    let a = Message::Response {
        id: 1,
        body: Response::Changes((0..30).map(|i| change(i, 1000)).collect()),
    };
    let b = Message::Response {
        id: 2,
        body: Response::Changes((30..60).map(|i| change(i, 1000)).collect()),
    };
    let fa = encode_frames(&a, 8192).unwrap();
    let fb = encode_frames(&b, 8192).unwrap();
    let mut dec = FrameDecoder::new(8192);
    let mut got = Vec::new();
    for i in 0..fa.len().max(fb.len()) {
        for f in [fa.get(i), fb.get(i)].into_iter().flatten() {
            dec.push(f);
            while let Some(m) = dec.pop().unwrap() {
                got.push(m);
            }
        }
    }
    assert_eq!(got.len(), 2);
    assert!(got.contains(&a) && got.contains(&b));
}

#[test]
fn a_change_larger_than_a_frame_is_split_across_frames() {
    // 10 KB under a 4 KiB limit, between small changes, in both a request
    // and a response.
    let cs = vec![change(1, 10), change(2, 10_000), change(3, 10)];
    for msg in [
        Message::Response {
            id: 1,
            body: Response::Changes(cs.clone()),
        },
        Message::Request {
            id: 2,
            body: Request::Append(cs.clone()),
        },
    ] {
        let frames = encode_frames(&msg, 4096).unwrap();
        assert!(frames.iter().all(|f| f.len() - LEN_PREFIX <= 4096));
        assert!(
            frames.iter().any(|f| f[5] & FLAG_SPLIT != 0),
            "one frame starts the split"
        );
        assert!(frames.iter().filter(|f| f[5] & FLAG_CONT != 0).count() >= 2);
        let bytes = encode(&msg, 4096).unwrap();
        for step in [1, 97, 4100, 1 << 20] {
            assert_eq!(decode_all(&bytes, 4096, step), vec![msg.clone()]);
        }
        // A frame that splits an item cannot be decoded alone.
        let split = frames.iter().find(|f| f[5] & FLAG_SPLIT != 0).unwrap();
        assert!(matches!(
            decode_body(&split[LEN_PREFIX..]),
            Err(Error::Protocol { .. })
        ));
    }
    // 17 MiB under the default 16 MiB limit: the frames are streamed one
    // at a time by the encoder, never all at once.
    let big = Message::Response {
        id: 5,
        body: Response::Changes(vec![change(7, 17 << 20), change(8, 100)]),
    };
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut got = Vec::new();
    let mut frames = 0;
    for f in FrameEncoder::new(&big, DEFAULT_MAX_FRAME) {
        let f = f.unwrap();
        assert!(f.len() - LEN_PREFIX <= DEFAULT_MAX_FRAME as usize);
        frames += 1;
        dec.push(&f);
        while let Some(m) = dec.pop().unwrap() {
            got.push(m);
        }
    }
    // The split start (16 MiB), its continuation, then the small change.
    assert_eq!(frames, 3);
    assert_eq!(got, vec![big]);
    assert!(dec.is_idle());
}

#[test]
fn reply_frames_a_response_of_any_size() {
    let bytes = reply(1, Response::Changes(vec![change(1, 10_000)]), 4096);
    let got = decode_all(&bytes, 4096, 100);
    assert_eq!(
        got,
        vec![Message::Response {
            id: 1,
            body: Response::Changes(vec![change(1, 10_000)]),
        }]
    );
}

#[test]
fn interleaved_split_items_reassemble_by_id() {
    let a = Message::Request {
        id: 1,
        body: Request::Append(vec![change(1, 20_000), change(2, 5)]),
    };
    let b = Message::Request {
        id: 2,
        body: Request::Append(vec![change(3, 9_000)]),
    };
    let fa = encode_frames(&a, 4096).unwrap();
    let fb = encode_frames(&b, 4096).unwrap();
    let mut dec = FrameDecoder::new(4096);
    let mut got = Vec::new();
    for i in 0..fa.len().max(fb.len()) {
        for f in [fa.get(i), fb.get(i)].into_iter().flatten() {
            dec.push(f);
            while let Some(m) = dec.pop().unwrap() {
                got.push(m);
            }
        }
    }
    assert_eq!(got.len(), 2);
    assert!(got.contains(&a) && got.contains(&b));
    assert!(dec.is_idle());
}

/// A frame with the given type, flags and id, and `rest` after the header.
fn raw_frame(ty: u8, flags: u8, id: u32, rest: &[u8]) -> Vec<u8> {
    let mut f = ((HEADER_LEN + rest.len()) as u32).to_be_bytes().to_vec();
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(rest);
    f
}

#[test]
fn malformed_splits_are_protocol_errors() {
    let ty = msg_type::CHANGES;
    let split_start = |len: u64, first: &[u8]| {
        let mut rest = 0u32.to_be_bytes().to_vec(); // count 0
        rest.extend_from_slice(&len.to_be_bytes());
        rest.extend_from_slice(first);
        rest
    };
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "a continuation with nothing before it",
            vec![raw_frame(ty, FLAG_CONT | FLAG_MORE, 1, b"abc")],
        ),
        (
            "a split without MORE",
            vec![raw_frame(ty, FLAG_SPLIT, 1, &split_start(10, b"ab"))],
        ),
        (
            "a split whose first part is the whole item",
            vec![raw_frame(
                ty,
                FLAG_SPLIT | FLAG_MORE,
                1,
                &split_start(2, b"ab"),
            )],
        ),
        (
            "a continuation past the item's end",
            vec![
                raw_frame(ty, FLAG_SPLIT | FLAG_MORE, 1, &split_start(4, b"ab")),
                raw_frame(ty, FLAG_CONT, 1, b"cde"),
            ],
        ),
        (
            "the message ends inside the item",
            vec![
                raw_frame(ty, FLAG_SPLIT | FLAG_MORE, 1, &split_start(6, b"ab")),
                raw_frame(ty, FLAG_CONT, 1, b"cd"),
            ],
        ),
        (
            "a new list frame before the item is finished",
            vec![
                raw_frame(ty, FLAG_SPLIT | FLAG_MORE, 1, &split_start(6, b"ab")),
                raw_frame(ty, FLAG_MORE, 1, &0u32.to_be_bytes()),
            ],
        ),
        (
            "a continuation and a split at once",
            vec![raw_frame(ty, FLAG_CONT | FLAG_SPLIT | FLAG_MORE, 1, b"ab")],
        ),
        (
            "a continuation of a type without a list",
            vec![raw_frame(msg_type::HEAD_IS, FLAG_CONT, 1, b"ab")],
        ),
        (
            "a reassembled item that is not a change",
            vec![
                raw_frame(ty, FLAG_SPLIT | FLAG_MORE, 1, &split_start(4, b"ab")),
                raw_frame(ty, FLAG_CONT, 1, b"cd"),
            ],
        ),
    ];
    for (what, frames) in cases {
        let mut dec = FrameDecoder::new(4096);
        let mut err = None;
        for f in frames {
            dec.push(&f);
            match dec.pop() {
                Ok(Some(m)) => panic!("{what}: decoded {m:?}"),
                Ok(None) => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert!(
            matches!(err, Some(Error::Protocol { .. })),
            "{what}: {err:?}"
        );
    }
}

#[test]
fn a_split_item_larger_than_the_budget_is_refused_before_it_is_buffered() {
    let mut rest = 0u32.to_be_bytes().to_vec();
    rest.extend_from_slice(&(1u64 << 40).to_be_bytes());
    rest.extend_from_slice(b"x");
    let mut dec = FrameDecoder::new(4096).with_max_message(1 << 20);
    dec.push(&raw_frame(
        msg_type::APPEND,
        FLAG_SPLIT | FLAG_MORE,
        1,
        &rest,
    ));
    match dec.pop() {
        Err(Error::TooLarge {
            what: "message",
            limit,
            ..
        }) => assert_eq!(limit, 1 << 20),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_oversized_length_is_refused_before_buffering() {
    let mut dec = FrameDecoder::new(1 << 20);
    dec.push(&u32::MAX.to_be_bytes());
    match dec.pop() {
        Err(Error::TooLarge {
            what: "frame",
            limit,
            actual,
        }) => {
            assert_eq!(limit, 1 << 20);
            assert_eq!(actual, u64::from(u32::MAX));
        }
        other => panic!("{other:?}"),
    }
    // It stays failed: the stream cannot be resynchronised.
    dec.push(&[0; 10]);
    assert!(dec.pop().is_err());
}

#[test]
fn split_messages_are_bounded() {
    let msg = Message::Response {
        id: 1,
        body: Response::Changes((0..40).map(|i| change(i, 1000)).collect()),
    };
    let bytes = encode(&msg, 4096).unwrap();
    let mut dec = FrameDecoder::new(4096).with_max_message(10_000);
    dec.push(&bytes);
    // pop() works through every pushed frame in one call.
    let saw = dec.pop().err();
    assert!(
        matches!(
            saw,
            Some(Error::TooLarge {
                what: "message",
                ..
            })
        ),
        "{saw:?}"
    );
}

#[test]
fn bad_hello_is_a_protocol_error() {
    let hello = Message::Hello(client_hello(StoreId::new("s").unwrap(), DEFAULT_MAX_FRAME));
    let mut bytes = encode(&hello, DEFAULT_MAX_FRAME).unwrap();
    bytes[10] = b'X'; // magic
    assert!(matches!(
        decode_body(&bytes[4..]),
        Err(Error::Protocol { .. })
    ));
    // A version-1 peer (format v1 changes) gets a typed error saying so.
    let mut bytes = encode(&hello, DEFAULT_MAX_FRAME).unwrap();
    bytes[15] = 1; // version, low byte
    match decode_body(&bytes[4..]) {
        Err(
            e @ Error::UnsupportedVersion {
                what: "protocol",
                found: 1,
                supported: 2,
                ..
            },
        ) => assert!(e.to_string().contains("older"), "{e}"),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    // And it survives the wire as the same typed error.
    let e = decode_body(&bytes[4..]).unwrap_err();
    let back = WireError::from(&e).into_error();
    assert!(
        matches!(back, Error::UnsupportedVersion { found: 1, .. }),
        "{back:?}"
    );
}

#[test]
fn head_request_bytes_match_the_spec() {
    // docs/protocol.md, example 1.
    let bytes = encode(
        &Message::Request {
            id: 1,
            body: Request::Head,
        },
        DEFAULT_MAX_FRAME,
    )
    .unwrap();
    assert_eq!(bytes, [0, 0, 0, 6, 0x15, 0, 0, 0, 0, 1]);
    let bytes = encode(
        &Message::Response {
            id: 1,
            body: Response::Head(Head {
                epoch: 0x0102030405060708,
                seq: 3,
            }),
        },
        DEFAULT_MAX_FRAME,
    )
    .unwrap();
    assert_eq!(
        bytes,
        [
            0, 0, 0, 22, 0x25, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 3
        ]
    );
    let bytes = encode(
        &Message::Response {
            id: 2,
            body: Response::Error(WireError::Unauthorized {
                reason: "read-only".into(),
            }),
        },
        DEFAULT_MAX_FRAME,
    )
    .unwrap();
    let mut want = vec![0, 0, 0, 20, 0x2F, 0, 0, 0, 0, 2, 0, 4, 0, 0, 9];
    want.extend_from_slice(b"read-only");
    assert_eq!(bytes, want);
}

#[test]
fn correlator_checks_response_types() {
    let mut c = Correlator::new();
    let m = c.request(Request::Head, ());
    let id = m.id();
    match c.handle(Message::Response {
        id,
        body: Response::Done,
    }) {
        Incoming::Response {
            result: Err(Error::Protocol { .. }),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.handle(Message::Response {
            id,
            body: Response::Done
        }),
        Incoming::Unsolicited(_)
    ));
    let m = c.request(Request::AllChangeIds, ());
    let e = WireError::Unauthorized {
        reason: "no".into(),
    };
    match c.handle(Message::Response {
        id: m.id(),
        body: Response::Error(e),
    }) {
        Incoming::Response {
            result: Err(Error::Unauthorized { .. }),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let _ = c.request(Request::Head, ());
    assert_eq!(c.fail_all().len(), 1);
}

#[test]
fn hello_bytes_match_the_spec() {
    let hello = Message::Hello(client_hello(
        StoreId::new("t/db").unwrap(),
        DEFAULT_MAX_FRAME,
    ));
    let bytes = encode(&hello, DEFAULT_MAX_FRAME).unwrap();
    let mut want = vec![0, 0, 0, 0x27, 1, 0, 0, 0, 0, 0];
    want.extend_from_slice(b"CAIR");
    want.extend_from_slice(&[0, 2, 0, 4]);
    want.extend_from_slice(b"t/db");
    want.push(0);
    want.extend_from_slice(&[0; 16]);
    want.extend_from_slice(&[1, 0, 0, 0]);
    assert_eq!(bytes, want);
}

/// Body length of a frame (after the length prefix).
fn body(frame: &[u8]) -> usize {
    frame.len() - LEN_PREFIX
}

/// `n` distinct ids, numbered in their first four bytes.
fn numbered_ids(n: u32) -> Vec<ChangeId> {
    (0..n)
        .map(|i| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            ChangeId::from_bytes(b)
        })
        .collect()
}

/// Encoded size of `c` as an item of an append (the body of a one-frame
/// append after its header and count).
fn append_item_size(c: &Change) -> usize {
    let m = Message::Request {
        id: 1,
        body: Request::Append(vec![c.clone()]),
    };
    body(&encode_frames(&m, DEFAULT_MAX_FRAME).unwrap()[0]) - HEADER_LEN - 4
}

#[test]
fn list_frames_are_filled_to_the_limit() {
    // 1,000 ids at the 4 KiB minimum: header, count, then as many 32-byte
    // ids as fit (127), frame after frame.
    let ids: Vec<ChangeId> = numbered_ids(1000);
    let msg = Message::Request {
        id: 3,
        body: Request::GetChanges(ids),
    };
    let frames = encode_frames(&msg, MIN_MAX_FRAME).unwrap();
    let per = (MIN_MAX_FRAME as usize - HEADER_LEN - 4) / 32;
    assert_eq!(per, 127);
    assert_eq!(frames.len(), 1000usize.div_ceil(per));
    for f in &frames[..frames.len() - 1] {
        assert_eq!(body(f), HEADER_LEN + 4 + per * 32);
    }
    assert_eq!(
        body(frames.last().unwrap()),
        HEADER_LEN + 4 + (1000 - (frames.len() - 1) * per) * 32
    );
    assert_eq!(
        decode_all(&encode(&msg, MIN_MAX_FRAME).unwrap(), MIN_MAX_FRAME, 1000),
        vec![msg]
    );
}

#[test]
fn a_split_item_fills_its_first_frame_and_every_continuation() {
    let c = change(1, 20_000);
    let msg = Message::Request {
        id: 5,
        body: Request::Append(vec![c]),
    };
    // Unsplit, the item is the whole body after header and count.
    let whole = encode_frames(&msg, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(whole.len(), 1);
    let item = body(&whole[0]) - HEADER_LEN - 4;
    let limit = MIN_MAX_FRAME as usize;
    let frames = encode_frames(&msg, MIN_MAX_FRAME).unwrap();
    // First frame: header, count, the item's length (8 bytes), then its
    // first bytes up to the limit; continuations: header, then bytes.
    let first = limit - HEADER_LEN - 4 - 8;
    let per = limit - HEADER_LEN;
    assert_eq!(frames.len(), 1 + (item - first).div_ceil(per));
    for f in &frames[..frames.len() - 1] {
        assert_eq!(body(f), limit);
    }
    assert_eq!(
        body(frames.last().unwrap()),
        HEADER_LEN + (item - first) - (frames.len() - 2) * per
    );
    assert_eq!(
        decode_all(&encode(&msg, MIN_MAX_FRAME).unwrap(), MIN_MAX_FRAME, 777),
        vec![msg]
    );
}

#[test]
fn a_change_that_fits_an_empty_frame_starts_the_next_one_whole() {
    // Two changes, each a little over half a frame: the second does not fit
    // after the first, but fits a frame of its own, so it is not split.
    let (a, b) = (change(1, 2200), change(2, 2200));
    let msg = Message::Request {
        id: 6,
        body: Request::Append(vec![a, b]),
    };
    let frames = encode_frames(&msg, MIN_MAX_FRAME).unwrap();
    assert_eq!(frames.len(), 2);
    for f in &frames {
        assert_eq!(f[LEN_PREFIX + 1] & FLAG_SPLIT, 0, "not split");
    }
    assert_eq!(
        decode_all(&encode(&msg, MIN_MAX_FRAME).unwrap(), MIN_MAX_FRAME, 500),
        vec![msg]
    );
}

#[test]
fn the_frame_encoder_says_where_it_is() {
    let msg = Message::Request {
        id: 8,
        body: Request::Head,
    };
    let dbg = format!("{:?}", FrameEncoder::new(&msg, MIN_MAX_FRAME));
    assert!(
        dbg.contains("FrameEncoder") && dbg.contains("id: 8"),
        "{dbg}"
    );
}

#[test]
fn fixed_fields_never_fill_a_minimum_frame() {
    // An error's reason is cut to a bound, so even a huge one travels in
    // one minimum-size frame (doc ids, the other long fixed field, are at
    // most 1 KiB): the encoder's "fixed fields too large" check cannot
    // trigger with frames of at least MIN_MAX_FRAME.
    let msg = Message::Response {
        id: 2,
        body: Response::Error(WireError::Busy {
            reason: "x".repeat(100_000),
        }),
    };
    let frames = encode_frames(&msg, MIN_MAX_FRAME).unwrap();
    assert_eq!(frames.len(), 1);
    assert!(
        body(&frames[0]) < MIN_MAX_FRAME as usize / 2,
        "{}",
        body(&frames[0])
    );
}

#[test]
fn decode_body_reads_a_whole_frame_and_a_continuation_needs_a_list() {
    let msg = Message::Request {
        id: 1,
        body: Request::Head,
    };
    let frame = encode(&msg, MIN_MAX_FRAME).unwrap();
    assert_eq!(decode_body(&frame[LEN_PREFIX..]).unwrap(), (msg, false));
    // A continuation frame (CONT, some bytes) of a message type that has no
    // list cannot be part of anything.
    let mut cont = frame[..LEN_PREFIX + HEADER_LEN].to_vec();
    cont[LEN_PREFIX + 1] = FLAG_CONT;
    cont.extend_from_slice(b"abc");
    let len = (cont.len() - LEN_PREFIX) as u32;
    cont[..4].copy_from_slice(&len.to_be_bytes());
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME);
    dec.push(&cont);
    match dec.pop() {
        Err(Error::Protocol { reason }) => assert!(reason.contains("has no list"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// Whether a frame has the SPLIT flag (it ends with the start of an item).
fn splits(frame: &[u8]) -> bool {
    frame[LEN_PREFIX + 1] & FLAG_SPLIT != 0
}

#[test]
fn an_item_that_exactly_fills_an_empty_frame_moves_to_one_and_a_larger_one_splits_at_once() {
    let limit = MIN_MAX_FRAME as usize;
    let base = append_item_size(&change(2, 0));
    // An item of exactly an empty frame's room.
    let exact = change(2, limit - HEADER_LEN - 4 - base);
    assert_eq!(append_item_size(&exact), limit - HEADER_LEN - 4);
    let small = change(1, 100);
    let msg = Message::Request {
        id: 7,
        body: Request::Append(vec![small.clone(), exact]),
    };
    let frames = encode_frames(&msg, MIN_MAX_FRAME).unwrap();
    assert_eq!(frames.len(), 2);
    assert!(!splits(&frames[0]) && !splits(&frames[1]));
    assert_eq!(
        body(&frames[1]),
        limit,
        "the second frame holds it whole, full"
    );
    assert_eq!(
        decode_all(&encode(&msg, MIN_MAX_FRAME).unwrap(), MIN_MAX_FRAME, 300),
        vec![msg]
    );
    // An item larger than any frame (by a few bytes, or by far) starts
    // right after the small one.
    for extra in [1, 4, 16_000] {
        let big = change(3, limit - HEADER_LEN - 4 - base + extra);
        let msg = Message::Request {
            id: 8,
            body: Request::Append(vec![small.clone(), big]),
        };
        let frames = encode_frames(&msg, MIN_MAX_FRAME).unwrap();
        assert!(
            splits(&frames[0]),
            "{extra}: split in the first frame, after the small item"
        );
        assert_eq!(body(&frames[0]), limit);
        assert_eq!(
            decode_all(&encode(&msg, MIN_MAX_FRAME).unwrap(), MIN_MAX_FRAME, 300),
            vec![msg]
        );
    }
}

#[test]
fn a_split_starts_only_where_its_length_and_a_byte_fit() {
    let limit = MIN_MAX_FRAME as usize;
    let base = append_item_size(&change(1, 0));
    // A first item that leaves `room` bytes, then one too large for any
    // frame: it starts there (its 8-byte length and at least one byte)
    // only if room >= 9.
    for room in [5usize, 7, 8, 9, 10] {
        let first = change(1, limit - HEADER_LEN - 4 - base - room);
        let msg = Message::Request {
            id: 9,
            body: Request::Append(vec![first, change(2, 9000)]),
        };
        let frames = encode_frames(&msg, MIN_MAX_FRAME).unwrap();
        assert_eq!(splits(&frames[0]), room >= 9, "room {room}");
        assert_eq!(
            body(&frames[0]),
            if room >= 9 { limit } else { limit - room },
            "room {room}"
        );
        assert_eq!(
            decode_all(&encode(&msg, MIN_MAX_FRAME).unwrap(), MIN_MAX_FRAME, 640),
            vec![msg]
        );
    }
}

#[test]
fn a_message_without_a_list_cannot_say_more_follows() {
    let frame = encode(
        &Message::Request {
            id: 4,
            body: Request::Head,
        },
        MIN_MAX_FRAME,
    )
    .unwrap();
    let mut more = frame.clone();
    more[LEN_PREFIX + 1] = FLAG_MORE;
    match decode_body(&more[LEN_PREFIX..]) {
        Err(Error::Protocol { reason }) => assert!(reason.contains("has no list"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// `msg` (one item) re-framed by hand with its item split in two: a first
/// frame (`MORE | SPLIT`, no whole item, the item's length and its first
/// `at` bytes) and a continuation (`CONT`, the rest). The encoder never
/// splits items this small, but a peer may, and the decoder must put them
/// back. `empty` is the same message with no item (to find where the item
/// starts).
fn resplit(msg: &Message, empty: &Message, at: usize) -> Vec<u8> {
    let one = encode(msg, DEFAULT_MAX_FRAME).unwrap();
    let none = encode(empty, DEFAULT_MAX_FRAME).unwrap();
    let start = none.len();
    let item = &one[start..];
    assert!(at > 0 && at < item.len());
    let header = &one[LEN_PREFIX..LEN_PREFIX + HEADER_LEN];
    let mut first = vec![0u8; LEN_PREFIX];
    first.extend_from_slice(header);
    first[LEN_PREFIX + 1] = FLAG_MORE | FLAG_SPLIT;
    // Fixed fields and the count (0 whole items) as in the empty message.
    first.extend_from_slice(&none[LEN_PREFIX + HEADER_LEN..]);
    first.extend_from_slice(&(item.len() as u64).to_be_bytes());
    first.extend_from_slice(&item[..at]);
    let len = (first.len() - LEN_PREFIX) as u32;
    first[..4].copy_from_slice(&len.to_be_bytes());
    let mut cont = vec![0u8; LEN_PREFIX];
    cont.extend_from_slice(header);
    cont[LEN_PREFIX + 1] = FLAG_CONT;
    cont.extend_from_slice(&item[at..]);
    let len = (cont.len() - LEN_PREFIX) as u32;
    cont[..4].copy_from_slice(&len.to_be_bytes());
    first.extend(cont);
    first
}

#[test]
fn small_items_split_by_a_peer_are_put_back_in_every_list_type() {
    let c = change(5, 40);
    let id = c.id();
    let meta = c.meta.clone();
    let resp = |body| Message::Response { id: 3, body };
    let req = |body| Message::Request { id: 3, body };
    let cases: Vec<(Message, Message)> = vec![
        (
            req(Request::GetChanges(vec![id])),
            req(Request::GetChanges(vec![])),
        ),
        (resp(Response::Ids(vec![id])), resp(Response::Ids(vec![]))),
        (
            resp(Response::Appended(AppendOutcome {
                new: vec![id],
                duplicates: 2,
            })),
            resp(Response::Appended(AppendOutcome {
                new: vec![],
                duplicates: 2,
            })),
        ),
        (
            resp(Response::Metas(vec![meta.clone()])),
            resp(Response::Metas(vec![])),
        ),
        (
            Message::Notify {
                subscription: 3,
                metas: vec![meta.clone()],
            },
            Message::Notify {
                subscription: 3,
                metas: vec![],
            },
        ),
        (
            resp(Response::ScanItems(vec![ScanItem { seq: 7, meta }])),
            resp(Response::ScanItems(vec![])),
        ),
        (
            req(Request::Append(vec![c.clone()])),
            req(Request::Append(vec![])),
        ),
    ];
    for (msg, empty) in cases {
        for at in [1, 5, 20] {
            let bytes = resplit(&msg, &empty, at);
            assert_eq!(
                decode_all(&bytes, MIN_MAX_FRAME, 7),
                vec![msg.clone()],
                "{msg:?} at {at}"
            );
        }
    }
}

#[test]
fn an_append_outcome_too_long_for_one_frame_is_merged_back() {
    let new: Vec<ChangeId> = numbered_ids(1000);
    let msg = Message::Response {
        id: 2,
        body: Response::Appended(AppendOutcome { new, duplicates: 4 }),
    };
    assert!(encode_frames(&msg, MIN_MAX_FRAME).unwrap().len() > 1);
    assert_eq!(
        decode_all(&encode(&msg, MIN_MAX_FRAME).unwrap(), MIN_MAX_FRAME, 999),
        vec![msg]
    );
}

#[test]
fn a_long_bool_list_is_merged_back_across_frames() {
    let bools: Vec<bool> = (0..10_000).map(|i| i % 3 == 0).collect();
    let msg = Message::Response {
        id: 2,
        body: Response::Bools(bools),
    };
    assert!(encode_frames(&msg, MIN_MAX_FRAME).unwrap().len() > 1);
    assert_eq!(
        decode_all(&encode(&msg, MIN_MAX_FRAME).unwrap(), MIN_MAX_FRAME, 999),
        vec![msg]
    );
}

#[test]
fn the_decoder_shows_the_next_header_before_the_body_and_takes_a_new_message_bound() {
    let msg = Message::Request {
        id: 77,
        body: Request::Append(vec![change(1, 20_000)]),
    };
    let bytes = encode(&msg, MIN_MAX_FRAME).unwrap();
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME);
    assert_eq!(dec.max_frame(), MIN_MAX_FRAME);
    dec.push(&bytes[..LEN_PREFIX + HEADER_LEN - 1]);
    assert_eq!(dec.peek_header(), None, "not all ten bytes yet");
    dec.push(&bytes[LEN_PREFIX + HEADER_LEN - 1..LEN_PREFIX + HEADER_LEN]);
    let (len, ty, flags, id) = dec.peek_header().unwrap();
    let first = encode_frames(&msg, MIN_MAX_FRAME).unwrap().remove(0);
    assert_eq!(len as usize, body(&first));
    assert_eq!(ty, first[LEN_PREFIX]);
    assert_eq!(flags, FLAG_MORE | FLAG_SPLIT);
    assert_eq!(id, 77);
    // A server that learns the request is an append may lower the bound on
    // what it reassembles: this 20 KB append is then too large.
    dec.set_max_message(1000);
    dec.push(&bytes[LEN_PREFIX + HEADER_LEN..]);
    match dec.pop() {
        Err(Error::TooLarge { .. }) => {}
        other => panic!("the lowered bound applies: {other:?}"),
    }
    // With the default bound the same bytes decode.
    assert_eq!(decode_all(&bytes, MIN_MAX_FRAME, 4096), vec![msg]);
}

#[test]
fn the_decoder_is_idle_only_with_nothing_half_read() {
    let msg = Message::Request {
        id: 12,
        body: Request::Append(vec![change(3, 20_000)]),
    };
    let bytes = encode(&msg, MIN_MAX_FRAME).unwrap();
    let frames = encode_frames(&msg, MIN_MAX_FRAME).unwrap();
    assert!(frames.len() >= 5);
    // A budget half again the message is enough to reassemble it.
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME).with_max_message(bytes.len() as u64 * 3 / 2);
    assert!(dec.is_idle());
    dec.push(&bytes[..3]);
    assert!(!dec.is_idle(), "half a length prefix");
    assert_eq!(dec.pop().unwrap(), None);
    dec.push(&bytes[3..frames[0].len()]);
    assert_eq!(dec.pop().unwrap(), None);
    assert!(!dec.is_idle(), "a split item is being reassembled");
    dec.push(&bytes[frames[0].len()..]);
    assert_eq!(dec.pop().unwrap(), Some(msg));
    assert!(dec.is_idle());
}

#[test]
fn a_stream_fed_in_pieces_keeps_the_buffer_small() {
    // 20 MB of 2 KB messages, pushed in 100 KB pieces that cut frames
    // anywhere, every message popped as it completes: the decoder drops
    // what it has decoded instead of growing with the stream.
    let one = encode(
        &Message::Request {
            id: 1,
            body: Request::Append(vec![change(1, 2000)]),
        },
        MIN_MAX_FRAME,
    )
    .unwrap();
    let stream: Vec<u8> = one.iter().copied().cycle().take(one.len() * 9000).collect();
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME);
    let (mut popped, mut most) = (0, 0);
    for piece in stream.chunks(100_003) {
        dec.push(piece);
        most = most.max(dec.buffered());
        while let Some(_m) = dec.pop().unwrap() {
            popped += 1;
        }
    }
    assert_eq!(popped, 9000);
    // At least one piece is held at a time, and not much more.
    assert!(
        (100_003..400_000).contains(&most),
        "held up to {most} bytes"
    );
}

/// The budget a split message needs: its first frame's body and the whole
/// item it announces (what the decoder reserves).
fn reserve(msg: &Message) -> u64 {
    let frames = encode_frames(msg, MIN_MAX_FRAME).unwrap();
    let whole = encode_frames(msg, DEFAULT_MAX_FRAME).unwrap();
    (body(&frames[0]) + body(&whole[0]) - HEADER_LEN - 4) as u64
}

#[test]
fn a_split_message_fits_a_budget_of_exactly_its_reservation_again_and_again() {
    let msg = Message::Request {
        id: 5,
        body: Request::Append(vec![change(2, 20_000)]),
    };
    let need = reserve(&msg);
    let bytes = encode(&msg, MIN_MAX_FRAME).unwrap();
    // Exactly enough, three times in a row: each completed message gives
    // its reservation back.
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME).with_max_message(need);
    for _ in 0..3 {
        dec.push(&bytes);
        assert_eq!(dec.pop().unwrap(), Some(msg.clone()));
    }
    // One byte less: refused, naming what it needed.
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME).with_max_message(need - 1);
    dec.push(&bytes);
    match dec.pop() {
        Err(Error::TooLarge { limit, actual, .. }) => assert_eq!((limit, actual), (need - 1, need)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_long_list_fits_a_budget_of_exactly_its_frames_but_the_last() {
    let ids: Vec<ChangeId> = numbered_ids(1000);
    let msg = Message::Request {
        id: 6,
        body: Request::GetChanges(ids),
    };
    let frames = encode_frames(&msg, MIN_MAX_FRAME).unwrap();
    let need: u64 = frames[..frames.len() - 1]
        .iter()
        .map(|f| body(f) as u64)
        .sum();
    let bytes = encode(&msg, MIN_MAX_FRAME).unwrap();
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME).with_max_message(need);
    for _ in 0..3 {
        dec.push(&bytes);
        assert_eq!(dec.pop().unwrap(), Some(msg.clone()));
    }
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME).with_max_message(need - 1);
    dec.push(&bytes);
    match dec.pop() {
        Err(Error::TooLarge { limit, actual, .. }) => assert_eq!((limit, actual), (need - 1, need)),
        other => panic!("{other:?}"),
    }
}
