// An offline-first page: its changes live in IndexedDB (so they survive a
// reload, made online or not), and `sync()` reconciles them with a relay
// over WebSocket: pull what the relay has, push what it lacks. The test
// driver (test/run-ws.mjs) calls window.cairn.{count, edit, sync} and waits
// for window.cairnReady.

import { ed25519 } from '@noble/curves/ed25519.js';
import { changeFromParts, connectWebSocket, hex, makeChange, unhex } from './cairn.js';

const q = new URLSearchParams(location.search);
const log = (...a) => {
  const line = a.join(' ');
  console.log(line);
  const el = document.getElementById('log');
  if (el) el.textContent += line + '\n';
};

const url = q.get('url') ?? 'ws://127.0.0.1:8080/';
const serverId = unhex(q.get('server') ?? '');
const storeId = q.get('store') ?? 'demo/notes';
const secretKey = unhex(q.get('key') ?? hex(ed25519.utils.randomSecretKey()));
const publicKey = ed25519.getPublicKey(secretKey);

// ---- the IndexedDB cache: one object store, changes by id ----

const req = (r) => new Promise((res, rej) => { r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });

async function openDb() {
  const r = indexedDB.open(`cairn/${storeId}`, 1);
  r.onupgradeneeded = () => r.result.createObjectStore('changes', { keyPath: 'id' });
  return req(r);
}

const db = await openDb();
const local = new Map();

async function load() {
  const tx = db.transaction('changes', 'readonly');
  const rows = await req(tx.objectStore('changes').getAll());
  for (const row of rows) {
    const c = changeFromParts(row.record, row.payload); // checked: id, payload hash, signature
    if (hex(c.meta.id) !== row.id) throw new Error(`cache row ${row.id} holds another change`);
    local.set(row.id, c);
  }
}

async function keep(changes) {
  const tx = db.transaction('changes', 'readwrite');
  const os = tx.objectStore('changes');
  for (const c of changes) os.put({ id: hex(c.meta.id), record: c.meta.record, payload: c.payload });
  await new Promise((res, rej) => { tx.oncomplete = res; tx.onerror = () => rej(tx.error); });
  for (const c of changes) local.set(hex(c.meta.id), c);
}

// ---- what the app does ----

/** A new signed change, kept in IndexedDB before it returns. */
async function edit(doc, text) {
  const c = makeChange({ doc, createdAt: Date.now(), author: publicKey, payload: new TextEncoder().encode(text), secretKey });
  await keep([c]);
  log(`edited ${doc}: ${hex(c.meta.id)}`);
  return hex(c.meta.id);
}

/** Pull what the relay has and we lack, push what it lacks. */
async function sync() {
  const conn = await connectWebSocket({ url, serverId, secretKey, publicKey, storeId });
  try {
    const remoteIds = await conn.allChangeIds();
    const remote = new Set(remoteIds.map(hex));
    const missing = remoteIds.filter((id) => !local.has(hex(id)));
    let pulled = 0;
    for (let i = 0; i < missing.length; i += 250) {
      const batch = missing.slice(i, i + 250);
      const want = new Set(batch.map(hex));
      const got = await conn.getChanges(batch);
      for (const c of got) if (!want.has(hex(c.meta.id))) throw new Error(`got a change we did not ask for: ${hex(c.meta.id)}`);
      await keep(got);
      pulled += got.length;
    }
    const mine = [...local.entries()].filter(([id]) => !remote.has(id)).map(([, c]) => c);
    let pushed = 0;
    for (let i = 0; i < mine.length; i += 250) pushed += (await conn.append(mine.slice(i, i + 250))).length;
    const after = await conn.allChangeIds();
    const converged = after.length === local.size && after.every((id) => local.has(hex(id)));
    const r = { pulled, pushed, local: local.size, remote: after.length, converged };
    log(`synced: ${JSON.stringify(r)}`);
    return r;
  } finally {
    conn.close();
  }
}

await load();
log(`${local.size} changes in IndexedDB; peer ${hex(publicKey)}`);
window.cairn = {
  count: () => local.size,
  has: (id) => local.has(id),
  edit,
  sync: () => sync().catch((e) => ({ error: String(e.message ?? e) })),
};
window.cairnReady = true;
