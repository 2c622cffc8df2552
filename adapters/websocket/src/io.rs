//! Moving byte strings over a WebSocket: raw messages for the handshake,
//! then a pump between the socket and a [`Session`]'s channels.

use std::sync::Arc;
use std::time::Duration;

use cairn::{Error, Result};
use cairn_protocol::Session;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// A byte stream a WebSocket can run over (TCP, or TLS over TCP).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The tungstenite limits for a side that accepts frames of `max_frame`
/// bytes: one protocol frame per WebSocket message, so a message is at most
/// a frame plus a little.
pub(crate) fn ws_config(max_frame: u32) -> WebSocketConfig {
    let max = max_frame as usize + 1024;
    WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

pub(crate) fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> Error {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::ConnectionClosed | E::AlreadyClosed => Error::Closed,
        E::Io(e) => Error::backend("websocket", true, e),
        E::Capacity(c) => Error::Protocol {
            reason: format!("a WebSocket message over the limit: {c}"),
        },
        e @ (E::Protocol(_) | E::Utf8(_) | E::AttackAttempt) => Error::Protocol {
            reason: format!("WebSocket: {e}"),
        },
        e => Error::backend("websocket", true, e),
    }
}

fn timed_out(what: &str, after: Duration) -> Error {
    Error::Timeout {
        what: what.to_string(),
        after,
    }
}

/// The next binary message, before `deadline`. Pings and pongs are skipped
/// (tungstenite answers pings itself); text, a close or the end is an
/// error.
pub(crate) async fn recv_raw<S: Io>(
    ws: &mut WebSocketStream<S>,
    deadline: Instant,
    what: &str,
) -> Result<Vec<u8>> {
    // Bounded by the deadline.
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| timed_out(what, deadline.elapsed()))?;
        match next {
            Some(Ok(WsMessage::Binary(b))) => return Ok(b.into()),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
            Some(Ok(WsMessage::Text(_))) => {
                return Err(Error::Protocol {
                    reason: "a text WebSocket message (Cairn speaks binary only)".into(),
                });
            }
            Some(Ok(WsMessage::Close(_))) | None => return Err(Error::Closed),
            Some(Err(e)) => return Err(ws_err(e)),
        }
    }
}

/// Send one binary message, before `deadline`.
pub(crate) async fn send_raw<S: Io>(
    ws: &mut WebSocketStream<S>,
    bytes: Vec<u8>,
    deadline: Instant,
) -> Result<()> {
    tokio::time::timeout_at(deadline, ws.send(WsMessage::binary(bytes)))
        .await
        .map_err(|_| timed_out("sending to the peer", deadline.elapsed()))?
        .map_err(ws_err)
}

/// Close the socket politely, waiting at most `linger` for the peer.
pub(crate) async fn close_raw<S: Io>(ws: &mut WebSocketStream<S>, linger: Duration) {
    let _ = tokio::time::timeout(linger, ws.close(None)).await;
}

/// How the pump keeps a connection honest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PumpOptions {
    /// A ping goes out after this long without sending anything, so a
    /// quiet but healthy connection is not taken for a dead one.
    pub(crate) keepalive: Duration,
    /// The connection is closed when the peer sends nothing at all (not
    /// even a pong) for this long.
    pub(crate) idle: Duration,
    /// The connection is closed when one message takes longer than this
    /// to write (a peer that does not read).
    pub(crate) write: Duration,
}

/// Frames waiting to be written, per connection (each at most a frame).
const OUT_QUEUE: usize = 8;
/// Frames read and waiting for the session, per connection.
const IN_QUEUE: usize = 8;

/// The channels a [`Session`] runs over, pumped to and from `ws` by two
/// tasks until `stop` is cancelled, the peer closes, falls silent for
/// `opts.idle`, or stops reading for `opts.write`; then `stop` is
/// cancelled.
pub(crate) fn pump<S: Io>(
    ws: WebSocketStream<S>,
    opts: PumpOptions,
    stop: CancellationToken,
) -> (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(IN_QUEUE);
    let (mut sink, mut stream) = ws.split();
    let s = stop.clone();
    tokio::spawn(async move {
        // Bounded by `stop` and the write timeout of every send.
        loop {
            let msg = tokio::select! {
                _ = s.cancelled() => break,
                m = tokio::time::timeout(opts.keepalive, out_rx.recv()) => match m {
                    Ok(Some(bytes)) => WsMessage::binary(bytes),
                    Ok(None) => break,
                    Err(_) => WsMessage::Ping(Default::default()),
                },
            };
            match tokio::time::timeout(opts.write, sink.send(msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(error = %e, "WebSocket write failed");
                    break;
                }
                Err(_) => {
                    debug!("the peer did not read for {:?}; closing", opts.write);
                    break;
                }
            }
        }
        s.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    });
    let s = stop;
    tokio::spawn(async move {
        // Bounded by `stop` and the idle timeout of every read.
        loop {
            let next = tokio::select! {
                _ = s.cancelled() => break,
                n = tokio::time::timeout(opts.idle, stream.next()) => n,
            };
            let bytes = match next {
                Ok(Some(Ok(WsMessage::Binary(b)))) => b,
                Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_)))) => {
                    continue;
                }
                Ok(Some(Ok(WsMessage::Text(_)))) => {
                    debug!("a text WebSocket message; closing");
                    break;
                }
                Ok(Some(Ok(WsMessage::Close(_))) | None) => break,
                Ok(Some(Err(e))) => {
                    debug!(error = %e, "WebSocket read failed");
                    break;
                }
                Err(_) => {
                    debug!("the peer sent nothing for {:?}; closing", opts.idle);
                    break;
                }
            };
            // Backpressure: the socket is not read while the session is
            // busy with what came before.
            let sent = tokio::select! {
                _ = s.cancelled() => break,
                r = in_tx.send(bytes.into()) => r,
            };
            if sent.is_err() {
                break;
            }
        }
        s.cancel();
    });
    (out_tx, in_rx)
}

/// Tie a session to its pump: closing either ends the other.
pub(crate) fn bind(session: &Arc<Session>, stop: CancellationToken) {
    let session = session.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = session.closed() => stop.cancel(),
            _ = stop.cancelled() => session.close(),
        }
    });
}
