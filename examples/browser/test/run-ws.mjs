// Test driver for the WebSocket page (ws.html): starts `cairn serve --ws`
// (binary from CAIRN_BIN) with an in-memory store, serves this folder over
// HTTP, and drives headless Chromium through sync, an offline edit, a
// reload (the edit survives in IndexedDB) and a sync that converges, while
// another device writes to the relay with the `cairn` command. Run inside a
// network namespace with only loopback (see crates/cairn-cli/tests/browser_ws.rs).

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createInterface } from 'node:readline';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serveFolder } from './serve-folder.mjs';
import { ed25519 } from '@noble/curves/ed25519.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CHROMIUM = process.env.CAIRN_CHROMIUM ?? '/usr/bin/chromium';
const CAIRN = process.env.CAIRN_BIN;
const home = mkdtempSync(path.join(tmpdir(), 'cairn-ws-browser-'));
const env = { ...process.env, HOME: home, XDG_CONFIG_HOME: path.join(home, '.config') };
const children = [];
const hex = (b) => Buffer.from(b).toString('hex');

function fail(msg) {
  console.error(`browser websocket test failed: ${msg}`);
  for (const c of children) c.kill('SIGKILL');
  process.exit(1);
}
const watchdog = setTimeout(() => fail('timed out after 180 s'), 180_000);
if (!CAIRN) fail('CAIRN_BIN (the cairn binary) not given');

/** Run `cairn ARGS` (stdin `input`); its stdout, or the test fails. */
function cairn(args, input) {
  const r = spawnSync(CAIRN, args, { env, input, encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) fail(`cairn ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return r.stdout.trim();
}

const http = await serveFolder(root);
const port = http.address().port;

// The other device: the `cairn` command with its own identity.
const other = cairn(['id', 'new']).split('\n')[0];
// The browser's key.
const secretKey = ed25519.utils.randomSecretKey();
const browserPeer = hex(ed25519.getPublicKey(secretKey));
const store = 'browser/ws';

const serve = spawn(CAIRN, [
  'serve', '--listen', '127.0.0.1:0', '--ws', '127.0.0.1:0', '--store', `${store}=memory:`,
  '--allow', browserPeer, '--allow', other,
], { env, stdio: ['ignore', 'pipe', 'pipe'] });
children.push(serve);
createInterface({ input: serve.stderr }).on('line', (l) => { if (process.env.CAIRN_VERBOSE) console.error(`[serve] ${l}`); });
const relayUrl = await new Promise((res) => {
  createInterface({ input: serve.stdout }).on('line', (l) => { if (l.startsWith('ws://')) res(l); });
  serve.on('exit', (code) => fail(`cairn serve exited (${code}) before printing its ws:// URL`));
});
const m = relayUrl.match(/^(ws:\/\/[^/]+)\/\S+\?peer=([0-9a-f]{64})$/);
if (!m) fail(`unexpected URL ${relayUrl}`);
const [, base, serverPeer] = m;
console.log(`relay ${relayUrl}`);

for (let i = 0; i < 3; i++) cairn(['put', relayUrl, '--doc', `relay-${i}`], `from the other device ${i}`);

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext();
const page = await context.newPage();
page.on('console', (msg) => console.log(`[page] ${msg.text()}`));
page.on('pageerror', (e) => console.log(`[page error] ${e}`));
const q = new URLSearchParams({ url: `${base}/`, server: serverPeer, store, key: hex(secretKey) });
const open = async () => page.waitForFunction(() => window.cairnReady, null, { timeout: 30_000, polling: 50 });
const expect = (what, got, want) => {
  for (const [k, v] of Object.entries(want)) if (got[k] !== v) fail(`${what}: ${k} is ${got[k]}, expected ${v}: ${JSON.stringify(got)}`);
};

await page.goto(`http://127.0.0.1:${port}/ws.html?${q}`);
await open();
if (await page.evaluate(() => window.cairn.count()) !== 0) fail('a fresh page holds changes');
await page.evaluate(() => window.cairn.edit('b-1', 'one'));
await page.evaluate(() => window.cairn.edit('b-2', 'two'));
expect('first sync', await page.evaluate(() => window.cairn.sync()), { pulled: 3, pushed: 2, local: 5, remote: 5, converged: true });

// Offline: the edit is kept, the sync fails.
await context.setOffline(true);
const offlineId = await page.evaluate(() => window.cairn.edit('offline', 'written offline'));
const r = await page.evaluate(() => window.cairn.sync());
if (!r.error) fail(`a sync while offline did not fail: ${JSON.stringify(r)}`);
console.log(`offline sync failed as it should: ${r.error}`);
// Meanwhile the other device writes.
cairn(['put', relayUrl, '--doc', 'relay-late'], 'written while the browser was offline');

// Back online, after a reload: the offline edit came back from IndexedDB.
await context.setOffline(false);
await page.reload();
await open();
if (await page.evaluate(() => window.cairn.count()) !== 6) fail('the reload lost changes kept in IndexedDB');
if (!await page.evaluate((id) => window.cairn.has(id), offlineId)) fail('the offline edit did not survive the reload');
expect('sync after the reload', await page.evaluate(() => window.cairn.sync()), { pulled: 1, pushed: 1, local: 7, remote: 7, converged: true });

// The relay holds the offline edit too.
const stats = JSON.parse(cairn(['stats', relayUrl, '--json']));
if (stats.changes !== 7) fail(`the relay holds ${stats.changes} changes, expected 7`);
const text = cairn(['cat', relayUrl, offlineId]);
if (text !== 'written offline') fail(`the relay's copy of the offline edit reads ${JSON.stringify(text)}`);

await browser.close();
serve.kill('SIGTERM');
http.close();
clearTimeout(watchdog);
console.log('browser websocket test ok: synced over WebSocket, edited offline, reloaded from IndexedDB, converged at 7 changes on both sides');
process.exit(0);
