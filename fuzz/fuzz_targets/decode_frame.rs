//! Feed arbitrary bytes to the frame decoder (in arbitrary pieces) and to
//! the body decoder; neither may panic, and whatever decodes must encode
//! back to frames that decode to the same message.
#![no_main]

use cairn_protocol::{FrameDecoder, MIN_MAX_FRAME, decode_body, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_body(data);
    let split = data.first().map_or(1, |b| usize::from(*b).max(1));
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME).with_max_message(1 << 20);
    for piece in data.chunks(split) {
        dec.push(piece);
        loop {
            match dec.pop() {
                Ok(Some(msg)) => {
                    if let Ok(bytes) = encode(&msg, MIN_MAX_FRAME) {
                        let mut again = FrameDecoder::new(MIN_MAX_FRAME);
                        again.push(&bytes);
                        assert_eq!(again.pop().ok().flatten().as_ref(), Some(&msg));
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    if dec.pop().is_err() {
                        break;
                    }
                }
            }
        }
    }
});
