//! Writes the small seed corpora under `fuzz/corpus/<target>/seed-*`:
//! valid inputs made by the real encoders, so the fuzzers start from
//! inputs that get past the first checks. Run once, from the repository
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
}
