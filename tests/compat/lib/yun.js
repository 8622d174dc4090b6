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
function postgresEnv(dataDir) {
  if (!POSTGRES) return {};
  const hash = require('node:crypto').createHash('sha256').update(path.resolve(dataDir)).digest('hex');
  const schema = `yt_${hash.slice(0, 16)}`;
  if (schemas.size === 0) {
    process.on('exit', () => {
      const drops = [...schemas].map((s) => `DROP SCHEMA IF EXISTS ${s} CASCADE;`).join(' ');
      require('node:child_process').spawnSync('psql', [POSTGRES, '-q', '-c', drops], { stdio: 'ignore' });
    });
  }
  schemas.add(schema);
  return { YUN_DATABASE_URL: POSTGRES, YUN_POSTGRES_SCHEMA: schema };
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

/**
 * Starts `yun dev`. With `cwd`, it runs there with the default relative data dir, as a
 * newcomer types it. `command: 'serve'` starts a cluster node instead (its database and
 * the rest come from `env`); `key` is the platform key to use when the node did not
 * create one (every node but a cluster's first).
 */
async function startYun(extraArgs = [], { dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'yun-compat-')), cwd, installLayer = false, env = {}, command = 'dev', key } = {}) {
  const dataArgs = cwd ? [] : ['--data-dir', dataDir];
  if (cwd) dataDir = path.join(cwd, '.yun');
  // By default the suites lend Yun their pinned SDKs; `installLayer` leaves Yun to install
  // its own from the registry, as on a newcomer's first start.
  const layerArgs = installLayer ? [] : ['--node-layer', LAYER];
  const database = command === 'dev' ? postgresEnv(dataDir) : {};
  const child = spawn(BIN, [command, ...dataArgs, '--listen', '127.0.0.1:0', ...layerArgs, ...extraArgs], {
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
      const r = await yun.cli([...args, '--json'], env);
      if (r.code !== 0) throw new Error(`yun ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
      return JSON.parse(r.stdout);
    },
    /** Deploys tests/compat/functions/<dir> as <name> with extra CLI flags. */
    deploy(dir, name, flags = [], env) {
      return yun.cliJson(['fn', 'deploy', path.join(FUNCTIONS, dir), '--name', name, ...flags], env);
    },
    /** Log lines of one invocation, via `yun fn logs --json` (one JSON object a line). */
    async logs(name, requestId) {
      const r = await yun.cli(['fn', 'logs', name, '--request-id', requestId, '--json']);
      if (r.code !== 0) throw new Error(`yun fn logs failed: ${r.stderr}`);
      return r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    },
    async stop(signal = 'SIGINT') {
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
  return yun;
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

module.exports = { startYun, sleep, waitFor, instanceGone, BIN, FUNCTIONS };
