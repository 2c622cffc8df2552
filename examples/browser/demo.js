// The demo page: make `n` signed changes, join a room, pull what the Rust
// peer has, push what it lacks, check both hold the union. Sets
// window.cairnResult for the test driver.

import { ed25519 } from '@noble/curves/ed25519.js';
import { connectViaRoom, makeChange, hex } from './cairn.js';

const q = new URLSearchParams(location.search);
const log = (...a) => {
  const line = a.join(' ');
  console.log(line);
  const el = document.getElementById('log');
  if (el) el.textContent += line + '\n';
};

async function main() {
  const t0 = performance.now();
  const signalUrl = q.get('signal') ?? 'ws://127.0.0.1:8765';
  const room = q.get('room') ?? 'ABC-DEF';
  const storeId = q.get('store') ?? 'demo/notes';
  const n = Number(q.get('n') ?? 100);
  const big = Number(q.get('big') ?? 0);
  const { secretKey, publicKey } = ed25519.keygen();
  const local = new Map();
  const text = new TextEncoder();
  for (let i = 0; i < n; i++) {
    const payload = new Uint8Array(i === 0 && big ? big : 64).fill(0x62);
    payload.set(text.encode(`browser change ${i} `).subarray(0, payload.length));
    const c = makeChange({ doc: `browser-${i}`, createdAt: i, author: publicKey, payload, secretKey });
    local.set(hex(c.meta.id), c);
  }
  log(`made ${n} changes as ${hex(publicKey)}`);
  const conn = await connectViaRoom({ signalUrl, room, password: q.get('password'), secretKey, publicKey, storeId });
  log(`paired with ${hex(conn.peer)} in ${Math.round(performance.now() - t0)} ms`);

  // Pull what we lack, in batches.
  const remoteIds = await conn.allChangeIds();
  const remoteSet = new Set(remoteIds.map(hex));
  const missing = remoteIds.filter((id) => !local.has(hex(id)));
  let pulled = 0, largest = 0;
  for (let i = 0; i < missing.length; i += 250) {
    const batch = missing.slice(i, i + 250);
    const want = new Set(batch.map(hex));
    for (const c of await conn.getChanges(batch)) {
      const id = hex(c.meta.id);
      if (!want.has(id)) throw new Error(`got a change we did not ask for: ${id}`);
      local.set(id, c);
      pulled++;
      largest = Math.max(largest, c.payload.length);
    }
  }
  log(`pulled ${pulled} changes (largest payload ${largest} bytes)`);

  // Push what the peer lacks, in batches of at most 4 MiB (a larger change alone).
  const mine = [...local.entries()].filter(([id]) => !remoteSet.has(id)).map(([, c]) => c);
  let pushed = 0;
  for (let i = 0; i < mine.length;) {
    const batch = [];
    let bytes = 0;
    while (i < mine.length && (batch.length === 0 || bytes + mine[i].payload.length < 4 << 20)) {
      bytes += mine[i].payload.length;
      batch.push(mine[i++]);
    }
    pushed += (await conn.append(batch)).length;
  }
  log(`pushed ${pushed} changes`);

  const after = await conn.allChangeIds();
  const ok = after.length === local.size && after.every((id) => local.has(hex(id)));
  const result = { ok, local: local.size, remote: after.length, pulled, pushed, largestPulled: largest, ms: Math.round(performance.now() - t0) };
  log(JSON.stringify(result));
  window.cairnResult = result;
}

main().catch((e) => {
  log(`failed: ${e.stack ?? e}`);
  window.cairnResult = { ok: false, error: String(e.stack ?? e) };
});
