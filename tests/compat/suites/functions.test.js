'use strict';
// Node.js functions: unmodified wx-server-sdk code, faults, limits, logs, deploys, HTTP.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startYun, sleep, waitFor, instanceGone } = require('../lib/yun');
const { tarGz } = require('../lib/tar');

let yun;
// Instances are a node's: tests of instance reuse, replacement, limits and draining call
// one node (the only one, or the first of a cluster) and deploy through the front.
const oneNode = () => yun.nodes[0].admin();
before(async () => {
  yun = await startYun(['--queue-timeout', '700ms']);
  await yun.deploy('echo', 'echo');
  await yun.deploy('faults', 'faults', ['--timeout', '1500ms', '--memory', '128']);
  await yun.deploy('caller', 'caller');
});
after(async () => yun && yun.stop());

test('wx-server-sdk inside a function calls another function through Yun', async () => {
  const res = await yun.admin().callFunction({ name: 'caller', data: { n: 42 } });
  const { res: inner, wxContext, failure } = res.result;
  assert.equal(inner.errMsg, 'callFunction:ok');
  assert.deepEqual(inner.result.event, { via: 'caller', n: 42 });
  assert.match(inner.requestID, /^[0-9a-f]{32}$/);
  assert.equal(inner.result.context.function_name, 'echo');
  // The callee was reached with the caller's temporary credential, not an admin key.
  assert.equal(inner.result.env.secretIdIsTemporary, true);
  // getWXContext returns the keys Yun injected.
  assert.equal(wxContext.ENV, yun.envId);
  assert.equal(wxContext.OPENID, '');
  assert.equal(wxContext.CLIENTIP, '127.0.0.1');
  assert.ok('SOURCE' in wxContext);
  // A failing callee surfaces through wx-server-sdk as errCode -1 with the message.
  assert.equal(failure.errCode, -1);
  assert.match(failure.errMsg, /callFunction:fail .*Error: boom/);
});

test('instances run as an unprivileged user and are reused while warm', async () => {
  const a = await oneNode().callFunction({ name: 'echo', data: {} });
  const b = await oneNode().callFunction({ name: 'echo', data: {} });
  assert.equal(a.result.uid, b.result.uid, 'the warm instance served both calls');
  if (process.getuid && process.getuid() === 0) assert.notEqual(a.result.uid, 0, 'functions never run as root');
});

test('an event larger than the instance\'s read buffer arrives whole, and the next one after it', async () => {
  // About 1 MB in many reads, multi-byte characters split across read boundaries.
  const text = 'ab€😀'.repeat(100_000);
  const big = await oneNode().callFunction({ name: 'echo', data: { text } });
  assert.equal(big.result.event.text, text);
  const small = await oneNode().callFunction({ name: 'echo', data: { n: 1 } });
  assert.deepEqual(small.result.event, { n: 1 });
  assert.equal(small.result.uid, big.result.uid, 'the same instance read both');
});

async function fault(kind) {
  try {
    const res = await oneNode().callFunction({ name: 'faults', data: { kind } });
    return { ok: true, res };
  } catch (e) {
    return { ok: false, code: e.code, message: e.message, requestId: e.requestId };
  }
}

for (const [kind, pattern, replaced] of [
  ['throw', /Error: boom/, false],
  ['reject', /TypeError: rejected on purpose/, false],
  ['exit', /exited with code 3/, true],
  ['unhandled', /unhandled rejection: Error: late rejection/, true],
  ['loop', /Task timed out after 1500 ms/, true],
  ['oom', /memory limit/, true],
  ['crash', /killed by signal 11/, true],
  ['big', /over the 6291456-byte limit/, false],
]) {
  test(`fault "${kind}" fails only that invocation (${replaced ? 'instance replaced' : 'instance kept'})`, async () => {
    const before = (await fault('ok')).res.result.uid;
    const r = await fault(kind);
    assert.equal(r.ok, false, `${kind} must fail`);
    assert.equal(r.code, 'FUNCTIONS_EXECUTE_FAIL');
    assert.match(r.message, pattern);
    assert.match(r.requestId, /^[0-9a-f]{32}$/);
    const after = (await fault('ok')).res.result.uid;
    if (replaced) assert.notEqual(after, before, 'a broken instance is replaced');
    else assert.equal(after, before, 'a healthy instance is kept');
    // Other functions never notice.
    const echo = await yun.admin().callFunction({ name: 'echo', data: { still: 'fine' } });
    assert.equal(echo.result.event.still, 'fine');
  });
}

test('logs are stored per request id and readable with yun fn logs', async () => {
  const r = await fault('throw');
  const lines = await waitFor(async () => {
    const l = await yun.logs('faults', r.requestId);
    return l.some((x) => x.stream === 'platform' && x.message.startsWith('invocation failed')) ? l : null;
  }, 'the invocation log');
  assert.ok(lines.every((l) => l.request_id === r.requestId));
  assert.ok(lines.some((l) => l.stream === 'stderr' && l.message === 'about to throw'));
  assert.ok(lines.some((l) => l.stream === 'stderr' && /Error: boom\n\s+at /.test(l.message)), 'the stack is logged');
  assert.ok(lines.some((l) => l.message.includes('invocation failed: Error: boom')));
  const record = await yun.cliJson(['fn', 'invoke', 'echo', '--data', '{"x":1}']);
  assert.deepEqual(record.result.event, { x: 1 });
  const echoLines = await waitFor(async () => {
    const l = await yun.logs('echo', record.request_id);
    return l.length >= 1 ? l : null;
  }, 'echo logs');
  assert.ok(echoLines.some((l) => l.stream === 'stdout' && l.message === 'echo called with {"x":1}'));
});

test('excess concurrent calls wait briefly, then get EXCEED_CONCURRENT_REQUEST_LIMIT', async () => {
  await yun.deploy('slow', 'slow', ['--max-instances', '1', '--timeout', '5s']);
  const calls = [0, 1, 2].map(() => oneNode().callFunction({ name: 'slow', data: { ms: 1500 } }).then(
    (r) => ({ ok: true, r }),
    (e) => ({ ok: false, code: e.code, message: e.message }),
  ));
  const results = await Promise.all(calls);
  const ok = results.filter((r) => r.ok);
  const throttled = results.filter((r) => !r.ok);
  assert.equal(ok.length, 1, JSON.stringify(results));
  assert.equal(throttled.length, 2);
  for (const t of throttled) {
    assert.equal(t.code, 'EXCEED_CONCURRENT_REQUEST_LIMIT');
    assert.match(t.message, /all 1 instances stayed busy/);
  }
  // A call that fits in the queue window waits for the instance instead of failing.
  const [first, second] = await Promise.all([
    oneNode().callFunction({ name: 'slow', data: { ms: 300 } }),
    sleep(50).then(() => oneNode().callFunction({ name: 'slow', data: { ms: 10 } })),
  ]);
  assert.equal(first.result.uid, second.result.uid);
});

test('a redeploy serves the new code and drains the old instances', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'yun-fn-'));
  fs.writeFileSync(path.join(dir, 'index.js'), 'exports.main = async () => ({ v: 1, uid: process.getuid() })');
  await yun.cliJson(['fn', 'deploy', dir, '--name', 'versioned']);
  const v1 = await oneNode().callFunction({ name: 'versioned' });
  assert.equal(v1.result.v, 1);
  fs.writeFileSync(path.join(dir, 'index.js'), 'exports.main = async () => ({ v: 2, uid: process.getuid() })');
  const deployed = await yun.cliJson(['fn', 'deploy', dir, '--name', 'versioned']);
  assert.equal(deployed.function.version, 2);
  const v2 = await oneNode().callFunction({ name: 'versioned' });
  assert.equal(v2.result.v, 2);
  assert.notEqual(v2.result.uid, v1.result.uid);
  await waitFor(() => instanceGone(v1.result.uid), 'the old instance to stop');
});

test('bad deploys are refused with a clear error and leave the old version serving', async () => {
  const bad = async (dir, name) => {
    const r = await yun.cli(['fn', 'deploy', path.join(require('../lib/yun').FUNCTIONS, dir), '--name', name]);
    assert.notEqual(r.code, 0);
    assert.equal(r.stderr.trim().split('\n').filter((l) => l.startsWith('error:')).length, 1, r.stderr);
    return r.stderr;
  };
  assert.match(await bad('nomain', 'echo'), /does not export a function named "main"/);
  assert.match(await bad('syntax', 'echo'), /the function does not load: SyntaxError/);
  assert.match(await bad('echo', '1-bad-name'), /invalid function name/);
  const still = await yun.admin().callFunction({ name: 'echo', data: { after: 'bad deploys' } });
  assert.equal(still.result.event.after, 'bad deploys');
  const listed = await yun.cliJson(['fn', 'list']);
  assert.deepEqual(listed.functions.filter((f) => f.name === 'echo').map((f) => f.version), [1]);
  assert.ok(!listed.functions.some((f) => f.name === '1-bad-name'));
});

async function deployArchive(name, archive) {
  const res = await fetch(`${yun.url}/api/v1/envs/${yun.envId}/functions/${name}`, {
    method: 'PUT',
    headers: { authorization: 'Basic ' + Buffer.from(`${yun.secretId}:${yun.secretKey}`).toString('base64'), 'content-type': 'application/json' },
    body: JSON.stringify({ code_base64: archive.toString('base64') }),
  });
  return { status: res.status, body: await res.json() };
}


test('hostile archives are refused and nothing is half-deployed', async () => {
  const ok = await deployArchive('archived', tarGz([{ name: 'index.js', body: 'exports.main = async () => "from tar"' }]));
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  for (const [entries, why] of [
    [[{ name: '../escape.js', body: 'x' }, { name: 'index.js', body: 'exports.main=async()=>1' }], /leaves the function folder/],
    [[{ name: 'index.js', body: 'exports.main=async()=>1' }, { name: 'link', type: '2', link: '/etc/passwd' }], /must point to a relative path inside the function folder/],
    [[{ name: 'index.js', body: 'exports.main=async()=>1' }, { name: 'dev', type: '3' }], /only files, folders and symlinks are allowed/],
    [[{ name: 'other.js', body: 'x' }], /no index.js/],
  ]) {
    const r = await deployArchive('archived', tarGz(entries));
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.equal(r.body.error.code, 'INVALID_PARAM');
    assert.match(r.body.error.message, why);
  }
  const notGzip = await deployArchive('archived', Buffer.from('plain text'));
  assert.equal(notGzip.status, 400);
  const res = await oneNode().callFunction({ name: 'archived' });
  assert.equal(res.result, 'from tar', 'the good version still serves');
  for (const node of yun.nodes) {
    const codeDir = path.join(node.dataDir, 'functions', yun.envId, 'archived');
    if (node === yun.nodes[0] || fs.existsSync(codeDir)) assert.equal(fs.readdirSync(codeDir).length, 1, 'failed deploys left no code behind');
  }
});

test('npm dependencies are installed at deploy time', async () => {
  await yun.deploy('withdeps', 'withdeps');
  const res = await yun.admin().callFunction({ name: 'withdeps', data: { value: '12' } });
  assert.deepEqual(res.result, { isNumber: true });
});

test('HTTP functions: value → JSON 200, {statusCode, headers, body}, base64 both ways', async () => {
  await yun.deploy('http', 'web', ['--http-path', '/web']);
  const plain = await fetch(`${yun.url}/${yun.envId}/web/plain?q=a%20b`, { method: 'POST', body: 'hello' });
  assert.equal(plain.status, 200);
  assert.match(plain.headers.get('x-yun-request-id'), /^[0-9a-f]{32}$/);
  assert.deepEqual(await plain.json(), { method: 'POST', path: '/web/plain', query: { q: 'a b' }, body: 'hello' });
  const custom = await fetch(`${yun.url}/${yun.envId}/web/other`, { method: 'PUT', body: Buffer.from([0xff, 0xfe]) });
  assert.equal(custom.status, 201);
  assert.equal(custom.headers.get('x-from'), 'yun-function');
  assert.equal(await custom.text(), 'hello PUT /web/other b64://4=');
  const binary = await fetch(`${yun.url}/${yun.envId}/web/binary`);
  assert.deepEqual([...Buffer.from(await binary.arrayBuffer())], [0, 1, 2, 255]);
  const missing = await fetch(`${yun.url}/${yun.envId}/nothing-here`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error.code, 'RESOURCE_NOT_FOUND');
  const otherEnv = await fetch(`${yun.url}/nosuchenv/web/plain`);
  assert.equal(otherEnv.status, 404);
});
