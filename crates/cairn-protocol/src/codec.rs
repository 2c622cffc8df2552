//! Frames: encoding (with chunking) and the sans-IO [`FrameDecoder`].

use std::collections::HashMap;

use bytes::Bytes;
use cairn::encoding::{decode_meta, encode_meta};
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

enum Items<'a> {
    None,
    Ids(&'a [ChangeId]),
    Changes(&'a [Change]),
    Metas(&'a [ChangeMeta]),
    Bools(&'a [bool]),
    Scan(&'a [ScanItem]),
}

impl Items<'_> {
    fn len(&self) -> Option<usize> {
        match self {
            Items::None => None,
            Items::Ids(v) => Some(v.len()),
            Items::Changes(v) => Some(v.len()),
            Items::Metas(v) => Some(v.len()),
            Items::Bools(v) => Some(v.len()),
            Items::Scan(v) => Some(v.len()),
        }
    }

    fn write(&self, i: usize, out: &mut Vec<u8>) {
        match self {
            Items::None => {}
            Items::Ids(v) => out.extend_from_slice(v[i].as_bytes()),
            Items::Changes(v) => write_change(&v[i], out),
            Items::Metas(v) => write_meta(&v[i], out),
            Items::Bools(v) => out.push(u8::from(v[i])),
            Items::Scan(v) => {
                put_u64(out, v[i].seq);
                write_meta(&v[i].meta, out);
            }
        }
    }
}

fn write_meta(meta: &ChangeMeta, out: &mut Vec<u8>) {
    let rec = encode_meta(meta);
    put_u32(out, u32::try_from(rec.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(&rec);
}

fn write_change(c: &Change, out: &mut Vec<u8>) {
    write_meta(&c.meta, out);
    // A payload over 4 GiB cannot be framed; the frame limit catches it
    // first (it is at most 4 GiB), so saturating here is never sent.
    put_u32(out, u32::try_from(c.payload.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(&c.payload);
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

/// Encode `msg` as one or more frames, back to back, none larger than
/// `max_frame` bytes (the length prefix excluded).
///
/// A list too long for one frame is split across frames: every frame but the
/// last has the `MORE` flag and repeats the message's fixed fields. A single
/// list item (one change, say) that cannot fit in a frame on its own is an
/// [`Error::TooLarge`] with `what == "change"` (or `"message"` for fixed
/// fields); nothing is produced then.
pub fn encode(msg: &Message, max_frame: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_into(msg, max_frame, &mut out)?;
    Ok(out)
}

/// Like [`encode`], but each frame (length prefix included) in its own
/// buffer, for transports that send discrete messages (WebRTC data channels).
pub fn encode_frames(msg: &Message, max_frame: u32) -> Result<Vec<Vec<u8>>> {
    let buf = encode(msg, max_frame)?;
    let mut frames = Vec::new();
    let mut rest = &buf[..];
    while rest.len() >= LEN_PREFIX {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let end = (LEN_PREFIX + len).min(rest.len());
        frames.push(rest[..end].to_vec());
        rest = &rest[end..];
    }
    Ok(frames)
}

/// Like [`encode`], appending to `out`. On error `out` is left as it was.
pub fn encode_into(msg: &Message, max_frame: u32, out: &mut Vec<u8>) -> Result<()> {
    let start_len = out.len();
    let res = encode_inner(msg, max_frame, out);
    if res.is_err() {
        out.truncate(start_len);
    }
    res
}

fn encode_inner(msg: &Message, max_frame: u32, out: &mut Vec<u8>) -> Result<()> {
    let ty = msg.type_byte();
    let id = msg.id();
    let (fixed, items) = parts(msg);
    let limit = max_frame as usize;
    // Start a frame; returns (frame start, count position if any).
    let begin = |out: &mut Vec<u8>| -> (usize, Option<usize>) {
        let start = out.len();
        put_u32(out, 0);
        out.push(ty);
        out.push(0);
        put_u32(out, id);
        out.extend_from_slice(&fixed);
        let count_pos = items.len().map(|_| {
            let p = out.len();
            put_u32(out, 0);
            p
        });
        (start, count_pos)
    };
    let finish = |out: &mut Vec<u8>, start: usize, count_pos: Option<usize>, n: u32, more: bool| {
        let body_len = (out.len() - start - LEN_PREFIX) as u32;
        out[start..start + 4].copy_from_slice(&body_len.to_be_bytes());
        if more {
            out[start + 5] = FLAG_MORE;
        }
        if let Some(p) = count_pos {
            out[p..p + 4].copy_from_slice(&n.to_be_bytes());
        }
    };
    let (mut start, mut count_pos) = begin(out);
    let empty_frame = out.len() - start - LEN_PREFIX;
    if empty_frame > limit {
        return Err(too_large("message", max_frame, empty_frame));
    }
    let total = items.len().unwrap_or(0);
    let mut n: u32 = 0;
    for i in 0..total {
        let mark = out.len();
        items.write(i, out);
        if out.len() - start - LEN_PREFIX > limit || n == u32::MAX {
            if n == 0 {
                let size = out.len() - mark + empty_frame;
                return Err(too_large("change", max_frame, size));
            }
            out.truncate(mark);
            finish(out, start, count_pos, n, true);
            (start, count_pos) = begin(out);
            n = 0;
            let mark = out.len();
            items.write(i, out);
            if out.len() - start - LEN_PREFIX > limit {
                let size = out.len() - mark + empty_frame;
                return Err(too_large("change", max_frame, size));
            }
        }
        n += 1;
    }
    finish(out, start, count_pos, n, false);
    Ok(())
}

/// Decode one frame body (the bytes after the length prefix): the message
/// it carries (for a chunked message, only this chunk's part of the list)
/// and whether the `MORE` flag is set. Never panics; malformed input is an
/// [`Error::Protocol`].
pub fn decode_body(body: &[u8]) -> Result<(Message, bool)> {
    let mut r = Reader::new(body);
    let ty = r.u8()?;
    let flags = r.u8()?;
    if flags & !FLAG_MORE != 0 {
        return Err(proto(format!("reserved flag bits set: {flags:#04x}")));
    }
    let more = flags & FLAG_MORE != 0;
    let id = r.u32()?;
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
    r.finish()?;
    if more && !has_list {
        return Err(proto(format!(
            "message type {ty:#04x} has no list and cannot be split"
        )));
    }
    Ok((msg, more))
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
    partial: HashMap<(u8, u32), (Message, u64)>,
    partial_bytes: u64,
    failed: Option<(u64, u64)>,
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
            let (msg, more) = decode_body(&self.buf[body_start..body_start + len])?;
            let key = (msg.type_byte(), msg.id());
            let size = len as u64;
            let pending = self.partial.remove(&key);
            let (msg, size) = match pending {
                Some((mut acc, acc_size)) => {
                    self.partial_bytes -= acc_size;
                    merge(&mut acc, msg)?;
                    (acc, acc_size + size)
                }
                None => (msg, size),
            };
            if more {
                if self.partial_bytes + size > self.max_message {
                    return Err(Error::TooLarge {
                        what: "message",
                        limit: self.max_message,
                        actual: self.partial_bytes + size,
                    });
                }
                if self.partial.len() >= MAX_PARTIAL_MESSAGES {
                    return Err(proto("too many split messages in flight"));
                }
                self.partial_bytes += size;
                self.partial.insert(key, (msg, size));
                continue;
            }
            return Ok(Some(msg));
        }
    }
}
