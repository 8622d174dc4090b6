'use strict';
// Test harness: starts a real `yun dev` on a free loopback port in a temp data dir and
// drives it with the official SDKs and the `yun` CLI.
const { spawn, execFile } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const tcb = require('@cloudbase/node-sdk');
const { sign } = require('@cloudbase/signature-nodejs');

const BIN = process.env.YUN_BIN || path.resolve(__dirname, '../../../target/debug/yun');
// This folder's node_modules holds the pinned SDKs; Yun uses it as its Node layer.
const LAYER = path.resolve(__dirname, '..');
const FUNCTIONS = path.resolve(__dirname, '../functions');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// With YUN_TEST_POSTGRES_URL set, every `yun dev` keeps documents and the file index in
// PostgreSQL (`--database`), in a schema named after its data folder (a restart on the
// same folder finds its data), and the schemas go when the suite's process ends.
const POSTGRES = process.env.YUN_TEST_POSTGRES_URL;
const schemas = new Set();
/** A schema named after a data folder, dropped when this process ends. */
function schemaOf(dataDir, prefix, url) {
  const schema = `${prefix}_${tagOf(dataDir)}`;
  if (schemas.size === 0) {
    process.on('exit', () => {
      const drops = [...schemas].map((s) => `DROP SCHEMA IF EXISTS ${s} CASCADE;`).join(' ');
      require('node:child_process').spawnSync('psql', [url, '-q', '-c', drops], { stdio: 'ignore' });
    });
  }
  schemas.add(schema);
  return schema;
}
function tagOf(dataDir) {
  return require('node:crypto').createHash('sha256').update(path.resolve(dataDir)).digest('hex').slice(0, 16);
}
function postgresEnv(dataDir) {
  if (!POSTGRES) return {};
  return { YUN_DATABASE_URL: POSTGRES, YUN_POSTGRES_SCHEMA: schemaOf(dataDir, 'yt', POSTGRES) };
}

async function waitFor(check, what, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** The SDK, signed-request and CLI clients of a server at `creds.url`. */
function clientOf(creds) {
  const client = {
    /** An @cloudbase/node-sdk app for an env, with a key. */
    admin(opts = {}) {
      return tcb.init({
        env: opts.env || creds.envId,
        secretId: opts.secretId || creds.secretId,
        secretKey: opts.secretKey || creds.secretKey,
        serviceUrl: `${creds.url}/admin`,
        timeout: 30000,
      });
    },
    /**
     * A raw /admin request signed as the node-sdk signs it, for fields no SDK sends;
     * `mutate` changes the body after signing. Resolves {status, json}.
     */
    async signedAdmin(body, { secretId = creds.secretId, secretKey = creds.secretKey, timestamp, mutate } = {}) {
      const url = `${creds.url}/admin?env=${creds.envId}&seqId=test_1`;
      const headers = { 'content-type': 'application/json', host: new URL(creds.url).host, 'user-agent': 'yun-compat' };
      const params = { ...body, envName: creds.envId };
      const ts = timestamp || Math.floor(Date.now() / 1000) - 1;
      const { authorization } = sign({ secretId, secretKey, method: 'post', url, headers, params, timestamp: ts, withSignedParams: true });
      const sent = mutate ? mutate({ ...params }) : params;
      const res = await fetch(url, {
        method: 'POST',
        headers: { ...headers, authorization, 'x-timestamp': String(ts), 'x-signature-expires': '600' },
        body: JSON.stringify(sent),
      });
      return { status: res.status, json: await res.json() };
    },
    /** Runs the yun CLI against this server; resolves {code, stdout, stderr}. */
    cli(args, env = {}) {
      return new Promise((resolve) => {
        execFile(BIN, args, {
          env: { ...process.env, YUN_URL: creds.url, YUN_ENV: creds.envId, YUN_SECRET_ID: creds.secretId, YUN_SECRET_KEY: creds.secretKey, ...env },
          cwd: os.tmpdir(),
          maxBuffer: 64 << 20,
        }, (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout, stderr }));
      });
    },
    async cliJson(args, env) {
      const r = await client.cli([...args, '--json'], env);
      if (r.code !== 0) throw new Error(`yun ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
      return JSON.parse(r.stdout);
    },
    /** Deploys tests/compat/functions/<dir> as <name> with extra CLI flags. */
    deploy(dir, name, flags = [], env) {
      return client.cliJson(['fn', 'deploy', path.join(FUNCTIONS, dir), '--name', name, ...flags], env);
    },
    /** Log lines of one invocation, via `yun fn logs --json` (one JSON object a line). */
    async logs(name, requestId) {
      const r = await client.cli(['fn', 'logs', name, '--request-id', requestId, '--json']);
      if (r.code !== 0) throw new Error(`yun fn logs failed: ${r.stderr}`);
      return r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    },
  };
  return client;
}

/**
 * Starts `yun dev`. With `cwd`, it runs there with the default relative data dir, as a
 * newcomer types it. `command: 'serve'` starts a cluster node instead (its database and
 * the rest come from `env`); `key` is the platform key to use when the node did not
 * create one (every node but a cluster's first); `listen` its address (a free port by default).
 */
async function startYun(extraArgs = [], { dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'yun-compat-')), cwd, installLayer = false, env = {}, command = 'dev', key, listen = '127.0.0.1:0' } = {}) {
  if (CLUSTER && command === 'dev' && !cwd) return startCluster(extraArgs, { dataDir, installLayer, env });
  const dataArgs = cwd ? [] : ['--data-dir', dataDir];
  if (cwd) dataDir = path.join(cwd, '.yun');
  // By default the suites lend Yun their pinned SDKs; `installLayer` leaves Yun to install
  // its own from the registry, as on a newcomer's first start.
  const layerArgs = installLayer ? [] : ['--node-layer', LAYER];
  const database = command === 'dev' ? postgresEnv(dataDir) : {};
  const child = spawn(BIN, [command, ...dataArgs, '--listen', listen, ...layerArgs, ...extraArgs], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, YUN_LOG: 'warn', ...database, ...env },
  });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const credentialsPath = path.join(dataDir, 'credentials.json');
  const creds = await waitFor(async () => {
    if (child.exitCode !== null) throw new Error(`yun exited early:\n${output}`);
    try {
      const c = JSON.parse(fs.readFileSync(credentialsPath, 'utf8'));
      const res = await fetch(`${c.url}/healthz`);
      return res.ok ? c : null;
    } catch (_) {
      return null;
    }
  }, 'yun to start');
  if (key) Object.assign(creds, key);

  const yun = {
    ...creds,
    dataDir,
    child,
    output: () => output,
    ...clientOf(creds),
    async stop(signal = 'SIGINT') {
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
  // A single node is a cluster of one, to suites that look at the nodes.
  yun.nodes = [yun];
  return yun;
}

// With YUN_TEST_CLUSTER=1, what a suite starts as one `yun dev` is a cluster instead:
// three `yun serve` nodes on one PostgreSQL schema, one NATS JetStream prefix and one S3
// bucket (a moto server per suite process), behind Debian's HAProxy balancing every
// request round robin. The suite talks to HAProxy only. Node a keeps its data folder where
// the suite asked; b and c keep theirs beside it. Everything is named after the data
// folder, so a restart on the same folder finds the same cluster.
const CLUSTER = process.env.YUN_TEST_CLUSTER === '1';
const NATS = process.env.YUN_TEST_NATS_URL || 'nats://127.0.0.1:4222';
const CLUSTER_POSTGRES = POSTGRES || 'postgres://postgres@127.0.0.1:5432/test';
const NODE_NAMES = ['a', 'b', 'c'];

async function freePort() {
  const net = require('node:net');
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** An S3 server (moto) on a free port; `env` is what Yun reads to reach it. */
async function startMoto() {
  const port = await freePort();
  const child = spawn('moto_server', ['-H', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' });
  // It ends with this process, and does not keep it running.
  child.unref();
  process.on('exit', () => child.kill());
  const endpoint = `http://127.0.0.1:${port}`;
  await waitFor(async () => {
    try { return (await fetch(endpoint)).status > 0; } catch (_) { return false; }
  }, 'moto_server to start', 30000);
  return {
    child,
    endpoint,
    env: { AWS_ENDPOINT: endpoint, AWS_ALLOW_HTTP: 'true', AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_REGION: 'us-east-1' },
    async bucket(name) {
      const made = await fetch(`${endpoint}/${name}`, { method: 'PUT' });
      if (!made.ok) throw new Error(`creating bucket ${name} failed: ${made.status}`);
    },
  };
}
let clusterS3;

function haproxyConfig(port, statsPort, nodes) {
  // Only a request that never reached a node is retried elsewhere: one a node may have
  // committed before it died is the client's to retry, as it would be in production.
  return `global
  maxconn 2048
defaults
  mode http
  timeout connect 2s
  timeout client 5m
  timeout server 5m
  timeout tunnel 1h
frontend yun
  bind 127.0.0.1:${port}
  default_backend nodes
backend nodes
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  retry-on conn-failure
  option redispatch
${nodes.map((n) => `  server ${n.name} ${n.listen} check inter 300ms fall 2 rise 2`).join('\n')}
listen stats
  bind 127.0.0.1:${statsPort}
  stats enable
  stats uri /stats
`;
}

/** The cluster YUN_TEST_CLUSTER makes of one `yun dev`; `startCluster` is exported for suites that need one anyway. */
async function startCluster(extraArgs = [], { dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'yun-cluster-')), installLayer = false, env = {} } = {}) {
  const tag = tagOf(dataDir);
  clusterS3 = clusterS3 || startMoto();
  const s3 = await clusterS3;
  const bucket = `yk-${tag}`;
  await s3.bucket(bucket);
  const key = { secretId: `AKIDyk${tag}`, secretKey: `yk-secret-${tag}` };
  const clusterEnv = {
    YUN_DATABASE_URL: CLUSTER_POSTGRES,
    YUN_POSTGRES_SCHEMA: schemaOf(dataDir, 'yk', CLUSTER_POSTGRES),
    YUN_EVENTS: `${NATS}/yk${tag}`,
    YUN_STORAGE: `s3://${bucket}`,
    YUN_PLATFORM_SECRET_ID: key.secretId,
    YUN_PLATFORM_SECRET_KEY: key.secretKey,
    ...s3.env,
  };
  const ports = await Promise.all(NODE_NAMES.map(freePort));
  const [port, statsPort] = [await freePort(), await freePort()];
  const url = `http://127.0.0.1:${port}`;
  // The links nodes make (temporary file URLs, uploads) point at HAProxy.
  clusterEnv.YUN_PUBLIC_URL = url;
  const startNode = async (i) => {
    const name = NODE_NAMES[i];
    const nodeDir = i === 0 ? dataDir : `${dataDir}-${name}`;
    fs.mkdirSync(nodeDir, { recursive: true });
    const listen = `127.0.0.1:${ports[i]}`;
    // Nodes on one host run instances as uids of their own, as on hosts of their own.
    const uids = `${6000000 + i * 20000}-${6000000 + i * 20000 + 19999}`;
    const node = await startYun(extraArgs, { command: 'serve', dataDir: nodeDir, listen, installLayer, key, env: { ...clusterEnv, YUN_NODE_NAME: name, YUN_INSTANCE_UIDS: uids, ...env } });
    await waitFor(async () => {
      try { return (await fetch(`${node.url}/readyz`)).ok; } catch (_) { return false; }
    }, `node ${name} to be ready`, 60000);
    return Object.assign(node, { name, listen });
  };
  const nodes = await Promise.all(NODE_NAMES.map((_, i) => startNode(i)));
  const configPath = `${dataDir}-haproxy.cfg`;
  fs.writeFileSync(configPath, haproxyConfig(port, statsPort, nodes));
  const haproxy = spawn('haproxy', ['-W', '-db', '-f', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  let haproxyOutput = '';
  haproxy.stdout.on('data', (d) => (haproxyOutput += d));
  haproxy.stderr.on('data', (d) => (haproxyOutput += d));
  const haproxyExited = new Promise((resolve) => haproxy.on('exit', resolve));
  /** HAProxy's view of each node: {a: {status: 'UP', sessions}, ...}, sessions counted since it started. */
  const states = async () => {
    const csv = await (await fetch(`http://127.0.0.1:${statsPort}/stats;csv`)).text();
    const [header, ...rows] = csv.replace(/^# /, '').trim().split('\n').map((l) => l.split(','));
    const col = (n) => header.indexOf(n);
    return Object.fromEntries(rows.filter((r) => r[col('pxname')] === 'nodes' && NODE_NAMES.includes(r[col('svname')]))
      .map((r) => [r[col('svname')], { status: r[col('status')], sessions: Number(r[col('stot')]) }]));
  };
  await waitFor(async () => {
    if (haproxy.exitCode !== null) throw new Error(`haproxy exited:\n${haproxyOutput}`);
    try {
      return Object.values(await states()).every((s) => s.status === 'UP');
    } catch (_) {
      return false;
    }
  }, 'haproxy to see every node up');

  const first = nodes[0];
  const yun = {
    ...first,
    url,
    ...key,
    dataDir,
    nodes,
    haproxy,
    states,
    output: () => nodes.map((n) => `[node ${n.name}]\n${n.output()}`).join('\n') + haproxyOutput,
    ...clientOf({ url, envId: first.envId, ...key }),
    /** Starts a stopped node again, on its port and data folder. */
    async restart(name) {
      const i = NODE_NAMES.indexOf(name);
      nodes[i] = await startNode(i);
      return nodes[i];
    },
    async stop(signal = 'SIGINT') {
      const [result] = await Promise.all(nodes.map((n) => n.stop(signal)));
      if (haproxy.exitCode === null) haproxy.kill('SIGTERM');
      await haproxyExited;
      await deleteStreams(NATS, `yk${tag}`);
      return result;
    },
  };
  return yun;
}

/**
 * Deletes the JetStream streams (and key-value buckets) Yun made under `prefix` on the
 * NATS at `url` (or, `prefix` a RegExp, under every prefix it matches). Each stream reserves its `max_bytes` of the server's storage: streams
 * left behind by test runs would soon leave none for the next. Speaks the NATS protocol
 * itself (a request is a PUB with a reply subject), so the suites need no NATS client.
 */
async function deleteStreams(url, prefix) {
  const { hostname, port } = new URL(url);
  const sock = require('node:net').connect(Number(port) || 4222, hostname);
  let buffer = '';
  const waiting = [];
  sock.on('data', (d) => {
    buffer += d;
    for (let m; (m = /MSG _INBOX\.yun\.(\d+) \d+ (\d+)\r\n/.exec(buffer));) {
      const start = m.index + m[0].length;
      if (buffer.length < start + Number(m[2])) break;
      const body = buffer.slice(start, start + Number(m[2]));
      buffer = buffer.slice(start + Number(m[2]));
      const w = waiting[Number(m[1])];
      if (w) w(JSON.parse(body));
    }
  });
  await new Promise((resolve, reject) => sock.once('connect', resolve).once('error', reject));
  sock.write('CONNECT {"verbose":false}\r\nSUB _INBOX.yun.* 1\r\n');
  const request = (subject, body = '') => new Promise((resolve, reject) => {
    const id = waiting.length;
    waiting.push(resolve);
    setTimeout(() => reject(new Error(`no answer to ${subject}`)), 5000);
    sock.write(`PUB ${subject} _INBOX.yun.${id} ${Buffer.byteLength(body)}\r\n${body}\r\n`);
  });
  try {
    const { streams } = await request('$JS.API.STREAM.NAMES');
    // `{prefix}_{topic}`, `KV_{prefix}_{bucket}`: the suites' prefixes have no `_`.
    const owner = (s) => s.replace(/^KV_/, '').split('_')[0];
    const ours = (streams || []).filter((s) => (prefix instanceof RegExp ? prefix.test(owner(s)) : owner(s) === prefix));
    for (const name of ours) await request(`$JS.API.STREAM.DELETE.${name}`);
  } finally {
    sock.destroy();
  }
}

/**
 * Whether no process of a sandboxed instance is left on the host. Each live instance runs
 * as a uid of its own (pids inside are those of its own PID namespace), so this checks
 * that no process has that uid, children included.
 */
function instanceGone(uid) {
  for (const pid of fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      const real = Number(/^Uid:\s+(\d+)/m.exec(status)[1]);
      if (real === uid) return false;
    } catch (_) { /* the process ended meanwhile */ }
  }
  return true;
}

module.exports = { CLUSTER, startYun, startCluster, startMoto, deleteStreams, freePort, sleep, waitFor, instanceGone, BIN, FUNCTIONS };
