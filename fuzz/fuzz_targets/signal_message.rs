//! Feed arbitrary bytes to the JSON decoding of the signaling wire types
//! (`WireSignal`, what a client and the signaling server exchange, and
//! `SignalMessage`, the offer or answer inside) and arbitrary text to the
//! room-code parser. Nothing may panic; whatever decodes must encode and
//! decode back to itself, and a parsed room code's display must parse back
//! to the same code.
#![no_main]

use cairn_webrtc::{RoomCode, SignalMessage, WireSignal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = serde_json::from_slice::<WireSignal>(data) {
        let json = serde_json::to_vec(&msg).expect("a decoded message encodes");
        let back: WireSignal = serde_json::from_slice(&json).expect("its encoding decodes");
        assert_eq!(back, msg);
    }
    if let Ok(msg) = serde_json::from_slice::<SignalMessage>(data) {
        let json = serde_json::to_vec(&msg).expect("a decoded message encodes");
        let back: SignalMessage = serde_json::from_slice(&json).expect("its encoding decodes");
        assert_eq!(back, msg);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(room) = text.parse::<RoomCode>()
    {
        let shown = room.to_string();
        assert_eq!(shown.parse::<RoomCode>().ok(), Some(room.clone()));
        assert_eq!(room.as_str().len(), 6);
    }
});
