// Two `yun serve` nodes of one cluster: one PostgreSQL schema, one NATS server, one shared
// file store, each node with a data folder of its own. What one node is told, the other
// knows: a function deployed through one runs on the other, a redeploy, a revoked key or a
// disabled user takes effect on both at once, documents and files are the same on both.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { startYun, waitFor, deleteStreams } = require('../lib/yun');

const POSTGRES = process.env.YUN_TEST_POSTGRES_URL || 'postgres://postgres@127.0.0.1:5432/test';
const NATS = process.env.YUN_TEST_NATS_URL || 'nats://127.0.0.1:4222';
const tag = `${process.pid.toString(36)}${Date.now().toString(36)}`;
const KEY = { secretId: `AKIDcluster${tag}`, secretKey: `cluster-secret-${tag}` };
const shared = fs.mkdtempSync(path.join(os.tmpdir(), 'yun-cluster-'));
const clusterEnv = {
  YUN_DATABASE_URL: POSTGRES,
  YUN_POSTGRES_SCHEMA: `yc_${tag}`,
  YUN_EVENTS: `${NATS}/yc${tag}`,
  YUN_STORAGE: path.join(shared, 'files'),
  YUN_PLATFORM_SECRET_ID: KEY.secretId,
  YUN_PLATFORM_SECRET_KEY: KEY.secretKey,
};

let a;
let b;

test.before(async () => {
  fs.mkdirSync(clusterEnv.YUN_STORAGE);
  // Started together: one of them initializes the database, the other finds it done.
  [a, b] = await Promise.all([
    startYun([], { command: 'serve', env: { ...clusterEnv, YUN_NODE_NAME: 'a' }, key: KEY }),
    startYun([], { command: 'serve', env: { ...clusterEnv, YUN_NODE_NAME: 'b' }, key: KEY }),
  ]);
});

test.after(async () => {
  await Promise.all([a && a.stop(), b && b.stop()]);
  await deleteStreams(NATS, `yc${tag}`);
  spawnSync('psql', [POSTGRES, '-q', '-c', `DROP SCHEMA IF EXISTS ${clusterEnv.YUN_POSTGRES_SCHEMA} CASCADE`], { stdio: 'ignore' });
  fs.rmSync(shared, { recursive: true, force: true });
});

const greeting = async (node, name) => {
  const res = await node.admin().callFunction({ name, data: {} });
  return res.result.env.GREETING;
};

test('both nodes serve the configured platform key and say which node they are', async () => {
  assert.match(a.output(), /Node {8}a/);
  assert.match(b.output(), /Node {8}b/);
  assert.doesNotMatch(a.output() + b.output(), new RegExp(KEY.secretKey), 'a configured key is never printed');
  for (const node of [a, b]) {
    const listed = await node.cliJson(['env', 'list']);
    assert.deepEqual(listed.envs.map((e) => e.id), ['dev']);
  }
});

test('a function deployed through one node runs on the other; a redeploy reaches both at once', async () => {
  await a.deploy('echo', 'shared', ['--env-var', 'GREETING=first']);
  assert.equal(await greeting(b, 'shared'), 'first', 'node b loads the version from the object store');
  assert.equal(await greeting(a, 'shared'), 'first');
  await b.deploy('echo', 'shared', ['--env-var', 'GREETING=second']);
  // Both nodes had the first version warm: the next call on either runs the second.
  assert.equal(await greeting(a, 'shared'), 'second');
  assert.equal(await greeting(b, 'shared'), 'second');
  const listed = await a.cliJson(['fn', 'list']);
  assert.equal(listed.functions.find((f) => f.name === 'shared').version, 2);
  await a.cli(['fn', 'delete', 'shared']);
  await assert.rejects(b.admin().callFunction({ name: 'shared', data: {} }), /FUNCTION_NOT_FOUND|not exist/);
});

test('a node that loaded versions deployed elsewhere keeps only the newest two folders', async () => {
  const folders = () => fs.readdirSync(path.join(b.dataDir, 'functions', 'dev', 'churn')).filter((n) => !n.startsWith('.'));
  for (const n of [1, 2, 3, 4]) {
    await a.deploy('echo', 'churn', ['--env-var', `GREETING=v${n}`]);
    assert.equal(await greeting(b, 'churn'), `v${n}`);
    assert.ok(folders().length <= 2, `after version ${n} node b holds ${folders()}`);
  }
  const live = (await a.cliJson(['fn', 'list'])).functions.find((f) => f.name === 'churn');
  assert.ok(folders().includes(live.code_id), 'the live version is one of them');
  await a.cli(['fn', 'delete', 'churn']);
});

test('two nodes deploying one function at once make two versions', async () => {
  const [first, second] = await Promise.all([
    a.deploy('echo', 'raced', ['--env-var', 'GREETING=from-a']),
    b.deploy('echo', 'raced', ['--env-var', 'GREETING=from-b']),
  ]);
  const versions = [first.function.version, second.function.version];
  assert.deepEqual([...versions].sort(), [1, 2]);
  const last = versions[0] === 2 ? 'from-a' : 'from-b';
  assert.equal(await greeting(a, 'raced'), last);
  assert.equal(await greeting(b, 'raced'), last);
});

test('a key revoked through one node stops working on the other at once', async () => {
  const created = await a.cliJson(['key', 'create', '--description', 'cluster']);
  const withKey = { secretId: created.key.secret_id, secretKey: created.key.secret_key };
  await a.admin().database().createCollection('cluster_keys');
  const count = (node) => node.admin(withKey).database().collection('cluster_keys').count();
  assert.equal((await count(b)).total, 0, 'b knows the key (and keeps it in its cache)');
  await a.cliJson(['key', 'revoke', withKey.secretId]);
  await assert.rejects(count(b), { code: 'INVALID_SECRET_ID' });
});

test('a user disabled through one node is refused by the other at once', async () => {
  const post = async (node, route, body) => {
    const res = await fetch(`${node.url}/auth/v1${route}?client_id=${node.envId}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    return res.json();
  };
  const signedUp = await post(a, '/signup', { username: 'erin', password: 'erin-password' });
  const me = (node) => fetch(`${node.url}/auth/v1/user/me`, { headers: { authorization: `Bearer ${signedUp.access_token}` } }).then((r) => r.json());
  assert.equal((await me(b)).name, 'erin', 'b knows the user a created');
  await a.cliJson(['user', 'disable', signedUp.sub]);
  await waitFor(async () => (await me(b)).error === 'permission_denied', 'b to refuse the disabled user', 2000);
  // A refresh token is spent once across the cluster.
  const refreshed = await post(b, '/token', { grant_type: 'refresh_token', refresh_token: signedUp.refresh_token });
  assert.equal(refreshed.error, 'invalid_grant');
});

test('documents and files written through one node are read through the other', async () => {
  await a.admin().database().createCollection('cluster_docs');
  const docs = a.admin().database().collection('cluster_docs');
  const { id } = await docs.add({ n: 1, by: 'a' });
  const seen = await b.admin().database().collection('cluster_docs').doc(id).get();
  assert.deepEqual(seen.data.map((d) => d.by), ['a']);
  await b.admin().database().collection('cluster_docs').doc(id).update({ n: 2 });
  assert.equal((await docs.doc(id).get()).data[0].n, 2);
  await a.admin().uploadFile({ cloudPath: 'cluster/hello.txt', fileContent: Buffer.from('hello from a') });
  const fileID = `cloud://${a.envId}.${a.envId}/cluster/hello.txt`;
  const downloaded = await b.admin().downloadFile({ fileID });
  assert.equal(downloaded.fileContent.toString(), 'hello from a');
});

test('a node\'s /metrics shows its PostgreSQL connection pool', async () => {
  const auth = `Basic ${Buffer.from(`${KEY.secretId}:${KEY.secretKey}`).toString('base64')}`;
  const text = await (await fetch(`${a.url}/metrics`, { headers: { authorization: auth } })).text();
  const gauge = (name) => Number((text.match(new RegExp(`^${name}\\{store="postgres"\\} (\\d+)`, 'm')) || [])[1]);
  const [open, idle, waiting, max] = ['connections', 'idle', 'waiting', 'max'].map((n) => gauge(`yun_store_pool_${n}`));
  assert.ok(open >= 1 && open <= max, `open connections ${open} of ${max}`);
  assert.ok(idle >= 0 && idle <= open, `idle ${idle} of ${open}`);
  assert.equal(waiting, 0, 'nothing waits for a connection on an idle node');
});

test('a node configured with a platform key the database lacks stores it (a first node stopped before storing its key, or a new key)', async () => {
  const other = { secretId: `AKIDother${tag}`, secretKey: `other-secret-${tag}` };
  const c = await startYun([], {
    command: 'serve',
    env: { ...clusterEnv, YUN_NODE_NAME: 'c', YUN_PLATFORM_SECRET_ID: other.secretId, YUN_PLATFORM_SECRET_KEY: other.secretKey },
    key: other,
  });
  try {
    const listed = await c.cliJson(['env', 'list']);
    assert.deepEqual(listed.envs.map((e) => e.id), ['dev']);
    // Stored, so every node knows it, and the first key still works.
    const onA = await a.cliJson(['env', 'list'], { YUN_SECRET_ID: other.secretId, YUN_SECRET_KEY: other.secretKey });
    assert.deepEqual(onA.envs.map((e) => e.id), ['dev']);
    assert.deepEqual((await a.cliJson(['env', 'list'])).envs.map((e) => e.id), ['dev']);
  } finally {
    await c.stop();
  }
});
