'use strict';
// The CloudBase /admin protocol as @cloudbase/node-sdk speaks it: invokeFunction,
// envelopes, error codes, and every way a signature can be wrong.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startYun } = require('../lib/yun');

let yun;
before(async () => {
  yun = await startYun();
  await yun.deploy('echo', 'echo', ['--env-var', 'GREETING=hi']);
});
after(async () => yun && yun.stop());

test('callFunction returns the result, the request id, and the SCF context', async () => {
  const res = await yun.admin().callFunction({ name: 'echo', data: { a: 1, s: 'x', nested: { ok: true } } });
  assert.deepEqual(res.result.event, { a: 1, s: 'x', nested: { ok: true } });
  assert.match(res.requestId, /^[0-9a-f]{32}$/);
  const ctx = res.result.context;
  assert.equal(ctx.request_id, res.requestId, 'the envelope requestId is the invocation id');
  assert.equal(ctx.function_name, 'echo');
  assert.equal(ctx.namespace, yun.envId);
  assert.equal(ctx.memory_limit_in_mb, 256);
  assert.equal(ctx.time_limit_in_ms, 3000);
  assert.equal(ctx.environment.TCB_ENV, yun.envId);
  assert.equal(ctx.environment.TENCENTCLOUD_SECRETKEY, undefined, 'the credential is not in context.environment');
  const env = res.result.env;
  assert.equal(env.TCB_ENV, yun.envId);
  assert.equal(env.SCF_NAMESPACE, yun.envId);
  // Functions call the node they run on (one of a cluster's, not its load balancer).
  assert.ok(yun.nodes.map((n) => `${n.url}/admin`).includes(JSON.parse(env.TCB_CONTEXT_CNFG).URL));
  assert.equal(env.GREETING, 'hi');
  assert.equal(env.hasSecretId, true);
  assert.equal(env.secretIdIsTemporary, true, 'functions get a temporary credential, never the admin key');
  assert.deepEqual(env.platformVarsVisible, []);
});

test('callFunction without data sends an empty request_data and the function sees {}', async () => {
  const res = await yun.admin().callFunction({ name: 'echo' });
  assert.deepEqual(res.result.event, {});
});

test('an unknown function is FUNCTION_NOT_FOUND with a request id', async () => {
  await assert.rejects(yun.admin().callFunction({ name: 'missing', data: {} }), (e) => {
    assert.equal(e.code, 'FUNCTION_NOT_FOUND');
    assert.match(e.requestId, /^[0-9a-f]{32}$/);
    return true;
  });
});

/** A raw signed /admin request (the admin protocol always answers HTTP 200). */
async function signedPost(body, opts) {
  const { status, json } = await yun.signedAdmin(body, opts);
  assert.equal(status, 200, 'the admin protocol always answers 200');
  return json;
}

test('a request signed with the real signer passes; unknown actions get INVALID_ACTION', async () => {
  const ok = await signedPost({ action: 'functions.invokeFunction', function_name: 'echo', request_data: '{"k":2}' });
  assert.deepEqual(JSON.parse(ok.data.response_data).event, { k: 2 });
  const unknown = await signedPost({ action: 'nosuch.action' });
  assert.equal(unknown.code, 'INVALID_ACTION');
  assert.ok(unknown.requestId);
});

test('context.environment follows each event on a warm instance', async () => {
  // The SDK and a bare signed request differ in TCB_SOURCE and TCB_SEQID: alternating
  // them on one instance changes one variable, then several, then back.
  const results = [];
  for (let i = 0; i < 3; i++) {
    results.push((await yun.admin().callFunction({ name: 'echo', data: {} })).result);
    const raw = await signedPost({ action: 'functions.invokeFunction', function_name: 'echo', request_data: '{}' });
    results.push(JSON.parse(raw.data.response_data));
  }
  assert.ok(new Set(results.map((r) => r.uid)).size <= yun.nodes.length, 'one warm instance (per node) served them all');
  for (const r of results) {
    assert.equal(r.context.environment.TCB_SEQID, r.env.TCB_SEQID);
    assert.equal(r.context.environment.TCB_SOURCE, r.env.TCB_SOURCE);
    assert.equal(r.context.environment.TCB_ENV, yun.envId);
  }
  assert.equal(results[1].env.TCB_SEQID, 'test_1', 'the caller\'s seqId is continued');
  assert.notEqual(results[0].env.TCB_SEQID, results[2].env.TCB_SEQID);
  assert.notEqual(results[0].env.TCB_SOURCE, results[1].env.TCB_SOURCE);
});

test('a body changed after signing is SIGN_INVALID_ERROR', async () => {
  const changed = await signedPost(
    { action: 'functions.invokeFunction', function_name: 'echo', request_data: '{"k":1}' },
    { mutate: (p) => ({ ...p, request_data: '{"k":999}' }) },
  );
  assert.equal(changed.code, 'SIGN_INVALID_ERROR');
  const added = await signedPost(
    { action: 'functions.invokeFunction', function_name: 'echo' },
    { mutate: (p) => ({ ...p, request_data: '{"smuggled":true}' }) },
  );
  assert.equal(added.code, 'SIGN_INVALID_ERROR');
});

test('an expired timestamp is SIGN_EXPIRED_ERROR', async (t) => {
  const old = await signedPost({ action: 'functions.invokeFunction', function_name: 'echo' }, { timestamp: Math.floor(Date.now() / 1000) - 3600 });
  assert.equal(old.code, 'SIGN_EXPIRED_ERROR');
  // The same through the SDK, its clock 20 minutes behind (only Date is mocked).
  t.mock.timers.enable({ apis: ['Date'], now: Date.now() - 20 * 60 * 1000 });
  try {
    await assert.rejects(yun.admin().callFunction({ name: 'echo' }), { code: 'SIGN_EXPIRED_ERROR' });
  } finally {
    t.mock.timers.reset();
  }
});

test('a wrong SecretKey is SIGN_INVALID_ERROR; an unknown SecretId is INVALID_SECRET_ID', async () => {
  await assert.rejects(yun.admin({ secretKey: 'not-the-key' }).callFunction({ name: 'echo' }), { code: 'SIGN_INVALID_ERROR' });
  await assert.rejects(yun.admin({ secretId: 'AKIDunknown' }).callFunction({ name: 'echo' }), { code: 'INVALID_SECRET_ID' });
});

test('a revoked key stops working at once', async () => {
  const created = await yun.cliJson(['key', 'create', '--description', 'short-lived']);
  const key = { secretId: created.key.secret_id, secretKey: created.key.secret_key };
  const res = await yun.admin(key).callFunction({ name: 'echo', data: { by: 'new key' } });
  assert.equal(res.result.event.by, 'new key');
  await yun.cliJson(['key', 'revoke', key.secretId]);
  await assert.rejects(yun.admin(key).callFunction({ name: 'echo' }), { code: 'INVALID_SECRET_ID' });
});

test('missing or malformed authorization is SIGN_PARAM_INVALID; bad bodies are INVALID_PARAM', async () => {
  const post = (body, headers = {}) =>
    fetch(`${yun.url}/admin?env=${yun.envId}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body }).then(async (r) => {
      assert.equal(r.status, 200);
      return r.json();
    });
  assert.equal((await post('{"action":"functions.invokeFunction"}')).code, 'SIGN_PARAM_INVALID');
  assert.equal((await post('{"action":"x"}', { authorization: 'Bearer nope', 'x-timestamp': '1' })).code, 'SIGN_PARAM_INVALID');
  assert.equal((await post('{not json')).code, 'INVALID_PARAM');
  assert.equal((await post('[1,2]')).code, 'INVALID_PARAM');
  const huge = JSON.stringify({ action: 'functions.invokeFunction', request_data: 'x'.repeat(9 << 20) });
  assert.equal((await post(huge)).code, 'INVALID_PARAM');
});

test('an env that does not exist is INVALIID_ENV (CloudBase spelling)', async () => {
  await assert.rejects(yun.admin({ env: 'nosuchenv' }).callFunction({ name: 'echo' }), { code: 'INVALIID_ENV' });
});
