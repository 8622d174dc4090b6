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
const { Readable, Writable } = require('stream');

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
// Reads of the native object cost a getenv and a fresh string each, and the SDKs read
// dozens of variables per call, so reads are served from a plain copy; writes go to both.
const ownEnv = process.env;
const ownCopy = Object.assign(Object.create(null), ownEnv);
// Bumped whenever the environment the SDKs see changes (see the tcbcontext patch).
let envGeneration = 0;
function setOwnVar(key, value) {
  ownEnv[key] = value;
  ownCopy[key] = ownEnv[key]; // as the native object stored it (a string)
  envGeneration++;
}
const layered = (key) => typeof key === 'string' && Object.hasOwn(invocationEnv, key);
// TRACEPARENT comes empty when it is the event's own: a trace Yun started is named by
// the request id, and the invocation's span by the id's last 16 digits (sending it
// would change a variable on every event).
function layeredValue(key) {
  const value = invocationEnv[key];
  if (value !== '' || key !== 'TRACEPARENT' || current === null) return value;
  return `00-${current}-${current.slice(16)}-01`;
}
process.env = new Proxy(ownEnv, {
  get: (target, key) => (layered(key) ? layeredValue(key) : ownCopy[key]),
  has: (target, key) => layered(key) || key in ownCopy,
  set: (target, key, value) => {
    if (layered(key)) setInvocationVar(key, `${value}`);
    else setOwnVar(key, value);
    return true;
  },
  deleteProperty: (target, key) => {
    if (layered(key)) unsetInvocationVar(key);
    delete ownCopy[key];
    envGeneration++;
    return delete target[key];
  },
  ownKeys: (target) => [...new Set([...Reflect.ownKeys(target), ...Object.keys(invocationEnv)])],
  getOwnPropertyDescriptor: (target, key) => (layered(key)
    ? { value: layeredValue(key), writable: true, enumerable: true, configurable: true }
    : Reflect.getOwnPropertyDescriptor(target, key)),
});

function frame(header, payload) {
  // A transfer's body is bytes, never text.
  if (Buffer.isBuffer(payload)) {
    const head = Buffer.from(`${JSON.stringify(header)}\n`);
    const length = Buffer.allocUnsafe(4);
    length.writeUInt32BE(head.length + payload.length, 0);
    return Buffer.concat([length, head, payload]);
  }
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

// The level of a line is the console method that wrote it; bare writes to stdout are
// info, to stderr error (Yun decides those).
let consoleLevel;
for (const [method, level] of [['debug', 'debug'], ['trace', 'debug'], ['log', 'info'], ['info', 'info'], ['warn', 'warn'], ['error', 'error']]) {
  const original = console[method];
  console[method] = function leveled(...args) {
    consoleLevel = level;
    try { return original.apply(this, args); } finally { consoleLevel = undefined; }
  };
}

for (const stream of ['stdout', 'stderr']) {
  process[stream].write = function write(chunk, encoding, callback) {
    const data = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
    send(consoleLevel ? { type: 'log', stream, data, level: consoleLevel } : { type: 'log', stream, data });
    const done = typeof encoding === 'function' ? encoding : callback;
    if (typeof done === 'function') process.nextTick(done);
    return true;
  };
}

// The platform layer: SDKs Yun provides (as SCF provides wx-server-sdk). A stem cell
// loads them before it knows its function; a bare `require` of one resolves to the
// preloaded copy so the user's cold start does not pay for it again, unless the function
// ships its own copy (in its code folder: not a folder another function could write to,
// such as $HOME/.node_modules).
const layerDir = process.env.YUN_NODE_LAYER || '';
const layerPackages = ['wx-server-sdk', '@cloudbase/node-sdk'];
const layerResolved = new Map();
const layerRequire = layerDir ? Module.createRequire(path.join(layerDir, 'package.json')) : null;
if (layerRequire) {
  for (const name of layerPackages) {
    try {
      layerResolved.set(name, layerRequire.resolve(name));
    } catch (_) { /* not in the layer: the function must ship it */ }
  }
}
const originalResolve = Module._resolveFilename;
let codeDir = null;
Module._resolveFilename = function resolveFilename(request, parent, isMain, options) {
  const layered = layerResolved.get(request);
  if (layered === undefined) return originalResolve.call(this, request, parent, isMain, options);
  if (codeDir !== null && parent && parent.filename && parent.filename.startsWith(codeDir)) {
    try {
      const own = originalResolve.call(this, request, parent, isMain, options);
      if (own.startsWith(codeDir)) return own;
    } catch (_) { /* not shipped: the layer's */ }
  }
  return layered;
};

// The in-function data path (yun-functions/src/api.rs). Inside SCF the node-sdk opens a
// new connection for every call, signs it with TC3 and runs it through a generic HTTP
// stack: 1–1.5 ms of CPU per database call here. The layer's copies of the SDK instead
// send their calls to Yun over this channel while an event runs: Yun knows which function
// is calling from the channel itself, so nothing is signed. Only calls made with the
// function's own credential to Yun's own URL go this way; any other (a key of the user's,
// a proxy, another server) and every call from a copy of the SDK the function ships itself
// go over HTTP as before. A call without retries takes a short way past the SDK's request
// stack (shortCall); the others keep it and only change transport (callOverChannel). What
// the caller sees (params, sequence ids, timeouts, errors) is the SDK's own in both.
const VIA_CHANNEL = Symbol('yun.viaChannel');
let adminUrlPrefix = null; // `${Yun's /admin URL}?` once loaded with the channel
let filesUrlPrefix = null; // `${Yun's URL}/files/`, likewise
// A cluster's public `${URL}/files/` (its load balancer's) and this node's: a link made for
// clients that the layer's SDK follows goes to the node, which the sandbox can reach.
let publicFilesPrefix = null;
let nodeFilesPrefix = null;
function toOwnNode(opts) {
  if (publicFilesPrefix === null || nodeFilesPrefix === null || !opts || typeof opts.url !== 'string'
    || !opts.url.startsWith(publicFilesPrefix)) return opts;
  return { ...opts, url: nodeFilesPrefix + opts.url.slice(publicFilesPrefix.length) };
}
const pendingCalls = new Map();
let nextCallId = 1;

// Calls may go over the channel now: an event runs, this instance has the channel, and
// the function has not asked for HTTP.
function channelOpen() {
  return current !== null && adminUrlPrefix !== null && process.env.YUN_SDK_TRANSPORT !== 'http';
}

// A requester config with nothing of the user's own that the channel would bypass: an
// access key, a proxy, a cross-account credential.
function plainConfig(config, opts) {
  return !config.accessKey && !config.proxy && !opts.getCrossAccountInfo && !config.getCrossAccountInfo;
}

function isOwnCredential(config) {
  return config.secretId === process.env.TENCENTCLOUD_SECRETID
    && config.secretKey === process.env.TENCENTCLOUD_SECRETKEY;
}

function callsYunAsFunction(requester, method, url) {
  const config = requester.config || {};
  return channelOpen() && method === 'post'
    && typeof url === 'string' && url.startsWith(adminUrlPrefix)
    && !requester.args.isFormData && plainConfig(config, requester.opts || {})
    && isOwnCredential(config);
}

function transfersToYun(opts) {
  return channelOpen() && opts && !opts.proxy
    && typeof opts.url === 'string' && opts.url.startsWith(filesUrlPrefix)
    && /^(get|put)$/i.test(opts.method || '') && !opts.formData;
}

// The requester config a short call uses (the SDK's, with the function's credential where
// it has none: its prepareCredentials), or null when the call must take the SDK's own way.
function shortCallConfig(args) {
  if (!channelOpen()) return null;
  const config = args.config || {};
  const opts = args.opts || {};
  const action = args.params && args.params.action;
  if (args.method !== 'post' || args.isFormData || typeof action !== 'string' || action.startsWith('wx.')) return null;
  if (!plainConfig(config, opts)) return null;
  if (opts.retryOptions || (config.retries && typeof config.retries === 'number')) return null;
  const injected = adminUrlPrefix.slice(0, -1);
  if ((config.serviceUrl || injected) !== injected) return null;
  if (config.secretId && config.secretKey) return isOwnCredential(config) ? config : null;
  const env = process.env;
  return { ...config, secretId: env.TENCENTCLOUD_SECRETID, secretKey: env.TENCENTCLOUD_SECRETKEY, sessionToken: env.TENCENTCLOUD_SESSIONTOKEN };
}

async function shortCall(args, config, proto, tracing, utils) {
  const opts = args.opts || {};
  const { action } = args.params;
  const { seqId } = tracing.generateTracingInfo(config.context && config.context.eventID);
  const params = await proto.makeParams.call({ args, opts, config });
  const target = `/admin?env=${params.envName || ''}&seqId=${seqId}`;
  const url = `${adminUrlPrefix}${target.slice('/admin?'.length)}`;
  const slow = action.startsWith('database') && process.env.SILENCE !== 'true'
    ? setTimeout(() => console.warn(`[TCB][WARN] Your current request ${action || ''} is longer than 3s, it may be due to the network or your query performance | [${seqId}]`), 3000)
    : null;
  const result = await new Promise((resolve, reject) => {
    adminCall(target, JSON.stringify(params), opts.timeout || config.timeout || 15000, url, (err, body) => {
      if (slow !== null) clearTimeout(slow);
      if (err) reject(err);
      else resolve(body);
    });
  });
  return result && result.code ? utils.processReturn(result) : result;
}

// request-core's error for a response that did not come in time, as its callers test it.
function requestTimeout(url) {
  const err = new Error('request timeout');
  err.code = 'ESOCKETTIMEDOUT';
  err.reusedSocket = true;
  err.hasConnected = true;
  err.connecting = false;
  err.url = url;
  return err;
}

// Sends one /admin call; `done(err, body)` gets its answer parsed, or request-core's
// timeout error.
function adminCall(target, bodyText, timeout, url, done) {
  const id = nextCallId++;
  let timer = null;
  pendingCalls.set(id, (answer) => {
    if (timer !== null) clearTimeout(timer);
    const text = answer.payload || '';
    let body;
    try {
      body = text.length === 0 ? undefined : JSON.parse(text);
    } catch (err) {
      done(err);
      return;
    }
    done(null, body);
  });
  if (timeout) {
    timer = setTimeout(() => {
      pendingCalls.delete(id);
      done(requestTimeout(url));
    }, timeout);
  }
  sendSoon({ type: 'api', id, target }, bodyText);
}

// request-core's signature, for calls the SDK's requester prepared itself.
function callOverChannel(opts, done) {
  const target = `/admin?${opts.url.slice(adminUrlPrefix.length)}`;
  adminCall(target, JSON.stringify(opts.body), opts.timeout, opts.url, (err, body) => {
    if (err) done(err);
    else done(null, { statusCode: 200, headers: { 'content-type': 'application/json' } }, body);
  });
}

// The bytes of an upload (PUT) or a download (GET) to Yun's own /files, over the channel:
// what request-core's caller sees is what request-core would give it (the status, the
// headers, the body as its `type` asks), and a body too large for a frame goes over HTTP.
const TRANSFER_LIMIT = 16 << 20;
function transferOverChannel(opts, done, overHttp) {
  const method = opts.method.toUpperCase();
  const headers = {};
  for (const [k, v] of Object.entries(opts.headers || {})) if (v !== undefined) headers[k.toLowerCase()] = String(v);
  const target = opts.url.slice(filesUrlPrefix.length - '/files/'.length);
  const send = (body) => {
    const id = nextCallId++;
    pendingCalls.set(id, (answer) => {
      if (answer.fallback) {
        const req = overHttp(opts, done);
        if (method !== 'GET') req.end(body);
        return;
      }
      const res = Readable.from(answer.body.length > 0 ? [answer.body] : []);
      res.statusCode = answer.status;
      res.headers = answer.headers || {};
      if (opts.type === 'stream') done(null, res, undefined);
      else if (opts.type === 'rawStream') done(null, res, res);
      else if (opts.encoding) done(null, res, answer.body.toString(opts.encoding));
      else if (opts.type === 'json' || opts.json) {
        let parsed;
        try {
          parsed = answer.body.length === 0 ? undefined : JSON.parse(answer.body.toString());
        } catch (err) {
          done(err);
          return;
        }
        done(null, res, parsed);
      } else done(null, res, answer.body);
    });
    sendSoon({ type: 'api', id, target, method, headers }, body);
  };
  // request-core ends a GET itself; a PUT is ended by whoever pipes the bytes into it.
  const sink = new Writable({
    write(chunk, encoding, callback) {
      this.chunks.push(chunk);
      callback();
    },
    final(callback) {
      const body = Buffer.concat(this.chunks);
      if (body.length > TRANSFER_LIMIT) {
        const req = overHttp(opts, done);
        req.on('error', (err) => sink.emit('error', err));
        req.end(body);
      } else send(body);
      callback();
    },
  });
  sink.chunks = [];
  if (method === 'GET') sink.end();
  return sink;
}

const sdkPatches = {
  // The SDK rebuilds its view of the environment (a dozen variables, two key lists) several
  // times per call; it changes only when the environment does.
  'utils/tcbcontext.js': (exports) => {
    const compute = exports.getCloudbaseContext;
    const computeUrl = exports.getServerInjectUrl;
    if (typeof compute !== 'function' || typeof computeUrl !== 'function') return;
    let cached = null;
    let cachedAt = -1;
    exports.getCloudbaseContext = function getCloudbaseContext(context) {
      if (context !== undefined) return compute(context);
      if (cachedAt !== envGeneration) {
        cached = compute();
        cachedAt = envGeneration;
      }
      return { ...cached };
    };
    let url = '';
    let urlAt = -1;
    exports.getServerInjectUrl = function getServerInjectUrl() {
      if (urlAt !== envGeneration) {
        url = computeUrl();
        urlAt = envGeneration;
      }
      return url;
    };
  },
  'utils/tcbapirequester.js': (exports, filename) => {
    const proto = exports.TcbApiHttpRequester && exports.TcbApiHttpRequester.prototype;
    if (!proto || typeof proto.getHeaders !== 'function' || typeof exports.request !== 'function') return;
    // The requester's headers carry the TC3 signature: not made for the channel.
    const signedHeaders = proto.getHeaders;
    proto.getHeaders = function getHeaders(method, url, params) {
      if (callsYunAsFunction(this, method, url)) return { [VIA_CHANNEL]: true };
      return signedHeaders.call(this, method, url, params);
    };
    // Most of a call's cost in the SDK (about 85 µs of CPU of 90, measured) is its
    // generic request stack: tracing, timings, retries, the HTTP client. A call without
    // retries takes a short way over the channel that keeps what the caller sees: the
    // SDK's own params (its makeParams), sequence id and timeout, the slow-call warning,
    // and processReturn on an error code.
    const utilsDir = path.dirname(filename);
    let tracing;
    let utils;
    try {
      tracing = require(path.join(utilsDir, 'tracing.js'));
      utils = require(path.join(utilsDir, 'utils.js'));
    } catch (_) {
      return;
    }
    if (typeof tracing.generateTracingInfo !== 'function' || typeof utils.processReturn !== 'function') return;
    const sdkRequest = exports.request;
    exports.request = function request(args) {
      const config = shortCallConfig(args);
      return config === null ? sdkRequest(args) : shortCall(args, config, proto, tracing, utils);
    };
  },
  // The transport under the SDK's retries and timings.
  'utils/request-core.js': (exports) => {
    const httpRequest = exports.request;
    if (typeof httpRequest !== 'function') return;
    exports.request = function request(given, done) {
      if (given && given.headers && given.headers[VIA_CHANNEL]) return callOverChannel(given, done);
      const opts = toOwnNode(given);
      if (transfersToYun(opts)) return transferOverChannel(opts, done, httpRequest);
      return httpRequest(opts, done);
    };
  },
};
// Patched as they are compiled, whether a stem cell preloads them or the function
// requires them later.
const patchesByFile = new Map();
for (const main of layerResolved.values()) {
  const copies = [main];
  try {
    copies.push(Module.createRequire(main).resolve('@cloudbase/node-sdk'));
  } catch (_) { /* wx-server-sdk without a copy of its own */ }
  for (const copy of copies) {
    if (!copy.endsWith(`${path.sep}dist${path.sep}index.js`)) continue;
    const dist = path.dirname(copy);
    for (const [file, patch] of Object.entries(sdkPatches)) patchesByFile.set(path.join(dist, file), patch);
  }
}
if (patchesByFile.size > 0) {
  const compile = Module.prototype._compile;
  Module.prototype._compile = function patchedCompile(content, filename) {
    const result = compile.call(this, content, filename);
    const patch = patchesByFile.get(filename);
    if (patch) patch(this.exports, filename);
    return result;
  };
}
if (layerRequire && process.env.YUN_PRELOAD === '1') {
  for (const name of layerResolved.keys()) {
    try { layerRequire(name); } catch (_) { /* reported when the function requires it */ }
  }
}

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
  for (const [k, v] of Object.entries(message.env || {})) setOwnVar(k, v);
  let adminUrl = null;
  try {
    adminUrl = JSON.parse(ownEnv.TCB_CONTEXT_CNFG).URL;
  } catch (_) { /* no URL to recognise: everything goes over HTTP */ }
  if (typeof adminUrl === 'string') {
    nodeFilesPrefix = `${adminUrl.replace(/\/admin$/, '')}/files/`;
    if (message.public_url) publicFilesPrefix = `${message.public_url}/files/`;
    if (message.sdk_channel) {
      adminUrlPrefix = `${adminUrl}?`;
      filesUrlPrefix = nodeFilesPrefix;
    }
  }
  process.chdir(message.code_dir);
  codeDir = `${process.cwd()}${path.sep}`;
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

// SCF's `context.environment`: the event's variables minus the credential (and Yun's
// TRACEPARENT, which SCF does not have), as JSON text with sorted keys. Usually only
// TCB_SEQID (and TRACEPARENT) change from one event to the next, so the text around
// TCB_SEQID's value is kept, and rebuilt only when another variable changes.
const SEQ_ID = 'TCB_SEQID';
const TRACEPARENT = 'TRACEPARENT';
let environmentAround = null; // [before, after] TCB_SEQID's value; null when stale
const isCredential = (k) => k.startsWith('TENCENTCLOUD_SECRET') || k === 'TENCENTCLOUD_SESSIONTOKEN';
const notInContext = (k) => isCredential(k) || k === TRACEPARENT;
const entryText = (k) => `${JSON.stringify(k)}:${JSON.stringify(invocationEnv[k])}`;

function setInvocationVar(key, value) {
  envGeneration++;
  const known = Object.hasOwn(invocationEnv, key);
  const perEvent = key === SEQ_ID || key === TRACEPARENT;
  if (!known || (!perEvent && invocationEnv[key] !== value)) environmentAround = null;
  invocationEnv[key] = value;
}
function unsetInvocationVar(key) {
  envGeneration++;
  if (Object.hasOwn(invocationEnv, key)) environmentAround = null;
  delete invocationEnv[key];
}

function environmentText() {
  if (environmentAround === null) {
    const keys = Object.keys(invocationEnv).filter((k) => !notInContext(k)).sort();
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
    if (headerEnd < end && message.status === undefined) message.payload = buffered.toString('utf8', headerEnd + 1, end);
    offset = end;
    if (message.type === 'api_result') {
      const answer = pendingCalls.get(message.id);
      pendingCalls.delete(message.id);
      // A transfer's body is bytes: copied out of the reused read buffer.
      if (message.status !== undefined) message.body = Buffer.from(buffered.subarray(Math.min(headerEnd + 1, end), end));
      if (answer) answer(message);
    } else if (message.type === 'load') load(message);
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
