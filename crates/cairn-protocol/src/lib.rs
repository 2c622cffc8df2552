#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod admission;
mod cache;
mod client;
mod codec;
mod dialer;
mod dispatch;
mod error;
mod message;
mod outbox;
mod peer;
mod remote;
mod session;
mod upstream;
mod wire;

pub use admission::{Admission, AdmissionOptions, Rate, ResponseLimits};
pub use cache::{Arrival, Backoff, CacheFirst, CatchUp, Node, StoreEvent, Transport, check_local};
pub use client::{Call, Correlator, Incoming, RemoteCalls};
pub use codec::{
    FLAG_CONT, FLAG_MORE, FLAG_SPLIT, FrameDecoder, FrameEncoder, HEADER_LEN, LEN_PREFIX,
    MAX_PARTIAL_MESSAGES, decode_body, encode, encode_frames, encode_into,
};
pub use dialer::{Dialer, classify};
pub use dispatch::{
    ServeOptions, check_hello, client_hello, dispatch, error_reply, reply, server_hello,
};
pub use error::{WireError, WireIntegrity, code, io_kind};
pub use message::{
    Access, DEFAULT_MAX_FRAME, DEFAULT_MAX_MESSAGE, Hello, MAGIC, MIN_MAX_FRAME, Message, Request,
    Response, VERSION, msg_type, request_access,
};
pub use outbox::{DeliveryFailure, DeliveryOptions, Outbox, deliver};
pub use peer::{
    AccessPolicy, Acl, ConnectionState, PeerId, Permission, Refusal, StoreProvider, Stores, admit,
};
pub use remote::{RemoteStore, framed_size};
pub use session::{
    Delivered, MAX_CONCURRENT, MAX_SERVED_SUBSCRIPTIONS, SEND_FRAME, Session, SessionConfig,
    SessionPeer, SubItem,
};
pub use upstream::{Dial, Notifications, UpLink, Upstream, UpstreamOptions, notification_stream};

#[doc(hidden)]
pub mod __private {
    //! Paths for [`forward_store!`](crate::forward_store); not public API.
    pub use async_trait::async_trait;
    pub use cairn;
}
