//! Frames: encoding (with chunking) and the sans-IO [`FrameDecoder`].

use std::collections::HashMap;

use bytes::Bytes;
use cairn::encoding::{decode_meta, encode_meta_into, encoded_meta_len};
use cairn::riblt::{
    CodedSymbol, STRATA, STRATUM_BUCKETS, SYMBOL_BYTES, Sketch, SymbolReply, SymbolRequest,
};
use cairn::{
    AppendOutcome, Capabilities, Change, ChangeId, ChangeMeta, Digest, DocId, Error, Head, IdRange,
    RangeSummary, Result, ScanItem, StoreId,
};

use crate::error::WireError;
use crate::message::{
    Hello, MAGIC, MIN_MAX_FRAME, Message, Request, Response, VERSION, msg_type as t,
};
use crate::wire::{Reader, proto, put_str16, put_u16, put_u32, put_u64};

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Bytes of the frame header after the length prefix: type, flags, id.
pub const HEADER_LEN: usize = 6;

/// Flag bit: another frame of the same message follows.
pub const FLAG_MORE: u8 = 0x01;

/// Flag bit: the frame ends with the first bytes of a list item that
/// continues in the next frames of the message (`CONT` frames); the split
/// section is `item_len:u64` then the item's first bytes.
pub const FLAG_SPLIT: u8 = 0x02;

/// Flag bit: the frame carries only more bytes of the item split by an
/// earlier frame of the message (no fixed fields, no count).
pub const FLAG_CONT: u8 = 0x04;

const KNOWN_FLAGS: u8 = FLAG_MORE | FLAG_SPLIT | FLAG_CONT;

enum Items<'a> {
    None,
    Ids(&'a [ChangeId]),
    Changes(&'a [Change]),
    Metas(&'a [ChangeMeta]),
    Bools(&'a [bool]),
    Scan(&'a [ScanItem]),
    Symbols(&'a [CodedSymbol]),
}

impl<'a> Items<'a> {
    fn len(&self) -> Option<usize> {
        match self {
            Items::None => None,
            Items::Ids(v) => Some(v.len()),
            Items::Changes(v) => Some(v.len()),
            Items::Metas(v) => Some(v.len()),
            Items::Bools(v) => Some(v.len()),
            Items::Symbols(v) => Some(v.len()),
            Items::Scan(v) => Some(v.len()),
        }
    }

    /// The bytes item `i` takes, computed without encoding it (0 past the
    /// end).
    fn size(&self, i: usize) -> Result<usize> {
        Ok(match self {
            Items::None => 0,
            Items::Ids(v) => v.get(i).map_or(0, |_| 32),
            Items::Changes(v) => match v.get(i) {
                Some(c) => {
                    payload_len_u32(c)?;
                    4 + encoded_meta_len(&c.meta) + 4 + c.payload.len()
                }
                None => 0,
            },
            Items::Metas(v) => v.get(i).map_or(0, |m| 4 + encoded_meta_len(m)),
            Items::Bools(v) => v.get(i).map_or(0, |_| 1),
            Items::Symbols(v) => v.get(i).map_or(0, |_| SYMBOL_BYTES),
            Items::Scan(v) => v
                .get(i)
                .map_or(0, |item| 8 + 4 + encoded_meta_len(&item.meta)),
        })
    }

    /// Append item `i`'s encoding ([`size`](Self::size) bytes) to `out`.
    fn write(&self, i: usize, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Items::None => {}
            Items::Ids(v) => {
                if let Some(id) = v.get(i) {
                    out.extend_from_slice(id.as_bytes());
                }
            }
            Items::Changes(v) => {
                if let Some(c) = v.get(i) {
                    let len = payload_len_u32(c)?;
                    write_meta(&c.meta, out);
                    put_u32(out, len);
                    out.extend_from_slice(&c.payload);
                }
            }
            Items::Metas(v) => {
                if let Some(m) = v.get(i) {
                    write_meta(m, out);
                }
            }
            Items::Bools(v) => {
                if let Some(b) = v.get(i) {
                    out.push(u8::from(*b));
                }
            }
            Items::Scan(v) => {
                if let Some(item) = v.get(i) {
                    put_u64(out, item.seq);
                    write_meta(&item.meta, out);
                }
            }
            Items::Symbols(v) => {
                if let Some(s) = v.get(i) {
                    out.extend_from_slice(&s.to_bytes());
                }
            }
        }
        Ok(())
    }

    /// Item `i`'s encoding as a head written here and a tail borrowed from
    /// the message (a change's payload), so that a large payload is copied
    /// once per frame, never into an intermediate buffer.
    fn item(&self, i: usize) -> Result<(Vec<u8>, &'a [u8])> {
        let mut out = Vec::new();
        let tail: &'a [u8] = match self {
            Items::None => &[],
            Items::Ids(v) => {
                if let Some(id) = v.get(i) {
                    out.extend_from_slice(id.as_bytes());
                }
                &[]
            }
            Items::Changes(v) => match v.get(i) {
                Some(c) => {
                    let len = payload_len_u32(c)?;
                    write_meta(&c.meta, &mut out);
                    put_u32(&mut out, len);
                    &c.payload[..]
                }
                None => &[],
            },
            Items::Metas(v) => {
                if let Some(m) = v.get(i) {
                    write_meta(m, &mut out);
                }
                &[]
            }
            Items::Bools(v) => {
                if let Some(b) = v.get(i) {
                    out.push(u8::from(*b));
                }
                &[]
            }
            Items::Scan(v) => {
                if let Some(item) = v.get(i) {
                    put_u64(&mut out, item.seq);
                    write_meta(&item.meta, &mut out);
                }
                &[]
            }
            Items::Symbols(v) => {
                if let Some(s) = v.get(i) {
                    out.extend_from_slice(&s.to_bytes());
                }
                &[]
            }
        };
        Ok((out, tail))
    }
}

/// Copy bytes `from..from + n` of `head ‖ tail` to `out`.
fn copy_span(head: &[u8], tail: &[u8], from: usize, n: usize, out: &mut Vec<u8>) {
    let end = from + n;
    if from < head.len() {
        out.extend_from_slice(&head[from..end.min(head.len())]);
    }
    if end > head.len() {
        let s = from.saturating_sub(head.len());
        out.extend_from_slice(&tail[s..end - head.len()]);
    }
}

/// A change's payload length as the `u32` the wire carries.
fn payload_len_u32(c: &Change) -> Result<u32> {
    u32::try_from(c.payload.len()).map_err(|_| Error::TooLarge {
        what: "payload",
        limit: u64::from(u32::MAX),
        actual: c.payload.len() as u64,
    })
}

fn write_meta(meta: &ChangeMeta, out: &mut Vec<u8>) {
    let len = encoded_meta_len(meta);
    put_u32(out, u32::try_from(len).unwrap_or(u32::MAX));
    encode_meta_into(meta, out);
}

fn read_meta(r: &mut Reader<'_>) -> Result<ChangeMeta> {
    let n = r.u32()? as usize;
    let rec = r.take(n)?;
    decode_meta(rec).map_err(|e| proto(format!("bad change metadata: {e}")))
}

fn read_change(r: &mut Reader<'_>) -> Result<Change> {
    let meta = read_meta(r)?;
    let n = r.u32()? as usize;
    let payload = Bytes::copy_from_slice(r.take(n)?);
    Ok(Change { meta, payload })
}

fn put_caps(out: &mut Vec<u8>, c: &Capabilities) {
    let mut b = 0u8;
    for (i, on) in [
        c.native_find_new,
        c.native_doc_index,
        c.native_reconciliation,
        c.durable,
        c.remote,
    ]
    .into_iter()
    .enumerate()
    {
        if on {
            b |= 1 << i;
        }
    }
    out.push(b);
}

fn read_caps(r: &mut Reader<'_>) -> Result<Capabilities> {
    let b = r.u8()?;
    // Unknown bits are capabilities of a newer version: ignore them.
    Ok(Capabilities {
        native_find_new: b & 1 != 0,
        native_doc_index: b & 2 != 0,
        native_reconciliation: b & 4 != 0,
        durable: b & 8 != 0,
        remote: b & 16 != 0,
    })
}

fn put_range(out: &mut Vec<u8>, r: &IdRange) {
    out.extend_from_slice(r.start.as_bytes());
    match &r.end {
        None => out.push(0),
        Some(e) => {
            out.push(1);
            out.extend_from_slice(e.as_bytes());
        }
    }
}

fn read_range(r: &mut Reader<'_>) -> Result<IdRange> {
    let start = r.id()?;
    let end = if r.bool()? { Some(r.id()?) } else { None };
    Ok(IdRange { start, end })
}

fn read_symbol(r: &mut Reader<'_>) -> Result<CodedSymbol> {
    let mut b = [0u8; SYMBOL_BYTES];
    b.copy_from_slice(r.take(SYMBOL_BYTES)?);
    Ok(CodedSymbol::from_bytes(&b))
}

/// `total:u64 digest:u64 strata:u8` then `strata` x 16 sketch bytes
/// (`strata` is 0xFF for no sketch).
fn put_reply_fields(out: &mut Vec<u8>, reply: &SymbolReply) {
    put_u64(out, reply.total);
    put_u64(out, reply.digest);
    match &reply.sketch {
        None => out.push(0xFF),
        Some(sk) => {
            let used = sk.used();
            out.push(used as u8);
            for s in &sk.strata[..used] {
                out.extend_from_slice(s);
            }
        }
    }
}

fn read_reply_fields(r: &mut Reader<'_>) -> Result<SymbolReply> {
    let total = r.u64()?;
    let digest = r.u64()?;
    let sketch = match r.u8()? {
        0xFF => None,
        used if usize::from(used) <= STRATA => {
            let mut sk = Sketch::default();
            for s in sk.strata.iter_mut().take(usize::from(used)) {
                s.copy_from_slice(r.take(STRATUM_BUCKETS)?);
            }
            Some(Box::new(sk))
        }
        used => {
            return Err(proto(format!(
                "a sketch of {used} strata (at most {STRATA})"
            )));
        }
    };
    Ok(SymbolReply {
        total,
        digest,
        sketch,
        symbols: Vec::new(),
    })
}

fn read_doc(r: &mut Reader<'_>) -> Result<DocId> {
    DocId::new(r.str16()?).map_err(|e| proto(format!("bad document id: {e}")))
}

/// The fixed fields of a message and its list, if it has one.
fn parts(msg: &Message) -> (Vec<u8>, Items<'_>) {
    let mut f = Vec::new();
    let items = match msg {
        Message::Hello(h) => {
            f.extend_from_slice(&MAGIC);
            put_u16(&mut f, h.version);
            put_str16(&mut f, h.store_id.as_str(), usize::from(u16::MAX));
            put_caps(&mut f, &h.capabilities);
            put_u64(&mut f, h.head.epoch);
            put_u64(&mut f, h.head.seq);
            put_u32(&mut f, h.max_frame);
            Items::None
        }
        Message::Request { body, .. } => match body {
            Request::Append(v) => Items::Changes(v),
            Request::GetChanges(v)
            | Request::GetMetas(v)
            | Request::HasChanges(v)
            | Request::FindNewChanges(v) => Items::Ids(v),
            Request::Scan { after, limit } => {
                put_u64(&mut f, *after);
                put_u64(&mut f, *limit);
                Items::None
            }
            Request::Head | Request::AllChangeIds | Request::Subscribe => Items::None,
            Request::FindNewChangesForDoc { doc, have } => {
                put_str16(&mut f, doc.as_str(), usize::from(u16::MAX));
                Items::Ids(have)
            }
            Request::ChangesForDoc {
                doc,
                from_last_snapshot,
            } => {
                put_str16(&mut f, doc.as_str(), usize::from(u16::MAX));
                f.push(u8::from(*from_last_snapshot));
                Items::None
            }
            Request::RangeSummary(range) => {
                put_range(&mut f, range);
                Items::None
            }
            Request::IdsInRange { range, limit } => {
                put_range(&mut f, range);
                put_u64(&mut f, *limit);
                Items::None
            }
            Request::Unsubscribe { subscription } => {
                put_u32(&mut f, *subscription);
                Items::None
            }
            Request::CodedSymbols(q) => {
                put_u64(&mut f, q.start);
                put_u32(&mut f, q.count);
                f.push(u8::from(q.sketch));
                Items::None
            }
        },
        Message::Response { body, .. } => match body {
            Response::Appended(o) => {
                put_u64(&mut f, o.duplicates as u64);
                Items::Ids(&o.new)
            }
            Response::Changes(v) => Items::Changes(v),
            Response::Metas(v) => Items::Metas(v),
            Response::Bools(v) => Items::Bools(v),
            Response::ScanItems(v) => Items::Scan(v),
            Response::Head(h) => {
                put_u64(&mut f, h.epoch);
                put_u64(&mut f, h.seq);
                Items::None
            }
            Response::Ids(v) => Items::Ids(v),
            Response::Summary(s) => {
                put_u64(&mut f, s.count);
                f.extend_from_slice(s.fingerprint.as_bytes());
                Items::None
            }
            Response::Done => Items::None,
            Response::Symbols(reply) => {
                put_reply_fields(&mut f, reply);
                Items::Symbols(&reply.symbols)
            }
            Response::Error(e) => {
                e.write(&mut f);
                Items::None
            }
        },
        Message::Notify { metas, .. } => Items::Metas(metas),
    };
    (f, items)
}

fn too_large(what: &'static str, limit: u32, actual: usize) -> Error {
    Error::TooLarge {
        what,
        limit: u64::from(limit),
        actual: actual as u64,
    }
}

/// An item split across frames, in progress.
struct Split<'a> {
    head: Vec<u8>,
    tail: &'a [u8],
    sent: usize,
}

impl Split<'_> {
    fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }
}

/// Encodes one message as frames, one at a time, none larger than the frame
/// limit (the length prefix excluded): a sender holds the message and one
/// frame, never the whole encoding.
///
/// A list too long for one frame is split across frames: every frame but the
/// last has the `MORE` flag and repeats the message's fixed fields. A list
/// item too large for a frame of its own (a big change) is split too: its
/// first bytes end a frame flagged `SPLIT` (after `item_len:u64`), and
/// `CONT` frames carry the rest. So any message travels, whatever its size;
/// the receiver bounds what it reassembles ([`FrameDecoder`]).
///
/// ```
/// use cairn_protocol::{FrameEncoder, Message, Request, LEN_PREFIX};
/// let msg = Message::Request { id: 3, body: Request::GetChanges(vec![cairn::ChangeId::MIN; 1000]) };
/// let frames: Vec<Vec<u8>> = FrameEncoder::new(&msg, 4096).collect::<Result<_, _>>()?;
/// assert!(frames.len() > 1);
/// assert!(frames.iter().all(|f| f.len() - LEN_PREFIX <= 4096));
/// # Ok::<(), cairn::Error>(())
/// ```
pub struct FrameEncoder<'a> {
    ty: u8,
    id: u32,
    fixed: Vec<u8>,
    items: Items<'a>,
    limit: usize,
    next: usize,
    split: Option<Split<'a>>,
    done: bool,
}

impl std::fmt::Debug for FrameEncoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameEncoder")
            .field("type", &self.ty)
            .field("id", &self.id)
            .field("next_item", &self.next)
            .finish_non_exhaustive()
    }
}

impl<'a> FrameEncoder<'a> {
    /// Frames of `msg`, each at most `max_frame` bytes after the length
    /// prefix (at least [`MIN_MAX_FRAME`] is used).
    pub fn new(msg: &'a Message, max_frame: u32) -> Self {
        let (fixed, items) = parts(msg);
        FrameEncoder {
            ty: msg.type_byte(),
            id: msg.id(),
            fixed,
            items,
            limit: max_frame.max(MIN_MAX_FRAME) as usize,
            next: 0,
            split: None,
            done: false,
        }
    }

    fn total(&self) -> usize {
        self.items.len().unwrap_or(0)
    }

    fn header(&self, out: &mut Vec<u8>, flags: u8) {
        put_u32(out, 0);
        out.push(self.ty);
        out.push(flags);
        put_u32(out, self.id);
    }

    fn seal(out: &mut [u8], flags: u8) {
        let body_len = (out.len() - LEN_PREFIX) as u32;
        out[..4].copy_from_slice(&body_len.to_be_bytes());
        out[5] = flags;
    }

    /// The next frame of a split item.
    fn cont_frame(&mut self) -> Vec<u8> {
        let room = self.limit - HEADER_LEN;
        let left = self.split.as_ref().map_or(0, |sp| sp.len() - sp.sent);
        let mut out = Vec::with_capacity(LEN_PREFIX + HEADER_LEN + room.min(left));
        self.header(&mut out, 0);
        let mut flags = FLAG_CONT;
        if let Some(sp) = &mut self.split {
            let n = room.min(sp.len() - sp.sent);
            copy_span(&sp.head, sp.tail, sp.sent, n, &mut out);
            sp.sent += n;
            if sp.sent == sp.len() {
                self.split = None;
            }
        }
        if self.split.is_some() || self.next < self.total() {
            flags |= FLAG_MORE;
        } else {
            self.done = true;
        }
        Self::seal(&mut out, flags);
        out
    }

    /// Bytes the next list frame takes after its first `empty` bytes (what
    /// `list_frame` will add to them), from the items' sizes, so that the
    /// frame is allocated once: the whole items that fit, or the rest of
    /// the frame if it ends with the start of a split item.
    fn frame_room(&self, empty: usize) -> Result<usize> {
        let mut bytes = 0usize;
        let mut n = 0usize;
        let mut i = self.next;
        while i < self.total() && n < u32::MAX as usize {
            let size = self.items.size(i)?;
            if size <= self.limit - empty - bytes {
                bytes += size;
                n += 1;
                i += 1;
                continue;
            }
            if n > 0 && size <= self.limit - empty {
                break;
            }
            return Ok(self.limit - empty);
        }
        Ok(bytes)
    }

    fn list_frame(&mut self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(LEN_PREFIX + HEADER_LEN + self.fixed.len() + 4);
        self.header(&mut out, 0);
        out.extend_from_slice(&self.fixed);
        let count_pos = self.items.len().map(|_| {
            let p = out.len();
            put_u32(&mut out, 0);
            p
        });
        let empty = out.len() - LEN_PREFIX;
        if empty > self.limit {
            self.done = true;
            return Err(too_large("message", self.limit as u32, empty));
        }
        out.reserve_exact(self.frame_room(empty)?);
        let mut flags = 0u8;
        let mut n: u32 = 0;
        while self.next < self.total() && n < u32::MAX {
            let size = self.items.size(self.next)?;
            let room = self.limit - (out.len() - LEN_PREFIX);
            if size <= room {
                self.items.write(self.next, &mut out)?;
                n += 1;
                self.next += 1;
                continue;
            }
            // It fits an empty frame: start the next frame with it.
            if n > 0 && size <= self.limit - empty {
                break;
            }
            // Too large for any frame, or too large for what is left: split
            // it, starting here (an item length, then its first bytes).
            if room < 8 + 1 {
                break;
            }
            let (head, tail) = self.items.item(self.next)?;
            put_u64(&mut out, size as u64);
            let first = room - 8;
            copy_span(&head, tail, 0, first, &mut out);
            self.split = Some(Split {
                head,
                tail,
                sent: first,
            });
            self.next += 1;
            flags |= FLAG_SPLIT;
            break;
        }
        if let Some(p) = count_pos {
            out[p..p + 4].copy_from_slice(&n.to_be_bytes());
        }
        if self.split.is_some() || self.next < self.total() {
            flags |= FLAG_MORE;
        } else {
            self.done = true;
        }
        Self::seal(&mut out, flags);
        Ok(out)
    }
}

impl Iterator for FrameEncoder<'_> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Result<Vec<u8>>> {
        if self.done {
            return None;
        }
        if self.split.is_some() {
            return Some(Ok(self.cont_frame()));
        }
        Some(self.list_frame())
    }
}

/// Encode `msg` as one or more frames, back to back, none larger than
/// `max_frame` bytes (the length prefix excluded). See [`FrameEncoder`],
/// which yields the same frames one at a time without holding them all.
///
/// Only fixed fields too large for a frame fail ([`Error::TooLarge`] with
/// `what == "message"`); nothing is produced then.
pub fn encode(msg: &Message, max_frame: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_into(msg, max_frame, &mut out)?;
    Ok(out)
}

/// Like [`encode`], but each frame (length prefix included) in its own
/// buffer.
pub fn encode_frames(msg: &Message, max_frame: u32) -> Result<Vec<Vec<u8>>> {
    FrameEncoder::new(msg, max_frame).collect()
}

/// Like [`encode`], appending to `out`. On error `out` is left as it was.
pub fn encode_into(msg: &Message, max_frame: u32, out: &mut Vec<u8>) -> Result<()> {
    let start_len = out.len();
    for frame in FrameEncoder::new(msg, max_frame) {
        match frame {
            Ok(f) => out.extend_from_slice(&f),
            Err(e) => {
                out.truncate(start_len);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Whether messages of type `ty` carry a list (and may be split).
fn is_list(ty: u8) -> bool {
    matches!(
        ty,
        t::APPEND
            | t::GET_CHANGES
            | t::GET_METAS
            | t::HAS_CHANGES
            | t::FIND_NEW_CHANGES
            | t::FIND_NEW_CHANGES_FOR_DOC
            | t::APPENDED
            | t::CHANGES
            | t::METAS
            | t::BOOLS
            | t::SCAN_ITEMS
            | t::IDS
            | t::NOTIFY
    )
}

/// One decoded frame.
enum Frame<'a> {
    /// A message frame: its fixed fields and whole items, whether more
    /// frames follow, and the start of a split item (its length and first
    /// bytes) if the frame ends with one.
    Msg {
        msg: Message,
        more: bool,
        split: Option<(u64, &'a [u8])>,
    },
    /// More bytes of a split item.
    Cont {
        ty: u8,
        id: u32,
        more: bool,
        bytes: &'a [u8],
    },
}

/// Decode one frame body (the bytes after the length prefix): the message
/// it carries (for a chunked message, only this chunk's part of the list)
/// and whether the `MORE` flag is set. Never panics; malformed input is an
/// [`Error::Protocol`]. A frame that splits an item across frames (`SPLIT`
/// or `CONT`) cannot be read alone: that is an [`Error::Protocol`] here;
/// [`FrameDecoder`] reassembles them.
pub fn decode_body(body: &[u8]) -> Result<(Message, bool)> {
    match decode_frame(body)? {
        Frame::Msg {
            msg,
            more,
            split: None,
        } => Ok((msg, more)),
        _ => Err(proto(
            "the frame carries part of a split item; reassemble it with a FrameDecoder",
        )),
    }
}

fn decode_frame(body: &[u8]) -> Result<Frame<'_>> {
    let mut r = Reader::new(body);
    let ty = r.u8()?;
    let flags = r.u8()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(proto(format!("reserved flag bits set: {flags:#04x}")));
    }
    let more = flags & FLAG_MORE != 0;
    let split = flags & FLAG_SPLIT != 0;
    let id = r.u32()?;
    if flags & FLAG_CONT != 0 {
        if split {
            return Err(proto("a frame cannot both continue and start a split item"));
        }
        if !is_list(ty) {
            return Err(proto(format!(
                "message type {ty:#04x} has no list and cannot be split"
            )));
        }
        let bytes = r.take(r.remaining())?;
        if bytes.is_empty() {
            return Err(proto("an empty continuation frame"));
        }
        return Ok(Frame::Cont {
            ty,
            id,
            more,
            bytes,
        });
    }
    let ids = |r: &mut Reader<'_>| -> Result<Vec<ChangeId>> {
        let n = r.count(32)?;
        (0..n).map(|_| r.id()).collect()
    };
    let metas = |r: &mut Reader<'_>| -> Result<Vec<ChangeMeta>> {
        let n = r.count(4)?;
        (0..n).map(|_| read_meta(r)).collect()
    };
    let req = |body| Message::Request { id, body };
    let resp = |body| Message::Response { id, body };
    let mut has_list = true;
    let msg = match ty {
        t::HELLO => {
            has_list = false;
            if r.take(4)? != MAGIC {
                return Err(proto("bad magic: not a Cairn hello"));
            }
            let version = r.u16()?;
            if version != VERSION {
                return Err(Error::UnsupportedVersion {
                    what: "protocol",
                    found: u32::from(version),
                    supported: u32::from(VERSION),
                    hint: if version < VERSION {
                        "the peer runs an older Cairn (format v1 changes); upgrade it".to_owned()
                    } else {
                        "the peer runs a newer Cairn; upgrade this side".to_owned()
                    },
                });
            }
            let store_id =
                StoreId::new(r.str16()?).map_err(|e| proto(format!("bad store id: {e}")))?;
            let capabilities = read_caps(&mut r)?;
            let head = Head {
                epoch: r.u64()?,
                seq: r.u64()?,
            };
            let max_frame = r.u32()?;
            Message::Hello(Hello {
                version,
                store_id,
                capabilities,
                head,
                max_frame,
            })
        }
        t::APPEND => {
            let n = r.count(8)?;
            let v = (0..n).map(|_| read_change(&mut r)).collect::<Result<_>>()?;
            req(Request::Append(v))
        }
        t::GET_CHANGES => req(Request::GetChanges(ids(&mut r)?)),
        t::GET_METAS => req(Request::GetMetas(ids(&mut r)?)),
        t::HAS_CHANGES => req(Request::HasChanges(ids(&mut r)?)),
        t::FIND_NEW_CHANGES => req(Request::FindNewChanges(ids(&mut r)?)),
        t::FIND_NEW_CHANGES_FOR_DOC => {
            let doc = read_doc(&mut r)?;
            req(Request::FindNewChangesForDoc {
                doc,
                have: ids(&mut r)?,
            })
        }
        t::APPENDED => {
            let duplicates = usize::try_from(r.u64()?).unwrap_or(usize::MAX);
            resp(Response::Appended(AppendOutcome {
                new: ids(&mut r)?,
                duplicates,
            }))
        }
        t::CHANGES => {
            let n = r.count(8)?;
            let v = (0..n).map(|_| read_change(&mut r)).collect::<Result<_>>()?;
            resp(Response::Changes(v))
        }
        t::METAS => resp(Response::Metas(metas(&mut r)?)),
        t::BOOLS => {
            let n = r.count(1)?;
            let v = (0..n).map(|_| r.bool()).collect::<Result<_>>()?;
            resp(Response::Bools(v))
        }
        t::SCAN_ITEMS => {
            let n = r.count(12)?;
            let v = (0..n)
                .map(|_| {
                    let seq = r.u64()?;
                    Ok(ScanItem {
                        seq,
                        meta: read_meta(&mut r)?,
                    })
                })
                .collect::<Result<_>>()?;
            resp(Response::ScanItems(v))
        }
        t::IDS => resp(Response::Ids(ids(&mut r)?)),
        t::SYMBOLS => {
            let mut reply = read_reply_fields(&mut r)?;
            let n = r.count(SYMBOL_BYTES)?;
            reply.symbols = (0..n).map(|_| read_symbol(&mut r)).collect::<Result<_>>()?;
            resp(Response::Symbols(reply))
        }
        t::NOTIFY => Message::Notify {
            subscription: id,
            metas: metas(&mut r)?,
        },
        _ => {
            has_list = false;
            match ty {
                t::SCAN => req(Request::Scan {
                    after: r.u64()?,
                    limit: r.u64()?,
                }),
                t::HEAD => req(Request::Head),
                t::ALL_CHANGE_IDS => req(Request::AllChangeIds),
                t::CHANGES_FOR_DOC => {
                    let doc = read_doc(&mut r)?;
                    req(Request::ChangesForDoc {
                        doc,
                        from_last_snapshot: r.bool()?,
                    })
                }
                t::RANGE_SUMMARY => req(Request::RangeSummary(read_range(&mut r)?)),
                t::IDS_IN_RANGE => {
                    let range = read_range(&mut r)?;
                    req(Request::IdsInRange {
                        range,
                        limit: r.u64()?,
                    })
                }
                t::SUBSCRIBE => req(Request::Subscribe),
                t::UNSUBSCRIBE => req(Request::Unsubscribe {
                    subscription: r.u32()?,
                }),
                t::CODED_SYMBOLS => req(Request::CodedSymbols(SymbolRequest {
                    start: r.u64()?,
                    count: r.u32()?,
                    sketch: r.bool()?,
                })),
                t::HEAD_IS => resp(Response::Head(Head {
                    epoch: r.u64()?,
                    seq: r.u64()?,
                })),
                t::SUMMARY => {
                    let count = r.u64()?;
                    let fp = r.id()?;
                    resp(Response::Summary(RangeSummary {
                        count,
                        fingerprint: Digest::from_bytes(*fp.as_bytes()),
                    }))
                }
                t::DONE => resp(Response::Done),
                t::ERROR => resp(Response::Error(WireError::read(&mut r)?)),
                other => return Err(proto(format!("unknown message type {other:#04x}"))),
            }
        }
    };
    if (more || split) && !has_list {
        return Err(proto(format!(
            "message type {ty:#04x} has no list and cannot be split"
        )));
    }
    let split = if split {
        if !more {
            return Err(proto("a frame splits an item but says no frame follows"));
        }
        let len = r.u64()?;
        let first = r.take(r.remaining())?;
        if first.is_empty() || first.len() as u64 >= len {
            return Err(proto(format!(
                "a split item of {len} bytes starts with {} bytes",
                first.len()
            )));
        }
        Some((len, first))
    } else {
        r.finish()?;
        None
    };
    Ok(Frame::Msg { msg, more, split })
}

/// Add one item, reassembled from a split, to the list of `msg`. A
/// change's payload is a slice of `item`, not a copy.
fn push_item(msg: &mut Message, item: Bytes) -> Result<()> {
    use Message as M;
    use Request as Q;
    use Response as R;
    let mut r = Reader::new(&item);
    match msg {
        M::Request {
            body: Q::Append(v), ..
        }
        | M::Response {
            body: R::Changes(v),
            ..
        } => {
            let meta = read_meta(&mut r)?;
            let n = r.u32()? as usize;
            let start = item.len() - r.remaining();
            r.take(n)?;
            r.finish()?;
            v.push(Change {
                meta,
                payload: item.slice(start..start + n),
            });
            return Ok(());
        }
        M::Request {
            body:
                Q::GetChanges(v)
                | Q::GetMetas(v)
                | Q::HasChanges(v)
                | Q::FindNewChanges(v)
                | Q::FindNewChangesForDoc { have: v, .. },
            ..
        }
        | M::Response {
            body: R::Ids(v), ..
        } => v.push(r.id()?),
        M::Response {
            body: R::Appended(o),
            ..
        } => o.new.push(r.id()?),
        M::Response {
            body: R::Metas(v), ..
        }
        | M::Notify { metas: v, .. } => v.push(read_meta(&mut r)?),
        M::Response {
            body: R::Bools(v), ..
        } => v.push(r.bool()?),
        M::Response {
            body: R::Symbols(reply),
            ..
        } => reply.symbols.push(read_symbol(&mut r)?),
        M::Response {
            body: R::ScanItems(v),
            ..
        } => {
            let seq = r.u64()?;
            v.push(ScanItem {
                seq,
                meta: read_meta(&mut r)?,
            });
        }
        _ => return Err(proto("a split item in a message without a list")),
    }
    r.finish()
}

/// Append the list of `chunk` to the list of `acc` (same message type).
fn merge(acc: &mut Message, chunk: Message) -> Result<()> {
    use Message as M;
    use Request as Q;
    use Response as R;
    match (acc, chunk) {
        (
            M::Request {
                body: Q::Append(a), ..
            },
            M::Request {
                body: Q::Append(b), ..
            },
        )
        | (
            M::Response {
                body: R::Changes(a),
                ..
            },
            M::Response {
                body: R::Changes(b),
                ..
            },
        ) => a.extend(b),
        (
            M::Request {
                body: Q::GetChanges(a),
                ..
            },
            M::Request {
                body: Q::GetChanges(b),
                ..
            },
        )
        | (
            M::Request {
                body: Q::GetMetas(a),
                ..
            },
            M::Request {
                body: Q::GetMetas(b),
                ..
            },
        )
        | (
            M::Request {
                body: Q::HasChanges(a),
                ..
            },
            M::Request {
                body: Q::HasChanges(b),
                ..
            },
        )
        | (
            M::Request {
                body: Q::FindNewChanges(a),
                ..
            },
            M::Request {
                body: Q::FindNewChanges(b),
                ..
            },
        )
        | (
            M::Request {
                body: Q::FindNewChangesForDoc { have: a, .. },
                ..
            },
            M::Request {
                body: Q::FindNewChangesForDoc { have: b, .. },
                ..
            },
        )
        | (
            M::Response {
                body: R::Ids(a), ..
            },
            M::Response {
                body: R::Ids(b), ..
            },
        ) => a.extend(b),
        (
            M::Response {
                body: R::Appended(a),
                ..
            },
            M::Response {
                body: R::Appended(b),
                ..
            },
        ) => a.new.extend(b.new),
        (
            M::Response {
                body: R::Metas(a), ..
            },
            M::Response {
                body: R::Metas(b), ..
            },
        )
        | (M::Notify { metas: a, .. }, M::Notify { metas: b, .. }) => a.extend(b),
        (
            M::Response {
                body: R::Bools(a), ..
            },
            M::Response {
                body: R::Bools(b), ..
            },
        ) => a.extend(b),
        (
            M::Response {
                body: R::Symbols(a),
                ..
            },
            M::Response {
                body: R::Symbols(b),
                ..
            },
        ) => a.symbols.extend(b.symbols),
        (
            M::Response {
                body: R::ScanItems(a),
                ..
            },
            M::Response {
                body: R::ScanItems(b),
                ..
            },
        ) => a.extend(b),
        _ => return Err(proto("frames of one split message disagree on its type")),
    }
    Ok(())
}

/// Most split messages a decoder reassembles at once.
pub const MAX_PARTIAL_MESSAGES: usize = 1024;

/// A sans-IO frame decoder: push bytes as they arrive, pop whole messages.
///
/// It checks each length prefix against the frame limit before buffering
/// the frame (an oversized length is an [`Error::TooLarge`] with
/// `what == "frame"`, and the decoder stays failed: the byte stream can no
/// longer be trusted). It reassembles split messages (frames with the `MORE`
/// flag, keyed by type and id, so several may interleave), bounded by
/// `max_message` bytes in total. A malformed frame body is an
/// [`Error::Protocol`]; that frame is dropped and decoding can go on.
///
/// ```
/// use cairn_protocol::{FrameDecoder, Message, Request, encode, DEFAULT_MAX_FRAME};
/// let bytes = encode(&Message::Request { id: 7, body: Request::Head }, DEFAULT_MAX_FRAME)?;
/// let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
/// dec.push(&bytes[..3]);
/// assert!(dec.pop()?.is_none());
/// dec.push(&bytes[3..]);
/// assert_eq!(dec.pop()?, Some(Message::Request { id: 7, body: Request::Head }));
/// # Ok::<(), cairn::Error>(())
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    pos: usize,
    max_frame: u32,
    max_message: u64,
    partial: HashMap<(u8, u32), Partial>,
    partial_bytes: u64,
    failed: Option<(u64, u64)>,
}

/// A message being reassembled.
#[derive(Debug)]
struct Partial {
    msg: Message,
    /// Bytes counted against the budget: frame bodies, plus the whole
    /// length of a split item from its first frame on.
    size: u64,
    /// A split item in progress: its bytes so far and its full length.
    split: Option<(Vec<u8>, usize)>,
}

impl FrameDecoder {
    /// A decoder accepting frames up to `max_frame` bytes (at least
    /// [`MIN_MAX_FRAME`]) and messages up to
    /// [`DEFAULT_MAX_MESSAGE`](crate::DEFAULT_MAX_MESSAGE).
    pub fn new(max_frame: u32) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            pos: 0,
            max_frame: max_frame.max(MIN_MAX_FRAME),
            max_message: crate::message::DEFAULT_MAX_MESSAGE,
            partial: HashMap::new(),
            partial_bytes: 0,
            failed: None,
        }
    }

    /// Limit the bytes of all split messages being reassembled at once.
    pub fn with_max_message(mut self, max_message: u64) -> Self {
        self.max_message = max_message;
        self
    }

    /// The frame limit in force.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Change the bound on split messages being reassembled (a server
    /// that learned from [`peek_header`](Self::peek_header) what kind of
    /// request is coming).
    pub fn set_max_message(&mut self, max_message: u64) {
        self.max_message = max_message;
    }

    /// The header of the next frame — body length, type, flags and id —
    /// once its first 10 bytes have arrived, before its body is buffered:
    /// a server checks a request's type (and so its permission) before it
    /// reads what may be a large body.
    pub fn peek_header(&self) -> Option<(u32, u8, u8, u32)> {
        let b = self.buf.get(self.pos..self.pos + LEN_PREFIX + HEADER_LEN)?;
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let id = u32::from_be_bytes([b[6], b[7], b[8], b[9]]);
        Some((len, b[4], b[5], id))
    }

    /// Buffer bytes received from the peer.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes of received data this decoder holds right now: its input
    /// buffer (the part not yet decoded, and any decoded prefix it has not
    /// dropped yet). Split messages being reassembled are bounded
    /// separately, by [`with_max_message`](Self::with_max_message). For
    /// memory accounting and tests: a decoder fed a stream in arbitrary
    /// pieces holds about one piece plus one frame, not the whole stream.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is buffered: no partial frame, no partial message.
    pub fn is_idle(&self) -> bool {
        self.pos == self.buf.len() && self.partial.is_empty()
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn pop(&mut self) -> Result<Option<Message>> {
        loop {
            if let Some((limit, actual)) = self.failed {
                return Err(Error::TooLarge {
                    what: "frame",
                    limit,
                    actual,
                });
            }
            let avail = &self.buf[self.pos..];
            if avail.len() < LEN_PREFIX {
                return Ok(None);
            }
            let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
            if len > self.max_frame {
                self.failed = Some((u64::from(self.max_frame), u64::from(len)));
                self.buf = Vec::new();
                self.pos = 0;
                continue;
            }
            let len = len as usize;
            if avail.len() < LEN_PREFIX + len {
                return Ok(None);
            }
            let body_start = self.pos + LEN_PREFIX;
            self.pos = body_start + len;
            let body = &self.buf[body_start..body_start + len];
            match decode_frame(body)? {
                Frame::Cont {
                    ty,
                    id,
                    more,
                    bytes,
                } => {
                    let Some(mut p) = self.partial.remove(&(ty, id)) else {
                        return Err(proto("a continuation frame with no split item before it"));
                    };
                    self.partial_bytes -= p.size;
                    let Some((buf, want)) = p.split.as_mut() else {
                        return Err(proto("a continuation frame with no split item before it"));
                    };
                    if buf.len() + bytes.len() > *want {
                        return Err(proto("a continuation frame runs past the end of its item"));
                    }
                    buf.extend_from_slice(bytes);
                    if buf.len() == *want {
                        let item = Bytes::from(std::mem::take(buf));
                        p.split = None;
                        push_item(&mut p.msg, item)?;
                    }
                    if more {
                        self.partial_bytes += p.size;
                        self.partial.insert((ty, id), p);
                        continue;
                    }
                    if p.split.is_some() {
                        return Err(proto("the message ended inside a split item"));
                    }
                    return Ok(Some(p.msg));
                }
                Frame::Msg { msg, more, split } => {
                    let key = (msg.type_byte(), msg.id());
                    let size = len as u64;
                    let mut p = match self.partial.remove(&key) {
                        Some(mut acc) => {
                            self.partial_bytes -= acc.size;
                            if acc.split.is_some() {
                                return Err(proto(
                                    "a new frame of a message whose split item is unfinished",
                                ));
                            }
                            merge(&mut acc.msg, msg)?;
                            acc.size += size;
                            acc
                        }
                        None => Partial {
                            msg,
                            size,
                            split: None,
                        },
                    };
                    if let Some((item_len, first)) = split {
                        // Bound the item by the budget before reserving it.
                        let total = self
                            .partial_bytes
                            .saturating_add(p.size)
                            .saturating_add(item_len);
                        if total > self.max_message {
                            return Err(Error::TooLarge {
                                what: "message",
                                limit: self.max_message,
                                actual: total,
                            });
                        }
                        let want = usize::try_from(item_len)
                            .map_err(|_| proto(format!("a split item of {item_len} bytes")))?;
                        let mut buf = Vec::with_capacity(want);
                        buf.extend_from_slice(first);
                        p.split = Some((buf, want));
                        p.size = p.size.saturating_add(item_len);
                    }
                    if more {
                        if self.partial_bytes + p.size > self.max_message {
                            return Err(Error::TooLarge {
                                what: "message",
                                limit: self.max_message,
                                actual: self.partial_bytes + p.size,
                            });
                        }
                        if self.partial.len() >= MAX_PARTIAL_MESSAGES {
                            return Err(proto("too many split messages in flight"));
                        }
                        self.partial_bytes += p.size;
                        self.partial.insert(key, p);
                        continue;
                    }
                    return Ok(Some(p.msg));
                }
            }
        }
    }
}
