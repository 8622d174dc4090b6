'use strict';
// Yun's Node.js instance bootstrap, shipped inside the yun binary.
// Protocol v2 over fd 0, a Unix socket pair whose other end Yun holds: each frame is a
// u32 big-endian length, a JSON header, and for an event or a result, `\n` and its JSON
// text (see protocol.rs). One invocation at a time (SCF semantics): Yun may queue the
// next event before this one answers; it starts only after the answer, so an event
// queued behind one that crashes never ran.
// stdout/stderr writes are forwarded as `log` frames so each line is attributed to the
// invocation that wrote it, in order with its result.
const net = require('net');
const path = require('path');
const Module = require('module');

const PROTOCOL_VERSION = 2;
// Reads land in one reused buffer, handed to onFrames: no stream machinery per read.
const readBuffer = Buffer.allocUnsafe(64 * 1024);
const channel = new net.Socket({
  fd: 0,
  readable: true,
  writable: true,
  onread: { buffer: readBuffer, callback: (n, buffer) => onFrames(buffer.subarray(0, n)) },
});

// The per-invocation variables, as Yun last sent them (changed in place: a context
// holds its own copy, as text, in `environment`).
const invocationEnv = {};

// process.env shows them over the process's own environment rather than holding them:
// glibc's setenv keeps every distinct value it is ever given (about 100 bytes per event
// for TCB_SEQID alone, so a busy instance would grow until its memory limit killed it)
// and costs a microsecond or more each. The SDKs read process.env from JS, which sees the
// layer; so do child processes started with the default env. Installed before anything
// is required, so no module keeps the bare object.
const ownEnv = process.env;
const layered = (key) => typeof key === 'string' && Object.hasOwn(invocationEnv, key);
process.env = new Proxy(ownEnv, {
  get: (target, key) => (layered(key) ? invocationEnv[key] : target[key]),
  has: (target, key) => layered(key) || key in target,
  set: (target, key, value) => {
    if (layered(key)) setInvocationVar(key, `${value}`);
    else target[key] = value;
    return true;
  },
  deleteProperty: (target, key) => {
    if (layered(key)) unsetInvocationVar(key);
    return delete target[key];
  },
  ownKeys: (target) => [...new Set([...Reflect.ownKeys(target), ...Object.keys(invocationEnv)])],
  getOwnPropertyDescriptor: (target, key) => (layered(key)
    ? { value: invocationEnv[key], writable: true, enumerable: true, configurable: true }
    : Reflect.getOwnPropertyDescriptor(target, key)),
});

function frame(header, payload) {
  const text = payload === undefined ? JSON.stringify(header) : `${JSON.stringify(header)}\n${payload}`;
  const length = Buffer.byteLength(text);
  const buffer = Buffer.allocUnsafe(4 + length);
  buffer.writeUInt32BE(length, 0);
  buffer.write(text, 4);
  return buffer;
}

// Results wait until the event loop has run everything it can (setImmediate), so events
// answered together cost one write. Other frames go at once, after what waits: output
// written before a hang or a crash still reaches Yun, in order.
let outbox = [];
let flushScheduled = false;
function flush() {
  flushScheduled = false;
  if (outbox.length === 0) return;
  channel.write(outbox.length === 1 ? outbox[0] : Buffer.concat(outbox));
  outbox = [];
}
function send(header, payload) {
  outbox.push(frame(header, payload));
  flush();
}
function sendSoon(header, payload) {
  outbox.push(frame(header, payload));
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flush);
  }
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
let staticContext = {};
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
  // In Yun's sandbox the process starts with only the rights to change its ids, and
  // gives them up here, before any of the function's code runs.
  if (typeof message.uid === 'number') {
    process.setgroups([message.uid]);
    process.setgid(message.uid);
    process.setuid(message.uid);
  }
  staticContext = message.context || {};
  for (const [k, v] of Object.entries(message.env || {})) ownEnv[k] = v;
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

// SCF's `context.environment`: the event's variables minus the credential, as JSON text
// with sorted keys. Usually only TCB_SEQID changes from one event to the next, so the text
// around its value is kept, and rebuilt only when another variable changes.
const SEQ_ID = 'TCB_SEQID';
let environmentAround = null; // [before, after] TCB_SEQID's value; null when stale
const isCredential = (k) => k.startsWith('TENCENTCLOUD_SECRET') || k === 'TENCENTCLOUD_SESSIONTOKEN';
const entryText = (k) => `${JSON.stringify(k)}:${JSON.stringify(invocationEnv[k])}`;

function setInvocationVar(key, value) {
  const known = Object.hasOwn(invocationEnv, key);
  if (!known || (key !== SEQ_ID && invocationEnv[key] !== value)) environmentAround = null;
  invocationEnv[key] = value;
}
function unsetInvocationVar(key) {
  if (Object.hasOwn(invocationEnv, key)) environmentAround = null;
  delete invocationEnv[key];
}

function environmentText() {
  if (environmentAround === null) {
    const keys = Object.keys(invocationEnv).filter((k) => !isCredential(k)).sort();
    const at = keys.indexOf(SEQ_ID);
    if (at === -1) {
      environmentAround = [`{${keys.map(entryText).join(',')}}`, null];
    } else {
      const before = keys.slice(0, at).map(entryText);
      const after = keys.slice(at + 1).map(entryText);
      environmentAround = [
        `{${before.map((e) => `${e},`).join('')}${JSON.stringify(SEQ_ID)}:`,
        `${after.map((e) => `,${e}`).join('')}}`,
      ];
    }
  }
  const [before, after] = environmentAround;
  return after === null ? before : before + JSON.stringify(invocationEnv[SEQ_ID]) + after;
}

// Yun sends only the variables that changed since the event before.
function applyEnv(set, unset) {
  if (set) for (const k of Object.keys(set)) setInvocationVar(k, set[k]);
  if (unset) for (const k of unset) unsetInvocationVar(k);
}

// SCF's context, spelled out rather than spread (one object shape for every event).
function contextFor(requestId) {
  const s = staticContext;
  return {
    request_id: requestId,
    function_name: s.function_name,
    function_version: s.function_version,
    namespace: s.namespace,
    memory_limit_in_mb: s.memory_limit_in_mb,
    time_limit_in_ms: s.time_limit_in_ms,
    callbackWaitsForEmptyEventLoop: s.callbackWaitsForEmptyEventLoop,
    environment: environmentText(),
  };
}

// The instance's high-water mark (getrusage, KiB), which catches peaks inside an
// invocation. Read again only once a millisecond has passed since the last read: the
// syscall sums every thread's CPU time (about 7% of a trivial event's cost), so a
// record may miss at most what the instance allocated in the last millisecond.
let peakRssKb = 0;
let peakReadAt = -Infinity;
function peakRss() {
  const now = performance.now();
  if (now - peakReadAt >= 1) {
    peakRssKb = process.resourceUsage().maxRSS;
    peakReadAt = now;
  }
  return peakRssKb;
}

async function invoke(message) {
  applyEnv(message.env, message.unset);
  current = message.request_id;
  const respond = (header, payload) => {
    header.request_id = message.request_id;
    header.rss_kb = peakRss();
    current = null;
    sendSoon(header, payload);
  };
  try {
    const event = message.payload ? JSON.parse(message.payload) : {};
    const context = contextFor(message.request_id);
    const value = await new Promise((resolve, reject) => {
      // SCF allows both styles: a returned promise/value, or main(event, context, callback).
      const callback = (err, result) => (err ? reject(err) : resolve(result));
      const returned = handler(event, context, callback);
      if (returned && typeof returned.then === 'function') returned.then(resolve, reject);
      else if (returned !== undefined || handler.length < 3) resolve(returned);
    });
    const text = JSON.stringify(value === undefined ? null : value);
    respond({ type: 'result', ok: true }, text === undefined ? 'null' : text);
  } catch (err) {
    respond({ type: 'result', ok: false, error: errorInfo(err) });
  }
}

// `chunk` is a view of the reused read buffer: frames are parsed before this returns, and
// an unfinished frame is copied out.
let buffered = null;
function onFrames(chunk) {
  buffered = buffered ? Buffer.concat([buffered, chunk]) : chunk;
  let offset = 0;
  while (buffered.length - offset >= 4) {
    const end = offset + 4 + buffered.readUInt32BE(offset);
    if (buffered.length < end) break;
    const newline = buffered.indexOf(10, offset + 4);
    const headerEnd = newline === -1 || newline >= end ? end : newline;
    const message = JSON.parse(buffered.toString('utf8', offset + 4, headerEnd));
    if (headerEnd < end) message.payload = buffered.toString('utf8', headerEnd + 1, end);
    offset = end;
    if (message.type === 'load') load(message);
    else if (message.type === 'invoke') {
      queued.push(message);
      runQueued();
    }
  }
  buffered = offset === buffered.length ? null : Buffer.from(buffered.subarray(offset));
}
// Yun closed its end: the instance is no longer wanted.
channel.on('end', () => process.exit(0));
channel.on('error', () => process.exit(0));

send({ type: 'ready', v: PROTOCOL_VERSION, pid: process.pid, node: process.version, preloaded: [...layerResolved.keys()] });
