// Serves a folder over HTTP on 127.0.0.1 (a free port) for the test
// drivers: only files under it, with the content types the pages need.

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.json': 'application/json' };

/** Start serving `root`; resolves to the server (its port: `.address().port`). */
export async function serveFolder(root) {
  const http = createServer(async (req, res) => {
    const p = path.normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
    const file = path.join(root, p);
    if (!file.startsWith(root)) { res.writeHead(403).end(); return; }
    try {
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' }).end(body);
    } catch { res.writeHead(404).end(); }
  });
  await new Promise((r) => http.listen(0, '127.0.0.1', r));
  return http;
}
