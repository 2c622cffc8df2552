//! Writes the small seed corpora under `fuzz/corpus/<target>/seed-*`:
//! valid inputs made by the real encoders, so the fuzzers start from
//! inputs that get past the first checks. (`store_model` and
//! `webrtc_chunks` take structured input through `arbitrary`, which has no
//! encoder; their committed seeds are a minimised corpus from a run, see
//! README.md.) Run once, from the repository
//! root or anywhere (`cargo run --manifest-path fuzz/Cargo.toml --example
//! seeds`); the files are committed, libFuzzer's own finds are not.

use std::path::{Path, PathBuf};

use cairn::encoding::encode_meta;
use cairn::{ChangeBuilder, ChangeId, ChangeKind, DocId, Head, IdRange, Keypair};
use cairn_protocol::{MIN_MAX_FRAME, Message, Request, Response, encode};

fn dir(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&d).expect("create the corpus directory");
    d
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
}

fn main() {
    let keys = Keypair::from_seed([7; 32]);
    let doc = DocId::new("notes/today").expect("doc id");
    let create = ChangeBuilder::new(ChangeKind::Create, doc.clone())
        .created_at(1_700_000_000_000)
        .payload(b"hello".to_vec())
        .build()
        .expect("build create");
    let signed = ChangeBuilder::new(ChangeKind::Change, doc.clone())
        .deps([create.id()])
        .created_at(1_700_000_000_001)
        .payload(vec![0xAB; 300])
        .sign(&keys)
        .expect("sign change");
    let snapshot = ChangeBuilder::new(ChangeKind::Snapshot, doc.clone())
        .deps([create.id(), signed.id()])
        .created_at(1_700_000_000_002)
        .payload(b"snap".to_vec())
        .sign(&keys)
        .expect("sign snapshot");

    let d = dir("decode_change");
    for (name, c) in [
        ("unsigned", &create),
        ("signed", &signed),
        ("two-deps", &snapshot),
    ] {
        write(&d, name, &encode_meta(&c.meta));
    }

    let d = dir("decode_frame");
    let msgs = [
        (
            "head",
            Message::Request {
                id: 1,
                body: Request::Head,
            },
        ),
        (
            "append",
            Message::Request {
                id: 2,
                body: Request::Append(vec![create.clone(), signed.clone()]),
            },
        ),
        (
            "ids-in-range",
            Message::Request {
                id: 3,
                body: Request::IdsInRange {
                    range: IdRange {
                        start: ChangeId::MIN,
                        end: Some(signed.id()),
                    },
                    limit: 100,
                },
            },
        ),
        (
            "metas",
            Message::Response {
                id: 4,
                body: Response::Metas(vec![create.meta.clone(), snapshot.meta.clone()]),
            },
        ),
        (
            "head-is",
            Message::Response {
                id: 5,
                body: Response::Head(Head { epoch: 1, seq: 42 }),
            },
        ),
        (
            "notify",
            Message::Notify {
                subscription: 6,
                metas: vec![signed.meta.clone()],
            },
        ),
        (
            // Bigger than one minimum-size frame: several frames, with an
            // item split across them.
            "split",
            Message::Request {
                id: 7,
                body: Request::Append(vec![
                    ChangeBuilder::new(ChangeKind::Change, doc)
                        .payload(vec![0x5A; 6000])
                        .build()
                        .expect("build big change"),
                ]),
            },
        ),
    ];
    for (name, msg) in &msgs {
        write(&d, name, &encode(msg, MIN_MAX_FRAME).expect("encode"));
    }

    let d = dir("signal_message");
    let hex64 = "ab".repeat(32);
    let jsons = [
        (
            "challenge",
            format!(r#"{{"type":"challenge","nonce":"{hex64}"}}"#),
        ),
        (
            "join",
            format!(
                r#"{{"type":"join","room":"ABC-DEF","peer":"{hex64}","signature":"{}"}}"#,
                "cd".repeat(64)
            ),
        ),
        (
            "welcome",
            format!(r#"{{"type":"welcome","peers":["{hex64}"]}}"#),
        ),
        (
            "signal",
            format!(
                r#"{{"type":"signal","to":"{hex64}","data":{{"kind":"offer","sdp":"v=0\r\n"}}}}"#
            ),
        ),
        (
            "error",
            r#"{"type":"error","code":"room_full","message":"the room is full"}"#.to_owned(),
        ),
        ("answer", r#"{"kind":"answer","sdp":"v=0\r\n"}"#.to_owned()),
        ("room", "abc-def".to_owned()),
    ];
    for (name, json) in &jsons {
        write(&d, name, json.as_bytes());
    }

    // store_url: one of each form the CLI takes (text).
    let d = dir("store_url");
    let urls = [
        ("memory", "memory:".to_owned()),
        ("redb", "redb:./data.redb".to_owned()),
        (
            "quic",
            format!("quic://127.0.0.1:4433/acme/contacts?peer={hex64}"),
        ),
        (
            "room",
            "webrtc://localhost:8765/ABC-DEF/acme/db?password=pw&peers=2&bind=127.0.0.1"
                .to_owned(),
        ),
        ("offer", "webrtc:offer?bind=::1".to_owned()),
        ("answer", "webrtc:answer".to_owned()),
        (
            "postgres",
            "postgres://cairn:secret@127.0.0.1:5432/cairn?sslmode=disable".to_owned(),
        ),
    ];
    for (name, url) in &urls {
        write(&d, name, url.as_bytes());
    }

    // store_model: op sequences in its byte form (see `parse` there):
    // opcode % 9, then its arguments; a list is a length byte and the
    // pool indexes. 0 append, 1 append with a failure after N I/O calls,
    // 2 append damaged, 3 get, 4 has, 5 scan, 6 find-new, 7 (fail-after
    // | reopen | range), 8 range.
    let d = dir("store_model");
    let seqs: [(&str, Vec<u8>); 5] = [
        (
            "appends-reads",
            vec![
                0, 3, 0, 1, 2, 0, 4, 5, 3, 9, 1, 3, 3, 0, 5, 9, 4, 2, 2, 7, 5, 0, 20, 6, 1, 4, 8,
                0, 10,
            ],
        ),
        (
            "failed-commit-reopen",
            vec![0, 3, 0, 1, 2, 1, 3, 4, 5, 6, 2, 3, 3, 4, 5, 7, 1, 5, 0, 20],
        ),
        (
            "fail-later-reopen",
            vec![0, 2, 0, 1, 7, 0, 30, 0, 3, 7, 8, 9, 0, 2, 10, 11, 7, 1, 3, 2, 7, 10],
        ),
        ("damaged", vec![0, 2, 0, 1, 2, 3, 2, 3, 4, 1, 5, 0, 20]),
        (
            "ranges",
            vec![
                0, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 7, 2, 0, 128, 5, 8, 128,
                20, 7, 2, 64, 192, 3,
            ],
        ),
    ];
    for (name, bytes) in &seqs {
        write(&d, name, bytes);
    }
}
