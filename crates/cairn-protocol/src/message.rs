//! The messages: hello, requests, responses, notifications.

use cairn::riblt::{SymbolReply, SymbolRequest};
use cairn::{
    AppendOutcome, Capabilities, Change, ChangeId, ChangeMeta, DocId, Head, IdRange, RangeSummary,
    ScanItem, StoreId,
};

use crate::error::WireError;

/// The four bytes every hello starts with: `CAIR`.
pub const MAGIC: [u8; 4] = *b"CAIR";

/// The protocol version this library speaks. Version 2 carries change
/// records of format v2 (ids that cover the signature).
pub const VERSION: u16 = 2;

/// The default frame size limit: 16 MiB (the length prefix excluded).
pub const DEFAULT_MAX_FRAME: u32 = 16 << 20;

/// The smallest frame size limit a peer may set: 4 KiB, enough for every
/// message's fixed fields.
pub const MIN_MAX_FRAME: u32 = 4096;

/// The default limit on one reassembled message (all its frames): 1 GiB,
/// the same as the default append batch limit.
pub const DEFAULT_MAX_MESSAGE: u64 = 1 << 30;

/// Message type bytes (the first byte of every frame body).
pub mod msg_type {
    /// Hello.
    pub const HELLO: u8 = 0x01;
    /// Request: append.
    pub const APPEND: u8 = 0x10;
    /// Request: get_changes.
    pub const GET_CHANGES: u8 = 0x11;
    /// Request: get_metas.
    pub const GET_METAS: u8 = 0x12;
    /// Request: has_changes.
    pub const HAS_CHANGES: u8 = 0x13;
    /// Request: scan.
    pub const SCAN: u8 = 0x14;
    /// Request: head.
    pub const HEAD: u8 = 0x15;
    /// Request: find_new_changes.
    pub const FIND_NEW_CHANGES: u8 = 0x16;
    /// Request: find_new_changes_for_doc.
    pub const FIND_NEW_CHANGES_FOR_DOC: u8 = 0x17;
    /// Request: all_change_ids.
    pub const ALL_CHANGE_IDS: u8 = 0x18;
    /// Request: changes_for_doc.
    pub const CHANGES_FOR_DOC: u8 = 0x19;
    /// Request: range_summary.
    pub const RANGE_SUMMARY: u8 = 0x1A;
    /// Request: ids_in_range.
    pub const IDS_IN_RANGE: u8 = 0x1B;
    /// Request: subscribe.
    pub const SUBSCRIBE: u8 = 0x1C;
    /// Request: unsubscribe.
    pub const UNSUBSCRIBE: u8 = 0x1D;
    /// Request: coded_symbols.
    pub const CODED_SYMBOLS: u8 = 0x1E;
    /// Response: append outcome.
    pub const APPENDED: u8 = 0x20;
    /// Response: full changes.
    pub const CHANGES: u8 = 0x21;
    /// Response: metadata list.
    pub const METAS: u8 = 0x22;
    /// Response: one bool per id.
    pub const BOOLS: u8 = 0x23;
    /// Response: scan items.
    pub const SCAN_ITEMS: u8 = 0x24;
    /// Response: head.
    pub const HEAD_IS: u8 = 0x25;
    /// Response: id list.
    pub const IDS: u8 = 0x26;
    /// Response: range summary.
    pub const SUMMARY: u8 = 0x27;
    /// Response: done (subscribe, unsubscribe).
    pub const DONE: u8 = 0x28;
    /// Response: coded symbols.
    pub const SYMBOLS: u8 = 0x29;
    /// Response: error.
    pub const ERROR: u8 = 0x2F;
    /// Server push: new change metadata.
    pub const NOTIFY: u8 = 0x30;
}

/// The first message each side sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's protocol version ([`VERSION`]).
    pub version: u16,
    /// The store the client asks for / the server serves.
    pub store_id: StoreId,
    /// The sender's store capabilities.
    pub capabilities: Capabilities,
    /// The sender's store head.
    pub head: Head,
    /// The largest frame the sender accepts.
    pub max_frame: u32,
}

/// Whether a request reads or writes the store (for access policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Reads only.
    Read,
    /// Adds changes.
    Write,
}

/// Whether a message of type `ty` is a request, and the access it needs.
pub fn request_access(ty: u8) -> Option<Access> {
    use msg_type as t;
    match ty {
        t::APPEND => Some(Access::Write),
        t::GET_CHANGES..=t::CODED_SYMBOLS => Some(Access::Read),
        _ => None,
    }
}

/// A request, mirroring one [`cairn::AppendOnlyStore`] method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `append(changes)`.
    Append(Vec<Change>),
    /// `get_changes(ids)`.
    GetChanges(Vec<ChangeId>),
    /// `get_metas(ids)`.
    GetMetas(Vec<ChangeId>),
    /// `has_changes(ids)`.
    HasChanges(Vec<ChangeId>),
    /// `scan(after, limit)`.
    Scan {
        /// Sequence number to start after.
        after: u64,
        /// Most items.
        limit: u64,
    },
    /// `head()`.
    Head,
    /// `find_new_changes(have)`.
    FindNewChanges(Vec<ChangeId>),
    /// `find_new_changes_for_doc(have, doc)`.
    FindNewChangesForDoc {
        /// The document.
        doc: DocId,
        /// Ids the client has.
        have: Vec<ChangeId>,
    },
    /// `all_change_ids()`.
    AllChangeIds,
    /// `changes_for_doc(doc, from_last_snapshot)`.
    ChangesForDoc {
        /// The document.
        doc: DocId,
        /// Start from the latest snapshot.
        from_last_snapshot: bool,
    },
    /// `range_summary(range)`.
    RangeSummary(IdRange),
    /// `ids_in_range(range, limit)`.
    IdsInRange {
        /// The range.
        range: IdRange,
        /// Most ids.
        limit: u64,
    },
    /// `subscribe()`: the server answers `Done`, then sends `Notify`
    /// messages whose subscription number is this request's id.
    Subscribe,
    /// Stop the subscription opened by request `subscription`.
    Unsubscribe {
        /// The id of the `Subscribe` request.
        subscription: u32,
    },
    /// `coded_symbols(request)`.
    CodedSymbols(SymbolRequest),
}

impl Request {
    /// Whether the request reads or writes.
    pub fn access(&self) -> Access {
        match self {
            Request::Append(_) => Access::Write,
            _ => Access::Read,
        }
    }

    /// The method name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Append(_) => "append",
            Request::GetChanges(_) => "get_changes",
            Request::GetMetas(_) => "get_metas",
            Request::HasChanges(_) => "has_changes",
            Request::Scan { .. } => "scan",
            Request::Head => "head",
            Request::FindNewChanges(_) => "find_new_changes",
            Request::FindNewChangesForDoc { .. } => "find_new_changes_for_doc",
            Request::AllChangeIds => "all_change_ids",
            Request::ChangesForDoc { .. } => "changes_for_doc",
            Request::RangeSummary(_) => "range_summary",
            Request::IdsInRange { .. } => "ids_in_range",
            Request::Subscribe => "subscribe",
            Request::Unsubscribe { .. } => "unsubscribe",
            Request::CodedSymbols(_) => "coded_symbols",
        }
    }

    /// The response type byte a successful answer must have.
    pub fn expected_response(&self) -> u8 {
        use crate::message::msg_type as t;
        match self {
            Request::Append(_) => t::APPENDED,
            Request::GetChanges(_) => t::CHANGES,
            Request::GetMetas(_)
            | Request::FindNewChanges(_)
            | Request::FindNewChangesForDoc { .. }
            | Request::ChangesForDoc { .. } => t::METAS,
            Request::HasChanges(_) => t::BOOLS,
            Request::Scan { .. } => t::SCAN_ITEMS,
            Request::Head => t::HEAD_IS,
            Request::AllChangeIds | Request::IdsInRange { .. } => t::IDS,
            Request::RangeSummary(_) => t::SUMMARY,
            Request::Subscribe | Request::Unsubscribe { .. } => t::DONE,
            Request::CodedSymbols(_) => t::SYMBOLS,
        }
    }
}

/// A response to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Answer to `append`.
    Appended(AppendOutcome),
    /// Answer to `get_changes`.
    Changes(Vec<Change>),
    /// Answer to `get_metas`, `find_new_changes`, `find_new_changes_for_doc`,
    /// `changes_for_doc`.
    Metas(Vec<ChangeMeta>),
    /// Answer to `has_changes`.
    Bools(Vec<bool>),
    /// Answer to `scan`.
    ScanItems(Vec<ScanItem>),
    /// Answer to `head`.
    Head(Head),
    /// Answer to `all_change_ids` and `ids_in_range`.
    Ids(Vec<ChangeId>),
    /// Answer to `range_summary`.
    Summary(RangeSummary),
    /// Answer to `subscribe` and `unsubscribe`.
    Done,
    /// Answer to `coded_symbols`.
    Symbols(SymbolReply),
    /// The request failed.
    Error(WireError),
}

impl Response {
    /// The type byte.
    pub fn type_byte(&self) -> u8 {
        use crate::message::msg_type as t;
        match self {
            Response::Appended(_) => t::APPENDED,
            Response::Changes(_) => t::CHANGES,
            Response::Metas(_) => t::METAS,
            Response::Bools(_) => t::BOOLS,
            Response::ScanItems(_) => t::SCAN_ITEMS,
            Response::Head(_) => t::HEAD_IS,
            Response::Ids(_) => t::IDS,
            Response::Summary(_) => t::SUMMARY,
            Response::Done => t::DONE,
            Response::Symbols(_) => t::SYMBOLS,
            Response::Error(_) => t::ERROR,
        }
    }

    /// `Err` for an error response, else the response.
    pub fn into_result(self) -> cairn::Result<Response> {
        match self {
            Response::Error(e) => Err(e.into_error()),
            r => Ok(r),
        }
    }
}

/// One whole protocol message (possibly carried by several frames).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The opening message of each side.
    Hello(Hello),
    /// A request; `id` is chosen by the client and echoed in the response.
    Request {
        /// Request id.
        id: u32,
        /// The request.
        body: Request,
    },
    /// A response to request `id` (`id == 0` for a connection-level error,
    /// such as a refused hello).
    Response {
        /// The request id.
        id: u32,
        /// The response.
        body: Response,
    },
    /// Server push: metadata of changes newly appended to the store, in
    /// sequence order, for the subscription opened by request `subscription`.
    Notify {
        /// The id of the `Subscribe` request.
        subscription: u32,
        /// The new changes' metadata.
        metas: Vec<ChangeMeta>,
    },
}

impl Message {
    /// The type byte of the message's frames.
    pub fn type_byte(&self) -> u8 {
        use crate::message::msg_type as t;
        match self {
            Message::Hello(_) => t::HELLO,
            Message::Request { body, .. } => match body {
                Request::Append(_) => t::APPEND,
                Request::GetChanges(_) => t::GET_CHANGES,
                Request::GetMetas(_) => t::GET_METAS,
                Request::HasChanges(_) => t::HAS_CHANGES,
                Request::Scan { .. } => t::SCAN,
                Request::Head => t::HEAD,
                Request::FindNewChanges(_) => t::FIND_NEW_CHANGES,
                Request::FindNewChangesForDoc { .. } => t::FIND_NEW_CHANGES_FOR_DOC,
                Request::AllChangeIds => t::ALL_CHANGE_IDS,
                Request::ChangesForDoc { .. } => t::CHANGES_FOR_DOC,
                Request::RangeSummary(_) => t::RANGE_SUMMARY,
                Request::IdsInRange { .. } => t::IDS_IN_RANGE,
                Request::Subscribe => t::SUBSCRIBE,
                Request::Unsubscribe { .. } => t::UNSUBSCRIBE,
                Request::CodedSymbols(_) => t::CODED_SYMBOLS,
            },
            Message::Response { body, .. } => body.type_byte(),
            Message::Notify { .. } => t::NOTIFY,
        }
    }

    /// The frame header's id field: the request id, the subscription id, or
    /// 0 for a hello.
    pub fn id(&self) -> u32 {
        match self {
            Message::Hello(_) => 0,
            Message::Request { id, .. } | Message::Response { id, .. } => *id,
            Message::Notify { subscription, .. } => *subscription,
        }
    }
}
