//! WebRTC chunk reassembly. A WebRTC connection sends each frame of a
//! message as one byte string, which the driver cuts into data-channel
//! messages of at most `cairn_webrtc::CHUNK` bytes; frames of several
//! messages may come between each other (`conn.rs`, `send_message`). The
//! receiver pushes every data-channel message into a `FrameDecoder` with
//! the store's limits (`WebRtcStoreOptions::default()`).
//!
//! This target builds up to four messages from the input (appends with
//! payloads large enough to split, and id lists), interleaves their frames
//! in an order the input picks, cuts every frame at chunk sizes the input
//! picks, and asserts that the decoder gives back exactly those messages,
//! each once, as its last frame completes. Then it pushes arbitrary bytes
//! (a hostile peer's) and asserts that nothing panics.
#![no_main]

use arbitrary::Arbitrary;
use cairn::{ChangeBuilder, ChangeId, ChangeKind, DocId};
use cairn_protocol::{FrameDecoder, FrameEncoder, MIN_MAX_FRAME, Message, Request};
use cairn_webrtc::{CHUNK, WebRtcStoreOptions};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Msg {
    /// An append of one change with a payload of `len` bytes (up to 64 KiB,
    /// so split across frames and its item across `CONT` frames).
    Append { len: u16, fill: u8 },
    /// A `get_changes` of these ids (many: a list split across frames).
    Get { ids: Vec<[u8; 32]>, repeat: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    messages: Vec<Msg>,
    /// Frames of at most `MIN_MAX_FRAME + frame_extra` bytes.
    frame_extra: u16,
    /// Chunk sizes, cycled (each `1 + size % CHUNK`).
    chunks: Vec<u16>,
    /// Which message sends its next frame next (index mod the ones left).
    order: Vec<u8>,
    /// A hostile peer's bytes, pushed after.
    garbage: Vec<Vec<u8>>,
}

fn build(i: usize, m: &Msg) -> Message {
    let id = i as u32 + 1;
    match m {
        Msg::Append { len, fill } => {
            let change = ChangeBuilder::new(ChangeKind::Change, DocId::new("d").expect("doc"))
                .payload(vec![*fill; usize::from(*len)])
                .build()
                .expect("change");
            Message::Request {
                id,
                body: Request::Append(vec![change]),
            }
        }
        Msg::Get { ids, repeat } => {
            let mut all: Vec<ChangeId> = Vec::new();
            for _ in 0..=(*repeat % 8) {
                all.extend(ids.iter().take(256).map(|b| ChangeId::from_bytes(*b)));
            }
            Message::Request {
                id,
                body: Request::GetChanges(all),
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let opts = WebRtcStoreOptions::default();
    let msgs: Vec<Message> = input
        .messages
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, m)| build(i, m))
        .collect();
    let limit = MIN_MAX_FRAME + u32::from(input.frame_extra);
    let mut frames: Vec<std::collections::VecDeque<Vec<u8>>> = msgs
        .iter()
        .map(|m| {
            FrameEncoder::new(m, limit)
                .collect::<Result<_, _>>()
                .expect("a message of bounded size encodes")
        })
        .collect();

    let mut dec = FrameDecoder::new(opts.max_frame).with_max_message(opts.max_message);
    let mut want: Vec<&Message> = Vec::new();
    let mut got: Vec<Message> = Vec::new();
    let mut order = input.order.iter().copied().cycle().chain(std::iter::repeat(0));
    let mut sizes = input.chunks.iter().copied().cycle();
    loop {
        let left: Vec<usize> = (0..frames.len()).filter(|&k| !frames[k].is_empty()).collect();
        if left.is_empty() {
            break;
        }
        let k = left[usize::from(order.next().unwrap_or(0)) % left.len()];
        let frame = frames[k].pop_front().expect("a frame left");
        if frames[k].is_empty() {
            want.push(&msgs[k]);
        }
        // The driver cuts one byte string into data-channel messages.
        let mut rest = &frame[..];
        while !rest.is_empty() {
            let size = sizes.next().map_or(CHUNK, |s| 1 + usize::from(s) % CHUNK);
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            dec.push(chunk);
            rest = tail;
            while let Some(m) = dec.pop().expect("well-formed frames decode") {
                got.push(m);
            }
        }
    }
    assert_eq!(got.iter().collect::<Vec<_>>(), want, "each message once, as it completes");

    for bytes in input.garbage.iter().take(16) {
        dec.push(bytes);
        loop {
            match dec.pop() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                // A protocol error closes the connection: stop, as conn.rs does.
                Err(_) => return,
            }
        }
    }
});
