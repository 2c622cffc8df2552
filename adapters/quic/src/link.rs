//! Moving protocol messages over quinn streams: one bidirectional stream per
//! request; a long-lived one per subscription.

use std::time::Duration;

use cairn::{Error, Result, StoreId};
use cairn_protocol::{
    FrameDecoder, FrameEncoder, Hello, MIN_MAX_FRAME, Message, Request, Response, check_hello,
    client_hello, encode, error_reply,
};

/// The words an [`Error::Unauthorized`] starts with when the server's key
/// is not the one pinned.
/// How long a request waits for its answer unless set otherwise.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) const PIN_MISMATCH: &str = "the server's key is not the pinned peer id";

/// Whether `e` says the server's key is not the pinned peer id (the server
/// is someone else, or the URL names the wrong peer).
pub fn is_wrong_server_key(e: &Error) -> bool {
    matches!(e, Error::Unauthorized { reason } if reason.starts_with(PIN_MISMATCH))
}

/// The application close code of a connection the server refused; the
/// close reason is the refusal as an `ERROR` frame (id 0).
pub(crate) const REFUSED: u32 = 0x10;

/// The typed error a refusal's close reason carries, if it does.
fn refusal_in(close: &quinn::ApplicationClose) -> Option<Error> {
    if close.error_code != quinn::VarInt::from_u32(REFUSED) {
        return None;
    }
    let mut dec = FrameDecoder::new(MIN_MAX_FRAME);
    dec.push(&close.reason);
    match dec.pop() {
        Ok(Some(Message::Response {
            body: Response::Error(e),
            ..
        })) => Some(e.into_error()),
        _ => None,
    }
}

/// Map a quinn connection error. TLS and application refusals are permanent
/// (a server key that is not the pinned one is [`Error::Unauthorized`], a
/// refusal carried in the close reason is its own typed error); losing the
/// path is retryable.
pub(crate) fn conn_err(e: quinn::ConnectionError) -> Error {
    use quinn::ConnectionError as C;
    match &e {
        C::LocallyClosed => Error::Closed,
        C::ApplicationClosed(close) if refusal_in(close).is_some() => {
            refusal_in(close).unwrap_or(Error::Closed)
        }
        C::TransportError(t) if t.to_string().contains("does not match the pinned peer id") => {
            Error::Unauthorized {
                reason: format!("{PIN_MISMATCH} ({t})"),
            }
        }
        C::TransportError(_) | C::VersionMismatch => Error::backend("quic", false, e),
        _ => Error::backend("quic", true, e),
    }
}

pub(crate) fn io<E: std::error::Error + Send + Sync + 'static>(e: E) -> Error {
    Error::backend("quic", true, e)
}

/// Read the next whole message from `recv` through `dec`.
pub(crate) async fn read_message(
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder,
) -> Result<Message> {
    loop {
        if let Some(m) = dec.pop()? {
            return Ok(m);
        }
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => dec.push(&chunk.bytes),
            Ok(None) => {
                return Err(Error::Protocol {
                    reason: "stream ended before a whole message arrived".into(),
                });
            }
            Err(quinn::ReadError::ConnectionLost(e)) => return Err(conn_err(e)),
            Err(e) => return Err(io(e)),
        }
    }
}

pub(crate) async fn write(send: &mut quinn::SendStream, bytes: &[u8]) -> Result<()> {
    match send.write_all(bytes).await {
        Ok(()) => Ok(()),
        Err(quinn::WriteError::ConnectionLost(e)) => Err(conn_err(e)),
        Err(e) => Err(io(e)),
    }
}

/// Write one encoded frame, handing its buffer to quinn as it is (no copy
/// into the stream's send buffer).
pub(crate) async fn write_frame(send: &mut quinn::SendStream, frame: Vec<u8>) -> Result<()> {
    match send.write_chunk(bytes::Bytes::from(frame)).await {
        Ok(()) => Ok(()),
        Err(quinn::WriteError::ConnectionLost(e)) => Err(conn_err(e)),
        Err(e) => Err(io(e)),
    }
}

/// Write `msg` as frames of at most `limit` bytes, one frame at a time: the
/// sender holds the message and one frame, never the whole encoding.
pub(crate) async fn write_message(
    send: &mut quinn::SendStream,
    msg: &Message,
    limit: u32,
) -> Result<()> {
    for frame in FrameEncoder::new(msg, limit) {
        write_frame(send, frame?).await?;
    }
    Ok(())
}

/// Write the response to request `id`, streamed frame by frame; a response
/// that cannot be framed at all becomes its error response.
pub(crate) async fn write_response(
    send: &mut quinn::SendStream,
    id: u32,
    body: Response,
    limit: u32,
) -> Result<()> {
    let msg = Message::Response { id, body };
    let mut frames = FrameEncoder::new(&msg, limit);
    match frames.next() {
        Some(Ok(first)) => write_frame(send, first).await?,
        Some(Err(e)) => return write(send, &error_reply(id, &e, limit)).await,
        None => return Ok(()),
    }
    for frame in frames {
        write_frame(send, frame?).await?;
    }
    Ok(())
}

/// An established, greeted connection to a server for one store.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) conn: quinn::Connection,
    pub(crate) hello: Hello,
    /// Our own frame limit (what we accept).
    pub(crate) max_frame: u32,
    /// How long a request waits for its answer (plus a second per MiB of
    /// payload it carries).
    pub(crate) request_timeout: Duration,
}

impl Link {
    /// Connect, exchange hellos.
    pub(crate) async fn open(
        endpoint: &quinn::Endpoint,
        addr: std::net::SocketAddr,
        config: quinn::ClientConfig,
        store_id: &StoreId,
        max_frame: u32,
    ) -> Result<Link> {
        let connecting = endpoint
            .connect_with(config, addr, crate::identity::SERVER_NAME)
            .map_err(|e| Error::backend("quic", false, e))?;
        let conn = connecting.await.map_err(conn_err)?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(conn_err)?;
        let hello = Message::Hello(client_hello(store_id.clone(), max_frame));
        write(&mut send, &encode(&hello, MIN_MAX_FRAME)?).await?;
        let _ = send.finish();
        let mut dec = FrameDecoder::new(max_frame);
        let answer = read_message(&mut recv, &mut dec).await;
        match answer.and_then(|m| check_hello(m, Some(store_id))) {
            Ok(hello) => Ok(Link {
                conn,
                hello,
                max_frame,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
            }),
            Err(e) => {
                conn.close(quinn::VarInt::from_u32(1), b"refused");
                Err(e)
            }
        }
    }

    /// The frame limit to send with: the server's.
    pub(crate) fn send_limit(&self) -> u32 {
        self.hello.max_frame.max(MIN_MAX_FRAME)
    }

    /// Send `request` on a stream of its own and read its response (an
    /// error response, or one of the wrong type, is an `Err`); the stream
    /// and its decoder stay open for what follows.
    async fn start(&self, request: Request) -> Result<(quinn::RecvStream, FrameDecoder, Response)> {
        let want = request.expected_response();
        let msg = Message::Request {
            id: 1,
            body: request,
        };
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(conn_err)?;
        write_message(&mut send, &msg, self.send_limit()).await?;
        drop(msg);
        let _ = send.finish();
        let mut dec = FrameDecoder::new(self.max_frame);
        match read_message(&mut recv, &mut dec).await? {
            Message::Response { body, .. } => Ok((recv, dec, body.expecting(want)?)),
            other => Err(Error::Protocol {
                reason: format!("expected a response, got type {:#04x}", other.type_byte()),
            }),
        }
    }

    /// Send one request on its own stream; wait for the whole response, at
    /// most the request timeout (a second more per MiB an append carries,
    /// so a big append is not taken for a silent server). On a timeout the
    /// stream is reset and the error is [`Error::Timeout`] (retryable).
    pub(crate) async fn call(&self, request: Request) -> Result<Response> {
        let name = request.name();
        let extra = match &request {
            Request::Append(cs) => {
                let bytes: u64 = cs.iter().map(|c| c.payload.len() as u64).sum();
                Duration::from_secs(bytes >> 20)
            }
            _ => Duration::ZERO,
        };
        let limit = self.request_timeout + extra;
        match tokio::time::timeout(limit, self.start(request)).await {
            Ok(r) => Ok(r?.2),
            Err(_) => Err(Error::Timeout {
                what: format!("{name} request to {}", self.conn.remote_address()),
                after: limit,
            }),
        }
    }

    /// Open a subscription stream; returns once the server confirmed it.
    pub(crate) async fn subscribe(&self) -> Result<Subscription> {
        let limit = self.request_timeout;
        let (recv, dec, _done) = tokio::time::timeout(limit, self.start(Request::Subscribe))
            .await
            .map_err(|_| Error::Timeout {
                what: format!("SUBSCRIBE request to {}", self.conn.remote_address()),
                after: limit,
            })??;
        Ok(Subscription { recv, dec })
    }
}

#[async_trait::async_trait]
impl cairn_protocol::Call for Link {
    async fn call(&self, request: Request) -> Result<Response> {
        Link::call(self, request).await
    }
}

#[async_trait::async_trait]
impl cairn_protocol::UpLink for Link {
    fn hello(&self) -> &Hello {
        &self.hello
    }
    fn send_limit(&self) -> u32 {
        Link::send_limit(self)
    }
    fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }
    fn close(&self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"bye");
    }
    async fn subscribe(&self) -> Result<Box<dyn cairn_protocol::Notifications>> {
        Ok(Box::new(Link::subscribe(self).await?))
    }
}

#[async_trait::async_trait]
impl cairn_protocol::Notifications for Subscription {
    async fn next(&mut self) -> Result<Vec<cairn::ChangeMeta>> {
        Subscription::next(self).await
    }
}

/// The receiving end of a subscription.
pub(crate) struct Subscription {
    recv: quinn::RecvStream,
    dec: FrameDecoder,
}

impl Subscription {
    /// The next batch of notified metadata.
    pub(crate) async fn next(&mut self) -> Result<Vec<cairn::ChangeMeta>> {
        match read_message(&mut self.recv, &mut self.dec).await? {
            Message::Notify { metas, .. } => Ok(metas),
            Message::Response {
                body: Response::Error(e),
                ..
            } => Err(e.into_error()),
            other => Err(Error::Protocol {
                reason: format!("expected NOTIFY, got type {:#04x}", other.type_byte()),
            }),
        }
    }
}
