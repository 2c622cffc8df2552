//! The server side: answer a request from any store, identically for every
//! transport.

use std::fmt;
use std::sync::Arc;

use cairn::{AcceptAll, AppendOnlyStore, Capabilities, Error, Head, Result, Verifier};
use tracing::{debug, warn};

use crate::codec::encode;
use crate::error::WireError;
use crate::message::{Hello, Message, Request, Response, VERSION};

fn clamp(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// What a serving side applies to every request it answers, whatever the
/// transport.
#[derive(Clone)]
pub struct ServeOptions {
    /// The policy every appended change must pass (default [`AcceptAll`]:
    /// every change that passes its integrity check). A refused change
    /// fails the whole append with [`Error::Rejected`] and nothing of the
    /// batch is stored.
    pub verifier: Arc<dyn Verifier>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            verifier: Arc::new(AcceptAll),
        }
    }
}

impl fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeOptions")
            .field("verifier", &self.verifier)
            .finish()
    }
}

/// Answer one request from `store`, under `opts`.
///
/// Every store method maps to one request; a store error becomes an
/// [`Response::Error`] with its code. An append is checked against
/// `opts.verifier` first. `Subscribe` and `Unsubscribe` keep
/// per-connection state, so the transport handles them (it calls
/// [`AppendOnlyStore::subscribe`] and sends [`Message::Notify`]); here they
/// answer a protocol error.
pub async fn dispatch(
    store: &dyn AppendOnlyStore,
    request: Request,
    opts: &ServeOptions,
) -> Response {
    let name = request.name();
    match run(store, request, opts).await {
        Ok(r) => r,
        Err(e) => {
            debug!(request = name, error = %e, "request failed");
            Response::Error(WireError::from(&e))
        }
    }
}

async fn run(
    store: &dyn AppendOnlyStore,
    request: Request,
    opts: &ServeOptions,
) -> Result<Response> {
    Ok(match request {
        Request::Append(changes) => {
            for c in &changes {
                if let Err(reason) = opts.verifier.verify(&c.meta) {
                    // Report what any store would first (limits, integrity).
                    cairn::prepare_batch(changes.clone(), &cairn::Limits::DEFAULT)?;
                    warn!(id = %c.id(), %reason, "appended change refused by the serving policy");
                    return Err(Error::Rejected { id: c.id(), reason });
                }
            }
            Response::Appended(store.append(changes).await?)
        }
        Request::GetChanges(ids) => Response::Changes(store.get_changes(&ids).await?),
        Request::GetMetas(ids) => Response::Metas(store.get_metas(&ids).await?),
        Request::HasChanges(ids) => Response::Bools(store.has_changes(&ids).await?),
        Request::Scan { after, limit } => {
            Response::ScanItems(store.scan(after, clamp(limit)).await?)
        }
        Request::Head => Response::Head(store.head().await?),
        Request::FindNewChanges(have) => Response::Metas(store.find_new_changes(&have).await?),
        Request::FindNewChangesForDoc { doc, have } => {
            Response::Metas(store.find_new_changes_for_doc(&have, &doc).await?)
        }
        Request::AllChangeIds => Response::Ids(store.all_change_ids().await?),
        Request::ChangesForDoc {
            doc,
            from_last_snapshot,
        } => Response::Metas(store.changes_for_doc(&doc, from_last_snapshot).await?),
        Request::RangeSummary(range) => Response::Summary(store.range_summary(&range).await?),
        Request::IdsInRange { range, limit } => {
            Response::Ids(store.ids_in_range(&range, clamp(limit)).await?)
        }
        Request::Subscribe | Request::Unsubscribe { .. } => {
            return Err(Error::Protocol {
                reason: "subscriptions are handled by the transport, not dispatch".into(),
            });
        }
    })
}

/// Encode the response to request `id` as frames of at most `max_frame`
/// bytes. Never fails: a response that cannot be framed (one change larger
/// than the frame limit) is replaced by the `TooLarge` error response.
pub fn reply(id: u32, response: Response, max_frame: u32) -> Vec<u8> {
    match encode(&Message::Response { id, body: response }, max_frame) {
        Ok(bytes) => bytes,
        Err(e) => {
            debug!(id, error = %e, "response cannot be framed; sending the error instead");
            error_reply(id, &e, max_frame)
        }
    }
}

/// Encode an error response to request `id` (0: the connection).
pub fn error_reply(id: u32, error: &Error, max_frame: u32) -> Vec<u8> {
    let msg = Message::Response {
        id,
        body: Response::Error(WireError::from(error)),
    };
    // Error responses are bounded (text is cut to 1 KiB) and always fit
    // the smallest frame limit.
    encode(&msg, max_frame.max(crate::MIN_MAX_FRAME)).unwrap_or_default()
}

/// The hello a server sends for `store`.
pub async fn server_hello(store: &dyn AppendOnlyStore, max_frame: u32) -> Result<Hello> {
    Ok(Hello {
        version: VERSION,
        store_id: store.store_id().clone(),
        capabilities: store.capabilities(),
        head: store.head().await?,
        max_frame,
    })
}

/// Check a hello received from the peer: the store id must be `expected`
/// (if given). Returns the peer's hello.
pub fn check_hello(msg: Message, expected: Option<&cairn::StoreId>) -> Result<Hello> {
    match msg {
        Message::Hello(h) => {
            if let Some(exp) = expected
                && &h.store_id != exp
            {
                return Err(Error::StoreMismatch {
                    expected: exp.clone(),
                    found: h.store_id,
                });
            }
            Ok(h)
        }
        Message::Response {
            body: Response::Error(e),
            ..
        } => Err(e.into_error()),
        other => Err(Error::Protocol {
            reason: format!(
                "expected a hello, got message type {:#04x}",
                other.type_byte()
            ),
        }),
    }
}

/// A client hello for a store this side does not hold locally.
pub fn client_hello(store_id: cairn::StoreId, max_frame: u32) -> Hello {
    Hello {
        version: VERSION,
        store_id,
        capabilities: Capabilities::default(),
        head: Head::default(),
        max_frame,
    }
}
