#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod client;
mod codec;
mod dispatch;
mod error;
mod message;
mod wire;

pub use client::{Call, Correlator, Incoming, RemoteCalls};
pub use codec::{
    FLAG_MORE, FrameDecoder, HEADER_LEN, LEN_PREFIX, MAX_PARTIAL_MESSAGES, decode_body, encode,
    encode_frames, encode_into,
};
pub use dispatch::{check_hello, client_hello, dispatch, error_reply, reply, server_hello};
pub use error::{WireError, WireIntegrity, code, io_kind};
pub use message::{
    Access, DEFAULT_MAX_FRAME, DEFAULT_MAX_MESSAGE, Hello, MAGIC, MIN_MAX_FRAME, Message, Request,
    Response, VERSION, msg_type,
};
