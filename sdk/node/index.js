'use strict';
// Publish events to Skiff from Node.js (no dependencies).
//
// Inside an instance Skiff sets SKIFF_EVENTS_URL and SKIFF_EVENTS_TOKEN; publish() reads them
// and POSTs a CloudEvent in binary mode. The promise resolves once Skiff has the event on disk
// (HTTP 202):
//
//   const skiff = require('./sdk/node');
//   await skiff.publish('uploads', { size: 42 }, { type: 'image.uploaded', subject: 'cat.png' });
//   // -> { id: '...', offset: 17 }
//
// data may be a Buffer (application/octet-stream unless contentType says otherwise), a string
// (text/plain) or anything JSON.stringify accepts (application/json). Failures reject with a
// SkiffEventsError carrying Skiff's own message.
const http = require('http');
const https = require('https');
const crypto = require('crypto');

class SkiffEventsError extends Error {
  constructor(message, status, code) {
    super(message);
    this.name = 'SkiffEventsError';
    this.status = status;
    this.code = code;
  }
}

function defaultSource() {
  try {
    const name = JSON.parse(process.env.VCAP_APPLICATION || '{}').application_name;
    if (name) return `/apps/${name}`;
  } catch (e) { /* not JSON: fall through */ }
  return '/skiff/sdk';
}

function encode(data, contentType) {
  if (Buffer.isBuffer(data)) return [data, contentType || 'application/octet-stream'];
  if (typeof data === 'string') return [Buffer.from(data), contentType || 'text/plain; charset=utf-8'];
  if (data === undefined || data === null) return [Buffer.alloc(0), contentType];
  return [Buffer.from(JSON.stringify(data)), contentType || 'application/json'];
}

// The HTTP binding percent-encodes space, '"', '%' and everything outside printable ASCII.
function headerValue(value) {
  let out = '';
  for (const b of Buffer.from(String(value))) {
    out += (b <= 0x20 || b >= 0x7f || b === 0x22 || b === 0x25)
      ? '%' + b.toString(16).toUpperCase().padStart(2, '0') : String.fromCharCode(b);
  }
  return out;
}

function publish(topic, data, options = {}) {
  const base = options.url || process.env.SKIFF_EVENTS_URL;
  const token = options.token || process.env.SKIFF_EVENTS_TOKEN;
  if (!base || !token) {
    return Promise.reject(new SkiffEventsError(
      'SKIFF_EVENTS_URL and SKIFF_EVENTS_TOKEN must be set (Skiff sets them in every instance)'));
  }
  if (!topic) return Promise.reject(new SkiffEventsError('a topic name is required'));
  const [body, contentType] = encode(data, options.contentType);
  const headers = {
    'Authorization': `Bearer ${token}`,
    'ce-specversion': '1.0',
    'ce-id': headerValue(options.id || crypto.randomUUID()),
    'ce-source': headerValue(options.source || defaultSource()),
    'ce-type': headerValue(options.type || 'skiff.event'),
    'Content-Length': body.length,
  };
  if (options.subject !== undefined) headers['ce-subject'] = headerValue(options.subject);
  for (const [k, v] of Object.entries(options.extensions || {})) headers[`ce-${k}`] = headerValue(v);
  if (contentType) headers['Content-Type'] = contentType;
  // SKIFF_EVENTS_URL is the API's /v1; a bare API URL works too.
  let root = base.replace(/\/+$/, '');
  if (!root.endsWith('/v1')) root += '/v1';
  const url = new URL(`${root}/topics/${encodeURIComponent(topic)}/events`);
  const client = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = client.request(url, { method: 'POST', headers, timeout: options.timeoutMs || 30000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let json = null;
        try { json = JSON.parse(text); } catch (e) { /* not JSON */ }
        if (res.statusCode === 202 && json) return resolve(json);
        const err = (json && json.error) || {};
        reject(new SkiffEventsError(
          `Skiff refused the event (HTTP ${res.statusCode}): ${err.message || text}`,
          res.statusCode, err.code));
      });
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (e) => reject(new SkiffEventsError(`cannot reach Skiff at ${base}: ${e.message}`)));
    req.end(body);
  });
}

module.exports = { publish, SkiffEventsError };
