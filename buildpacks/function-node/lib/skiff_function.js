'use strict';
// Skiff function server for Node.js: runs exports.HANDLER(event) per CloudEvent delivered over
// HTTP (binary mode), listening on $PORT.
//
//   node skiff_function.js FILE.js:HANDLER
//
// event = the CloudEvent's attributes plus `data` (parsed when JSON). The (awaited) return value
// is the reply: undefined/null -> 204; an object with `specversion` -> that CloudEvent; any
// other value -> 200 with it as JSON (text for a string, raw for a Buffer), sent as a CloudEvent
// of type "skiff.reply" so that a mapping's reply topic can carry it on. A throw -> 500 (retried),
// or the error's `status` when it is 400-599 (4xx other than 408/409/429 is not retried).
const http = require('http');
const path = require('path');
const crypto = require('crypto');

function appName() {
  try {
    return JSON.parse(process.env.VCAP_APPLICATION || '{}').application_name || 'function';
  } catch (e) {
    return 'function';
  }
}

function pctEncode(v) {
  let out = '';
  for (const ch of String(v)) {
    const c = ch.codePointAt(0);
    if (c >= 0x21 && c <= 0x7e && ch !== '"' && ch !== '%') out += ch;
    else for (const b of Buffer.from(ch)) out += '%' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

function pctDecode(v) {
  if (!v.includes('%')) return v;
  try { return decodeURIComponent(v); } catch (e) { return v; }
}

function eventFrom(req, body) {
  const event = {};
  for (const [k, v] of Object.entries(req.headers)) {
    if (k.startsWith('ce-') && k.length > 3) event[k.slice(3)] = pctDecode(String(v));
  }
  const ctype = req.headers['content-type'];
  if (ctype) event.datacontenttype = ctype;
  let data = null;
  if (body.length) {
    if (!ctype || ctype.includes('json')) {
      try { data = JSON.parse(body.toString('utf8')); } catch (e) { data = ctype ? null : body.toString('utf8'); }
    } else if (ctype.startsWith('text/')) {
      data = body.toString('utf8');
    } else {
      data = body;
    }
  }
  event.data = data;
  return event;
}

function reply(res, value, event) {
  if (value === undefined || value === null) {
    res.writeHead(204);
    res.end();
    return;
  }
  const attrs = { specversion: '1.0', type: 'skiff.reply', source: '/apps/' + appName() };
  if (event.subject) attrs.subject = event.subject;
  let ctype = null;
  if (typeof value === 'object' && !Buffer.isBuffer(value) && 'specversion' in value) {
    const { data, datacontenttype, ...rest } = value;
    for (const [k, v] of Object.entries(rest)) attrs[k] = String(v);
    ctype = datacontenttype || null;
    value = data;
  }
  if (!attrs.id) attrs.id = crypto.randomBytes(16).toString('hex');
  let body;
  if (value === undefined || value === null) body = Buffer.alloc(0);
  else if (Buffer.isBuffer(value)) { body = value; ctype = ctype || 'application/octet-stream'; }
  else if (typeof value === 'string' && !(ctype && ctype.includes('json'))) {
    body = Buffer.from(value); ctype = ctype || 'text/plain; charset=utf-8';
  } else { body = Buffer.from(JSON.stringify(value)); ctype = ctype || 'application/json'; }
  const headers = { 'Content-Length': body.length };
  for (const [k, v] of Object.entries(attrs)) headers['ce-' + k] = pctEncode(v);
  if (body.length) headers['Content-Type'] = ctype;
  res.writeHead(200, headers);
  res.end(body);
}

function main() {
  const spec = process.argv[2];
  if (!spec) {
    console.error('usage: skiff_function.js FILE.js:HANDLER');
    process.exit(2);
  }
  const i = spec.lastIndexOf(':');
  const file = i > 0 ? spec.slice(0, i) : spec;
  const name = i > 0 ? spec.slice(i + 1) : 'handle';
  const mod = require(path.resolve(file));
  const fn = typeof mod === 'function' && name === 'default' ? mod : mod[name];
  if (typeof fn !== 'function') {
    console.error(`skiff: ${file} exports no function ${name}: add exports.${name} = async (event) => ... or fix the handler (FILE:FUNCTION)`);
    process.exit(1);
  }
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      if (req.method === 'GET') {
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.end('ok\n');
        return;
      }
      const event = eventFrom(req, Buffer.concat(chunks));
      let value;
      try {
        value = await fn(event);
      } catch (e) {
        console.error(e && e.stack ? e.stack : String(e));
        // An error may carry an HTTP status (e.g. 400: not worth retrying).
        const status = e && Number.isInteger(e.status) && e.status >= 400 && e.status <= 599 ? e.status : 500;
        res.writeHead(status, { 'Content-Type': 'text/plain' });
        res.end('handler threw\n');
        return;
      }
      try {
        reply(res, value, event);
      } catch (e) {
        console.error('skiff: cannot send the reply: ' + e);
        res.writeHead(500, { 'Content-Type': 'text/plain' });
        res.end('reply could not be encoded\n');
      }
    });
  });
  server.keepAliveTimeout = 75000;
  server.listen(parseInt(process.env.PORT || '8080', 10), process.env.SKIFF_FUNCTION_HOST || '0.0.0.0');
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}

main();
