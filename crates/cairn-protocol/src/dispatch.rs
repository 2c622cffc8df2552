//! The server side: answer a request from any store, identically for every
//! transport.

use std::fmt;
use std::sync::Arc;

use cairn::{
    AcceptAll, AppendOnlyStore, Capabilities, ChangeId, Error, Head, IdRange, Result, Verifier,
};
use tracing::{debug, warn};

use crate::admission::{Admission, ResponseLimits};
use crate::peer::PeerId;

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
    /// Caps on every response.
    pub limits: ResponseLimits,
    /// Append rate limits and quotas, shared by every connection of a
    /// server (default: none).
    pub admission: Arc<Admission>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            verifier: Arc::new(AcceptAll),
            limits: ResponseLimits::default(),
            admission: Arc::new(Admission::default()),
        }
    }
}

impl fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeOptions")
            .field("verifier", &self.verifier)
            .field("limits", &self.limits)
            .field("admission", self.admission.options())
            .finish()
    }
}

/// Answer one request from `peer` with `store`, under `opts`.
///
/// Every store method maps to one request; a store error becomes an
/// [`Response::Error`] with its code. An append is checked against the
/// rate limits and quota of `opts.admission`, then `opts.verifier`. Every
/// answer is bounded by `opts.limits` (see [`ResponseLimits`]); ids asked
/// twice are answered once. `Subscribe` and `Unsubscribe` keep
/// per-connection state, so the transport handles them (it calls
/// [`AppendOnlyStore::subscribe`] and sends [`Message::Notify`]); here they
/// answer a protocol error.
pub async fn dispatch(
    store: &dyn AppendOnlyStore,
    peer: &PeerId,
    request: Request,
    opts: &ServeOptions,
) -> Response {
    let name = request.name();
    match run(store, peer, request, opts).await {
        Ok(r) => r,
        Err(e) => {
            debug!(request = name, error = %e, "request failed");
            Response::Error(WireError::from(&e))
        }
    }
}

/// What a `TOO_LARGE` refusal of `find_new_changes` says.
pub(crate) const FIND_NEW_TOO_LARGE: &str =
    "find_new_changes answer (page through the store with SCAN instead)";
/// What a `TOO_LARGE` refusal of `all_change_ids` says.
pub(crate) const ALL_IDS_TOO_LARGE: &str = "all_change_ids answer (page with IDS_IN_RANGE instead)";
/// What a `TOO_LARGE` refusal of a per-document listing says.
pub(crate) const DOC_TOO_LARGE: &str =
    "document listing (page through the store with SCAN instead)";

/// `ids` without repeats, in first-seen order.
fn coalesce(ids: Vec<ChangeId>) -> Vec<ChangeId> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.into_iter().filter(|id| seen.insert(*id)).collect()
}

/// The answer would hold more than `limit` items; `what` names the request
/// and how to page instead.
fn too_many(what: &'static str, limit: usize) -> Error {
    Error::TooLarge {
        what,
        limit: limit as u64,
        actual: limit as u64 + 1,
    }
}

async fn run(
    store: &dyn AppendOnlyStore,
    peer: &PeerId,
    request: Request,
    opts: &ServeOptions,
) -> Result<Response> {
    let lim = &opts.limits;
    let max_items = lim.max_items.max(1);
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
            opts.admission.admit(peer, store, &changes).await?;
            let sizes: std::collections::HashMap<ChangeId, u64> = changes
                .iter()
                .map(|c| (c.id(), c.payload.len() as u64))
                .collect();
            let out = store.append(changes).await?;
            let added: u64 = out.new.iter().filter_map(|id| sizes.get(id)).sum();
            opts.admission.stored(store.store_id(), added);
            Response::Appended(out)
        }
        Request::GetChanges(ids) => {
            // A prefix of the asked ids whose payloads fit the byte cap (at
            // least one): every held id of that prefix is answered, so a
            // client asks again for the ids after the last one returned.
            let ids = coalesce(ids);
            let metas = store.get_metas(&ids[..ids.len().min(max_items)]).await?;
            let mut bytes = 0u64;
            let mut take = Vec::with_capacity(metas.len());
            for m in &metas {
                if !take.is_empty() && bytes.saturating_add(m.payload_len) > lim.max_bytes {
                    break;
                }
                bytes = bytes.saturating_add(m.payload_len);
                take.push(m.id);
            }
            Response::Changes(store.get_changes(&take).await?)
        }
        Request::GetMetas(ids) => {
            let ids = coalesce(ids);
            Response::Metas(store.get_metas(&ids[..ids.len().min(max_items)]).await?)
        }
        Request::HasChanges(ids) => Response::Bools(store.has_changes(&ids).await?),
        Request::Scan { after, limit } => {
            Response::ScanItems(store.scan(after, clamp(limit).min(max_items)).await?)
        }
        Request::Head => Response::Head(store.head().await?),
        Request::FindNewChanges(have) => {
            // A page of the store at a time, never the whole store at once.
            let have: std::collections::HashSet<ChangeId> = have.into_iter().collect();
            let end = store.head().await?.seq;
            let mut out = Vec::new();
            let mut after = 0;
            // Bounded: every page advances `after`, up to `end`.
            while after < end {
                let page = store.scan(after, 1024).await?;
                let Some(last) = page.last() else { break };
                if last.seq <= after {
                    break;
                }
                after = last.seq;
                for item in page {
                    if !have.contains(&item.meta.id) {
                        if out.len() == max_items {
                            return Err(too_many(FIND_NEW_TOO_LARGE, max_items));
                        }
                        out.push(item.meta);
                    }
                }
            }
            Response::Metas(out)
        }
        Request::FindNewChangesForDoc { doc, have } => {
            let v = store.find_new_changes_for_doc(&have, &doc).await?;
            if v.len() > max_items {
                return Err(too_many(DOC_TOO_LARGE, max_items));
            }
            Response::Metas(v)
        }
        Request::AllChangeIds => {
            let v = store.ids_in_range(&IdRange::ALL, max_items + 1).await?;
            if v.len() > max_items {
                return Err(too_many(ALL_IDS_TOO_LARGE, max_items));
            }
            Response::Ids(v)
        }
        Request::ChangesForDoc {
            doc,
            from_last_snapshot,
        } => {
            let v = store.changes_for_doc(&doc, from_last_snapshot).await?;
            if v.len() > max_items {
                return Err(too_many(DOC_TOO_LARGE, max_items));
            }
            Response::Metas(v)
        }
        Request::RangeSummary(range) => Response::Summary(store.range_summary(&range).await?),
        Request::CodedSymbols(q) => {
            q.check()?;
            Response::Symbols(store.coded_symbols(&q).await?)
        }
        Request::IdsInRange { range, limit } => Response::Ids(
            store
                .ids_in_range(&range, clamp(limit).min(max_items))
                .await?,
        ),
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
