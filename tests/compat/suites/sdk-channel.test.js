'use strict';
// The in-function data path (issue 15): the layer SDKs inside a function reach Yun over
// the instance's own channel instead of a signed HTTP request on a new connection. What
// user code sees must not change, and the channel must give a function nothing its own
// credential does not.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startYun, FUNCTIONS } = require('../lib/yun');

let yun;
let otherEnvKey;
before(async () => {
  yun = await startYun();
  const db = yun.admin().database();
  await db.createCollection('paths');
  await db.createCollection('secrets');
  await db.collection('secrets').add({ _id: 's1', text: 'dev only' });
  await yun.deploy('whoami', 'whoami');
  await yun.deploy('sdkpaths', 'sdkpaths', ['--timeout', '30s']);
  await yun.deploy('channelprobe', 'channelprobe', ['--timeout', '30s']);
  const other = await yun.cliJson(['env', 'create', 'other']);
  otherEnvKey = other.key;
  const sealed = await yun.cliJson(['env', 'create', 'sealed']);
  const asSealed = { YUN_ENV: 'sealed', YUN_SECRET_ID: sealed.key.secret_id, YUN_SECRET_KEY: sealed.key.secret_key };
  await yun.cliJson(['env', 'configure', '--network', 'none'], asSealed);
  await yun.deploy('channelprobe', 'channelprobe', [], asSealed);
});
after(async () => yun && yun.stop());

// A sequence id is made per call (`{caller's}-{time}_{counter}`): the caller's part must
// match, the rest differs on every call by design.
function normalised(value) {
  return JSON.parse(JSON.stringify(value, (k, v) => (k === 'TCB_SEQID' && typeof v === 'string' ? v.replace(/-[0-9a-f]+_[0-9a-f]+$/, '-…') : v)));
}

test('every SDK call kind gives byte-identical results over the channel and over HTTP, and the channel opens no HTTP request', async () => {
  const res = await yun.admin().callFunction({ name: 'sdkpaths', data: { transports: ['http', 'channel'] } });
  const { http, channel } = res.result;
  const kinds = Object.keys(http.out);
  assert.ok(kinds.length >= 25, `${kinds.length} call kinds`);
  for (const kind of kinds) {
    assert.equal(JSON.stringify(normalised(channel.out[kind])), JSON.stringify(normalised(http.out[kind])), kind);
  }
  // The battery covers successes and errors of every surface.
  assert.equal(http.out.get.ok.data.at, '1970-01-02T00:00:00.000Z');
  assert.equal(http.out.addDuplicate.error.errCode, -502001);
  assert.match(http.out.otherEnv.error.errMsg, /may not act in env elsewhere/);
  assert.equal(http.out.download.ok, 'one €');
  assert.equal(http.out.callFunction.ok.result.wxContext.SOURCE, 'function');
  assert.equal(http.out.callMissing.error.code, 'FUNCTION_NOT_FOUND');
  // Over HTTP every call is a request (the upload's and download's bytes too); over the
  // channel none is.
  assert.ok(http.adminRequests >= 25, `HTTP side made ${http.adminRequests} /admin requests`);
  assert.ok(http.yunRequests >= http.adminRequests + 2, `HTTP side made ${http.yunRequests} requests`);
  assert.equal(channel.yunRequests, 0);
});

test('the same battery run again over the channel in a warm instance gives the same results', async () => {
  const res = await yun.admin().callFunction({ name: 'sdkpaths', data: { transports: ['channel', 'http'] } });
  const { http, channel } = res.result;
  assert.deepEqual(normalised(channel.out), normalised(http.out));
  assert.equal(channel.yunRequests, 0);
});

test('file bytes (every byte value) go over the channel both ways and arrive whole; a file too large for a frame goes over HTTP', async () => {
  const small = await yun.admin().callFunction({ name: 'channelprobe', data: { kind: 'big-file', bytes: 256 << 10 } });
  assert.deepEqual(small.result, { same: true, bytes: 256 << 10, yunRequests: 0 });
  const big = await yun.admin().callFunction({ name: 'channelprobe', data: { kind: 'big-file', bytes: 17 << 20 } });
  assert.deepEqual(big.result, { same: true, bytes: 17 << 20, yunRequests: 2 });
});

test('hostile: a call forged over the channel cannot act in another env (query or body)', async () => {
  for (const kind of ['other-env-query', 'other-env-body']) {
    const res = await yun.admin().callFunction({ name: 'channelprobe', data: { kind, target: 'other' } });
    assert.equal(res.result.code, 'PERMISSION_DENIED', kind);
    assert.match(res.result.message, /may not act in env other/);
    assert.equal(res.result.data, undefined);
  }
  const missing = await yun.admin().callFunction({ name: 'channelprobe', data: { kind: 'other-env-query', target: 'nowhere' } });
  assert.equal(missing.result.code, 'PERMISSION_DENIED');
});

test("hostile: a forged credential in the body changes nothing (another env's key, a made-up session token)", async () => {
  const res = await yun.admin().callFunction({
    name: 'channelprobe',
    data: { kind: 'forged-credential', target: 'other', secretId: otherEnvKey.secret_id, secretKey: otherEnvKey.secret_key, sessionToken: 'forged' },
  });
  assert.equal(res.result.code, 'PERMISSION_DENIED');
});

test("hostile: a call over the channel cannot claim an end user's identity", async () => {
  const signIn = await fetch(`${yun.url}/auth/v1/signin/anonymously?client_id=${yun.envId}`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: '{}' });
  const { access_token: token } = await signIn.json();
  assert.ok(token);
  const res = await yun.admin().callFunction({ name: 'channelprobe', data: { kind: 'as-user', token, uid: 'victim-user' } });
  const whoami = JSON.parse(res.result.data.response_data);
  assert.equal(whoami.wxContext.OPENID, '');
  assert.equal(whoami.wxContext.SOURCE, 'function');
  assert.equal(whoami.userInfo.uid, '');
});

test('hostile: a file transfer over the channel needs the same signature as over HTTP', async () => {
  await yun.admin().uploadFile({ cloudPath: 'private/secret.txt', fileContent: Buffer.from('TRANSFER-SECRET') });
  for (const env of [yun.envId, 'other']) {
    const res = await yun.admin().callFunction({ name: 'channelprobe', data: { kind: 'unsigned-download', env, path: 'private/secret.txt' } });
    assert.equal(res.result.status, 403, JSON.stringify(res.result));
    assert.doesNotMatch(res.result.body, /TRANSFER-SECRET/);
  }
});

test('hostile: a flood of calls over the channel is answered in full, with back-pressure, and the instance stays healthy', async () => {
  const res = await yun.admin().callFunction({ name: 'channelprobe', data: { kind: 'flood', n: 2000 } });
  assert.equal(res.result.answered, 2000);
  const after = await yun.admin().callFunction({ name: 'channelprobe', data: { kind: 'plain-query' } });
  assert.equal(after.result.ok.total, 1);
});

test('an env with no network gets no channel: its SDK calls fail as they did over HTTP', async () => {
  const sealed = yun.admin({ env: 'sealed' });
  const marker = await sealed.callFunction({ name: 'channelprobe', data: { kind: 'marker' } });
  assert.equal(marker.result.marker, false);
  const plain = await sealed.callFunction({ name: 'channelprobe', data: { kind: 'plain-query' } });
  assert.ok(plain.result.error, JSON.stringify(plain.result));
  assert.match(JSON.stringify(plain.result.error), /ECONNREFUSED|connect/);
});

test('a function that ships its own copy of the node-sdk uses that copy, over HTTP, and it works', async () => {
  // The copy is shipped in the archive's node_modules (a layer package is never installed
  // at deploy), as a user vendoring the SDK does.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'yun-ownsdk-'));
  for (const file of ['index.js', 'package.json']) fs.copyFileSync(path.join(FUNCTIONS, 'ownsdk', file), path.join(dir, file));
  execFileSync('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--omit=dev', '--loglevel=error'], { cwd: dir });
  const deployed = await yun.cli(['fn', 'deploy', dir, '--name', 'ownsdk', '--timeout', '30s']);
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(deployed.code, 0, deployed.stderr);
  const res = await yun.admin().callFunction({ name: 'ownsdk', data: {} });
  assert.ok(res.result.resolved.startsWith(`${res.result.cwd}/node_modules/@cloudbase/node-sdk/`), res.result.resolved);
  assert.equal(res.result.total, 1);
  assert.ok(res.result.adminRequests >= 1);
});
