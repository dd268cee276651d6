'use strict';
// The function runtime's warm start (the contract is container.h's warm_program): run ahead
// in a warm container, before any app is known, it has Node.js up and the modules the
// function server uses loaded. Its start comes on fd 3 (argc, argv, environment:
// NUL-terminated strings) once the droplet is mounted; it then runs `node SCRIPT ARGS...`
// as that command would have: the same environment, working directory, process.argv and
// main module (the droplet's own SCRIPT). The executor sends a start to it only when the
// environment holds nothing Node.js reads only as it starts (NODE_* other than NODE_ENV).
require('http');
require('crypto');
require('path');
const fs = require('fs');
const path = require('path');
const Module = require('module');

const APP_DIR = '/home/vcap/app';

function readStart() {
  const chunks = [];
  const buf = Buffer.alloc(65536);
  for (;;) {
    let n;
    try {
      n = fs.readSync(3, buf, 0, buf.length, null);
    } catch (e) {
      if (e.code === 'EAGAIN' || e.code === 'EINTR') continue;
      throw e;
    }
    if (n === 0) break;
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  fs.closeSync(3);
  const parts = Buffer.concat(chunks).toString('utf8').split('\0');
  parts.pop();
  const argc = parseInt(parts[0], 10);
  return [parts.slice(1, 1 + argc), parts.slice(1 + argc)];
}

const [argv, env] = readStart();
for (const key of Object.keys(process.env)) delete process.env[key];
for (const entry of env) {
  const i = entry.indexOf('=');
  if (i > 0) process.env[entry.slice(0, i)] = entry.slice(i + 1);
}
process.chdir(APP_DIR);
process.argv = [process.execPath, path.resolve(argv[1]), ...argv.slice(2)];
Module.runMain();
