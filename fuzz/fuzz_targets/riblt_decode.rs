//! Feed arbitrary coded symbols, in arbitrary batches, to the RIBLT
//! decoder: it may refuse them (a protocol error) but never panic, and
//! never peel more ids than its bound allows.
#![no_main]

use cairn::riblt::{CodedSymbol, Decoder, SYMBOL_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&batch, rest)) = data.split_first() else {
        return;
    };
    let batch = usize::from(batch).max(1);
    let symbols: Vec<CodedSymbol> = rest
        .chunks_exact(SYMBOL_BYTES)
        .map(|c| {
            let mut b = [0u8; SYMBOL_BYTES];
            b.copy_from_slice(c);
            CodedSymbol::from_bytes(&b)
        })
        .collect();
    let mut decoder = Decoder::default();
    for piece in symbols.chunks(batch) {
        // The local side is empty, so the difference is the remote's set.
        let local = vec![CodedSymbol::default(); piece.len()];
        if decoder.extend(piece, &local).is_err() {
            return;
        }
        assert!(decoder.ids().count() <= 2 * decoder.len() + 16);
        if decoder.is_complete() {
            return;
        }
    }
});
