//! The client side: correlate responses with requests, and typed calls.

use std::collections::HashMap;

use async_trait::async_trait;
use cairn::riblt::{SymbolReply, SymbolRequest};
use cairn::{
    AppendOutcome, Change, ChangeId, ChangeMeta, DocId, Error, Head, IdRange, RangeSummary, Result,
    ScanItem,
};

use crate::error::WireError;
use crate::message::{Message, Request, Response};

impl Response {
    /// The answer to a request whose response type is `want`
    /// ([`Request::expected_response`]): an error response becomes its
    /// error, a response of another type [`Error::Protocol`].
    pub fn expecting(self, want: u8) -> Result<Response> {
        match self {
            Response::Error(e) => Err(e.into_error()),
            body if body.type_byte() == want => Ok(body),
            body => Err(Error::Protocol {
                reason: format!(
                    "response type {:#04x} to a request expecting {want:#04x}",
                    body.type_byte()
                ),
            }),
        }
    }
}

/// What the [`Correlator`] made of an incoming message.
#[derive(Debug)]
pub enum Incoming<T> {
    /// The (reassembled) answer to a request, with the waiter registered for
    /// it. An error response, or a response of the wrong type, is an `Err`.
    Response {
        /// The waiter given to [`Correlator::request`].
        waiter: T,
        /// The answer.
        result: Result<Response>,
    },
    /// A notification for subscription `subscription`.
    Notify {
        /// The id of the `Subscribe` request.
        subscription: u32,
        /// New change metadata.
        metas: Vec<ChangeMeta>,
    },
    /// An error about the whole connection (response id 0).
    ConnectionError(Error),
    /// A response to no pending request (late, or after a cancel); dropped.
    Unsolicited(u32),
    /// A message a client should not receive (hello after the handshake,
    /// a request).
    Unexpected(Message),
}

/// Matches responses to requests over one connection, for transports that
/// multiplex (a WebRTC data channel). `T` is whatever the transport wakes
/// the caller with (say a `oneshot::Sender`). Sans-IO: no clocks, no tasks.
///
/// ```
/// use cairn_protocol::{Correlator, Incoming, Message, Request, Response};
/// let mut c = Correlator::new();
/// let msg = c.request(Request::Head, "waiter");
/// let id = msg.id();
/// let answer = Message::Response { id, body: Response::Head(cairn::Head { epoch: 1, seq: 2 }) };
/// match c.handle(answer) {
///     Incoming::Response { waiter, result } => {
///         assert_eq!(waiter, "waiter");
///         assert!(result.is_ok());
///     }
///     _ => unreachable!(),
/// }
/// ```
#[derive(Debug)]
pub struct Correlator<T> {
    next: u32,
    pending: HashMap<u32, (u8, T)>,
}

impl<T> Default for Correlator<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Correlator<T> {
    /// No requests pending; ids start at 1.
    pub fn new() -> Self {
        Correlator {
            next: 1,
            pending: HashMap::new(),
        }
    }

    /// Register a request; returns the message to send.
    pub fn request(&mut self, body: Request, waiter: T) -> Message {
        let mut id = self.next;
        // Skip 0 (connection errors) and ids still pending after wrap-around.
        while id == 0 || self.pending.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next = id.wrapping_add(1);
        self.pending.insert(id, (body.expected_response(), waiter));
        Message::Request { id, body }
    }

    /// Forget a request (its caller gave up); returns its waiter.
    pub fn cancel(&mut self, id: u32) -> Option<T> {
        self.pending.remove(&id).map(|(_, w)| w)
    }

    /// Requests waiting for an answer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The connection is gone: every waiter, to fail with [`Error::Closed`].
    pub fn fail_all(&mut self) -> Vec<T> {
        self.pending.drain().map(|(_, (_, w))| w).collect()
    }

    /// Route one message from the [`FrameDecoder`](crate::FrameDecoder).
    pub fn handle(&mut self, msg: Message) -> Incoming<T> {
        match msg {
            Message::Response {
                id: 0,
                body: Response::Error(e),
            } => Incoming::ConnectionError(e.into_error()),
            Message::Response { id, body } => match self.pending.remove(&id) {
                None => Incoming::Unsolicited(id),
                Some((want, waiter)) => Incoming::Response {
                    waiter,
                    result: body.expecting(want),
                },
            },
            Message::Notify {
                subscription,
                metas,
            } => Incoming::Notify {
                subscription,
                metas,
            },
            other => Incoming::Unexpected(other),
        }
    }
}

/// Sends one request and waits for its (reassembled) response: what a
/// transport provides. [`RemoteCalls`] builds the typed store calls on it.
#[async_trait]
pub trait Call: Send + Sync {
    /// Send `request`, return the peer's response (an error response is
    /// returned as `Ok(Response::Error)` or `Err`, either is fine).
    async fn call(&self, request: Request) -> Result<Response>;
}

fn wrong(what: &str, r: &Response) -> Error {
    Error::Protocol {
        reason: format!(
            "expected a {what} response, got type {:#04x}",
            r.type_byte()
        ),
    }
}

macro_rules! expect {
    ($resp:expr, $what:literal, $pat:pat => $out:expr) => {
        match $resp {
            Response::Error(e) => Err(WireError::into_error(e)),
            $pat => Ok($out),
            other => Err(wrong($what, &other)),
        }
    };
}

/// The [`cairn::AppendOnlyStore`] methods as remote calls, for any [`Call`].
#[async_trait]
pub trait RemoteCalls: Call {
    /// Remote `append`.
    async fn remote_append(&self, changes: Vec<Change>) -> Result<AppendOutcome> {
        expect!(self.call(Request::Append(changes)).await?, "appended", Response::Appended(o) => o)
    }
    /// Remote `get_changes`.
    async fn remote_get_changes(&self, ids: &[ChangeId]) -> Result<Vec<Change>> {
        expect!(self.call(Request::GetChanges(ids.to_vec())).await?, "changes", Response::Changes(v) => v)
    }
    /// Remote `get_metas`.
    async fn remote_get_metas(&self, ids: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        expect!(self.call(Request::GetMetas(ids.to_vec())).await?, "metas", Response::Metas(v) => v)
    }
    /// Remote `has_changes`.
    async fn remote_has_changes(&self, ids: &[ChangeId]) -> Result<Vec<bool>> {
        expect!(self.call(Request::HasChanges(ids.to_vec())).await?, "bools", Response::Bools(v) => v)
    }
    /// Remote `scan`.
    async fn remote_scan(&self, after: u64, limit: usize) -> Result<Vec<ScanItem>> {
        let req = Request::Scan {
            after,
            limit: limit as u64,
        };
        expect!(self.call(req).await?, "scan", Response::ScanItems(v) => v)
    }
    /// Remote `head`.
    async fn remote_head(&self) -> Result<Head> {
        expect!(self.call(Request::Head).await?, "head", Response::Head(h) => h)
    }
    /// Remote `find_new_changes`.
    async fn remote_find_new_changes(&self, have: &[ChangeId]) -> Result<Vec<ChangeMeta>> {
        expect!(self.call(Request::FindNewChanges(have.to_vec())).await?, "metas", Response::Metas(v) => v)
    }
    /// Remote `find_new_changes_for_doc`.
    async fn remote_find_new_changes_for_doc(
        &self,
        have: &[ChangeId],
        doc: &DocId,
    ) -> Result<Vec<ChangeMeta>> {
        let req = Request::FindNewChangesForDoc {
            doc: doc.clone(),
            have: have.to_vec(),
        };
        expect!(self.call(req).await?, "metas", Response::Metas(v) => v)
    }
    /// Remote `all_change_ids`.
    async fn remote_all_change_ids(&self) -> Result<Vec<ChangeId>> {
        expect!(self.call(Request::AllChangeIds).await?, "ids", Response::Ids(v) => v)
    }
    /// Remote `changes_for_doc`.
    async fn remote_changes_for_doc(
        &self,
        doc: &DocId,
        from_last_snapshot: bool,
    ) -> Result<Vec<ChangeMeta>> {
        let req = Request::ChangesForDoc {
            doc: doc.clone(),
            from_last_snapshot,
        };
        expect!(self.call(req).await?, "metas", Response::Metas(v) => v)
    }
    /// Remote `range_summary`.
    async fn remote_range_summary(&self, range: &IdRange) -> Result<RangeSummary> {
        expect!(self.call(Request::RangeSummary(*range)).await?, "summary", Response::Summary(s) => s)
    }
    /// Remote `coded_symbols`.
    async fn remote_coded_symbols(&self, request: &SymbolRequest) -> Result<SymbolReply> {
        let reply = expect!(
            self.call(Request::CodedSymbols(*request)).await?,
            "symbols",
            Response::Symbols(r) => r
        )?;
        if reply.symbols.len() != request.count as usize {
            return Err(Error::Protocol {
                reason: format!(
                    "coded_symbols answered {} symbols for a request of {}",
                    reply.symbols.len(),
                    request.count
                ),
            });
        }
        Ok(reply)
    }
    /// Remote `ids_in_range`.
    async fn remote_ids_in_range(&self, range: &IdRange, limit: usize) -> Result<Vec<ChangeId>> {
        let req = Request::IdsInRange {
            range: *range,
            limit: limit as u64,
        };
        expect!(self.call(req).await?, "ids", Response::Ids(v) => v)
    }
}

impl<C: Call + ?Sized> RemoteCalls for C {}
