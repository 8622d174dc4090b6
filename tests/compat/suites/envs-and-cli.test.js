'use strict';
// Envs are the isolation boundary; keys belong to one env; the CLI speaks plainly;
// restarts keep everything and Ctrl-C stops cleanly.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { startYun, waitFor, instanceGone } = require('../lib/yun');

let yun;
let keyB;
before(async () => {
  yun = await startYun();
  await yun.deploy('echo', 'echo');
  await yun.deploy('crossenv', 'crossenv');
  const created = await yun.cliJson(['env', 'create', 'b']);
  assert.equal(created.env.id, 'b');
  keyB = { secretId: created.key.secret_id, secretKey: created.key.secret_key };
});
after(async () => yun && yun.stop());

const asB = (extra = {}) => ({ YUN_ENV: 'b', YUN_SECRET_ID: keyB.secretId, YUN_SECRET_KEY: keyB.secretKey, ...extra });

test('a key of env b can neither invoke, list nor read logs in env dev', async () => {
  await assert.rejects(yun.admin({ env: yun.envId, ...keyB }).callFunction({ name: 'echo' }), { code: 'PERMISSION_DENIED' });
  for (const args of [['fn', 'list'], ['fn', 'logs', 'echo'], ['fn', 'invoke', 'echo'], ['key', 'list']]) {
    const r = await yun.cli(args, asB({ YUN_ENV: yun.envId }));
    assert.equal(r.code, 1, args.join(' '));
    assert.match(r.stderr, /^error: PERMISSION_DENIED: /, args.join(' '));
  }
  const res = await fetch(`${yun.url}/api/v1/envs/${yun.envId}/invocations/whatever`, {
    headers: { authorization: 'Basic ' + Buffer.from(`${keyB.secretId}:${keyB.secretKey}`).toString('base64') },
  });
  assert.equal(res.status, 403);
});

test('env b has its own functions; the same name is another function', async () => {
  await assert.rejects(yun.admin({ env: 'b', ...keyB }).callFunction({ name: 'echo' }), { code: 'FUNCTION_NOT_FOUND' });
  await yun.deploy('echo', 'echo', [], asB());
  const inB = await yun.admin({ env: 'b', ...keyB }).callFunction({ name: 'echo', data: { where: 'b' } });
  assert.equal(inB.result.env.TCB_ENV, 'b');
  const listB = await yun.cliJson(['fn', 'list'], asB());
  assert.deepEqual(listB.functions.map((f) => f.name), ['echo']);
  const listDev = await yun.cliJson(['fn', 'list']);
  assert.deepEqual(listDev.functions.map((f) => f.name).sort(), ['crossenv', 'echo']);
});

test("a function's credential works in its own env and nowhere else", async () => {
  const own = await yun.admin().callFunction({ name: 'crossenv', data: { env: yun.envId } });
  assert.equal(own.result.reached, true);
  const other = await yun.admin().callFunction({ name: 'crossenv', data: { env: 'b' } });
  assert.deepEqual([other.result.reached, other.result.code], [false, 'PERMISSION_DENIED']);
});

test('only a platform key creates or deletes envs; env keys see only their env', async () => {
  const r = await yun.cli(['env', 'create', 'c'], asB());
  assert.equal(r.code, 1);
  assert.match(r.stderr, /PERMISSION_DENIED/);
  const seenByB = await yun.cliJson(['env', 'list'], asB());
  assert.deepEqual(seenByB.envs.map((e) => e.id), ['b']);
  const seenByPlatform = await yun.cliJson(['env', 'list']);
  assert.deepEqual(seenByPlatform.envs.map((e) => e.id), ['b', 'dev']);
  const bad = await yun.cli(['env', 'create', 'Not_Valid!']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /invalid env id/);
});

test('the CLI prints tables for people and one error line with a non-zero exit', async () => {
  const table = await yun.cli(['fn', 'list']);
  assert.equal(table.code, 0);
  assert.match(table.stdout.split('\n')[0], /^NAME\s+VERSION\s+TIMEOUT\s+MEMORY\s+MAX\s+BUSY\/IDLE\s+HTTP_PATH$/);
  const missing = await yun.cli(['fn', 'invoke', 'nope']);
  assert.equal(missing.code, 1);
  assert.equal(missing.stderr.trim().split('\n').length, 1);
  assert.match(missing.stderr, /^error: FUNCTION_NOT_FOUND: function nope does not exist in env dev/);
  const badJson = await yun.cli(['fn', 'invoke', 'echo', '--data', '{oops']);
  assert.equal(badJson.code, 1);
  assert.match(badJson.stderr, /the event must be JSON/);
  // The event as a positional argument, like every other command's payload.
  const positional = await yun.cliJson(['fn', 'invoke', 'echo', '{"n":7}']);
  assert.deepEqual(positional.result.event, { n: 7 });
  const unreachable = await yun.cli(['fn', 'list'], { YUN_URL: 'http://127.0.0.1:1' });
  assert.equal(unreachable.code, 1);
  assert.match(unreachable.stderr, /cannot reach Yun at http:\/\/127\.0\.0\.1:1/);
});

test('deleting an env removes its functions and keys', async () => {
  await yun.cliJson(['env', 'create', 'doomed']);
  const key = (await yun.cliJson(['key', 'create'], { YUN_ENV: 'doomed' })).key;
  await yun.deploy('echo', 'echo', [], { YUN_ENV: 'doomed' });
  await yun.cliJson(['env', 'delete', 'doomed']);
  await assert.rejects(yun.admin({ env: 'doomed', secretId: key.secret_id, secretKey: key.secret_key }).callFunction({ name: 'echo' }), { code: 'INVALID_SECRET_ID' });
  const envs = await yun.cliJson(['env', 'list']);
  assert.ok(!envs.envs.some((e) => e.id === 'doomed'));
  assert.ok(!fs.existsSync(`${yun.dataDir}/functions/doomed`));
  const self = await yun.cli(['env', 'delete', yun.envId]);
  assert.equal(self.code, 1, 'the env holding the key in use is not deleted');
});

test('credentials.json is private; Ctrl-C stops instances; a restart keeps everything', async () => {
  const mode = fs.statSync(`${yun.dataDir}/credentials.json`).mode & 0o777;
  assert.equal(mode, 0o600);
  const warm = await yun.admin().callFunction({ name: 'echo', data: { before: 'restart' } });
  const { code, signal } = await yun.stop('SIGINT');
  assert.deepEqual({ code, signal }, { code: 0, signal: null }, yun.output());
  await waitFor(() => instanceGone(warm.result.uid), 'the instance to be stopped with Yun');

  const again = await startYun([], { dataDir: yun.dataDir });
  try {
    assert.equal(again.secretId, yun.secretId, 'the same key after a restart');
    assert.equal(again.secretKey, yun.secretKey);
    const res = await again.admin().callFunction({ name: 'echo', data: { after: 'restart' } });
    assert.equal(res.result.event.after, 'restart');
    const logs = await again.logs('echo', warm.requestId);
    assert.ok(logs.some((l) => l.message.includes('"before":"restart"')), 'logs written before the stop survived it');
    const envs = await again.cliJson(['env', 'list']);
    assert.deepEqual(envs.envs.map((e) => e.id), ['b', 'dev']);
  } finally {
    await again.stop();
  }
});

test('yun dev in a folder with the default relative data dir serves functions', async () => {
  const cwd = fs.mkdtempSync(require('node:path').join(require('node:os').tmpdir(), 'yun-cwd-'));
  const local = await startYun([], { cwd });
  try {
    assert.ok(fs.existsSync(`${cwd}/.yun/credentials.json`));
    await local.deploy('echo', 'echo');
    const res = await local.admin().callFunction({ name: 'echo', data: { from: 'relative data dir' } });
    assert.equal(res.result.event.from, 'relative data dir');
  } finally {
    await local.stop();
  }
});
