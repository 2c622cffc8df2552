#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod auth;
mod conn;
mod ice;
mod room;
mod rtc;
mod server;
mod signal;
mod store;

pub use auth::{
    AUTH_CONTEXT, AUTH_LEN, AUTH_MAGIC, ROLE_CALLS, ROLE_ROOM, ROLE_SERVES, ROOM_KEY_MEMORY_KIB,
    ROOM_KEY_PASSES, ROOM_PROOF_CONTEXT, ROOM_PROOF_LEN, ROOM_PROOF_MAGIC, ROOM_SALT_CONTEXT,
    RoomKey,
};
pub use cairn_protocol::{
    AccessPolicy, Acl, ConnectionState, PeerId, Permission, Refusal, StoreEvent, StoreProvider,
    Stores,
};
pub use ice::TurnServer;
pub use rtc::{CHUNK, LABEL, RawChannel};
pub use server::{SignalingOptions, SignalingServer};
pub use signal::{
    JOIN_CONTEXT, ROOM_ALPHABET, RoomCode, SignalEvent, SignalMessage, Signaling, WireSignal,
    WsSignaling, join_transcript,
};
pub use store::{
    MANUAL_PREFIX, ManualOffer, WebRtcStore, WebRtcStoreOptions, decode_sdp, encode_sdp,
};
