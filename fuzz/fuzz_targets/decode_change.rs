//! Feed arbitrary bytes to `cairn::encoding::decode_meta`, the change
//! metadata record decoder (header ‖ signature section). It may not panic;
//! a record that decodes must be canonical — encoding it again gives back
//! the very same bytes — its id must be the blake3 of those bytes (what
//! `compute_id` recomputes), and decoding the re-encoding gives the same
//! metadata.
#![no_main]

use cairn::encoding::{compute_id, decode_meta, encode_header, encode_meta};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(meta) = decode_meta(data) else {
        return;
    };
    let again = encode_meta(&meta);
    assert_eq!(again, data, "decode_meta accepted a non-canonical record");
    assert_eq!(meta.id, compute_id(&meta));
    assert_eq!(meta.id.as_bytes(), blake3::hash(data).as_bytes());
    assert!(again.starts_with(&encode_header(&meta)));
    let back = decode_meta(&again).expect("a re-encoded record decodes");
    assert_eq!(back, meta);
});
