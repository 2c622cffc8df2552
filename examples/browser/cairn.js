// A plain-JavaScript Cairn client over a WebRTC data channel or a
// WebSocket, written from docs/protocol.md (its "WebSocket" section
// included), docs/format.md and the "WebRTC binding" section of
// adapters/webrtc/README.md. It calls (sends requests); it does not serve.

import { blake3 } from '@noble/hashes/blake3.js';
import { argon2idAsync } from '@noble/hashes/argon2.js';
import { ed25519 } from '@noble/curves/ed25519.js';

export const CHUNK = 64 * 1024;            // largest data channel message we send
export const MAX_FRAME = 16 * 1024 * 1024; // our frame limit (announced in HELLO)
const MAX_MESSAGE = 1024 * 1024 * 1024;    // reassembly bound
const AUTH_CONTEXT = new TextEncoder().encode('cairn-webrtc/1 auth\0');
const ROLE_CALLS = 0x02;
const ROLE_ROOM = 0x04; // a room proof follows the signature
const AUTH_LEN = 101;
const ROOM_PROOF_MAGIC = new TextEncoder().encode('CWP1');
const ROOM_PROOF_LEN = 4 + 32;
const ROOM_PROOF_CONTEXT = new TextEncoder().encode('cairn-webrtc/1 room password\0');
const ROOM_SALT_CONTEXT = new TextEncoder().encode('cairn-webrtc/1 room key\0');
const JOIN_CONTEXT = new TextEncoder().encode('cairn-webrtc/1 signal join\0');
const WS_CLIENT_CONTEXT = new TextEncoder().encode('cairn-websocket/1 client\0');
const WS_SERVER_CONTEXT = new TextEncoder().encode('cairn-websocket/1 server\0');
const CALL_TIMEOUT_MS = 30_000;

export const T = {
  HELLO: 0x01, APPEND: 0x10, GET_CHANGES: 0x11, HEAD: 0x15, ALL_CHANGE_IDS: 0x18,
  APPENDED: 0x20, CHANGES: 0x21, IDS: 0x26, HEAD_IS: 0x25, DONE: 0x28, ERROR: 0x2f, NOTIFY: 0x30,
};
const LIST_TYPES = new Set([0x10, 0x11, 0x12, 0x13, 0x16, 0x17, 0x20, 0x21, 0x22, 0x23, 0x24, 0x26, 0x30]);

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

export const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
export const unhex = (s) => Uint8Array.from(s.match(/../g).map((h) => parseInt(h, 16)));

// ---- byte writer / reader (big-endian) ----
class W {
  constructor() { this.parts = []; this.len = 0; }
  bytes(b) { this.parts.push(b); this.len += b.length; return this; }
  u8(v) { return this.bytes(Uint8Array.of(v)); }
  u16(v) { const b = new Uint8Array(2); new DataView(b.buffer).setUint16(0, v); return this.bytes(b); }
  u32(v) { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, v); return this.bytes(b); }
  u64(v) { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(v)); return this.bytes(b); }
  str16(s) { const b = enc.encode(s); return this.u16(b.length).bytes(b); }
  done() {
    const out = new Uint8Array(this.len);
    let o = 0;
    for (const p of this.parts) { out.set(p, o); o += p.length; }
    return out;
  }
}

class R {
  constructor(buf) { this.b = buf; this.v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength); this.p = 0; }
  need(n) { if (this.p + n > this.b.length) throw new Error(`truncated message at ${this.p}`); }
  take(n) { this.need(n); const s = this.b.subarray(this.p, this.p + n); this.p += n; return s; }
  u8() { this.need(1); return this.b[this.p++]; }
  u16() { this.need(2); const x = this.v.getUint16(this.p); this.p += 2; return x; }
  u32() { this.need(4); const x = this.v.getUint32(this.p); this.p += 4; return x; }
  u64() { this.need(8); const x = this.v.getBigUint64(this.p); this.p += 8; return x; }
  str16() { return dec.decode(this.take(this.u16())); }
  left() { return this.b.length - this.p; }
}

// ---- changes (docs/format.md) ----

/** The canonical header of a change (format v2: what the author signs). */
export function header(m) {
  const w = new W().u8(2).u8(m.kind).str16(m.doc).u32(m.deps.length);
  for (const d of m.deps) w.bytes(d);
  const key = enc.encode(m.keyId);
  return w.u64(m.createdAt).bytes(m.author).u8(key.length).bytes(key)
    .bytes(m.payloadHash).u64(m.payloadLen).done();
}

const SIGNING_CONTEXT = enc.encode('cairn 2026 change v2 signing hash');

/** The 32 bytes an author signs: blake3 key derivation of the header. */
export const signingHash = (h) => blake3(h, { context: SIGNING_CONTEXT });

/** A new change; signed when `secretKey` is given. The id is blake3 of the
 * whole record (header and signature section), so it covers the signature. */
export function makeChange({ kind = 1, doc, deps = [], createdAt, author, keyId = 'default', payload, secretKey }) {
  const m = { kind, doc, deps, createdAt, author, keyId, payloadHash: blake3(payload), payloadLen: payload.length };
  const h = header(m);
  m.signingHash = signingHash(h);
  m.signature = secretKey ? ed25519.sign(m.signingHash, secretKey) : null;
  m.record = new W().bytes(h).u8(m.signature ? 1 : 0).bytes(m.signature ?? new Uint8Array(0)).done();
  m.id = blake3(m.record);
  return { meta: m, payload };
}

/** Parse a metadata record; the id is recomputed, never trusted. */
export function parseMeta(rec) {
  const r = new R(rec);
  const version = r.u8();
  if (version !== 2) throw new Error(`change record format version ${version}; this client reads version 2`);
  const kind = r.u8();
  const doc = r.str16();
  const n = r.u32();
  const deps = [];
  for (let i = 0; i < n; i++) deps.push(r.take(32));
  const createdAt = r.u64();
  const author = r.take(32);
  const keyId = dec.decode(r.take(r.u8()));
  const payloadHash = r.take(32);
  const payloadLen = r.u64();
  const headerLen = r.p;
  const flag = r.u8();
  const signature = flag === 1 ? r.take(64) : null;
  if (flag > 1 || r.left() !== 0) throw new Error('malformed metadata record');
  const id = blake3(rec);
  const sh = signingHash(rec.subarray(0, headerLen));
  return { id, signingHash: sh, kind, doc, deps, createdAt, author, keyId, payloadHash, payloadLen, signature, record: rec };
}

/** A change from its stored parts (metadata record, payload), checked. */
export function changeFromParts(record, payload) {
  const c = { meta: parseMeta(record), payload };
  checkChange(c);
  return c;
}

function checkChange(c) {
  if (BigInt(c.payload.length) !== c.meta.payloadLen) throw new Error(`payload length mismatch for ${hex(c.meta.id)}`);
  if (hex(blake3(c.payload)) !== hex(c.meta.payloadHash)) throw new Error(`payload hash mismatch for ${hex(c.meta.id)}`);
  if (c.meta.signature && !ed25519.verify(c.meta.signature, c.meta.signingHash, c.meta.author)) {
    throw new Error(`bad signature on ${hex(c.meta.id)}`);
  }
}

// ---- frames (docs/protocol.md) ----

function frame(type, flags, id, body) {
  return new W().u32(6 + body.length).u8(type).u8(flags).u32(id).bytes(body).done();
}

export function helloFrame(storeId) {
  const body = new W().bytes(enc.encode('CAIR')).u16(2).str16(storeId).u8(0).u64(0).u64(0).u32(MAX_FRAME).done();
  return frame(T.HELLO, 0, 0, body);
}

/** Frames of a request whose list is `items` (encoded), split to fit `maxFrame`. */
function listFrames(type, id, items, maxFrame) {
  const frames = [];
  let batch = [];
  let size = 6 + 4;
  const flush = (more) => {
    const w = new W().u32(batch.length);
    for (const it of batch) w.bytes(it);
    frames.push(frame(type, more ? 1 : 0, id, w.done()));
    batch = [];
    size = 10;
  };
  for (const it of items) {
    if (10 + it.length > maxFrame) throw new Error(`TOO_LARGE: one item of ${it.length} bytes`);
    if (batch.length && size + it.length > maxFrame) flush(true);
    batch.push(it);
    size += it.length;
  }
  flush(false);
  return frames;
}

function encodeChange(c) {
  return new W().u32(c.meta.record.length).bytes(c.meta.record).u32(c.payload.length).bytes(c.payload).done();
}

function parseError(r) {
  const code = r.u16();
  const retryable = r.u8() === 1;
  let text = '';
  try { if (r.left() >= 2) text = r.str16(); } catch (_) { /* code-specific fields */ }
  return { code, retryable, text };
}

/** Decodes frames from the byte stream and reassembles split messages. */
class Decoder {
  constructor() { this.chunks = []; this.avail = 0; this.partial = new Map(); this.total = 0; }
  push(chunk) { if (chunk.length) { this.chunks.push(chunk); this.avail += chunk.length; } }
  // Copy out the first n bytes; consume them unless `peek`.
  take(n, peek = false) {
    const out = new Uint8Array(n);
    let o = 0, i = 0;
    while (o < n) {
      const c = this.chunks[i];
      const k = Math.min(n - o, c.length);
      out.set(c.subarray(0, k), o);
      o += k;
      if (!peek) {
        if (k === c.length) { this.chunks.shift(); } else { this.chunks[0] = c.subarray(k); }
      } else { i++; }
    }
    if (!peek) this.avail -= n;
    return out;
  }
  /** The next whole message, or null. */
  pop() {
    for (;;) {
      if (this.avail < 4) return null;
      const len = new DataView(this.take(4, true).buffer).getUint32(0);
      if (len > MAX_FRAME || len < 6) throw new Error(`TOO_LARGE/bad frame length ${len}`);
      if (this.avail < 4 + len) return null;
      this.take(4);
      const body = this.take(len);
      const r = new R(body);
      const type = r.u8(), flags = r.u8(), id = r.u32();
      if (flags & ~7) throw new Error('reserved flag bits set');
      const more = (flags & 1) === 1, split = (flags & 2) === 2, cont = (flags & 4) === 4;
      if (split && (cont || !more)) throw new Error('SPLIT needs MORE and excludes CONT');
      if (!LIST_TYPES.has(type)) {
        if (more || split || cont) throw new Error('MORE on a message without a list');
        return { type, id, r };
      }
      // List message: fixed fields, then the list (count + items); an item
      // larger than a frame travels as SPLIT + CONT frames (docs/protocol.md).
      const key = `${type}:${id}`;
      let acc = this.partial.get(key);
      // A split item's bytes count once, as its item_len, when it starts.
      if (!cont) this.total += len;
      if (this.total > MAX_MESSAGE) throw new Error('TOO_LARGE: message');
      if (cont) {
        if (!acc || !acc.split) throw new Error('CONT with no split item in progress');
        const bytes = r.take(r.left());
        if (bytes.length === 0 || acc.split.got + bytes.length > acc.split.len) throw new Error('CONT past the split item');
        acc.split.parts.push(bytes.slice());
        acc.split.got += bytes.length;
        if (acc.split.got === acc.split.len) {
          const item = new R(concat(...acc.split.parts));
          acc.items.push(readItem(type, item));
          if (item.left() !== 0) throw new Error('trailing bytes in a split item');
          acc.split = null;
        } else if (!more) {
          throw new Error('message ended inside a split item');
        }
      } else {
        if (acc && acc.split) throw new Error('list frame before the split item is complete');
        const fixed = type === T.APPENDED ? r.u64() : null;
        const n = r.u32();
        const items = [];
        for (let i = 0; i < n; i++) items.push(readItem(type, r));
        if (!acc) { acc = { type, id, fixed, items: [], split: null }; this.partial.set(key, acc); }
        for (const it of items) acc.items.push(it);
        if (split) {
          const itemLen = Number(r.u64());
          const first = r.take(r.left());
          if (first.length === 0 || first.length >= itemLen) throw new Error('bad split item');
          this.total += itemLen;
          if (this.total > MAX_MESSAGE) throw new Error('TOO_LARGE: message');
          acc.split = { len: itemLen, parts: [first.slice()], got: first.length };
        } else if (r.left() !== 0) {
          throw new Error('trailing bytes');
        }
      }
      if (more) continue;
      this.partial.delete(key);
      if (this.partial.size === 0) this.total = 0;
      return acc;
    }
  }
}

function readItem(type, r) {
  switch (type) {
    case T.CHANGES: {
      const meta = parseMeta(r.take(r.u32()));
      const payload = r.take(r.u32()).slice();
      return { meta, payload };
    }
    case T.IDS: case T.APPENDED: return r.take(32).slice();
    case 0x22: case T.NOTIFY: return parseMeta(r.take(r.u32()));
    default: throw new Error(`cannot read items of type ${type}`);
  }
}

function fingerprint(sdp) {
  const m = sdp.match(/a=fingerprint:sha-256 ([0-9A-Fa-f:]+)/);
  if (!m) throw new Error('no sha-256 fingerprint in the SDP');
  return unhex(m[1].replaceAll(':', ''));
}

function concat(...bs) { const w = new W(); for (const b of bs) w.bytes(b); return w.done(); }

// Constant-time enough for 32 bytes compared once per handshake.
function equal(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

/** The room proof: keyed blake3 over the session's fingerprints, own first (adapters/webrtc/src/auth.rs). */
function roomProof(roomKey, first, second) {
  return blake3(concat(ROOM_PROOF_CONTEXT, first, second), { key: roomKey });
}

// ---- connection ----

/**
 * A Cairn connection over an open RTCDataChannel: authenticates both ways
 * (bound to the DTLS fingerprints), exchanges hellos, then offers typed calls.
 */
export class CairnChannel {
  /** `roomKey` (from `roomKey()`): prove the room password, and require the peer's proof. */
  static async open(pc, channel, { secretKey, publicKey, storeId, roomKey = null }) {
    const c = new CairnChannel(channel, storeId);
    const localFp = fingerprint(pc.localDescription.sdp);
    const remoteFp = fingerprint(pc.remoteDescription.sdp);
    const sig = ed25519.sign(concat(AUTH_CONTEXT, localFp, remoteFp), secretKey);
    const roles = ROLE_CALLS | (roomKey ? ROLE_ROOM : 0);
    c.sendRaw(concat(enc.encode('CWA1'), publicKey, Uint8Array.of(roles), sig));
    const auth = await c.nextRaw();
    if (auth.length !== AUTH_LEN || dec.decode(auth.subarray(0, 4)) !== 'CWA1') {
      c.decoder.push(auth);
      const m = c.decoder.pop();
      if (m && m.type === T.ERROR) throw new Error(`refused: ${JSON.stringify(parseError(m.r))}`);
      throw new Error('the peer did not authenticate');
    }
    c.peer = auth.subarray(4, 36).slice();
    if (!ed25519.verify(auth.subarray(37, AUTH_LEN), concat(AUTH_CONTEXT, remoteFp, localFp), c.peer)) {
      throw new Error('peer signature does not cover this DTLS session');
    }
    const peerHasKey = (auth[36] & ROLE_ROOM) !== 0;
    // Our proof goes only to a peer that proved its id and holds a room key too.
    if (roomKey) {
      if (!peerHasKey) throw new Error(`peer ${hex(c.peer)} did not prove the room password (it has none)`);
      c.sendRaw(concat(ROOM_PROOF_MAGIC, roomProof(roomKey, localFp, remoteFp)));
    }
    c.sendRaw(helloFrame(storeId));
    if (peerHasKey) {
      // Its proof, alone in the next message; anything else (a refusal) is framed.
      const next = await c.nextRaw();
      const isProof = next.length === ROOM_PROOF_LEN && equal(next.subarray(0, 4), ROOM_PROOF_MAGIC);
      if (!isProof) {
        c.raw.unshift(next);
      } else if (roomKey && !equal(next.subarray(4), roomProof(roomKey, remoteFp, localFp))) {
        throw new Error(`peer ${hex(c.peer)} does not know the room password`);
      } else if (roomKey) {
        c.proven = true;
      }
    }
    c.peerServes = (auth[36] & 1) === 1;
    const hello = await c.nextMessage();
    if (hello.type === T.HELLO && roomKey && !c.proven) throw new Error(`peer ${hex(c.peer)} did not send its room password proof`);
    c.takeHello(hello);
    return c;
  }

  /** The peer's HELLO (or its refusal); then requests may go out. */
  takeHello(hello) {
    if (hello.type === T.ERROR) throw new Error(`refused: ${JSON.stringify(parseError(hello.r))}`);
    if (hello.type !== T.HELLO) throw new Error(`expected HELLO, got ${hello.type}`);
    const r = hello.r;
    if (dec.decode(r.take(4)) !== 'CAIR' || r.u16() !== 2) throw new Error('bad hello: not protocol version 2');
    const sid = r.str16();
    if (sid !== this.storeId) throw new Error(`store mismatch: ${sid}`);
    r.u8(); r.u64(); r.u64();
    this.peerMaxFrame = Math.max(4096, r.u32());
    this.startRouting();
  }

  constructor(channel, storeId) {
    this.ch = channel;
    this.ch.binaryType = 'arraybuffer';
    this.storeId = storeId;
    this.raw = [];
    this.waiting = null;
    this.decoder = new Decoder();
    this.nextId = 1;
    this.pending = new Map();
    // Protocol bytes are binary messages; a text message is the peer's
    // goodbye (the Rust side hangs up so, as its close is not signalled).
    this.ch.onmessage = (e) => {
      if (typeof e.data === 'string') { this.ch.close(); return; }
      this.onRaw(new Uint8Array(e.data));
    };
    this.closed = false;
    this.ch.onclose = () => {
      this.closed = true;
      this.fail(new Error('connection closed'));
      if (this.waiting) { const w = this.waiting; this.waiting = null; w(); }
    };
    // A WebSocket has no bufferedamountlow event: poll its buffer instead.
    this.polled = !('onbufferedamountlow' in channel);
    this.lowWaiters = [];
    this.ch.bufferedAmountLowThreshold = 1024 * 1024;
    this.ch.onbufferedamountlow = () => { const w = this.lowWaiters; this.lowWaiters = []; w.forEach((f) => f()); };
  }

  onRaw(b) {
    if (this.routing) { this.decoder.push(b); this.route(); return; }
    this.raw.push(b);
    if (this.waiting) { const w = this.waiting; this.waiting = null; w(); }
  }

  async nextRaw() {
    while (!this.raw.length) {
      if (this.closed) throw new Error('connection closed');
      await new Promise((res) => { this.waiting = res; });
    }
    return this.raw.shift();
  }

  async nextMessage() {
    for (;;) {
      const m = this.decoder.pop();
      if (m) return m;
      this.decoder.push(await this.nextRaw());
    }
  }

  startRouting() {
    this.routing = true;
    for (const b of this.raw.splice(0)) this.decoder.push(b);
    this.route();
  }

  route() {
    try {
      for (let m = this.decoder.pop(); m; m = this.decoder.pop()) {
        const p = this.pending.get(m.id);
        if (!p) continue;
        this.pending.delete(m.id);
        if (m.type === T.ERROR) p.reject(new Error(`error response: ${JSON.stringify(parseError(m.r))}`));
        else if (m.type !== p.want) p.reject(new Error(`response type ${m.type}, expected ${p.want}`));
        else p.resolve(m);
      }
    } catch (e) { this.fail(e); this.ch.close(); }
  }

  fail(e) { for (const p of this.pending.values()) p.reject(e); this.pending.clear(); }

  sendRaw(bytes) {
    for (let o = 0; o < bytes.length; o += CHUNK) this.ch.send(bytes.subarray(o, Math.min(o + CHUNK, bytes.length)));
  }

  /** Send a byte string in chunks, waiting while the channel's buffer is full. */
  async send(bytes) {
    for (let o = 0; o < bytes.length; o += CHUNK) {
      while (this.ch.bufferedAmount > 8 * 1024 * 1024) {
        if (this.closed) throw new Error('connection closed');
        await new Promise((res) => (this.polled ? setTimeout(res, 5) : this.lowWaiters.push(res)));
      }
      this.ch.send(bytes.subarray(o, Math.min(o + CHUNK, bytes.length)));
    }
  }

  /** One request; its answer, or an error after CALL_TIMEOUT_MS or on close. */
  async call(type, want, frames) {
    if (this.closed) throw new Error('connection closed');
    const id = this.nextId++;
    let timer;
    const p = new Promise((resolve, reject) => {
      this.pending.set(id, { want, resolve, reject });
      timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`no answer within ${CALL_TIMEOUT_MS} ms`));
      }, CALL_TIMEOUT_MS);
    });
    try {
      for (const f of frames(id)) await this.send(f);
      return await p;
    } finally {
      clearTimeout(timer);
    }
  }

  close() { this.ch.close(); }

  async allChangeIds() {
    const m = await this.call(T.ALL_CHANGE_IDS, T.IDS, (id) => [frame(T.ALL_CHANGE_IDS, 0, id, new Uint8Array(0))]);
    return m.items;
  }

  /** Fetch changes by id; each is checked (id recomputed, payload hash, signature). */
  async getChanges(ids) {
    const m = await this.call(T.GET_CHANGES, T.CHANGES, (id) => listFrames(T.GET_CHANGES, id, ids, this.peerMaxFrame));
    for (const c of m.items) checkChange(c);
    return m.items;
  }

  /** Append changes at the peer; returns the ids it did not have. */
  async append(changes) {
    const m = await this.call(T.APPEND, T.APPENDED, (id) => listFrames(T.APPEND, id, changes.map(encodeChange), this.peerMaxFrame));
    return m.items;
  }
}

// ---- signaling (adapters/webrtc README) ----

/**
 * The room key of `room` (normalized, 6 characters) with `password`:
 * Argon2id v0x13, m = 19 MiB, t = 2, p = 1, 32 bytes, salt
 * "cairn-webrtc/1 room key\0" ‖ room. It never leaves the browser: peers
 * prove it to each other inside DTLS (the signaling server sees nothing).
 */
export async function roomKey(room, password) {
  if (!password) throw new Error(`empty password for room ${room}`);
  return argon2idAsync(enc.encode(password), concat(ROOM_SALT_CONTEXT, enc.encode(room)), { t: 2, m: 19 * 1024, p: 1, dkLen: 32 });
}

export function normalizeRoom(code) {
  const s = code.trim().toUpperCase().replace(/^(...)-(...)$/, '$1$2');
  if (!/^[ABCDEFGHJKLMNPQRSTUVWXYZ23456789]{6}$/.test(s)) throw new Error(`bad room code ${code}`);
  return s;
}

/**
 * Join a room, offer to the first peer present, and return the open
 * Cairn connection to it.
 */
export async function connectViaRoom({ signalUrl, room, password, secretKey, publicKey, storeId, iceServers = [] }) {
  const code = normalizeRoom(room);
  const ws = new WebSocket(signalUrl);
  const inbox = [];
  let wake = null;
  ws.onmessage = (e) => { inbox.push(JSON.parse(e.data)); if (wake) { const w = wake; wake = null; w(); } };
  await new Promise((res, rej) => { ws.onopen = res; ws.onerror = () => rej(new Error('signaling unreachable')); });
  ws.onclose = () => { inbox.push({ type: 'closed' }); if (wake) { const w = wake; wake = null; w(); } };
  const next = async () => { while (!inbox.length) await new Promise((r) => { wake = r; }); return inbox.shift(); };
  const key = password ? await roomKey(code, password) : null;
  // Prove we own our peer id: sign the server's challenge.
  const challenge = await next();
  if (challenge.type !== 'challenge') throw new Error(`signaling: expected a challenge: ${JSON.stringify(challenge)}`);
  const nonce = unhex(challenge.nonce);
  const signature = ed25519.sign(concat(JOIN_CONTEXT, nonce, enc.encode(code)), secretKey);
  ws.send(JSON.stringify({ type: 'join', room: code, peer: hex(publicKey), signature: hex(signature) }));
  const welcome = await next();
  if (welcome.type !== 'welcome') throw new Error(`signaling refused: ${JSON.stringify(welcome)}`);
  let target = welcome.peers[0];
  while (!target) {
    const m = await next();
    if (m.type === 'joined') target = m.peer;
    if (m.type === 'closed' || m.type === 'error') throw new Error(`signaling: ${JSON.stringify(m)}`);
  }
  const pc = new RTCPeerConnection({ iceServers });
  const channel = pc.createDataChannel('cairn/1', { ordered: true });
  const opened = new Promise((res, rej) => { channel.onopen = res; channel.onerror = (e) => rej(e); });
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== 'complete') {
    await new Promise((res) => { pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') res(); }; });
  }
  ws.send(JSON.stringify({ type: 'signal', to: target, data: { kind: 'offer', sdp: pc.localDescription.sdp } }));
  for (;;) {
    const m = await next();
    if (m.type === 'signal' && m.from === target && m.data.kind === 'answer') {
      await pc.setRemoteDescription({ type: 'answer', sdp: m.data.sdp });
      break;
    }
    if (m.type === 'error') throw new Error(`signaling: ${m.code}: ${m.message}`);
    if (m.type === 'closed') throw new Error('signaling server closed the connection');
  }
  await opened;
  const conn = await CairnChannel.open(pc, channel, { secretKey, publicKey, storeId, roomKey: key });
  conn.pc = pc;
  conn.ws = ws;
  return conn;
}

// ---- WebSocket (docs/protocol.md, "WebSocket") ----

const withTimeout = (p, ms, what) => Promise.race([
  p,
  new Promise((_, rej) => setTimeout(() => rej(new Error(`${what}: no answer within ${ms} ms`)), ms)),
]);

/**
 * Connect to a Cairn WebSocket server (`cairn serve --ws`) at `url` whose
 * peer id is `serverId` (pinned), prove both keys (the server's challenge,
 * our signed answer, its signed answer), exchange hellos, and return the
 * open connection. Everything is bounded by `timeoutMs`.
 */
export async function connectWebSocket({ url, serverId, secretKey, publicKey, storeId, timeoutMs = 10_000 }) {
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  const c = new CairnChannel(ws, storeId);
  const handshake = async () => {
    await new Promise((res, rej) => {
      ws.onopen = res;
      ws.onerror = () => rej(new Error(`${url}: unreachable`));
    });
    const ch = await c.nextRaw();
    if (ch.length !== 68 || !equal(ch.subarray(0, 4), enc.encode('CWS1'))) {
      throw new Error(`${url}: expected the server's 68-byte challenge, got ${ch.length} bytes (is this a Cairn WebSocket server?)`);
    }
    if (!equal(ch.subarray(4, 36), serverId)) {
      throw new Error(`${url}: the server's key is not the pinned peer id: it says it is ${hex(ch.subarray(4, 36))}`);
    }
    const serverNonce = ch.slice(36, 68);
    const clientNonce = crypto.getRandomValues(new Uint8Array(32));
    const sig = ed25519.sign(concat(WS_CLIENT_CONTEXT, serverNonce, clientNonce, serverId), secretKey);
    c.sendRaw(concat(enc.encode('CWC1'), publicKey, clientNonce, sig));
    const answer = await c.nextRaw();
    if (answer.length !== 100 || !equal(answer.subarray(0, 4), enc.encode('CWS2'))) {
      c.decoder.push(answer);
      const m = c.decoder.pop();
      if (m && m.type === T.ERROR) throw new Error(`${url}: refused: ${JSON.stringify(parseError(m.r))}`);
      throw new Error(`${url}: the server did not authenticate`);
    }
    const proof = concat(WS_SERVER_CONTEXT, clientNonce, serverNonce, publicKey);
    if (!equal(answer.subarray(4, 36), serverId) || !ed25519.verify(answer.subarray(36, 100), proof, serverId)) {
      throw new Error(`${url}: the server's signature does not cover this connection`);
    }
    c.peer = serverId.slice();
    c.sendRaw(helloFrame(storeId));
    c.takeHello(await c.nextMessage());
    return c;
  };
  try {
    return await withTimeout(handshake(), timeoutMs, `${url}: handshake`);
  } catch (e) {
    ws.close();
    throw e;
  }
}
