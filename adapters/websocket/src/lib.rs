#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod auth;
mod io;
mod server;
mod store;
#[cfg(test)]
mod tests;

pub use auth::{
    CHALLENGE_LEN, CHALLENGE_MAGIC, CLIENT_AUTH_LEN, CLIENT_AUTH_MAGIC, CLIENT_CONTEXT,
    SERVER_AUTH_LEN, SERVER_AUTH_MAGIC, SERVER_CONTEXT, is_wrong_server_key,
};
pub use cairn_protocol::{
    AccessPolicy, Acl, ConnectionState, PeerId, Permission, StoreEvent, StoreProvider, Stores,
};
pub use server::{WsServer, WsServerOptions};
pub use store::{WebSocketStore, WebSocketStoreOptions, WsClient};
