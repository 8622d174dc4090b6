'use strict';
// Yun's Node.js instance bootstrap, shipped inside the yun binary.
// Protocol v1: length-prefixed (u32 big-endian) JSON frames over fd 0, a Unix socket
// pair whose other end Yun holds. One invocation at a time (SCF semantics): Yun may
// queue the next event before this one answers; it starts only after the answer, so
// an event queued behind one that crashes never ran.
// stdout/stderr writes are forwarded as `log` frames so each line is attributed to the
// invocation that wrote it, in order with its result.
const net = require('net');
const path = require('path');
const Module = require('module');

const PROTOCOL_VERSION = 1;
const channel = new net.Socket({ fd: 0, readable: true, writable: true });

function send(message) {
  const body = Buffer.from(JSON.stringify(message));
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(body.length, 0);
  channel.write(Buffer.concat([head, body]));
}

function errorInfo(err) {
  if (err instanceof Error) return { name: err.name, message: err.message, stack: err.stack || '' };
  let message;
  try { message = typeof err === 'string' ? err : JSON.stringify(err); } catch (_) { message = String(err); }
  return { name: 'Error', message: String(message), stack: '' };
}

for (const stream of ['stdout', 'stderr']) {
  process[stream].write = function write(chunk, encoding, callback) {
    const data = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
    send({ type: 'log', stream, data });
    const done = typeof encoding === 'function' ? encoding : callback;
    if (typeof done === 'function') process.nextTick(done);
    return true;
  };
}

// The platform layer: SDKs Yun provides (as SCF provides wx-server-sdk). A stem cell
// loads them before it knows its function; a bare `require` of one resolves to the
// preloaded copy so the user's cold start does not pay for it again.
const layerDir = process.env.YUN_NODE_LAYER || '';
const layerPackages = ['wx-server-sdk', '@cloudbase/node-sdk'];
const layerResolved = new Map();
if (layerDir) {
  const layerRequire = Module.createRequire(path.join(layerDir, 'package.json'));
  for (const name of layerPackages) {
    try {
      const resolved = layerRequire.resolve(name);
      if (process.env.YUN_PRELOAD === '1') layerRequire(name);
      layerResolved.set(name, resolved);
    } catch (_) { /* not in the layer: the function must ship it */ }
  }
}
const originalResolve = Module._resolveFilename;
Module._resolveFilename = function resolveFilename(request, parent, isMain, options) {
  const layered = layerResolved.get(request);
  return layered || originalResolve.call(this, request, parent, isMain, options);
};

let handler = null;
let staticEnvKeys = [];
let invocationEnvKeys = [];
let current = null;
const queued = [];
let running = false;
let dying = false;

function fatal(kind, err) {
  dying = true;
  send({ type: 'fatal', request_id: current, kind, error: errorInfo(err) });
  channel.end(() => process.exit(70));
  setTimeout(() => process.exit(70), 200).unref();
}
process.on('uncaughtException', (err) => fatal('uncaught_exception', err));
process.on('unhandledRejection', (reason) => fatal('unhandled_rejection', reason));

function load(message) {
  for (const [k, v] of Object.entries(message.env || {})) process.env[k] = v;
  staticEnvKeys = Object.keys(message.env || {});
  process.chdir(message.code_dir);
  const dot = message.handler.lastIndexOf('.');
  const file = message.handler.slice(0, dot);
  const exportName = message.handler.slice(dot + 1);
  try {
    const mod = require(path.resolve(message.code_dir, file));
    const fn = mod && mod[exportName];
    if (typeof fn !== 'function') {
      send({ type: 'load_error', error: { name: 'HandlerNotFound', message: `${file}.js does not export a function named "${exportName}"`, stack: '' } });
      return;
    }
    handler = fn;
    send({ type: 'loaded' });
  } catch (err) {
    send({ type: 'load_error', error: errorInfo(err) });
  }
}

async function runQueued() {
  if (running) return;
  running = true;
  while (queued.length > 0 && !dying) await invoke(queued.shift());
  running = false;
}

async function invoke(message) {
  // process.env writes are C++ calls into setenv; most values repeat between
  // invocations, so only what changed is written.
  const env = message.env || {};
  for (const k of invocationEnvKeys) if (!(k in env) && !staticEnvKeys.includes(k)) delete process.env[k];
  invocationEnvKeys = Object.keys(env);
  for (const k of invocationEnvKeys) if (process.env[k] !== env[k]) process.env[k] = env[k];
  current = message.request_id;
  const respond = (reply) => {
    reply.request_id = message.request_id;
    // The instance's high-water mark (getrusage, KiB): it catches peaks inside the
    // invocation, and costs one syscall where memoryUsage.rss() reads /proc.
    reply.rss_kb = process.resourceUsage().maxRSS;
    current = null;
    send(reply);
  };
  try {
    const event = message.event ? JSON.parse(message.event) : {};
    const value = await new Promise((resolve, reject) => {
      // SCF allows both styles: a returned promise/value, or main(event, context, callback).
      const callback = (err, result) => (err ? reject(err) : resolve(result));
      const returned = handler(event, message.context, callback);
      if (returned && typeof returned.then === 'function') returned.then(resolve, reject);
      else if (returned !== undefined || handler.length < 3) resolve(returned);
    });
    const text = JSON.stringify(value === undefined ? null : value);
    respond({ type: 'result', ok: true, value: text === undefined ? 'null' : text });
  } catch (err) {
    respond({ type: 'result', ok: false, error: errorInfo(err) });
  }
}

let buffered = Buffer.alloc(0);
channel.on('data', (chunk) => {
  buffered = Buffer.concat([buffered, chunk]);
  while (buffered.length >= 4) {
    const length = buffered.readUInt32BE(0);
    if (buffered.length < 4 + length) break;
    const message = JSON.parse(buffered.subarray(4, 4 + length).toString('utf8'));
    buffered = buffered.subarray(4 + length);
    if (message.type === 'load') load(message);
    else if (message.type === 'invoke') {
      queued.push(message);
      runQueued();
    }
  }
});
// Yun closed its end: the instance is no longer wanted.
channel.on('end', () => process.exit(0));
channel.on('error', () => process.exit(0));

send({ type: 'ready', v: PROTOCOL_VERSION, pid: process.pid, node: process.version, preloaded: [...layerResolved.keys()] });
