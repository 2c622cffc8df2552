#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod client;
mod identity;
mod link;
mod server;
mod store;

pub use cairn_protocol::{
    AccessPolicy, Acl, ConnectionState, PeerId, Permission, Refusal, StoreEvent, StoreProvider,
    Stores,
};
pub use client::QuicClient;
pub use identity::{ALPN, certificate, key_of_certificate, peer_id};
pub use link::is_wrong_server_key;
pub use server::{QuicServer, ServerOptions};
pub use store::{QuicStore, QuicStoreOptions};

/// quinn configurations with Cairn's pinned-key TLS, for custom endpoints
/// (benchmarks, tools).
pub mod config {
    pub use crate::identity::{client_config, server_config};
}
