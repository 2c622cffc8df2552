//! [`QuicClient`]: a plain remote handle (no cache, no reconnection).

use std::net::SocketAddr;

use async_trait::async_trait;
use cairn::{ChangeStream, Keypair, Result, StoreId};
use cairn_protocol::{Call, Request, Response};

use crate::identity::{PeerId, client_config};
use crate::link::Link;

/// One connection to one store on a server: every store method as a
/// remote call through [`cairn_protocol::RemoteCalls`] (in scope with
/// `use cairn_protocol::RemoteCalls`). For a cached, reconnecting store use
/// [`QuicStore`](crate::QuicStore).
#[derive(Debug)]
pub struct QuicClient {
    endpoint: quinn::Endpoint,
    link: Link,
}

impl QuicClient {
    /// Connect to `server` (pinning `server_id`) as `keypair` and greet it
    /// for `store_id`.
    pub async fn connect(
        server: SocketAddr,
        server_id: PeerId,
        keypair: &Keypair,
        store_id: &StoreId,
        max_frame: u32,
    ) -> Result<Self> {
        let endpoint = quinn::Endpoint::client(SocketAddr::new(
            if server.ip().is_loopback() {
                server.ip()
            } else if server.is_ipv4() {
                [0, 0, 0, 0].into()
            } else {
                [0u16; 8].into()
            },
            0,
        ))?;
        let cfg = client_config(keypair, server_id)?;
        let link = Link::open(&endpoint, server, cfg, store_id, max_frame).await?;
        Ok(QuicClient { endpoint, link })
    }

    /// The server's hello.
    pub fn hello(&self) -> &cairn_protocol::Hello {
        &self.link.hello
    }

    /// A live stream of the metadata of changes appended to the store from
    /// now on, on a QUIC stream of its own; it yields an error and ends
    /// when the connection is lost.
    pub async fn subscribe(&self) -> Result<ChangeStream> {
        let sub = self.link.subscribe().await?;
        Ok(cairn_protocol::notification_stream(sub))
    }

    /// Close the connection.
    pub async fn close(self) {
        self.link.conn.close(quinn::VarInt::from_u32(0), b"bye");
        self.endpoint.wait_idle().await;
    }
}

#[async_trait]
impl Call for QuicClient {
    async fn call(&self, request: Request) -> Result<Response> {
        self.link.call(request).await
    }
}
