// Test driver: starts the signaling server and a Rust peer (binaries from
// CAIRN_SIGNAL_BIN / CAIRN_PEER_BIN), serves this folder over HTTP, drives
// headless Chromium into the same room and checks both sides hold the union.
// Run inside a network namespace with only loopback (see the Rust test).

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serveFolder } from './serve-folder.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const N = Number(process.env.CAIRN_BROWSER_N ?? 1000);
const BIG = 10 * 1024 * 1024;
const CHROMIUM = process.env.CAIRN_CHROMIUM ?? '/usr/bin/chromium';
const children = [];

function fail(msg) {
  console.error(`browser test failed: ${msg}`);
  for (const c of children) c.kill('SIGKILL');
  process.exit(1);
}
const watchdog = setTimeout(() => fail('timed out after 300 s'), 300_000);

function start(name, bin, args) {
  if (!bin) fail(`${name}: binary path not given`);
  const child = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  children.push(child);
  const lines = [];
  let waiter = null;
  createInterface({ input: child.stdout }).on('line', (l) => {
    console.log(`[${name}] ${l}`);
    lines.push(l);
    if (waiter) waiter();
  });
  createInterface({ input: child.stderr }).on('line', (l) => { if (process.env.CAIRN_VERBOSE) console.error(`[${name}] ${l}`); });
  child.on('exit', (code) => { child.exited = code; if (waiter) waiter(); });
  child.waitLine = async (re) => {
    for (;;) {
      const hit = lines.map((l) => l.match(re)).find(Boolean);
      if (hit) return hit;
      if (child.exited !== undefined) fail(`${name} exited (${child.exited}) before printing ${re}`);
      await new Promise((r) => { waiter = r; });
      waiter = null;
    }
  };
  return child;
}

const http = await serveFolder(root);
const port = http.address().port;

const alphabet = 'ABCDEFGHJKLMNPQRSTUVWXYZ23456789';
const room = Array.from({ length: 6 }, () => alphabet[Math.floor(Math.random() * 32)]).join('');
const store = 'browser/test';
// A password room: both sides prove it inside DTLS (Argon2id room key).
const password = `pw-${Math.random().toString(36).slice(2)}`;

const signal = start('signal', process.env.CAIRN_SIGNAL_BIN, ['--listen', '127.0.0.1:0']);
const [, url] = await signal.waitLine(/^listening (ws:\/\/\S+)/);
const peer = start('rust-peer', process.env.CAIRN_PEER_BIN, [
  '--signal', url, '--room', room, '--password', password, '--store', store,
  '--generate', String(N), '--first-payload', String(BIG), '--expect', String(2 * N),
]);
await peer.waitLine(/^peer [0-9a-f]{64}/);

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: [
    '--allow-loopback-in-peer-connection',
    '--disable-features=WebRtcHideLocalIpsWithMdns',
    '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-quic',
  ],
});
const page = await browser.newPage();
page.on('console', (m) => console.log(`[page] ${m.text()}`));
page.on('pageerror', (e) => console.log(`[page error] ${e}`));
const q = new URLSearchParams({ signal: url, room: `${room.slice(0, 3)}-${room.slice(3)}`.toLowerCase(), password, store, n: String(N), big: String(BIG) });
await page.goto(`http://127.0.0.1:${port}/index.html?${q}`);
await page.waitForFunction(() => window.cairnResult, null, { timeout: 240_000, polling: 100 });
const result = await page.evaluate(() => window.cairnResult);
await browser.close();
if (!result.ok) fail(`browser side: ${JSON.stringify(result)}`);
if (result.local !== 2 * N || result.largestPulled !== BIG) fail(`unexpected counts: ${JSON.stringify(result)}`);
const [, holds] = await peer.waitLine(/^holds (\d+)/);
if (Number(holds) < 2 * N) fail(`rust peer holds ${holds}`);
peer.stdin.end();
signal.kill();
http.close();
clearTimeout(watchdog);
console.log(`browser test ok: browser and Rust peer both hold ${2 * N} changes (${N} each way, one 10 MiB each way); ${result.ms} ms in the page`);
process.exit(0);
